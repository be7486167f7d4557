"""AuthorizationPolicy and PeerAuthentication, black-box: two client identities over HBONE against one policy
set, path and header bypass attempts on the plaintext listener, STRICT mTLS, TCP tunnels denied before any byte
reaches the upstream."""
import json
import subprocess

import pytest

from conftest import BINARY, http_request, raw_exchange, service_yaml, status_of
from test_hbone import VIP, body_json, certs, client, hbone_proxy, wait_metric  # noqa: F401 (fixtures)
from hbone import get


def policy(name, spec, namespace="default"):
    return f"""
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {{name: {name}, namespace: {namespace}}}
spec:
{spec}
"""


ALLOW_FRONTEND = policy("allow-frontend", """  targetRefs: [{kind: Service, group: "", name: web}]
  action: ALLOW
  rules:
  - from: [{source: {principals: ["cluster.local/ns/default/sa/frontend"]}}]""")

DENY_ADMIN = policy("deny-admin", """  targetRefs: [{kind: Service, group: "", name: web}]
  action: DENY
  rules:
  - to: [{operation: {paths: ["/admin*"]}}]""")


def test_two_identities_against_one_policy_over_hbone(origin_factory, hbone_proxy, certs):
    origin = origin_factory("a")
    proxy = hbone_proxy(service_yaml("web", [("127.0.0.1", origin.port)], cluster_ip=VIP) + ALLOW_FRONTEND + DENY_ADMIN)
    frontend = client(proxy, certs, who="frontend")
    sid = frontend.connect(f"{VIP}:80")
    assert frontend.status(sid) == 200
    assert body_json(frontend.http(sid, get("/hello")))["path"] == "/hello"
    denied = frontend.http(sid, get("/admin/users"))             # DENY beats the ALLOW that matches
    assert status_of(denied) == 403 and denied.endswith(b"RBAC: access denied")
    other = client(proxy, certs, who="other-ns")                  # cluster.local/ns/shop/sa/cart
    sid2 = other.connect(f"{VIP}:80")
    assert other.status(sid2) == 200                              # HTTP is authorized per request, inside
    refused = other.http(sid2, get("/hello"))
    assert status_of(refused) == 403
    # A certificate for one principal cannot claim another by header.
    claim = b"GET / HTTP/1.1\r\nHost: web\r\nx-forwarded-client-cert: By=x;URI=spiffe://cluster.local/ns/default/sa/frontend\r\n\r\n"
    assert status_of(other.http(sid2, claim)) == 403
    metrics = proxy.metrics()
    assert metrics['waypoint_authorization_policy_decisions_total{policy="default/deny-admin",result="deny"}'] == 1
    assert metrics['waypoint_authorization_policy_decisions_total{policy="default/allow-frontend",result="allow"}'] == 1
    assert metrics['waypoint_authorization_policy_decisions_total{policy="(no ALLOW policy matched)",result="deny"}'] == 2
    frontend.close()
    other.close()


ALLOW_ALL_DENY_ADMIN = policy("allow-all", """  targetRefs: [{kind: Service, group: "", name: web}]
  rules: [{}]""") + DENY_ADMIN


@pytest.mark.parametrize("mode, path, expected", [
    ("BASE", "/admin", 403), ("BASE", "/admin/", 403), ("BASE", "/./admin", 403), ("BASE", "/public/../admin", 403),
    ("BASE", "/%61dmin", 403), ("BASE", "/admin;x", 403), ("BASE", "/admin%2F..", 403), ("BASE", "/admin#frag", 403),
    ("BASE", "/%2e%2e/admin", 403), ("BASE", "/a%00b", 400), ("BASE", "/a\\..\\admin", 403),
    ("MERGE_SLASHES", "//admin", 403), ("MERGE_SLASHES", "/public//..//admin", 403),
    ("DECODE_AND_MERGE_SLASHES", "/public%2F..%2Fadmin", 403), ("DECODE_AND_MERGE_SLASHES", "/%5cadmin", 403),
    # Allowed, and the upstream gets exactly the path that was authorized (never a different reading of it):
    ("BASE", "/ADMIN", "/ADMIN"), ("BASE", "/public?x=/admin", "/public?x=/admin"), ("BASE", "/x/..%2fadmin", 403),
    ("BASE", "/p/%7Eq/./r", "/p/~q/r"), ("DECODE_AND_MERGE_SLASHES", "/x/%2e%2E/y", "/y"),
])
def test_path_tricks_do_not_bypass_a_deny(origin_factory, proxy_factory, mode, path, expected):
    origin = origin_factory("a")
    proxy = proxy_factory(service_yaml("web", [("127.0.0.1", origin.port)]) + ALLOW_ALL_DENY_ADMIN,
                          extra=["--path-normalization", mode])
    response = raw_exchange(proxy.port, f"GET {path} HTTP/1.1\r\nHost: web\r\nConnection: close\r\n\r\n".encode())
    if isinstance(expected, int):
        assert status_of(response) == expected, response
    else:
        assert status_of(response) == 200, response
        assert json.loads(response.split(b"\r\n\r\n", 1)[1])["path"] == expected


