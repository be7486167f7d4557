"""External authorization (a CUSTOM AuthorizationPolicy calling an `extensionProviders` entry of the mesh config in
the `istio` ConfigMap), black-box, against check servers we did not write the protocol of: an HTTP one
(`http.server`) and a gRPC one (`grpcio`, serving `envoy.service.auth.v3.Authorization/Check` with the messages
compiled at test time by protobuf's own compiler). They allow with headers, deny with a status, headers and a
body, time out, fail with a 5xx or UNAVAILABLE, and go away (failOpen both ways); requests arrive over HTTP/1.1
and over h2c inside an HBONE tunnel."""
import json
import threading
import time
from concurrent import futures
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import grpc
from google.protobuf import wrappers_pb2 as wrappers

from conftest import compiled_proto, free_port, http_request, origin_requests, service_yaml, wait_for
from test_h2c import InnerH2, h2c_origin  # noqa: F401 (fixture)
from test_hbone import VIP, FORWARDED, certs, client, hbone_proxy  # noqa: F401 (fixtures)


class HTTPAuthorizer:
    """An HTTP check server: the check's `x-ext-authz` header says how to answer (allow, deny, slow, error).
    Every check it gets is kept: (method, path, headers)."""

    def __init__(self):
        checks = self.checks = []
        bodies = self.bodies = []

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def answer(self):
                checks.append((self.command, self.path, {k.lower(): v for k, v in self.headers.items()}))
                bodies.append(self.rfile.read(int(self.headers.get("content-length", "0"))))
                verdict = self.headers.get("x-ext-authz", "")
                if verdict == "slow":
                    time.sleep(2)
                if verdict in ("allow", "slow"):
                    self.send_response(200)
                    self.send_header("x-user", "alice")
                    self.send_header("x-ext-authz-check-result", "allowed")
                    self.send_header("x-envoy-auth-headers-to-remove", "x-api-key")
                    self.send_header("content-length", "0")
                    self.end_headers()
                elif verdict == "error":
                    self.send_response(500)
                    self.send_header("content-length", "0")
                    self.end_headers()
                else:
                    body = b"denied by ext_authz\n"
                    self.send_response(403)
                    self.send_header("x-ext-authz-check-result", "denied")
                    self.send_header("content-type", "text/plain; charset=utf-8")
                    self.send_header("content-length", str(len(body)))
                    self.end_headers()
                    self.wfile.write(body)

            do_GET = do_POST = do_HEAD = do_DELETE = answer

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()


def messages():
    """The ext_authz.proto modules (messages, services)."""
    return compiled_proto("ext_authz")


class GRPCAuthorizer:
    """`envoy.service.auth.v3.Authorization/Check`: allows with `x-user: bob` set and `x-remove-me` removed,
    denies with 401, `www-authenticate` and a body, or fails the call (UNAVAILABLE), as the request's
    `x-ext-authz` header says. Every CheckRequest it gets is kept."""

    def __init__(self):
        pb, pb_grpc = messages()
        self.checks = []
        outer = self

        class Service(pb_grpc.AuthorizationServicer):
            def Check(self, request, context):
                outer.checks.append(request)
                verdict = request.attributes.request.http.headers.get("x-ext-authz", "")
                if verdict == "body":   # allowed when the body, as the check carries it, says so
                    http = request.attributes.request.http
                    verdict = "allow" if (http.raw_body or http.body.encode()).startswith(b"allow") else "deny"
                if verdict == "allow":
                    return pb.CheckResponse(
                        status=pb.RpcStatus(code=0),
                        ok_response=pb.OkHttpResponse(
                            headers=[pb.HeaderValueOption(header=pb.HeaderValue(key="x-user", value="bob")),
                                     pb.HeaderValueOption(header=pb.HeaderValue(key="x-tag", value="authz"),
                                                          append=wrappers.BoolValue(value=True))],
                            headers_to_remove=["x-remove-me"]))
                if verdict == "fail":
                    context.abort(grpc.StatusCode.UNAVAILABLE, "policy engine down")
                return pb.CheckResponse(
                    status=pb.RpcStatus(code=7),
                    denied_response=pb.DeniedHttpResponse(
                        status=pb.HttpStatus(code=401),
                        headers=[pb.HeaderValueOption(header=pb.HeaderValue(key="www-authenticate", value='Bearer realm="shop"'))],
                        body="no token\n"))

        self.server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
        pb_grpc.add_AuthorizationServicer_to_server(Service(), self.server)
        self.port = self.server.add_insecure_port("127.0.0.1:0")
        self.server.start()


