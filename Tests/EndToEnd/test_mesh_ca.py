"""The HBONE certificate from the mesh's CA: the waypoint asks a stand-in istiod (real gRPC over TLS, messages
compiled from ca.proto by protoc; see fake_istiod.py) for a certificate of the identity its token names, serves
HBONE with it, rotates it at half its life, keeps the old one through a CA outage until it expires, and is not
ready while it has none. The HBONE clients trust only the stand-in's root, as ztunnels trust istiod's."""
import json
import time

import pytest

from conftest import http_request, service_yaml
from fake_istiod import FakeIstiod, service_account_token
from hbone import HBONEClient, get
from test_hbone import VIP

IDENTITY = "spiffe://cluster.local/ns/apps/sa/waypoint"


@pytest.fixture
def istiod(workdir):
    ca = FakeIstiod(str(workdir))
    yield ca
    ca.stop()


def start(proxy_factory, origin_factory, workdir, istiod, token=None, server_name=FakeIstiod.SERVER_NAME):
    origin = origin_factory("a")
    token_path = workdir / "istio-token"
    token_path.write_text(token if token is not None else istiod.allow("apps", "waypoint"))
    proxy = proxy_factory(service_yaml("web", [("127.0.0.1", origin.port)], cluster_ip=VIP), extra=[
        "--hbone-listen", "127.0.0.1:0", "--ca-address", f"127.0.0.1:{istiod.port}",
        "--ca-server-name", server_name, "--ca-root", istiod.root_path, "--ca-token-file", str(token_path),
        "--cluster-id", "test-cluster"])
    return proxy


def ready(proxy):
    status, _, body = http_request(proxy.admin_port, "GET", "/healthz/ready", host="admin")
    return status, body.decode()


def wait_until(predicate, timeout=15, what=""):
    deadline = time.time() + timeout
    while not predicate():
        assert time.time() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def certificate(proxy):
    status, _, body = http_request(proxy.admin_port, "GET", "/config_dump", host="admin")
    assert status == 200
    return json.loads(body)["certificate"]


def tunnel_client(proxy, istiod, workdir):
    cert, key = istiod.client_certificate(str(workdir), "apps", "frontend")
    return HBONEClient(proxy.hbone_port, cert, key, istiod.root_path)


def served_uri(client):
    return [value for kind, value in client.sock.getpeercert()["subjectAltName"] if kind == "URI"]


def request_ok(client):
    sid = client.connect(f"{VIP}:80")
    assert client.status(sid) == 200
    return client.http(sid, get("/hello", "web")).startswith(b"HTTP/1.1 200")


def test_certificate_from_the_mesh_ca_serves_hbone(proxy_factory, origin_factory, workdir, istiod):
    proxy = start(proxy_factory, origin_factory, workdir, istiod)
    wait_until(lambda: ready(proxy)[0] == 200, what="ready")
    # What istiod saw: the token, the cluster, the lifetime ztunnel asks for.
    metadata, validity, outcome = istiod.requests[0]
    assert (metadata["authorization"], metadata["clusterid"], validity, outcome) == (
        "Bearer " + (workdir / "istio-token").read_text(), "test-cluster", 86400, "OK")
    dump = certificate(proxy)
    # compared as numbers: the dump prints whole bytes (a leading 0 when the top nibble is 0, as `openssl x509
    # -serial` does), the stand-in as Python formats it (this differed in 1 run of 16)
    assert dump["identity"] == IDENTITY and int(dump["serial"], 16) == int(istiod.issued[-1], 16)
    assert "key" not in json.dumps(dump).lower().replace("keyusage", "")
    c = tunnel_client(proxy, istiod, workdir)
    assert served_uri(c) == [IDENTITY]
    assert request_ok(c)
    metrics = proxy.metrics()
    assert metrics['waypoint_certificate_renewals_total{result="success"}'] == 1
    assert abs(metrics["waypoint_certificate_expiry_timestamp_seconds"] - dump["notAfter"]) < 1
    c.close()


def test_rotation_keeps_open_connections_and_new_handshakes_get_the_new_certificate(
        proxy_factory, origin_factory, workdir, istiod):
    istiod.lifetime = 4            # renewed about every 2 s
    proxy = start(proxy_factory, origin_factory, workdir, istiod)
    wait_until(lambda: ready(proxy)[0] == 200, what="ready")
    before = tunnel_client(proxy, istiod, workdir)
    first = certificate(proxy)["serial"]
    assert request_ok(before)
    wait_until(lambda: certificate(proxy)["serial"] != first, timeout=6, what="a renewal")
    after = tunnel_client(proxy, istiod, workdir)
    assert served_uri(after) == [IDENTITY]
    assert after.sock.getpeercert()["serialNumber"] != before.sock.getpeercert()["serialNumber"]
    # The connection made before the rotation carries new tunnels still.
    assert request_ok(before) and request_ok(after)
    before.close()
    after.close()


def test_ca_outage_keeps_the_certificate_until_it_expires(proxy_factory, origin_factory, workdir, istiod):
    istiod.lifetime = 5
    proxy = start(proxy_factory, origin_factory, workdir, istiod)
    wait_until(lambda: ready(proxy)[0] == 200, what="ready")
    expiry = certificate(proxy)["notAfter"]
    istiod.down = True
    wait_until(lambda: proxy.metrics().get('waypoint_certificate_renewals_total{result="failure"}', 0) >= 1, timeout=6,
               what="a failed renewal")
    # Still valid: still served and ready.
    assert ready(proxy)[0] == 200
    assert request_ok(tunnel_client(proxy, istiod, workdir))
    wait_until(lambda: time.time() > expiry + 1, timeout=8, what="expiry")
    status, body = ready(proxy)
    assert status == 503 and "expired" in body and "UNAVAILABLE" in body, body
    istiod.down = False
    wait_until(lambda: ready(proxy)[0] == 200, timeout=20, what="recovery")
    assert certificate(proxy)["notAfter"] > expiry


@pytest.mark.parametrize("case", ["unknown token", "token for another identity", "wrong server name"])
def test_refused_certificate_keeps_the_waypoint_unready_and_says_why(proxy_factory, origin_factory, workdir, istiod, case):
    token = service_account_token("apps", "waypoint")
    server_name = FakeIstiod.SERVER_NAME
    if case == "unknown token":
        why = "grpc-status 16 (UNAUTHENTICATED): authenticate failure"
    elif case == "token for another identity":
        istiod.tokens[token] = ("apps", "other")       # the TokenReview's answer; the CSR asks for apps/waypoint
        why = "grpc-status 3 (INVALID_ARGUMENT): CSR asks for ['spiffe://cluster.local/ns/apps/sa/waypoint']"
    else:
        istiod.allow("apps", "waypoint", token)
        server_name, why = "istiod.elsewhere.svc", "TLS handshake with 127.0.0.1"
    proxy = start(proxy_factory, origin_factory, workdir, istiod, token=token, server_name=server_name)
    wait_until(lambda: why in proxy.stderr(), timeout=10, what=why)
    status, body = ready(proxy)
    assert status == 503 and body.startswith("no certificate from istiod") and why in body, body
    assert proxy.metrics()['waypoint_certificate_renewals_total{result="success"}'] == 0
    # No certificate, no HBONE: a handshake gets no answer.
    cert, key = istiod.client_certificate(str(workdir), "apps", "frontend")
    with pytest.raises(OSError):
        HBONEClient(proxy.hbone_port, cert, key, istiod.root_path, timeout=1)
