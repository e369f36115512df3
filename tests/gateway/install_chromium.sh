#!/usr/bin/env bash
# Install Debian's chromium for the gateway's browser test, if it is not there yet.
# Idempotent; needs root (CI runs as root). Usage: bash tests/gateway/install_chromium.sh
set -euo pipefail
for bin in chromium chromium-browser; do
  if command -v "$bin" >/dev/null 2>&1; then
    echo "chromium present: $(command -v "$bin")"
    exit 0
  fi
done
if [ "$(id -u)" != "0" ]; then
  echo "chromium is missing and this is not root: run 'sudo apt-get install -y chromium'" >&2
  exit 1
fi
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends chromium fonts-dejavu-core >/dev/null
command -v chromium
