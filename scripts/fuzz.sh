#!/usr/bin/env bash
# libFuzzer runs (docs/TESTING.md): builds the harnesses of fuzz/ with clang, ASan and UBSan into build-fuzz/ and runs
#   scripts/fuzz.sh NAME [SECONDS]   one harness (http_request, resource, bundle, kickoff, sigv4, auth_config, jwt) for
#                                    SECONDS (default 600)
#   scripts/fuzz.sh all [SECONDS]    each harness in turn, SECONDS each
# Seeds come from fuzz/corpus/NAME/ (read only); new inputs go to a temp dir (printed), crashes to fuzz/crashes/.
# One job at a time (-jobs=1): the machine is shared. Exit code 1 when a harness found a crash.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
harnesses=(http_request resource bundle kickoff sigv4 auth_config jwt)
name=${1:-}
seconds=${2:-600}
if [ -z "$name" ] || { [ "$name" != all ] && [[ ! " ${harnesses[*]} " =~ " $name " ]]; }; then
  echo "usage: scripts/fuzz.sh {${harnesses[*]// /|}|all} [SECONDS]" >&2
  exit 2
fi

cxx=${FHIRLAKE_FUZZ_CXX:-$(command -v clang++-14 || command -v clang++ || true)}
if [ -z "$cxx" ] || ! ls /usr/lib/llvm-14/lib/clang/*/lib/linux/libclang_rt.fuzzer-x86_64.a >/dev/null 2>&1; then
  echo "fuzzing needs clang 14 and its libFuzzer runtime: apt-get install -y clang-14 libclang-rt-14-dev" >&2
  exit 1
fi

cmake -S . -B build-fuzz -G Ninja -DCMAKE_BUILD_TYPE=Debug -DCMAKE_CXX_COMPILER="$cxx" -DFHIRLAKE_FUZZ=ON \
  -DFHIRLAKE_SANITIZE="address,undefined" -DFHIRLAKE_BUILD_TESTS=OFF >/dev/null
targets=()
if [ "$name" = all ]; then for h in "${harnesses[@]}"; do targets+=("fuzz_$h"); done; else targets=("fuzz_$name"); fi
ninja -C build-fuzz -j"${FHIRLAKE_BUILD_JOBS:-1}" "${targets[@]}"

max_len() {
  case "$1" in
    kickoff) echo 4096 ;;
    *) echo 16384 ;;
  esac
}

export ASAN_OPTIONS="detect_leaks=1:abort_on_error=1:detect_stack_use_after_return=1"
export UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1"
mkdir -p fuzz/crashes
status=0
summary=()
run_one() {
  local h=$1 work log corpus dict=()
  work=$(mktemp -d "${TMPDIR:-/tmp}/fhirlake-fuzz-$h.XXXXXX")
  corpus=$work/corpus
  mkdir -p "$corpus"
  if [ "$h" = http_request ]; then dict=(-dict="$root/fuzz/http.dict"); else dict=(-dict="$root/fuzz/json.dict"); fi
  echo "== fuzz_$h for ${seconds}s (new corpus: $corpus, log: $work/fuzz-0.log)"
  # -jobs=1 runs the fuzzer in a child process that logs to fuzz-0.log in the working directory.
  (cd "$work" && "$root/build-fuzz/fuzz/fuzz_$h" "$corpus" "$root/fuzz/corpus/$h" "${dict[@]}" \
    -max_len="$(max_len "$h")" -rss_limit_mb=2048 -timeout=30 -max_total_time="$seconds" -print_final_stats=1 \
    -jobs=1 -artifact_prefix="$root/fuzz/crashes/$h-") || true
  local last execs cov crashes
  last=$(grep -E '^#[0-9]+' "$work/fuzz-0.log" | tail -n 1 || true)
  execs=$(grep -oE 'stat::number_of_executed_units: [0-9]+' "$work/fuzz-0.log" | grep -oE '[0-9]+$' || true)
  [ -z "$execs" ] && execs=$(sed -nE 's/^#([0-9]+).*/\1/p' <<<"$last")
  cov=$(grep -oE 'cov: [0-9]+' <<<"$last" | grep -oE '[0-9]+' || true)
  # Crashes, leaks, timeouts and OOMs all end with the input saved to fuzz/crashes/ ("Test unit written to").
  crashes=$(grep -c 'Test unit written to' "$work/fuzz-0.log" || true)
  if [ "${crashes:-0}" -gt 0 ]; then
    status=1
    echo "fuzz_$h FOUND A PROBLEM:" >&2
    grep -E 'ERROR|SUMMARY|runtime error|invariant violated|Test unit written to' "$work/fuzz-0.log" | head -n 20 >&2
  fi
  tail -n 12 "$work/fuzz-0.log"
  summary+=("fuzz_$h: ${seconds}s, execs ${execs:-?}, cov ${cov:-?}, crashes $crashes")
}

if [ "$name" = all ]; then
  for h in "${harnesses[@]}"; do run_one "$h"; done
else
  run_one "$name"
fi
printf '%s\n' "${summary[@]}"
exit $status
