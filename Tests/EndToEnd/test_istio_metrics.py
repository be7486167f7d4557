"""Istio's standard metrics (istio_requests_total, the duration and size histograms, istio_tcp_*), scraped from
the running binary after plaintext and HBONE traffic and parsed with prometheus_client's own parser."""
import time

from prometheus_client.parser import text_string_to_metric_families

from conftest import http_request, service_yaml
from hbone import get
from test_hbone import FORWARDED, VIP, certs, client, hbone_proxy  # noqa: F401 (fixtures)


def scrape(proxy):
    status, _, body = http_request(proxy.admin_port, "GET", "/stats/prometheus", host="admin")
    assert status == 200
    return {family.name: family for family in text_string_to_metric_families(body.decode())}


def samples(families, name, suffix="", **labels):
    """Samples of a family whose labels include `labels`."""
    return [s for s in families[name].samples
            if s.name == name + suffix and all(s.labels.get(k) == v for k, v in labels.items())]


SERVICE = dict(reporter="waypoint", destination_service="web.default.svc.cluster.local", destination_service_name="web",
               destination_service_namespace="default")


def test_plaintext_requests_are_counted_with_istio_labels(origin_factory, proxy_factory):
    origin = origin_factory("a")
    proxy = proxy_factory(service_yaml("web", [("127.0.0.1", origin.port)]))
    for i in range(3):
        assert http_request(proxy.port, "POST", f"/r{i}", host="web", body=b"x" * 500)[0] == 200
    assert http_request(proxy.port, "GET", "/?status=503", host="web", headers={})[0] == 503
    families = scrape(proxy)
    ok = samples(families, "istio_requests", "_total", response_code="200", **SERVICE)
    assert len(ok) == 1 and ok[0].value == 3
    unknown = {f"{side}_{label}": "unknown" for side, labels in [
        ("source", ["workload", "canonical_service", "canonical_revision", "workload_namespace", "principal", "app", "version",
                    "cluster"]),
        ("destination", ["workload", "workload_namespace", "app", "version", "canonical_service", "canonical_revision"])]
        for label in labels}
    assert ok[0].labels == {**SERVICE, **unknown, "request_protocol": "http", "response_code": "200",
                            "grpc_response_status": "", "response_flags": "-", "connection_security_policy": "none"}
    assert samples(families, "istio_requests", "_total", response_code="503", **SERVICE)[0].value == 1
    # Histograms: cumulative buckets ending in +Inf = count; request sizes are total sizes (head and 500-byte body,
    # as Istio's request.total_size).
    buckets = samples(families, "istio_request_duration_milliseconds", "_bucket", response_code="200", **SERVICE)
    values = [b.value for b in buckets]
    assert values == sorted(values) and buckets[-1].labels["le"] == "+Inf" and values[-1] == 3
    assert samples(families, "istio_request_duration_milliseconds", "_count", response_code="200", **SERVICE)[0].value == 3
    sizes = {b.labels["le"]: b.value for b in samples(families, "istio_request_bytes", "_bucket", response_code="200", **SERVICE)}
    assert sizes["100"] == 0 and sizes["1000"] == 3
    assert 1500 < samples(families, "istio_request_bytes", "_sum", response_code="200", **SERVICE)[0].value < 3000


def test_hbone_requests_and_tcp_tunnels_carry_the_caller(origin_factory, hbone_proxy, certs):
    origin = origin_factory("a")
    config = service_yaml("web", [("127.0.0.1", origin.port)], cluster_ip=VIP) + "---" + \
        service_yaml("db", [("127.0.0.1", origin.port)], cluster_ip="10.96.0.20", port_name="tcp-db")
    proxy = hbone_proxy(config)
    c = client(proxy, certs)
    sid = c.connect(f"{VIP}:80")
    assert c.status(sid) == 200
    for i in range(2):
        assert c.http(sid, get(f"/h{i}")).startswith(b"HTTP/1.1 200")
    tcp = c.connect("10.96.0.20:80")
    assert c.status(tcp) == 200
    response = c.http(tcp, get("/raw"))
    c.close()
    caller = dict(source_principal="spiffe://cluster.local/ns/default/sa/frontend", source_workload_namespace="default",
                  connection_security_policy="mutual_tls")
    families = scrape(proxy)
    assert samples(families, "istio_requests", "_total", response_code="200", request_protocol="http", **caller, **SERVICE)[0].value == 2
    db = dict(destination_service="db.default.svc.cluster.local", request_protocol="tcp", **caller)
    deadline = time.time() + 5
    # The relay closes when its tunnel's end arrives: wait for that to be counted.
    while sum(x.value for x in samples(families, "istio_tcp_connections_closed", "_total", **db)) < 1 and time.time() < deadline:
        time.sleep(0.05)
        families = scrape(proxy)
    assert samples(families, "istio_tcp_connections_opened", "_total", **db)[0].value == 1
    assert samples(families, "istio_tcp_connections_closed", "_total", **db)[0].value == 1
    assert samples(families, "istio_tcp_received_bytes", "_total", **db)[0].value == len(get("/raw"))
    assert samples(families, "istio_tcp_sent_bytes", "_total", **db)[0].value == len(response)


