"""Istio's default retries on the HTTP/1.1 path: 2 retries on connect failure or 503, to another endpoint when
one is ready, with `x-envoy-attempt-count`; never for big bodies, other statuses, or with --default-retries off."""
import json
import socket
import threading
import time

from conftest import free_port, http_request, origin_requests, service_yaml, total, wait_until


def test_503_twice_then_200_is_retried_to_success(origin_factory, proxy_factory):
    origin = origin_factory("a")
    proxy = proxy_factory(service_yaml("web", [("127.0.0.1", origin.port)]))
    status, _, body = http_request(proxy.port, "GET", "/x?fail=2&key=twice", host="web")
    assert status == 200
    assert json.loads(body)["headers"]["x-envoy-attempt-count"] == "3"   # the origin saw the third try
    metrics = proxy.metrics()
    assert total(metrics, "waypoint_upstream_retries_total") == 2
    assert metrics["waypoint_upstream_retries_succeeded_total"] == 1


def test_retries_stop_after_two(origin_factory, proxy_factory):
    origin = origin_factory("a")
    proxy = proxy_factory(service_yaml("web", [("127.0.0.1", origin.port)]))
    assert http_request(proxy.port, "GET", "/x?fail=3&key=thrice", host="web")[0] == 503
    # The fourth request with the key is the origin's first success: exactly three tries were made.
    status, _, body = http_request(proxy.port, "GET", "/x?fail=3&key=thrice", host="web")
    assert status == 200 and json.loads(body)["headers"]["x-envoy-attempt-count"] == "1"
    assert total(proxy.metrics(), "waypoint_upstream_retries_total") == 2


def test_connect_failure_goes_to_another_endpoint(origin_factory, proxy_factory):
    origin = origin_factory("a")
    proxy = proxy_factory(service_yaml("web", [("127.0.0.1", free_port()), ("127.0.0.1", origin.port)]) + ROUND_ROBIN)
    for i in range(12):
        status, _, body = http_request(proxy.port, "GET", f"/r{i}", host="web")
        assert status == 200, body
    assert total(proxy.metrics(), "waypoint_upstream_retries_total") >= 1


def test_other_statuses_are_not_retried(origin_factory, proxy_factory):
    origin = origin_factory("a")
    proxy = proxy_factory(service_yaml("web", [("127.0.0.1", origin.port)]))
    assert http_request(proxy.port, "GET", "/x?status=500", host="web")[0] == 500
    assert http_request(proxy.port, "GET", "/x?status=504", host="web")[0] == 504
    assert total(proxy.metrics(), "waypoint_upstream_retries_total") == 0


def test_small_post_is_retried_big_post_is_not(origin_factory, proxy_factory):
    origin = origin_factory("a")
    proxy = proxy_factory(service_yaml("web", [("127.0.0.1", origin.port)]))
    status, _, body = http_request(proxy.port, "POST", "/p?fail=1&key=small", host="web", body=b"x" * 1000)
    assert status == 200
    seen = json.loads(body)
    assert seen["body_length"] == 1000 and seen["headers"]["x-envoy-attempt-count"] == "2"
    big = b"y" * (1 << 20)   # beyond the 64 KiB replay bound: streamed, not kept, not retried
    assert http_request(proxy.port, "POST", "/p?fail=1&key=big", host="web", body=big)[0] == 503
    from conftest import wait_for
    small_log = json.loads(wait_for(r'\{[^\n]*"path":"/p\?fail=1&key=small"[^\n]*\n', proxy.stdout_path).group(0))
    assert small_log["upstream_request_attempt_count"] == 2
    big_log = json.loads(wait_for(r'\{[^\n]*"path":"/p\?fail=1&key=big"[^\n]*\n', proxy.stdout_path).group(0))
    assert big_log["retry"] == "not retried: request body beyond the replay bound" and big_log["upstream_request_attempt_count"] == 1


def test_default_retries_off(origin_factory, proxy_factory):
    origin = origin_factory("a")
    proxy = proxy_factory(service_yaml("web", [("127.0.0.1", origin.port)]), extra=["--default-retries", "off"])
    assert http_request(proxy.port, "GET", "/x?fail=1&key=off", host="web")[0] == 503
    assert total(proxy.metrics(), "waypoint_upstream_retries_total") == 0


