"""RequestAuthentication (JWT), black-box, with tokens minted by PyJWT and keys made by `cryptography`: valid,
expired, not yet valid, wrong issuer, wrong audience, bad signature, RS256/PS256/ES256, a key set fetched from a
`jwksUri` that rotates and then goes down; requestPrincipals and request.auth.claims in AuthorizationPolicy;
the token's header removed and claims copied to headers on the forwarded request."""
import base64
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from conftest import http_request, service_yaml, wait_until
from test_h2c import InnerH2, h2c_origin  # noqa: F401 (fixture)
from test_hbone import VIP, FORWARDED, certs, client, hbone_proxy  # noqa: F401 (fixtures)

ISSUER = "https://issuer.example.com"


def b64(n, length=None):
    data = n.to_bytes(length or (n.bit_length() + 7) // 8, "big")
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def jwk(key, kid):
    numbers = key.public_key().public_numbers()
    if isinstance(key, rsa.RSAPrivateKey):
        return {"kty": "RSA", "kid": kid, "n": b64(numbers.n), "e": b64(numbers.e)}
    size = (key.curve.key_size + 7) // 8
    return {"kty": "EC", "kid": kid, "crv": "P-256" if size == 32 else "P-384", "x": b64(numbers.x, size), "y": b64(numbers.y, size)}


RSA_KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)
EC_KEY = ec.generate_private_key(ec.SECP256R1())
OTHER_KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)
JWKS = json.dumps({"keys": [jwk(RSA_KEY, "rsa-1"), jwk(EC_KEY, "ec-1")]})


def token(key=RSA_KEY, kid="rsa-1", algorithm="RS256", **claims):
    now = int(time.time())
    body = {"iss": ISSUER, "sub": "alice", "aud": "shop", "iat": now, "exp": now + 600, **claims}
    body = {k: v for k, v in body.items() if v is not None}
    return jwt.encode(body, key, algorithm=algorithm, headers={"kid": kid})


def config(origin, jwks_line, extra_rule="", policy="", **service):
    return service_yaml("web", [("127.0.0.1", origin.port)], **service) + f"""
---
apiVersion: security.istio.io/v1
kind: RequestAuthentication
metadata: {{name: jwt, namespace: default}}
spec:
  targetRefs: [{{kind: Service, group: "", name: web}}]
  jwtRules:
  - issuer: {ISSUER}
    audiences: [shop]
    {jwks_line}
    outputClaimToHeaders: [{{header: x-jwt-sub, claim: sub}}]{extra_rule}
""" + policy


def get(proxy, token_value=None, path="/", headers=None):
    headers = dict(headers or {})
    if token_value:
        headers["Authorization"] = f"Bearer {token_value}"
    status, _, body = http_request(proxy.port, "GET", path, host="web", headers=headers)
    return status, body


