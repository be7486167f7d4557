"""The PROXY-protocol "sandwich" inbound: the node's ztunnel terminates HBONE and connects with a PROXY v2
header (source, destination = HBONE target, TLV 0xD0 = source SPIFFE ID). Everything after it must behave
as an HBONE tunnel; a missing or bad header closes the connection before anything reaches an upstream."""
import json
import socket
import struct

import pytest

from conftest import read_to_close, service_yaml, status_of, wait_for

SIGNATURE = b"\r\n\r\n\x00\r\nQUIT\n"
VIP = "10.96.0.10"
FRONTEND = b"spiffe://cluster.local/ns/default/sa/frontend"


def header(src=("10.1.2.3", 5555), dst=(VIP, 80), identity=FRONTEND, command=0x21, family=0x11):
    addresses = socket.inet_aton(src[0]) + socket.inet_aton(dst[0]) + struct.pack(">HH", src[1], dst[1])
    tlvs = b"" if identity is None else bytes([0xD0]) + struct.pack(">H", len(identity)) + identity
    body = addresses + tlvs
    return SIGNATURE + bytes([command, family]) + struct.pack(">H", len(body)) + body


@pytest.fixture
def sandwich(origin_factory, proxy_factory):
    origin = origin_factory("a")
    proxy = proxy_factory(service_yaml("web", [("127.0.0.1", origin.port)], cluster_ip=VIP),
                          extra=["--proxy-protocol-listen", "127.0.0.1:0"])
    return proxy, origin


def exchange(proxy, payload):
    s = socket.create_connection(("127.0.0.1", proxy.proxy_protocol_port), timeout=5)
    s.sendall(payload)
    s.shutdown(socket.SHUT_WR)
    return read_to_close(s)


def test_request_after_the_header_is_served_with_the_tunnel_identity(sandwich):
    proxy, origin = sandwich
    response = exchange(proxy, header() + b"GET /sandwich HTTP/1.1\r\nHost: web\r\nConnection: close\r\n\r\n")
    assert status_of(response) == 200
    seen = json.loads(response.split(b"\r\n\r\n", 1)[1])
    assert seen["path"] == "/sandwich"
    assert seen["headers"]["x-forwarded-for"] == "10.1.2.3"
    entry = json.loads(wait_for(r'\{[^\n]*"path":"/sandwich"[^\n]*\n', proxy.stdout_path).group(0))
    assert entry["downstream_peer_principal"] == "cluster.local/ns/default/sa/frontend"
    assert entry["downstream_remote_address"] == "10.1.2.3:5555"


def test_header_split_across_reads_still_works(sandwich):
    proxy, _ = sandwich
    s = socket.create_connection(("127.0.0.1", proxy.proxy_protocol_port), timeout=5)
    h = header()
    s.sendall(h[:7])
    s.sendall(h[7:20])
    s.sendall(h[20:] + b"GET / HTTP/1.1\r\nHost: web\r\nConnection: close\r\n\r\n")
    assert status_of(read_to_close(s)) == 200


@pytest.mark.parametrize("payload", [
    b"GET / HTTP/1.1\r\nHost: web\r\n\r\n",                                   # no header at all
    b"PROXY TCP4 10.1.2.3 10.96.0.10 5555 80\r\nGET / HTTP/1.1\r\n\r\n",       # v1 text header
    header(identity=None) + b"GET / HTTP/1.1\r\nHost: web\r\n\r\n",            # no identity TLV
    header(identity=b"spiffe://evil.example/ns/default/sa/frontend") + b"GET / HTTP/1.1\r\nHost: web\r\n\r\n",
    header(identity=b"not a spiffe id") + b"GET / HTTP/1.1\r\nHost: web\r\n\r\n",
    header(dst=("10.96.0.99", 80)) + b"GET / HTTP/1.1\r\nHost: web\r\n\r\n",   # not a destination served here
    header(command=0x20) + b"GET / HTTP/1.1\r\nHost: web\r\n\r\n",             # LOCAL command
    header(family=0x12) + b"GET / HTTP/1.1\r\nHost: web\r\n\r\n",              # UDP
    header()[:-5] ,                                                            # truncated, then EOF
])
def test_bad_header_closes_without_reaching_the_upstream(sandwich, payload):
    proxy, origin = sandwich
    assert exchange(proxy, payload) == b""
    assert proxy.metrics()["waypoint_proxy_protocol_rejected_total"] == 1
    assert proxy.metrics()['waypoint_upstream_connections_total'] == 0
