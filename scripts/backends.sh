#!/usr/bin/env bash
# Bring up the real backends the integration tests share: the LXD daemon with the workstation test
# image, and the cached OpenZFS test VM image (VMs themselves are booted per test session).
# slapd servers and network namespaces are made per test by their pytest fixtures.
# Each step is idempotent and takes seconds when its cache is warm.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
t0=$SECONDS
bash "$here/lxd-up.sh"
echo "backends: LXD ready ($((SECONDS - t0)) s)"
t1=$SECONDS
bash "$here/testvm/build.sh"
echo "backends: test VM image ready ($((SECONDS - t1)) s)"