def test_tokens_are_verified_and_the_upstream_gets_the_claims_not_the_token(origin_factory, proxy_factory):
    origin = origin_factory("a")
    proxy = proxy_factory(config(origin, f"jwks: '{JWKS}'"))
    # no token: passes unauthenticated (Istio's rule); a valid one passes, RS256, PS256 and ES256 alike
    assert get(proxy)[0] == 200
    for key, kid, algorithm in ((RSA_KEY, "rsa-1", "RS256"), (RSA_KEY, "rsa-1", "PS256"), (EC_KEY, "ec-1", "ES256")):
        status, body = get(proxy, token(key, kid, algorithm))
        assert status == 200, (algorithm, body)
        seen = json.loads(body)["headers"]
        assert "authorization" not in {k.lower() for k in seen}        # forwardOriginalToken: false
        assert seen.get("x-jwt-sub") == "alice"
    now = int(time.time())
    refused = {
        "expired": (token(exp=now - 120), b"Jwt is expired"),
        "not yet valid": (token(nbf=now + 600), b"Jwt not yet valid"),
        "wrong issuer": (token(iss="https://evil.example.com"), b"Jwt issuer is not configured"),
        "wrong audience": (token(aud="other"), b"Audiences in Jwt are not allowed"),
        "bad signature": (token(OTHER_KEY), b"Jwt verification fails"),
        "unknown key": (token(kid="nope"), b"Jwks doesn't have key to match kid or alg from Jwt"),
        "garbage": ("abc.def", b"Jwt is not in the form of Header.Payload.Signature with two dots and 3 sections"),
        "tampered": (token()[:-4] + "AAAA", b"Jwt verification fails"),
    }
    for what, (value, message) in refused.items():
        assert get(proxy, value) == (401, message), what
    # within the 60 s clock skew Envoy allows, an expired token still passes
    assert get(proxy, token(exp=now - 30))[0] == 200
    # the access_token query parameter is the other default location
    assert get(proxy, path=f"/?access_token={token()}")[0] == 200
    assert get(proxy, path=f"/?access_token={token(aud='other')}")[0] == 401
    assert proxy.metrics()["waypoint_jwt_rejected_total"] == len(refused) + 1
    assert origin_requests_seen(origin) == 6                     # none of the refused reached it


def origin_requests_seen(origin):
    from conftest import origin_requests
    return origin_requests(origin.port)


def test_request_principals_and_claims_in_authorization_policy(origin_factory, proxy_factory):
    origin = origin_factory("a")
    policy = """
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: only-admins, namespace: default}
spec:
  targetRefs: [{kind: Service, group: "", name: web}]
  action: ALLOW
  rules:
  - from: [{source: {requestPrincipals: ["%s/*"]}}]
    when: [{key: "request.auth.claims[groups]", values: [admins]}, {key: "request.auth.claims[org][team]", values: [core]}]
""" % ISSUER
    proxy = proxy_factory(config(origin, f"jwks: '{JWKS}'", policy=policy))
    assert get(proxy)[0] == 403                                   # unauthenticated: no requestPrincipal
    admin = token(groups=["users", "admins"], org={"team": "core"})
    assert get(proxy, admin)[0] == 200
    assert get(proxy, token(groups=["users"], org={"team": "core"}))[0] == 403
    assert get(proxy, token(groups=["admins"], org={"team": "edge"}))[0] == 403
    assert get(proxy, token(groups="admins", org={"team": "core"}))[0] == 200     # a string claim is one value


class KeyServer:
    """A JWKS endpoint whose answer changes and which can go down."""

    def __init__(self, jwks):
        self.jwks = jwks
        self.up = True
        self.requests = 0
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_GET(self):
                server.requests += 1
                if not server.up:
                    self.send_response(503)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                body = server.jwks.encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.httpd.server_address[1]
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self):
        self.httpd.shutdown()


def test_keys_from_a_jwks_uri_rotate_and_outlive_the_key_server(origin_factory, proxy_factory):
    origin = origin_factory("a")
    keys = KeyServer(json.dumps({"keys": [jwk(RSA_KEY, "rsa-1")]}))
    try:
        proxy = proxy_factory(config(origin, f"jwksUri: http://127.0.0.1:{keys.port}/keys"),
                              extra=["--jwks-refresh", "1s"])
        assert wait_until(lambda: get(proxy, token())[0] == 200, timeout=5)
        rotated = token(OTHER_KEY, "rsa-2")
        assert get(proxy, rotated)[0] == 401
        keys.jwks = json.dumps({"keys": [jwk(OTHER_KEY, "rsa-2")]})
        assert wait_until(lambda: get(proxy, rotated)[0] == 200, timeout=5)
        assert get(proxy, token())[0] == 401                         # the old key is gone from the set
        keys.up = False
        before = keys.requests
        assert wait_until(lambda: keys.requests > before + 1, timeout=8)   # it keeps trying, backing off
        assert get(proxy, rotated)[0] == 200                         # and keeps the keys it had
    finally:
        keys.close()


