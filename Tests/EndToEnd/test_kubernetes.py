"""The Kubernetes API as the config source: the real binary against a stand-in API server (fake_apiserver.py:
HTTPS, list with pagination, chunked watches with bookmarks, 410 Gone, 401/403/404, server-side closes)."""
import json
import threading
import time
from urllib.parse import parse_qs, urlparse

import pytest

from conftest import http_request, origin_requests, wait_for, wait_until
from fake_apiserver import FakeAPIServer
from hbone import HBONEClient
from test_hbone import certs  # noqa: F401 (fixture)


def service(name, port=80, namespace="default", cluster_ip=None, labels=None):
    spec = {"ports": [{"name": "http", "port": port}]}
    if cluster_ip:
        spec["clusterIP"] = cluster_ip
    return {"apiVersion": "v1", "kind": "Service", "metadata": {"name": name, "namespace": namespace, "labels": labels or {}},
            "spec": spec}


def namespace(name, labels):
    return {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name, "labels": labels}}


def slice_(name, service_name, ports, namespace="default"):
    """An EndpointSlice with one endpoint per (ip, port); ports must all be the same."""
    return {"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
            "metadata": {"name": name, "namespace": namespace, "labels": {"kubernetes.io/service-name": service_name}},
            "addressType": "IPv4", "ports": [{"name": "http", "port": ports[0][1]}],
            "endpoints": [{"addresses": [ip], "conditions": {"ready": True}} for ip, _ in ports]}


def route(name, service_name, path, backend):
    return {"apiVersion": "gateway.networking.k8s.io/v1", "kind": "HTTPRoute", "metadata": {"name": name, "namespace": "default"},
            "spec": {"parentRefs": [{"group": "", "kind": "Service", "name": service_name}],
                     "rules": [{"matches": [{"path": {"type": "PathPrefix", "value": path}}],
                                "backendRefs": [{"name": backend, "port": 80}]}]}}


@pytest.fixture
def api(certs):
    server = FakeAPIServer(certs)
    yield server
    server.close()


@pytest.fixture
def waypoint(api, proxy_factory, workdir):
    """A waypoint following `api` (one worker, short watches so their resumption is exercised)."""
    def make(extra=(), kubeconfig=None):
        path = kubeconfig or api.kubeconfig(str(workdir))
        # No mesh CA here (the API source turns istiod's on by default): these waypoints need no HBONE certificate.
        return proxy_factory("", extra=["--kubeconfig", path, "--workers", "1", "--kubernetes-watch-timeout", "2s",
                                        "--ca-address", "none", *extra])
    return make


def served_by(proxy, path="/", host="web"):
    """Which origin answered (its name), or the status when none did."""
    status, headers, body = http_request(proxy.port, "GET", path, host=host)
    return headers.get("x-origin", status) if status == 200 else status


def test_objects_applied_after_start_route_within_a_second(api, waypoint, origin_factory):
    a, b = origin_factory("a"), origin_factory("b")
    api.apply(service("web"))
    api.apply(slice_("web-1", "web", [("127.0.0.1", a.port)]))
    proxy = waypoint()
    assert served_by(proxy) == "a"
    api.apply(service("api"))
    api.apply(slice_("api-1", "api", [("127.0.0.1", b.port)]))
    api.apply(route("split", "web", "/v2", "api"))
    start = time.time()
    assert wait_until(lambda: served_by(proxy, "/v2/x") == "b", timeout=1.0), served_by(proxy, "/v2/x")
    assert time.time() - start < 1.0
    assert served_by(proxy, "/v1") == 404                    # a route is attached and nothing matched (GAMMA)
    metrics = proxy.metrics()
    assert metrics['waypoint_kubernetes_objects{kind="HTTPRoute",namespace="default"}'] == 1
    assert metrics['waypoint_kubernetes_objects{kind="Service",namespace="default"}'] == 2
    dump = json.loads(http_request(proxy.admin_port, "GET", "/config_dump", host="admin")[2])
    listed = {(o["kind"], o["name"]): o["resourceVersion"] for o in dump["kubernetesObjects"]}
    assert listed[("HTTPRoute", "split")] == api.objects["/apis/gateway.networking.k8s.io/v1/namespaces/default/httproutes"]["split"]["metadata"]["resourceVersion"]
    assert ("Service", "web") in listed and ("EndpointSlice", "api-1") in listed
    # the server ends each watch after --kubernetes-watch-timeout (2 s) to twice that, drawn per watch as client-go
    # does (watchers started together must not reconnect together): it is resumed, and counted as such
    closed = 'waypoint_kubernetes_watch_restarts_total{kind="HTTPRoute",namespace="default",reason="closed"}'
    assert wait_until(lambda: proxy.metrics().get(closed, 0) >= 1, timeout=8.0)
    timeouts = [int(parse_qs(urlparse(r[1]).query)["timeoutSeconds"][0]) for r in api.requests if "watch=1" in r[1]]
    assert len(timeouts) >= 16 and set(timeouts) == {2, 3}, timeouts
    swaps = metrics["waypoint_kubernetes_event_to_swap_seconds_count"]
    assert swaps >= 1 and metrics['waypoint_kubernetes_event_to_swap_seconds_bucket{le="1.0"}'] == swaps
    api.delete("HTTPRoute", "split")
    assert wait_until(lambda: served_by(proxy, "/v2/x") == "a", timeout=1.0)
    # LIST then WATCH from the list's resourceVersion, with bookmarks, per kind, paginated
    watch = api.watches("HTTPRoute")[0][1]
    assert "allowWatchBookmarks=true" in watch and "resourceVersion=" in watch and "limit=500" in api.lists("HTTPRoute")[0][1]