def test_budget_bounds_the_load_on_a_dead_service(origin_factory, proxy_factory):
    """Every endpoint answers 503: under concurrent load, retries add ~20% of the requests in flight, plus what the
    floor of 3 concurrent retries allows; without the budget, Istio's 2 retries would triple the load (2,880)."""
    port = origin_factory("dead", fail_percent=100).port
    proxy = proxy_factory(service_yaml("web", [("127.0.0.1", port)]), extra=["--workers", "1"])
    sent = 0
    lock = threading.Lock()

    def client():
        nonlocal sent
        for _ in range(40):
            assert http_request(proxy.port, "GET", "/", host="web")[0] == 503
            with lock:
                sent += 1
    threads = [threading.Thread(target=client) for _ in range(24)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    seen = origin_requests(port)
    assert sent == 960
    # The floor's share grows as fewer requests are in flight at once, which a loaded machine decides (CI saw 1,225
    # for 960 with other builds running): bounded well below the unbudgeted 3x, not at exactly 20%.
    assert seen <= sent * 1.5, (seen, sent)
    assert proxy.metrics()["waypoint_upstream_retry_budget_exhausted_total"] > 0


def route(spec):
    return f"""
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {{name: web-route, namespace: default}}
spec:
  parentRefs: [{{group: "", kind: Service, name: web}}]
  rules:
  - backendRefs: [{{name: web, port: 80}}]
{spec}
"""


# Tests that count which endpoint each try reaches fix the balancer (Istio's default, LEAST_REQUEST, breaks
# ties at random).
ROUND_ROBIN = """
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: web-round-robin, namespace: default}
spec: {host: web, trafficPolicy: {loadBalancer: {simple: ROUND_ROBIN}}}
"""


def test_request_timeout_answers_504(origin_factory, proxy_factory):
    import time
    origin = origin_factory("a")
    proxy = proxy_factory(service_yaml("web", [("127.0.0.1", origin.port)]) + route("    timeouts: {request: 300ms}"))
    start = time.time()
    status, _, body = http_request(proxy.port, "GET", "/slow?delay=2s", host="web")
    assert (status, body) == (504, b"upstream request timeout\n")
    assert time.time() - start < 1.5
    assert http_request(proxy.port, "GET", "/fast", host="web")[0] == 200


def test_backend_request_timeout_is_retried_to_another_endpoint(origin_factory, proxy_factory):
    import time
    origin = origin_factory("a")
    hung = socket.socket()                 # accepts connections (backlog) and never answers
    hung.bind(("127.0.0.1", 0))
    hung.listen(64)
    spec = "    timeouts: {request: 3s, backendRequest: 200ms}\n    retry: {attempts: 2, codes: [503]}"
    proxy = proxy_factory(service_yaml("web", [("127.0.0.1", hung.getsockname()[1]), ("127.0.0.1", origin.port)]) + route(spec)
                          + ROUND_ROBIN, extra=["--workers", "1"])
    for i in range(4):
        start = time.time()
        assert http_request(proxy.port, "GET", f"/t{i}", host="web")[0] == 200
        assert time.time() - start < 1.5
    assert total(proxy.metrics(), "waypoint_upstream_retries_total") >= 1
    hung.close()


def test_gateway_api_retry_codes_and_attempts(origin_factory, proxy_factory):
    origin = origin_factory("a")
    proxy = proxy_factory(service_yaml("web", [("127.0.0.1", origin.port)]) + route("    retry: {attempts: 1, codes: [500, 503]}"))
    # attempts: 1 means one retry: a key failing twice still fails.
    assert http_request(proxy.port, "GET", "/x?fail=2&key=g1", host="web")[0] == 503
    status, _, body = http_request(proxy.port, "GET", "/x?fail=1&key=g2", host="web")
    assert status == 200 and json.loads(body)["headers"]["x-envoy-attempt-count"] == "2"
    assert http_request(proxy.port, "GET", "/x?status=500", host="web")[0] == 500   # retried once, still 500
    assert http_request(proxy.port, "GET", "/x?status=502", host="web")[0] == 502   # not a listed code
    assert total(proxy.metrics(), "waypoint_upstream_retries_total") == 3


def test_outlier_detection_ejects_a_failing_endpoint_and_brings_it_back(origin_factory, proxy_factory):
    good = origin_factory("good")
    dead_port = origin_factory("dead", fail_percent=100).port
    rule = """
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: web, namespace: default}
spec:
  host: web
  trafficPolicy:
    outlierDetection: {consecutive5xxErrors: 2, baseEjectionTime: 1s, maxEjectionPercent: 100}
    loadBalancer: {simple: ROUND_ROBIN}     # which endpoint each request reaches is counted below
"""
    proxy = proxy_factory(service_yaml("web", [("127.0.0.1", dead_port), ("127.0.0.1", good.port)]) + rule,
                          extra=["--workers", "1", "--default-retries", "off"])
    statuses = [http_request(proxy.port, "GET", f"/o{i}", host="web")[0] for i in range(20)]
    assert statuses.count(503) == 2 and statuses[-10:] == [200] * 10   # two strikes, then ejected
    assert proxy.metrics()["waypoint_outlier_ejections_total"] == 1
    time.sleep(1.2)                                                       # baseEjectionTime × 1
    later = [http_request(proxy.port, "GET", f"/p{i}", host="web")[0] for i in range(4)]
    assert 503 in later                                                   # back in the pool


class RawServer:
    """A TCP server that reads a request, then either closes at once (`reply=None`: a reset before the response)
    or sends `reply` and closes (a response cut off mid-body)."""

    def __init__(self, reply=None):
        import threading
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.port = self.sock.getsockname()[1]
        self.reply = reply
        self.accepted = 0
        threading.Thread(target=self.serve, daemon=True).start()

    def serve(self):
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.accepted += 1
            conn.recv(65536)
            if self.reply:
                conn.sendall(self.reply)
            conn.close()


def test_reset_is_retried_by_a_gateway_api_policy_not_by_the_default(origin_factory, proxy_factory):
    origin = origin_factory("a")
    resetter = RawServer()
    endpoints = [("127.0.0.1", resetter.port), ("127.0.0.1", origin.port)]
    with_route = proxy_factory(service_yaml("web", endpoints) + route("    retry: {attempts: 1, codes: [503]}") + ROUND_ROBIN,
                               extra=["--workers", "1"], name="route")
    assert [http_request(with_route.port, "GET", f"/r{i}", host="web")[0] for i in range(4)] == [200] * 4
    default = proxy_factory(service_yaml("web", endpoints) + ROUND_ROBIN, extra=["--workers", "1"], name="default")
    statuses = [http_request(default.port, "GET", f"/d{i}", host="web")[0] for i in range(4)]
    assert statuses.count(503) == 2 and statuses.count(200) == 2       # Istio's default does not retry resets


def test_nothing_is_retried_once_the_response_streams(proxy_factory):
    cut = RawServer(reply=b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\nonly ten b")
    proxy = proxy_factory(service_yaml("web", [("127.0.0.1", cut.port)]) + route("    retry: {attempts: 2, codes: [503]}"))
    from conftest import raw_exchange
    response = raw_exchange(proxy.port, b"GET / HTTP/1.1\r\nHost: web\r\n\r\n")
    assert response.startswith(b"HTTP/1.1 200 OK") and response.endswith(b"only ten b")   # cut off, never complete
    assert cut.accepted == 1
    assert total(proxy.metrics(), "waypoint_upstream_retries_total") == 0


def destination_rule(traffic_policy):
    return f"""
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {{name: web, namespace: default}}
spec:
  host: web.default.svc.cluster.local
  trafficPolicy:
{traffic_policy}
"""


def test_connection_pool_limits(origin_factory, proxy_factory):
    origin = origin_factory("a")
    pool = "    connectionPool: {http: {maxRequestsPerConnection: 1, maxRetries: 0}, tcp: {connectTimeout: 2s}}"
    proxy = proxy_factory(service_yaml("web", [("127.0.0.1", origin.port)]) + destination_rule(pool), extra=["--workers", "1"])
    import http.client
    conn = http.client.HTTPConnection("127.0.0.1", proxy.port, timeout=5)
    for i in range(3):                                   # one client connection, keep-alive
        conn.request("GET", f"/k{i}", headers={"Host": "web"})
        response = conn.getresponse()
        response.read()
        assert response.status == 200
    conn.close()
    metrics = proxy.metrics()
    assert metrics["waypoint_upstream_connections_total"] == 3    # one request per upstream connection
    # maxRetries 0 means no limit (Istio sets only positive values), so this is retried.
    assert http_request(proxy.port, "GET", "/x?fail=1&key=cp", host="web")[0] == 200
    assert proxy.metrics()["waypoint_upstream_retry_overflow_total"] == 0


def concurrently(calls):
    """Runs the calls at once (each in its own thread); their results in call order."""
    results = [None] * len(calls)

    def run(i):
        results[i] = calls[i]()
    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(calls))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=10)
    return results


