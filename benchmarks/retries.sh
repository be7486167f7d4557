#!/usr/bin/env bash
# Retries, side by side with haproxy (retry-on conn-failure 503, retries 2, option redispatch): the same three
# `waypoint origin` endpoints behind each proxy, `wrk -t1 -c$CONNS` for $DUR seconds.
#   flaky:  one endpoint of three answers 503 to 30% of its requests. Success rate with and without retries.
#   dead:   every endpoint answers 503 to everything. Load amplification = requests the origins saw ÷ requests
#           the client sent (what retries add to a service that is already failing).
# Proxy on CPU $PROXY_CPU, wrk and origins on CPU $LOAD_CPU. Not run in CI.
set -euo pipefail
cd "$(dirname "$0")/.."
DUR=${DUR:-10}; CONNS=${CONNS:-32}; PROXY_CPU=${PROXY_CPU:-0}; LOAD_CPU=${LOAD_CPU:-1}
PORTS=(19281 19282 19283); PROXY=19290
for p in wrk haproxy; do
    dpkg -s "$p" >/dev/null 2>&1 || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq wrk haproxy; break; }
done
make -s release >/dev/null
BIN=$PWD/.build/release/waypoint
work=$(mktemp -d /tmp/waypoint-retries.XXXXXX)
pids=()
TPIDS=""
cleanup() { for p in "${pids[@]:-}" $TPIDS; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; }
trap cleanup EXIT
source benchmarks/lib.sh

# origins FAIL_PERCENT... : (re)start the three origins with these failure rates.
origins() {
    for p in "${pids[@]:-}"; do kill "$p" 2>/dev/null || true; done
    pids=()
    local i=0
    for rate in "$@"; do
        taskset -c "$LOAD_CPU" "$BIN" origin --listen "127.0.0.1:${PORTS[$i]}" --name "o$i" --fail-percent "$rate" >/dev/null 2>&1 &
        pids+=($!)
        i=$((i + 1))
    done
    for port in "${PORTS[@]}"; do wait_port "$port"; done
}
origin_requests() { local sum=0 port; for port in "${PORTS[@]}"; do sum=$((sum + $(curl -s "http://127.0.0.1:$port/__requests"))); done; echo $sum; }

cat > "$work/waypoint.yaml" <<YAML
apiVersion: v1
kind: Service
metadata: {name: web}
spec: {ports: [{name: http, port: 80}]}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: web, labels: {kubernetes.io/service-name: web}}
ports: [{name: http, port: ${PORTS[0]}}]
endpoints: [{addresses: [127.0.0.1]}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: web-2, labels: {kubernetes.io/service-name: web}}
ports: [{name: http, port: ${PORTS[1]}}]
endpoints: [{addresses: [127.0.0.1]}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: web-3, labels: {kubernetes.io/service-name: web}}
ports: [{name: http, port: ${PORTS[2]}}]
endpoints: [{addresses: [127.0.0.1]}]
YAML
cat > "$work/haproxy.cfg" <<CFG
global
  nbthread 1
defaults
  mode http
  option http-keep-alive
  timeout connect 5s
  timeout client 60s
  timeout server 60s
frontend fe
  bind 127.0.0.1:$PROXY
  default_backend web
backend web
  balance roundrobin
  retry-on conn-failure 503
  retries 2
  option redispatch 1
  http-reuse always
  server a 127.0.0.1:${PORTS[0]}
  server b 127.0.0.1:${PORTS[1]}
  server c 127.0.0.1:${PORTS[2]}
CFG

start() {
    case $1 in
    waypoint-retries) taskset -c "$PROXY_CPU" "$BIN" run --config "$work/waypoint.yaml" --workers 1 --access-log off \
                          --http-listen 127.0.0.1:$PROXY --admin-listen 127.0.0.1:0 >/dev/null 2>&1 & ;;
    waypoint-no-retries) taskset -c "$PROXY_CPU" "$BIN" run --config "$work/waypoint.yaml" --workers 1 --access-log off \
                          --default-retries off --http-listen 127.0.0.1:$PROXY --admin-listen 127.0.0.1:0 >/dev/null 2>&1 & ;;
    haproxy) taskset -c "$PROXY_CPU" haproxy -f "$work/haproxy.cfg" >/dev/null 2>&1 & ;;
    esac
    TPIDS=$!
    wait_port $PROXY
}
stop() { kill $TPIDS; wait $TPIDS 2>/dev/null || true; TPIDS=""; sleep 0.3; }

# run SCENARIO TARGET: prints one table row.
run() {
    start "$2"
    local before after out total non2xx
    before=$(origin_requests)
    out=$(taskset -c "$LOAD_CPU" wrk -t1 -c"$CONNS" -d"${DUR}s" --latency -H "Host: web" "http://127.0.0.1:$PROXY/")
    after=$(origin_requests)
    stop
    total=$(echo "$out" | awk '/requests in/ {print $1}')
    non2xx=$(echo "$out" | awk '/Non-2xx/ {print $5}')
    non2xx=${non2xx:-0}
    awk -v s="$1" -v t="$2" -v total="$total" -v bad="$non2xx" -v seen=$((after - before)) -v p99="$(echo "$out" | awk '/ 99%/ {print $2}')" \
        'BEGIN { printf "| %s | %s | %d | %.3f%% | %s | %.2f× |\n", s, t, total, 100 * (total - bad) / total, p99, seen / total }'
}

echo "| scenario | target | requests | success | p99 | origin requests ÷ client requests |"
echo "|---|---|---|---|---|---|"
origins 30 0 0
for t in waypoint-retries waypoint-no-retries haproxy; do run "flaky (1 of 3 at 30%)" "$t"; done
origins 100 100 100
for t in waypoint-retries waypoint-no-retries haproxy; do run "dead (all 503)" "$t"; done
