#!/usr/bin/env bash
# Unpacks the committed 100-patient Synthea R4 sample (data/synthea-r4-100.tar.zst) into data/synthea-r4-100/.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ ! -f data/synthea-r4-100/.complete ]; then
  rm -rf data/synthea-r4-100
  zstd -dc data/synthea-r4-100.tar.zst | tar -C data -xf -
  touch data/synthea-r4-100/.complete
fi
echo "$(pwd)/data/synthea-r4-100"
