"""ServiceEntry `resolution: DNS` and `DNS_ROUND_ROBIN`, black-box, against a DNS server from PyPI (`dnslib`) whose
answers change during the test: the waypoint resolves the hosts off its workers, follows the answers as their TTL
runs out, uses only the first address for DNS_ROUND_ROBIN, and keeps the last answer when the server goes away."""
import pytest
from dnslib import AAAA, QTYPE, RR, A
from dnslib.server import BaseResolver, DNSHandler, DNSServer

from conftest import Process, free_port, http_request, wait_for, wait_until


class Zone(BaseResolver):
    """A records by name (AAAA answered empty), TTL 1 s; every question is kept."""

    def __init__(self):
        self.records = {}
        self.questions = []
        self.protocols = []

    def resolve(self, request, handler):
        reply = request.reply()
        name = str(request.q.qname).rstrip(".").lower()
        self.questions.append((name, QTYPE[request.q.qtype]))
        self.protocols.append(handler.protocol)
        if request.q.qtype == QTYPE.A:
            for ip in self.records.get(name, []):
                reply.add_answer(RR(request.q.qname, QTYPE.A, rdata=A(ip), ttl=1))
        return reply


@pytest.fixture
def zone():
    resolver = Zone()
    server = DNSServer(resolver, port=0, address="127.0.0.1")
    server.start_thread()
    resolver.port = server.server.server_address[1]
    resolver.server = server
    yield resolver
    if server.isAlive():
        server.stop()


def origins(workdir, processes, port):
    """`waypoint origin` a on 127.0.0.1:PORT and b on 127.0.0.2:PORT: one port, two addresses a name can resolve to."""
    for ip, name in (("127.0.0.1", "a"), ("127.0.0.2", "b")):
        p = Process(["origin", "--listen", f"{ip}:{port}", "--name", name], workdir, f"origin-{name}")
        processes.append(p)
        wait_for(r"listening on", p.stderr_path, process=p.proc)


def entry(name, host, port, resolution):
    return f"""
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: {name}, namespace: default}}
spec:
  hosts: [{host}]
  ports: [{{number: 80, name: http, protocol: HTTP, targetPort: {port}}}]
  resolution: {resolution}
---
"""


def served_by(proxy, host):
    status, headers, _ = http_request(proxy.port, "GET", "/", host=host)
    return headers.get("x-origin", status) if status == 200 else status


def test_dns_resolution_follows_the_answers(zone, workdir, processes, proxy_factory):
    port = free_port()
    origins(workdir, processes, port)
    zone.records = {"api.example.com": ["127.0.0.1"], "rr.example.com": ["127.0.0.2", "127.0.0.1"]}
    proxy = proxy_factory(entry("api", "api.example.com", port, "DNS") + entry("rr", "rr.example.com", port, "DNS_ROUND_ROBIN"),
                          extra=["--dns-server", f"127.0.0.1:{zone.port}", "--dns-min-refresh", "1s"])
    assert wait_until(lambda: served_by(proxy, "api.example.com") == "a", timeout=5)
    # DNS_ROUND_ROBIN: the first address only (Envoy's logical DNS)
    assert wait_until(lambda: served_by(proxy, "rr.example.com") == "b", timeout=5)
    assert {served_by(proxy, "rr.example.com") for _ in range(10)} == {"b"}
    # the answer changes: within its TTL (1 s, the floor here) traffic follows
    zone.records["api.example.com"] = ["127.0.0.2"]
    assert wait_until(lambda: served_by(proxy, "api.example.com") == "b", timeout=5)
    # DNS: every address is an endpoint
    zone.records["api.example.com"] = ["127.0.0.1", "127.0.0.2"]
    assert wait_until(lambda: {served_by(proxy, "api.example.com") for _ in range(12)} == {"a", "b"}, timeout=5)
    assert ("api.example.com", "AAAA") in zone.questions          # IPv6 asked too
    ok = proxy.metrics()['waypoint_dns_resolutions_total{result="ok"}']
    assert ok >= 4
    # the name server goes away: failures are counted, the last answer keeps serving
    zone.server.stop()
    assert wait_until(lambda: proxy.metrics()['waypoint_dns_resolutions_total{result="failed"}'] >= 1, timeout=8)
    assert {served_by(proxy, "api.example.com") for _ in range(8)} == {"a", "b"}
    assert "dns: cannot resolve api.example.com" in proxy.stderr()


def test_a_name_that_does_not_resolve_gets_503_and_says_so(zone, workdir, processes, proxy_factory):
    port = free_port()
    proxy = proxy_factory(entry("gone", "gone.example.com", port, "DNS"),
                          extra=["--dns-server", f"127.0.0.1:{zone.port}", "--dns-min-refresh", "1s"])
    assert served_by(proxy, "gone.example.com") == 503
    assert wait_until(lambda: proxy.metrics()['waypoint_dns_resolutions_total{result="ok"}'] >= 1, timeout=5)
    assert "gone.example.com resolved to no address yet" in proxy.stderr()


class TruncatingHandler(DNSHandler):
    udplen = 512   # a larger answer goes over UDP cut short, with TC set: the resolver must ask again over TCP


def test_an_answer_too_large_for_udp_is_asked_again_over_tcp(workdir, processes, proxy_factory):
    zone = Zone()
    for _ in range(20):   # a free UDP port whose number is free for TCP too (a TCP socket may hold it)
        udp = DNSServer(zone, port=0, address="127.0.0.1", handler=TruncatingHandler)
        dns_port = udp.server.server_address[1]
        try:
            tcp = DNSServer(zone, port=dns_port, address="127.0.0.1", tcp=True, handler=TruncatingHandler)
            break
        except OSError:
            udp.server.server_close()
    udp.start_thread()
    tcp.start_thread()
    port = free_port()
    origins(workdir, processes, port)
    # 40 addresses (over 512 bytes), origin b's first: DNS_ROUND_ROBIN uses that one
    zone.records = {"big.example.com": ["127.0.0.2"] + [f"127.0.1.{i}" for i in range(1, 40)]}
    proxy = proxy_factory(entry("big", "big.example.com", port, "DNS_ROUND_ROBIN"),
                          extra=["--dns-server", f"127.0.0.1:{dns_port}", "--dns-min-refresh", "1s"])
    assert wait_until(lambda: served_by(proxy, "big.example.com") == "b", timeout=5)
    assert "udp" in zone.protocols and "tcp" in zone.protocols
    assert proxy.metrics()['waypoint_dns_resolutions_total{result="failed"}'] == 0
    udp.stop()
    tcp.stop()