def test_max_retries_hold_for_the_whole_proxy(origin_factory, proxy_factory):
    """maxRetries 1 with two workers: of two requests failing at once, one is retried, the other gets its 503."""
    origin = origin_factory("a")
    proxy = proxy_factory(service_yaml("web", [("127.0.0.1", origin.port)]) + destination_rule("    connectionPool: {http: {maxRetries: 1}}"),
                          extra=["--workers", "2"])
    for round in range(3):
        results = concurrently([lambda k=k: http_request(proxy.port, "GET", f"/x?fail=1&key=r{round}{k}&delay=300ms", host="web")[0]
                                for k in range(2)])
        assert sorted(results) == [200, 503]
    assert proxy.metrics()["waypoint_upstream_retry_overflow_total"] == 3


def test_max_connections_hold_for_the_whole_proxy(origin_factory, proxy_factory):
    """maxConnections 2 with two workers: once each worker has its connection (a worker may always open its
    first, as in Envoy), six slow requests at once get no third, however they spread over the workers (counted
    per worker, the one that gets three or more would open a second)."""
    origin = origin_factory("a")
    pool = "    connectionPool: {tcp: {maxConnections: 2, connectTimeout: 5s}, http: {http1MaxPendingRequests: 10}}"
    proxy = proxy_factory(service_yaml("web", [("127.0.0.1", origin.port)]) + destination_rule(pool), extra=["--workers", "2"])
    for i in range(24):                                   # new client connections: both workers get one
        assert http_request(proxy.port, "GET", f"/warm{i}", host="web")[0] == 200
    assert proxy.metrics()["waypoint_upstream_connections_total"] == 2
    results = concurrently([lambda i=i: http_request(proxy.port, "GET", f"/c{i}?delay=300ms", host="web")[0] for i in range(6)])
    assert results == [200] * 6
    assert proxy.metrics()["waypoint_upstream_connections_total"] == 2


