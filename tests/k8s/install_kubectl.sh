#!/usr/bin/env bash
# Install kubectl for the manifests' render test (tests/k8s/test_manifests.py: `kubectl kustomize`), if it is not
# there yet. Idempotent; needs root (CI runs as root). Usage: bash tests/k8s/install_kubectl.sh
set -euo pipefail
if command -v kubectl >/dev/null 2>&1; then
  echo "kubectl present: $(command -v kubectl)"
  exit 0
fi
if [ "$(id -u)" != "0" ]; then
  echo "kubectl is missing and this is not root: run 'sudo apt-get install -y kubectl'" >&2
  exit 1
fi
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends kubectl >/dev/null
command -v kubectl
