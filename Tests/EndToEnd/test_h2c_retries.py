"""Retries and timeouts of HTTP/2 (h2c, gRPC) requests inside HBONE tunnels: the same policies as HTTP/1.1
plus HTTP/2's refused streams and gRPC statuses. The upstream misbehaves on request (`H2COrigin`'s
`fail=N&key=K&how=H`) and the inner client is Python's h2."""
import json
import socket
import time

from conftest import service_yaml, total, wait_for, wait_until
from test_h2c import H2COrigin, InnerH2
from test_hbone import VIP, certs, client, hbone_proxy  # noqa: F401 (fixtures)

GRPC = [("content-type", "application/grpc"), ("te", "trailers")]


def virtual_service(retries="", timeout=""):
    return f"""
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: web, namespace: default}}
spec:
  hosts: [web]
  http:
  - route: [{{destination: {{host: web}}}}]
    {retries}
    {timeout}
"""


def open_inner(proxy, certs):
    c = client(proxy, certs)
    sid = c.connect(f"{VIP}:80")
    assert c.status(sid) == 200
    return c, InnerH2(c, sid)


def attempt_counts(origin, key):
    return [h.get("x-envoy-attempt-count") for h in origin.arrived if f"key={key}" in h[":path"]]


def test_503_twice_then_200_is_retried_with_the_body_replayed(hbone_proxy, certs):
    origin = H2COrigin()
    proxy = hbone_proxy(service_yaml("web", [("127.0.0.1", origin.port)], cluster_ip=VIP, port_name="grpc"))
    c, inner = open_inner(proxy, certs)
    body = bytes(range(256)) * 120          # 30 KiB, within the 64 KiB replay bound
    stream = inner.request("/upload?fail=2&key=a", body=body, method="POST")
    assert inner.wait(stream)[":status"] == "200"
    assert json.loads(inner.data[stream])["body_length"] == len(body)
    assert attempt_counts(origin, "a") == ["1", "2", "3"]
    assert [b for h, b in origin.seen if "key=a" in h[":path"]] == [body, body, body]
    metrics = proxy.metrics()
    assert total(metrics, "waypoint_upstream_retries_total") == 2
    assert metrics['waypoint_upstream_retries_total{reason="status"}'] == 2
    assert metrics["waypoint_upstream_retries_succeeded_total"] == 1
    c.close()


def test_each_retry_goes_to_another_endpoint(hbone_proxy, certs):
    a, b = H2COrigin(), H2COrigin()
    proxy = hbone_proxy(service_yaml("web", [("127.0.0.1", a.port), ("127.0.0.1", b.port)], cluster_ip=VIP,
                                     port_name="grpc"))
    c, inner = open_inner(proxy, certs)
    for i in range(4):
        # Each origin fails its first request of the key: the second try must go to the other one; the third
        # (both tried) to either, which answers.
        stream = inner.request(f"/x?fail=1&key=k{i}")
        assert inner.wait(stream)[":status"] == "200"
        tries = sorted([attempt_counts(a, f"k{i}"), attempt_counts(b, f"k{i}")])
        assert tries in ([["1"], ["2", "3"]], [["1", "3"], ["2"]])
    c.close()


