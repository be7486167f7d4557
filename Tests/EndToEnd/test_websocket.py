"""HTTP/1.1 Upgrade through the waypoint, with a WebSocket stack this project did not write on both ends (the
`websockets` package): the handshake's Upgrade goes upstream, the 101 comes back, and the connection becomes a
byte relay both ways, on the plaintext listener and inside an HBONE tunnel. A refused upgrade stays plain
HTTP; `--http-upgrades off` drops the offer."""
import json
import os
import socket
import threading
import time

import pytest
from websockets.exceptions import InvalidStatus
from websockets.sync.client import connect
from websockets.sync.server import serve

from conftest import http_request, service_yaml, wait_for
from test_grpc import HBONEForwarder
from test_hbone import VIP, certs, client, hbone_proxy  # noqa: F401 (fixtures)

MIB = 1 << 20


class EchoServer:
    """Echoes every message; `/headers` answers with the handshake's request headers; `/refuse` answers 403."""

    def __init__(self):
        def handler(connection):
            if connection.request.path == "/headers":
                connection.send(json.dumps({k.lower(): v for k, v in connection.request.headers.raw_items()}))
            for message in connection:
                connection.send(message)

        def process_request(connection, request):
            if request.path == "/refuse":
                return connection.respond(403, "not here\n")
            return None

        self.server = serve(handler, "127.0.0.1", 0, max_size=None, process_request=process_request)
        self.port = self.server.socket.getsockname()[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()


@pytest.fixture
def echo():
    server = EchoServer()
    yield server
    server.server.shutdown()


def ws(port, path="/chat", host="web"):
    """A client whose connection goes to `port` while the handshake names `host`."""
    return connect(f"ws://{host}{path}", sock=socket.create_connection(("127.0.0.1", port)), max_size=None, open_timeout=10)


def exchange_both_ways(connection):
    connection.send("hello")
    assert connection.recv(timeout=10) == "hello"
    big = os.urandom(MIB)   # incompressible: permessage-deflate is on by default
    connection.send(big)
    assert connection.recv(timeout=30) == big


def test_websocket_through_the_plaintext_listener(proxy_factory, echo):
    proxy = proxy_factory(service_yaml("web", [("127.0.0.1", echo.port)]))
    with ws(proxy.port, "/headers") as connection:
        headers = json.loads(connection.recv(timeout=10))
        assert headers["upgrade"] == "websocket" and headers["connection"].lower() == "upgrade"
        assert headers["x-forwarded-for"] == "127.0.0.1" and "sec-websocket-key" in headers
        exchange_both_ways(connection)
    # One request, status 101, reported when the relay ended, with the bytes it moved.
    entry = json.loads(wait_for(r'\{[^\n]*"path":"/headers"[^\n]*\n', proxy.stdout_path).group(0))
    assert entry["response_code"] == 101 and entry["bytes_received"] > MIB and entry["bytes_sent"] > MIB
    assert proxy.metrics()['waypoint_downstream_requests_total{status_class="1xx"}'] == 1


def test_websocket_inside_an_hbone_tunnel(hbone_proxy, certs, echo):
    proxy = hbone_proxy(service_yaml("web", [("127.0.0.1", echo.port)], cluster_ip=VIP))
    forwarder = HBONEForwarder(lambda: client(proxy, certs), f"{VIP}:80")
    with ws(forwarder.port) as connection:
        exchange_both_ways(connection)
    entry = json.loads(wait_for(r'\{[^\n]*"path":"/chat"[^\n]*\n', proxy.stdout_path).group(0))
    assert entry["response_code"] == 101 and entry["downstream_peer_principal"] == "cluster.local/ns/default/sa/frontend"


def test_a_refused_upgrade_is_a_plain_response_and_the_connection_goes_on(proxy_factory, echo):
    proxy = proxy_factory(service_yaml("web", [("127.0.0.1", echo.port)]))
    with pytest.raises(InvalidStatus) as refused:
        ws(proxy.port, "/refuse")
    assert refused.value.response.status_code == 403
    # On one connection: the refused offer, then a plain request, answered in order.
    s = socket.create_connection(("127.0.0.1", proxy.port), timeout=10)
    s.sendall(b"GET /refuse HTTP/1.1\r\nHost: web\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n"
              b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n")
    first = b""
    while b"not here\n" not in first:
        first += s.recv(65536)
    assert first.startswith(b"HTTP/1.1 403 ")
    s.sendall(b"GET /again HTTP/1.1\r\nHost: web\r\n\r\n")
    assert s.recv(65536).startswith(b"HTTP/1.1 426 ")   # the origin answers it as plain HTTP: the connection stayed HTTP
    s.close()


def test_a_client_that_stops_reading_keeps_rss_bounded(proxy_factory):
    """64 MiB pushed by the server at a client that reads nothing: the relay's buffers stay bounded."""
    def flood(connection):
        for _ in range(64):
            connection.send(os.urandom(MIB))
    server = serve(flood, "127.0.0.1", 0, max_size=None, compression=None)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    proxy = proxy_factory(service_yaml("web", [("127.0.0.1", server.socket.getsockname()[1])]))
    before = proxy.rss_kib()
    with ws(proxy.port) as connection:
        time.sleep(2)                        # not reading: the flood backs up into the server
        grown = proxy.rss_kib() - before
        got = sum(len(connection.recv(timeout=30)) for _ in range(64))
    server.shutdown()
    assert got == 64 * MIB
    assert grown < 8 * 1024, f"RSS grew {grown} KiB while the client did not read"


def test_upgrades_off_drops_the_offer(proxy_factory, echo):
    proxy = proxy_factory(service_yaml("web", [("127.0.0.1", echo.port)]), extra=["--http-upgrades", "off"])
    with pytest.raises(InvalidStatus) as refused:
        ws(proxy.port)
    # The origin saw no Upgrade (hop-by-hop, dropped) and answered as to plain HTTP.
    assert refused.value.response.status_code == 426


class HalfCloseOrigin:
    """Answers an `Upgrade: echo` with 101, then reads until the client's end and only then answers
    `got:<everything>` and closes: the client's half-close must reach it, and the answer must still come back."""

    def __init__(self):
        self.listener = socket.socket()
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(4)
        self.port = self.listener.getsockname()[1]
        threading.Thread(target=self.serve, daemon=True).start()

    def serve(self):
        s, _ = self.listener.accept()
        head = b""
        while b"\r\n\r\n" not in head:
            head += s.recv(4096)
        s.sendall(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: echo\r\nConnection: Upgrade\r\n\r\n")
        data = head.split(b"\r\n\r\n", 1)[1]
        while chunk := s.recv(65536):
            data += chunk
        s.sendall(b"got:" + data)
        s.close()


@pytest.mark.parametrize("transport", ["plaintext", "hbone"])
def test_a_half_close_is_passed_on_and_the_answer_still_comes_back(proxy_factory, hbone_proxy, certs, transport):
    origin = HalfCloseOrigin()
    if transport == "plaintext":
        port = proxy_factory(service_yaml("web", [("127.0.0.1", origin.port)])).port
    else:
        proxy = hbone_proxy(service_yaml("web", [("127.0.0.1", origin.port)], cluster_ip=VIP))
        port = HBONEForwarder(lambda: client(proxy, certs), f"{VIP}:80").port
    s = socket.create_connection(("127.0.0.1", port), timeout=10)
    s.sendall(b"GET /echo HTTP/1.1\r\nHost: web\r\nConnection: Upgrade\r\nUpgrade: echo\r\n\r\n")
    head = b""
    while b"\r\n\r\n" not in head:
        head += s.recv(4096)
    assert head.startswith(b"HTTP/1.1 101 ") and b"upgrade: echo" in head.lower()
    rest = head.split(b"\r\n\r\n", 1)[1]
    s.sendall(b"ping")
    s.shutdown(socket.SHUT_WR)                 # our end; the answer comes after it
    while chunk := s.recv(65536):
        rest += chunk
    assert rest == b"got:ping"
    s.close()


def test_an_idle_relay_is_closed_and_a_busy_one_is_not(proxy_factory, hbone_proxy, certs, echo, origin_factory):
    """A byte relay that moves nothing for --relay-idle-timeout is closed (Envoy's tcp_proxy idle_timeout, 1 h by
    default), counted; one that keeps moving bytes outlives the timeout many times over. Both kinds of relay: a
    WebSocket after its 101, and a TCP tunnel (here a `tcp-` port inside HBONE)."""
    proxy = proxy_factory(service_yaml("web", [("127.0.0.1", echo.port)]), extra=["--relay-idle-timeout", "400ms"])
    with ws(proxy.port) as busy, ws(proxy.port) as quiet:
        deadline = time.time() + 1.6
        while time.time() < deadline:          # four timeouts' worth of traffic, a message every 100 ms
            busy.send("tick")
            assert busy.recv(timeout=5) == "tick"
            time.sleep(0.1)
        with pytest.raises(Exception):           # the quiet one was closed under its client
            quiet.send("late")
            quiet.recv(timeout=2)
        busy.send("still here")
        assert busy.recv(timeout=5) == "still here"
    assert proxy.metrics()["waypoint_relay_idle_timeouts_total"] == 1

    origin = origin_factory("a")
    tunnels = hbone_proxy(service_yaml("db", [("127.0.0.1", origin.port)], cluster_ip=VIP, port_name="tcp-db"),
                          extra=["--relay-idle-timeout", "400ms"], name="tunnels")
    c = client(tunnels, certs)
    sid = c.connect(f"{VIP}:80")
    assert c.status(sid) == 200
    assert b"x-origin: a" in c.http(sid, b"GET / HTTP/1.1\r\nhost: db\r\n\r\n")
    started = time.time()
    c.wait(lambda: sid in c.ended or sid in c.resets)      # nothing sent: the waypoint ends the tunnel
    assert 0.3 < time.time() - started < 3
    assert tunnels.metrics()["waypoint_relay_idle_timeouts_total"] == 1
    c.close()


class H2WebSocket:
    """WebSocket over HTTP/2 (RFC 8441) from Python's `h2`: an extended CONNECT on an h2c connection, then
    WebSocket frames (RFC 6455, masked from the client) as the stream's DATA, with flow control both ways."""

    def __init__(self, port, path, authority="web"):
        import h2.config
        import h2.connection
        import h2.events
        import h2.settings
        self.events = h2.events
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        self.conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True, header_encoding="utf-8"))
        self.conn.initiate_connection()
        self.flush()
        while self.conn.remote_settings.get(h2.settings.SettingCodes.ENABLE_CONNECT_PROTOCOL) != 1:
            self.pump()
        self.stream = self.conn.get_next_available_stream_id()
        self.conn.send_headers(self.stream, [(":method", "CONNECT"), (":protocol", "websocket"), (":scheme", "http"),
                                             (":path", path), (":authority", authority), ("sec-websocket-version", "13")])
        self.flush()
        self.status, self.headers, self.data, self.ended = None, {}, b"", False
        while self.status is None:
            self.pump()

    def flush(self):
        self.sock.sendall(self.conn.data_to_send())

    def pump(self):
        chunk = self.sock.recv(65536)
        assert chunk, "the proxy closed the connection"
        for event in self.conn.receive_data(chunk):
            if isinstance(event, self.events.ResponseReceived):
                headers = dict(event.headers)
                self.status, self.headers = int(headers[":status"]), headers
            elif isinstance(event, self.events.DataReceived):
                self.data += event.data
                self.conn.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
            elif isinstance(event, (self.events.StreamEnded, self.events.StreamReset)):
                self.ended = True
        self.flush()

    def send(self, payload, opcode=None):
        opcode = opcode or (0x1 if isinstance(payload, str) else 0x2)
        payload = payload.encode() if isinstance(payload, str) else payload
        mask = os.urandom(4)
        length = len(payload)
        head = bytes([0x80 | opcode]) + (bytes([0x80 | length]) if length < 126 else
                                         bytes([0xFE]) + length.to_bytes(2, "big") if length < 65536 else
                                         bytes([0xFF]) + length.to_bytes(8, "big"))
        masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
        pending = head + mask + masked
        while pending:
            window = min(self.conn.local_flow_control_window(self.stream), self.conn.max_outbound_frame_size)
            if window <= 0:
                self.pump()
                continue
            self.conn.send_data(self.stream, pending[:window])
            pending = pending[window:]
            self.flush()

    def recv(self):
        """The next whole message from the server (unmasked frames; continuation frames joined)."""
        message = b""
        while True:
            while True:
                frame = self.parse()
                if frame:
                    break
                self.pump()
            fin, opcode, payload = frame
            message += payload
            if fin:
                return message.decode() if opcode == 0x1 else message

    def parse(self):
        data = self.data
        if len(data) < 2:
            return None
        length, offset = data[1] & 0x7F, 2
        if length == 126:
            if len(data) < 4:
                return None
            length, offset = int.from_bytes(data[2:4], "big"), 4
        elif length == 127:
            if len(data) < 10:
                return None
            length, offset = int.from_bytes(data[2:10], "big"), 10
        if len(data) < offset + length:
            return None
        self.data = data[offset + length:]
        return bool(data[0] & 0x80), data[0] & 0x0F, data[offset:offset + length]

    def close(self):
        self.sock.close()


def test_websocket_over_http2_extended_connect(hbone_proxy, certs, echo):
    """RFC 8441 from an h2c client (inside an HBONE tunnel, where h2c reaches a waypoint), translated to an
    HTTP/1.1 upgrade to the origin (the `websockets` server): 200 on the stream, then frames both ways; a refusal
    keeps its status and body."""
    # a port without a protocol hint: the waypoint detects h2c from the preface; the origin speaks HTTP/1.1
    proxy = hbone_proxy(service_yaml("web", [("127.0.0.1", echo.port)], cluster_ip=VIP, port_name="ws"))
    forwarder = HBONEForwarder(lambda: client(proxy, certs), f"{VIP}:80")
    socket_ = H2WebSocket(forwarder.port, "/headers")
    assert socket_.status == 200 and "sec-websocket-accept" not in socket_.headers and "upgrade" not in socket_.headers
    headers = json.loads(socket_.recv())
    assert headers["upgrade"] == "websocket" and headers["sec-websocket-version"] == "13"
    assert len(base64_decoded(headers["sec-websocket-key"])) == 16        # a key of the proxy's own
    socket_.send("hello")
    assert socket_.recv() == "hello"
    big = os.urandom(MIB)
    socket_.send(big)
    assert socket_.recv() == big
    socket_.close()
    refused = H2WebSocket(forwarder.port, "/refuse")
    while not refused.ended:
        refused.pump()
    assert refused.status == 403 and refused.data == b"not here\n"
    assert refused.headers["content-type"].startswith("text/plain") and "sec-websocket-accept" not in refused.headers
    refused.close()
    entry = json.loads(wait_for(r'\{[^\n]*"path":"/headers"[^\n]*\n', proxy.stdout_path).group(0))
    assert entry["response_code"] == 101 and entry["bytes_received"] > MIB and entry["bytes_sent"] > MIB
    assert entry["protocol"] == "HTTP/2"


def base64_decoded(text):
    import base64
    return base64.b64decode(text)
