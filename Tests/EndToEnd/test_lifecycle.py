"""Reloads, draining, the admin listener, the CLI and the environment."""
import json
import os
import re
import signal
import subprocess
import threading
import time

import pytest

from conftest import BINARY, Proxy, http_request, service_yaml, wait_for, wait_until


def test_sighup_reload_switches_routing_and_a_bad_reload_keeps_it(origin_factory, proxy_factory):
    a, b = origin_factory("a"), origin_factory("b")
    proxy = proxy_factory(service_yaml("web", [("127.0.0.1", a.port)]))
    assert http_request(proxy.port, "GET", "/", host="web")[1]["x-origin"] == "a"

    (proxy.config_dir / "config.yaml").write_text(service_yaml("web", [("127.0.0.1", b.port)]))
    os.kill(proxy.pid, signal.SIGHUP)
    assert wait_until(lambda: http_request(proxy.port, "GET", "/", host="web")[1]["x-origin"] == "b")
    assert proxy.metrics()['waypoint_config_reloads_total{result="ok"}'] >= 1

    (proxy.config_dir / "config.yaml").write_text("apiVersion: v1\nkind: Service\nmetadata: {name: web}\nspec: {ports: [{port: 0}]}\n")
    os.kill(proxy.pid, signal.SIGHUP)
    assert wait_until(lambda: proxy.metrics()['waypoint_config_reloads_total{result="failed"}'] >= 1)
    assert http_request(proxy.port, "GET", "/", host="web")[1]["x-origin"] == "b"
    assert "spec.ports[0].port: 0 is out of range" in proxy.stderr()
    assert "keeping generation" in proxy.stderr()


def test_configmap_symlink_swap_is_picked_up_without_a_signal(origin_factory, workdir, processes):
    """Kubernetes mounts a ConfigMap as `..data -> ..TIMESTAMP/` with per-key symlinks through `..data`."""
    a, b = origin_factory("a"), origin_factory("b")
    mount = workdir / "mount"
    (mount / "..v1").mkdir(parents=True)
    (mount / "..v1" / "config.yaml").write_text(service_yaml("web", [("127.0.0.1", a.port)]))
    os.symlink("..v1", mount / "..data")
    os.symlink("..data/config.yaml", mount / "config.yaml")
    proxy = Proxy(workdir, mount)
    processes.append(proxy)
    assert http_request(proxy.port, "GET", "/", host="web")[1]["x-origin"] == "a"

    (mount / "..v2").mkdir()
    (mount / "..v2" / "config.yaml").write_text(service_yaml("web", [("127.0.0.1", b.port)]))
    os.symlink("..v2", mount / "..data_tmp")
    os.rename(mount / "..data_tmp", mount / "..data")  # the atomic swap the kubelet does
    assert wait_until(lambda: http_request(proxy.port, "GET", "/", host="web")[1]["x-origin"] == "b", timeout=5)


def test_sigterm_drains_in_flight_requests_then_exits_zero(basic):
    proxy, _ = basic
    result = {}

    def slow():
        result["response"] = http_request(proxy.port, "GET", "/?delay=800ms", host="web")

    t = threading.Thread(target=slow)
    t.start()
    time.sleep(0.2)
    os.kill(proxy.pid, signal.SIGTERM)
    time.sleep(0.1)
    ready = http_request(proxy.admin_port, "GET", "/healthz/ready", host="admin")
    assert ready[0] == 503
    t.join(timeout=5)
    assert result["response"][0] == 200
    assert proxy.proc.wait(timeout=5) == 0


def test_drain_timeout_bounds_the_wait(origin_factory, proxy_factory):
    origin = origin_factory("a")
    proxy = proxy_factory(service_yaml("web", [("127.0.0.1", origin.port)]), extra=["--drain-timeout", "300ms"])
    t = threading.Thread(target=lambda: _ignore(lambda: http_request(proxy.port, "GET", "/?delay=10s", host="web", timeout=3)))
    t.start()
    time.sleep(0.2)
    started = time.time()
    os.kill(proxy.pid, signal.SIGTERM)
    assert proxy.proc.wait(timeout=5) == 0
    assert time.time() - started < 2
    t.join()


def _ignore(f):
    try:
        f()
    except Exception:
        pass


