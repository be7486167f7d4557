"""One peer never ends another peer's connection: for every way an HBONE connection can end, a bystander
connection on the same worker (one worker) keeps its open tunnel and can open new ones."""
import socket
import ssl
import struct
import threading
import time

import h2.config
import h2.connection
import h2.events
import h2.exceptions
import pytest

from conftest import http_request, service_yaml, wait_until
from hbone import get
from test_hbone import VIP, certs, client, hbone_proxy, mesh_endpoint_yaml  # noqa: F401 (fixtures)


@pytest.fixture
def one_worker(origin_factory, hbone_proxy):
    origin = origin_factory("a")
    return hbone_proxy(service_yaml("web", [("127.0.0.1", origin.port)], cluster_ip=VIP),
                       extra=["--workers", "1", "--handshake-timeout", "300ms"])


def served(c, sid):
    """One request on an open tunnel answered 200."""
    return c.http(sid, get("/ok")).startswith(b"HTTP/1.1 200")


def raw_tls(proxy, certs, who="frontend"):
    """A TLS 1.3 + h2 connection from Python's `ssl`, with nothing sent on it yet."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    ctx.check_hostname = False
    ctx.load_verify_locations(certs["ca"])
    if who:
        ctx.load_cert_chain(*certs[who])
    ctx.set_alpn_protocols(["h2"])
    return ctx.wrap_socket(socket.create_connection(("127.0.0.1", proxy.hbone_port), timeout=5))


def tunnel_then(proxy, certs, end):
    """A peer that opens a tunnel, makes a request, then ends as `end` says."""
    c = client(proxy, certs)
    sid = c.connect(f"{VIP}:80")
    assert served(c, sid)
    end(c)


def rst(c):
    c.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    c.sock.close()


def fin_without_close_notify(c):
    c.sock.close()                                 # Python's close sends no close_notify


def close_notify(c):
    c.sock.unwrap()
    c.sock.close()


def http2_protocol_error(c):
    c.sock.sendall(bytes([0, 0, 4, 8, 0, 0, 0, 0, 0]) + b"\0\0\0\0")   # WINDOW_UPDATE of 0 on the connection
    c.sock.close()


def goaway(c):
    c.close()


PEER_ENDS = {
    "tcp_rst": lambda proxy, certs: tunnel_then(proxy, certs, rst),
    "fin_without_close_notify": lambda proxy, certs: tunnel_then(proxy, certs, fin_without_close_notify),
    "close_notify": lambda proxy, certs: tunnel_then(proxy, certs, close_notify),
    "http2_protocol_error": lambda proxy, certs: tunnel_then(proxy, certs, http2_protocol_error),
    "goaway": lambda proxy, certs: tunnel_then(proxy, certs, goaway),
}


def tls_alert(proxy, certs):
    s = raw_tls(proxy, certs)
    raw = socket.socket(fileno=s.detach())
    raw.sendall(bytes([21, 3, 3, 0, 2, 2, 40]))    # a plaintext handshake_failure alert after the handshake
    time.sleep(0.1)
    raw.close()


def idle_after_handshake(proxy, certs):
    s = raw_tls(proxy, certs)                       # never sends the HTTP/2 preface
    time.sleep(0.6)
    s.close()


def idle_before_handshake(proxy, certs):
    s = socket.create_connection(("127.0.0.1", proxy.hbone_port))
    time.sleep(0.6)
    s.close()


def bad_certificate(proxy, certs):
    try:
        s = raw_tls(proxy, certs, who="untrusted")
        s.sendall(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
        s.recv(100)
    except (ssl.SSLError, OSError):
        pass


def no_certificate(proxy, certs):
    try:
        s = raw_tls(proxy, certs, who=None)
        s.recv(100)
    except (ssl.SSLError, OSError):
        pass


def handshake_cut(proxy, certs):
    s = socket.create_connection(("127.0.0.1", proxy.hbone_port))
    s.sendall(bytes([22, 3, 1, 0, 200, 1, 0, 0, 196, 3, 3]) + b"\0" * 40)   # a ClientHello cut short
    s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    s.close()


PEER_ENDS.update({
    "tls_alert": tls_alert,
    "idle_after_handshake": idle_after_handshake,
    "idle_before_handshake": idle_before_handshake,
    "bad_certificate": bad_certificate,
    "no_certificate": no_certificate,
    "handshake_cut": handshake_cut,
})


@pytest.mark.parametrize("end", sorted(PEER_ENDS))
def test_a_peer_ending_leaves_the_bystander_serving(one_worker, certs, end):
    proxy = one_worker
    bystander = client(proxy, certs)
    sid = bystander.connect(f"{VIP}:80")
    assert bystander.status(sid) == 200 and served(bystander, sid)
    for _ in range(3):
        PEER_ENDS[end](proxy, certs)
        time.sleep(0.05)
        assert served(bystander, sid), end            # the open tunnel, on the same worker
        fresh = bystander.connect(f"{VIP}:80")
        assert bystander.status(fresh) == 200 and served(bystander, fresh), end
    assert not bystander.closed and bystander.goaway is None
    bystander.close()


class FakeNode:
    """A destination node's HBONE terminator, as ztunnel's inbound: mutual TLS 1.3 + h2 (Python's `ssl` and
    `h2`), CONNECT answered 200, and inside each tunnel an HTTP/1.1 server that answers `200 ok` keep-alive.
    `die(how)` ends every connection it holds without a close_notify."""
    RESPONSE = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok"

    def __init__(self, host, port, certs):
        self.ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.ctx.minimum_version = ssl.TLSVersion.TLSv1_3
        self.ctx.load_cert_chain(*certs["frontend"])
        self.ctx.load_verify_locations(certs["ca"])
        self.ctx.verify_mode = ssl.CERT_REQUIRED
        self.ctx.set_alpn_protocols(["h2"])
        self.listener = socket.create_server((host, port))
        self.port = self.listener.getsockname()[1]
        self.connections = []
        self.dead = 0
        threading.Thread(target=self.accept, daemon=True).start()

    def accept(self):
        while True:
            try:
                raw, _ = self.listener.accept()
            except OSError:
                return
            threading.Thread(target=self.serve, args=(raw,), daemon=True).start()

    def serve(self, raw):
        s = None
        try:
            s = self.ctx.wrap_socket(raw, server_side=True)
            self.connections.append(s)
            conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=False))
            conn.initiate_connection()
            s.sendall(conn.data_to_send())
            pending = {}
            while chunk := s.recv(65536):
                for event in conn.receive_data(chunk):
                    if isinstance(event, h2.events.RequestReceived):
                        conn.send_headers(event.stream_id, [(":status", "200")])
                        pending[event.stream_id] = b""
                    elif isinstance(event, h2.events.DataReceived):
                        conn.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
                        pending[event.stream_id] += event.data
                        while b"\r\n\r\n" in pending[event.stream_id]:
                            _, _, pending[event.stream_id] = pending[event.stream_id].partition(b"\r\n\r\n")
                            conn.send_data(event.stream_id, self.RESPONSE)
                s.sendall(conn.data_to_send())
        except (OSError, ValueError, h2.exceptions.ProtocolError):
            pass
        finally:
            (s or raw).close()                        # no close_notify: Python's close sends none

    def die(self, how):
        """Ends every connection: TCP RST, or FIN without close_notify."""
        for s in self.connections:
            if how == "rst":
                s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                socket.socket.shutdown(s, socket.SHUT_RD)      # wakes the serving thread, whose close sends RST
            else:
                socket.socket.shutdown(s, socket.SHUT_RDWR)
        self.dead += len(self.connections)
        self.connections = []


@pytest.mark.parametrize("how", ["rst", "fin_without_close_notify"])
def test_a_destination_dying_leaves_the_other_pooled_connection(hbone_proxy, certs, how):
    a = FakeNode("127.0.0.2", 0, certs)
    b = FakeNode("127.0.0.3", a.port, certs)
    config = mesh_endpoint_yaml(8080, ip="127.0.0.2") + "---" + mesh_endpoint_yaml(8080, name="api", vip="10.96.0.11", ip="127.0.0.3")
    waypoint = hbone_proxy(config, extra=["--upstream-hbone-port", str(a.port), "--workers", "1"])
    for host in ("web", "api", "web"):
        assert http_request(waypoint.port, "GET", "/", host=host)[::2] == (200, b"ok")
    assert len(a.connections) == 1 and len(b.connections) == 1
    for _ in range(3):
        b.die(how)
        time.sleep(0.05)
        assert http_request(waypoint.port, "GET", "/", host="web")[::2] == (200, b"ok")
        assert http_request(waypoint.port, "GET", "/", host="api")[::2] == (200, b"ok")   # a new connection
    assert (b.dead, len(b.connections)) == (3, 1)     # api's connection died three times and was made anew
    assert len(a.connections) == 1                    # web's pooled connection lived through it all


@pytest.mark.parametrize("end", ["close", "end_stream", "reset"])
def test_a_client_gone_mid_body_leaves_no_session_or_upstream_behind(one_worker, certs, end):
    # The tunnel ended while its session had not yet read the last bytes (the upstream still connecting): the
    # session never learned of it and held an upstream connection, the origin waiting for the body, for good.
    proxy = one_worker
    for _ in range(40):
        c = client(proxy, certs)
        sid = c.connect(f"{VIP}:80")
        assert c.status(sid) == 200
        c.send(sid, b"POST /upload HTTP/1.1\r\nHost: web\r\nContent-Length: 100000\r\n\r\n" + b"y" * 5000, end_stream=end == "end_stream")
        if end == "reset":             # RST_STREAM and the close in one read: the reset tunnel's notification
            c.conn.reset_stream(sid)   # was still queued when the connection closed
            c.flush()
        time.sleep(0.002)
        c.sock.close()
    assert wait_until(lambda: proxy.metrics()["waypoint_downstream_connections_active"] == 0), proxy.metrics()["waypoint_downstream_connections_active"]
    assert proxy.metrics()["waypoint_upstream_connections_total"] > 0     # the requests did go upstream


class SlowOrigin:
    """A raw TCP origin that accepts one connection and reads nothing until `start_reading` is set; then it
    reads to the end and records when the proxy closed the connection (`closed_by_proxy`)."""

    def __init__(self):
        self.listener = socket.socket()
        self.listener.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)   # a small window: the proxy
        self.listener.bind(("127.0.0.1", 0))                                  # blocks on it soon
        self.listener.listen(4)
        self.port = self.listener.getsockname()[1]
        self.start_reading = threading.Event()
        self.closed_by_proxy = threading.Event()
        self.received = 0
        threading.Thread(target=self.serve, daemon=True).start()

    def serve(self):
        conn, _ = self.listener.accept()
        self.start_reading.wait(30)
        conn.settimeout(30)
        try:
            while chunk := conn.recv(1 << 16):
                self.received += len(chunk)
        except OSError:
            pass
        self.closed_by_proxy.set()


def fill_window(c, sid, seconds=0.5):
    """Sends body bytes on `sid` as fast as flow control allows, until the proxy has given no credit for
    `seconds` (its session stopped reading the tunnel); the bytes sent."""
    sent = 0
    c.sock.settimeout(0.02)
    idle_since = time.time()
    while time.time() - idle_since < seconds:
        room = min(c.conn.local_flow_control_window(sid), c.conn.max_outbound_frame_size)
        if room > 0:
            c.send(sid, b"z" * room)
            sent += room
            idle_since = time.time()
            continue
        try:
            c.pump()
        except (socket.timeout, TimeoutError):
            pass
    return sent


def test_a_session_resuming_after_its_tunnel_closed_still_sees_the_end(proxy_factory, hbone_proxy, certs):
    # The session had stopped reading the tunnel (the upstream was not taking bytes) when the client went away;
    # when the upstream drained and it read again, no connection was left to tell it the tunnel had ended: it
    # held the upstream connection, and the origin waited for the rest of the body, for good.
    origin = SlowOrigin()
    proxy = hbone_proxy(service_yaml("web", [("127.0.0.1", origin.port)], cluster_ip=VIP), extra=["--workers", "1"])
    c = client(proxy, certs)
    sid = c.connect(f"{VIP}:80")
    assert c.status(sid) == 200
    c.send(sid, b"POST /upload HTTP/1.1\r\nHost: web\r\nContent-Length: 100000000\r\n\r\n")
    sent = fill_window(c, sid)
    assert 0 < sent < 100_000_000                            # the session paused: the client was held back
    c.sock.close()                                           # the client is gone, bytes still in the tunnel
    time.sleep(0.2)
    assert proxy.metrics()["waypoint_downstream_connections_active"] == 1
    origin.start_reading.set()
    assert origin.closed_by_proxy.wait(5), origin.received
    assert wait_until(lambda: proxy.metrics()["waypoint_downstream_connections_active"] == 0)