def test_a_rolling_replacement_of_every_endpoint_loses_no_request(api, waypoint, origin_factory):
    old = [origin_factory(f"old{i}") for i in range(2)]
    new = [origin_factory(f"new{i}") for i in range(2)]
    api.apply(service("web"))
    api.apply(slice_("web-1", "web", [("127.0.0.1", old[0].port)]))
    api.apply(slice_("web-2", "web", [("127.0.0.1", old[1].port)]))
    # a finding that stays the same through every swap below is logged once, not once per swap
    api.apply({"apiVersion": "networking.istio.io/v1", "kind": "DestinationRule", "metadata": {"name": "web", "namespace": "default"},
               "spec": {"host": "web", "trafficPolicy": {"loadBalancer": {"localityLbSetting": {"enabled": True}}}}})
    proxy = waypoint()
    assert wait_until(lambda: http_request(proxy.admin_port, "GET", "/healthz/ready", host="admin")[0] == 200)
    full = proxy.metrics()['waypoint_config_compiles_total{mode="full"}']
    failures = []
    seen = set()
    for step in range(2):                                   # each old endpoint stays until its replacement is ready
        api.apply(slice_(f"web-new-{step}", "web", [("127.0.0.1", new[step].port)]))
        for _ in range(20):
            got = served_by(proxy)
            (seen.add(got) if isinstance(got, str) else failures.append(got))
        # the removed endpoint stops getting traffic within a second (the config generation tells when)
        generation = proxy.metrics()["waypoint_config_generation"]
        api.delete("EndpointSlice", f"web-{step + 1}")
        start = time.time()
        gone = f"old{step}"
        assert wait_until(lambda: proxy.metrics()["waypoint_config_generation"] > generation, timeout=1.0)
        assert time.time() - start < 1.0
        # the workers take the new snapshot on their next loop iteration (not within the metric's read, on a
        # busy machine): the removed endpoint is gone from every request soon after
        assert wait_until(lambda: all(served_by(proxy) != gone for _ in range(6)), timeout=1.0)
        for _ in range(20):
            got = served_by(proxy)
            (seen.add(got) if isinstance(got, str) else failures.append(got))
    assert failures == []
    assert {"new0", "new1"} <= seen
    assert all(served_by(proxy) in ("new0", "new1") for _ in range(10))
    # only EndpointSlices changed: each swap was an endpoint update of the Service, not a compile of everything
    metrics = proxy.metrics()
    assert metrics['waypoint_config_compiles_total{mode="full"}'] == full
    assert metrics['waypoint_config_compiles_total{mode="endpoints"}'] >= 2     # at least one per removal awaited above
    assert proxy.stderr().count("localityLbSetting is not applied yet") == 1


def test_410_gone_relists_and_loses_nothing(api, waypoint, origin_factory):
    a, b = origin_factory("a"), origin_factory("b")
    api.apply(service("web"))
    api.apply(slice_("web-1", "web", [("127.0.0.1", a.port)]))
    proxy = waypoint()
    assert served_by(proxy) == "a"
    lists = len(api.lists("EndpointSlice"))
    api.compact()                                           # every resourceVersion so far is gone
    api.drop_watches()                                      # the watch must resume: from a compacted version
    api.apply(slice_("web-1", "web", [("127.0.0.1", b.port)]))   # a change made meanwhile
    assert wait_until(lambda: served_by(proxy) == "b", timeout=5.0)
    assert len(api.lists("EndpointSlice")) > lists         # 410 made it list again
    metrics = proxy.metrics()
    assert metrics['waypoint_kubernetes_watch_restarts_total{kind="EndpointSlice",namespace="default",reason="gone"}'] >= 1
    assert abs(metrics["waypoint_kubernetes_last_event_timestamp_seconds"] - time.time()) < 5


def test_the_api_server_gone_changes_nothing_and_the_waypoint_catches_up(api, waypoint, origin_factory):
    a, b = origin_factory("a"), origin_factory("b")
    api.apply(service("web"))
    api.apply(slice_("web-1", "web", [("127.0.0.1", a.port)]))
    proxy = waypoint()
    assert served_by(proxy) == "a"
    api.pause()
    for _ in range(30):                                     # 3 s without an API server: traffic as before
        assert served_by(proxy) == "a"
        time.sleep(0.1)
    api.apply(slice_("web-1", "web", [("127.0.0.1", b.port)]))
    api.resume()
    assert wait_until(lambda: served_by(proxy) == "b", timeout=10.0)
    restarts = {k: v for k, v in proxy.metrics().items() if k.startswith('waypoint_kubernetes_watch_restarts_total{kind="Service"')}
    assert restarts.get('waypoint_kubernetes_watch_restarts_total{kind="Service",namespace="default",reason="error"}', 0) >= 1, restarts


def test_a_broken_object_is_rejected_and_the_previous_config_keeps_serving(api, waypoint, origin_factory):
    a = origin_factory("a")
    api.apply(service("web"))
    api.apply(slice_("web-1", "web", [("127.0.0.1", a.port)]))
    proxy = waypoint()
    assert served_by(proxy) == "a"
    broken = route("broken", "web", "/x", "web")
    broken["spec"]["rules"][0]["matches"][0]["path"] = {"type": "RegularExpression", "value": "(unclosed"}
    api.apply(broken)
    assert wait_until(lambda: proxy.metrics().get('waypoint_config_reloads_total{result="failed"}', 0) >= 1)
    assert served_by(proxy) == "a" and served_by(proxy, "/x") == "a"
    log = open(proxy.stderr_path).read()
    assert "kubernetes" in log and "HTTPRoute default/broken" in log and "spec.rules[0].matches[0].path.value" in log


