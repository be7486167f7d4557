#!/usr/bin/env python3
"""Soak: SOAK_SECONDS (default 600) of mixed load on one waypoint (2 workers), while its config is reloaded every
10 s and one of web's two origins is killed for 5 s every 30 s. RSS, open file descriptors and threads are
sampled every second into benchmarks/results/soak.csv and plotted to benchmarks/results/soak.png.

Load, all on loopback and all ending by itself:
- HBONE tunnels carrying HTTP/1.1 (`waypoint hbone-load`, 4 connections x 8 tunnels) to service web;
- plaintext HTTP/1.1 (`wrk -c16`) to web;
- h2c in HBONE tunnels to service grpc (an h2c origin), a new tunnel every 20 requests;
- byte-stream (TCP) tunnels to service raw, one request each;
- a new mTLS connection per request (`waypoint hbone-load --churn`);
- clients that abort mid-body (a plaintext POST cut after 10 KB; a tunnel reset mid-request).

Pass: the proxy never exits; RSS at the end <= 1.1x RSS at minute 2; open fds at the end within 16 of the fds
at minute 2; threads constant; no request fails except those routed to the killed origin during its outage
(`istio_requests_total` with a 5xx code, read every second, grows only then; retries take most of them to the
live endpoint, within the retry budget) and the deliberately aborted ones.
Usage: python3 benchmarks/soak.py   (after `make release`; needs wrk and, for the plot, matplotlib)
"""
import csv
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "Tests", "EndToEnd"))
import pki                                   # noqa: E402  (the test PKI: SPIFFE certificates)
from conftest import free_port               # noqa: E402
from hbone import HBONEClient, get           # noqa: E402
from test_h2c import H2COrigin, InnerH2      # noqa: E402

BIN = os.path.join(ROOT, ".build", "release", "waypoint")
SECONDS = int(os.environ.get("SOAK_SECONDS", "600"))
RESULTS = os.path.join(ROOT, "benchmarks", "results")
WEB, GRPC, RAW = "10.96.0.10", "10.96.0.11", "10.96.0.12"


