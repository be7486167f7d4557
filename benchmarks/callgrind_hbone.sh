#!/usr/bin/env bash
# Instructions per request on the HBONE path (mTLS 1.3 + HTTP/2 CONNECT + HTTP/1.1 routing inside the tunnels),
# counted by callgrind after start-up: one worker under valgrind, `waypoint hbone-load` (4 connections x 4
# tunnels, keep-alive GETs) for $DUR seconds (default 20). Prints the instructions of the whole process
# divided by the requests served. Instruction counts repeat exactly on a loaded machine, unlike times.
# Usage: benchmarks/callgrind_hbone.sh [BINARY]   (default .build/release/waypoint; e.g. an older build's)
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=$(realpath "${1:-.build/release/waypoint}"); DUR=${DUR:-20}
command -v valgrind >/dev/null || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq valgrind; }
work=$(mktemp -d /tmp/waypoint-callgrind.XXXXXX)
pids=()
trap 'for p in "${pids[@]:-}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$work"' EXIT
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
    --access-log off 2>"$work/valgrind.log" & pids+=($!)
wait_port 19208
sleep 2
callgrind_control -i on "${pids[-1]}" >/dev/null 2>&1
out=$("$work/waypoint" hbone-load -c 4 -s 4 -d "${DUR}s" --connect 127.0.0.1:19208 --authority 10.96.0.10:80 --host web \
      --cert "$work/frontend.pem" --key "$work/frontend.key" --ca "$work/ca.pem")
callgrind_control -i off "${pids[-1]}" >/dev/null 2>&1
kill -TERM "${pids[-1]}"; wait "${pids[-1]}" 2>/dev/null || true
requests=$(sed -n 's/.*requests=\([0-9]*\).*/\1/p' <<<"$out")
# One file for all threads: its `totals:` line counts every instruction since `-i on`.
instructions=$(awk '/^totals:/ {print $2}' "$work/callgrind.out")
echo "$out"
echo "instructions=$instructions requests=$requests per_request=$((instructions / requests))"