def test_max_requests_hold_for_the_whole_proxy(origin_factory, proxy_factory):
    """http2MaxRequests 2 with two workers: of five slow requests at once, two go through, three get 503 at once."""
    origin = origin_factory("a")
    proxy = proxy_factory(service_yaml("web", [("127.0.0.1", origin.port)]) + destination_rule("    connectionPool: {http: {http2MaxRequests: 2}}"),
                          extra=["--workers", "2"])
    start = time.time()
    results = concurrently([lambda i=i: (http_request(proxy.port, "GET", f"/m{i}?delay=500ms", host="web"), time.time() - start)
                            for i in range(5)])
    assert sorted(status for (status, _, _), _ in results) == [200, 200, 503, 503, 503]
    # Refused at once: every 503 arrives before either slow answer.
    first_answer = min(elapsed for (status, _, _), elapsed in results if status == 200)
    assert all(elapsed < first_answer and b"reset reason: overflow" in body for (status, _, body), elapsed in results if status == 503)
    assert proxy.metrics()["waypoint_upstream_overflow_total"] == 3
    # The counts come back down: the next request goes through.
    assert http_request(proxy.port, "GET", "/after", host="web")[0] == 200


def test_check_lists_destination_rule_fields_not_applied(workdir):
    import subprocess
    from conftest import BINARY
    path = workdir / "dr.yaml"
    path.write_text(service_yaml("web", [("127.0.0.1", 9)]) + destination_rule("    loadBalancer: {simple: RANDOM, localityLbSetting: {enabled: true}}\n    connectionPool: {tcp: {maxConnections: 10, tcpKeepalive: {time: 7200s}}}"))
    out = subprocess.run([str(BINARY), "check", "--config", str(path)], capture_output=True, text=True)
    assert out.returncode == 0
    assert "trafficPolicy connectionPool.tcp.tcpKeepalive is not applied yet" in out.stdout
    assert "trafficPolicy loadBalancer.localityLbSetting is not applied yet" in out.stdout


