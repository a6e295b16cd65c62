#!/usr/bin/env bash
# Which NFS layouts let LXD start a container whose home disk comes over NFS (docs/dev/lab.md, "The
# NFS-home container start"). On ONE throwaway test VM, as the earlier failing attempt had it (the
# storage server and the NFS client on the same kernel, a loopback NFS mount), each case exports a
# 0700 home owned by carol (10003) from a ZFS dataset, mounts it, gives an empty container a disk
# with that source and starts it. LXD checks the source (its lstat) before anything else of the start,
# so the first line of `lxc start` says whether the disk passed: "Failed accessing source path", or
# "Failed to run: /usr/bin/lxd forkstart" (the container's empty rootfs has no init: the devices were
# set up, the disk passed).
#   scripts/testvm/probe-nfs-home.sh            (needs the cached test VM image: scripts/testvm/build.sh)
# Prints one block per case; the VM is removed at the end, also on failure.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
NAME=gpulab-nfs-probe
trap 'bash "$here/down.sh" "$NAME" >/dev/null 2>&1 || true' EXIT
bash "$here/up.sh" "$NAME" --memory 2048 >/dev/null
# as a file: lxc reads a non-terminal stdin as instance YAML and would eat a script piped to bash
bash "$here/ssh.sh" "$NAME" 'cat >/root/probe.sh' <<'EOF'
set -uo pipefail
modprobe zfs
truncate -s 1G /var/tmp/probe.img
zpool create -f -O mountpoint=/probe probe /var/tmp/probe.img
zfs create probe/home            # the home tree: 0755 root:root, as zfs_datasets leaves it
zfs create probe/home/carol
chown 10003:10003 /probe/home/carol && chmod 0700 /probe/home/carol
mkdir -p /etc/exports.d && systemctl start nfs-server
# root may map the default range and carol's id (what gpu_host writes to /etc/subuid and /etc/subgid)
printf 'root:1000000:1000000000\nroot:10003:1\n' | tee /etc/subuid >/etc/subgid
systemctl restart lxd && lxd waitready --timeout 300
lxc storage create default dir >/dev/null && lxc profile device add default root disk path=/ pool=default >/dev/null
# the product's container settings (workstations.desired_config): isolated idmap, carol mapped 1:1
lxc init --empty probe -c security.idmap.isolated=true -c security.nesting=true \
    -c raw.idmap="both 10003 10003" >/dev/null
mkdir /var/lib/lxd/storage-pools/default/containers/probe/rootfs   # empty: the start fails at forkstart

stat_of() { echo "root's stat of the source: $(stat -c '%A %u' "$1" 2>&1)"; }
with_disk() { lxc config device add probe home disk source="$1" path=/home/carol >/dev/null; }
without_disk() { until lxc config device remove probe home >/dev/null 2>&1; do sleep 1; done; }
# start the container, print the first line LXD says, wait until it is stopped again
start() {
    echo "lxc start: $(lxc start probe 2>&1 | head -1 || true)"
    until [ "$(lxc list -f csv -c s probe)" = STOPPED ]; do sleep 1; done
}
# case EXPORT_OPTIONS WHAT MOUNT_POINT PARENT_MODE SOURCE: export, mount, start, undo
case_() {
    local opts=$1 what=$2 at=$3 mode=$4 src=$5
    echo "### export 127.0.0.1($opts); mount 127.0.0.1:$what at $at (its parent $mode); disk source $src"
    echo "/probe/home/carol 127.0.0.1($opts)" >/etc/exports.d/probe.exports
    exportfs -ra
    mkdir -p "$at" && chmod "$mode" "$(dirname "$at")"
    mount -t nfs -o vers=4.2,hard "127.0.0.1:$what" "$at" || { echo "mount failed"; return; }
    stat_of "$src" && with_disk "$src" && start && without_disk
    umount "$at"
}
rs=rw,sync,no_subtree_check,root_squash
nrs=rw,sync,no_subtree_check,no_root_squash
# the product's layout: each home on its own mount under a local 0755 directory
case_ $rs /probe/home/carol /srv/gpulab/home/carol 0755 /srv/gpulab/home/carol
# a home mounted under a temporary directory (mkdtemp makes it 0700)
case_ $rs /probe/home/carol /srv/nfsmnt-tmp/carol 0700 /srv/nfsmnt-tmp/carol
# the home tree mounted once (NFSv4 pseudo-root above the one exported home), the home below it
case_ $rs /probe/home /srv/nfsmnt-tree 0755 /srv/nfsmnt-tree/carol
case_ $nrs /probe/home /srv/nfsmnt-tree 0755 /srv/nfsmnt-tree/carol
case_ $nrs /probe/home/carol /srv/nfsmnt-tmp/carol 0700 /srv/nfsmnt-tmp/carol
# The tree itself exported (the product exports each home, nothing above), 0700: a directory that
# root must search on the server. root_squash; then the export changed to no_root_squash under the
# same mount (at once and 40 s later); then a fresh mount. Output of 2026-12-03: docs/dev/lab.md.
chmod 0700 /probe/home
tree() { echo "/probe/home 127.0.0.1($1)" >/etc/exports.d/probe.exports && exportfs -ra; }
src=/srv/nfsmnt-tree/carol
tree $rs && mount -t nfs -o vers=4.2,hard 127.0.0.1:/probe/home /srv/nfsmnt-tree
echo "### the tree /probe/home (0700) exported with root_squash, mounted at /srv/nfsmnt-tree"
stat_of $src && with_disk $src && start
tree $nrs
echo "### the export changed to no_root_squash (exportfs -ra), the same mount: at once, then 40 s later"
stat_of $src && start
sleep 40
stat_of $src && start && without_disk
umount /srv/nfsmnt-tree
echo "### the same tree export (no_root_squash), mounted anew"
mount -t nfs -o vers=4.2,hard 127.0.0.1:/probe/home /srv/nfsmnt-tree
stat_of $src && with_disk $src && start
echo "### versions: lxd $(lxd --version), kernel $(uname -r), $(zfs version | head -1)"
EOF
bash "$here/ssh.sh" "$NAME" bash /root/probe.sh </dev/null
