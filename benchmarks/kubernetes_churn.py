#!/usr/bin/env python3
"""Kubernetes source under churn: a namespace of 1,000 Services / 10,000 endpoints served by the stand-in API
server (Tests/EndToEnd/fake_apiserver.py, on loopback), 100 endpoint changes per second while `waypoint
hbone-load` runs at full speed through the waypoint (one worker) to one of those services; and 9,000 Services in
other namespaces the waypoint must never read. The waypoint runs alone on PROXY_CPU, everything else on LOAD_CPU.
Throughput is measured in windows of WINDOW_SECONDS (10) in three conditions: no churn, the same churn in a
namespace the waypoint does not read (a control: the API server works, the waypoint does not), and churn in the
waypoint's namespace; in the order none, elsewhere, here, here, elsewhere, none, ROUNDS (3) times.

Reports: the time from a change reaching the waypoint to the snapshot swap (p50/p99 from the
waypoint_kubernetes_event_to_swap_seconds histogram; target p99 <= 250 ms), the HBONE throughput during churn
against none (target >= 0.95x) and against the control, each window's steal and the CPU waits of the worker and
the load generator, the proxy's RSS before and after the namespace's config is loaded (target: <= 20 MiB added),
the main thread's CPU per change (compiling), and which collections the waypoint listed or watched.
Usage: python3 benchmarks/kubernetes_churn.py   (after `make release`; WAYPOINT_BIN=... for another build;
PERF_OUT=FILE records the waypoint with `perf record -g` during the first window of churn here)
"""
import os
import random
import re
import statistics
import subprocess
import sys
import tempfile
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "Tests", "EndToEnd"))
import pki                                   # noqa: E402  (the test PKI)
from fake_apiserver import FakeAPIServer     # noqa: E402  (the stand-in API server)

BIN = os.environ.get("WAYPOINT_BIN", os.path.join(ROOT, ".build", "release", "waypoint"))
WINDOW = int(os.environ.get("WINDOW_SECONDS", "10"))
ROUNDS = int(os.environ.get("ROUNDS", "3"))
PERF_OUT = os.environ.get("PERF_OUT")   # `perf record -g` of the waypoint during the first churn window, to this file
# The waypoint (all of its threads) on PROXY_CPU; this script (the stand-in API server, the churn, the sinks), the
# load and the origin on LOAD_CPU: the churn's cost to the proxy then comes out of the proxy's own core, as in a
# cluster.
PROXY_CPU = int(os.environ.get("PROXY_CPU", "0"))
LOAD_CPU = int(os.environ.get("LOAD_CPU", "1"))
RATE = 100
STEAL_MAX = float(os.environ.get("STEAL_MAX", "0.02"))   # windows with more steal than this are left out of the quiet ratio
VIP = "10.96.0.10"


def service(name, namespace, ip=None):
    spec = {"ports": [{"name": "http", "port": 80}]}
    if ip:
        spec["clusterIP"] = ip
    return {"apiVersion": "v1", "kind": "Service", "metadata": {"name": name, "namespace": namespace}, "spec": spec}


def endpoint_slice(name, service_name, namespace, addresses, port):
    return {"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
            "metadata": {"name": name, "namespace": namespace, "labels": {"kubernetes.io/service-name": service_name}},
            "addressType": "IPv4", "ports": [{"name": "http", "port": port}],
            "endpoints": [{"addresses": [a], "conditions": {"ready": True}} for a in addresses]}


def background():
    """Lowers the calling thread's priority (nice 10; threads it starts inherit it). The stand-in API server, the
    churn and the sinks share the load generator's core and are not what is measured: in a cluster they run
    elsewhere. They take what the load generator and the origin leave, so they do not slow the load; the churn
    rate they reached is reported."""
    os.setpriority(os.PRIO_PROCESS, 0, 10)   # 0: the calling thread (Linux)


def in_background(make):
    """`make()` run on a thread at `background()` priority (its threads inherit it), and its result."""
    result = []
    thread = threading.Thread(target=lambda: (background(), result.append(make())))
    thread.start()
    thread.join()
    return result[0]


def rss_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        return int(re.search(r"VmRSS:\s+(\d+)", f.read()).group(1))


