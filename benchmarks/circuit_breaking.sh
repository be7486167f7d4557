#!/usr/bin/env bash
# Circuit breaking with two workers, side by side with haproxy (two threads, `server ... maxconn`): one slow
# `waypoint origin` endpoint (every answer after 20 ms) behind a backend limited to $LIMIT connections, with
# room for 1,000 waiting requests; `wrk -t1 -c$CONNS` for $DUR seconds. Shows that the limit holds for the whole
# proxy (Envoy's circuit breakers are per process): the most connections the origin ever had open (sampled
# with `ss` every 50 ms), requests/s (bounded by LIMIT / 20 ms) and p99.
# Proxy on CPU $PROXY_CPU, wrk and the origin on CPU $LOAD_CPU. Not run in CI.
set -euo pipefail
cd "$(dirname "$0")/.."
DUR=${DUR:-10}; CONNS=${CONNS:-64}; LIMIT=${LIMIT:-4}; PROXY_CPU=${PROXY_CPU:-0}; LOAD_CPU=${LOAD_CPU:-1}
ORIGIN=19381; PROXY=19390
source benchmarks/lib.sh
bench_prepare cb wrk haproxy

taskset -c "$LOAD_CPU" "$BIN" origin --listen "127.0.0.1:$ORIGIN" --name o >/dev/null 2>&1 &
pids+=($!)
wait_port $ORIGIN

cat > "$work/waypoint.yaml" <<YAML
apiVersion: v1
kind: Service
metadata: {name: web}
spec: {ports: [{name: http, port: 80}]}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: web, labels: {kubernetes.io/service-name: web}}
ports: [{name: http, port: $ORIGIN}]
endpoints: [{addresses: [127.0.0.1]}]
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: web}
spec:
  host: web
  trafficPolicy:
    connectionPool: {tcp: {maxConnections: $LIMIT, connectTimeout: 10s}, http: {http1MaxPendingRequests: 1000}}
YAML
cat > "$work/haproxy.cfg" <<CFG
global
  nbthread 2
defaults
  mode http
  option http-keep-alive
  timeout connect 5s
  timeout client 60s
  timeout server 60s
  timeout queue 10s
frontend fe
  bind 127.0.0.1:$PROXY
  default_backend web
backend web
  http-reuse always
  server o 127.0.0.1:$ORIGIN maxconn $LIMIT
CFG

start() {
    case $1 in
    waypoint) taskset -c "$PROXY_CPU" "$BIN" run --config "$work/waypoint.yaml" --workers 2 --access-log off --default-retries off \
                  --http-listen 127.0.0.1:$PROXY --admin-listen 127.0.0.1:0 >/dev/null 2>&1 & ;;
    haproxy) taskset -c "$PROXY_CPU" haproxy -f "$work/haproxy.cfg" >/dev/null 2>&1 & ;;
    esac
    proxy=$!
    pids+=($proxy)
    wait_port $PROXY
}
stop() { kill $proxy; wait $proxy 2>/dev/null || true; sleep 0.5; }

# The origin's established connections from the proxy, highest of the samples taken until $1 exists.
sample_connections() {
    local most=0 n
    while [ ! -e "$1" ]; do
        n=$(ss -Htn state established "( sport = :$ORIGIN )" | wc -l)
        [ "$n" -gt "$most" ] && most=$n
        sleep 0.05
    done
    echo "$most"
}

run() {
    start "$1"
    rm -f "$work/done"
    sample_connections "$work/done" > "$work/most" &
    local sampler=$! out
    out=$(taskset -c "$LOAD_CPU" wrk -t1 -c"$CONNS" -d"${DUR}s" --latency -H "Host: web" "http://127.0.0.1:$PROXY/?delay=20ms")
    touch "$work/done"
    wait $sampler
    stop
    local total non2xx
    total=$(echo "$out" | awk '/requests in/ {print $1}')
    non2xx=$(echo "$out" | awk '/Non-2xx/ {print $5}')
    printf "| %s | %s | %s | %s | %s | %s |\n" "$1" "$(cat "$work/most")" \
        "$(echo "$out" | awk '/Requests\/sec/ {printf "%.0f", $2}')" "$(echo "$out" | awk '/ 99%/ {print $2}')" "$total" "${non2xx:-0}"
}

echo "| target (2 workers/threads, limit $LIMIT) | most origin connections | req/s | p99 | requests | non-2xx |"
echo "|---|---|---|---|---|---|"
for t in waypoint haproxy; do run "$t"; done
