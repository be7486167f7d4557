"""A realistic namespace: four services, HTTPRoutes and VirtualServices (25 rules), driven over real sockets."""
import json

import pytest

from conftest import http_request, service_yaml

ROUTES = """
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: productpage, namespace: default, creationTimestamp: "2024-01-01T00:00:00Z"}
spec:
  parentRefs: [{group: "", kind: Service, name: productpage}]
  rules:
  - matches: [{path: {type: Exact, value: /productpage}}]
    backendRefs: [{name: pp-v1, port: 80}]
  - matches: [{path: {type: PathPrefix, value: /static}}]
    backendRefs: [{name: static, port: 80}]
  - matches: [{path: {type: PathPrefix, value: /api/v1/products}, headers: [{name: x-beta, value: "on"}]}]
    backendRefs: [{name: pp-v2, port: 80}]
  - matches: [{path: {type: PathPrefix, value: /login}, method: POST}]
    backendRefs: [{name: pp-v2, port: 80}]
  - matches: [{path: {type: RegularExpression, value: "/api/v1/products/[0-9]+/reviews"}}]
    backendRefs: [{name: static, port: 80}]
  - matches: [{path: {type: PathPrefix, value: /api}, queryParams: [{name: debug, value: "1"}]}]
    backendRefs: [{name: pp-v2, port: 80}]
  - matches: [{path: {type: Exact, value: /old-home}}]
    filters: [{type: RequestRedirect, requestRedirect: {path: {type: ReplaceFullPath, replaceFullPath: /productpage}, statusCode: 301}}]
  - matches: [{path: {type: PathPrefix, value: /v2}}]
    filters: [{type: URLRewrite, urlRewrite: {path: {type: ReplacePrefixMatch, replacePrefixMatch: /api}}}]
    backendRefs: [{name: pp-v2, port: 80}]
  - backendRefs: [{name: pp-v1, port: 80}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: productpage-canary, namespace: default, creationTimestamp: "2024-06-01T00:00:00Z"}
spec:
  parentRefs: [{group: "", kind: Service, name: productpage}]
  rules:
  - matches: [{path: {type: Exact, value: /productpage}, headers: [{name: x-canary, value: "true"}]}]
    backendRefs: [{name: pp-v2, port: 80}]
  - matches: [{path: {type: PathPrefix, value: /static}}]      # same match as the older route: the older wins
    backendRefs: [{name: pp-v2, port: 80}]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: reviews, namespace: default}
spec:
  hosts: [reviews.default.svc.cluster.local]
  http:
  - match: [{headers: {end-user: {exact: jason}}}]
    route: [{destination: {host: rv-v2}}]
  - match: [{uri: {prefix: /reviews/}, method: {exact: GET}}]
    route: [{destination: {host: rv-v1}}]
  - match: [{uri: {regex: "/admin/.*"}}]
    directResponse: {status: 403, body: {string: "no admin here"}}
  - match: [{uri: {exact: /health}}]
    directResponse: {status: 200}
  - match: [{uri: {prefix: /legacy}}]
    redirect: {uri: /reviews/, redirectCode: 302}
  - route: [{destination: {host: rv-v1}}]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: ratings, namespace: default}
spec:
  hosts: [ratings]
  http:
  - match: [{uri: {prefix: /ratings}, headers: {x-user: {prefix: test-}}}]
    route: [{destination: {host: rv-v2}}]
  - match: [{uri: {prefix: /ratings}}]
    route: [{destination: {host: rv-v1}}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: details, namespace: default}
spec:
  parentRefs: [{group: "", kind: Service, name: details, port: 80}]
  rules:
  - matches: [{path: {type: PathPrefix, value: /details}, method: GET}]
    backendRefs: [{name: static, port: 80}]
  - matches: [{path: {type: PathPrefix, value: /details}, method: PUT}]
    backendRefs: [{name: missing, port: 80}]
  - matches: [{path: {type: PathPrefix, value: /details}}]
"""


