#!/usr/bin/env bash
# Instructions per request, counted by callgrind after start-up, one worker under valgrind, for $DUR seconds
# (default 20), on one of two paths:
#   hbone      mTLS 1.3 + HTTP/2 CONNECT + HTTP/1.1 routing inside the tunnels (`waypoint hbone-load`, 4
#              connections x 4 tunnels, keep-alive GETs), access log off;
#   plaintext  HTTP/1.1 on the plaintext listener (`wrk -c16`, keep-alive GETs), access log on.
# Prints the instructions of the whole process divided by the requests served. Instruction counts repeat
# exactly on a loaded machine, unlike times.
# Usage: benchmarks/callgrind.sh hbone|plaintext [BINARY]   (default .build/release/waypoint; e.g. an older build's)
set -euo pipefail
cd "$(dirname "$0")/.."
MODE=${1:?usage: benchmarks/callgrind.sh hbone|plaintext [BINARY]}
BIN=$(realpath "${2:-.build/release/waypoint}"); DUR=${DUR:-20}
case "$MODE" in hbone) LOG=off ;; plaintext) LOG=on ;; *) echo "unknown mode $MODE" >&2; exit 2 ;; esac
command -v valgrind >/dev/null || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq valgrind; }
work=$(mktemp -d /tmp/waypoint-callgrind.XXXXXX)
pids=()
trap 'for p in "${pids[@]:-}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; [ -n "${KEEP_OUT:-}" ] && cp "$work/callgrind.out" "$KEEP_OUT"; rm -rf "$work"' EXIT
python3 - "$work" <<'PY'
import sys; sys.path.insert(0, "Tests/EndToEnd")
import pki; pki.make(sys.argv[1])
PY
source benchmarks/lib.sh
LOAD_CPU=${LOAD_CPU:-1}
strip --strip-debug -o "$work/waypoint" "$BIN"        # valgrind cannot read Swift 6.3's DWARF
start_origins 127.0.0.1:19281 127.0.0.1:19282
write_waypoint_config "$work/config.yaml" 19281 19282 10.96.0.10
valgrind --tool=callgrind --instr-atstart=no --callgrind-out-file="$work/callgrind.out" "$work/waypoint" run \
    --config "$work/config.yaml" --workers 1 --http-listen 127.0.0.1:19280 --admin-listen 127.0.0.1:0 \
    --hbone-listen 127.0.0.1:19208 --cert "$work/waypoint.pem" --key "$work/waypoint.key" --ca "$work/ca.pem" \
    --access-log $LOG >/dev/null 2>"$work/valgrind.log" & pids+=($!)
wait_port 19208
sleep 2
callgrind_control -i on "${pids[-1]}" >/dev/null 2>&1
if [ "$MODE" = hbone ]; then
    out=$("$work/waypoint" hbone-load -c 4 -s 4 -d "${DUR}s" --connect 127.0.0.1:19208 --authority 10.96.0.10:80 --host web \
          --cert "$work/frontend.pem" --key "$work/frontend.key" --ca "$work/ca.pem")
    requests=$(sed -n 's/.*requests=\([0-9]*\).*/\1/p' <<<"$out")
else
    out=$(wrk -t1 -c16 -d "${DUR}s" -H "Host: web" http://127.0.0.1:19280/)
    requests=$(sed -n 's/^ *\([0-9]*\) requests in.*/\1/p' <<<"$out")
fi
callgrind_control -i off "${pids[-1]}" >/dev/null 2>&1
kill -TERM "${pids[-1]}"; wait "${pids[-1]}" 2>/dev/null || true
# One file for all threads: its `totals:` line counts every instruction since `-i on`.
instructions=$(awk '/^totals:/ {print $2}' "$work/callgrind.out")
echo "$out"
echo "instructions=$instructions requests=$requests per_request=$((instructions / requests))"
