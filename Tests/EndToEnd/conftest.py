"""Black-box fixtures: start the built `waypoint` binary and its test origin on loopback port 0 and talk to
them over real sockets."""
import json
import os
import re
import signal
import socket
import subprocess
import tempfile
import textwrap
import threading
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
BINARY = Path(os.environ.get("WAYPOINT_BIN", ROOT / ".build" / "release" / "waypoint"))
# A static binary finds no backtracer by itself; point it at the toolchain's so a crash prints its stack.
BACKTRACER = Path("/opt/swift/usr/libexec/swift/linux/swift-backtrace-static")
CRASH_ENV = {"SWIFT_BACKTRACE": f"enable=yes,swift-backtrace={BACKTRACER}"} if BACKTRACER.exists() else {}
# The machine's own cluster settings never reach the binaries under test (a CI runner in a pod, or with a
# KUBECONFIG, would otherwise turn the Kubernetes source on): tests that want it pass --kubeconfig.
for _name in ("KUBECONFIG", "KUBERNETES_SERVICE_HOST", "KUBERNETES_SERVICE_PORT", "WAYPOINT_KUBERNETES"):
    os.environ.pop(_name, None)


def wait_for(pattern, path, timeout=10.0, process=None):
    """Waits until `pattern` appears in the file at `path`; returns the match."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        text = Path(path).read_text(errors="replace") if Path(path).exists() else ""
        m = re.search(pattern, text)
        if m:
            return m
        if process is not None and process.poll() is not None:
            raise AssertionError(f"process exited with {process.returncode}:\n{text}")
        time.sleep(0.02)
    raise AssertionError(f"timed out waiting for {pattern!r} in:\n{Path(path).read_text(errors='replace')}")


class Process:
    """A started binary whose stderr and stdout go to files in a temporary directory."""

    def __init__(self, args, workdir, name, env=None):
        self.stderr_path = Path(workdir) / f"{name}.stderr"
        self.stdout_path = Path(workdir) / f"{name}.stdout"
        self.proc = subprocess.Popen(
            [str(BINARY)] + args,
            stdout=open(self.stdout_path, "wb"),
            stderr=open(self.stderr_path, "wb"),
            stdin=subprocess.DEVNULL,
            env={**os.environ, **CRASH_ENV, **(env or {})},
        )

    @property
    def pid(self):
        return self.proc.pid

    def stderr(self):
        return self.stderr_path.read_text(errors="replace")

    def stdout(self):
        return self.stdout_path.read_text(errors="replace")

    def rss_kib(self):
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
        return 0

    def stop(self):
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)


class Origin(Process):
    """`waypoint origin`; `fail_percent` 100 makes a dead endpoint (503 to everything)."""
    def __init__(self, workdir, name, fail_percent=0):
        super().__init__(["origin", "--listen", "127.0.0.1:0", "--name", name, "--fail-percent", str(fail_percent)], workdir,
                         f"origin-{name}")
        m = wait_for(r"listening on (\S+):(\d+)", self.stderr_path, process=self.proc)
        self.host, self.port = m.group(1), int(m.group(2))


class Proxy(Process):
    def __init__(self, workdir, config_dir, extra=(), env=None, name="proxy"):
        args = ["run", "--config", str(config_dir), "--http-listen", "127.0.0.1:0",
                "--admin-listen", "127.0.0.1:0", "--workers", "2", *extra]
        super().__init__(args, workdir, name, env=env)
        m = wait_for(r"admin=127\.0\.0\.1:(\d+).*hbone=(\S+) .*http=127\.0\.0\.1:(\d+)", self.stderr_path, process=self.proc)
        self.admin_port, self.port = int(m.group(1)), int(m.group(3))
        self.hbone_port = int(m.group(2).rsplit(":", 1)[1]) if m.group(2) != "off" else None
        pp = re.search(r"proxy_protocol=(\S+)", m.string)
        self.proxy_protocol_port = int(pp.group(1).rsplit(":", 1)[1]) if pp and pp.group(1) != "off" else None

    def metrics(self):
        """Prometheus samples as {name{labels}: value}."""
        status, _, body = http_request(self.admin_port, "GET", "/stats/prometheus", host="admin")
        assert status == 200
        samples = {}
        for line in body.decode().splitlines():
            if line and not line.startswith("#"):
                key, value = line.rsplit(" ", 1)
                samples[key] = float(value)
        return samples


def service_yaml(name, endpoints, namespace="default", port=80, routes="", cluster_ip=None, port_name="http",
                 app_protocol=None):
    """A Service with one EndpointSlice per (ip, port) endpoint (ports may differ, so one slice each)."""
    vip = f"\n  clusterIP: {cluster_ip}" if cluster_ip else ""
    proto = f", appProtocol: {app_protocol}" if app_protocol else ""
    docs = [f"""
