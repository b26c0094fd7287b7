#!/usr/bin/env bash
# tests/fuzz/run_loader.sh: builds the graph-loader fuzzer (tests/fuzz/graph_loader_fuzzer.cpp)
# with clang and libFuzzer + ASAN + UBSAN into build/fuzz, then runs it for a bounded time
# over graph files, plain and gzip. Seeds: tests/fuzz/loader_corpus (small real graphs cut
# from ../shared/data/graphs), every file of tests/graph/data (the broken ones included);
# new inputs go to build/fuzz/loader_corpus. Fails on a crash, sanitizer report, timeout or
# broken property; the failing input is left in build/fuzz/loader_artifacts/.
#   NODEMETA_LOADER_FUZZ_TIME  seconds to fuzz (default 60)
#   NODEMETA_FUZZ_SEED         libFuzzer's -seed, to replay a run (default: random, printed)
# Replay one input: build/fuzz/graph_loader_fuzzer <file>
set -euo pipefail
cd "$(dirname "$0")/../.."
out=build/fuzz
mkdir -p "$out/loader_obj" "$out/loader_corpus" "$out/loader_artifacts"
source tests/fuzz/common.sh
# The core library's and the graph library's sources, as the CMakeLists list them.
mapfile -t sources < <(library_sources CMakeLists.txt nodemeta ""; library_sources src/graph/CMakeLists.txt nodemeta_graph src/graph/)
[ ${#sources[@]} -gt 2 ] || { echo "run_loader.sh: no sources found in the CMakeLists" >&2; exit 1; }
start=$SECONDS
build_objects "$out/loader_obj" "${sources[@]}"
"$cxx" "${common[@]}" -fsanitize=fuzzer,address,undefined tests/fuzz/graph_loader_fuzzer.cpp "${objs[@]}" \
  -lsimdjson -ldeflate -lz -ltbb -o "$out/graph_loader_fuzzer"
echo "=== tests/fuzz/run_loader.sh: built in $((SECONDS - start)) s ==="
seeds="$out/loader_seeds"
rm -rf "$seeds" && mkdir -p "$seeds"
cp tests/fuzz/loader_corpus/* "$seeds/"
find tests/graph/data -type f \( -name '*.json' -o -name '*.gz' \) -exec cp {} "$seeds/" \;
seed_arg=()
[ -n "${NODEMETA_FUZZ_SEED:-}" ] && seed_arg=(-seed="$NODEMETA_FUZZ_SEED")
start=$SECONDS
ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=1:abort_on_error=1} \
UBSAN_OPTIONS=${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1} \
  "$out/graph_loader_fuzzer" "${seed_arg[@]}" -max_total_time="${NODEMETA_LOADER_FUZZ_TIME:-60}" \
    -max_len=16384 -timeout=10 -rss_limit_mb=2048 -print_final_stats=1 \
    -artifact_prefix="$out/loader_artifacts/" "$out/loader_corpus" "$seeds" 2>&1 | tee "$out/loader_last_run.log"
executed=$(grep -o 'stat::number_of_executed_units: *[0-9]*' "$out/loader_last_run.log" | grep -o '[0-9]*$' || echo "?")
echo "=== tests/fuzz/run_loader.sh: $executed inputs passed in $((SECONDS - start)) s ==="