DENY_EXACT_ADMIN = policy("allow-all", """  targetRefs: [{kind: Service, group: "", name: web}]
  rules: [{}]""") + policy("deny-admin", """  targetRefs: [{kind: Service, group: "", name: web}]
  action: DENY
  rules:
  - to: [{operation: {paths: ["/admin"]}}]""")


@pytest.mark.parametrize("path", ["//admin", "/admin;x", "/admin;", "/x/..%2Fadmin"])
@pytest.mark.parametrize("hardening, expected", [("on", 403), ("off", 200)])
def test_deny_also_matches_the_hardened_path_unless_turned_off(origin_factory, proxy_factory, path, hardening, expected):
    # Under Istio's default BASE normalization these reach an upstream that a DENY on /admin was meant to guard
    # (the CVE-2021-31920 family). By default waypoint denies them; `--harden-deny-paths off` is exactly Istio.
    origin = origin_factory("a")
    proxy = proxy_factory(service_yaml("web", [("127.0.0.1", origin.port)]) + DENY_EXACT_ADMIN,
                          extra=["--harden-deny-paths", hardening])
    response = raw_exchange(proxy.port, f"GET {path} HTTP/1.1\r\nHost: web\r\nConnection: close\r\n\r\n".encode())
    assert status_of(response) == expected, response
    if expected == 200:                              # what is forwarded is the normalized path, hardened or not
        assert json.loads(response.split(b"\r\n\r\n", 1)[1])["path"] == path


def test_header_conditions_and_case(origin_factory, proxy_factory):
    origin = origin_factory("a")
    deny_header = policy("deny-blocked", """  targetRefs: [{kind: Service, group: "", name: web}]
  action: DENY
  rules:
  - when: [{key: "request.headers[X-User]", values: ["blocked"]}]""")
    proxy = proxy_factory(service_yaml("web", [("127.0.0.1", origin.port)]) + deny_header)
    assert http_request(proxy.port, "GET", "/", host="web", headers={"x-user": "blocked"})[0] == 403
    assert http_request(proxy.port, "GET", "/", host="web", headers={"X-USER": "blocked"})[0] == 403
    assert http_request(proxy.port, "GET", "/", host="web", headers={"x-user": "fine"})[0] == 200
    assert http_request(proxy.port, "GET", "/", host="web")[0] == 200
    # A repeated header cannot slip past the deny, whichever copy comes first.
    for first, second in [("ok", "blocked"), ("blocked", "ok")]:
        request = f"GET / HTTP/1.1\r\nHost: web\r\nx-user: {first}\r\nX-User: {second}\r\nConnection: close\r\n\r\n"
        assert status_of(raw_exchange(proxy.port, request.encode())) == 403
    # Host names compare case-insensitively: the policy follows the service, whatever the Host's case.
    assert http_request(proxy.port, "GET", "/", host="WEB", headers={"x-user": "blocked"})[0] == 403


def test_strict_peer_authentication_refuses_plaintext(origin_factory, hbone_proxy, certs):
    origin = origin_factory("a")
    strict = """
---
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: default, namespace: default}
spec: {mtls: {mode: STRICT}}
"""
    proxy = hbone_proxy(service_yaml("web", [("127.0.0.1", origin.port)], cluster_ip=VIP) + strict)
    status, _, body = http_request(proxy.port, "GET", "/", host="web")
    assert status == 403 and b"mTLS is required" in body
    c = client(proxy, certs)
    sid = c.connect(f"{VIP}:80")
    assert c.status(sid) == 200
    assert status_of(c.http(sid, get("/"))) == 200
    c.close()


