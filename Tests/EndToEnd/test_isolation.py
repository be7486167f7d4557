"""One peer never ends another peer's connection: for every way an HBONE connection can end, a bystander
connection on the same worker (one worker) keeps its open tunnel and can open new ones."""
import socket
import ssl
import struct
import time

import pytest

from conftest import service_yaml
from hbone import get
from test_hbone import VIP, certs, client, hbone_proxy, wait_metric  # noqa: F401 (fixtures)


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
