#!/usr/bin/env bash
# Sanitizer runs (docs/TESTING.md):
#   scripts/sanitize.sh asan       ASan+UBSan build in build-asan/: the unit tests, then the end-to-end suite
#                                  ("not slow") against build-asan/fhirlake
#   scripts/sanitize.sh asan-unit  the same build, unit tests only (part of scripts/test.sh)
#   scripts/sanitize.sh tsan       TSan build in build-tsan/: the store and export engine unit tests
# Extra arguments go to pytest (asan) or ctest (asan-unit, tsan). Every report fails the run: ASan/UBSan/TSan
# abort the process, and each process also writes its report to a log directory (printed) that is checked at the end.
set -euo pipefail
cd "$(dirname "$0")/.."
mode=${1:-}
[ $# -gt 0 ] && shift
jobs=${FHIRLAKE_BUILD_JOBS:-2}  # as scripts/build.sh

# build DIR SANITIZERS [REGEX]: configures DIR and builds everything, or only the unit test binaries whose name
# matches REGEX (the unit test runs need neither the fhirlake binary nor the other tests).
build() {
  cmake -S . -B "$1" -G Ninja -DCMAKE_BUILD_TYPE=Debug -DFHIRLAKE_SANITIZE="$2" >/dev/null
  if [ $# -lt 3 ]; then
    ninja -C "$1" -j"$jobs"
    return
  fi
  local targets
  mapfile -t targets < <(ninja -C "$1" -t targets all |
    sed -nE "s#^(tests/unit/[a-z0-9_]+): CXX_EXECUTABLE_LINKER.*#\\1#p" | grep -E "$3" | sort -u)
  ninja -C "$1" -j"$jobs" "${targets[@]}"
}

# Each instrumented process writes its report (log_path) to a file of its own in $reports, whoever started it (ctest,
# pytest, a server, `fhirlake load`), and aborts; a report file fails the run, and is printed at the end.
work=$(mktemp -d "${TMPDIR:-/tmp}/fhirlake-sanitize.XXXXXX")
reports=$work/reports
mkdir -p "$reports"
check_reports() {
  local found
  found=$(find "$reports" -type f -size +0 | sort)
  if [ -n "$found" ]; then
    echo "sanitizer reports:" >&2
    # The stack and the SUMMARY line; ASan's list of a frame's stack objects is left out.
    for f in $found; do echo "== $f" >&2; grep -vE '^ +\[[0-9]+, [0-9]+\)' "$f" | head -n 50 >&2; done
    return 1
  fi
  echo "no sanitizer reports (logs: $reports)"
}

case "$mode" in
  asan|asan-unit)
    if [ "$mode" = asan ]; then build build-asan "address,undefined"; else build build-asan "address,undefined" .; fi
    export ASAN_OPTIONS="detect_leaks=1:abort_on_error=1:strict_string_checks=1:detect_stack_use_after_return=1:log_path=$reports/asan"
    export UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1:log_path=$reports/ubsan"
    status=0
    unit_args=()
    [ "$mode" = asan-unit ] && unit_args=("$@")
    ctest --test-dir build-asan --output-on-failure -j"${FHIRLAKE_TEST_JOBS:-2}" "${unit_args[@]}" || status=1
    if [ "$mode" = asan ]; then  # even after a unit test failure: every report of the run is worth having
      bash scripts/sample-data.sh >/dev/null
      # Left out, because what they measure is the sanitizer, not fhirlake: the RSS bounds (ASan keeps freed memory in
      # its quarantine), and descriptor exhaustion (UBSan's vptr check needs a pipe() to read a vtable; with no
      # descriptor left it reports a false "invalid vptr" and stops the server).
      FHIRLAKE_BIN="$PWD/build-asan/fhirlake" /usr/bin/python3 -m pytest -q tests/e2e -m "not slow" \
        --deselect tests/e2e/test_memory.py::test_large_bodies_do_not_pin_parser_memory \
        --deselect tests/e2e/test_http_limits.py::test_concurrent_large_uploads_stay_within_the_body_budget \
        --deselect tests/e2e/test_http_limits.py::test_descriptor_exhaustion_backs_off_instead_of_spinning \
        --basetemp="$work/pytest" "$@" || status=1
      # Servers write stderr to logs under the pytest temp dir: a report there fails the run even when the test
      # that started the server did not look.
      if grep -rlE "ERROR: (Address|Leak)Sanitizer|runtime error:" "$work/pytest" 2>/dev/null; then
        echo "sanitizer report in a server log above" >&2
        status=1
      fi
    fi
    check_reports || status=1
    [ $status -eq 0 ] && rm -rf "$work/pytest"  # the e2e data dirs; kept (with the server logs) on failure
    exit $status
    ;;
  tsan)
    build build-tsan thread 'sqlite_store|export|engine'
    export TSAN_OPTIONS="halt_on_error=1:second_deadlock_stack=1:log_path=$reports/tsan"
    status=0
    ctest --test-dir build-tsan --output-on-failure -R 'sqlite_store|export|engine' "$@" || status=1
    check_reports || status=1
    exit $status
    ;;
  *)
    echo "usage: scripts/sanitize.sh asan|asan-unit|tsan [args for ctest/pytest]" >&2
    exit 2
    ;;
esac
