#!/usr/bin/env bash
# Proxy throughput with 1,000 route rules loaded vs 1, waypoint and haproxy side by side.
#
# waypoint: one HTTPRoute on service web with $RULES rules (40% Exact paths, 40% PathPrefix, 10% PathPrefix +
# header, 10% RegularExpression), each to origin b, plus a catch-all to origin a. haproxy: the same rules as
# ACLs (`path`, `path_beg`, `path_reg`, `req.hdr`), evaluated in order as haproxy does. The request hits an
# exact rule in the middle ($BENCH_PATH). The "-1" targets load only the catch-all and the same request.
# Proxies pinned to CPU $PROXY_CPU, wrk and the origins to CPU $LOAD_CPU; $RUNS rotated runs, medians.
set -euo pipefail
cd "$(dirname "$0")/.."
DUR=${DUR:-10}; RUNS=${RUNS:-3}; CONNS=${CONNS:-64}; PROXY_CPU=${PROXY_CPU:-0}; LOAD_CPU=${LOAD_CPU:-1}; RULES=${RULES:-1000}
TARGETS=${TARGETS:-"waypoint-1 waypoint-$RULES haproxy-1 haproxy-$RULES"}
ORIGIN_A=127.0.0.1:19081; ORIGIN_B=127.0.0.1:19082; PORT=19090
PROBE=$(( RULES / 2 / 10 * 10 ))
BENCH_PATH=${BENCH_PATH:-/svc$PROBE/api/items}

source benchmarks/lib.sh
bench_prepare routes wrk haproxy
start_origins $ORIGIN_A $ORIGIN_B

python3 - "$work" "$RULES" "${ORIGIN_A##*:}" "${ORIGIN_B##*:}" "$ORIGIN_A" "$ORIGIN_B" "$PORT" <<'PY'
import sys
work, rules, port_a, port_b, origin_a, origin_b, port = sys.argv[1], int(sys.argv[2]), *sys.argv[3:]
services = f"""apiVersion: v1
kind: Service
metadata: {{name: web}}
spec: {{ports: [{{name: http, port: 80}}]}}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {{name: web-a, labels: {{kubernetes.io/service-name: web}}}}
ports: [{{name: http, port: {port_a}}}]
endpoints: [{{addresses: [127.0.0.1]}}]
---
apiVersion: v1
kind: Service
metadata: {{name: web-b}}
spec: {{ports: [{{name: http, port: 80}}]}}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {{name: web-b, labels: {{kubernetes.io/service-name: web-b}}}}
ports: [{{name: http, port: {port_b}}}]
endpoints: [{{addresses: [127.0.0.1]}}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {{name: web}}
spec:
  parentRefs: [{{group: "", kind: Service, name: web}}]
  rules:
"""
def rule(i):
    kind = i % 10
    if kind < 4: return f"  - matches: [{{path: {{type: Exact, value: /svc{i}/api/items}}}}]\n", f"path /svc{i}/api/items"
    if kind < 8: return f"  - matches: [{{path: {{type: PathPrefix, value: /svc{i}/api}}}}]\n", f"path_beg /svc{i}/api/ || path /svc{i}/api"
    if kind == 8: return (f"  - matches: [{{path: {{type: PathPrefix, value: /svc{i}}}, headers: [{{name: x-canary, value: \"true\"}}]}}]\n",
                          f"path_beg /svc{i}/ || path /svc{i}")
    return f"  - matches: [{{path: {{type: RegularExpression, value: \"/re{i}/[0-9]+/detail\"}}}}]\n", f"path_reg ^/re{i}/[0-9]+/detail$"
for count in (1, rules):
    body, acls = "", []
    for i in range(count - 1):
        r, acl = rule(i)
        body += r + "    backendRefs: [{name: web-b, port: 80}]\n"
        acls.append((i, acl))
    body += "  - backendRefs: [{name: web, port: 80}]\n"
    open(f"{work}/waypoint-{count}.yaml", "w").write(services + body)
    lines = []
    for i, acl in acls:
        conds = acl.split(" || ")
        for c in conds:
            lines.append(f"  acl r{i} {c}")
        if i % 10 == 8:
            lines.append(f"  acl h{i} req.hdr(x-canary) -m str true")
            lines.append(f"  use_backend b if r{i} h{i}")
        else:
            lines.append(f"  use_backend b if r{i}")
    open(f"{work}/haproxy-{count}.cfg", "w").write(f"""global
  nbthread 1
  maxconn 4096
defaults
  mode http
  option http-keep-alive
  timeout connect 5s
  timeout client 60s
  timeout server 60s
frontend fe
  bind 127.0.0.1:{port}
""" + "\n".join(lines) + f"""
  default_backend a
backend a
  http-reuse always
  server a {origin_a}
backend b
  http-reuse always
  server b {origin_b}
""")
PY

start_target() {
    local name=$1 count=${1##*-}
    case $name in
        waypoint-*) taskset -c "$PROXY_CPU" "$BIN" run --config "$work/waypoint-$count.yaml" --http-listen 127.0.0.1:$PORT \
                        --admin-listen 127.0.0.1:19091 --workers 1 --access-log off >/dev/null 2>"$work/$name.log" & echo $! ;;
        haproxy-*) taskset -c "$PROXY_CPU" haproxy -db -f "$work/haproxy-$count.cfg" >/dev/null 2>"$work/$name.log" & echo $! ;;
    esac
}

results="$work/results.tsv"
printf 'target\trun\trps\tp50_ms\tp99_ms\tcpu_us_per_req\n' > "$results"
for run in $(seq "$RUNS"); do
    for target in $(rotation "$run" $TARGETS); do
        pid=$(start_target "$target")
        wait_port "$PORT"
        sleep 0.5
        taskset -c "$LOAD_CPU" wrk -t1 -c"$CONNS" -d1s -H 'Host: web' "http://127.0.0.1:$PORT$BENCH_PATH" >/dev/null
        before=$(cpu_ticks "$pid")
        taskset -c "$LOAD_CPU" wrk -t1 -c"$CONNS" -d"${DUR}s" --latency -H 'Host: web' "http://127.0.0.1:$PORT$BENCH_PATH" > "$work/wrk-$target-$run.txt"
        after=$(cpu_ticks "$pid")
        kill "$pid"; wait "$pid" 2>/dev/null || true
        printf '%s\t%s\t%s\n' "$target" "$run" "$(wrk_row "$work/wrk-$target-$run.txt" "$target" "$before" "$after")" >> "$results"
    done
done

python3 - "$results" <<'PY'
import csv, statistics, sys
rows = list(csv.DictReader(open(sys.argv[1]), delimiter="\t"))
targets = []
for r in rows:
    if r["target"] not in targets: targets.append(r["target"])
med = {t: {k: statistics.median(float(r[k]) for r in rows if r["target"] == t) for k in ["rps", "p99_ms", "cpu_us_per_req"]}
       for t in targets}
print(f"\nmedians of {len(rows) // len(targets)} runs each")
print("| target | req/s | p99 ms | proxy CPU µs/req | ÷ same proxy with 1 rule |")
print("|---|---|---|---|---|")
for t in targets:
    base = med.get(t.rsplit("-", 1)[0] + "-1")
    ratio = med[t]["rps"] / base["rps"] if base else 0
    print(f"| {t} | {med[t]['rps']:.0f} | {med[t]['p99_ms']:.2f} | {med[t]['cpu_us_per_req']:.1f} | {ratio:.2f} |")
PY
echo "raw results: $results"