def mesh_config(providers):
    """The `istio` ConfigMap in the root namespace, its `mesh` key holding `providers` (YAML, indented 4)."""
    return f"""
---
apiVersion: v1
kind: ConfigMap
metadata: {{name: istio, namespace: istio-system}}
data:
  mesh: |
    extensionProviders:
{providers}"""


def custom_policy(provider, paths="/api/*"):
    return f"""
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {{name: ext-authz, namespace: default}}
spec:
  targetRefs: [{{kind: Service, group: "", name: web}}]
  action: CUSTOM
  provider: {{name: {provider}}}
  rules: [{{to: [{{operation: {{paths: ["{paths}"]}}}}]}}]
"""


def config(origin, authorizer_port, providers, provider, cluster_ip=None, port_name="http"):
    return (service_yaml("web", [("127.0.0.1", origin.port)], cluster_ip=cluster_ip, port_name=port_name)
            + "---" + service_yaml("ext-authz", [("127.0.0.1", authorizer_port)], namespace="foo", port=8000)
            + mesh_config(providers) + custom_policy(provider))


HTTP_PROVIDER = """
    - name: http-authz
      envoyExtAuthzHttp:
        service: ext-authz.foo.svc.cluster.local
        port: 8000
        timeout: 500ms
        statusOnError: "503"
        pathPrefix: /check
        includeRequestHeadersInCheck: [x-ext-authz, "x-forwarded-*"]
        includeAdditionalHeadersInCheck: {x-check-from: waypoint}
        headersToUpstreamOnAllow: [x-user]
        headersToDownstreamOnDeny: [x-ext-authz-check-result, content-type]
"""


def get(proxy, path, verdict=None, headers=None):
    headers = dict(headers or {})
    if verdict:
        headers["x-ext-authz"] = verdict
    return http_request(proxy.port, "GET", path, host="web", headers=headers)


def test_http_authorizer_allows_denies_and_fails_closed(origin_factory, proxy_factory):
    origin = origin_factory("a")
    authorizer = HTTPAuthorizer()
    proxy = proxy_factory(config(origin, authorizer.port, HTTP_PROVIDER, "http-authz"))
    # not selected by the CUSTOM rule: never checked
    assert get(proxy, "/public")[0] == 200
    assert authorizer.checks == []
    # allowed: the authorizer's x-user reaches the upstream, its other headers do not, and the header it asks
    # to remove (x-envoy-auth-headers-to-remove) is gone
    status, _, body = get(proxy, "/api/items?q=1", "allow",
                          {"Authorization": "Bearer t0k", "x-other": "not sent", "x-forwarded-proto": "http", "x-api-key": "k3y"})
    assert status == 200, body
    seen = json.loads(body)["headers"]
    assert seen.get("x-user") == "alice" and "x-ext-authz-check-result" not in seen
    assert "x-api-key" not in seen and "x-envoy-auth-headers-to-remove" not in seen and seen["x-other"] == "not sent"
    method, path, checked = authorizer.checks[-1]
    assert (method, path) == ("GET", "/check/api/items?q=1")
    assert checked["host"] == "web" and checked["content-length"] == "0"
    assert checked["authorization"] == "Bearer t0k"             # Envoy always sends it
    assert checked["x-ext-authz"] == "allow" and checked["x-forwarded-proto"] == "http"
    assert checked["x-check-from"] == "waypoint"
    assert "x-other" not in checked
    # denied: the authorizer's status, the headers the provider passes on, and its body; the upstream never hears
    before = origin_requests(origin.port)
    status, headers, body = get(proxy, "/api/items", "deny")
    assert (status, body) == (403, b"denied by ext_authz\n")
    assert headers["x-ext-authz-check-result"] == "denied" and headers["content-type"] == "text/plain; charset=utf-8"
    # failed: a 5xx from the authorizer and no answer within the timeout are statusOnError, failing closed
    assert get(proxy, "/api/items", "error")[0] == 503
    started = time.time()
    assert get(proxy, "/api/items", "slow")[0] == 503
    assert time.time() - started < 1.5
    assert origin_requests(origin.port) == before
    # a timed-out check's connection is closed (its late answer could be taken for the next one's); a new one serves
    assert get(proxy, "/api/items", "allow")[0] == 200
    metrics = proxy.metrics()
    assert metrics['waypoint_ext_authz_checks_total{result="allowed"}'] == 2
    assert metrics['waypoint_ext_authz_checks_total{result="denied"}'] == 1
    assert metrics['waypoint_ext_authz_checks_total{result="failed_denied"}'] == 2
    entry = json.loads(wait_for(r'\{[^\n]*"response_code":403[^\n]*\n', proxy.stdout_path).group(0))
    assert entry["response_flags"] == "UAEX", entry