def test_refused_stream_and_grpc_unavailable_are_retried_by_default(hbone_proxy, certs):
    origin = H2COrigin()
    proxy = hbone_proxy(service_yaml("web", [("127.0.0.1", origin.port)], cluster_ip=VIP, port_name="grpc"))
    c, inner = open_inner(proxy, certs)
    stream = inner.request("/grpc.Echo/Say?fail=1&key=r&how=refuse", headers=GRPC, body=b"\x00\x00\x00\x00\x01x", method="POST")
    assert inner.wait(stream)[":status"] == "200" and inner.trailers[stream]["grpc-status"] == "0"
    assert attempt_counts(origin, "r") == ["1", "2"]
    stream = inner.request("/grpc.Echo/Say?fail=2&key=u&how=grpc14", headers=GRPC, body=b"\x00\x00\x00\x00\x01x", method="POST")
    assert inner.wait(stream)[":status"] == "200" and inner.trailers[stream]["grpc-status"] == "0"
    assert attempt_counts(origin, "u") == ["1", "2", "3"]
    # INTERNAL (13) and a plain stream reset are not in Istio's default conditions: passed on as they are.
    stream = inner.request("/grpc.Echo/Say?fail=1&key=i&how=grpc13", headers=GRPC, body=b"\x00\x00\x00\x00\x01x", method="POST")
    assert inner.wait(stream)["grpc-status"] == "13"
    assert attempt_counts(origin, "i") == ["1"]
    stream = inner.request("/x?fail=1&key=z&how=reset")
    assert inner.wait(stream)[":status"] == "503"
    assert attempt_counts(origin, "z") == ["1"]
    metrics = proxy.metrics()
    assert metrics['waypoint_upstream_retries_total{reason="refused_stream"}'] == 1
    assert metrics['waypoint_upstream_retries_total{reason="grpc_status"}'] == 2
    assert total(metrics, "waypoint_upstream_retries_total") == 3
    c.close()


def test_goaway_refusing_the_stream_is_retried_on_a_new_connection(hbone_proxy, certs):
    origin = H2COrigin()
    proxy = hbone_proxy(service_yaml("web", [("127.0.0.1", origin.port)], cluster_ip=VIP, port_name="grpc"))
    c, inner = open_inner(proxy, certs)
    stream = inner.request("/x?fail=1&key=g&how=goaway")
    assert inner.wait(stream)[":status"] == "200"
    assert attempt_counts(origin, "g") == ["1", "2"]
    assert origin.connections == 2
    c.close()


def test_virtual_service_retry_on_reset_and_internal(hbone_proxy, certs):
    origin = H2COrigin()
    routes = virtual_service(retries="retries: {attempts: 2, retryOn: 'reset,internal'}")
    proxy = hbone_proxy(service_yaml("web", [("127.0.0.1", origin.port)], cluster_ip=VIP, port_name="grpc", routes=routes))
    c, inner = open_inner(proxy, certs)
    stream = inner.request("/x?fail=1&key=z&how=reset")
    assert inner.wait(stream)[":status"] == "200"
    assert attempt_counts(origin, "z") == ["1", "2"]
    stream = inner.request("/grpc.Echo/Say?fail=2&key=i&how=grpc13", headers=GRPC, body=b"\x00\x00\x00\x00\x01x", method="POST")
    assert inner.wait(stream)[":status"] == "200" and inner.trailers[stream]["grpc-status"] == "0"
    # 503 is not among this route's conditions.
    stream = inner.request("/x?fail=1&key=s")
    assert inner.wait(stream)[":status"] == "503"
    assert attempt_counts(origin, "s") == ["1"]
    c.close()


def test_per_try_timeout_is_retried_and_the_route_timeout_bounds_all_tries(hbone_proxy, certs):
    origin = H2COrigin()
    routes = virtual_service(retries="retries: {attempts: 1, perTryTimeout: 200ms, retryOn: 'reset'}", timeout="timeout: 3s")
    proxy = hbone_proxy(service_yaml("web", [("127.0.0.1", origin.port)], cluster_ip=VIP, port_name="grpc", routes=routes))
    c, inner = open_inner(proxy, certs)
    start = time.time()
    stream = inner.request("/x?fail=1&key=h&how=hang")
    assert inner.wait(stream)[":status"] == "200"
    assert 0.2 <= time.time() - start < 1.5
    assert attempt_counts(origin, "h") == ["1", "2"]
    # Both tries hang: the per-try timeout ends the second one with 504 (attempts exhausted), long before the
    # route's 3 s.
    start = time.time()
    stream = inner.request("/grpc.Echo/Say?fail=5&key=t&how=hang", headers=GRPC, body=b"\x00\x00\x00\x00\x01x", method="POST")
    assert inner.wait(stream)["grpc-status"] == "14"
    assert 0.4 <= time.time() - start < 2
    assert attempt_counts(origin, "t") == ["1", "2"]
    assert proxy.metrics()['waypoint_upstream_retries_total{reason="per_try_timeout"}'] == 2
    c.close()