def test_a_kind_whose_crd_is_installed_later_is_picked_up(api, certs, waypoint, origin_factory):
    a, b = origin_factory("a"), origin_factory("b")
    api.installed.discard("HTTPRoute")
    api.apply(service("web"))
    api.apply(slice_("web-1", "web", [("127.0.0.1", a.port)]))
    api.apply(service("api"))
    api.apply(slice_("api-1", "api", [("127.0.0.1", b.port)]))
    proxy = waypoint(extra=["--kubernetes-probe-interval", "500ms"])
    assert served_by(proxy, "/v2") == "a"                   # started without HTTPRoute: 404 on its list
    assert "HTTPRoute is not served by the API server" in open(proxy.stderr_path).read()
    api.installed.add("HTTPRoute")
    api.apply(route("split", "web", "/v2", "api"))
    assert wait_until(lambda: served_by(proxy, "/v2") == "b", timeout=3.0)


def test_a_rotated_token_is_used(api, waypoint, workdir, origin_factory):
    a, b = origin_factory("a"), origin_factory("b")
    token_file = workdir / "token"
    token_file.write_text("token-1\n")
    api.apply(service("web"))
    api.apply(slice_("web-1", "web", [("127.0.0.1", a.port)]))
    proxy = waypoint(kubeconfig=api.kubeconfig(str(workdir), token_file=str(token_file)))
    assert served_by(proxy) == "a"
    token_file.write_text("token-2\n")                       # rotated on disk, then the old one is refused
    api.token = "token-2"
    api.drop_watches()
    api.apply(slice_("web-1", "web", [("127.0.0.1", b.port)]))
    assert wait_until(lambda: served_by(proxy) == "b", timeout=5.0)
    assert api.requests[-1][2] == "Bearer token-2"


def test_forbidden_and_unauthorized_name_what_is_missing(api, waypoint, workdir):
    api.forbidden.add("VirtualService")
    kubeconfig = api.kubeconfig(str(workdir))                # with token-1, which the server now refuses
    api.token = "another"
    proxy = waypoint(extra=["--kubernetes-sync-timeout", "300ms"], kubeconfig=kubeconfig)
    assert wait_until(lambda: "401 Unauthorized" in open(proxy.stderr_path).read())
    assert "refused the token from" in open(proxy.stderr_path).read()
    api.token = "token-1"
    assert wait_until(lambda: 'resources ["virtualservices"] verbs [get, list, watch]' in open(proxy.stderr_path).read(), timeout=20)


def test_an_unusable_kubeconfig_is_a_startup_error_naming_the_field(workdir, proxy_factory):
    path = workdir / "kubeconfig"
    path.write_text("""apiVersion: v1
kind: Config
current-context: test
contexts: [{name: test, context: {cluster: c, user: u}}]
clusters: [{name: c, cluster: {server: "http://127.0.0.1:1"}}]
users: [{name: u, user: {token: x}}]
""")
    with pytest.raises(Exception):
        proxy_factory("", extra=["--kubeconfig", str(path)])
    log = open(workdir / "proxy.stderr").read()
    assert "clusters[0].cluster.server" in log and "only https://" in log


def test_only_services_bound_to_this_waypoint_take_tunnels(api, waypoint, origin_factory, certs):
    # Istio's binding: istio.io/use-waypoint on the Service, else on its Namespace; `none` opts out; the name must
    # be this waypoint's Gateway (--gateway) in its namespace (istio.io/use-waypoint-namespace for another one).
    from hbone import get
    from test_hbone import client
    a = origin_factory("a")
    api.apply(namespace("default", {"istio.io/use-waypoint": "waypoint"}))
    cases = {                                           # name -> (cluster IP, labels, served)
        "bound-by-namespace": ("10.96.1.1", {}, True),
        "opted-out": ("10.96.1.2", {"istio.io/use-waypoint": "none"}, False),
        "other-waypoint": ("10.96.1.3", {"istio.io/use-waypoint": "east"}, False),
        "bound-by-label": ("10.96.1.4", {"istio.io/use-waypoint": "waypoint", "istio.io/use-waypoint-namespace": "default"}, True),
        "elsewhere": ("10.96.1.5", {"istio.io/use-waypoint": "waypoint", "istio.io/use-waypoint-namespace": "infra"}, False),
    }
    for name, (ip, labels, _) in cases.items():
        api.apply(service(name, cluster_ip=ip, labels=labels))
        api.apply(slice_(f"{name}-1", name, [("127.0.0.1", a.port)]))
    cert, key = certs["waypoint"]
    proxy = waypoint(extra=["--hbone-listen", "127.0.0.1:0", "--cert", cert, "--key", key, "--ca", certs["ca"]])
    def tunnel_status(ip):
        c = client(proxy, certs)
        status = c.status(c.connect(f"{ip}:80"))
        c.close()
        return status

    c = client(proxy, certs)
    for name, (ip, _, served) in cases.items():
        sid = c.connect(f"{ip}:80")
        assert c.status(sid) == (200 if served else 400), name
        if served:
            assert c.http(sid, get("/", host=name)).startswith(b"HTTP/1.1 200"), name
    # the namespace label removed: only the Service that names the waypoint itself stays bound
    api.apply(namespace("default", {}))
    assert wait_until(lambda: tunnel_status("10.96.1.1") == 400)
    assert tunnel_status("10.96.1.4") == 200