def test_an_unreachable_authorizer_fails_open_or_closed_as_configured(origin_factory, proxy_factory):
    origin = origin_factory("a")
    dead = free_port()
    for fail_open, expected in (("true", 200), ("false", 403)):
        providers = f"""
    - name: gone
      envoyExtAuthzHttp:
        service: ext-authz.foo.svc.cluster.local
        port: 8000
        failOpen: {fail_open}
"""
        proxy = proxy_factory(config(origin, dead, providers, "gone"), name=f"proxy-{fail_open}")
        assert get(proxy, "/api/x", "allow")[0] == expected, fail_open
        result = "failed_allowed" if fail_open == "true" else "failed_denied"
        assert proxy.metrics()[f'waypoint_ext_authz_checks_total{{result="{result}"}}'] == 1


def test_a_custom_policy_naming_no_provider_denies(origin_factory, proxy_factory):
    origin = origin_factory("a")
    proxy = proxy_factory(service_yaml("web", [("127.0.0.1", origin.port)]) + custom_policy("nowhere"))
    assert get(proxy, "/api/x", "allow")[0] == 403
    assert get(proxy, "/public")[0] == 200
    assert 'extension provider "nowhere" is not in the mesh config' in proxy.stderr()


GRPC_PROVIDER = """
    - name: grpc-authz
      envoyExtAuthzGrpc:
        service: ext-authz.foo.svc.cluster.local
        port: 8000
        timeout: 2s
"""


def test_grpc_authorizer_over_http1(origin_factory, proxy_factory):
    origin = origin_factory("a")
    authorizer = GRPCAuthorizer()
    proxy = proxy_factory(config(origin, authorizer.port, GRPC_PROVIDER, "grpc-authz"))
    status, _, body = get(proxy, "/api/items?id=7", "allow", {"x-remove-me": "secret", "x-request-id": "rid-1", "x-tag": "client"})
    assert status == 200, body
    seen = json.loads(body)["headers"]
    assert seen.get("x-user") == "bob" and "x-remove-me" not in seen
    assert seen["x-tag"] == "client,authz"                               # append: true joins, as Envoy 1.40 does
    check = authorizer.checks[-1].attributes
    http = check.request.http
    assert (http.method, http.path, http.host, http.scheme, http.protocol) == ("GET", "/api/items?id=7", "web", "http", "HTTP/1.1")
    assert http.id == "rid-1" and http.headers["x-remove-me"] == "secret" and http.headers[":path"] == "/api/items?id=7"
    assert check.source.address.socket_address.address == "127.0.0.1" and check.source.address.socket_address.port_value > 0
    assert check.request.time.seconds >= int(time.time()) - 60
    status, headers, body = get(proxy, "/api/items", "deny")
    assert (status, body, headers["www-authenticate"]) == (401, b"no token\n", 'Bearer realm="shop"')
    # the call failing (UNAVAILABLE) is a failed check: statusOnError's default, 403
    assert get(proxy, "/api/items", "fail")[0] == 403
    metrics = proxy.metrics()
    assert [metrics[f'waypoint_ext_authz_checks_total{{result="{r}"}}'] for r in ("allowed", "denied", "failed_denied")] == [1, 1, 1]


