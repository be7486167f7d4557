"""DestinationRule subsets (endpoints selected by Pod labels) and load balancers, through the real binary."""
import json
import socket
import threading
from collections import Counter

from conftest import Process, http_request, service_yaml, wait_for


class OriginAt(Process):
    """`waypoint origin` on a given loopback address (127.0.0.2 is as local as 127.0.0.1 on Linux)."""
    def __init__(self, workdir, ip, name):
        super().__init__(["origin", "--listen", f"{ip}:0", "--name", name], workdir, f"origin-{name}")
        m = wait_for(r"listening on (\S+):(\d+)", self.stderr_path, process=self.proc)
        self.host, self.port = m.group(1), int(m.group(2))


def slice_yaml(name, ip, port, pod=None):
    target = f", targetRef: {{kind: Pod, name: {pod}}}" if pod else ""
    return f"""
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {{name: {name}, namespace: default, labels: {{kubernetes.io/service-name: reviews}}}}
addressType: IPv4
ports: [{{name: http, port: {port}}}]
endpoints: [{{addresses: [{ip}]{target}}}]
"""


POLICY = """
apiVersion: v1
kind: Service
metadata: {name: reviews, namespace: default}
spec: {ports: [{name: http, port: 80}]}
---
apiVersion: v1
kind: Pod
metadata: {name: reviews-v1-abc, namespace: default, labels: {app: reviews, version: v1}}
status: {podIP: 10.9.9.9}
---
apiVersion: v1
kind: Pod
metadata: {name: reviews-v2-def, namespace: default, labels: {app: reviews, version: v2}}
status: {podIPs: [{ip: 127.0.0.2}]}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: reviews, namespace: default}
spec:
  host: reviews.default.svc.cluster.local
  trafficPolicy: {loadBalancer: {consistentHash: {httpHeaderName: x-user}}}
  subsets:
  - {name: v1, labels: {version: v1}}
  - {name: v2, labels: {version: v2}, trafficPolicy: {loadBalancer: {simple: ROUND_ROBIN}}}
  - {name: v3, labels: {version: v3}}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: reviews, namespace: default}
spec:
  hosts: [reviews]
  http:
  - match: [{headers: {x-version: {exact: v2}}}]
    route: [{destination: {host: reviews, subset: v2}}]
  - match: [{headers: {x-version: {exact: v3}}}]
    route: [{destination: {host: reviews, subset: v3}}]
  - match: [{headers: {x-version: {exact: v4}}}]
    route: [{destination: {host: reviews, subset: v4}}]
  - match: [{uri: {prefix: /hashed}}]
    route: [{destination: {host: reviews}}]
  - route: [{destination: {host: reviews, subset: v1}}]
"""


def test_subsets_and_consistent_hash(workdir, processes, proxy_factory):
    v1 = OriginAt(workdir, "127.0.0.1", "v1")
    v2 = OriginAt(workdir, "127.0.0.2", "v2")
    processes.extend([v1, v2])
    # v1's Pod is found by the slice's targetRef (its IP differs), v2's by its IP.
    config = POLICY + "---" + slice_yaml("reviews-a", "127.0.0.1", v1.port, pod="reviews-v1-abc") + "---" + \
        slice_yaml("reviews-b", "127.0.0.2", v2.port)
    proxy = proxy_factory(config)

    def origin(path, **headers):
        status, response_headers, body = http_request(proxy.port, "GET", path, host="reviews", headers=headers)
        return status, response_headers.get("x-origin"), body

    assert {origin(f"/d{i}")[1] for i in range(20)} == {"v1"}                          # default rule: subset v1
    assert {origin(f"/x{i}", **{"x-version": "v2"})[1] for i in range(20)} == {"v2"}   # subset v2
    assert origin("/", **{"x-version": "v3"})[:2] == (503, None)                        # subset without endpoints
    assert origin("/", **{"x-version": "v4"})[:2] == (500, None)                        # unknown subset

    # Consistent hash on x-user: each user sticks to one endpoint; across users both are used.
    owners = {}
    for user in range(40):
        seen = {origin(f"/hashed/{i}", **{"x-user": f"user-{user}"})[1] for i in range(5)}
        assert len(seen) == 1, (user, seen)
        owners[user] = seen.pop()
    assert set(owners.values()) == {"v1", "v2"}, Counter(owners.values())
    # A retry keeps to the hashed endpoint (Istio's retry policy for consistent-hash routes has no
    # previous-hosts predicate): both tries of a user's failing request reach the user's owner.
    for user in range(6):
        status, owner, body = origin(f"/hashed/retry?fail=1&key=u{user}", **{"x-user": f"user-{user}"})
        assert (status, owner) == (200, owners[user])
        assert json.loads(body)["headers"]["x-envoy-attempt-count"] == "2"


def test_least_request_avoids_the_endpoint_with_requests_in_flight(origin_factory, proxy_factory):
    """Istio's default LEAST_REQUEST: with requests stuck on an endpoint that never answers, new requests go to
    the other (round-robin would send every second one into the hole)."""
    hole = socket.socket()
    hole.bind(("127.0.0.1", 0))
    hole.listen(64)
    accepted = []
    threading.Thread(target=lambda: [accepted.append(hole.accept()) for _ in range(64)], daemon=True).start()
    fast = origin_factory("fast")
    proxy = proxy_factory(service_yaml("web", [("127.0.0.1", hole.getsockname()[1]), ("127.0.0.1", fast.port)]),
                          extra=["--workers", "1"])
    # Park requests until one is stuck in the hole (its client stays connected, so it stays in flight).
    stuck = []
    for _ in range(30):
        if stuck:
            break
        s = socket.create_connection(("127.0.0.1", proxy.port))
        s.sendall(b"GET /park HTTP/1.1\r\nHost: web\r\n\r\n")
        s.settimeout(0.5)
        try:
            assert b"200 OK" in s.recv(4096)
            s.close()
        except socket.timeout:
            stuck.append(s)
    assert len(stuck) == 1
    served = Counter(http_request(proxy.port, "GET", f"/q{i}", host="web", timeout=3)[1]["x-origin"] for i in range(50))
    assert served == {"fast": 50}
    for s in stuck:
        s.close()
    hole.close()