def test_traffic_addressed_to_pods_takes_the_waypoint_only_as_istio_binds_it(api, waypoint, origin_factory, certs):
    """Istio's binding of workload traffic (a tunnel to a Pod's address): the waypoint's Gateway must take
    workloads (`istio.io/waypoint-for: workload` or `all`; the default, `service`, does not), and the Pod, else its
    Namespace, must name the waypoint in `istio.io/use-waypoint` (`none` opts out). Anything else gets 400, as an
    unknown destination: Service-targeted policies cannot be skipped by tunnelling to a Pod directly."""
    from test_hbone import client
    a = origin_factory("a")
    pods = {"labelled": ("127.0.0.2", {"istio.io/use-waypoint": "waypoint"}), "plain": ("127.0.0.3", {}),
            "opted-out": ("127.0.0.4", {"istio.io/use-waypoint": "none"})}
    api.apply(service("web", cluster_ip="10.96.0.10", labels={"istio.io/use-waypoint": "waypoint"}))
    for name, (ip, labels) in pods.items():
        api.apply({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "namespace": "default", "labels": labels},
                   "status": {"podIP": ip}})
    api.apply({"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
               "metadata": {"name": "web-1", "namespace": "default", "labels": {"kubernetes.io/service-name": "web"}},
               "addressType": "IPv4", "ports": [{"name": "http", "port": a.port}],
               "endpoints": [{"addresses": [ip], "targetRef": {"kind": "Pod", "name": name}} for name, (ip, _) in pods.items()]})
    gateway = {"apiVersion": "gateway.networking.k8s.io/v1", "kind": "Gateway",
               "metadata": {"name": "waypoint", "namespace": "default", "labels": {}},
               "spec": {"gatewayClassName": "istio-waypoint", "listeners": [{"name": "mesh", "port": 15008, "protocol": "HBONE"}]}}
    api.apply(gateway)
    cert, key = certs["waypoint"]
    proxy = waypoint(extra=["--hbone-listen", "127.0.0.1:0", "--cert", cert, "--key", key, "--ca", certs["ca"]])

    def statuses():
        c = client(proxy, certs)
        found = {name: c.status(c.connect(f"{ip}:{a.port}")) for name, (ip, _) in pods.items()}
        found["service"] = c.status(c.connect("10.96.0.10:80"))
        c.close()
        return found
    # waypoint-for unset (service): Services only
    assert statuses() == {"labelled": 400, "plain": 400, "opted-out": 400, "service": 200}
    gateway["metadata"]["labels"] = {"istio.io/waypoint-for": "all"}
    api.apply(gateway)
    assert wait_until(lambda: statuses() == {"labelled": 200, "plain": 400, "opted-out": 400, "service": 200})
    api.apply(namespace("default", {"istio.io/use-waypoint": "waypoint"}))   # the namespace binds the plain Pod too
    assert wait_until(lambda: statuses() == {"labelled": 200, "plain": 200, "opted-out": 400, "service": 200})
    api.apply({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "labelled", "namespace": "default",
                                                              "labels": {"istio.io/use-waypoint": "none"}},
               "status": {"podIP": "127.0.0.2"}})                                # a Pod change: an endpoint update
    assert wait_until(lambda: statuses()["labelled"] == 400)
    gateway["metadata"]["labels"] = {"istio.io/waypoint-for": "workload"}
    api.apply(gateway)
    assert wait_until(lambda: statuses() == {"labelled": 400, "plain": 200, "opted-out": 400, "service": 400})


def test_in_a_pod_without_config_the_api_source_is_on_by_default(workdir, proxy_factory, origin_factory):
    import subprocess
    from conftest import BINARY, service_yaml
    pod = {**__import__("os").environ, "KUBERNETES_SERVICE_HOST": "127.0.0.1", "KUBERNETES_SERVICE_PORT": "6443"}
    out = subprocess.run([str(BINARY), "run", "--http-listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0"],
                         env=pod, capture_output=True, text=True, timeout=20)
    # no service account mounted here: a clear start-up error, not the embedded demo config
    assert out.returncode == 1
    assert "in-cluster config: cannot read /var/run/secrets/kubernetes.io/serviceaccount/ca.crt" in out.stderr
    # with --config the files are the source (the API only when asked)
    a = origin_factory("a")
    proxy = proxy_factory(service_yaml("web", [("127.0.0.1", a.port)]), env=pod)
    assert served_by(proxy) == "a"


def test_explain_reads_the_cluster_through_a_kubeconfig(api, workdir, origin_factory):
    import subprocess
    from conftest import BINARY
    api.apply(service("web", cluster_ip="10.96.0.10", labels={"istio.io/use-waypoint": "waypoint"}))
    api.apply(slice_("web-1", "web", [("127.0.0.1", 9)]))
    api.apply({"apiVersion": "security.istio.io/v1", "kind": "AuthorizationPolicy", "metadata": {"name": "deny-admin", "namespace": "default"},
               "spec": {"targetRefs": [{"kind": "Service", "group": "", "name": "web"}], "action": "DENY",
                        "rules": [{"to": [{"operation": {"paths": ["/admin*"]}}]}]}})
    out = subprocess.run([str(BINARY), "explain", "--kubeconfig", api.kubeconfig(str(workdir)), "--tunnel", "10.96.0.10:80",
                          "--principal", "cluster.local/ns/default/sa/frontend", "--path", "/admin/x"],
                         capture_output=True, text=True, timeout=30)
    assert "authorization: denied by DENY default/deny-admin, rule 0" in out.stdout, out.stdout + out.stderr
    assert "result: 403" in out.stdout
    assert not api.watches("Service")                     # one list per kind, no watch
    # as `run` reading the API: a Service that does not name this waypoint is not served
    api.apply(service("unbound", cluster_ip="10.96.0.11"))
    out = subprocess.run([str(BINARY), "explain", "--kubeconfig", api.kubeconfig(str(workdir)), "--tunnel", "10.96.0.11:80",
                          "--principal", "cluster.local/ns/default/sa/frontend", "--path", "/"],
                         capture_output=True, text=True, timeout=30)
    assert out.returncode == 1 and "CONNECT 10.96.0.11:80 refused with 400" in out.stdout, out.stdout + out.stderr


