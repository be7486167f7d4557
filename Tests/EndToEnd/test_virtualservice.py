"""Istio VirtualService routing through the real binary: first match wins, every action kind, over real sockets."""
import json
import subprocess
import textwrap

from conftest import BINARY, http_request, origin_requests, service_yaml, total

VIRTUAL_SERVICES = """
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: reviews, namespace: default}
spec:
  hosts: [reviews]
  http:
  - name: jason
    match: [{headers: {end-user: {exact: jason}}}]
    route: [{destination: {host: reviews-v2}}]
  - match: [{uri: {exact: /health}}]
    directResponse: {status: 200, body: {string: "healthy"}}
  - match: [{uri: {prefix: /old}}]
    redirect: {uri: /new, redirectCode: 308}
  - match: [{uri: {prefix: /chaos}}]
    fault: {abort: {httpStatus: 418, percentage: {value: 100}}}
    route: [{destination: {host: reviews-v1}}]
  - match: [{uri: {prefix: /api/v1}}, {uri: {prefix: /API/legacy}, ignoreUriCase: true}]
    rewrite: {uri: /v1}
    headers:
      request: {set: {x-vs: rewritten}, remove: [x-drop]}
      response: {add: {x-served-by: waypoint}}
    route: [{destination: {host: reviews-v1.default.svc.cluster.local, port: {number: 80}}}]
  - match: [{uri: {regex: "/items/[0-9]+"}, method: {exact: DELETE}}]
    route: [{destination: {host: reviews-v2}}]
  - match: [{uri: {prefix: /retry}}]
    retries: {attempts: 2, retryOn: "5xx"}
    route: [{destination: {host: reviews-v1}}]
  - match: [{uri: {prefix: /noretry}}]
    retries: {attempts: 0}
    route: [{destination: {host: reviews-v1}}]
  - match: [{uri: {prefix: /service/}}]
    rewrite: {uriRegexRewrite: {match: "^/service/([^/]+)(/.*)$", rewrite: "\\\\2/instance/\\\\1"}}
    route: [{destination: {host: reviews-v1}}]
  - match: [{withoutHeaders: {x-canary: {}}}]
    route:
    - {destination: {host: reviews-v1}, weight: 75, headers: {request: {set: {x-dest: v1}}}}
    - {destination: {host: reviews-v2}, weight: 25, headers: {response: {add: {x-dest-response: v2}}}}
  - match: [{sourceLabels: {app: frontend}}]
    route: [{destination: {host: reviews-v2}}]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: ratings, namespace: default}
spec:
  hosts: [ratings.default.svc.cluster.local]
  http:
  - match: [{uri: {exact: /ratings}}]
    route: [{destination: {host: reviews-v1}}]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: edge-only, namespace: default}
spec:
  hosts: [details]
  gateways: [istio-system/edge]
  http:
  - route: [{destination: {host: reviews-v2}}]
"""


def config(v1, v2):
    return "---".join([
        service_yaml("reviews", [("127.0.0.1", v1.port)]),
        service_yaml("reviews-v1", [("127.0.0.1", v1.port)]),
        service_yaml("reviews-v2", [("127.0.0.1", v2.port)]),
        service_yaml("ratings", [("127.0.0.1", v1.port)]),
        service_yaml("details", [("127.0.0.1", v1.port)]),
        VIRTUAL_SERVICES,
    ])


def get(proxy, path, host="reviews", method="GET", headers=None):
    return http_request(proxy.port, method, path, host=host, headers=headers)


def test_rules_in_declaration_order(origin_factory, proxy_factory):
    v1, v2 = origin_factory("v1"), origin_factory("v2")
    proxy = proxy_factory(config(v1, v2))

    # The first rule wins even where a later one is more specific (Istio, unlike Gateway API).
    status, headers, _ = get(proxy, "/api/v1/x", headers={"end-user": "jason"})
    assert (status, headers["x-origin"]) == (200, "v2")

    status, headers, body = get(proxy, "/health")
    assert (status, body, headers["content-type"]) == (200, b"healthy", "text/plain")

    status, headers, _ = get(proxy, "/old/page?q=1")
    assert (status, headers["location"]) == (308, "http://reviews/new?q=1")

    status, _, body = get(proxy, "/chaos")
    assert (status, body) == (418, b"fault filter abort")
    assert proxy.metrics()["waypoint_fault_aborts_total"] == 1

    # rewrite.uri replaces the matched prefix; headers set/removed upstream, added downstream.
    status, headers, body = get(proxy, "/api/v1/users?id=7", headers={"x-drop": "1", "x-vs": "client"})
    seen = json.loads(body)
    assert (status, headers["x-origin"], seen["path"]) == (200, "v1", "/v1/users?id=7")
    assert seen["headers"]["x-vs"] == "rewritten" and "x-drop" not in seen["headers"]
    assert headers["x-served-by"] == "waypoint"
    # uriRegexRewrite (Istio's documented example): groups swapped, the query kept.
    status, _, body = get(proxy, "/service/reviews/v1/api?x=1")
    assert (status, json.loads(body)["path"]) == (200, "/v1/api/instance/reviews?x=1")


