#!/usr/bin/env bash
# Boot the test VMs of one lab in parallel (up.sh each) and, on any failure or interrupt, tear them
# all down again (down.sh), so a failed boot never leaves a VM behind.
#
#   scripts/testvm/lab-up.sh SPEC.json
#
# SPEC.json: a list of {"name": NAME, "lan": "ADDR/PREFIX" (optional), "forwards": [GUESTPORT...]
# (optional: each forwarded from a free port on 127.0.0.1, recorded in instance.json), "args": [up.sh
# options...]}.
# VMs with a "lan" address share a private L2 segment: two of them at most, joined point-to-point by
# UDP datagrams between two free ports on 127.0.0.1 (up.sh --lan). Instances of the same names are
# stopped first, so the lab always starts fresh. Each up.sh writes its output to
# RUN_ROOT/.lab-NAME.log; the logs are printed one after the other when all have finished.
set -euo pipefail

# shellcheck source=lib.sh
. "$(dirname "$0")/lib.sh"

SPEC=${1:-}
[ -f "$SPEC" ] || { echo "usage: $0 SPEC.json" >&2; exit 2; }

# One line per VM: NAME<TAB>LAN<TAB>ARGS (shell-quoted, the forwards included); LAN is "-" when the VM
# has none. Free ports are taken by binding port 0 on 127.0.0.1 (all sockets held until every port is
# chosen, so no two are the same).
mapfile -t VMS < <(python3 - "$SPEC" <<'EOF'
import json, shlex, socket, sys
vms = json.load(open(sys.argv[1]))
if not isinstance(vms, list) or not vms:
    sys.exit("lab-up: the spec must be a non-empty list of VMs")
held = []
def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    held.append(s)
    return s.getsockname()[1]
for vm in vms:
    args = [str(a) for a in vm.get("args", [])]
    for guest in vm.get("forwards") or []:
        args += ["--forward", f"{free_port()}:{int(guest)}"]
    print(f"{vm['name']}\t{vm.get('lan') or '-'}\t{shlex.join(args)}")
EOF
)
NAMES=()
LANS=()
for line in "${VMS[@]}"; do
    IFS=$'\t' read -r name lan _ <<<"$line"
    NAMES+=("$name")
    [ "$lan" = - ] || LANS+=("$name")
done
[ ${#LANS[@]} -le 2 ] || die "at most two VMs can share the lan segment (point-to-point), got ${#LANS[@]}: ${LANS[*]}"
if [ ${#LANS[@]} -eq 1 ]; then die "a lan segment needs two VMs, only ${LANS[0]} has an address"; fi
read -r PORT_A PORT_B < <(python3 -c '
import socket
socks = [socket.socket(socket.AF_INET, socket.SOCK_DGRAM) for _ in range(2)]
for s in socks:
    s.bind(("127.0.0.1", 0))
print(*(s.getsockname()[1] for s in socks))')

mkdir -p "$RUN_ROOT"
# One lab boots at a time on this machine: emulated boots share its cores, and three VMs booting at
# once beside make test's host-side tests took over 10 minutes each (all of them past up.sh's
# timeout) where two alone take 3. The lock is held until every VM of this lab answers; the wait for
# it does not count against the boot timeout, which is longer here for the same reason.
exec 8>"$RUN_ROOT/.boot.lock"
if ! flock -n 8; then
    step "another lab is booting ($RUN_ROOT/.boot.lock): waiting for it"
    flock 8
fi
export GPULAB_VM_BOOT_TIMEOUT=${GPULAB_VM_BOOT_TIMEOUT:-1200}
PIDS=()
teardown() {
    local name
    for pid in "${PIDS[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
    wait || true
    for name in "${NAMES[@]}"; do "$TESTVM_DIR/down.sh" "$name" || true; done
}
trap 'step "interrupted: tearing the lab down"; teardown; exit 130' INT TERM

for name in "${NAMES[@]}"; do "$TESTVM_DIR/down.sh" "$name" >/dev/null; done
T_LAB=$SECONDS
for line in "${VMS[@]}"; do
    IFS=$'\t' read -r name lan args <<<"$line"
    eval "ARGS=($args)"
    if [ "$lan" != - ]; then
        if [ "$name" = "${LANS[0]}" ]; then ARGS+=(--lan "$PORT_A:$PORT_B:$lan"); else ARGS+=(--lan "$PORT_B:$PORT_A:$lan"); fi
    fi
    step "booting $name: up.sh $name ${ARGS[*]}"
    "$TESTVM_DIR/up.sh" "$name" "${ARGS[@]}" >"$RUN_ROOT/.lab-$name.log" 2>&1 </dev/null 8>&- &
    PIDS+=($!)
done
FAILED=()
for i in "${!PIDS[@]}"; do
    wait "${PIDS[i]}" || FAILED+=("${NAMES[i]}")
done
PIDS=()
for name in "${NAMES[@]}"; do
    echo "----- up.sh $name"
    cat "$RUN_ROOT/.lab-$name.log"
    rm -f "$RUN_ROOT/.lab-$name.log"
done
if [ ${#FAILED[@]} -gt 0 ]; then
    step "boot failed: ${FAILED[*]}; tearing the whole lab down"
    teardown
    die "lab boot failed (${FAILED[*]})"
fi
flock -u 8
step "lab up after $((SECONDS - T_LAB))s: ${NAMES[*]}"