def test_explain_reads_a_backend_of_another_namespace_by_name(api, workdir):
    """`explain --kubeconfig` reads what a route names in another namespace as `run` does: by name only."""
    import subprocess
    from conftest import BINARY
    api.apply(service("web", cluster_ip="10.96.0.10", labels={"istio.io/use-waypoint": "waypoint"}))
    api.apply(service("db", namespace="data"))
    api.apply(slice_("db-1", "db", [("127.0.0.1", 9)], namespace="data"))
    api.apply({"apiVersion": "networking.istio.io/v1", "kind": "VirtualService", "metadata": {"name": "to-db", "namespace": "default"},
               "spec": {"hosts": ["web"], "http": [{"route": [{"destination": {"host": "db.data.svc.cluster.local"}}]}]}})
    out = subprocess.run([str(BINARY), "explain", "--kubeconfig", api.kubeconfig(str(workdir)), "--tunnel", "10.96.0.10:80",
                          "--principal", "cluster.local/ns/default/sa/frontend", "--path", "/"],
                         capture_output=True, text=True, timeout=30)
    assert "backends: data/db:80" in out.stdout and "to endpoint 127.0.0.1:9" in out.stdout, out.stdout + out.stderr
    assert {urlparse(r[1]).query for r in api.requests if "/namespaces/data/services" in r[1]} == {
        "fieldSelector=metadata.name%3Ddb&limit=500"}


def test_destination_rule_subsets_follow_pod_labels_live(api, waypoint, origin_factory):
    a, b = origin_factory("a"), origin_factory("b")
    api.apply(service("web"))
    for name, origin, version in (("web-a", a, "v1"), ("web-b", b, "v2")):
        api.apply({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "namespace": "default", "labels": {"version": version},
                                                                  "managedFields": [{"manager": "kubectl"}]},
                   "spec": {"containers": [{"name": "app", "image": "x"}]}, "status": {"podIP": "127.0.0.1"}})
        api.apply({"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
                   "metadata": {"name": name, "namespace": "default", "labels": {"kubernetes.io/service-name": "web"}},
                   "addressType": "IPv4", "ports": [{"name": "http", "port": origin.port}],
                   "endpoints": [{"addresses": ["127.0.0.1"], "targetRef": {"kind": "Pod", "name": name}}]})
    api.apply({"apiVersion": "networking.istio.io/v1", "kind": "DestinationRule", "metadata": {"name": "web", "namespace": "default"},
               "spec": {"host": "web", "subsets": [{"name": "v1", "labels": {"version": "v1"}}, {"name": "v2", "labels": {"version": "v2"}}]}})
    api.apply({"apiVersion": "networking.istio.io/v1", "kind": "VirtualService", "metadata": {"name": "web", "namespace": "default"},
               "spec": {"hosts": ["web"], "http": [{"route": [{"destination": {"host": "web", "subset": "v2"}}]}]}})
    proxy = waypoint()
    updates = proxy.metrics()['waypoint_config_compiles_total{mode="endpoints"}']
    assert all(served_by(proxy) == "b" for _ in range(6))                    # only the v2 pod
    api.apply({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "web-b", "namespace": "default", "labels": {"version": "v1"}},
               "status": {"podIP": "127.0.0.1"}})                              # relabelled: subset v2 is empty now
    assert wait_until(lambda: served_by(proxy) == 503, timeout=2.0)
    assert proxy.metrics()['waypoint_config_compiles_total{mode="endpoints"}'] > updates   # a Pod change: an endpoint update

    dump = json.loads(http_request(proxy.admin_port, "GET", "/config_dump", host="admin")[2])
    assert {(o["kind"], o["name"]) for o in dump["kubernetesObjects"]} >= {("Pod", "web-a"), ("Pod", "web-b")}


def test_a_list_page_over_a_mebibyte_is_read_whole(api, waypoint, origin_factory):
    a = origin_factory("a")
    big = service("web")
    big["metadata"]["annotations"] = {"example.com/notes": "x" * (3 << 20)}   # kubectl's last-applied copies can be large
    api.apply(big)
    api.apply(slice_("web-1", "web", [("127.0.0.1", a.port)]))
    proxy = waypoint()
    assert served_by(proxy) == "a"
    assert proxy.metrics()['waypoint_kubernetes_objects{kind="Service",namespace="default"}'] == 1


def test_nothing_is_served_and_readiness_is_503_until_the_first_lists(api, waypoint, origin_factory):
    a = origin_factory("a")
    api.apply(service("web"))
    api.apply(slice_("web-1", "web", [("127.0.0.1", a.port)]))
    api.pause()                                              # the API server is not there yet
    proxy = waypoint()
    status, _, body = http_request(proxy.admin_port, "GET", "/healthz/ready", host="admin")
    assert status == 503 and body.startswith(b"kubernetes: waiting for the first list of ") and b"Service default" in body
    # A request that arrives now waits (never answered from a partial config: no policy or route is missing).
    answered = []
    early = threading.Thread(target=lambda: answered.append(served_by(proxy)), daemon=True)
    early.start()
    time.sleep(0.5)
    assert answered == []
    api.resume()
    early.join(timeout=10)
    assert answered == ["a"]
    assert http_request(proxy.admin_port, "GET", "/healthz/ready", host="admin")[0] == 200


def test_after_the_sync_timeout_it_serves_what_it_has_and_says_so(api, waypoint):
    api.pause()
    proxy = waypoint(extra=["--kubernetes-sync-timeout", "1s"])
    assert http_request(proxy.admin_port, "GET", "/healthz/ready", host="admin")[0] == 503
    assert wait_until(lambda: http_request(proxy.admin_port, "GET", "/healthz/ready", host="admin")[0] == 200, timeout=5.0)
    wait_for(r"not listed within the sync timeout, serving what arrived: [^\n]*Service default", proxy.stderr_path)
    api.resume()


