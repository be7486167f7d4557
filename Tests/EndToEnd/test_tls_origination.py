"""TLS origination (DestinationRule `trafficPolicy.tls` SIMPLE and MUTUAL), black-box, against an HTTPS origin of
Python's `ssl` with a CA of its own: a request to `http://api.example.com` becomes HTTPS to the endpoint with its
certificate verified (SNI, the name or `subjectAltNames`), a client certificate for MUTUAL, and a certificate that
does not verify refused (503, never plaintext)."""
import json
import ssl
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from conftest import http_request, wait_for
from test_h2c import H2COrigin, InnerH2
from test_hbone import certs, client, hbone_proxy  # noqa: F401 (fixtures)
import pki


class HTTPSOrigin:
    """Answers every request with JSON: its path, the SNI it got and the client certificate's subject (if any)."""

    def __init__(self, cert, key, client_ca=None):
        seen = self.seen = []

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def do_GET(self):
                peer = self.connection.getpeercert()
                body = json.dumps({"path": self.path, "sni": getattr(self.connection, "sni", None),
                                   "client": dict(x[0] for x in peer["subject"]) if peer else None}).encode()
                seen.append(self.path)
                self.send_response(200)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(cert, key)
        if client_ca:
            context.verify_mode = ssl.CERT_REQUIRED
            context.load_verify_locations(client_ca)

        def remember_sni(sock, name, _):
            sock.sni = name
        context.sni_callback = remember_sni
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.server.socket = context.wrap_socket(self.server.socket, server_side=True)
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()


@pytest.fixture
def tls_pki(workdir):
    ca, other = pki.CA("api CA"), pki.CA("another CA")
    paths = {}
    for name, issuer in (("ca", ca), ("other-ca", other)):
        path = workdir / f"{name}.pem"
        path.write_bytes(issuer.cert.public_bytes(pki.serialization.Encoding.PEM))
        paths[name] = str(path)
    paths["server"] = pki.write(str(workdir), "api", *ca.issue(dns=["api.example.com"]))
    paths["client"] = pki.write(str(workdir), "client", *ca.issue(uris=["spiffe://cluster.local/ns/default/sa/waypoint"]))
    return paths


def egress(port, tls, protocol="HTTP", address="240.0.0.1"):
    """ServiceEntry api.example.com:80 (at `address` for tunnels) with one endpoint on the origin's HTTPS port, and
    its DestinationRule."""
    return f"""
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: api, namespace: default}}
spec:
  hosts: [api.example.com]
  addresses: [{address}]
  ports: [{{number: 80, name: {protocol.lower()}, protocol: {protocol}, targetPort: {port}}}]
  resolution: STATIC
  endpoints: [{{address: 127.0.0.1}}]
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {{name: api, namespace: default}}
spec:
  host: api.example.com
  trafficPolicy:
    tls: {tls}
"""


def get(proxy, path="/v1/items"):
    return http_request(proxy.port, "GET", path, host="api.example.com")


def test_simple_tls_verifies_the_server(tls_pki, proxy_factory):
    origin = HTTPSOrigin(*tls_pki["server"])
    proxy = proxy_factory(egress(origin.port, f"{{mode: SIMPLE, caCertificates: {tls_pki['ca']}}}"))
    for i in range(2):
        status, _, body = get(proxy, f"/v1/items?i={i}")
        assert status == 200, body
        answer = json.loads(body)
        assert (answer["path"], answer["sni"], answer["client"]) == (f"/v1/items?i={i}", "api.example.com", None)
    # a CA that did not sign the server's certificate: refused, as a connect failure, never sent in the clear
    untrusted = proxy_factory(egress(origin.port, f"{{mode: SIMPLE, caCertificates: {tls_pki['other-ca']}}}"), name="untrusted")
    assert get(untrusted)[0] == 503
    assert len(origin.seen) == 2
    entry = json.loads(wait_for(r'\{[^\n]*"response_code":503[^\n]*\n', untrusted.stdout_path).group(0))
    assert entry["response_flags"] == "UF", entry


def test_subject_alt_names_and_sni(tls_pki, proxy_factory):
    origin = HTTPSOrigin(*tls_pki["server"])
    matching = proxy_factory(egress(origin.port, f"{{mode: SIMPLE, caCertificates: {tls_pki['ca']}, sni: edge.example.com, "
                                                 "subjectAltNames: [api.example.com]}"), name="matching")
    status, _, body = get(matching)
    assert status == 200 and json.loads(body)["sni"] == "edge.example.com"
    mismatch = proxy_factory(egress(origin.port, f"{{mode: SIMPLE, caCertificates: {tls_pki['ca']}, "
                                                 "subjectAltNames: [billing.example.com]}"), name="mismatch")
    assert get(mismatch)[0] == 503
    # the SNI names another host: the certificate is not for it
    wrong_sni = proxy_factory(egress(origin.port, f"{{mode: SIMPLE, caCertificates: {tls_pki['ca']}, sni: evil.example.com}}"),
                              name="wrong-sni")
    assert get(wrong_sni)[0] == 503
    skip = proxy_factory(egress(origin.port, f"{{mode: SIMPLE, caCertificates: {tls_pki['other-ca']}, insecureSkipVerify: true}}"),
                         name="skip")
    assert get(skip)[0] == 200


