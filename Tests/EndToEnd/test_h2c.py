"""h2c inside HBONE tunnels: a second HTTP/2 session in the tunnel, each inner request routed like HTTP/1.1 and
proxied to an HTTP/2 (prior knowledge) upstream, trailers (gRPC) passed through; local answers to gRPC requests
are gRPC errors. The upstream and the inner client are Python's h2 (a stack this project did not write)."""
import json
import socket
import ssl
import threading
import time

import h2.config
import h2.connection
import h2.events
import pytest

from conftest import service_yaml, wait_for
from test_hbone import VIP, FORWARDED, certs, client, hbone_proxy  # noqa: F401 (fixtures)


class H2COrigin:
    """An h2c server: answers every request with JSON about it; `/grpc` answers with gRPC framing and trailers.
    A query `fail=N&key=K&how=H` makes the first N requests with key K fail: `503`, `refuse` (RST_STREAM
    REFUSED_STREAM), `reset` (RST_STREAM INTERNAL_ERROR), `grpc14`/`grpc13` (trailers-only gRPC status),
    `goaway` (GOAWAY refusing the stream, then close), `midreset` (a head and part of the body, then
    RST_STREAM) or `hang` (no answer)."""

    def __init__(self, tls=None):
        self.tls = tls          # an ssl.SSLContext: HTTP/2 over TLS (its ALPN protocols as set), not h2c
        self.alpn = []          # the ALPN protocol of every TLS connection (None: none agreed)
        self.listener = socket.socket()
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(16)
        self.port = self.listener.getsockname()[1]
        self.connections = 0
        self.closed = 0         # connections the proxy closed
        self.seen = []          # (headers, body) of every complete request
        self.arrived = []       # headers of every request, complete or not
        self.failed = {}        # key -> failures so far
        self.lock = threading.Lock()
        threading.Thread(target=self.accept, daemon=True).start()

    def accept(self):
        while True:
            try:
                s, _ = self.listener.accept()
            except OSError:
                return
            self.connections += 1
            threading.Thread(target=self.serve, args=(s,), daemon=True).start()

    def failure(self, headers):
        """How this request should fail (None: answer it)."""
        path = headers[":path"]
        if "?" not in path:
            return None
        query = dict(kv.split("=", 1) for kv in path.split("?", 1)[1].split("&") if "=" in kv)
        if "fail" not in query:
            return None
        with self.lock:
            key = query.get("key", "")
            if self.failed.get(key, 0) >= int(query["fail"]):
                return None
            self.failed[key] = self.failed.get(key, 0) + 1
        return query.get("how", "503")

    def serve(self, s):
        if self.tls:
            try:
                s = self.tls.wrap_socket(s, server_side=True)
            except (ssl.SSLError, OSError):
                return
            self.alpn.append(s.selected_alpn_protocol())
        conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=False, header_encoding="utf-8"))
        conn.initiate_connection()
        s.sendall(conn.data_to_send())
        requests, bodies, failing = {}, {}, {}
        while True:
            try:
                data = s.recv(65536)
            except OSError:
                return
            if not data:
                self.closed += 1
                return
            for event in conn.receive_data(data):
                if isinstance(event, h2.events.RequestReceived):
                    headers = dict(event.headers)
                    self.arrived.append(headers)
                    how = self.failure(headers)
                    if how == "refuse" or how == "reset":
                        conn.reset_stream(event.stream_id, error_code=7 if how == "refuse" else 2)
                    elif how == "goaway":
                        conn.close_connection(last_stream_id=max(0, event.stream_id - 2))
                        s.sendall(conn.data_to_send())
                        s.close()
                        return
                    else:
                        requests[event.stream_id] = headers
                        bodies[event.stream_id] = b""
                        failing[event.stream_id] = how
                elif isinstance(event, h2.events.DataReceived):
                    if event.stream_id in bodies:
                        bodies[event.stream_id] += event.data
                    conn.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
                elif isinstance(event, h2.events.StreamEnded) and event.stream_id in requests:
                    headers = requests.pop(event.stream_id)
                    body = bodies.pop(event.stream_id)
                    how = failing.pop(event.stream_id)
                    self.seen.append((headers, body))
                    if how == "hang":
                        continue
                    if how in ("grpc14", "grpc13"):
                        conn.send_headers(event.stream_id, [(":status", "200"), ("content-type", "application/grpc"),
                                                            ("grpc-status", how[4:]), ("grpc-message", "failing")], end_stream=True)
                    elif how == "midreset":
                        conn.send_headers(event.stream_id, [(":status", "200"), ("content-length", "100")])
                        conn.send_data(event.stream_id, b"part")
                        conn.reset_stream(event.stream_id, error_code=2)
                    elif how == "503":
                        conn.send_headers(event.stream_id, [(":status", "503"), ("content-length", "4")])
                        conn.send_data(event.stream_id, b"fail", end_stream=True)
                    elif headers[":path"].startswith("/grpc"):
                        conn.send_headers(event.stream_id, [(":status", "200"), ("content-type", "application/grpc")])
                        conn.send_data(event.stream_id, b"\x00\x00\x00\x00\x02hi")
                        conn.send_headers(event.stream_id, [("grpc-status", "0"), ("grpc-message", "ok")], end_stream=True)
                    else:
                        out = json.dumps({"path": headers[":path"], "headers": headers, "body_length": len(body)}).encode()
                        conn.send_headers(event.stream_id, [(":status", "200"), ("content-type", "application/json"),
                                                            ("content-length", str(len(out)))])
                        conn.send_data(event.stream_id, out, end_stream=True)
            try:
                s.sendall(conn.data_to_send())
            except OSError:
                return