def test_a_cross_namespace_backend_waits_for_its_reference_grant(api, waypoint, origin_factory):
    """Gateway API: an HTTPRoute may send to another namespace's Service only once a ReferenceGrant there allows
    it (until then, and again once the grant is deleted, 500 as Istio answers); the grant is watched live."""
    a = origin_factory("a")
    api.apply(service("web"))
    api.apply(service("db", namespace="data"))
    api.apply(slice_("db-1", "db", [("127.0.0.1", a.port)], namespace="data"))
    cross = route("to-data", "web", "/", "db")
    cross["spec"]["rules"][0]["backendRefs"][0]["namespace"] = "data"
    api.apply(cross)
    proxy = waypoint(extra=["--watch-namespaces", "data"])
    assert wait_until(lambda: served_by(proxy) == 500, timeout=5)
    assert origin_requests(a.port) == 0
    grant = {"apiVersion": "gateway.networking.k8s.io/v1beta1", "kind": "ReferenceGrant",
             "metadata": {"name": "from-default", "namespace": "data"},
             "spec": {"from": [{"group": "gateway.networking.k8s.io", "kind": "HTTPRoute", "namespace": "default"}],
                      "to": [{"group": "", "kind": "Service", "name": "db"}]}}
    api.apply(grant)
    assert wait_until(lambda: served_by(proxy) == "a", timeout=3)
    api.delete("ReferenceGrant", "from-default", namespace="data")
    assert wait_until(lambda: served_by(proxy) == 500, timeout=3)


def test_a_backend_in_an_unwatched_namespace_is_watched_by_name_while_referenced(api, waypoint, origin_factory):
    """A route here sends to Service `db` in namespace `data`, which the waypoint does not watch: it reads that one
    Service (by name), its EndpointSlices (by label) and `data`'s ReferenceGrants, nothing else of `data` (not
    `cache`, another Service there), follows their changes live, and drops them once no route names them."""
    a, b = origin_factory("a"), origin_factory("b")
    api.apply(service("web"))
    for name in ("db", "cache"):
        api.apply(service(name, namespace="data"))
    api.apply(slice_("db-1", "db", [("127.0.0.1", a.port)], namespace="data"))
    api.apply(slice_("cache-1", "cache", [("127.0.0.1", b.port)], namespace="data"))
    api.apply({"apiVersion": "gateway.networking.k8s.io/v1beta1", "kind": "ReferenceGrant",
               "metadata": {"name": "from-default", "namespace": "data"},
               "spec": {"from": [{"group": "gateway.networking.k8s.io", "kind": "HTTPRoute", "namespace": "default"}],
                        "to": [{"group": "", "kind": "Service", "name": "db"}]}})
    cross = route("to-data", "web", "/", "db")
    cross["spec"]["rules"][0]["backendRefs"][0]["namespace"] = "data"
    api.apply(cross)
    proxy = waypoint()
    assert wait_until(lambda: served_by(proxy) == "a", timeout=5)

    data = [urlparse(r[1]) for r in api.requests if "/namespaces/data/" in r[1]]
    reads = {(u.path.rsplit("/", 1)[1], parse_qs(u.query).get("fieldSelector", [""])[0],
              parse_qs(u.query).get("labelSelector", [""])[0]) for u in data}
    assert reads == {("services", "metadata.name=db", ""), ("endpointslices", "", "kubernetes.io/service-name=db"),
                     ("referencegrants", "", ""), ("destinationrules", "", "")}, reads

    # Live: db's endpoint moves to origin b.
    api.apply(slice_("db-1", "db", [("127.0.0.1", b.port)], namespace="data"))
    assert wait_until(lambda: served_by(proxy) == "b", timeout=3)

    def dumped_from_data():
        dump = json.loads(http_request(proxy.admin_port, "GET", "/config_dump", host="admin")[2])
        return {(o["kind"], o["name"]) for o in dump["kubernetesObjects"] if o["namespace"] == "data"}
    assert dumped_from_data() == {("Service", "db"), ("EndpointSlice", "db-1"), ("ReferenceGrant", "from-default")}
    api.delete("HTTPRoute", "to-data")
    assert wait_until(lambda: dumped_from_data() == set(), timeout=3)


def test_subsets_of_a_backend_in_an_unwatched_namespace_follow_its_pods_and_destination_rules(api, waypoint, origin_factory):
    """A VirtualService here sends to subset v2 of `db` in namespace `data`, defined by a DestinationRule in `data`
    (Istio applies a Service's own namespace's rules to every client). The waypoint reads the Pods `db` selects (by
    its selector, once the Service is read) and `data`'s DestinationRules, and follows both live: no other Pod."""
    a, b = origin_factory("a"), origin_factory("b")
    api.apply(service("web"))
    db = service("db", namespace="data")
    db["spec"]["selector"] = {"app": "db"}
    api.apply(db)
    for version, origin in (("v1", a), ("v2", b)):
        api.apply({"apiVersion": "v1", "kind": "Pod",
                   "metadata": {"name": f"db-{version}", "namespace": "data", "labels": {"app": "db", "version": version}},
                   "status": {"podIP": f"10.1.0.{version[1]}"}})
        api.apply({"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
                   "metadata": {"name": f"db-{version}", "namespace": "data", "labels": {"kubernetes.io/service-name": "db"}},
                   "addressType": "IPv4", "ports": [{"name": "http", "port": origin.port}],
                   "endpoints": [{"addresses": ["127.0.0.1"], "conditions": {"ready": True},
                                  "targetRef": {"kind": "Pod", "name": f"db-{version}"}}]})
    api.apply({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "other", "namespace": "data", "labels": {"app": "other"}},
               "status": {"podIP": "10.1.0.9"}})
    rule = {"apiVersion": "networking.istio.io/v1", "kind": "DestinationRule", "metadata": {"name": "db", "namespace": "data"},
            "spec": {"host": "db.data.svc.cluster.local",
                     "subsets": [{"name": "v1", "labels": {"version": "v1"}}, {"name": "v2", "labels": {"version": "v2"}}]}}
    api.apply(rule)
    api.apply({"apiVersion": "networking.istio.io/v1", "kind": "VirtualService", "metadata": {"name": "to-db", "namespace": "default"},
               "spec": {"hosts": ["web"], "http": [{"route": [{"destination": {"host": "db.data.svc.cluster.local", "subset": "v2"}}]}]}})
    proxy = waypoint()
    assert wait_until(lambda: served_by(proxy) == "b", timeout=5)
    assert {served_by(proxy) for _ in range(10)} == {"b"}
    pod_reads = {parse_qs(urlparse(r[1]).query).get("labelSelector", [""])[0] for r in api.requests if "/namespaces/data/pods" in r[1]}
    assert pod_reads == {"app=db"}, pod_reads

    # Live: the rule's subset v2 now selects version v1's Pod, then that Pod is relabelled v3 (no endpoint left).
    rule["spec"]["subsets"][1]["labels"] = {"version": "v1"}
    api.apply(rule)
    assert wait_until(lambda: served_by(proxy) == "a", timeout=3)
    api.apply({"apiVersion": "v1", "kind": "Pod",
               "metadata": {"name": "db-v1", "namespace": "data", "labels": {"app": "db", "version": "v3"}},
               "status": {"podIP": "10.1.0.1"}})
    assert wait_until(lambda: served_by(proxy) == 503, timeout=3)


