# shellcheck shell=bash
# Shared by the test VM scripts: paths, the recipe hash (cache key) and progress output.

TESTVM_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
CACHE_ROOT="${GPULAB_CACHE:-/var/cache/gpulab-fleet}"
IMAGE_ROOT="$CACHE_ROOT/testvm"
# shellcheck disable=SC2034  # used by the scripts that source this file
RUN_ROOT="$CACHE_ROOT/run"
# shellcheck disable=SC2034
DEB_CACHE="$CACHE_ROOT/debs-vm"

# The key: the files that define the image, and the packages the roles install (what role-packages.py
# prints, not its code). The boot/stop helpers are deliberately not part of it, so editing up.sh does
# not force a rebuild.
RECIPE_FILES=(build.sh recipe.env packages.txt)

role_packages() {
    "$TESTVM_DIR/../../.venv/bin/python" "$TESTVM_DIR/role-packages.py"
}

recipe_hash() {
    local packages
    packages=$(role_packages) || die "cannot read the roles' package lists (make venv first)"
    { (cd "$TESTVM_DIR" && sha256sum "${RECIPE_FILES[@]}") && echo "$packages"; } | sha256sum | cut -c1-16
}

image_dir() {
    local hash
    hash=$(recipe_hash) || return 1
    echo "$IMAGE_ROOT/$hash"
}

_T0=${_T0:-$SECONDS}
step() {
    printf '[testvm +%4ds] %s\n' "$((SECONDS - _T0))" "$*"
}

die() {
    printf 'testvm: ERROR: %s\n' "$*" >&2
    exit 1
}
