#!/usr/bin/env bash
# Builds the libFuzzer harnesses (ASan + libFuzzer) and runs each for FUZZ_SECONDS (default 60).
# LeakSanitizer is off: Swift runtime caches and lazily initialised globals read as leaks at exit.
# The corpus lives in the repository: fuzz/seeds/<target> (written by hand) and fuzz/corpus/<target> (what runs
# found), which is minimized after each run (libFuzzer's -merge keeps the smallest set with the same coverage).
# A crash or timeout leaves its reproducer in fuzz/crashes/ (commit it with the fix; replay it with a plain
# `swift run WaypointFuzz <target> FILE`).
set -euo pipefail
cd "$(dirname "$0")/.."
seconds=${FUZZ_SECONDS:-60}
swift build -c release --scratch-path .build-fuzz --product WaypointFuzz \
    -Xswiftc -sanitize=fuzzer,address -Xswiftc -DFUZZING -Xswiftc -parse-as-library 2>&1 | grep -v "Cannot export local symbol" || true
binary=.build-fuzz/release/WaypointFuzz
export ASAN_OPTIONS=detect_leaks=0
mkdir -p fuzz/crashes
for target in ${FUZZ_TARGETS:-http1 http2 config proxy kubernetes meshca jwt extauthz dns}; do
    corpus=fuzz/corpus/$target
    mkdir -p "$corpus"
    echo "== fuzzing $target for ${seconds}s"
    WAYPOINT_FUZZ_TARGET=$target "$binary" -max_total_time="$seconds" -max_len=8192 -print_final_stats=1 -detect_leaks=0 \
        -artifact_prefix="fuzz/crashes/$target-" "$corpus" "fuzz/seeds/$target"
    merged=$(mktemp -d)
    WAYPOINT_FUZZ_TARGET=$target "$binary" -merge=1 -max_len=8192 -detect_leaks=0 "$merged" "$corpus" 2>&1 | grep -E "MERGE-OUTER: [0-9]+ new files" || true
    rm -rf "$corpus" && mv "$merged" "$corpus" && chmod 755 "$corpus"
done