def test_policies_and_routes_bound_to_the_waypoints_own_gateway(api, waypoint, origin_factory):
    """Istio's usual way to put L7 policy on a waypoint: an AuthorizationPolicy whose targetRef is the waypoint's
    Gateway. It applies from the start, before (or without) the Gateway object. A route from another namespace
    attaches to the Gateway only once a listener's allowedRoutes lets that namespace in (watched live)."""
    a, b = origin_factory("a"), origin_factory("b")
    api.apply(service("web"))
    api.apply(slice_("web-1", "web", [("127.0.0.1", a.port)]))
    api.apply(service("blog-svc", namespace="blog"))
    api.apply(slice_("blog-1", "blog-svc", [("127.0.0.1", b.port)], namespace="blog"))
    api.apply({"apiVersion": "security.istio.io/v1", "kind": "AuthorizationPolicy",
               "metadata": {"name": "no-admin", "namespace": "default"},
               "spec": {"targetRefs": [{"group": "gateway.networking.k8s.io", "kind": "Gateway", "name": "waypoint"}],
                        "action": "DENY", "rules": [{"to": [{"operation": {"paths": ["/admin"]}}]}]}})
    api.apply({"apiVersion": "gateway.networking.k8s.io/v1", "kind": "HTTPRoute",
               "metadata": {"name": "site", "namespace": "blog"},
               "spec": {"parentRefs": [{"name": "waypoint", "namespace": "default"}], "hostnames": ["site.example.com"],
                        "rules": [{"backendRefs": [{"name": "blog-svc", "port": 80}]}]}})
    proxy = waypoint(extra=["--watch-namespaces", "blog"])
    assert wait_until(lambda: served_by(proxy, "/") == "a", timeout=5)
    assert served_by(proxy, "/admin") == 403
    assert served_by(proxy, "/", host="site.example.com") == 404   # a route from blog: not allowed by default
    api.apply({"apiVersion": "gateway.networking.k8s.io/v1", "kind": "Gateway",
               "metadata": {"name": "waypoint", "namespace": "default"},
               "spec": {"gatewayClassName": "istio-waypoint",
                        "listeners": [{"name": "mesh", "port": 15008, "protocol": "HBONE",
                                       "allowedRoutes": {"namespaces": {"from": "All"}}}]}})
    assert wait_until(lambda: served_by(proxy, "/", host="site.example.com") == "b", timeout=3)
    assert served_by(proxy, "/admin") == 403   # the policy still binds


def test_a_tcp_route_from_the_api_sends_byte_streams_to_its_backend(api, waypoint, origin_factory, certs):
    """TCPRoutes are read from the API too (v1alpha2): a tunnel to a `tcp-` port goes where the route says."""
    a, b = origin_factory("a"), origin_factory("b")
    db = service("db", cluster_ip="10.96.0.10", labels={"istio.io/use-waypoint": "waypoint"})
    db["spec"]["ports"][0]["name"] = "tcp-db"   # a byte-stream port
    api.apply(db)
    api.apply(slice_("db-1", "db", [("127.0.0.1", a.port)]))
    api.apply(service("db-v2"))
    api.apply(slice_("db-v2-1", "db-v2", [("127.0.0.1", b.port)]))
    api.apply({"apiVersion": "gateway.networking.k8s.io/v1alpha2", "kind": "TCPRoute",
               "metadata": {"name": "db-canary", "namespace": "default"},
               "spec": {"parentRefs": [{"group": "", "kind": "Service", "name": "db", "port": 80}],
                        "rules": [{"backendRefs": [{"name": "db-v2", "port": 80, "weight": 1}]}]}})
    cert, key = certs["waypoint"]
    proxy = waypoint(extra=["--hbone-listen", "127.0.0.1:0", "--cert", cert, "--key", key, "--ca", certs["ca"]])

    def through_tunnel():
        c = HBONEClient(proxy.hbone_port, *certs["frontend"], certs["ca"])
        try:
            sid = c.connect("10.96.0.10:80")
            if c.status(sid) != 200:
                return None
            response = c.http(sid, b"GET / HTTP/1.1\r\nhost: db\r\n\r\n")
            return "b" if b"x-origin: b" in response else "a" if b"x-origin: a" in response else None
        finally:
            c.close()
    assert wait_until(lambda: through_tunnel() == "b", timeout=5)