def origin(port, name):
    return subprocess.Popen([BIN, "origin", "--listen", f"127.0.0.1:{port}", "--name", name],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def config(stable, flaky, h2c, generation):
    """web (two origins), grpc (h2c), raw (a TCP port on the stable origin); the route's header changes on
    every reload so that each reload compiles a new snapshot."""
    def service(name, vip, port_name, endpoints, app_protocol=""):
        proto = f", appProtocol: {app_protocol}" if app_protocol else ""
        slices = "".join(f"""---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {{name: {name}-{i}, namespace: default, labels: {{kubernetes.io/service-name: {name}}}}}
addressType: IPv4
ports: [{{name: {port_name}, port: {port}}}]
endpoints: [{{addresses: [127.0.0.1]}}]
""" for i, port in enumerate(endpoints))
        return f"""---
apiVersion: v1
kind: Service
metadata: {{name: {name}, namespace: default}}
spec:
  clusterIP: {vip}
  ports: [{{name: {port_name}, port: 80{proto}}}]
""" + slices
    route = f"""---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {{name: web, namespace: default}}
spec:
  parentRefs: [{{group: "", kind: Service, name: web, port: 80}}]
  rules:
  - filters: [{{type: RequestHeaderModifier, requestHeaderModifier: {{set: [{{name: x-generation, value: "{generation}"}}]}}}}]
    backendRefs: [{{name: web, port: 80}}]
"""
    return (service("web", WEB, "http", [stable, flaky]) + service("grpc", GRPC, "grpc", [h2c], "kubernetes.io/h2c")
            + service("raw", RAW, "tcp", [stable]) + route)


class Counts:
    def __init__(self):
        self.lock = threading.Lock()
        self.ok, self.failed, self.aborted = {}, {}, 0

    def add(self, kind, ok, detail=""):
        with self.lock:
            if ok:
                self.ok[kind] = self.ok.get(kind, 0) + 1
            else:
                self.failed.setdefault(kind, []).append(detail)


def h2c_load(port, certs, counts, stop):
    c = None
    while not stop.is_set():
        try:
            c = HBONEClient(port, *certs["frontend"], certs["ca"], timeout=5)
            sid = c.connect(f"{GRPC}:80")
            if c.status(sid) != 200:
                counts.add("h2c", False, f"CONNECT {c.status(sid)}")
                continue
            inner = InnerH2(c, sid)
            for i in range(20):
                stream = inner.request(f"/grpc/{i}")
                status = inner.wait(stream).get(":status")
                counts.add("h2c", status == "200" and inner.trailers.get(stream, {}).get("grpc-status") == "0", f"status {status}")
            c.close()
        except Exception as error:
            counts.add("h2c", False, repr(error))
            if c:
                c.close()


def tcp_load(port, certs, counts, stop):
    while not stop.is_set():
        try:
            c = HBONEClient(port, *certs["frontend"], certs["ca"], timeout=5)
            sid = c.connect(f"{RAW}:80")
            ok = c.status(sid) == 200 and c.http(sid, get("/raw", host="web")).startswith(b"HTTP/1.1 200")
            counts.add("tcp", ok, "tcp tunnel")
            c.close()
        except Exception as error:
            counts.add("tcp", False, repr(error))


def abort_load(http_port, hbone_port, certs, counts, stop):
    while not stop.is_set():
        try:
            s = socket.create_connection(("127.0.0.1", http_port), timeout=5)
            s.sendall(b"POST /upload HTTP/1.1\r\nHost: web\r\nContent-Length: 1000000\r\n\r\n" + b"x" * 10000)
            s.close()
            c = HBONEClient(hbone_port, *certs["frontend"], certs["ca"], timeout=5)
            sid = c.connect(f"{WEB}:80")
            c.status(sid)
            c.send(sid, b"POST /upload HTTP/1.1\r\nHost: web\r\nContent-Length: 100000\r\n\r\n" + b"y" * 5000)
            c.conn.reset_stream(sid)
            c.flush()
            c.sock.close()
            with counts.lock:
                counts.aborted += 2
        except Exception as error:
            counts.add("abort-setup", False, repr(error))
        time.sleep(0.05)


def sample(pid, admin_port):
    """RSS (KiB), open fds, threads, and requests answered 5xx so far (Istio's standard metric)."""
    with open(f"/proc/{pid}/status") as f:
        status = f.read()
    rss = int(re.search(r"VmRSS:\s+(\d+)", status).group(1))
    threads = int(re.search(r"Threads:\s+(\d+)", status).group(1))
    s = socket.create_connection(("127.0.0.1", admin_port), timeout=5)
    s.sendall(b"GET /stats/prometheus HTTP/1.1\r\nHost: admin\r\nConnection: close\r\n\r\n")
    text = b""
    while chunk := s.recv(65536):
        text += chunk
    s.close()
    failed = sum(float(m.group(1)) for m in re.finditer(rb'istio_requests_total\{[^}]*response_code="5\d\d"[^}]*\} (\S+)', text))
    return rss, len(os.listdir(f"/proc/{pid}/fd")), threads, int(failed)


def sockets(pid):
    """The proxy's TCP sockets by state and the far side's port (where an fd growth would come from)."""
    out = subprocess.run(["ss", "-tanpH"], capture_output=True, text=True).stdout
    counts = {}
    for line in out.splitlines():
        if f"pid={pid}," in line:
            fields = line.split()
            key = f"{fields[0]} ->{fields[4].rsplit(':', 1)[1]}"
            counts[key] = counts.get(key, 0) + 1
    return dict(sorted(counts.items(), key=lambda kv: -kv[1]))


def main():
    os.makedirs(RESULTS, exist_ok=True)
    work = tempfile.mkdtemp(prefix="waypoint-soak-")
    certs = pki.make(work)
    stable_port, flaky_port = free_port(), free_port()
    processes = [origin(stable_port, "stable")]
    flaky = origin(flaky_port, "flaky")
    h2c = H2COrigin()
    config_dir = os.path.join(work, "config")
    os.mkdir(config_dir)
    config_file = os.path.join(config_dir, "c.yaml")
    with open(config_file, "w") as f:
        f.write(config(stable_port, flaky_port, h2c.port, 0))
    http_port, hbone_port, admin_port = free_port(), free_port(), free_port()
    cert, key = certs["waypoint"]
    proxy = subprocess.Popen([BIN, "run", "--config", config_dir, "--http-listen", f"127.0.0.1:{http_port}",
                              "--hbone-listen", f"127.0.0.1:{hbone_port}", "--admin-listen", f"127.0.0.1:{admin_port}",
                              "--cert", cert, "--key", key, "--ca", certs["ca"], "--workers", "2", "--access-log", "off"],
                             stdout=subprocess.DEVNULL, stderr=open(os.path.join(work, "proxy.stderr"), "w"))
    time.sleep(1)
    stop = threading.Event()
    counts = Counts()
    hbone = [BIN, "hbone-load", "--connect", f"127.0.0.1:{hbone_port}", "--cert", certs["frontend"][0],
             "--key", certs["frontend"][1], "--ca", certs["ca"], "--host", "web", "-d", f"{SECONDS}s"]
    loads = [
        subprocess.Popen(hbone + ["--authority", f"{WEB}:80", "-c", "4", "-s", "8"], stdout=subprocess.PIPE, text=True),
        subprocess.Popen(hbone + ["--authority", f"{WEB}:80", "--churn", "-c", "1", "-s", "1"], stdout=subprocess.PIPE, text=True),
        subprocess.Popen(["wrk", "-t1", "-c16", f"-d{SECONDS}s", "-H", "Host: web", f"http://127.0.0.1:{http_port}/"],
                         stdout=subprocess.PIPE, text=True),
    ]
    threads = [threading.Thread(target=h2c_load, args=(hbone_port, certs, counts, stop)),
               threading.Thread(target=tcp_load, args=(hbone_port, certs, counts, stop)),
               threading.Thread(target=abort_load, args=(http_port, hbone_port, certs, counts, stop))]
    for t in threads:
        t.start()
    samples = []
    sockets_at_two = {}
    start = time.time()
    flaky_down_since = None
    outages = []                                                   # seconds the flaky origin was down, give or take one
    while (elapsed := time.time() - start) < SECONDS:
        second = int(elapsed)
        if proxy.poll() is not None:
            break
        samples.append((second, *sample(proxy.pid, admin_port)))
        if second == 120:
            sockets_at_two = sockets(proxy.pid)
        if second % 10 == 9:                                       # reload: a new snapshot
            with open(config_file + ".new", "w") as f:
                f.write(config(stable_port, flaky_port, h2c.port, second))
            os.replace(config_file + ".new", config_file)
            proxy.send_signal(signal.SIGHUP)
        if second % 30 == 15 and flaky_down_since is None:         # the flaky origin dies...
            flaky.kill()
            flaky.wait()
            flaky_down_since = second
        elif flaky_down_since is not None and second - flaky_down_since >= 5:   # ...and comes back 5 s later
            flaky = origin(flaky_port, "flaky")
            outages.append((flaky_down_since, second + 1))
            flaky_down_since = None
        time.sleep(max(0, second + 1 - (time.time() - start)))
    sockets_at_end = sockets(proxy.pid)
    stop.set()
    outputs = [load.communicate(timeout=60)[0] for load in loads]
    for t in threads:
        t.join(timeout=30)
    alive = proxy.poll() is None
    for p in [proxy, flaky] + processes:
        p.kill()

    with open(os.path.join(RESULTS, "soak.csv"), "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["second", "rss_kib", "fds", "threads", "failed_5xx_total"])
        writer.writerows(samples)
    at_two = next((s for s in samples if s[0] >= 120), samples[0])
    last = samples[-1]
    if flaky_down_since is not None:
        outages.append((flaky_down_since, last[0] + 1))
    in_outage = lambda second: any(a <= second <= b + 1 for a, b in outages)
    failures = [(b[0], b[4] - a[4]) for a, b in zip(samples, samples[1:]) if b[4] > a[4]]
    unexpected = [(second, n) for second, n in failures if not in_outage(second)]
    report = [
        f"duration {last[0] + 1} s, proxy alive at the end: {alive}",
        f"RSS: {at_two[1]} KiB at {at_two[0]} s, {last[1]} KiB at the end ({last[1] / at_two[1]:.3f}x), max {max(s[1] for s in samples)} KiB",
        f"fds: {at_two[2]} at {at_two[0]} s, {last[2]} at the end; threads: {sorted({s[3] for s in samples})}",
        f"TCP sockets at 120 s: {sockets_at_two}",
        f"TCP sockets at the end: {sockets_at_end}",
        "hbone-load (HTTP/1.1 in tunnels): " + outputs[0].strip(),
        "hbone-load --churn (handshake per request): " + outputs[1].strip(),
        "wrk (plaintext): " + " ".join(line.strip() for line in outputs[2].splitlines() if "requests in" in line or "Non-2xx" in line or "errors" in line),
        f"h2c requests ok {counts.ok.get('h2c', 0)}, TCP tunnels ok {counts.ok.get('tcp', 0)}, aborted on purpose {counts.aborted}",
        f"5xx answers: {sum(n for _, n in failures)} during the {len(outages)} outages of 5 s, {sum(n for _, n in unexpected)} outside them {unexpected[:5]}",
        f"failed: { {k: (len(v), v[:3]) for k, v in counts.failed.items()} }",
    ]
    print("\n".join(report))
    with open(os.path.join(RESULTS, "soak.txt"), "w") as f:
        f.write("\n".join(report) + "\n")
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        fig, (a, b) = plt.subplots(2, 1, sharex=True, figsize=(9, 5))
        a.plot([s[0] for s in samples], [s[1] / 1024 for s in samples])
        a.set_ylabel("RSS (MiB)")
        a.set_ylim(bottom=0)
        b.plot([s[0] for s in samples], [s[2] for s in samples], label="open fds")
        b.plot([s[0] for s in samples], [s[3] for s in samples], label="threads")
        b.set_ylabel("count")
        b.set_xlabel("seconds")
        b.legend()
        a.set_title("waypoint soak: mixed load, reloads every 10 s, an origin killed every 30 s")
        fig.tight_layout()
        fig.savefig(os.path.join(RESULTS, "soak.png"), dpi=80)
    except ImportError:
        print("matplotlib missing: no plot (pip install matplotlib)")
    shutil.rmtree(work, ignore_errors=True)
    ok = (alive and last[1] <= 1.1 * at_two[1] and abs(last[2] - at_two[2]) <= 16 and len({s[3] for s in samples}) == 1
          and not counts.failed and not unexpected)
    print("PASS" if ok else "FAIL")
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