class InnerH2:
    """An h2 client whose bytes travel inside one HBONE tunnel."""

    def __init__(self, tunnel_client, sid):
        self.c, self.sid = tunnel_client, sid
        self.conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True, header_encoding="utf-8"))
        self.conn.initiate_connection()
        self.seen = 0
        self.responses, self.data, self.trailers, self.ended, self.resets = {}, {}, {}, set(), {}
        self.flush()

    def flush(self):
        out = self.conn.data_to_send()
        if out:
            self.c.send(self.sid, out)

    def request(self, path, headers=(), body=None, method="GET"):
        stream = self.conn.get_next_available_stream_id()
        self.conn.send_headers(stream, [(":method", method), (":scheme", "http"), (":authority", "web"), (":path", path), *headers],
                               end_stream=body is None)
        if body is not None:
            for i in range(0, len(body), 16384):   # the default frame size (the server's SETTINGS may not be in yet)
                self.conn.send_data(stream, body[i:i + 16384], end_stream=i + 16384 >= len(body))
        self.flush()
        return stream

    def wait(self, stream):
        def done():
            buf = bytes(self.c.data.get(self.sid, b""))
            if len(buf) > self.seen:
                for event in self.conn.receive_data(buf[self.seen:]):
                    if isinstance(event, h2.events.ResponseReceived):
                        self.responses[event.stream_id] = dict(event.headers)
                    elif isinstance(event, h2.events.TrailersReceived):
                        self.trailers[event.stream_id] = dict(event.headers)
                    elif isinstance(event, h2.events.DataReceived):
                        self.data[event.stream_id] = self.data.get(event.stream_id, b"") + event.data
                        self.conn.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
                    elif isinstance(event, h2.events.StreamEnded):
                        self.ended.add(event.stream_id)
                    elif isinstance(event, h2.events.StreamReset):
                        self.resets[event.stream_id] = event.error_code
                self.seen = len(buf)
                self.flush()
            return stream in self.ended or stream in self.resets
        assert self.c.wait(done), "tunnel closed"
        return self.responses.get(stream, {})


@pytest.fixture
def h2c_origin():
    return H2COrigin()