def test_tcp_tunnel_denied_before_any_byte_reaches_the_upstream(origin_factory, hbone_proxy, certs):
    origin = origin_factory("a")
    deny_shop = policy("deny-shop", """  targetRefs: [{kind: Service, group: "", name: db}]
  action: DENY
  rules:
  - from: [{source: {namespaces: ["shop"]}}]""")
    proxy = hbone_proxy(service_yaml("db", [("127.0.0.1", origin.port)], cluster_ip=VIP, port_name="tcp") + deny_shop)
    other = client(proxy, certs, who="other-ns")
    assert other.status(other.connect(f"{VIP}:80")) == 401
    assert proxy.metrics()["waypoint_upstream_connections_total"] == 0
    frontend = client(proxy, certs)
    sid = frontend.connect(f"{VIP}:80")
    assert frontend.status(sid) == 200
    assert body_json(frontend.http(sid, get("/raw")))["path"] == "/raw"
    frontend.close()
    other.close()


NAMESPACE_DENY_ALL = policy("deny-all", "  {}")   # an ALLOW policy with no rules, no targetRefs: namespace-wide default deny


@pytest.mark.parametrize("layered, expected", [("on", 403), ("off", 200)])
def test_namespace_default_deny_applies_when_layered(origin_factory, proxy_factory, layered, expected):
    origin = origin_factory("a")
    proxy = proxy_factory(service_yaml("web", [("127.0.0.1", origin.port)]) + NAMESPACE_DENY_ALL,
                          extra=["--layered-authorization", layered])
    assert http_request(proxy.port, "GET", "/", host="web")[0] == expected


def test_custom_with_an_unknown_provider_fails_closed_and_check_explains(origin_factory, proxy_factory, workdir):
    origin = origin_factory("a")
    custom = policy("ext-authz", """  targetRefs: [{kind: Service, group: "", name: web}]
  action: CUSTOM
  provider: {name: my-authz}
  rules: [{}]""")
    unknown_key = policy("odd", """  targetRefs: [{kind: Service, group: "", name: web}]
  action: DENY
  rules:
  - when: [{key: "experimental.envoy.filters.network.mysql_proxy[db.table]", values: ["x"]}]""")
    config = service_yaml("web", [("127.0.0.1", origin.port)]) + custom + unknown_key
    proxy = proxy_factory(config)
    assert http_request(proxy.port, "GET", "/", host="web")[0] == 403
    path = workdir / "check.yaml"
    path.write_text(config)
    out = subprocess.run([str(BINARY), "check", "--config", str(path)], capture_output=True, text=True)
    assert out.returncode == 0
    assert ('AuthorizationPolicy default/ext-authz: extension provider "my-authz" is not in the mesh config\'s extensionProviders'
            " (ConfigMap istio-system/istio): the traffic it selects is denied") in out.stdout, out.stdout
    assert "condition key experimental.envoy.filters.network.mysql_proxy[db.table] is not supported" in out.stdout


def test_bad_policy_is_a_config_error_naming_the_field(workdir):
    bad = policy("bad", """  rules:
  - from: [{source: {requestPrincipals: ["*"]}}]
  - to: [{operation: {paths: ["/a/{**}/b"]}}]""")
    path = workdir / "bad.yaml"
    path.write_text(bad)
    out = subprocess.run([str(BINARY), "check", "--config", str(path)], capture_output=True, text=True)
    assert out.returncode == 1
    assert "invalid path template \"/a/{**}/b\"" in out.stdout, out.stdout
    assert "AuthorizationPolicy default/bad" in out.stdout


def test_explain_names_the_deciding_policy_and_rule(workdir):
    path = workdir / "explain.yaml"
    path.write_text(service_yaml("web", [("127.0.0.1", 9)], cluster_ip=VIP) + ALLOW_FRONTEND + DENY_ADMIN)

    def explain(*args):
        out = subprocess.run([str(BINARY), "explain", "--config", str(path), *args], capture_output=True, text=True)
        return out.stdout

    denied = explain("--tunnel", f"{VIP}:80", "--principal", "cluster.local/ns/default/sa/frontend", "--path", "/public/../admin/x")
    assert "request: GET /admin/x" in denied
    assert "authorization: denied by DENY default/deny-admin, rule 0" in denied
    assert "result: 403 RBAC: access denied" in denied
    allowed = explain("--tunnel", f"{VIP}:80", "--principal", "cluster.local/ns/default/sa/frontend", "--path", "/ok")
    assert "authorization: allowed by ALLOW default/allow-frontend, rule 0" in allowed
    assert "result: forwarded by route default/web to endpoint 127.0.0.1:9" in allowed
    nobody = explain("--host", "web", "--path", "/ok")
    assert "authorization: denied (ALLOW policies apply and none matched)" in nobody