def test_grpc_authorizer_for_h2c_in_an_hbone_tunnel(hbone_proxy, certs, h2c_origin):
    authorizer = GRPCAuthorizer()
    # the port declares no protocol: each tunnel's is detected (h2c here), and the origin speaks h2c
    proxy = hbone_proxy(config(h2c_origin, authorizer.port, GRPC_PROVIDER, "grpc-authz", cluster_ip=VIP, port_name="web"))
    c = client(proxy, certs)
    sid = c.connect(f"{VIP}:80", headers=[FORWARDED])
    assert c.status(sid) == 200
    inner = InnerH2(c, sid)
    denied = inner.request("/api/items", headers=[("x-ext-authz", "deny")])
    head = inner.wait(denied)
    assert (head[":status"], head["www-authenticate"], inner.data[denied]) == ("401", 'Bearer realm="shop"', b"no token\n")
    allowed = inner.request("/api/items", headers=[("x-ext-authz", "allow"), ("x-remove-me", "secret"), ("x-tag", "client")])
    assert inner.wait(allowed)[":status"] == "200"
    forwarded = dict(h2c_origin.seen[-1][0])
    assert forwarded["x-user"] == "bob" and "x-remove-me" not in forwarded
    assert forwarded["x-tag"] == "client,authz"                           # append: true joins, as Envoy 1.40 does
    assert len(h2c_origin.seen) == 1                                     # the denied request never reached it
    check = authorizer.checks[0].attributes
    assert check.request.http.protocol == "HTTP/2"
    assert check.source.principal == "spiffe://cluster.local/ns/default/sa/frontend"
    assert check.source.address.socket_address.address == "10.1.2.3"    # the tunnel's Forwarded for=
    assert check.destination.address.socket_address.port_value == 80


def body_provider(name, kind, body):
    return f"""
    - name: {name}
      {kind}:
        service: ext-authz.foo.svc.cluster.local
        port: 8000
        includeRequestHeadersInCheck: [x-ext-authz]
        includeRequestBodyInCheck: {body}
"""


def post(proxy, body, verdict="allow", chunked=False, expect=False):
    """POSTs `body` (chunked in 7-byte chunks when asked); returns (status, the origin's JSON or the body)."""
    import socket
    head = f"POST /api/items HTTP/1.1\r\nHost: web\r\nx-ext-authz: {verdict}\r\n"
    if expect:
        head += "Expect: 100-continue\r\n"
    if chunked:
        framed = b"".join(b"%x\r\n%s\r\n" % (len(body[i:i + 7]), body[i:i + 7]) for i in range(0, len(body), 7)) + b"0\r\n\r\n"
        head += "Transfer-Encoding: chunked\r\n\r\n"
    else:
        framed = body
        head += f"Content-Length: {len(body)}\r\n\r\n"
    with socket.create_connection(("127.0.0.1", proxy.port), timeout=10) as s:
        s.sendall(head.encode())
        if expect:
            assert s.recv(100) == b"HTTP/1.1 100 Continue\r\n\r\n"
        s.sendall(framed)
        response = b""
        while b"\r\n\r\n" not in response:
            response += s.recv(65536)
        head_bytes, _, rest = response.partition(b"\r\n\r\n")
        length = int(next(line.split(b":")[1] for line in head_bytes.split(b"\r\n") if line.lower().startswith(b"content-length")))
        while len(rest) < length:
            rest += s.recv(65536)
        status = int(head_bytes.split(b" ")[1])
        return status, (json.loads(rest) if status == 200 else rest)