def test_h2c_requests_are_routed_and_proxied_over_http2(hbone_proxy, certs, h2c_origin):
    proxy = hbone_proxy(service_yaml("web", [("127.0.0.1", h2c_origin.port)], cluster_ip=VIP, app_protocol="kubernetes.io/h2c"))
    c = client(proxy, certs)
    sid = c.connect(f"{VIP}:80", headers=[FORWARDED])
    assert c.status(sid) == 200
    inner = InnerH2(c, sid)
    streams = [inner.request(f"/h2/{i}") for i in range(5)]
    post = inner.request("/upload", body=b"x" * 60000, method="POST")
    for stream in streams + [post]:
        assert inner.wait(stream)[":status"] == "200"
    seen = json.loads(inner.data[streams[0]])
    assert seen["path"] == "/h2/0"
    assert seen["headers"]["x-forwarded-for"] == "10.1.2.3"
    assert "x-request-id" in seen["headers"]
    assert json.loads(inner.data[post])["body_length"] == 60000
    assert h2c_origin.connections == 1          # all requests multiplexed on one upstream HTTP/2 connection
    entry = json.loads(wait_for(r'\{[^\n]*"path":"/h2/0"[^\n]*\n', proxy.stdout_path).group(0))
    assert entry["protocol"] == "HTTP/2" and entry["response_code"] == 200
    assert entry["downstream_peer_principal"] == "cluster.local/ns/default/sa/frontend"
    c.close()


def test_grpc_trailers_pass_through(hbone_proxy, certs, h2c_origin):
    proxy = hbone_proxy(service_yaml("web", [("127.0.0.1", h2c_origin.port)], cluster_ip=VIP, port_name="grpc"))
    c = client(proxy, certs)
    sid = c.connect(f"{VIP}:80")
    assert c.status(sid) == 200
    inner = InnerH2(c, sid)
    stream = inner.request("/grpc.Echo/Say", headers=[("content-type", "application/grpc"), ("te", "trailers")],
                           body=b"\x00\x00\x00\x00\x02yo", method="POST")
    assert inner.wait(stream)[":status"] == "200"
    assert inner.data[stream] == b"\x00\x00\x00\x00\x02hi"
    assert inner.trailers[stream] == {"grpc-status": "0", "grpc-message": "ok"}
    c.close()


def test_h2c_is_detected_from_the_preface(hbone_proxy, certs, h2c_origin):
    proxy = hbone_proxy(service_yaml("web", [("127.0.0.1", h2c_origin.port)], cluster_ip=VIP, port_name="web"))
    c = client(proxy, certs)
    sid = c.connect(f"{VIP}:80")
    assert c.status(sid) == 200
    inner = InnerH2(c, sid)
    stream = inner.request("/detected")
    assert inner.wait(stream)[":status"] == "200"
    assert json.loads(inner.data[stream])["path"] == "/detected"
    c.close()


def test_grpc_request_without_upstream_gets_grpc_unavailable(hbone_proxy, certs):
    closed = socket.socket()
    closed.bind(("127.0.0.1", 0))
    port = closed.getsockname()[1]
    closed.close()
    proxy = hbone_proxy(service_yaml("web", [("127.0.0.1", port)], cluster_ip=VIP, port_name="grpc"))
    c = client(proxy, certs)
    sid = c.connect(f"{VIP}:80")
    assert c.status(sid) == 200
    inner = InnerH2(c, sid)
    grpc = inner.request("/grpc.Echo/Say", headers=[("content-type", "application/grpc")], body=b"\x00\x00\x00\x00\x00", method="POST")
    response = inner.wait(grpc)
    assert response[":status"] == "200" and response["grpc-status"] == "14"     # UNAVAILABLE, trailers-only
    plain = inner.request("/plain")
    assert inner.wait(plain)[":status"] == "503"
    assert inner.data[plain] == b"upstream connect error\n"
    c.close()