def test_ignore_uri_case_and_regex_with_method(origin_factory, proxy_factory):
    v1, v2 = origin_factory("v1"), origin_factory("v2")
    proxy = proxy_factory(config(v1, v2))
    status, _, body = get(proxy, "/Api/LEGACY/thing")
    assert (status, json.loads(body)["path"]) == (200, "/v1/thing")
    status, headers, _ = get(proxy, "/items/42", method="DELETE", headers={"x-canary": "1"})
    assert (status, headers["x-origin"]) == (200, "v2")
    # Same path, another method: falls through to the weighted default, which needs x-canary absent: no rule left.
    status, _, body = get(proxy, "/items/42", headers={"x-canary": "1"})
    assert (status, body) == (404, b"no route\n")


def test_weighted_default_and_unmatched(origin_factory, proxy_factory):
    v1, v2 = origin_factory("v1"), origin_factory("v2")
    proxy = proxy_factory(config(v1, v2))
    seen = {"v1": 0, "v2": 0}
    for i in range(400):
        status, headers, body = get(proxy, f"/w{i}")
        assert status == 200
        origin = headers["x-origin"]
        seen[origin] += 1
        # route[].headers apply to the destination they are on only.
        assert (json.loads(body)["headers"].get("x-dest"), headers.get("x-dest-response")) == \
            (("v1", None) if origin == "v1" else (None, "v2"))
    assert 240 <= seen["v1"] <= 360, seen      # 75 % of 400 = 300, well inside 6 standard deviations
    # ratings: only /ratings is routed; anything else 404 (a VirtualService is attached).
    assert get(proxy, "/ratings", host="ratings")[0] == 200
    assert get(proxy, "/other", host="ratings")[0] == 404
    # details: the VirtualService names only a gateway, so the service's own traffic is untouched.
    status, headers, _ = get(proxy, "/x", host="details")
    assert (status, headers["x-origin"]) == (200, "v1")


def test_retries_from_the_virtual_service(origin_factory, proxy_factory):
    v1, v2 = origin_factory("v1"), origin_factory("v2")
    proxy = proxy_factory(config(v1, v2), extra=["--default-retries", "off"])
    status, headers, _ = get(proxy, "/retry?fail=2&key=vs-a")
    assert status == 200
    metrics = proxy.metrics()
    assert total(metrics, "waypoint_upstream_retries_total") == 2
    # Per destination service (the service the request was for).
    by_service = 'waypoint_service_retries_total{destination_service="reviews.default.svc.cluster.local",result="%s"}'
    assert (metrics[by_service % "started"], metrics[by_service % "succeeded"], metrics[by_service % "budget_exhausted"]) == (2, 1, 0)
    # attempts: 0 turns retries off for the rule, whatever the default.
    status, _, _ = get(proxy, "/noretry?fail=1&key=vs-b")
    assert status == 503