def test_admin_endpoints(basic):
    proxy, _ = basic
    assert http_request(proxy.admin_port, "GET", "/healthz/ready", host="admin")[:3:2] == (200, b"ready\n")
    status, headers, body = http_request(proxy.admin_port, "GET", "/config_dump", host="admin")
    dump = json.loads(body)
    assert status == 200 and headers["content-type"] == "application/json"
    assert dump["generation"] == 1
    assert [c["name"] for c in dump["clusters"]] == ["default/web:80"]
    http_request(proxy.port, "GET", "/", host="web")
    http_request(proxy.port, "GET", "/", host="nowhere")
    m = proxy.metrics()
    assert m['waypoint_downstream_requests_total{status_class="2xx"}'] == 1
    assert m['waypoint_downstream_requests_total{status_class="4xx"}'] == 1
    assert m["waypoint_workers"] == 2
    assert http_request(proxy.admin_port, "GET", "/nope", host="admin")[0] == 404


def test_prometheus_text_parses_with_a_real_parser(basic):
    parser = __import__("pytest").importorskip("prometheus_client.parser")
    proxy, _ = basic
    body = http_request(proxy.admin_port, "GET", "/stats/prometheus", host="admin")[2].decode()
    families = {f.name: f for f in parser.text_string_to_metric_families(body)}
    assert families["waypoint_downstream_requests"].type == "counter"
    assert families["waypoint_config_generation"].samples[0].value == 1


def test_flags_come_from_the_environment(origin_factory, workdir, processes):
    origin = origin_factory("a")
    config = workdir / "env.yaml"
    config.write_text(service_yaml("web", [("127.0.0.1", origin.port)]))
    env = {"WAYPOINT_CONFIG": str(config), "WAYPOINT_HTTP_LISTEN": "127.0.0.1:0", "WAYPOINT_ADMIN_LISTEN": "127.0.0.1:0",
           "WAYPOINT_WORKERS": "1", "WAYPOINT_ACCESS_LOG": "off"}
    from conftest import Process
    p = Process(["run"], workdir, "env-proxy", env=env)
    processes.append(p)
    m = wait_for(r"http=127\.0\.0\.1:(\d+)", p.stderr_path, process=p.proc)
    assert wait_for(r"workers=1", p.stderr_path)
    assert http_request(int(m.group(1)), "GET", "/", host="web")[0] == 200
    time.sleep(0.1)
    assert p.stdout() == ""  # access log off


def test_every_flag_of_the_default_subcommand_comes_from_the_environment():
    """No subcommand named (run is the default) and a flag the old hand-kept list left out: both read, and a bad
    value is a usage error naming the variable."""
    env = {**os.environ, "WAYPOINT_TRACE_SAMPLE_RATE": "500"}
    out = subprocess.run([str(BINARY)], env=env, capture_output=True, text=True, timeout=10)
    assert out.returncode == 64, out.stderr
    assert out.stderr == "Error: --trace-sample-rate must be 0...100 (percent)\nSee 'waypoint run --help'.\n"
    env = {**os.environ, "WAYPOINT_WORKERS": "many"}
    out = subprocess.run([str(BINARY), "run"], env=env, capture_output=True, text=True, timeout=10)
    assert out.returncode == 64
    assert out.stderr.startswith("Error: the value 'many' is invalid for '--workers <workers>' (from WAYPOINT_WORKERS)\n")


def test_check_reports_every_error_with_file_document_and_field(workdir):
    bad = workdir / "bad.yaml"
    bad.write_text("apiVersion: v1\nkind: Service\nmetadata: {name: a}\nspec: {ports: [{port: 0}]}\n---\n"
                   "apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {name: r}\n"
                   "spec: {rules: [{matches: [{path: {type: Exact, value: x}}]}]}\n---\n"
                   "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: d}\n")
    out = subprocess.run([str(BINARY), "check", "--config", str(bad)], capture_output=True, text=True)
    assert out.returncode == 1
    assert out.stdout.splitlines() == [
        f"error: {bad}: document 0 (Service default/a): spec.ports[0].port: 0 is out of range 1...65535",
        f"error: {bad}: document 1 (HTTPRoute default/r): spec.rules[0].matches[0].path.value: a path must start with \"/\"",
    ]


