# shellcheck shell=bash
# Shared by the test VM scripts: paths, the recipe hash (cache key) and progress output.

TESTVM_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
CACHE_ROOT="${GPULAB_CACHE:-/var/cache/gpulab-fleet}"
IMAGE_ROOT="$CACHE_ROOT/testvm"
# shellcheck disable=SC2034  # used by the scripts that source this file
RUN_ROOT="$CACHE_ROOT/run"
# shellcheck disable=SC2034
DEB_CACHE="$CACHE_ROOT/debs-vm"

# Files that define the image. The boot/stop helpers are deliberately not part of the key,
# so editing up.sh does not force a 6-minute rebuild.
RECIPE_FILES=(build.sh recipe.env packages.txt)

recipe_hash() {
    (cd "$TESTVM_DIR" && sha256sum "${RECIPE_FILES[@]}") | sha256sum | cut -c1-16
}

image_dir() {
    echo "$IMAGE_ROOT/$(recipe_hash)"
}

_T0=${_T0:-$SECONDS}
step() {
    printf '[testvm +%4ds] %s\n' "$((SECONDS - _T0))" "$*"
}

die() {
    printf 'testvm: ERROR: %s\n' "$*" >&2
    exit 1
}
