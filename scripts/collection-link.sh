#!/usr/bin/env bash
# Make the checkout visible to ansible and pytest as ansible_collections/gpulab/fleet:
# .build/collections/ansible_collections/gpulab/fleet -> the repository root.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
ns="$root/.build/collections/ansible_collections/gpulab"
mkdir -p "$ns"
if [ "$(readlink "$ns/fleet" 2>/dev/null)" != "$root" ]; then
  rm -rf "$ns/fleet"
  ln -s "$root" "$ns/fleet"
fi
