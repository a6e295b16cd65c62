#!/usr/bin/env bash
# Stop test VM instance NAME (by the PID in its pidfile, after checking that PID really is the qemu of
# this instance) and remove its overlay, disks and state directory.
#   scripts/testvm/down.sh NAME
set -euo pipefail

# shellcheck source=lib.sh
. "$(dirname "$0")/lib.sh"

NAME=${1:-}
[ -n "$NAME" ] || { echo "usage: $0 NAME" >&2; exit 2; }
[[ "$NAME" =~ ^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$ ]] || die "bad instance name '$NAME'"
STATE="$RUN_ROOT/$NAME"
[ -d "$STATE" ] || { step "$NAME: no state dir $STATE, nothing to do"; exit 0; }

# True when PID is a live qemu started by up.sh for this instance (its cmdline names our overlay).
is_our_qemu() {
    local pid=$1
    [ -r "/proc/$pid/cmdline" ] || return 1
    case "$(readlink "/proc/$pid/exe" 2>/dev/null)" in */qemu-system-*) ;; *) return 1 ;; esac
    tr '\0' '\n' <"/proc/$pid/cmdline" | grep -qxF "gpulab-testvm-$NAME" &&
        tr '\0' '\n' <"/proc/$pid/cmdline" | grep -qF "file=$STATE/overlay.qcow2,"
}

if [ -f "$STATE/qemu.pid" ]; then
    PID=$(tr -dc 0-9 <"$STATE/qemu.pid")
    if [ -n "$PID" ] && is_our_qemu "$PID"; then
        step "stopping $NAME (qemu pid $PID)"
        kill -TERM "$PID"
        for _ in $(seq 50); do is_our_qemu "$PID" || break; sleep 0.2; done
        if is_our_qemu "$PID"; then
            kill -KILL "$PID"
            sleep 0.5
        fi
        ! is_our_qemu "$PID" || die "qemu pid $PID of $NAME did not stop"
    else
        step "$NAME: pid '${PID}' is not running qemu for this instance; only removing state"
    fi
fi
rm -rf --one-file-system "$STATE"
step "$NAME removed"
