"""Request mirroring (HTTPRoute RequestMirror, VirtualService mirror): copies reach the mirror, answers are
dropped, and a mirror that never answers does not slow the real requests."""
import socket
import threading
import time

from conftest import http_request, origin_requests, service_yaml, wait_until


class Recorder:
    """A mirror target that records each request until the sender closes, and answers nothing (or `reply`)."""

    def __init__(self, reply=None):
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.port = self.sock.getsockname()[1]
        self.reply = reply
        self.requests = []
        self.held = []
        threading.Thread(target=self.serve, daemon=True).start()

    def serve(self):
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self.read, args=(conn,), daemon=True).start()

    def read(self, conn):
        data = b""
        conn.settimeout(5)
        try:
            while b"\r\n\r\n" not in data:
                data += conn.recv(65536)
            head, _, body = data.partition(b"\r\n\r\n")
            length = int(next((l.split(b":")[1] for l in head.split(b"\r\n") if l.lower().startswith(b"content-length:")), b"0"))
            while len(body) < length:
                body += conn.recv(65536)
            self.requests.append((head.decode(), body))
            if self.reply:
                conn.sendall(self.reply)
                conn.close()
            else:
                self.held.append(conn)   # never answers
        except OSError:
            conn.close()


def route(mirror_port_name, percent=""):
    return f"""
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {{name: web, namespace: default}}
spec:
  parentRefs: [{{group: "", kind: Service, name: web}}]
  rules:
  - filters:
    - type: RequestMirror
      requestMirror: {{backendRef: {{name: {mirror_port_name}, port: 80}}{percent}}}
    backendRefs: [{{name: web, port: 80}}]
"""


def test_request_mirror_copies_head_and_body_and_never_waits(origin_factory, proxy_factory):
    origin = origin_factory("a")
    shadow = Recorder()          # accepts, reads, never answers
    config = service_yaml("web", [("127.0.0.1", origin.port)]) + "---" + \
        service_yaml("shadow", [("127.0.0.1", shadow.port)]) + "---" + route("shadow")
    proxy = proxy_factory(config, extra=["--workers", "1"])
    start = time.time()
    for i in range(20):
        status, headers, _ = http_request(proxy.port, "POST", f"/orders/{i}?q=1", host="web:80", body=f"body-{i}".encode())
        assert (status, headers["x-origin"]) == (200, "a")
    assert time.time() - start < 3          # the mirror never answering costs the real requests nothing
    assert wait_until(lambda: len(shadow.requests) == 20), len(shadow.requests)
    heads = sorted(shadow.requests, key=lambda r: r[1])
    head, body = next(r for r in heads if r[1] == b"body-7")
    lines = head.split("\r\n")
    assert lines[0] == "POST /orders/7?q=1 HTTP/1.1"
    assert "host: web-shadow:80" in [l.lower() for l in lines]
    assert "connection: close" in lines and any(l.lower().startswith("x-forwarded-for:") for l in lines)
    assert proxy.metrics()['waypoint_mirror_requests_total{result="sent"}'] == 20


def test_mirror_percentage_and_virtual_service_mirror(origin_factory, proxy_factory):
    origin = origin_factory("a")
    shadow = Recorder(reply=b"HTTP/1.1 500 Internal Server Error\r\ncontent-length: 0\r\n\r\n")
    vs = """
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: web, namespace: default}
spec:
  hosts: [web]
  http:
  - match: [{uri: {prefix: /half}}]
    route: [{destination: {host: web}}]
    mirror: {host: shadow}
    mirrorPercentage: {value: 50.0}
  - match: [{uri: {prefix: /none}}]
    route: [{destination: {host: web}}]
    mirror: {host: shadow}
    mirrorPercentage: {value: 0}
  - match: [{uri: {prefix: /both}}]
    route: [{destination: {host: web}}]
    mirrors: [{destination: {host: shadow}}, {destination: {host: audit}, percentage: {value: 100}}]
"""
    audit = Recorder(reply=b"HTTP/1.1 204 No Content\r\n\r\n")
    config = service_yaml("web", [("127.0.0.1", origin.port)]) + "---" + \
        service_yaml("shadow", [("127.0.0.1", shadow.port)]) + "---" + \
        service_yaml("audit", [("127.0.0.1", audit.port)]) + "---" + vs
    proxy = proxy_factory(config)
    for i in range(50):
        assert http_request(proxy.port, "GET", f"/none/{i}", host="web")[0] == 200
    for i in range(200):
        assert http_request(proxy.port, "GET", f"/half/{i}", host="web")[0] == 200   # the mirror's 500 is dropped
    time.sleep(0.5)
    paths = [r[0].split(" ")[1] for r in shadow.requests]
    assert not any(p.startswith("/none") for p in paths)
    assert 60 <= len(paths) <= 140, len(paths)   # 50 % of 200, within 5.6 standard deviations
    # `mirrors`: every copy target gets one.
    before = len(shadow.requests)
    assert http_request(proxy.port, "GET", "/both/1", host="web")[0] == 200
    assert wait_until(lambda: len(shadow.requests) == before + 1 and len(audit.requests) == 1)
    assert audit.requests[0][0].startswith("GET /both/1 HTTP/1.1")


def test_a_mirror_after_a_reload_goes_to_its_own_service(origin_factory, proxy_factory):
    """The mirror copy leaves once the body is in. A reload while the body is on its way lists another Service
    first (renumbering the clusters): the copy still goes to `shadow`, not to whatever took its old index."""
    import os
    import signal
    origin = origin_factory("a")
    shadow, other = Recorder(), Recorder()
    config = service_yaml("web", [("127.0.0.1", origin.port)]) + "---" + \
        service_yaml("shadow", [("127.0.0.1", shadow.port)]) + "---" + route("shadow")
    proxy = proxy_factory(config, extra=["--workers", "1"])
    client = socket.create_connection(("127.0.0.1", proxy.port))
    client.sendall(b"POST /slow HTTP/1.1\r\nhost: web\r\ncontent-length: 10\r\n\r\nfirst")
    time.sleep(0.2)
    (proxy.config_dir / "config.yaml").write_text(service_yaml("aaa", [("127.0.0.1", other.port)]) + "---" + config)
    os.kill(proxy.pid, signal.SIGHUP)
    assert wait_until(lambda: proxy.metrics().get('waypoint_config_reloads_total{result="ok"}', 0) >= 1)
    client.sendall(b"-last")
    client.settimeout(5)
    reply = b""
    while b"\r\n\r\n" not in reply:
        reply += client.recv(65536)
    assert reply.startswith(b"HTTP/1.1 200")
    assert wait_until(lambda: len(shadow.requests) == 1)
    assert shadow.requests[0][1] == b"first-last"
    time.sleep(0.2)
    assert (other.requests, origin_requests(origin.port)) == ([], 1)
    client.close()
