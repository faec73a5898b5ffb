#!/usr/bin/env bash
# The default test suite: installs what is missing, builds (Release, with unit tests), runs the GoogleTest unit
# tests (ctest) and the end-to-end tests (pytest driving the real binary on loopback ports). Fails if any fails.
# Slow suites are separate: see README ("Slow tests").
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-deps.sh test
bash scripts/build.sh
bash scripts/sample-data.sh >/dev/null
/usr/bin/python3 tools/gen_r4_tables.py --check
/usr/bin/python3 tools/gen_search_params.py --check
/usr/bin/python3 tools/gen_healthlake_model.py --check
ctest --test-dir build --output-on-failure -j2
bash scripts/sanitize.sh asan-unit  # the unit tests again under ASan+UBSan (build-asan/), docs/TESTING.md
/usr/bin/python3 -m pytest -q tests/e2e -m "not slow" "$@"