apiVersion: v1
kind: Service
metadata: {{name: {name}, namespace: {namespace}}}
spec:{vip}
  ports: [{{name: {port_name}, port: {port}{proto}}}]
"""]
    for i, (ip, target) in enumerate(endpoints):
        docs.append(f"""
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {{name: {name}-{i}, namespace: {namespace}, labels: {{kubernetes.io/service-name: {name}}}}}
addressType: IPv4
ports: [{{name: {port_name}, port: {target}}}]
endpoints: [{{addresses: [{ip}]}}]
""")
    return "---".join(docs) + (("---\n" + textwrap.dedent(routes)) if routes else "")


_protos = {}


def compiled_proto(name):
    """The modules (messages, services) of Tests/EndToEnd/proto/NAME.proto, compiled once per run by grpc_tools'
    protoc: protobuf's own codec then checks the waypoint's hand-encoded messages."""
    if name not in _protos:
        import importlib
        import sys
        from grpc_tools import protoc
        import grpc_tools
        proto_dir = Path(__file__).parent / "proto"
        out = tempfile.mkdtemp(prefix="waypoint-proto-")
        include = Path(grpc_tools.__file__).parent / "_proto"
        rc = protoc.main(["protoc", f"-I{proto_dir}", f"-I{include}", f"--python_out={out}", f"--grpc_python_out={out}",
                          str(proto_dir / f"{name}.proto")])
        assert rc == 0, f"protoc failed on {name}.proto"
        sys.path.insert(0, out)
        _protos[name] = (importlib.import_module(f"{name}_pb2"), importlib.import_module(f"{name}_pb2_grpc"))
    return _protos[name]


def free_port():
    """A loopback port nothing listens on right now."""
    probe = socket.socket()
    probe.bind(("127.0.0.1", 0))
    port = probe.getsockname()[1]
    probe.close()
    return port


def rolling_handover(workdir, processes, args, load, served_before_at_least):
    """Two waypoints on one SO_REUSEPORT port (`args` without the config), the old one SIGTERMed while eight
    threads run `load(stop, record)`, each calling `record(ok, detail)` per request: nothing may fail, and load
    must run before, during and after the handover."""
    try:   # lets Linux hand a closing listener's queued connections to its sibling (root in this netns only)
        with open("/proc/sys/net/ipv4/tcp_migrate_req", "w") as f:
            f.write("1")
    except OSError:
        pass

    def start(name):
        p = Process(["run", *args, "--admin-listen", "127.0.0.1:0", "--workers", "2", "--access-log", "off"], workdir, name)
        processes.append(p)
        wait_for(r"ready", p.stderr_path, process=p.proc)
        return p

    old = start("old")
    stop = threading.Event()
    results = {"ok": 0, "failed": []}
    lock = threading.Lock()

    def record(ok, detail=None):
        with lock:
            if ok:
                results["ok"] += 1
            else:
                results["failed"].append(detail)

    threads = [threading.Thread(target=load, args=(stop, record)) for _ in range(8)]
    for t in threads:
        t.start()
    time.sleep(0.5)
    new = start("new")
    time.sleep(0.5)
    os.kill(old.pid, signal.SIGTERM)
    assert old.proc.wait(timeout=15) == 0
    served_before = results["ok"]
    time.sleep(0.5)
    stop.set()
    for t in threads:
        t.join(timeout=10)
    assert results["failed"] == []
    assert results["ok"] > served_before > served_before_at_least
    assert new.proc.poll() is None


def wait_until(predicate, timeout=5.0):
    """Polls `predicate` until it holds or `timeout` passes; its last value."""
    deadline = time.time() + timeout
    while time.time() < deadline and not predicate():
        time.sleep(0.02)
    return predicate()


def origin_requests(port):
    """Requests a `waypoint origin` has answered (its `/__requests` count, which does not count itself)."""
    import urllib.request
    return int(urllib.request.urlopen(f"http://127.0.0.1:{port}/__requests").read())


def total(samples, name):
    """The sum of a metric's samples over all its label sets."""
    return sum(v for k, v in samples.items() if k == name or k.startswith(name + "{"))