def test_a_bad_jwks_is_a_config_error_naming_the_field(proxy_factory, origin_factory, tmp_path):
    import subprocess
    from conftest import BINARY
    origin = origin_factory("a")
    path = tmp_path / "bad.yaml"
    path.write_text(config(origin, "jwks: '{\"keys\": []}'"))
    out = subprocess.run([BINARY, "check", "--config", str(path)], capture_output=True, text=True)
    assert out.returncode != 0
    assert "RequestAuthentication default/jwt" in out.stdout + out.stderr and "jwks" in out.stdout + out.stderr, out.stdout + out.stderr


def test_a_request_authentication_applied_through_the_kubernetes_api(certs, proxy_factory, workdir, origin_factory):
    """Watched like every policy kind: applied after start, it refuses bad tokens within a second; deleted, it
    stops applying."""
    from fake_apiserver import FakeAPIServer
    from test_kubernetes import served_by, service, slice_
    api = FakeAPIServer(certs)
    try:
        origin = origin_factory("a")
        api.apply(service("web"))
        api.apply(slice_("web-1", "web", [("127.0.0.1", origin.port)]))
        proxy = proxy_factory("", extra=["--kubeconfig", api.kubeconfig(str(workdir)), "--workers", "1", "--ca-address", "none"])
        bad = {"Authorization": f"Bearer {token(OTHER_KEY)}"}
        assert served_by(proxy) == "a"
        assert http_request(proxy.port, "GET", "/", host="web", headers=bad)[0] == 200   # no RequestAuthentication yet
        api.apply({"apiVersion": "security.istio.io/v1", "kind": "RequestAuthentication",
                   "metadata": {"name": "jwt", "namespace": "default"},
                   "spec": {"targetRefs": [{"group": "", "kind": "Service", "name": "web"}],
                            "jwtRules": [{"issuer": ISSUER, "jwks": JWKS}]}})
        assert wait_until(lambda: http_request(proxy.port, "GET", "/", host="web", headers=bad)[0] == 401, timeout=3)
        assert get(proxy, token())[0] == 200
        api.delete("RequestAuthentication", "jwt")
        assert wait_until(lambda: http_request(proxy.port, "GET", "/", host="web", headers=bad)[0] == 200, timeout=3)
    finally:
        api.close()


def test_a_refusal_carries_envoys_bearer_challenge(origin_factory, proxy_factory, hbone_proxy, certs, h2c_origin):
    """`www-authenticate` as Envoy 1.40's jwt_authn writes it (seen side by side with the same token): the realm is
    `http://` + the Host as sent + the target with its query."""
    origin = origin_factory("a")
    proxy = proxy_factory(config(origin, f"jwks: '{JWKS}'"))
    expired = token(exp=int(time.time()) - 3600)
    status, headers, body = http_request(proxy.port, "GET", "/api/items?q=1", host="web:8080",
                                         headers={"Authorization": f"Bearer {expired}"})
    assert (status, body) == (401, b"Jwt is expired")
    assert headers["www-authenticate"] == 'Bearer realm="http://web:8080/api/items?q=1", error="invalid_token"'
    assert "www-authenticate" not in http_request(proxy.port, "GET", "/", host="web")[1]   # no token: no challenge
    # h2c inside an HBONE tunnel (the port declares no protocol): the same header, from :authority and :path
    tunnelled = hbone_proxy(config(h2c_origin, f"jwks: '{JWKS}'", cluster_ip=VIP, port_name="web"), name="hbone")
    c = client(tunnelled, certs)
    sid = c.connect(f"{VIP}:80", headers=[FORWARDED])
    assert c.status(sid) == 200
    inner = InnerH2(c, sid)
    refused = inner.request("/x?y=1", headers=[("authorization", f"Bearer {expired}")])
    head = inner.wait(refused)
    assert head[":status"] == "401" and head["www-authenticate"] == 'Bearer realm="http://web/x?y=1", error="invalid_token"'