def test_h2c_applies_route_filters(hbone_proxy, certs, h2c_origin):
    route = """
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: filters, namespace: default}
spec:
  parentRefs: [{group: "", kind: Service, name: web}]
  rules:
  - matches: [{path: {type: PathPrefix, value: /api}}]
    filters:
    - {type: URLRewrite, urlRewrite: {hostname: backend.internal, path: {type: ReplacePrefixMatch, replacePrefixMatch: /v2}}}
    - {type: RequestHeaderModifier, requestHeaderModifier: {set: [{name: x-env, value: prod}], remove: [x-secret]}}
    - {type: ResponseHeaderModifier, responseHeaderModifier: {add: [{name: x-served-by, value: waypoint}]}}
    backendRefs: [{name: web, port: 80}]
"""
    proxy = hbone_proxy(service_yaml("web", [("127.0.0.1", h2c_origin.port)], cluster_ip=VIP, app_protocol="kubernetes.io/h2c") + route)
    c = client(proxy, certs)
    sid = c.connect(f"{VIP}:80")
    assert c.status(sid) == 200
    inner = InnerH2(c, sid)
    stream = inner.request("/api/items?x=1", headers=[("x-env", "dev"), ("x-secret", "s")])
    response = inner.wait(stream)
    assert response[":status"] == "200" and response["x-served-by"] == "waypoint"
    seen = json.loads(inner.data[stream])
    assert seen["path"] == "/v2/items?x=1"
    assert seen["headers"][":authority"] == "backend.internal" and seen["headers"]["x-env"] == "prod" and "x-secret" not in seen["headers"]
    c.close()


def test_grpc_route_matches_service_and_method(hbone_proxy, certs, h2c_origin):
    route = """
---
apiVersion: gateway.networking.k8s.io/v1
kind: GRPCRoute
metadata: {name: echo, namespace: default}
spec:
  parentRefs: [{group: "", kind: Service, name: web}]
  rules:
  - matches: [{method: {service: grpc.Echo, method: Say}}]
    backendRefs: [{name: web, port: 80}]
  - matches: [{method: {type: RegularExpression, service: "grpc\\\\.Admin", method: "Delete.*"}, headers: [{name: x-tenant, value: ops}]}]
    backendRefs: [{name: web, port: 80}]
"""
    proxy = hbone_proxy(service_yaml("web", [("127.0.0.1", h2c_origin.port)], cluster_ip=VIP, port_name="grpc") + route)
    c = client(proxy, certs)
    sid = c.connect(f"{VIP}:80")
    assert c.status(sid) == 200
    inner = InnerH2(c, sid)
    grpc = [("content-type", "application/grpc"), ("te", "trailers")]

    def call(path, headers=()):
        stream = inner.request(path, headers=grpc + list(headers), body=b"\x00\x00\x00\x00\x02yo", method="POST")
        response = inner.wait(stream)
        return response[":status"], inner.trailers.get(stream, response).get("grpc-status")

    assert call("/grpc.Echo/Say") == ("200", "0")
    assert call("/grpc.Admin/DeleteUser", [("x-tenant", "ops")]) == ("200", "0")
    assert call("/grpc.Admin/DeleteUser", [("x-tenant", "dev")]) == ("200", "12")   # no rule: UNIMPLEMENTED
    assert call("/grpc.Echo/Shout") == ("200", "12")
    c.close()