def test_mutual_tls_presents_the_client_certificate(tls_pki, proxy_factory):
    origin = HTTPSOrigin(*tls_pki["server"], client_ca=tls_pki["ca"])
    cert, key = tls_pki["client"]
    mutual = proxy_factory(egress(origin.port, f"{{mode: MUTUAL, caCertificates: {tls_pki['ca']}, clientCertificate: {cert}, "
                                               f"privateKey: {key}}}"), name="mutual")
    status, _, body = get(mutual)
    assert status == 200, body
    assert json.loads(body)["client"] == {"commonName": "workload"}
    # SIMPLE to a server that requires a client certificate: the handshake fails
    simple = proxy_factory(egress(origin.port, f"{{mode: SIMPLE, caCertificates: {tls_pki['ca']}}}"), name="simple")
    assert get(simple)[0] == 503


def test_mutual_without_a_key_is_a_config_error(tls_pki, workdir):
    import subprocess
    from conftest import BINARY
    path = workdir / "bad.yaml"
    path.write_text(egress(9, f"{{mode: MUTUAL, caCertificates: {tls_pki['ca']}}}"))
    out = subprocess.run([str(BINARY), "check", "--config", str(path)], capture_output=True, text=True)
    assert out.returncode == 1
    assert ("(DestinationRule default/api): spec.trafficPolicy.tls.clientCertificate: MUTUAL needs clientCertificate "
            "and privateKey (files)") in out.stdout, out.stdout


def test_an_http2_upstream_gets_alpn_h2(tls_pki, hbone_proxy, certs):
    """An HTTP/2 port (h2c inside the tunnel) with TLS origination: the handshake offers ALPN h2, as Envoy does for
    an HTTP/2 cluster, and the request goes over HTTP/2 on TLS to a server that requires h2."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(*tls_pki["server"])
    context.set_alpn_protocols(["h2"])
    origin = H2COrigin(tls=context)
    proxy = hbone_proxy(egress(origin.port, f"{{mode: SIMPLE, caCertificates: {tls_pki['ca']}}}", protocol="HTTP2"))
    c = client(proxy, certs)
    sid = c.connect("240.0.0.1:80")
    assert c.status(sid) == 200
    inner = InnerH2(c, sid)
    for i in range(3):
        stream = inner.request(f"/items/{i}")
        assert inner.wait(stream)[":status"] == "200"
        assert json.loads(inner.data[stream])["path"] == f"/items/{i}"
    assert origin.alpn == ["h2"]   # one TLS connection, h2 agreed, every request on it


def test_a_subsets_own_tls_applies_to_its_endpoints_only(tls_pki, origin_factory, proxy_factory):
    """DestinationRule subsets: v2's own `trafficPolicy.tls` originates TLS to its endpoint; v1's stays plaintext."""
    https = HTTPSOrigin(*tls_pki["server"])
    plain = origin_factory("v1")
    config = f"""
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: api, namespace: default}}
spec:
  hosts: [api.example.com]
  ports: [{{number: 80, name: http, protocol: HTTP}}]
  resolution: STATIC
  endpoints:
  - {{address: 127.0.0.1, ports: {{http: {plain.port}}}, labels: {{version: v1}}}}
  - {{address: 127.0.0.1, ports: {{http: {https.port}}}, labels: {{version: v2}}}}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {{name: api, namespace: default}}
spec:
  host: api.example.com
  subsets:
  - {{name: v1, labels: {{version: v1}}}}
  - name: v2
    labels: {{version: v2}}
    trafficPolicy:
      tls: {{mode: SIMPLE, caCertificates: {tls_pki['ca']}}}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: api, namespace: default}}
spec:
  hosts: [api.example.com]
  http:
  - match: [{{headers: {{x-version: {{exact: v2}}}}}}]
    route: [{{destination: {{host: api.example.com, subset: v2}}}}]
  - route: [{{destination: {{host: api.example.com, subset: v1}}}}]
"""
    proxy = proxy_factory(config)
    for _ in range(2):
        status, headers, _ = http_request(proxy.port, "GET", "/a", host="api.example.com")
        assert status == 200 and headers.get("x-origin") == "v1"
        status, _, body = http_request(proxy.port, "GET", "/b", host="api.example.com", headers={"x-version": "v2"})
        assert status == 200 and json.loads(body) == {"path": "/b", "sni": "api.example.com", "client": None}
    assert https.seen == ["/b", "/b"]


def test_mutual_tls_from_a_credential_secret(tls_pki, proxy_factory):
    """`credentialName`: a `kubernetes.io/tls` Secret (tls.crt, tls.key) in the waypoint's namespace, its CA in the
    Secret NAME-cacert, as Istio reads them; the three file paths are then not allowed."""
    origin = HTTPSOrigin(*tls_pki["server"], client_ca=tls_pki["ca"])
    cert, key = tls_pki["client"]

    def block(path):
        return "|\n    " + "\n    ".join(open(path).read().strip().splitlines())
    secrets = f"""
apiVersion: v1
kind: Secret
metadata: {{name: api-client, namespace: default}}
type: kubernetes.io/tls
stringData:
  tls.crt: {block(cert)}
  tls.key: {block(key)}
---
apiVersion: v1
kind: Secret
metadata: {{name: api-client-cacert, namespace: default}}
stringData:
  cacert: {block(tls_pki['ca'])}
---
"""
    proxy = proxy_factory(secrets + egress(origin.port, "{mode: MUTUAL, credentialName: api-client}"), extra=["--namespace", "default"])
    status, _, body = get(proxy)
    assert status == 200, body
    assert json.loads(body)["client"] == {"commonName": "workload"}
    # the Secret is gone: connections fail, nothing in the clear
    proxy.config_dir.joinpath("config.yaml").write_text(egress(origin.port, "{mode: MUTUAL, credentialName: api-client}"))
    assert wait_for(r"credentialName: Secret default/api-client not found", proxy.stderr_path)
    assert get(proxy)[0] == 503
    assert len(origin.seen) == 1
