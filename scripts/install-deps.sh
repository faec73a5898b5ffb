#!/usr/bin/env bash
# Installs the Debian 12 (bookworm) packages fhirlake needs: `build` (compile and run) or `test` (also the
# test tools). As root it runs apt-get; otherwise it prints the apt-get line to run and fails if anything is missing.
set -euo pipefail
mode=${1:-build}
pkgs=(build-essential cmake ninja-build ccache pkg-config libboost-dev libsimdjson-dev nlohmann-json3-dev
      libsqlite3-dev libcli11-dev libspdlog-dev libfmt-dev libssl-dev libcurl4-openssl-dev libexpat1-dev zlib1g-dev
      libjwt-dev libpcre2-dev
      curl jq zstd sqlite3 ca-certificates)
if [ "$mode" = test ]; then
  pkgs+=(libgtest-dev libgmock-dev python3 python3-pytest python3-requests python3-boto3 python3-cryptography awscli procps
        ceph-mon ceph-osd radosgw ceph-common)
fi
missing=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
[ ${#missing[@]} -eq 0 ] && exit 0
if [ "$(id -u)" -eq 0 ]; then
  echo "Installing: ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
else
  echo "Missing packages. Run:" >&2
  echo "  sudo apt-get install -y ${missing[*]}" >&2
  exit 1
fi