@pytest.mark.parametrize("metadata, field, message", [
    ('{name: "", namespace: shop}', "metadata.name", "must be a lowercase RFC 1123 name (a-z, 0-9, '-', '.'; at most 253)"),
    ("{name: a/b}", "metadata.name", "must be a lowercase RFC 1123 name (a-z, 0-9, '-', '.'; at most 253)"),
    ("{name: web, namespace: Shop}", "metadata.namespace", "must be a lowercase RFC 1123 label (a-z, 0-9, '-'; at most 63)"),
])
def test_object_names_follow_kubernetes_rules(origin_factory, proxy_factory, workdir, metadata, field, message):
    # Found by the config fuzzer: a Service with an empty name crashed `check`, and a reload to it the proxy.
    bad = workdir / "names.yaml"
    bad.write_text(f"apiVersion: v1\nkind: Service\nmetadata: {metadata}\nspec: {{ports: [{{name: http, port: 80}}]}}\n")
    out = subprocess.run([str(BINARY), "check", "--config", str(bad)], capture_output=True, text=True)
    assert (out.returncode, out.stdout.splitlines()) == (1, [f"error: {bad}: document 0: {field}: {message}"])
    origin = origin_factory("a")
    proxy = proxy_factory(service_yaml("web", [("127.0.0.1", origin.port)]))
    (proxy.config_dir / "config.yaml").write_text(bad.read_text())
    os.kill(proxy.pid, signal.SIGHUP)
    assert wait_until(lambda: proxy.metrics()['waypoint_config_reloads_total{result="failed"}'] >= 1)
    assert http_request(proxy.port, "GET", "/", host="web")[0] == 200


def test_check_accepts_a_good_config_and_warns(workdir):
    good = workdir / "good.yaml"
    good.write_text(service_yaml("web", [("127.0.0.1", 8080)]) + "---\napiVersion: apps/v1\nkind: Deployment\nmetadata: {name: d}\n")
    out = subprocess.run([str(BINARY), "check", "--config", str(good)], capture_output=True, text=True)
    assert out.returncode == 0
    assert "skipping unsupported kind apps/v1 Deployment default/d" in out.stdout
    assert out.stdout.splitlines()[-1] == "ok: 1 services, 1 endpoint slices, 0 service entries, 0 gateways, 0 HTTP routes, 0 authorization policies, 0 peer authentications"


def test_a_bad_config_at_start_names_the_problem(workdir):
    bad = workdir / "bad.yaml"
    bad.write_text("apiVersion: v1\nkind: Service\nmetadata: {name: a}\nspec: {ports: [{port: x}]}\n")
    out = subprocess.run([str(BINARY), "run", "--config", str(bad), "--http-listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0"],
                         capture_output=True, text=True, timeout=10)
    assert out.returncode == 1
    assert "spec.ports[0].port: expected an integer, got \"x\"" in out.stderr


def test_version():
    out = subprocess.run([str(BINARY), "version"], capture_output=True, text=True)
    assert out.returncode == 0 and out.stdout.startswith("waypoint ")


def test_binary_links_no_foundation_and_no_icu():
    """Foundation and ICU cost most of the idle memory: YAML goes through libyaml, files and the environment
    through libc, the command line through our own CLI module (swift-argument-parser brought FoundationEssentials)."""
    symbols = subprocess.run(["nm", str(BINARY)], capture_output=True, text=True, check=True).stdout
    assert "$s10Foundation" not in symbols  # the Foundation module's own mangled names
    assert "$s20FoundationEssentials" not in symbols and "_FoundationCollections" not in symbols
    assert "FoundationInternationalization" not in symbols and "ArgumentParser" not in symbols
    assert not any(name in symbols for name in (" ucol_open", " ubrk_open", " ucal_open", "_FoundationICU"))
    assert "yaml_parser_parse" in symbols  # and the YAML really comes from libyaml
    linked = subprocess.run(["ldd", str(BINARY)], capture_output=True, text=True).stdout
    assert not re.search(r"libFoundation|lib_FoundationICU|libicu", linked), linked
    assert "libyaml" in linked


