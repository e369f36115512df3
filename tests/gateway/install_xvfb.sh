#!/usr/bin/env bash
# Install Debian's Xvfb (a virtual X display) and xdotool (keys and mouse for it) for the OpenCV client's window
# test (tests/gateway/test_client_window.py), if they are not there yet. Its screenshots need nothing more: Pillow
# reads the X display itself. Idempotent; needs root (CI runs as root). Usage: bash tests/gateway/install_xvfb.sh
set -euo pipefail
missing=()
command -v Xvfb >/dev/null 2>&1 || missing+=(xvfb)
command -v xdotool >/dev/null 2>&1 || missing+=(xdotool)
if [ ${#missing[@]} -eq 0 ]; then
  echo "Xvfb and xdotool present: $(command -v Xvfb) $(command -v xdotool)"
  exit 0
fi
if [ "$(id -u)" != "0" ]; then
  echo "${missing[*]} missing and this is not root: run 'sudo apt-get install -y ${missing[*]}'" >&2
  exit 1
fi
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
command -v Xvfb xdotool