def main_thread_cpu(pid):
    """utime + stime of the main thread (where snapshots compile), in seconds."""
    with open(f"/proc/{pid}/task/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def threads_cpu(pid):
    """CPU seconds of the process's threads by name (`worker-0`, `watch Service`, the main thread as `waypoint`)."""
    totals = {}
    for task in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{task}/stat") as f:
                head, rest = f.read().rsplit(")", 1)
            fields = rest.split()
            name = head.split("(", 1)[1]
            totals[name] = totals.get(name, 0) + (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
        except OSError:
            pass
    return totals


def cpu_times():
    """The machine's CPU times (/proc/stat's first line: user nice system idle iowait irq softirq steal ...)."""
    with open("/proc/stat") as f:
        return [int(x) for x in f.readline().split()[1:]]


def own_cpu():
    """CPU seconds of this process: the stand-in API server and the churn generator."""
    t = os.times()
    return t.user + t.system


def metrics(admin):
    import http.client
    conn = http.client.HTTPConnection("127.0.0.1", admin, timeout=10)
    conn.request("GET", "/stats/prometheus")
    body = conn.getresponse().read().decode()
    return {k: float(v) for k, v in (line.rsplit(" ", 1) for line in body.splitlines() if line and not line.startswith("#"))}


def ready(admin):
    import http.client
    conn = http.client.HTTPConnection("127.0.0.1", admin, timeout=10)
    conn.request("GET", "/healthz/ready")
    return conn.getresponse().status == 200


def quantile(samples, q):
    """From cumulative histogram buckets {le: count}: the smallest bound holding q of the observations."""
    total = samples["+Inf"]
    for bound in sorted((b for b in samples if b != "+Inf"), key=float):
        if samples[bound] >= q * total:
            return float(bound)
    return float("inf")


def run_delay(pid):
    """Seconds the process's threads have waited for a CPU (the second field of schedstat), or None once gone."""
    total = 0
    try:
        for task in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{task}/schedstat") as f:
                total += int(f.read().split()[1])
    except OSError:
        return None
    return total / 1e9


def run_delay_of_thread(pid, name):
    """Seconds the named thread of the process has waited for a CPU."""
    for task in os.listdir(f"/proc/{pid}/task"):
        with open(f"/proc/{pid}/task/{task}/comm") as f:
            if f.read().strip() == name:
                with open(f"/proc/{pid}/task/{task}/schedstat") as f:
                    return int(f.read().split()[1]) / 1e9
    return 0.0


def hbone_load(work, port, seconds):
    """(req/s, the last line of output, seconds the load generator waited for its CPU)."""
    load = subprocess.Popen([BIN, "hbone-load", "-c", "4", "-s", "8", "-d", f"{seconds}s", "--connect", f"127.0.0.1:{port}",
                             "--authority", f"{VIP}:80", "--host", "web", "--cert", f"{work}/frontend.pem",
                             "--key", f"{work}/frontend.key", "--ca", f"{work}/ca.pem"], stdout=subprocess.PIPE, text=True)
    waited = 0.0
    while load.poll() is None:
        waited = run_delay(load.pid) or waited
        time.sleep(0.2)
    out = load.stdout.read()
    return float(re.search(r"rps=(\d+)", out).group(1)), out.strip(), waited


def main():
    os.sched_setaffinity(0, {LOAD_CPU})            # inherited by the origin and the load generator
    work = tempfile.mkdtemp(prefix="waypoint-k8s-churn-")
    certs = pki.make(work)
    api = in_background(lambda: FakeAPIServer(certs))
    origin = subprocess.Popen([BIN, "origin", "--listen", "127.0.0.1:19481", "--name", "a"], stderr=subprocess.DEVNULL)
    procs = [origin]
    try:
        # the namespace uses this waypoint (istio.io/use-waypoint), so its Services take tunnels
        api.apply({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "default", "labels": {"istio.io/use-waypoint": "waypoint"}}})
        api.apply(service("web", "default", VIP))
        api.apply(endpoint_slice("web-1", "web", "default", ["127.0.0.1"], 19481))
        for i in range(1000):
            api.apply(service(f"svc-{i}", "default", f"10.97.{i // 250}.{i % 250 + 1}"))
            api.apply(endpoint_slice(f"svc-{i}-1", f"svc-{i}", "default",
                                     [f"10.{i // 250 + 10}.{i % 250}.{e + 1}" for e in range(10)], 8080))
        for i in range(9000):                              # elsewhere: never read
            api.apply(service(f"far-{i}", f"team-{i % 30}"))
        kubeconfig = api.kubeconfig(work)

        def start(*extra):
            """A waypoint following the API server: (process, admin port, HBONE port, seconds to ready)."""
            proxy = subprocess.Popen([BIN, "run", "--kubeconfig", kubeconfig, "--workers", "1", "--http-listen", "127.0.0.1:0",
                                      "--admin-listen", "127.0.0.1:0", "--hbone-listen", "127.0.0.1:0", "--access-log", "off",
                                      "--cert", f"{work}/waypoint.pem", "--key", f"{work}/waypoint.key", "--ca", f"{work}/ca.pem",
                                      *extra], stderr=subprocess.PIPE, text=True,
                                     preexec_fn=lambda: os.sched_setaffinity(0, {PROXY_CPU}))
            procs.append(proxy)
            started = time.time()
            line = ""
            while "ready" not in line:
                line = proxy.stderr.readline()
            admin = int(re.search(r"admin=127\.0\.0\.1:(\d+)", line).group(1))
            hbone = int(re.search(r"hbone=127\.0\.0\.1:(\d+)", line).group(1))
            threading.Thread(target=lambda: [None for _ in proxy.stderr], daemon=True).start()
            while not ready(admin):                 # listening, then serving once every kind was listed
                time.sleep(0.01)
            load_time = time.time() - started
            time.sleep(2)                           # the replaced start-up snapshots are freed a second after a swap
            return proxy, admin, hbone, load_time

        # The same waypoint for a namespace with nothing in it: what the config below adds is measured against it.
        empty, _, _, _ = start("--namespace", "empty")
        rss_empty = rss_kib(empty.pid)
        empty.terminate()
        empty.wait()
        proxy, admin, hbone, load_time = start()
        rss_loaded = rss_kib(proxy.pid)

        # Windows of load in three conditions: no churn; churn ELSEWHERE (the same changes to a namespace the waypoint
        # does not read: the stand-in API server does the same work, the waypoint none); churn HERE (in the
        # waypoint's namespace). Two sinks watch both namespaces' EndpointSlices throughout, so that the API server
        # streams each change to a watcher in both churn conditions. Order: none, elsewhere, here, here, elsewhere,
        # none (repeated), so that the neighbours' noise and any drift weigh on all alike; ratios are of medians.
        NONE, ELSEWHERE, HERE = "none", "elsewhere", "here"
        stop = threading.Event()
        target = [None]                 # the namespace the churn goes to, or None
        changes = [0]

        def churn():
            background()
            next_at = time.time()
            while not stop.is_set():
                namespace = target[0]
                if namespace is None:
                    time.sleep(0.05)
                    next_at = time.time()
                    continue
                i = random.randrange(1000)
                api.apply(endpoint_slice(f"svc-{i}-1", f"svc-{i}", namespace,
                                         [f"10.{i // 250 + 10}.{i % 250}.{random.randrange(1, 250)}" for _ in range(10)], 8080))
                if namespace == "default":
                    changes[0] += 1
                next_at += 1 / RATE
                time.sleep(max(0, next_at - time.time()))

        def sink(namespace):
            """Watches `namespace`'s EndpointSlices and throws the events away (a watcher the API server feeds)."""
            import http.client
            import ssl
            background()
            context = ssl.create_default_context(cafile=f"{work}/ca.pem")
            while not stop.is_set():
                try:
                    conn = http.client.HTTPSConnection("127.0.0.1", api.port, context=context, timeout=5)
                    conn.request("GET", f"/apis/discovery.k8s.io/v1/namespaces/{namespace}/endpointslices?watch=1&sink=1&resourceVersion={api.rv}",
                                 headers={"Authorization": f"Bearer {api.token}"})
                    response = conn.getresponse()
                    while not stop.is_set() and response.read1(65536):
                        pass
                except (OSError, http.client.HTTPException):   # the server cut the watch, or closed at the end
                    time.sleep(0.1)

        threads = [threading.Thread(target=churn)] + [threading.Thread(target=sink, args=(n,), daemon=True)
                                                      for n in ("default", "team-0")]
        for thread in threads:
            thread.start()
        conditions = (NONE, ELSEWHERE, HERE)
        rates = {c: [] for c in conditions}
        # The share of the machine's CPU time the hypervisor gave to other guests during each window ("steal"): on
        # a shared host it swings the windows far more than the churn does, so ratios are also given for the
        # windows it left alone.
        steals = {c: [] for c in conditions}
        outputs = {c: [] for c in conditions}
        cpu = 0.0
        # Per window, where the two cores went: the worker's CPU per request, the waypoint's other threads (main:
        # compiling; watchers: reading the API), this process (the stand-in API server, the churn, the sinks), and
        # how long the worker and the load generator waited for a CPU.
        spent = {c: [] for c in conditions}
        for condition in [NONE, ELSEWHERE, HERE, HERE, ELSEWHERE, NONE] * ROUNDS:
            target[0] = {NONE: None, ELSEWHERE: "team-0", HERE: "default"}[condition]
            before, threads_before, own_before = main_thread_cpu(proxy.pid), threads_cpu(proxy.pid), own_cpu()
            perf = None
            if condition == HERE and PERF_OUT and not os.path.exists(PERF_OUT):
                perf = subprocess.Popen(["perf", "record", "-F", "999", "-g", "-p", str(proxy.pid), "-o", PERF_OUT, "--",
                                         "sleep", str(WINDOW - 1)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            worker_waited = run_delay_of_thread(proxy.pid, "worker-0")
            machine_before = cpu_times()
            rps, out, load_waited = hbone_load(work, hbone, WINDOW)
            machine = [b - a for a, b in zip(machine_before, cpu_times())]
            steal = machine[7] / max(sum(machine), 1)
            worker_waited = run_delay_of_thread(proxy.pid, "worker-0") - worker_waited
            if perf:
                perf.wait()
            if condition == HERE:
                cpu += main_thread_cpu(proxy.pid) - before
            threads_after = threads_cpu(proxy.pid)
            used = {k: threads_after.get(k, 0) - threads_before.get(k, 0) for k in threads_after}
            worker = used.get("worker-0", 0)
            spent[condition].append((worker / max(rps * WINDOW, 1) * 1e6, sum(used.values()) - worker, own_cpu() - own_before,
                                     worker_waited, load_waited))
            rates[condition].append(rps)
            steals[condition].append(steal)
            outputs[condition].append(out.splitlines()[-1])
        stop.set()
        threads[0].join()
        time.sleep(1)
        churn_seconds = WINDOW * 2 * ROUNDS
        m = metrics(admin)
        buckets = {re.search(r'le="([^"]+)"', k).group(1): v for k, v in m.items()
                   if k.startswith("waypoint_kubernetes_event_to_swap_seconds_bucket")}
        swaps = m["waypoint_kubernetes_event_to_swap_seconds_count"]
        # what the measured waypoint read (the empty-namespace one's reads aside)
        paths = sorted({r[1].split("?")[0] for r in api.requests if "empty" not in r[1] and "sink=1" not in r[1]})
        foreign = [p for p in paths if "/namespaces/team-" in p]
        print(f"namespace: 1,001 Services, 10,001 endpoints; 9,000 Services in 30 other namespaces")
        rss_after = rss_kib(proxy.pid)
        print(f"start-up to ready (initial lists + compile): {load_time:.2f} s; RSS 2 s after ready: {rss_loaded / 1024:.1f} MiB; "
              f"after the churn: {rss_after / 1024:.1f} MiB; for an empty namespace: {rss_empty / 1024:.1f} MiB, so the config "
              f"adds {(rss_loaded - rss_empty) / 1024:.1f} MiB ({(rss_after - rss_empty) / 1024:.1f} after the churn)")
        print(f"churn: {changes[0]} endpoint changes in {churn_seconds} s ({changes[0] / churn_seconds:.0f}/s for {RATE}/s); {int(swaps)} swaps; event to swap p50 <= {quantile(buckets, 0.5)} s, "
              f"p99 <= {quantile(buckets, 0.99)} s")
        print(f"HBONE req/s, medians of {2 * ROUNDS} windows of {WINDOW} s per condition (steal in brackets):")
        for c in conditions:
            print(f"  churn {c:9}: {statistics.median(rates[c]):6.0f}  |", " ".join(f"{r:.0f} ({t:.0%})" for r, t in zip(rates[c], steals[c])))
        quiet = {c: [r for r, t in zip(rates[c], steals[c]) if t <= STEAL_MAX] for c in conditions}
        for label, over in (("here vs none (the target)", NONE), ("here vs elsewhere (the waypoint's own part)", ELSEWHERE)):
            ratio = statistics.median(rates[HERE]) / statistics.median(rates[over])
            text = f"  {label}: {ratio:.2f}x"
            if quiet[HERE] and quiet[over]:
                text += (f"; in windows with steal <= {STEAL_MAX:.0%}: {statistics.median(quiet[HERE]) / statistics.median(quiet[over]):.2f}x "
                         f"({len(quiet[HERE])} and {len(quiet[over])} windows)")
            print(text)
        print(f"main thread CPU during churn here: {cpu:.1f} s in {churn_seconds} s ({cpu / churn_seconds * 100:.0f}% of a core, "
              f"{cpu / max(changes[0], 1) * 1000:.2f} ms per change)")
        for c in conditions:
            per_request, others, api_cpu, worker_waited, load_waited = (statistics.median(x[i] for x in spent[c]) for i in range(5))
            print(f"  churn {c}, per window of {WINDOW} s (medians): worker {per_request:.1f} µs of CPU per request; "
                  f"the waypoint's other threads {others:.2f} s; this script (API server, churn, sinks) {api_cpu:.2f} s; waiting for a CPU: "
                  f"the worker {worker_waited:.2f} s, the load generator {load_waited:.2f} s")
        parse, compile_ = (m['waypoint_config_load_seconds{phase="%s"}' % phase] * 1000 for phase in ("parse", "compile"))
        print(f"last load: parse {parse:.0f} ms, compile {compile_:.0f} ms")
        print(f"collections read: {len(paths)}; in other namespaces: {len(foreign)}")
        print("last window without churn:", outputs[NONE][-1])
        print("last window with churn here:", outputs[HERE][-1])
        # a waypoint started with only the 9,000 far Services would read nothing more: none of their paths was asked
    finally:
        for p in procs:
            p.terminate()
        api.close()


if __name__ == "__main__":
    main()