@pytest.fixture(scope="module")
def mesh(tmp_path_factory):
    import conftest
    workdir = tmp_path_factory.mktemp("mesh")
    origins = {name: conftest.Origin(workdir, name) for name in ["pp1", "pp2", "static", "rv1", "rv2"]}
    endpoints = {"pp-v1": "pp1", "pp-v2": "pp2", "static": "static", "rv-v1": "rv1", "rv-v2": "rv2",
                 "productpage": "pp1", "reviews": "rv1", "ratings": "rv1", "details": "static"}
    config = "---".join(service_yaml(svc, [("127.0.0.1", origins[o].port)]) for svc, o in endpoints.items())
    config_dir = workdir / "config"
    config_dir.mkdir()
    (config_dir / "mesh.yaml").write_text(config + "---" + ROUTES)
    proxy = conftest.Proxy(workdir, config_dir)
    yield proxy
    for p in [proxy, *origins.values()]:
        p.stop()


CASES = [
    # host, method, path, headers, expected status, expected origin (or Location for redirects, or body)
    ("productpage", "GET", "/productpage", {}, 200, "pp1"),
    ("productpage", "GET", "/productpage", {"x-canary": "true"}, 200, "pp2"),       # more header matches wins
    ("productpage", "GET", "/static/app.js", {}, 200, "static"),                     # older route wins the tie
    ("productpage", "GET", "/staticfile", {}, 200, "pp1"),                           # element-wise prefix
    ("productpage", "GET", "/api/v1/products/7", {"x-beta": "on"}, 200, "pp2"),
    ("productpage", "GET", "/api/v1/products/7", {}, 200, "pp1"),
    ("productpage", "POST", "/login", {}, 200, "pp2"),
    ("productpage", "GET", "/login", {}, 200, "pp1"),
    ("productpage", "GET", "/api/v1/products/7/reviews", {}, 200, "pp1"),           # prefix rules outrank regex
    ("productpage", "GET", "/api/v1/products/7/reviews", {"x-beta": "on"}, 200, "pp2"),
    ("productpage", "GET", "/api/x?debug=1", {}, 200, "pp2"),
    ("productpage", "GET", "/old-home", {}, 301, "http://productpage/productpage"),
    ("productpage", "GET", "/v2/items", {}, 200, "pp2"),
    ("reviews", "GET", "/reviews/1", {"end-user": "jason"}, 200, "rv2"),             # first VirtualService rule
    ("reviews", "GET", "/reviews/1", {}, 200, "rv1"),
    ("reviews", "DELETE", "/reviews/1", {}, 200, "rv1"),                             # falls to the last rule
    ("reviews", "GET", "/admin/users", {}, 403, b"no admin here"),
    ("reviews", "GET", "/health", {}, 200, b""),
    ("reviews", "GET", "/legacy/x", {}, 302, "http://reviews/reviews/"),
    ("reviews.default.svc.cluster.local", "GET", "/x", {}, 200, "rv1"),
    ("ratings", "GET", "/ratings/1", {"x-user": "test-9"}, 200, "rv2"),
    ("ratings", "GET", "/ratings/1", {"x-user": "prod-1"}, 200, "rv1"),
    ("ratings", "GET", "/other", {}, 404, b"no route\n"),
    ("details", "GET", "/details/1", {}, 200, "static"),
    ("details", "PUT", "/details/1", {}, 500, b"invalid backend\n"),                # backendRef to nothing
    ("details", "POST", "/details/1", {}, 500, b"invalid backend\n"),               # rule without backendRefs
    ("details", "GET", "/nothing", {}, 404, b"no route\n"),
    ("nowhere", "GET", "/", {}, 404, b"no route\n"),
]


@pytest.mark.parametrize("host, method, path, headers, status, expected", CASES)
def test_request_lands_where_the_manifests_say(mesh, host, method, path, headers, status, expected):
    got_status, got_headers, body = http_request(mesh.port, method, path, host=host, headers=headers)
    assert got_status == status, body
    if 300 <= status < 400:
        assert got_headers["location"] == expected
    elif isinstance(expected, bytes):
        assert body == expected
    else:
        assert got_headers["x-origin"] == expected
        if path == "/v2/items":
            assert json.loads(body)["path"] == "/api/items"
