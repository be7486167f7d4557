#!/usr/bin/env python3
"""Memory per idle HBONE tunnel: opens N tunnels (100 per connection, the lower of nghttpx's and ztunnel's
stream limits), waits for every 200, and prints the growth of the server processes' RSS per tunnel in bytes."""
import argparse
import os
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "Tests", "EndToEnd"))
from hbone import HBONEClient  # noqa: E402


def rss_kib(pids):
    total = 0
    for pid in pids:
        todo = [pid]
        while todo:
            p = todo.pop()
            try:
                for line in open(f"/proc/{p}/status"):
                    if line.startswith("VmRSS:"):
                        total += int(line.split()[1])
                for task in os.listdir(f"/proc/{p}/task"):
                    todo += [int(c) for c in open(f"/proc/{p}/task/{task}/children").read().split()]
            except OSError:
                pass
    return total


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--authority", required=True)
    ap.add_argument("--tunnels", type=int, default=10000)
    ap.add_argument("--per-connection", type=int, default=100)
    ap.add_argument("--cert", required=True)
    ap.add_argument("--key", required=True)
    ap.add_argument("--ca", required=True)
    ap.add_argument("--pids", type=int, nargs="+", required=True)
    args = ap.parse_args()
    before = rss_kib(args.pids)
    clients, opened = [], 0
    while opened < args.tunnels:
        c = HBONEClient(args.port, args.cert, args.key, args.ca, timeout=30)
        n = min(args.per_connection, args.tunnels - opened)
        sids = [c.connect(args.authority) for _ in range(n)]
        c.wait(lambda: all(s in c.responses or s in c.resets for s in sids))
        opened += sum(1 for s in sids if c.responses.get(s, (0,))[0] == 200)
        clients.append(c)
        if len(clients) * args.per_connection > args.tunnels * 2:
            break
    time.sleep(1)
    after = rss_kib(args.pids)
    print(int((after - before) * 1024 / max(opened, 1)) if opened >= args.tunnels else f"only-{opened}-opened")
    for c in clients:
        c.close()


if __name__ == "__main__":
    main()