def test_grpc_mirror_and_fault_delay_over_http2(hbone_proxy, certs, h2c_origin):
    import time
    shadow = H2COrigin()
    routes = """
---
apiVersion: gateway.networking.k8s.io/v1
kind: GRPCRoute
metadata: {name: echo, namespace: default}
spec:
  parentRefs: [{group: "", kind: Service, name: web}]
  rules:
  - matches: [{method: {service: grpc.Echo}}]
    filters: [{type: RequestMirror, requestMirror: {backendRef: {name: shadow, port: 80}}}]
    backendRefs: [{name: web, port: 80}]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: slow, namespace: default}
spec:
  hosts: [slow]
  http:
  - match: [{uri: {prefix: /broken}}]
    fault: {delay: {fixedDelay: 400ms, percentage: {value: 100}}, abort: {httpStatus: 503, percentage: {value: 100}}}
    route: [{destination: {host: web}}]
  - fault: {delay: {fixedDelay: 400ms, percentage: {value: 100}}}
    route: [{destination: {host: web}}]
"""
    config = service_yaml("web", [("127.0.0.1", h2c_origin.port)], cluster_ip=VIP, port_name="grpc") + "---" + \
        service_yaml("shadow", [("127.0.0.1", shadow.port)], port_name="grpc") + "---" + \
        service_yaml("slow", [("127.0.0.1", h2c_origin.port)], cluster_ip="10.96.0.77", port_name="grpc") + routes
    proxy = hbone_proxy(config)
    c = client(proxy, certs)
    sid = c.connect(f"{VIP}:80")
    assert c.status(sid) == 200
    inner = InnerH2(c, sid)
    grpc = [("content-type", "application/grpc"), ("te", "trailers")]
    stream = inner.request("/grpc.Echo/Say", headers=grpc, body=b"\x00\x00\x00\x00\x05hello", method="POST")
    assert inner.wait(stream)[":status"] == "200" and inner.trailers[stream]["grpc-status"] == "0"
    deadline = time.time() + 5
    while not shadow.seen and time.time() < deadline:
        time.sleep(0.02)
    headers, body = shadow.seen[0]
    assert headers[":path"] == "/grpc.Echo/Say" and headers[":authority"].endswith("-shadow")
    assert body == b"\x00\x00\x00\x00\x05hello"
    # A delayed HTTP/2 request: its body, sent while it waits, arrives whole after the delay.
    sid2 = c.connect("10.96.0.77:80")
    assert c.status(sid2) == 200
    slow = InnerH2(c, sid2)
    start = time.time()
    post = slow.request("/upload", body=b"y" * 30000, method="POST")
    assert slow.wait(post)[":status"] == "200"
    assert time.time() - start >= 0.4
    assert json.loads(slow.data[post])["body_length"] == 30000
    assert proxy.metrics()["waypoint_fault_delays_total"] == 1
    # Delay and abort: the abort comes after the delay (Envoy's order), the body sent meanwhile dropped.
    start = time.time()
    broken = slow.request("/broken", body=b"z" * 30000, method="POST")
    assert slow.wait(broken)[":status"] == "503"
    assert time.time() - start >= 0.4
    assert slow.data[broken] == b"fault filter abort"
    assert proxy.metrics()["waypoint_fault_aborts_total"] == 1
    assert len(h2c_origin.seen) == 2                       # the gRPC call and the delayed POST, not /broken
    assert proxy.metrics()['waypoint_mirror_requests_total{result="sent"}'] == 1
    c.close()


def test_h2c_requests_are_traced(hbone_proxy, certs, h2c_origin):
    from test_tracing import Collector, PARENT, TRACE
    collector = Collector()
    proxy = hbone_proxy(service_yaml("web", [("127.0.0.1", h2c_origin.port)], cluster_ip=VIP, port_name="grpc"),
                        extra=["--otlp-endpoint", f"127.0.0.1:{collector.port}", "--trace-sample-rate", "0"])
    c = client(proxy, certs)
    sid = c.connect(f"{VIP}:80")
    assert c.status(sid) == 200
    inner = InnerH2(c, sid)
    stream = inner.request("/traced", headers=[("traceparent", f"00-{TRACE}-{PARENT}-01")])
    assert inner.wait(stream)[":status"] == "200"
    untraced = inner.request("/untraced")
    assert inner.wait(untraced)[":status"] == "200"
    span = collector.wait(1)[0]
    assert span["traceId"] == TRACE and span["parentSpanId"] == PARENT
    assert {a["key"]: a["value"] for a in span["attributes"]}["http.protocol"] == {"stringValue": "HTTP/2"}
    assert json.loads(inner.data[stream])["headers"]["traceparent"] == f"00-{TRACE}-{span['spanId']}-01"
    time.sleep(1.2)
    assert len(collector.spans) == 1
    c.close()
