#!/usr/bin/env bash
# Records what zfs_pool reads before it creates a pool: `zpool import` (none, an exported pool, after
# a destroy) and lsblk's ZFS labels on the disks. Runs INSIDE a throwaway test VM with 3 empty extra
# disks (scripts/testvm/up.sh NAME --disks 3), never on a real server:
#   scripts/testvm/ssh.sh NAME bash -s < tests/data/zfs/capture-import.sh | tar -x -C tests/data/zfs
# Separate from capture.sh so that the outputs recorded there (txgs, times) stay as they are.
set -u
OUT=$(mktemp -d)
rec() { # rec FILE CMD...: stdout to FILE, stderr to FILE.err with rc when the command fails
    local file=$1
    shift
    "$@" >"$OUT/$file" 2>"$OUT/$file.err"
    local rc=$?
    if [ "$rc" -ne 0 ]; then echo "rc=$rc" >>"$OUT/$file.err"; else rm -f "$OUT/$file.err"; fi
    [ -s "$OUT/$file" ] || rm -f "$OUT/$file"
}
both() { # both FILE CMD...: stdout and stderr to FILE, then its rc (`zpool import` with nothing to list
    # says so on stderr with rc 0)
    local file=$1
    shift
    "$@" >"$OUT/$file" 2>&1
    echo "rc=$?" >>"$OUT/$file"
}
D=/dev/disk/by-id/virtio-gpulab-data
# shellcheck disable=SC2054  # NAME,FSTYPE,LABEL is one argument
LABELS=(lsblk -n -P -o NAME,FSTYPE,LABEL "${D}1" "${D}2" "${D}3")
both zpool-import-none.txt zpool import
rec lsblk-blank-disks.txt "${LABELS[@]}"
zpool create -o ashift=12 tank raidz1 "${D}1" "${D}2" "${D}3"
udevadm settle
rec lsblk-pool-disks.txt "${LABELS[@]}"
zpool export tank
rec zpool-import-exported.txt zpool import
zpool import tank
zpool destroy tank
udevadm settle
both zpool-import-after-destroy.txt zpool import
rec lsblk-destroyed-pool-disks.txt "${LABELS[@]}"
tar -C "$OUT" -c .
rm -rf "$OUT"
