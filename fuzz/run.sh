#!/usr/bin/env bash
# Builds the libFuzzer harnesses (ASan + libFuzzer) and runs each for FUZZ_SECONDS (default 60).
# LeakSanitizer is off: Swift runtime caches and lazily initialised globals read as leaks at exit.
# New corpus entries go to fuzz-corpus/<target> (git-ignored); seeds live in fuzz/seeds/<target>.
set -euo pipefail
cd "$(dirname "$0")/.."
seconds=${FUZZ_SECONDS:-60}
swift build -c release --scratch-path .build-fuzz --product WaypointFuzz \
    -Xswiftc -sanitize=fuzzer,address -Xswiftc -DFUZZING -Xswiftc -parse-as-library 2>&1 | grep -v "Cannot export local symbol" || true
binary=.build-fuzz/release/WaypointFuzz
for target in ${FUZZ_TARGETS:-http1 http2 config proxy}; do
    mkdir -p "fuzz-corpus/$target"
    echo "== fuzzing $target for ${seconds}s"
    ASAN_OPTIONS=detect_leaks=0 WAYPOINT_FUZZ_TARGET=$target "$binary" -max_total_time="$seconds" -max_len=8192 -print_final_stats=1 -detect_leaks=0 \
        -artifact_prefix="fuzz-corpus/$target-" "fuzz-corpus/$target" "fuzz/seeds/$target"
done