def http_request(port, method, path, host, headers=None, body=None, timeout=10):
    """One request on a fresh connection via http.client; returns (status, headers dict, body bytes)."""
    import http.client
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    all_headers = {"Host": host, **(headers or {})}
    conn.request(method, path, body=body, headers=all_headers)
    resp = conn.getresponse()
    data = resp.read()
    conn.close()
    return resp.status, {k.lower(): v for k, v in resp.getheaders()}, data


def raw_exchange(port, payload, timeout=5.0, until_close=True, half_close=False):
    """Sends raw bytes (then EOF, with `half_close`) and returns everything read until the peer closes (or the
    timeout)."""
    s = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    s.sendall(payload)
    if half_close:
        s.shutdown(socket.SHUT_WR)
    chunks = []
    try:
        while True:
            data = s.recv(65536)
            if not data:
                break
            chunks.append(data)
            if not until_close and b"\r\n\r\n" in b"".join(chunks):
                break
    except socket.timeout:
        pass
    s.close()
    return b"".join(chunks)


def read_to_close(s):
    """Everything the peer sends on socket `s` until it closes; then closes `s`."""
    chunks = []
    while True:
        data = s.recv(65536)
        if not data:
            break
        chunks.append(data)
    s.close()
    return b"".join(chunks)


def status_of(response):
    m = re.match(rb"HTTP/1\.1 (\d{3}) ", response)
    return int(m.group(1)) if m else None


@pytest.fixture
def workdir():
    with tempfile.TemporaryDirectory(prefix="waypoint-e2e-") as d:
        yield Path(d)


@pytest.fixture
def processes():
    """Started processes; stopped after the test. Their stderr is printed, so a failing test shows it."""
    started = []
    yield started
    for p in started:
        exited = p.proc.poll()
        p.stop()
        print(f"--- {p.stderr_path.name} (exit status before teardown: {exited}) ---\n{p.stderr()[-4000:]}")


@pytest.fixture
def origin_factory(workdir, processes):
    def make(name, fail_percent=0):
        o = Origin(workdir, name, fail_percent)
        processes.append(o)
        return o
    return make


@pytest.fixture
def proxy_factory(workdir, processes):
    def make(config_text, extra=(), env=None, name="proxy"):
        config_dir = workdir / f"config-{name}"
        config_dir.mkdir(exist_ok=True)
        (config_dir / "config.yaml").write_text(config_text)
        p = Proxy(workdir, config_dir, extra=extra, env=env, name=name)
        p.config_dir = config_dir
        processes.append(p)
        return p
    return make


@pytest.fixture
def basic(origin_factory, proxy_factory):
    """One origin behind service `web`; returns (proxy, origin)."""
    origin = origin_factory("a")
    proxy = proxy_factory(service_yaml("web", [("127.0.0.1", origin.port)]))
    return proxy, origin