def test_the_http_check_carries_the_body_and_the_upstream_gets_all_of_it(origin_factory, proxy_factory):
    """`includeRequestBodyInCheck`: the check's body is the request's, or its first maxRequestBytes with
    `x-envoy-auth-partial-body: true`; the upstream gets the whole body either way, content-length or chunked."""
    origin = origin_factory("a")
    authorizer = HTTPAuthorizer()
    provider = body_provider("http-body", "envoyExtAuthzHttp", "{maxRequestBytes: 16, allowPartialMessage: true}")
    proxy = proxy_factory(config(origin, authorizer.port, provider, "http-body"))
    for chunked in (False, True):
        for expect in (False, True):
            status, seen = post(proxy, b"small body", chunked=chunked, expect=expect)
            assert status == 200 and seen["body_length"] == 10, seen
            assert authorizer.bodies[-1] == b"small body"
            assert authorizer.checks[-1][2]["x-envoy-auth-partial-body"] == "false"
            assert authorizer.checks[-1][2]["content-length"] == "10"
            big = bytes(range(48, 48 + 70)) * 1000
            status, seen = post(proxy, big, chunked=chunked, expect=expect)
            assert status == 200 and seen["body_length"] == len(big), seen
            assert authorizer.bodies[-1] == big[:16] and authorizer.checks[-1][2]["x-envoy-auth-partial-body"] == "true"
    # a bodiless request's check is as before: content-length 0, no partial-body header
    assert get(proxy, "/api/items", "allow")[0] == 200
    assert authorizer.bodies[-1] == b"" and "x-envoy-auth-partial-body" not in authorizer.checks[-1][2]


def test_a_body_over_the_limit_is_refused_without_partial_messages(origin_factory, proxy_factory):
    origin = origin_factory("a")
    authorizer = HTTPAuthorizer()
    provider = body_provider("http-body", "envoyExtAuthzHttp", "{maxRequestBytes: 16}")
    proxy = proxy_factory(config(origin, authorizer.port, provider, "http-body"))
    checks = len(authorizer.checks)
    for chunked in (False, True):
        assert post(proxy, b"x" * 17, chunked=chunked) == (413, b"Payload Too Large")
    assert len(authorizer.checks) == checks and origin_requests(origin.port) == 0   # never asked, never forwarded
    assert post(proxy, b"x" * 16)[0] == 200


def test_a_body_too_slow_for_the_check_is_refused_even_failing_open(origin_factory, proxy_factory):
    """A body that has not arrived within the authorizer's timeout gets 408: never a failed check that `failOpen`
    would let through unread. The check's own timeout starts when it is sent."""
    import socket
    origin = origin_factory("a")
    authorizer = HTTPAuthorizer()
    provider = body_provider("http-body", "envoyExtAuthzHttp", "{maxRequestBytes: 64}") + "        timeout: 500ms\n        failOpen: true\n"
    proxy = proxy_factory(config(origin, authorizer.port, provider, "http-body"))
    checks = len(authorizer.checks)
    with socket.create_connection(("127.0.0.1", proxy.port), timeout=5) as s:
        s.sendall(b"POST /api/items HTTP/1.1\r\nHost: web\r\nx-ext-authz: allow\r\nContent-Length: 10\r\n\r\nabc")
        response = s.recv(4096)
    assert response.startswith(b"HTTP/1.1 408 "), response
    assert len(authorizer.checks) == checks and origin_requests(origin.port) == 0
    assert post(proxy, b"on time")[0] == 200                    # a whole body in time is checked and forwarded
    assert authorizer.bodies[-1] == b"on time"