def test_circuit_breaking_queues_then_overflows(origin_factory, proxy_factory):
    """DestinationRule tcp.maxConnections 1 and http1MaxPendingRequests 1 (Istio's circuit-breaking task): one
    request on the connection, one waiting for it, the rest refused at once with 503 overflow."""
    origin = origin_factory("a")
    pool = "    connectionPool: {tcp: {maxConnections: 1, connectTimeout: 2s}, http: {http1MaxPendingRequests: 1}}"
    proxy = proxy_factory(service_yaml("web", [("127.0.0.1", origin.port)]) + destination_rule(pool), extra=["--workers", "1"])
    results = []

    def call(i):
        results.append(http_request(proxy.port, "GET", f"/cb{i}?delay=400ms", host="web"))

    threads = [threading.Thread(target=call, args=(i,)) for i in range(5)]
    for t in threads:
        t.start()
        time.sleep(0.05)                      # in order: the first takes the connection, the second waits
    for t in threads:
        t.join(timeout=10)
    statuses = sorted(status for status, _, _ in results)
    assert statuses == [200, 200, 503, 503, 503]
    refused = [body for status, _, body in results if status == 503]
    assert all(b"reset reason: overflow" in body for body in refused)
    metrics = proxy.metrics()
    assert metrics["waypoint_upstream_overflow_total"] == 3
    assert metrics["waypoint_upstream_connections_total"] == 1      # the waiter reused the one connection
    # A waiter that gets no connection within the connect timeout is refused the same way.
    slow = threading.Thread(target=lambda: http_request(proxy.port, "GET", "/hold?delay=3s", host="web"))
    slow.start()
    time.sleep(0.1)
    started = time.time()
    status, _, _ = http_request(proxy.port, "GET", "/late", host="web")
    assert status == 503 and 1.5 < time.time() - started < 3.5   # waited about the 2 s connect timeout
    slow.join(timeout=10)


def test_all_endpoints_ejected_is_no_healthy_upstream_unless_min_health_percent(origin_factory, proxy_factory):
    """Istio sets Envoy's panic threshold from minHealthPercent (default 0: off): a backend whose only endpoint is
    ejected answers 503 `no healthy upstream` without reaching it, until the ejection ends; with
    minHealthPercent 50 the ejection is ignored (panic) and the endpoint still gets the requests."""
    port = origin_factory("dead", fail_percent=100).port

    def seen():
        return origin_requests(port)
    for min_health, name in (("", "strict"), (", minHealthPercent: 50", "panic")):
        outlier = f"    outlierDetection: {{consecutive5xxErrors: 2, baseEjectionTime: 1s{min_health}}}"
        proxy = proxy_factory(service_yaml("web", [("127.0.0.1", port)]) + destination_rule(outlier),
                              extra=["--workers", "1", "--default-retries", "off"], name=name)
        before = seen()
        for i in range(2):
            assert http_request(proxy.port, "GET", f"/{name}{i}", host="web")[0] == 503   # the origin's 503s eject it
        status, _, body = http_request(proxy.port, "GET", f"/{name}-ejected", host="web")
        if name == "strict":
            assert status == 503 and body == b"no healthy upstream\n" and seen() == before + 2
            time.sleep(1.2)
            http_request(proxy.port, "GET", f"/{name}-back", host="web")
            assert seen() == before + 3                                     # back after baseEjectionTime
        else:
            assert status == 503 and seen() == before + 3                   # the origin's own 503: reached in panic
        assert proxy.metrics()["waypoint_outlier_ejections_total"] == 1


def reload(proxy, config):
    """Replaces the proxy's config and waits until it is in use (SIGHUP, one more reload counted)."""
    import os
    import signal
    reloads = lambda: proxy.metrics().get('waypoint_config_reloads_total{result="ok"}', 0)
    before = reloads()
    (proxy.config_dir / "config.yaml").write_text(config)
    os.kill(proxy.pid, signal.SIGHUP)
    assert wait_until(lambda: reloads() > before)


def test_a_reload_keeps_counting_requests_in_flight(origin_factory, proxy_factory):
    """http2MaxRequests 2, two slow requests in flight, then a reload that changes something else: the third
    request still finds the limit reached (counts carry over; reset, it would get through)."""
    origin = origin_factory("a")
    rule = destination_rule("    connectionPool: {http: {http2MaxRequests: 2}}")
    proxy = proxy_factory(service_yaml("web", [("127.0.0.1", origin.port)]) + rule)
    slow = [threading.Thread(target=http_request, args=(proxy.port, "GET", f"/slow{i}?delay=1500ms", "web")) for i in range(2)]
    for t in slow:
        t.start()
    time.sleep(0.3)
    reload(proxy, service_yaml("web", [("127.0.0.1", origin.port)], port_name="http-web") + rule)
    status, _, body = http_request(proxy.port, "GET", "/third", host="web")
    assert status == 503 and b"reset reason: overflow" in body
    for t in slow:
        t.join(timeout=5)
    assert http_request(proxy.port, "GET", "/after", host="web")[0] == 200