def test_route_timeout_answers_504_over_http2(hbone_proxy, certs):
    origin = H2COrigin()
    proxy = hbone_proxy(service_yaml("web", [("127.0.0.1", origin.port)], cluster_ip=VIP, port_name="grpc",
                                     routes=virtual_service(timeout="timeout: 300ms")))
    c, inner = open_inner(proxy, certs)
    start = time.time()
    stream = inner.request("/x?fail=1&key=h&how=hang")
    assert inner.wait(stream)[":status"] == "504"
    assert inner.data[stream] == b"upstream request timeout\n"
    assert 0.3 <= time.time() - start < 1.5
    c.close()


def test_body_beyond_the_replay_bound_is_not_retried(hbone_proxy, certs):
    origin = H2COrigin()
    proxy = hbone_proxy(service_yaml("web", [("127.0.0.1", origin.port)], cluster_ip=VIP, port_name="grpc"))
    c, inner = open_inner(proxy, certs)
    stream = inner.request("/upload?fail=1&key=small", body=b"s" * 1000, method="POST")
    assert inner.wait(stream)[":status"] == "200"
    assert attempt_counts(origin, "small") == ["1", "2"]
    # (The proxy's SETTINGS are in now: its stream window takes the whole body at once.)
    stream = inner.request("/upload?fail=1&key=big", body=b"b" * (100 * 1024), method="POST")
    assert inner.wait(stream)[":status"] == "503"
    assert attempt_counts(origin, "big") == ["1"]
    log = json.loads(wait_for(r'\{[^\n]*"path":"/upload\?fail=1&key=big"[^\n]*\n', proxy.stdout_path).group(0))
    assert log["retry"] == "not retried: request body beyond the replay bound" and log["upstream_request_attempt_count"] == 1
    assert log["protocol"] == "HTTP/2" and log["bytes_received"] == 100 * 1024
    c.close()


def test_connect_failure_is_retried_to_the_live_endpoint(hbone_proxy, certs):
    origin = H2COrigin()
    dead = socket.socket()
    dead.bind(("127.0.0.1", 0))
    dead_port = dead.getsockname()[1]
    dead.close()
    round_robin = """
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: web, namespace: default}
spec: {host: web, trafficPolicy: {loadBalancer: {simple: ROUND_ROBIN}}}
"""
    proxy = hbone_proxy(service_yaml("web", [("127.0.0.1", dead_port), ("127.0.0.1", origin.port)], cluster_ip=VIP,
                                     port_name="grpc", routes=round_robin))
    c, inner = open_inner(proxy, certs)
    for i in range(6):
        stream = inner.request(f"/x?key=c{i}")
        assert inner.wait(stream)[":status"] == "200"
    assert len(origin.seen) == 6
    # Round robin sends at least every other first try to the dead endpoint (a retry's pick takes a turn too).
    metrics = proxy.metrics()
    assert 3 <= metrics['waypoint_upstream_retries_total{reason="connect_failure"}'] <= 6
    assert total(metrics, "waypoint_upstream_retries_total") == metrics['waypoint_upstream_retries_total{reason="connect_failure"}']
    c.close()


def test_no_retry_once_the_response_has_started(hbone_proxy, certs):
    """A response passed on downstream is never retried: an upstream that resets mid-body resets the client's stream."""
    origin = H2COrigin()
    routes = virtual_service(retries="retries: {attempts: 3, retryOn: 'reset,5xx'}")
    proxy = hbone_proxy(service_yaml("web", [("127.0.0.1", origin.port)], cluster_ip=VIP, port_name="grpc", routes=routes))
    c, inner = open_inner(proxy, certs)
    stream = inner.request("/x?fail=1&key=m&how=midreset")
    inner.wait(stream)
    assert inner.responses[stream][":status"] == "200" and stream in inner.resets
    assert attempt_counts(origin, "m") == ["1"]
    assert total(proxy.metrics(), "waypoint_upstream_retries_total") == 0
    c.close()