def test_source_labels_come_from_baggage_and_destination_labels_from_the_pod(origin_factory, hbone_proxy, certs):
    """What ztunnel sends in the CONNECT (`baggage`) names the caller's workload; the endpoint's Pod (labels and
    owner) names the destination workload, as Istio's dashboards group by them."""
    origin = origin_factory("a")
    pod = """
apiVersion: v1
kind: Pod
metadata:
  name: web-v2-5b8d9f7c6-x7k2p
  namespace: default
  labels: {app: web, version: v2, pod-template-hash: 5b8d9f7c6}
  ownerReferences: [{apiVersion: apps/v1, kind: ReplicaSet, name: web-v2-5b8d9f7c6, uid: u1, controller: true}]
status: {podIP: 127.0.0.1}
"""
    proxy = hbone_proxy(service_yaml("web", [("127.0.0.1", origin.port)], cluster_ip=VIP) + "---" + pod)
    c = client(proxy, certs)
    baggage = ("k8s.cluster.name=east,k8s.namespace.name=shop,k8s.deployment.name=frontend-v1,"
               "service.name=frontend,service.version=v1%2E0;prop=1")
    sid = c.connect(f"{VIP}:80", headers=[("baggage", baggage), FORWARDED])
    assert c.status(sid) == 200
    assert c.http(sid, get("/labelled")).startswith(b"HTTP/1.1 200")
    c.close()
    series = samples(scrape(proxy), "istio_requests", "_total", response_code="200", **SERVICE)
    assert len(series) == 1 and series[0].value == 1
    labels = series[0].labels
    assert {k: v for k, v in labels.items() if k.startswith("source_")} == {
        "source_workload": "frontend-v1", "source_canonical_service": "frontend", "source_canonical_revision": "v1.0",
        "source_workload_namespace": "shop", "source_principal": "spiffe://cluster.local/ns/default/sa/frontend",
        "source_app": "frontend", "source_version": "v1.0", "source_cluster": "east"}
    assert {k: v for k, v in labels.items() if k.startswith("destination_") and not k.startswith("destination_service")} == {
        "destination_workload": "web-v2", "destination_workload_namespace": "default", "destination_app": "web",
        "destination_version": "v2", "destination_canonical_service": "web", "destination_canonical_revision": "v2"}


def test_hostile_baggage_is_ignored_and_the_worker_lives_on(origin_factory, hbone_proxy, certs):
    origin = origin_factory("a")
    proxy = hbone_proxy(service_yaml("web", [("127.0.0.1", origin.port)], cluster_ip=VIP), extra=["--workers", "1"])
    c = client(proxy, certs)
    for baggage in [";", ",;,", "k8s.pod.name=%", "=" * 4000, ",".join(["a=b"] * 500)]:
        sid = c.connect(f"{VIP}:80", headers=[("baggage", baggage)])
        assert c.status(sid) == 200
        assert c.http(sid, get("/b")).startswith(b"HTTP/1.1 200")
    c.close()
    series = samples(scrape(proxy), "istio_requests", "_total", response_code="200", **SERVICE)
    assert sum(s.value for s in series) == 5
    assert {s.labels["source_workload"] for s in series} == {"unknown", "%"}    # a lone % is kept as it is


def test_series_beyond_the_cap_go_to_the_overflow_series(origin_factory, proxy_factory):
    origin = origin_factory("a")
    proxy = proxy_factory(service_yaml("web", [("127.0.0.1", origin.port)]),
                          extra=["--istio-metrics-max-series", "2", "--workers", "1"])
    for status in [200, 201, 202, 203, 203]:
        assert http_request(proxy.port, "GET", f"/?status={status}", host="web")[0] == status
    families = scrape(proxy)
    codes = {s.labels["response_code"]: s.value for s in samples(families, "istio_requests", "_total")}
    assert codes == {"200": 1, "201": 1, "overflow": 3}
    assert proxy.metrics()["waypoint_istio_series_overflow_total"] == 3
