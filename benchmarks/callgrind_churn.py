#!/usr/bin/env python3
"""Instructions per API event, counted by callgrind, for the two kinds of threads that follow the API server: the
watchers (reading and decoding the watch streams) and the main thread (parsing the changed objects, updating
and swapping snapshots). The stand-in API server (Tests/EndToEnd/fake_apiserver.py) serves the namespace of
kubernetes_churn.py (1,000 Services, 10 endpoints each); after the waypoint is ready, instrumentation is turned
on and EVENTS (300) EndpointSlice changes of 10 endpoints each are applied in bursts of BURST (10), PAUSE (1.0)
seconds apart, so that each burst is one swap (the waypoint coalesces changes for 100 ms) and builds compare
at the same number of swaps. Prints, per thread, its instructions per event (and the main thread's per swap). Instruction counts repeat on a
loaded machine, unlike times: compare builds with this, and the churn's cost in seconds with kubernetes_churn.py.
Usage: python3 benchmarks/callgrind_churn.py [BINARY]   (default .build/release/waypoint; KEEP_OUT=PREFIX keeps
the callgrind files as PREFIX-NN)
"""
import glob
import os
import random
import re
import shutil
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "Tests", "EndToEnd"))
sys.path.insert(0, os.path.join(ROOT, "benchmarks"))
import pki                                          # noqa: E402  (the test PKI)
from fake_apiserver import FakeAPIServer            # noqa: E402  (the stand-in API server)
from kubernetes_churn import endpoint_slice, service, metrics, ready   # noqa: E402

BIN = os.path.realpath(sys.argv[1] if len(sys.argv) > 1 else os.path.join(ROOT, ".build", "release", "waypoint"))
EVENTS = int(os.environ.get("EVENTS", "300"))
BURST = int(os.environ.get("BURST", "10"))
PAUSE = float(os.environ.get("PAUSE", "1.0"))


def main():
    if shutil.which("valgrind") is None:
        subprocess.check_call(["apt-get", "install", "-y", "-qq", "valgrind"])
    work = tempfile.mkdtemp(prefix="waypoint-callgrind-churn-")
    certs = pki.make(work)
    api = FakeAPIServer(certs)
    proxy = None
    try:
        api.apply({"apiVersion": "v1", "kind": "Namespace",
                   "metadata": {"name": "default", "labels": {"istio.io/use-waypoint": "waypoint"}}})
        for i in range(1000):
            api.apply(service(f"svc-{i}", "default", f"10.97.{i // 250}.{i % 250 + 1}"))
            api.apply(endpoint_slice(f"svc-{i}-1", f"svc-{i}", "default",
                                     [f"10.{i // 250 + 10}.{i % 250}.{e + 1}" for e in range(10)], 8080))
        binary = os.path.join(work, "waypoint")
        subprocess.check_call(["strip", "--strip-debug", "-o", binary, BIN])   # valgrind cannot read Swift 6.3's DWARF
        out = os.path.join(work, "callgrind.out")
        proxy = subprocess.Popen(["valgrind", "--tool=callgrind", "--instr-atstart=no", "--separate-threads=yes",
                                  f"--callgrind-out-file={out}", binary, "run", "--kubeconfig", api.kubeconfig(work),
                                  "--workers", "1", "--http-listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0",
                                  "--hbone-listen", "127.0.0.1:0", "--access-log", "off", "--cert", f"{work}/waypoint.pem",
                                  "--key", f"{work}/waypoint.key", "--ca", f"{work}/ca.pem"],
                                 stderr=subprocess.PIPE, text=True)
        line = ""
        while "ready" not in line:
            line = proxy.stderr.readline()
            if not line and proxy.poll() is not None:
                raise SystemExit("the waypoint exited before it was ready")
        admin = int(re.search(r"admin=127\.0\.0\.1:(\d+)", line).group(1))
        while not ready(admin):
            time.sleep(0.1)
        time.sleep(3)                                    # the start-up snapshots are freed
        swaps_before = metrics(admin)["waypoint_kubernetes_event_to_swap_seconds_count"]
        subprocess.check_call(["callgrind_control", "-i", "on", str(proxy.pid)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        random.seed(1)
        for n in range(EVENTS):
            i = random.randrange(1000)
            api.apply(endpoint_slice(f"svc-{i}-1", f"svc-{i}", "default",
                                     [f"10.{i // 250 + 10}.{i % 250}.{random.randrange(1, 250)}" for _ in range(10)], 8080))
            if n % BURST == BURST - 1:
                time.sleep(PAUSE)
        time.sleep(2)                                    # the last changes compiled and swapped
        subprocess.check_call(["callgrind_control", "-i", "off", str(proxy.pid)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        swaps = metrics(admin)["waypoint_kubernetes_event_to_swap_seconds_count"] - swaps_before
        proxy.terminate()
        proxy.wait()
        files = sorted(glob.glob(out + "-*"))
        totals = []
        for path in files:
            with open(path, errors="replace") as f:
                text = f.read()
            found = re.search(r"^totals: (\d+)", text, re.M)   # none: the thread ran nothing counted
            total = int(found.group(1)) if found else 0
            thread = int(re.search(r"^thread: (\d+)", text, re.M).group(1))
            kind = "main" if thread == 1 else ("watcher" if "KindWatcher" in text else "other")
            totals.append((thread, kind, total))
            if os.environ.get("KEEP_OUT"):
                shutil.copy(path, f"{os.environ['KEEP_OUT']}-{thread:02d}")
        print(f"{EVENTS} EndpointSlice changes in bursts of {BURST}; {int(swaps)} swaps")
        main_total = sum(t for _, kind, t in totals if kind == "main")
        watcher = max(t for _, kind, t in totals if kind == "watcher")
        rest = sum(t for _, kind, t in totals if kind != "main") - watcher
        print(f"  main thread: {main_total // EVENTS:,} instructions per event ({main_total // max(int(swaps), 1):,} per swap)")
        print(f"  the EndpointSlice watcher: {watcher // EVENTS:,} per event")
        print(f"  every other thread (idle watchers, the worker taking the swaps): {rest // EVENTS:,} per event")
    finally:
        if proxy and proxy.poll() is None:
            proxy.kill()
        api.close()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