def test_a_bad_config_file_beside_the_api_stops_start_up_cleanly(api, workdir):
    """Start-up fails on a broken file while the API watchers are already connecting: the message names the
    field and the process exits 1 at once (it once crashed tearing OpenSSL down under a watcher's handshake)."""
    import subprocess
    from conftest import BINARY
    bad = workdir / "bad.yaml"
    bad.write_text("apiVersion: v1\nkind: Service\nmetadata: {name: a}\nspec: {ports: [{port: x}]}\n")
    for _ in range(3):
        out = subprocess.run([str(BINARY), "run", "--kubeconfig", api.kubeconfig(str(workdir)), "--config", str(bad),
                              "--http-listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0", "--ca-address", "none"],
                             capture_output=True, text=True, timeout=30)
        assert out.returncode == 1, out.stderr
        assert 'spec.ports[0].port: expected an integer, got "x"' in out.stderr


def test_the_mesh_configs_authorizer_is_followed_live(api, waypoint, origin_factory):
    """The `istio` ConfigMap of the root namespace names an HTTP ext_authz provider whose Service is in namespace
    `authz`, which the waypoint does not watch: it reads that ConfigMap by name, the provider's Service and its
    EndpointSlices by name, and a CUSTOM policy here calls it. Changing the mesh config (the provider's port now
    dead, failOpen on) takes effect live."""
    from test_ext_authz import HTTPAuthorizer
    a = origin_factory("a")
    authorizer = HTTPAuthorizer()
    api.apply(service("web"))
    api.apply(slice_("web-1", "web", [("127.0.0.1", a.port)]))
    api.apply(service("checker", namespace="authz", port=8000))
    api.apply(slice_("checker-1", "checker", [("127.0.0.1", authorizer.port)], namespace="authz"))

    def mesh(port, fail_open):
        api.apply({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "istio", "namespace": "istio-system"},
                   "data": {"mesh": "extensionProviders:\n- name: checker\n  envoyExtAuthzHttp:\n"
                                    f"    service: checker.authz.svc.cluster.local\n    port: {port}\n"
                                    f"    failOpen: {fail_open}\n    includeRequestHeadersInCheck: [x-ext-authz]\n"}})
    mesh(8000, "false")
    api.apply({"apiVersion": "security.istio.io/v1", "kind": "AuthorizationPolicy", "metadata": {"name": "ext", "namespace": "default"},
               "spec": {"targetRefs": [{"kind": "Service", "group": "", "name": "web"}], "action": "CUSTOM",
                        "provider": {"name": "checker"}, "rules": [{}]}})
    proxy = waypoint()

    def status(verdict):
        return http_request(proxy.port, "GET", "/", host="web", headers={"x-ext-authz": verdict})[0]
    assert wait_until(lambda: status("allow") == 200, timeout=5)
    assert status("deny") == 403 and authorizer.checks[-1][2]["x-ext-authz"] == "deny"
    reads = {(urlparse(r[1]).path, urlparse(r[1]).query.split("&")[0]) for r in api.requests
             if "/namespaces/istio-system/configmaps" in r[1] or "/namespaces/authz/" in r[1]}
    assert {path.rsplit("/", 1)[1] for path, _ in reads} == {"configmaps", "services", "endpointslices", "destinationrules"}
    assert ("/api/v1/namespaces/istio-system/configmaps", "fieldSelector=metadata.name%3Distio") in reads
    # the provider now points at a port with no endpoint: its checks fail, and failOpen lets them through
    mesh(8001, "true")
    assert wait_until(lambda: status("deny") == 200, timeout=5)
    mesh(8001, "false")
    assert wait_until(lambda: status("allow") == 403, timeout=5)


def test_a_credential_secret_is_read_by_name_and_followed_live(api, waypoint, workdir):
    """DestinationRule `credentialName`: the Secret of the waypoint's namespace is read by name (never the
    namespace's other Secrets), its `ca.crt` verifies the origin, and changing it takes effect live."""
    import base64
    import pki
    from test_tls_origination import HTTPSOrigin
    ca, other = pki.CA("api CA"), pki.CA("another CA")
    origin = HTTPSOrigin(*pki.write(str(workdir), "api", *ca.issue(dns=["api.default.svc.cluster.local"])))

    def secret(issuer):
        pem = issuer.cert.public_bytes(pki.serialization.Encoding.PEM)
        api.apply({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "api-credentials", "namespace": "default"},
                   "type": "Opaque", "data": {"ca.crt": base64.b64encode(pem).decode()}})
    api.apply(service("api"))
    api.apply(slice_("api-1", "api", [("127.0.0.1", origin.port)]))
    api.apply({"apiVersion": "networking.istio.io/v1", "kind": "DestinationRule", "metadata": {"name": "api", "namespace": "default"},
               "spec": {"host": "api", "trafficPolicy": {"tls": {"mode": "SIMPLE", "credentialName": "api-credentials"}}}})
    api.apply({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "unrelated", "namespace": "default"},
               "data": {"password": base64.b64encode(b"hunter2").decode()}})
    proxy = waypoint()

    def status():
        return http_request(proxy.port, "GET", "/x", host="api")[0]
    assert status() == 503                                         # no Secret yet: connections fail, never plaintext
    assert "credentialName: Secret default/api-credentials not found" in proxy.stderr()
    secret(ca)
    assert wait_until(lambda: status() == 200, timeout=5)
    secret(other)                                                  # now a CA that did not sign the origin's certificate
    assert wait_until(lambda: status() == 503, timeout=5)
    seen = len(origin.seen)
    assert status() == 503 and len(origin.seen) == seen            # refused in the handshake: nothing sent
    reads = [urlparse(r[1]) for r in api.requests if "/secrets" in r[1]]
    assert reads and all(parse_qs(r.query)["fieldSelector"][0] in ("metadata.name=api-credentials", "metadata.name=api-credentials-cacert")
                         for r in reads)
    assert "hunter2" not in proxy.stderr()
