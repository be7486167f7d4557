"""Hostile HTTP/2 peers on the HBONE listener, one worker: what each abuse costs, and that it costs only the
abuser's own stream or connection. Driven by Python's `h2` with hand-made frames where `h2` would refuse."""
import collections
import os
import socket
import ssl
import struct
import time

import h2.settings
import hpack
import pytest

from conftest import service_yaml
from hbone import get
from test_hbone import VIP, certs, client, hbone_proxy, wait_metric  # noqa: F401 (fixtures)

ENHANCE_YOUR_CALM, REFUSED_STREAM, INTERNAL_ERROR = 11, 7, 2


@pytest.fixture
def one_worker(origin_factory, hbone_proxy):
    origin = origin_factory("a")
    return hbone_proxy(service_yaml("web", [("127.0.0.1", origin.port)], cluster_ip=VIP),
                       extra=["--workers", "1", "--handshake-timeout", "500ms"])


def cpu_seconds(proxy):
    """User + system CPU the proxy process has used so far."""
    with open(f"/proc/{proxy.proc.pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def frame(kind, flags, stream, payload):
    return struct.pack(">I", len(payload))[1:] + bytes([kind, flags]) + struct.pack(">I", stream) + payload


class RawH2:
    """An HTTP/2 client over TLS that writes frames by hand (`hpack` for header blocks), for what `h2` will not
    send; `frames()` reads until `until` holds."""
    def __init__(self, proxy, certs):
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.check_hostname = False
        ctx.load_verify_locations(certs["ca"])
        ctx.load_cert_chain(*certs["frontend"])
        ctx.set_alpn_protocols(["h2"])
        self.sock = ctx.wrap_socket(socket.create_connection(("127.0.0.1", proxy.hbone_port), timeout=10))
        self.sock.sendall(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + frame(4, 0, 0, b"")
                          + frame(8, 0, 0, struct.pack(">I", 1 << 30)))
        self.encoder = hpack.Encoder()
        self.buffer = b""
        self.seen = []                                # (type, flags, stream, payload)

    def frames(self, until):
        while not until():
            try:
                chunk = self.sock.recv(1 << 20)
            except (ssl.SSLError, OSError):
                chunk = b""
            if not chunk:
                return
            self.buffer += chunk
            while len(self.buffer) >= 9 and len(self.buffer) >= 9 + int.from_bytes(self.buffer[:3], "big"):
                n = int.from_bytes(self.buffer[:3], "big")
                kind, flags, sid = self.buffer[3], self.buffer[4], int.from_bytes(self.buffer[5:9], "big")
                self.seen.append((kind, flags, sid, self.buffer[9:9 + n]))
                if kind == 4 and not flags & 1:
                    try:
                        self.sock.sendall(frame(4, 1, 0, b""))
                    except (ssl.SSLError, OSError):
                        pass
                self.buffer = self.buffer[9 + n:]

    def goaway(self):
        """(error code, debug data) of the last GOAWAY received, or None."""
        found = [(int.from_bytes(p[4:8], "big"), p[8:]) for kind, _, _, p in self.seen if kind == 7]
        return found[-1] if found else None

    def resets(self):
        return {sid: int.from_bytes(payload, "big") for kind, _, sid, payload in self.seen if kind == 3}


def test_hpack_bomb_resets_its_stream_and_costs_almost_nothing(one_worker, certs):
    proxy = one_worker
    c = RawH2(proxy, certs)
    connect = [(":method", "CONNECT"), (":authority", f"{VIP}:80")]
    c.sock.sendall(frame(1, 0x4, 1, c.encoder.encode(connect)))
    c.frames(lambda: any(kind == 1 and sid == 1 for kind, _, sid, _ in c.seen))        # tunnel 1 answered
    before = cpu_seconds(proxy)
    bombs = list(range(3, 19, 2))
    for sid in bombs:
        # One 4 KiB field into the dynamic table, then 60,000 one-byte references to it: 64 KiB on the wire,
        # ~240 MiB of header list against the advertised 64 KiB.
        block = c.encoder.encode(connect + [("x-bomb", "a" * 4000)]) + bytes([0x80 | 62]) * 60000
        c.sock.sendall(frame(1, 0x4, sid, block))
    c.frames(lambda: set(bombs) <= set(c.resets()))
    spent = cpu_seconds(proxy) - before
    assert [c.resets()[s] for s in bombs] == [INTERNAL_ERROR] * 8         # as Envoy resets a header overflow
    assert spent < 0.25, spent                       # before: 0.11-0.15 s of CPU per frame
    # The connection lives on, its HPACK state in step: a new tunnel opens.
    c.sock.sendall(frame(1, 0x4, 21, c.encoder.encode(connect)))
    c.frames(lambda: any(kind == 1 and sid == 21 for kind, _, sid, _ in c.seen))
    assert not any(kind == 7 for kind, _, _, _ in c.seen)                  # no GOAWAY
    assert proxy.metrics()['waypoint_tunnels_refused_total{reason="header_list_too_large"}'] == 8
    c.sock.close()


def test_streams_past_the_limit_are_refused_and_the_others_live_on(one_worker, certs):
    proxy = one_worker
    c = client(proxy, certs)
    c.wait(lambda: len(c.settings) >= 3)
    assert c.settings[h2.settings.SettingCodes.MAX_CONCURRENT_STREAMS] == 200      # what ztunnel's server says
    # Let h2 send past the limit, as a buggy or hostile client would.
    c.conn.remote_settings._settings[h2.settings.SettingCodes.MAX_CONCURRENT_STREAMS] = collections.deque([1000])
    sids = [c.connect(f"{VIP}:80") for _ in range(205)]
    c.wait(lambda: all(s in c.responses or s in c.resets for s in sids))
    assert [c.responses[s][0] for s in sids[:200]] == [200] * 200
    assert {s: c.resets.get(s) for s in sids[200:]} == {s: REFUSED_STREAM for s in sids[200:]}
    assert c.http(sids[0], get("/first")).startswith(b"HTTP/1.1 200")
    assert c.http(sids[199], get("/last")).startswith(b"HTTP/1.1 200")
    # One tunnel ends; then there is room for one more.
    c.conn.reset_stream(sids[5])
    c.flush()
    time.sleep(0.1)
    again = c.connect(f"{VIP}:80")
    assert c.status(again) == 200
    assert not c.closed and c.goaway is None
    assert proxy.metrics()['waypoint_tunnels_refused_total{reason="too_many_streams"}'] == 5
    c.close()


@pytest.mark.parametrize("flood", [
    frame(6, 0, 0, b"pingping") * 4000,                                   # PINGs, each wanting an ACK
    frame(4, 0, 0, b"") * 4000,                                           # SETTINGS, each wanting an ACK
    frame(1, 0, 1, hpack.Encoder().encode([(":method", "CONNECT"), (":authority", f"{VIP}:80")]))
    + frame(9, 0, 1, b"\x40\x01x\x01y") * 200,                          # CONTINUATION without end
], ids=["ping", "settings", "continuation"])
def test_flood_gets_goaway_enhance_your_calm_and_spares_the_bystander(one_worker, certs, flood):
    proxy = one_worker
    bystander = client(proxy, certs)
    sid = bystander.connect(f"{VIP}:80")
    assert bystander.status(sid) == 200
    c = RawH2(proxy, certs)
    try:
        c.sock.sendall(flood)
    except (ssl.SSLError, OSError):
        pass
    c.frames(lambda: False)                          # to the end of the connection
    assert c.goaway() == (ENHANCE_YOUR_CALM, b"flood"), collections.Counter(kind for kind, _, _, _ in c.seen)
    assert proxy.metrics()["waypoint_http2_protocol_errors_total"] == 1
    assert bystander.http(sid, get("/ok")).startswith(b"HTTP/1.1 200")
    bystander.close()


def test_client_without_http2_preface_is_closed_at_the_handshake_timeout(one_worker, certs):
    proxy = one_worker
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.load_verify_locations(certs["ca"])
    ctx.load_cert_chain(*certs["frontend"])
    ctx.set_alpn_protocols(["h2"])
    s = ctx.wrap_socket(socket.create_connection(("127.0.0.1", proxy.hbone_port), timeout=10))
    start = time.time()
    while s.recv(65536):                             # the waypoint's SETTINGS, then the close
        pass
    assert 0.3 < time.time() - start < 3, time.time() - start
    s.close()
    wait_metric(proxy, "waypoint_hbone_preface_timeouts_total")
    # A client that sent its preface is not affected by that timeout.
    c = client(proxy, certs)
    time.sleep(1)
    sid = c.connect(f"{VIP}:80")
    assert c.status(sid) == 200
    c.close()
