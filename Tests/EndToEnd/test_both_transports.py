"""One table of request outcomes run over HTTP/1.1 and over h2c, both inside HBONE tunnels to the same service
(its port declares no protocol, so each tunnel's protocol is detected): the status, Envoy's response flags in the
access log and in Istio's metrics, and the access-log fields must not depend on the transport."""
import collections
import json
import re
import socket

import pytest

from conftest import service_yaml, wait_for
from test_h2c import H2COrigin, InnerH2
from test_hbone import VIP, FORWARDED, certs, client, hbone_proxy  # noqa: F401 (fixtures)

CONFIG = service_yaml("web", [("127.0.0.1", 9)], cluster_ip=VIP, port_name="web") + """---
apiVersion: v1
kind: Service
metadata: {name: empty, namespace: default}
spec:
  ports: [{name: http, port: 80}]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: web, namespace: default}
spec:
  hosts: [web]
  http:
  - match: [{uri: {exact: /teapot}}]
    directResponse: {status: 418, body: {string: "teapot"}}
  - match: [{uri: {prefix: /empty}}]
    route: [{destination: {host: empty}}]
  - match: [{uri: {prefix: /admin}}]
    route: [{destination: {host: web}}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: deny-admin, namespace: default}
spec:
  targetRefs: [{kind: Service, group: "", name: web}]
  action: DENY
  rules: [{to: [{operation: {paths: ["/admin*"]}}]}]
"""

CASES = [
    ("/nowhere", 404, "NR"),          # no VirtualService rule matches
    ("/empty/x", 503, "UH"),          # the destination has no endpoint
    ("/admin/x", 403, "RBAC"),        # denied by the DENY policy
    ("/teapot", 418, "DR"),           # the route's direct response
]
HEADERS = [("user-agent", "probe/2"), ("x-forwarded-for", "203.0.113.9"), ("x-request-id", "rid-{transport}")]


def over_http1(c, sid, path, headers):
    head = "".join(f"{name}: {value}\r\n" for name, value in headers)
    response = c.http(sid, f"GET {path} HTTP/1.1\r\nHost: web\r\n{head}\r\n".encode())
    return int(response.split(b" ", 2)[1])


def over_h2c(inner, path, headers):
    return int(inner.wait(inner.request(path, headers=headers))[":status"])


@pytest.mark.parametrize("transport", ["http1", "h2c"])
def test_local_answers_carry_the_same_flags_and_fields(hbone_proxy, certs, transport):
    proxy = hbone_proxy(CONFIG)
    c = client(proxy, certs)
    sid = c.connect(f"{VIP}:80", headers=[FORWARDED])
    assert c.status(sid) == 200
    inner = InnerH2(c, sid) if transport == "h2c" else None
    headers = [(name, value.format(transport=transport)) for name, value in HEADERS]
    for path, status, _ in CASES:
        got = over_h2c(inner, path, headers) if inner else over_http1(c, sid, path, headers)
        assert got == status, (transport, path)
    protocol = "HTTP/2" if inner else "HTTP/1.1"
    for path, status, flags in CASES:
        entry = json.loads(wait_for(r'\{[^\n]*"path":"' + re.escape(path) + r'"[^\n]*\n', proxy.stdout_path).group(0))
        assert (entry["response_code"], entry["response_flags"], entry["protocol"]) == (status, flags, protocol), entry
        assert (entry["user_agent"], entry["x_forwarded_for"], entry["request_id"]) == ("probe/2", "203.0.113.9", f"rid-{transport}")
        assert entry["downstream_peer_principal"] == "cluster.local/ns/default/sa/frontend"
    metrics = proxy.metrics()
    for _, status, flags in CASES:
        series = [v for k, v in metrics.items() if k.startswith("istio_requests_total{")
                  and f'response_code="{status}"' in k and f'response_flags="{flags}"' in k]
        assert series == [1], (flags, [k for k in metrics if k.startswith("istio_requests_total{")])
    c.close()


