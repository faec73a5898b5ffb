#!/usr/bin/env bash
# Configures and builds fhirlake (Release, with unit tests) into build/. Idempotent; uses ccache when present.
set -euo pipefail
cd "$(dirname "$0")/.."
jobs=${FHIRLAKE_BUILD_JOBS:-2}
cmake -S . -B build -G Ninja -DCMAKE_BUILD_TYPE=Release >/dev/null
ninja -C build -j"$jobs" "$@"
