#!/usr/bin/env bash
# `make test` (what CI runs): set-up, lint, sanity, build, unit, integration and the molecule scenarios,
# each a timed stage (scripts/ci/timing.py), ending with one table of where the time went.
#
# An emulated (TCG) test VM keeps about one core busy, so the work runs in three lanes at once:
#   lane A (background): the test VM image (cold: ~9 min), then molecule `lab` (two VMs) with the collection
#   installed from its tarball: the critical path;
#   lane B (background): waits for the image, then pytest's VM tests (one VM);
#   this shell: LXD and its image, lint, sanity, build, unit tests, pytest's host-side tests.
# Lane B and this shell run at nice 10: lane A keeps its core, the rest share what is left.
# A lane writes its own log (.build/logs/), printed whole when it ends, so outputs never interleave.
# Set-up failures stop the run; a failed test stage does not stop the others, so one run shows every
# failure. The exit status is non-zero when any stage failed.
set -uo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
cd "$root" || exit 1
export GPULAB_TIMINGS="$root/.build/timings.tsv"
logs="$root/.build/logs"
mkdir -p "$logs"
: >"$GPULAB_TIMINGS"
rm -f "$logs"/*.log

timing() { python3 "$root/scripts/ci/timing.py" "$@"; }
stage() { # stage NAME CMD...
    echo "===== stage: $1"
    timing run "$1" -- "${@:2}"
}
setup() { # setup NAME CMD...: nothing else can run without it
    stage "$@" || exit 1
}
molecule() { # molecule SCENARIO COLLECTIONS_PATH: the scenario with a row per action
    stage "molecule $1" env ANSIBLE_COLLECTIONS_PATH="$2" \
        bash -c "cd .build/collections/ansible_collections/gpulab/fleet && python3 scripts/ci/timing.py molecule $1"
}
pytest() { stage "$1" python -m pytest "${@:2}" -q --durations=15; }

lane_a() {
    stage "setup: test VM image" bash scripts/testvm/build.sh || return 1
    # The lab converges the installed tarball, with nothing on the collections path from the checkout.
    stage "setup: collection tarball, installed" bash scripts/ci/install-tarball.sh || return 1
    molecule lab "$root/.build/admin/collections"
}
lane_b() {
    # build.sh waits while lane A builds the image, then finds it cached (lane A starts first and
    # takes the build lock at once; the head start keeps the rows of the table true).
    sleep 60
    stage "wait for the test VM image" bash scripts/testvm/build.sh || return 1
    pytest "integration (VM)" tests/integration -m vm
}

lanes=()
finish() {
    local rc=$? pid
    for pid in "${lanes[@]}"; do wait "$pid"; done # never leave a VM behind
    for lane in a b; do
        [ -f "$logs/lane-$lane.log" ] || continue
        echo "===== log of lane $lane ($logs/lane-$lane.log)"
        cat "$logs/lane-$lane.log"
        echo "===== end of lane $lane"
    done
    timing table || rc=1
    exit "$rc"
}
trap finish EXIT

setup "setup: apt" make -s apt
setup "setup: venv" make -s venv
setup "setup: collection" make -s collection
export PATH="$root/.venv/bin:$PATH" ANSIBLE_COLLECTIONS_PATH="$root/.build/collections"
lane_a </dev/null >"$logs/lane-a.log" 2>&1 &
lanes+=($!)
renice -n 10 $$ >/dev/null # this shell and what it starts from now on, lane B included
lane_b </dev/null >"$logs/lane-b.log" 2>&1 &
lanes+=($!)
echo "===== lanes A (VM image, molecule lab) and B (VM tests) run in the background"
setup "setup: LXD and its image" bash scripts/lxd-up.sh
stage lint make -s lint
stage sanity make -s sanity
stage build make -s build
pytest unit tests/unit
pytest "integration (host)" tests/integration -m "not vm"