def test_a_reload_keeps_ejections(origin_factory, proxy_factory):
    """An endpoint ejected by outlier detection stays ejected through a reload that changes something else."""
    good = origin_factory("good")
    dead_port = origin_factory("dead", fail_percent=100).port
    rule = destination_rule("    outlierDetection: {consecutive5xxErrors: 1, baseEjectionTime: 30s, maxEjectionPercent: 50}\n"
                            "    loadBalancer: {simple: ROUND_ROBIN}")
    endpoints = [("127.0.0.1", dead_port), ("127.0.0.1", good.port)]
    proxy = proxy_factory(service_yaml("web", endpoints) + rule, extra=["--workers", "1", "--default-retries", "off"])
    statuses = [http_request(proxy.port, "GET", f"/a{i}", host="web")[0] for i in range(4)]
    assert statuses.count(503) == 1                        # the dead endpoint answered once and is out
    reload(proxy, service_yaml("web", endpoints, port_name="http-web") + rule)
    assert [http_request(proxy.port, "GET", f"/b{i}", host="web")[0] for i in range(6)] == [200] * 6
    assert origin_requests(dead_port) == 1


def test_retries_avoid_every_endpoint_tried(origin_factory, proxy_factory):
    """Envoy's previous-hosts predicate, as Istio configures it: with three endpoints that each fail their first
    request of a key, tries 1-3 reach three different endpoints (so each fails once) and the fourth answers."""
    origins = [origin_factory(name) for name in ("a", "b", "c")]
    vs = """
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: web, namespace: default}
spec:
  hosts: [web]
  http: [{retries: {attempts: 3, retryOn: 5xx}, route: [{destination: {host: web}}]}]
"""
    proxy = proxy_factory(service_yaml("web", [("127.0.0.1", o.port) for o in origins]) + destination_rule(
        "    loadBalancer: {simple: RANDOM}") + vs, extra=["--workers", "1"])
    for i in range(10):
        status, _, body = http_request(proxy.port, "GET", f"/p?fail=1&key=p{i}", host="web")
        assert status == 200 and json.loads(body)["headers"]["x-envoy-attempt-count"] == "4"


def test_a_retry_waiting_across_a_reload_stays_with_its_service(origin_factory, proxy_factory):
    """A retry in its 1 s backoff when a reload lists another Service first (which renumbers the clusters): the
    retry still goes to `web`'s endpoint, never to the Service that took `web`'s old cluster index. The backoff is
    fully jittered (from 0 to 1 s): a retry that went out before the reload took effect proves nothing, so the
    case is run again (the next reload renumbers back) until one waited across it."""
    web = origin_factory("web")
    other = origin_factory("other")
    retry = route("    retry: {attempts: 1, codes: [503], backoff: 1s}")
    web_only = service_yaml("web", [("127.0.0.1", web.port)]) + retry
    aaa_first = service_yaml("aaa", [("127.0.0.1", other.port)]) + "---\n" + web_only
    proxy = proxy_factory(web_only, extra=["--workers", "1"])
    for attempt in range(6):
        before = origin_requests(web.port)
        answer = {}
        client = threading.Thread(target=lambda: answer.update(
            reply=http_request(proxy.port, "GET", f"/x?fail=1&key=across-{attempt}", host="web")))
        client.start()
        assert wait_until(lambda: origin_requests(web.port) > before)   # the first try failed: the backoff began
        reload(proxy, aaa_first if attempt % 2 == 0 else web_only)
        waited = origin_requests(web.port) == before + 1                # the retry had not gone out yet
        client.join(timeout=5)
        status, _, body = answer["reply"]
        assert status == 200 and json.loads(body)["headers"]["x-envoy-attempt-count"] == "2"
        assert (origin_requests(web.port), origin_requests(other.port)) == (before + 2, 0)
        if waited:
            break
    assert waited
    if attempt % 2 == 1:
        reload(proxy, aaa_first)
    assert http_request(proxy.port, "GET", "/y", host="aaa")[0] == 200    # the reload did renumber: aaa serves
