#!/usr/bin/env bash
# Side-by-side HTTP/1.1 reverse-proxy benchmark: waypoint vs haproxy vs nginx, same routing, same origins.
#
# The proxy under test is pinned to CPU $PROXY_CPU (default 0); wrk and the two `waypoint origin` servers share
# CPU $LOAD_CPU (default 1). Each run starts the proxy fresh, measures idle RSS, runs wrk for $DUR seconds
# (default 10) with $CONNS connections (default 64), and records req/s, p50, p99, RSS under load and the
# proxy's CPU time per request. Targets are rotated run by run ($RUNS, default 3) and medians are reported,
# with each peer's ratio to waypoint. Machines here are noisy: compare ratios within one run of this script.
#
# Target `waypoint-base` runs BASE_BIN (an older build) for a before/after in one run.
#
# Routing (all three): Host web; path prefix /api or header `x-route: b` -> origin b, everything else -> origin a.
set -euo pipefail
cd "$(dirname "$0")/.."
DUR=${DUR:-10}; RUNS=${RUNS:-3}; CONNS=${CONNS:-64}; PROXY_CPU=${PROXY_CPU:-0}; LOAD_CPU=${LOAD_CPU:-1}
PATH_UNDER_TEST=${BENCH_PATH:-/}
TARGETS=${TARGETS:-"direct waypoint haproxy nginx"}
ORIGIN_A=127.0.0.1:19081; ORIGIN_B=127.0.0.1:19082; PORT=19090

source benchmarks/lib.sh
bench_prepare bench wrk haproxy nginx-light

# --- origins
start_origins $ORIGIN_A $ORIGIN_B

# --- peer configs, written here so the benchmark stands on its own
write_waypoint_config "$work/waypoint.yaml" "${ORIGIN_A##*:}" "${ORIGIN_B##*:}"
write_haproxy_config "$work/haproxy.cfg" 127.0.0.1:$PORT $ORIGIN_A $ORIGIN_B
mkdir -p "$work/nginx"
cat > "$work/nginx/nginx.conf" <<CFG
worker_processes 1;
pid $work/nginx/nginx.pid;
error_log $work/nginx/error.log warn;
events { worker_connections 4096; }
http {
  access_log off;
  keepalive_requests 10000000;
  upstream a { server $ORIGIN_A; keepalive 128; }
  upstream b { server $ORIGIN_B; keepalive 128; }
  map \$http_x_route \$route { b b; default a; }
  proxy_http_version 1.1;
  proxy_set_header Connection "";
  proxy_set_header Host \$host;
  proxy_buffering off;
  server {
    listen 127.0.0.1:$PORT;
    location /api { proxy_pass http://b; }
    location / { proxy_pass http://\$route; }
  }
}
CFG

start_target() { # name -> echoes pid (empty for direct); stdout goes to files so $(...) does not wait for it
    case $1 in
        direct) echo "" ;;
        waypoint|waypoint-base)
            bin=$BIN; [ "$1" = waypoint ] || bin=${BASE_BIN:?waypoint-base needs BASE_BIN, an older build}
            taskset -c "$PROXY_CPU" "$bin" run --config "$work/waypoint.yaml" --http-listen 127.0.0.1:$PORT \
                --admin-listen 127.0.0.1:19091 --workers 1 --access-log off >/dev/null 2>"$work/waypoint.log" & echo $! ;;
        haproxy) taskset -c "$PROXY_CPU" haproxy -db -f "$work/haproxy.cfg" >/dev/null 2>"$work/haproxy.log" & echo $! ;;
        nginx) taskset -c "$PROXY_CPU" nginx -e "$work/nginx/error.log" -p "$work/nginx" -c "$work/nginx/nginx.conf" -g 'daemon off;' >/dev/null 2>&1 & echo $! ;;
    esac
}

results="$work/results.tsv"
printf 'target\trun\trps\tp50_ms\tp99_ms\tcpu_us_per_req\tidle_rss_kib\tload_rss_kib\n' > "$results"
for run in $(seq "$RUNS"); do
    for target in $(rotation "$run" $TARGETS); do
        pid=$(start_target "$target")
        port=$PORT; [ "$target" = direct ] && port=19081
        wait_port "$port"
        sleep 0.5
        idle=0; [ -n "$pid" ] && idle=$(rss_kib "$pid")
        # one warm-up second so every proxy has its upstream connections open
        taskset -c "$LOAD_CPU" wrk -t1 -c"$CONNS" -d1s -H 'Host: web' "http://127.0.0.1:$port$PATH_UNDER_TEST" >/dev/null
        before=0; [ -n "$pid" ] && before=$(cpu_ticks "$pid")
        taskset -c "$LOAD_CPU" wrk -t1 -c"$CONNS" -d"${DUR}s" --latency -H 'Host: web' "http://127.0.0.1:$port$PATH_UNDER_TEST" > "$work/wrk-$target-$run.txt" &
        wrk_pid=$!
        sleep $(( DUR / 2 ))
        load=0; [ -n "$pid" ] && load=$(rss_kib "$pid")
        wait $wrk_pid
        after=0; [ -n "$pid" ] && after=$(cpu_ticks "$pid")
        [ -n "$pid" ] && { kill "$pid"; wait "$pid" 2>/dev/null || true; }
        printf '%s\t%s\t%s\t%s\t%s\n' "$target" "$run" "$(wrk_row "$work/wrk-$target-$run.txt" "$target" "$before" "$after")" "$idle" "$load" >> "$results"
    done
done

python3 - "$results" <<'PY'
import csv, statistics, sys
rows = list(csv.DictReader(open(sys.argv[1]), delimiter="\t"))
targets = []
for r in rows:
    if r["target"] not in targets: targets.append(r["target"])
med = {t: {k: statistics.median(float(r[k]) for r in rows if r["target"] == t)
           for k in ["rps", "p50_ms", "p99_ms", "idle_rss_kib", "load_rss_kib", "cpu_us_per_req"]} for t in targets}
print(f"\nmedians of {len(rows) // len(targets)} runs each")
print("| target | req/s | p50 ms | p99 ms | idle RSS MiB | load RSS MiB | proxy CPU µs/req | waypoint req/s ÷ this |")
print("|---|---|---|---|---|---|---|---|")
for t in targets:
    m = med[t]
    ratio = med["waypoint"]["rps"] / m["rps"] if "waypoint" in med and m["rps"] else 0
    print(f"| {t} | {m['rps']:.0f} | {m['p50_ms']:.2f} | {m['p99_ms']:.2f} | {m['idle_rss_kib']/1024:.1f} | "
          f"{m['load_rss_kib']/1024:.1f} | {m['cpu_us_per_req']:.1f} | {ratio:.2f} |")
PY
echo "raw results: $results"
