#!/usr/bin/env python3
"""The certificate from the mesh CA, under load (issue 16's benchmark). A stand-in istiod (Tests/EndToEnd/
fake_istiod.py: grpcio over TLS, on loopback) issues short-lived certificates so that renewals happen during
the run; the waypoint runs one worker; `waypoint hbone-load` on the other core.

1. Handshakes per second (`hbone-load --churn`: one mTLS connection per request) with the certificate from the
   CA against the same waypoint with certificate files from the test PKI (both EC P-256), alternated A B B A,
   ROUNDS times each; medians. Target: the same within noise.
2. Renewal under full load: 1-second windows of keep-alive HBONE load for WINDOWS seconds while the CA
   renews every ~LIFETIME/2 s; p99 of the windows in which a renewal landed against those without, and the
   errors of all windows. Target: no failed request, no visible p99 step.
Usage: python3 benchmarks/mesh_ca.py   (after `make release`; ROUNDS=3 WINDOWS=30 LIFETIME=6 by default)
"""
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "Tests", "EndToEnd"))
import pki                                    # noqa: E402  (the test PKI)
from fake_istiod import FakeIstiod            # noqa: E402  (the stand-in istiod)

BIN = os.path.join(ROOT, ".build", "release", "waypoint")
ROUNDS = int(os.environ.get("ROUNDS", "3"))
WINDOWS = int(os.environ.get("WINDOWS", "30"))
LIFETIME = int(os.environ.get("LIFETIME", "6"))
VIP = "10.96.0.10"


def config(origin_port):
    return f"""
apiVersion: v1
kind: Service
metadata: {{name: web, namespace: default}}
spec: {{clusterIP: {VIP}, ports: [{{name: http, port: 80}}]}}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {{name: web-1, namespace: default, labels: {{kubernetes.io/service-name: web}}}}
addressType: IPv4
ports: [{{name: http, port: {origin_port}}}]
endpoints: [{{addresses: [127.0.0.1]}}]
"""


def start_waypoint(work, name, identity_args, origin_port):
    path = os.path.join(work, f"{name}.yaml")
    with open(path, "w") as f:
        f.write(config(origin_port))
    log = open(os.path.join(work, f"{name}.log"), "w")
    proc = subprocess.Popen(["taskset", "-c", "0", BIN, "run", "--config", path, "--workers", "1", "--access-log", "off",
                             "--http-listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0",
                             "--hbone-listen", "127.0.0.1:0", *identity_args], stderr=log)
    deadline = time.time() + 10
    while True:
        text = open(log.name).read()
        m = re.search(r"admin=127\.0\.0\.1:(\d+).*hbone=127\.0\.0\.1:(\d+)", text)
        if m:
            admin, hbone = int(m.group(1)), int(m.group(2))
            break
        assert time.time() < deadline and proc.poll() is None, text
        time.sleep(0.05)
    while get(admin, "/healthz/ready")[0] != 200:
        assert time.time() < deadline, open(log.name).read()
        time.sleep(0.05)
    return proc, admin, hbone


def get(port, path):
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def renewals(admin):
    text = get(admin, "/stats/prometheus")[1]
    return int(re.search(r'waypoint_certificate_renewals_total\{result="success"\} (\d+)', text).group(1))


def load(hbone, client, seconds, churn=False):
    """One `hbone-load` run: (requests per second, p99 µs, errors)."""
    cert, key, ca = client
    out = subprocess.run(["taskset", "-c", "1", BIN, "hbone-load", "-c", "4", "-s", "16", "-d", f"{seconds}s",
                          "--connect", f"127.0.0.1:{hbone}", "--authority", f"{VIP}:80", "--cert", cert, "--key", key,
                          "--ca", ca, *(["--churn", "-c", "8", "-s", "1"] if churn else [])],
                         capture_output=True, text=True).stdout
    rate = float(re.search(r"rps=(\d+)", out).group(1))
    p99 = float(re.search(r"p99_us=(\d+)", out).group(1))
    errors = re.search(r"errors=(\S+)", out).group(1)
    return rate, p99, 0 if errors == "none" else sum(int(kv.split("=")[1]) for kv in errors.split(","))


def main():
    work = tempfile.mkdtemp(prefix="waypoint-mesh-ca-")
    files = pki.make(work)
    istiod = FakeIstiod(work, lifetime=LIFETIME)
    token = os.path.join(work, "istio-token")
    with open(token, "w") as f:
        f.write(istiod.allow("default", "waypoint"))
    origin = subprocess.Popen(["taskset", "-c", "1", BIN, "origin", "--listen", "127.0.0.1:19391"], stderr=subprocess.DEVNULL)
    procs = [origin]
    try:
        from_files = start_waypoint(work, "files", ["--cert", files["waypoint"][0], "--key", files["waypoint"][1],
                                                    "--ca", files["ca"]], 19391)
        from_ca = start_waypoint(work, "ca", ["--ca-address", f"127.0.0.1:{istiod.port}", "--ca-server-name",
                                              FakeIstiod.SERVER_NAME, "--ca-root", istiod.root_path, "--ca-token-file",
                                              token], 19391)
        procs += [from_files[0], from_ca[0]]
        file_client = (*files["frontend"], files["ca"])
        ca_client = (*istiod.client_certificate(work, "default", "frontend"), istiod.root_path)

        rates = {"files": [], "ca": []}
        for order in [("files", "ca"), ("ca", "files")] * ROUNDS:
            for name in order:
                waypoint, client = (from_files, file_client) if name == "files" else (from_ca, ca_client)
                rates[name].append(load(waypoint[2], client, 5, churn=True)[0])
        files_rate, ca_rate = statistics.median(rates["files"]), statistics.median(rates["ca"])
        print(f"handshakes/s, medians of {2 * ROUNDS}: certificate files {files_rate:,.0f}, from the CA {ca_rate:,.0f} "
              f"(x{ca_rate / files_rate:.2f})")

        quiet, renewing, errors, windows = [], [], 0, []
        for _ in range(WINDOWS):
            before = renewals(from_ca[1])
            rate, p99, failed = load(from_ca[2], ca_client, 1)
            renewed = renewals(from_ca[1]) - before
            (renewing if renewed else quiet).append(p99)
            errors += failed
            windows.append((rate, p99, renewed))
        print(f"renewal under load: {len(renewing)} of {WINDOWS} 1-s windows had a renewal; p99 median "
              f"{statistics.median(renewing) if renewing else float('nan'):.0f} us with, "
              f"{statistics.median(quiet) if quiet else float('nan'):.0f} us without; errors {errors}; "
              f"req/s median {statistics.median(w[0] for w in windows):,.0f}; renewals {renewals(from_ca[1])}")
    finally:
        for p in procs:
            p.kill()
        istiod.stop()


if __name__ == "__main__":
    main()
