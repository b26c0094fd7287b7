#!/usr/bin/env bash
# tests/fuzz/run.sh: builds the differential fuzzer (tests/fuzz/differential_fuzzer.cpp) with
# clang and libFuzzer + ASAN + UBSAN into build/fuzz, then runs it for a bounded number of
# runs starting from the committed seed corpus (tests/fuzz/corpus, never modified: new
# inputs go to build/fuzz/corpus). Fails on any divergence from the reference model, crash,
# sanitizer report or timeout; the failing input is left in build/fuzz/artifacts/.
#   NODEMETA_FUZZ_RUNS      inputs to run (default 200000)
#   NODEMETA_FUZZ_SEED      libFuzzer's -seed, to replay a run (default: random, printed)
#   NODEMETA_FUZZ_MAX_TIME  hard limit in seconds (default 240)
# Replay one input: build/fuzz/differential_fuzzer <file>
set -euo pipefail
cd "$(dirname "$0")/../.."
out=build/fuzz
mkdir -p "$out/obj" "$out/corpus" "$out/artifacts"
source tests/fuzz/common.sh
# The core library's sources, as CMakeLists.txt lists them in add_library(nodemeta ...).
mapfile -t sources < <(library_sources CMakeLists.txt nodemeta "")
[ ${#sources[@]} -gt 0 ] || { echo "run.sh: no core sources found in CMakeLists.txt" >&2; exit 1; }
start=$SECONDS
build_objects "$out/obj" "${sources[@]}"
"$cxx" "${common[@]}" -fsanitize=fuzzer,address,undefined tests/fuzz/differential_fuzzer.cpp "${objs[@]}" \
  -ltbb -o "$out/differential_fuzzer"
echo "=== tests/fuzz/run.sh: built in $((SECONDS - start)) s ==="
runs=${NODEMETA_FUZZ_RUNS:-200000}
seed_arg=()
[ -n "${NODEMETA_FUZZ_SEED:-}" ] && seed_arg=(-seed="$NODEMETA_FUZZ_SEED")
start=$SECONDS
ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=1:abort_on_error=1} \
UBSAN_OPTIONS=${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1} \
  "$out/differential_fuzzer" "${seed_arg[@]}" -runs="$runs" -max_len=256 -timeout=10 \
    -max_total_time="${NODEMETA_FUZZ_MAX_TIME:-240}" -print_final_stats=1 \
    -artifact_prefix="$out/artifacts/" "$out/corpus" tests/fuzz/corpus 2>&1 | tee "$out/last_run.log"
# -max_total_time may stop it before -runs: report what really ran.
executed=$(grep -o 'stat::number_of_executed_units: *[0-9]*' "$out/last_run.log" | grep -o '[0-9]*$' || echo "?")
echo "=== tests/fuzz/run.sh: $executed runs (of $runs asked) passed in $((SECONDS - start)) s ==="