def test_max_requests_per_connection_over_http2(hbone_proxy, certs):
    """DestinationRule maxRequestsPerConnection 2: five HTTP/2 requests use three upstream connections, each
    closed after its last stream."""
    origin = H2COrigin()
    rule = """
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: web, namespace: default}
spec: {host: web, trafficPolicy: {connectionPool: {http: {maxRequestsPerConnection: 2}}}}
"""
    proxy = hbone_proxy(service_yaml("web", [("127.0.0.1", origin.port)], cluster_ip=VIP, port_name="grpc", routes=rule))
    c, inner = open_inner(proxy, certs)
    for i in range(5):
        stream = inner.request(f"/r{i}")
        assert inner.wait(stream)[":status"] == "200"
    assert origin.connections == 3
    assert proxy.metrics()["waypoint_upstream_connections_total"] == 3
    assert wait_until(lambda: origin.closed >= 2)          # the two spent ones; the third has a stream left
    time.sleep(0.2)
    assert origin.closed == 2
    c.close()


def test_max_connections_over_http2(hbone_proxy, certs):
    """maxConnections 1 with maxRequestsPerConnection 1 (every stream needs a connection of its own): while one
    request holds the only connection, the next is refused with 503 overflow; once it is gone, one goes through."""
    origin = H2COrigin()
    rule = """
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: web, namespace: default}
spec: {host: web, trafficPolicy: {connectionPool: {tcp: {maxConnections: 1}, http: {maxRequestsPerConnection: 1}}}}
"""
    proxy = hbone_proxy(service_yaml("web", [("127.0.0.1", origin.port)], cluster_ip=VIP, port_name="grpc", routes=rule),
                        extra=["--default-retries", "off"])
    c, inner = open_inner(proxy, certs)
    held = inner.request("/held?fail=1&key=h&how=hang")
    assert wait_until(lambda: origin.arrived)
    refused = inner.request("/second")
    assert inner.wait(refused)[":status"] == "503"
    assert b"reset reason: overflow" in inner.data[refused]
    inner.conn.reset_stream(held)                          # the client gives up: the connection closes
    inner.flush()
    assert wait_until(lambda: origin.closed >= 1)
    assert inner.wait(inner.request("/third"))[":status"] == "200"
    assert proxy.metrics()["waypoint_upstream_overflow_total"] == 1
    c.close()


def test_grpc_timeout_header_is_the_calls_deadline(hbone_proxy, certs):
    """As Istio configures Envoy (max_grpc_timeout = the route's timeout): a gRPC call's grpc-timeout bounds it,
    capped by the route's timeout, and the upstream is told the timeout that applies."""
    origin = H2COrigin()
    capped = """
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: capped, namespace: default}
spec:
  hosts: [capped]
  http: [{timeout: 200ms, route: [{destination: {host: web}}]}]
"""
    config = service_yaml("web", [("127.0.0.1", origin.port)], cluster_ip=VIP, port_name="grpc") + "---" + \
        service_yaml("capped", [("127.0.0.1", origin.port)], cluster_ip="10.96.0.88", port_name="grpc") + "---" + capped
    proxy = hbone_proxy(config, extra=["--default-retries", "off"])
    c, inner = open_inner(proxy, certs)
    start = time.time()
    call = inner.request("/grpc.Echo/Say?fail=1&key=d&how=hang", headers=GRPC + [("grpc-timeout", "300m")],
                         body=b"\x00\x00\x00\x00\x01x", method="POST")
    assert inner.wait(call)["grpc-status"] == "14"
    assert 0.3 <= time.time() - start < 2
    assert [h["grpc-timeout"] for h in origin.arrived if "key=d" in h[":path"]] == ["300m"]
    # The route's 200 ms caps a call that asks for 5 s.
    sid = c.connect("10.96.0.88:80")
    assert c.status(sid) == 200
    other = InnerH2(c, sid)
    start = time.time()
    call = other.request("/grpc.Echo/Say?fail=1&key=e&how=hang", headers=GRPC + [("grpc-timeout", "5S")],
                         body=b"\x00\x00\x00\x00\x01x", method="POST")
    assert other.wait(call)["grpc-status"] == "14"
    assert 0.2 <= time.time() - start < 2
    assert [h["grpc-timeout"] for h in origin.arrived if "key=e" in h[":path"]] == ["200m"]
    c.close()
