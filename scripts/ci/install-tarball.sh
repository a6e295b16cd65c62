#!/usr/bin/env bash
# The collection as an admin gets it (docs/admin-guide.md): the built tarball installed into an empty
# collections path, .build/admin/collections. molecule `lab` runs from there (scripts/ci/test.sh), so the
# lab converges what `ansible-galaxy collection install` gives, not the checkout.
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
admin=$root/.build/admin
rm -rf "$admin"
mkdir -p "$admin/dist"
ansible-galaxy collection build --output-path "$admin/dist" "$root" >/dev/null
ANSIBLE_COLLECTIONS_PATH=$admin/collections \
  ansible-galaxy collection install --force -p "$admin/collections" "$admin"/dist/gpulab-fleet-*.tar.gz
