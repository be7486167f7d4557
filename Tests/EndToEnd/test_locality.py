"""Istio's locality load balancing (with outlier detection on the backend) and VirtualService
`retryRemoteLocalities`: the waypoint runs at `--locality`, endpoints are placed by their EndpointSlice `zone`,
their Node's topology labels or a ServiceEntry endpoint's `locality`. Origins count the requests they see."""
import json

from conftest import http_request, origin_requests


def seen(origin):
    return origin_requests(origin.port)


def config(endpoints, retries="", outlier="{consecutive5xxErrors: 1000}"):
    """Service `web` with one EndpointSlice endpoint per (port, zone, nodeName), a Node `far-node` in region r2,
    a DestinationRule with outlier detection (what turns locality load balancing on) and a VirtualService."""
    slices = "".join(f"""
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {{name: web-{i}, namespace: default, labels: {{kubernetes.io/service-name: web}}}}
addressType: IPv4
ports: [{{name: http, port: {port}}}]
endpoints: [{{addresses: [127.0.0.1], {f"zone: {zone}, " if zone else ""}{f"nodeName: {node}" if node else ""}}}]
""" for i, (port, zone, node) in enumerate(endpoints))
    return f"""
apiVersion: v1
kind: Service
metadata: {{name: web, namespace: default}}
spec:
  ports: [{{name: http, port: 80}}]
---
apiVersion: v1
kind: Node
metadata:
  name: far-node
  labels: {{topology.kubernetes.io/region: r2, topology.kubernetes.io/zone: r2-a}}
{slices}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {{name: web, namespace: default}}
spec:
  host: web
  trafficPolicy: {{outlierDetection: {outlier}, loadBalancer: {{simple: ROUND_ROBIN}}}}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: web, namespace: default}}
spec:
  hosts: [web]
  http:
  - route: [{{destination: {{host: web}}}}]
    {retries}
"""


def test_requests_stay_in_the_waypoints_zone(origin_factory, proxy_factory):
    near, same_region, far = origin_factory("near"), origin_factory("same-region"), origin_factory("far")
    proxy = proxy_factory(config([(near.port, "r1-a", None), (same_region.port, "r1-b", None), (far.port, None, "far-node")]),
                          extra=["--locality", "r1/r1-a", "--workers", "1"])
    for i in range(12):
        status, headers, _ = http_request(proxy.port, "GET", f"/l{i}", host="web")
        assert status == 200 and headers["x-origin"] == "near"
    assert (seen(near), seen(same_region), seen(far)) == (12, 0, 0)


def test_without_a_locality_every_endpoint_is_equally_near(origin_factory, proxy_factory):
    near, far = origin_factory("near"), origin_factory("far")
    proxy = proxy_factory(config([(near.port, "r1-a", None), (far.port, None, "far-node")]), extra=["--workers", "1"])
    for i in range(10):
        assert http_request(proxy.port, "GET", f"/e{i}", host="web")[0] == 200
    assert (seen(near), seen(far)) == (5, 5)              # round robin over both


def test_an_unhealthy_near_tier_spills_over(origin_factory, proxy_factory):
    """Both near endpoints ejected (one 503 ejects): the far tier takes every request."""
    near = [origin_factory(f"near{i}", fail_percent=100) for i in range(2)]
    far = origin_factory("far")
    proxy = proxy_factory(config([(near[0].port, "r1-a", None), (near[1].port, "r1-a", None), (far.port, None, "far-node")],
                                 outlier="{consecutive5xxErrors: 1, baseEjectionTime: 30s, maxEjectionPercent: 100}"),
                          extra=["--locality", "r1/r1-a", "--workers", "1", "--default-retries", "off"])
    statuses = [http_request(proxy.port, "GET", f"/s{i}", host="web")[0] for i in range(30)]
    # Each near endpoint fails once and is ejected (while one is, the near tier takes 70 %: 1.4 × its half).
    assert (seen(near[0]), seen(near[1]), seen(far)) == (1, 1, 28)
    assert statuses.count(503) == 2 and statuses[-10:] == [200] * 10


def test_retry_remote_localities(origin_factory, proxy_factory):
    """Two near endpoints that always fail and a far one that works, 2 retries on 5xx: without
    retryRemoteLocalities every try stays near (503); with it the third try leaves the tier tried (200)."""
    for remote, expected in (("false", 503), ("true", 200)):
        near = [origin_factory(f"near{i}-{remote}", fail_percent=100) for i in range(2)]
        far = origin_factory(f"far-{remote}")
        retries = f"retries: {{attempts: 2, retryOn: 5xx, retryRemoteLocalities: {remote}}}"
        proxy = proxy_factory(config([(near[0].port, "r1-a", None), (near[1].port, "r1-a", None), (far.port, None, "far-node")],
                                     retries=retries),
                              extra=["--locality", "r1/r1-a", "--workers", "1"], name=f"proxy-{remote}")
        status, _, body = http_request(proxy.port, "GET", "/r", host="web")
        assert status == expected
        assert (seen(near[0]), seen(near[1]), seen(far)) == ((2, 1, 0) if remote == "false" else (1, 1, 1))
        if remote == "true":
            assert json.loads(body)["headers"]["x-envoy-attempt-count"] == "3"