def test_the_grpc_check_carries_the_body_as_text_or_bytes(origin_factory, proxy_factory, hbone_proxy, certs, h2c_origin):
    origin = origin_factory("a")
    for packed in ("false", "true"):
        authorizer = GRPCAuthorizer()
        provider = body_provider("grpc-body", "envoyExtAuthzGrpc", f"{{maxRequestBytes: 64, packAsBytes: {packed}}}")
        proxy = proxy_factory(config(origin, authorizer.port, provider, "grpc-body"), name=f"packed-{packed}")
        status, seen = post(proxy, b"allow: me", verdict="body")
        assert status == 200 and seen["body_length"] == 9
        http = authorizer.checks[-1].attributes.request.http
        assert (http.raw_body, http.body) == ((b"allow: me", "") if packed == "true" else (b"", "allow: me"))
        assert http.headers["x-envoy-auth-partial-body"] == "false"
        assert post(proxy, b"deny me", verdict="body")[0] == 401
    # h2c inside an HBONE tunnel: the body is collected from DATA frames
    authorizer = GRPCAuthorizer()
    provider = body_provider("grpc-body", "envoyExtAuthzGrpc", "{maxRequestBytes: 1000, allowPartialMessage: true}")
    proxy = hbone_proxy(config(h2c_origin, authorizer.port, provider, "grpc-body", cluster_ip=VIP, port_name="web"), name="h2c")
    c = client(proxy, certs)
    sid = c.connect(f"{VIP}:80", headers=[FORWARDED])
    assert c.status(sid) == 200
    inner = InnerH2(c, sid)
    body = b"allow" + b"." * 60000
    stream = inner.request("/api/items", headers=[("x-ext-authz", "body")], body=body, method="POST")
    assert inner.wait(stream)[":status"] == "200"
    assert h2c_origin.seen[-1][1] == body
    http = authorizer.checks[-1].attributes.request.http
    assert http.body == body[:1000].decode() and http.headers["x-envoy-auth-partial-body"] == "true"
    denied = inner.request("/api/items", headers=[("x-ext-authz", "body")], body=b"nope", method="POST")
    assert inner.wait(denied)[":status"] == "401"


def test_explain_says_which_provider_is_asked_first(workdir, origin_factory):
    import subprocess
    from conftest import BINARY
    path = workdir / "explain.yaml"
    path.write_text(config(origin_factory("a"), 9, HTTP_PROVIDER, "http-authz"))
    out = subprocess.run([str(BINARY), "explain", "--config", str(path), "--host", "web", "--path", "/api/x"],
                         capture_output=True, text=True).stdout
    assert ("external authorization: CUSTOM default/ext-authz asks provider http-authz "
            "(ext-authz.foo.svc.cluster.local:8000) first; what follows holds if it allows (failing, answered 503)") in out, out
    assert "result: forwarded by route" in out
    public = subprocess.run([str(BINARY), "explain", "--config", str(path), "--host", "web", "--path", "/public"],
                            capture_output=True, text=True).stdout
    assert "external authorization" not in public, public


def test_an_authorizer_in_the_mesh_is_reached_through_hbone(origin_factory, hbone_proxy, certs):
    """The authorizer's endpoint is an ambient workload (its EndpointSlice says `networking.istio.io/tunnel: http`):
    checks travel in HBONE tunnels to its node, with the waypoint's own identity, and allow and deny as before."""
    origin = origin_factory("a")
    authorizer = HTTPAuthorizer()
    # the authorizer's node: an HBONE terminator that knows it as a workload address
    node = hbone_proxy(service_yaml("ext-authz", [("127.0.0.1", authorizer.port)], namespace="foo", port=8000), name="node")
    meshed = (service_yaml("web", [("127.0.0.1", origin.port)])
              + "---" + service_yaml("ext-authz", [("127.0.0.1", authorizer.port)], namespace="foo", port=8000).replace(
                  "labels: {kubernetes.io/service-name: ext-authz}}",
                  "labels: {kubernetes.io/service-name: ext-authz}, annotations: {networking.istio.io/tunnel: http}}")
              # the first check waits for an mTLS handshake with the node: more than 500 ms on a busy machine
              + mesh_config(HTTP_PROVIDER.replace("timeout: 500ms", "timeout: 10s")) + custom_policy("http-authz"))
    assert "networking.istio.io/tunnel" in meshed
    waypoint = hbone_proxy(meshed, extra=["--upstream-hbone-port", str(node.hbone_port)], name="waypoint")
    assert get(waypoint, "/api/x", "allow")[0] == 200
    assert get(waypoint, "/api/x", "deny")[0] == 403
    assert [path for _, path, _ in authorizer.checks] == ["/check/api/x", "/check/api/x"]
    entry = json.loads(wait_for(r'\{[^\n]*"path":"/check/api/x"[^\n]*\n', node.stdout_path).group(0))
    assert entry["downstream_peer_principal"] == "cluster.local/ns/default/sa/waypoint"
    assert node.metrics()["waypoint_tunnels_total"] >= 1
