#!/usr/bin/env bash
# Writes linker/order.txt: the functions of the waypoint binary that run at start-up, at idle and on the request
# paths, hottest first, for lld's --symbol-ordering-file (Package.swift). The linker places them together at the
# start of .text, so a process touches a few hundred KiB of contiguous code instead of scattered 64 KiB
# fault-around windows across 30 MB (benchmarks/rss_map.py shows the difference).
#
# Two runs under callgrind, counting from the first instruction: `waypoint run` with the embedded demo config,
# idle for 5 s (what the idle-RSS measure runs); then a config with HBONE and the access log on, under wrk
# (plaintext) and hbone-load (HBONE) for 3 s each, plus the admin pages. Functions are ordered by instructions
# executed (hot code shares cache lines and pages), then by name. Symbols the linker no longer finds (renamed
# code) are skipped silently; rerun after large changes.
# Usage: linker/order.sh     (builds the release binary, profiles it, writes the file, and links again with it)
set -euo pipefail
cd "$(dirname "$0")/.."
work=$(mktemp -d /tmp/waypoint-order.XXXXXX)
pids=()
trap 'for p in "${pids[@]:-}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$work"' EXIT
# Input-section sizes come from a link map: code that shares one big section (a module's private functions, C++
# objects built without function sections) moves as a whole, so it goes after the functions that move alone.
rm -f .build/release/waypoint
swift build -c release --static-swift-stdlib --product waypoint -Xlinker -Map="$work/link.map" -Xlinker --no-demangle >/dev/null
BIN=$(realpath .build/release/waypoint)
command -v valgrind >/dev/null || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq valgrind; }
python3 - "$work" <<'PY'
import sys; sys.path.insert(0, "Tests/EndToEnd")
import pki; pki.make(sys.argv[1])
PY
source benchmarks/lib.sh
LOAD_CPU=${LOAD_CPU:-1}
strip --strip-debug -o "$work/waypoint" "$BIN"        # valgrind cannot read Swift 6.3's DWARF
grind() { valgrind --tool=callgrind --demangle=no --callgrind-out-file="$work/$1.out" "$work/waypoint" "${@:2}" \
              >/dev/null 2>>"$work/valgrind.log" & pids+=($!); }

grind idle run --http-listen 127.0.0.1:19380 --admin-listen 127.0.0.1:19381 --access-log off
wait_port 19380; sleep 5
curl -s -o /dev/null http://127.0.0.1:19381/healthz/ready
kill -TERM "${pids[-1]}"; wait "${pids[-1]}" 2>/dev/null || true

BIN=$work/waypoint start_origins 127.0.0.1:19281 127.0.0.1:19282
write_waypoint_config "$work/config.yaml" 19281 19282 10.96.0.10
grind load run --config "$work/config.yaml" --workers 1 --http-listen 127.0.0.1:19280 \
    --admin-listen 127.0.0.1:19283 --hbone-listen 127.0.0.1:19208 --cert "$work/waypoint.pem" \
    --key "$work/waypoint.key" --ca "$work/ca.pem" --access-log on
wait_port 19208; sleep 2
wrk -t1 -c16 -d 3s -H "Host: web" http://127.0.0.1:19280/ >/dev/null
wrk -t1 -c4 -d 1s -H "Host: web" -H "x-route: b" http://127.0.0.1:19280/api >/dev/null
"$work/waypoint" hbone-load -c 4 -s 4 -d 3s --connect 127.0.0.1:19208 --authority 10.96.0.10:80 --host web \
    --cert "$work/frontend.pem" --key "$work/frontend.key" --ca "$work/ca.pem" >/dev/null
for page in stats/prometheus config_dump healthz/ready; do curl -s -o /dev/null "http://127.0.0.1:19283/$page"; done
kill -TERM "${pids[-1]}"; wait "${pids[-1]}" 2>/dev/null || true

python3 - "$work/link.map" "$work/idle.out" "$work/load.out" > linker/order.txt <<'PY'
import collections, re, sys
section_size = {}                         # symbol -> size of the input section it sits in
size = 0
for line in open(sys.argv[1], errors="replace"):
    parts = line.split(None, 4)
    if len(parts) == 5 and ":(" in parts[4]:
        size = int(parts[2], 16)
    elif len(parts) == 5 and parts[3] == "1":
        section_size[parts[4].strip()] = size
cost = collections.Counter()
for path in sys.argv[2:]:
    names = {"ob": {}, "fn": {}}          # callgrind's name compression: "(id) name" once, "(id)" after
    ob = fn = None
    skip = False
    for line in open(path, errors="replace"):
        m = re.match(r"^(c?)(ob|fn|fl|fi|fe)=\((\d+)\)(?: (.*))?$", line.rstrip("\n"))
        if m:
            called, kind, ident, name = m.groups()
            if kind in names:
                if name is not None:
                    names[kind][ident] = name
                if not called:
                    if kind == "ob": ob = names["ob"][ident]
                    else: fn = names["fn"][ident]
            continue
        if line.startswith("calls="):
            skip = True                   # the next cost line is the call's inclusive cost
            continue
        if line[:1].isdigit() or line[:1] in "+-*":
            if skip:
                skip = False
            elif ob and ob.endswith("/waypoint") and fn:
                parts = line.split()
                if len(parts) > 1:
                    cost[fn] += int(parts[1])
BIG = 16 * 1024
for name, _ in sorted(cost.items(), key=lambda item: (section_size.get(item[0], 0) > BIG, -item[1], item[0])):
    if not name.startswith("0x"):
        print(name)
PY
rm -f .build/release/waypoint
swift build -c release --static-swift-stdlib --product waypoint >/dev/null
echo "linker/order.txt: $(wc -l < linker/order.txt) functions; .build/release/waypoint linked with it"
