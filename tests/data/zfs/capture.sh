#!/usr/bin/env bash
# Re-records the real OpenZFS outputs the unit tests parse. Runs INSIDE a throwaway test VM that
# has 3 empty extra disks (scripts/testvm/up.sh NAME --disks 3), never on a real server:
#   scripts/testvm/ssh.sh NAME bash -s < tests/data/zfs/capture.sh | tar -x -C tests/data/zfs
# Each output goes to its own file; commands that fail record stderr and rc too.
# `bash -s import` (on a fresh VM) records only what zfs_pool reads before it creates a pool: `zpool
# import` (none, an exported pool, after a destroy) and lsblk's ZFS labels on the disks; the outputs
# recorded without it (txgs, times) stay as they are.
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
D=/dev/disk/by-id/virtio-gpulab-data
if [ "${1:-}" = import ]; then
    both() { # both FILE CMD...: stdout and stderr to FILE, then its rc (`zpool import` with nothing to list
        # says so on stderr with rc 0)
        local file=$1
        shift
        "$@" >"$OUT/$file" 2>&1
        echo "rc=$?" >>"$OUT/$file"
    }
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
    exit 0
fi
zfs version >"$OUT/version.txt"
zpool create -o ashift=12 -O compression=lz4 -O atime=off tank raidz1 ${D}1 ${D}2 ${D}3
rec zpool-status-raidz-P-L.txt zpool status -P -L tank
rec zpool-status-raidz-P.txt zpool status -P tank
rec zpool-get-all.txt zpool get -H -p -o name,property,value,source all tank
rec zpool-status-missing.txt zpool status -P -L nosuchpool

# A second pool on loop devices for special/log/cache/spare sections.
for i in 1 2 3 4 5 6 7; do truncate -s 256M /var/tmp/cap$i.img; LOOP[i]=$(losetup -f --show /var/tmp/cap$i.img); done
zpool create demo mirror "${LOOP[1]}" "${LOOP[2]}" special mirror "${LOOP[3]}" "${LOOP[4]}" log "${LOOP[5]}" cache "${LOOP[6]}" spare "${LOOP[7]}"
rec zpool-status-mixed-P-L.txt zpool status -P -L demo
zpool destroy demo
for i in 1 2 3 4 5 6 7; do losetup -d "${LOOP[$i]}"; rm -f /var/tmp/cap$i.img; done

zfs create -p tank/fleet/home
zfs create -o quota=10G -o org.gpulab:owner=alice tank/fleet/home/alice
zfs create -o quota=none -o recordsize=1M -o compression=on tank/fleet/home/bob
zfs create -o sharenfs='rw=@10.0.0.0/24,no_root_squash' tank/fleet/home/carol
zfs create -o volblocksize=16K -V 64M tank/fleet/home/vol
zfs snapshot tank/fleet/home/alice@auto-1 tank/fleet/home/bob@auto-1
zfs snapshot tank/fleet/home/alice@auto-2
zfs snapshot tank/fleet/home/alice@manual
rec zfs-snapshot-same-fs-twice.txt zfs snapshot tank/fleet/home/alice@x tank/fleet/home/alice@y
rec zfs-get-all-tree.txt zfs get -H -p -r -t filesystem,volume -o name,property,value,source all tank/fleet/home
rec zfs-get-props-tree.txt zfs get -H -p -r -t filesystem,volume -o name,property,value,source \
    compression,mounted,mountpoint,org.gpulab:owner,quota,recordsize,sharenfs,type tank/fleet/home
rec zfs-list-snapshots.txt zfs list -H -p -t snapshot -d 1 -o name,createtxg,creation tank/fleet/home/alice tank/fleet/home/bob
rec zfs-get-missing-parent.txt zfs get -H -p -r -t filesystem,volume -o name,property,value,source quota tank/nosuch
rec zfs-get-bad-property.txt zfs get -H -p -r -o name,property,value,source quota,nosuchprop tank/fleet/home
rec zfs-set-quota-lots.txt zfs set quota=lots tank/fleet/home/alice
rec zfs-set-create-only.txt zfs set casesensitivity=mixed tank/fleet/home/alice
rec zfs-create-bad-name.txt zfs create 'tank/fleet/home/a b@c'
rec zfs-create-leading-underscore.txt zfs create tank/fleet/home/_archive
rec zfs-create-leading-dot.txt zfs create tank/fleet/home/.hidden
rec zfs-destroy-with-snapshots.txt zfs destroy tank/fleet/home/bob
zpool destroy tank
tar -C "$OUT" -c .
rm -rf "$OUT"