@pytest.mark.parametrize("transport", ["http1", "h2c"])
def test_a_forwarded_request_logs_the_request_id_it_sent(hbone_proxy, certs, origin_factory, transport):
    upstream = H2COrigin() if transport == "h2c" else origin_factory("a")
    proxy = hbone_proxy(service_yaml("web", [("127.0.0.1", upstream.port)], cluster_ip=VIP, port_name="web"))
    c = client(proxy, certs)
    sid = c.connect(f"{VIP}:80", headers=[FORWARDED])
    assert c.status(sid) == 200
    headers = [("user-agent", "probe/3")]
    if transport == "h2c":
        inner = InnerH2(c, sid)
        stream = inner.request("/sent", headers=headers)
        assert inner.wait(stream)[":status"] == "200"
        sent = json.loads(inner.data[stream])["headers"]["x-request-id"]
    else:
        response = c.http(sid, b"GET /sent HTTP/1.1\r\nHost: web\r\nuser-agent: probe/3\r\n\r\n")
        sent = json.loads(response.split(b"\r\n\r\n", 1)[1])["headers"]["x-request-id"]
    entry = json.loads(wait_for(r'\{[^\n]*"path":"/sent"[^\n]*\n', proxy.stdout_path).group(0))
    assert (entry["response_code"], entry["response_flags"]) == (200, "-")
    assert (entry["user_agent"], entry["x_forwarded_for"], entry["request_id"]) == ("probe/3", None, sent)
    c.close()


def attempts_config(hung_port):
    """`hung` accepts connections (its backlog) and never answers; `dead` refuses them."""
    return (service_yaml("web", [("127.0.0.1", hung_port)], cluster_ip=VIP, port_name="web")
            + "---" + service_yaml("dead", [("127.0.0.1", 9)], port_name="web") + """---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: web, namespace: default}
spec:
  hosts: [web]
  http:
  - match: [{uri: {prefix: /timeout}}]
    timeout: 300ms
    route: [{destination: {host: web}}]
  - match: [{uri: {prefix: /per-try}}]
    timeout: 5s
    retries: {attempts: 2, perTryTimeout: 100ms, retryOn: reset}
    route: [{destination: {host: web}}]
  - match: [{uri: {prefix: /refused}}]
    retries: {attempts: 1, retryOn: connect-failure}
    route: [{destination: {host: dead}}]
""")


# path, status, flags, tries made upstream (the access log's upstream_request_attempt_count)
ATTEMPT_CASES = [
    ("/timeout", 504, "UT", 1),       # the route's timeout, no retry policy
    ("/per-try", 504, "UT", 3),       # each try timed out; two retries, then the last failure is answered
    ("/refused", 503, "UF", 2),       # connection refused; one retry to the same (only) endpoint
]


@pytest.mark.parametrize("transport", ["http1", "h2c"])
def test_timeouts_and_retries_report_the_same(hbone_proxy, certs, transport):
    hung = socket.socket()
    hung.bind(("127.0.0.1", 0))
    hung.listen(64)
    proxy = hbone_proxy(attempts_config(hung.getsockname()[1]))
    c = client(proxy, certs)
    sid = c.connect(f"{VIP}:80", headers=[FORWARDED])
    assert c.status(sid) == 200
    inner = InnerH2(c, sid) if transport == "h2c" else None
    for path, status, _, _ in ATTEMPT_CASES:
        if inner:
            got = over_h2c(inner, path, [])
        else:
            sid = c.connect(f"{VIP}:80", headers=[FORWARDED])   # a 5xx answer may close the HTTP/1.1 tunnel
            assert c.status(sid) == 200
            got = over_http1(c, sid, path, [])
        assert got == status, (transport, path)
    for path, status, flags, tries in ATTEMPT_CASES:
        entry = json.loads(wait_for(r'\{[^\n]*"path":"' + re.escape(path) + r'"[^\n]*\n', proxy.stdout_path).group(0))
        assert (entry["response_code"], entry["response_flags"], entry["upstream_request_attempt_count"]) == (status, flags, tries), entry
    metrics = proxy.metrics()
    assert metrics['waypoint_upstream_retries_total{reason="per_try_timeout"}'] == 2
    assert metrics['waypoint_upstream_retries_total{reason="connect_failure"}'] == 1
    assert metrics["waypoint_upstream_retries_succeeded_total"] == 0
    for (status, flags), count in collections.Counter((status, flags) for _, status, flags, _ in ATTEMPT_CASES).items():
        series = [v for k, v in metrics.items() if k.startswith("istio_requests_total{")
                  and f'response_code="{status}"' in k and f'response_flags="{flags}"' in k]
        assert series == [count], (flags, [k for k in metrics if k.startswith("istio_requests_total{")])
    c.close()
    hung.close()