def test_reload_that_removes_an_endpoint_in_use_lets_the_request_finish(origin_factory, proxy_factory):
    """The exchange holds a connection from a pool the reload retires: it completes, then that connection closes."""
    a, b = origin_factory("a"), origin_factory("b")
    proxy = proxy_factory(service_yaml("web", [("127.0.0.1", a.port)]), extra=["--workers", "1"])
    result = {}
    t = threading.Thread(target=lambda: result.update(r=http_request(proxy.port, "GET", "/?delay=500ms", host="web")))
    t.start()
    time.sleep(0.2)
    (proxy.config_dir / "config.yaml").write_text(service_yaml("web", [("127.0.0.1", b.port)]))
    os.kill(proxy.pid, signal.SIGHUP)
    assert wait_until(lambda: "config reloaded" in proxy.stderr())
    t.join(timeout=5)
    assert result["r"][0] == 200 and result["r"][1]["x-origin"] == "a"
    assert http_request(proxy.port, "GET", "/", host="web")[1]["x-origin"] == "b"
    assert proxy.proc.poll() is None


def demo_binary():
    from conftest import BINARY
    return BINARY


def test_demo_serves_the_embedded_config_and_exits_on_sigint(workdir, processes):
    """`make run` starts this: two origins and the proxy on fixed loopback ports."""
    from conftest import Process
    demo = Process(["demo"], workdir, "demo")
    processes.append(demo)
    wait_for(r"\] ready", demo.stderr_path, process=demo.proc)
    assert http_request(18080, "GET", "/hello", host="reviews")[1]["x-origin"] == "a"
    assert http_request(18080, "GET", "/", host="reviews", headers={"x-canary": "true"})[1]["x-origin"] == "b"
    assert http_request(18080, "GET", "/v2/x", host="reviews.default.svc.cluster.local")[1]["x-origin"] == "b"
    assert http_request(18080, "GET", "/", host="demo.local")[1]["x-origin"] == "a"
    assert http_request(18080, "GET", "/", host="nowhere")[0] == 404
    assert "curl -s -H 'Host: reviews'" in demo.stdout()
    # The printed HBONE command works as printed: the demo PKI, the tunnel to service reviews, origin a.
    import re
    import shlex
    import subprocess
    printed = re.search(r"waypoint (hbone-client .*?)\n\s*(--cert .*)\n", demo.stdout())
    args = shlex.split(printed.group(1).replace("\\", "") + " " + printed.group(2))
    result = subprocess.run([str(demo_binary())] + args, capture_output=True, timeout=10)
    assert result.returncode == 0, result.stderr
    assert b"x-origin: a" in result.stdout and b'"path":"/hello"' in result.stdout
    os.kill(demo.pid, signal.SIGINT)
    assert demo.proc.wait(timeout=10) == 0


def test_stats_and_health_listeners_serve_only_their_path(proxy_factory):
    import re as _re
    proxy = proxy_factory(service_yaml("web", [("127.0.0.1", 9)]),
                          extra=["--stats-listen", "127.0.0.1:0", "--health-listen", "127.0.0.1:0"])
    line = proxy.stderr()
    stats = int(_re.search(r"stats=127\.0\.0\.1:(\d+)", line).group(1))
    health = int(_re.search(r"health=127\.0\.0\.1:(\d+)", line).group(1))
    assert http_request(stats, "GET", "/stats/prometheus", host="x")[0] == 200
    assert http_request(stats, "GET", "/config_dump", host="x")[0] == 404      # the dump stays on the admin port
    assert http_request(health, "GET", "/healthz/ready", host="x")[:3:2] == (200, b"ready\n")
    assert http_request(health, "GET", "/stats/prometheus", host="x")[0] == 404


def test_rolling_update_on_one_port_loses_no_request(origin_factory, workdir, processes):
    """Two waypoints on one SO_REUSEPORT port, the old one SIGTERMed under keep-alive load: every request is
    answered 200 (draining answers with connection: close; the listener takes its accept queue before closing)."""
    import http.client
    from conftest import free_port, rolling_handover
    origin = origin_factory("a")
    config = workdir / "rolling"
    config.mkdir()
    (config / "c.yaml").write_text(service_yaml("web", [("127.0.0.1", origin.port)]))
    port = free_port()

    def load(stop, record):
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
        while not stop.is_set():
            try:
                conn.request("GET", "/", headers={"Host": "web"})
                response = conn.getresponse()
                response.read()
                record(response.status == 200, response.status)
                if response.will_close:
                    conn.close()
            except Exception as error:     # a reset or a refused connection is a lost request
                record(False, repr(error))
                conn.close()
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
        conn.close()

    rolling_handover(workdir, processes, ["--config", str(config), "--http-listen", f"127.0.0.1:{port}"], load, 100)