def test_check_reports_what_is_not_applied(tmp_path, origin_factory):
    v1, v2 = origin_factory("v1"), origin_factory("v2")
    route = textwrap.dedent("""
    apiVersion: gateway.networking.k8s.io/v1
    kind: HTTPRoute
    metadata: {name: ratings-route, namespace: default}
    spec:
      parentRefs: [{group: "", kind: Service, name: ratings}]
      rules: [{backendRefs: [{name: reviews-v2, port: 80}]}]
    """)
    (tmp_path / "c.yaml").write_text(config(v1, v2) + "---" + route)
    out = subprocess.run([str(BINARY), "check", "--config", str(tmp_path)], capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr
    text = out.stdout + out.stderr
    assert "VirtualService default/ratings: service default/ratings has HTTPRoutes attached, which take precedence" in text
    assert "VirtualService default/edge-only: gateways istio-system/edge do not include mesh" in text
    assert "VirtualService default/reviews: http[10] match on sourceLabels cannot be evaluated by a waypoint" in text


def test_explain_names_the_rules_that_did_not_match(tmp_path):
    (tmp_path / "c.yaml").write_text(service_yaml("web", [("127.0.0.1", 9)]) + """---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: r, namespace: default}
spec:
  parentRefs: [{group: "", kind: Service, name: web}]
  rules:
  - matches: [{path: {type: Exact, value: /api/v1}}]
    backendRefs: [{name: web, port: 80}]
  - matches: [{path: {type: PathPrefix, value: /api}, headers: [{name: x-canary, value: "true"}]}]
    backendRefs: [{name: web, port: 80}]
  - matches: [{path: {type: PathPrefix, value: /api}, method: POST}]
    backendRefs: [{name: web, port: 80}]
  - backendRefs: [{name: web, port: 80}]
""")
    out = subprocess.run([str(BINARY), "explain", "--config", str(tmp_path), "--host", "web", "--path", "/api/v2"],
                         capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    start = lines.index("  rule default/r #0 [Exact /api/v1]: no match, path")
    assert lines[-1] == "result: forwarded by route default/r to endpoint 127.0.0.1:9"
    assert lines[start + 1:start + 5] == [
        "  rule default/r #2 [PathPrefix /api]: no match, method = POST",       # method outranks header count
        "  rule default/r #1 [PathPrefix /api]: no match, header x-canary = true",
        "routing: matched rule default/r #3 [PathPrefix /]",
        "backends: default/web:80",
    ]


def test_fault_delay_holds_the_request_then_forwards_it_whole(origin_factory, proxy_factory):
    import time
    from conftest import raw_exchange
    origin = origin_factory("a")
    vs = """
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: web, namespace: default}
spec:
  hosts: [web]
  http:
  - match: [{uri: {prefix: /slow}}]
    fault: {delay: {fixedDelay: 400ms, percentage: {value: 100}}}
    route: [{destination: {host: web}}]
  - route: [{destination: {host: web}}]
"""
    proxy = proxy_factory(service_yaml("web", [("127.0.0.1", origin.port)]) + "---" + vs)
    start = time.time()
    assert http_request(proxy.port, "GET", "/fast", host="web")[0] == 200
    assert time.time() - start < 0.3
    # A POST with a body, then a pipelined GET: both answered, in order, the first after the delay.
    start = time.time()
    response = raw_exchange(proxy.port, b"POST /slow/x HTTP/1.1\r\nHost: web\r\nContent-Length: 5\r\n\r\nhello"
                                        b"GET /fast/after HTTP/1.1\r\nHost: web\r\nConnection: close\r\n\r\n")
    elapsed = time.time() - start
    assert 0.4 <= elapsed < 2, elapsed
    bodies = [json.loads(part.split(b"HTTP/1.1")[0]) for part in response.split(b"\r\n\r\n")[1:] if part.startswith(b"{")]
    assert [(b["path"], b["body_length"]) for b in bodies] == [("/slow/x", 5), ("/fast/after", 0)]
    assert proxy.metrics()["waypoint_fault_delays_total"] == 1


def test_fault_delay_comes_before_the_abort(origin_factory, proxy_factory):
    """Envoy's fault filter delays first, then aborts: with both at 100 %, the abort arrives after the delay and
    the request (body and all) never reaches the origin."""
    import time
    origin = origin_factory("a")
    vs = """
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: web, namespace: default}
spec:
  hosts: [web]
  http:
  - match: [{uri: {prefix: /broken}}]
    fault: {delay: {fixedDelay: 400ms, percentage: {value: 100}}, abort: {httpStatus: 503, percentage: {value: 100}}}
    route: [{destination: {host: web}}]
  - route: [{destination: {host: web}}]
"""
    proxy = proxy_factory(service_yaml("web", [("127.0.0.1", origin.port)]) + "---" + vs)
    start = time.time()
    status, _, body = http_request(proxy.port, "POST", "/broken", host="web", body=b"hello")
    assert 0.4 <= time.time() - start < 2
    assert (status, body) == (503, b"fault filter abort")
    assert http_request(proxy.port, "GET", "/fine", host="web")[0] == 200
    metrics = proxy.metrics()
    assert metrics["waypoint_fault_delays_total"] == 1 and metrics["waypoint_fault_aborts_total"] == 1
    assert origin_requests(origin.port) == 1               # only /fine reached the origin
