#!/usr/bin/env bash
# Installs Debian's dataset-fashion-mnist package (torchvision's raw files under
# /usr/share/datasets/fashion-mnist/) when it is missing. Elsewhere `biasloss train`
# falls back to torchvision's download.
set -euo pipefail
dest=/usr/share/datasets/fashion-mnist
if [ -d "$dest" ] && [ -n "$(ls -A "$dest" 2>/dev/null)" ]; then exit 0; fi
if ! command -v apt-get >/dev/null 2>&1; then
    echo "note: no apt-get here; Fashion-MNIST will be downloaded by torchvision on first use" >&2
    exit 0
fi
sudo=""
if [ "$(id -u)" != 0 ]; then
    if command -v sudo >/dev/null 2>&1; then sudo="sudo"; else
        echo "note: not root; install dataset-fashion-mnist yourself or let torchvision download it" >&2
        exit 0
    fi
fi
if ! $sudo apt-get install -y -q dataset-fashion-mnist >/dev/null 2>&1; then
    $sudo apt-get update -q >/dev/null
    $sudo apt-get install -y -q dataset-fashion-mnist >/dev/null
fi
