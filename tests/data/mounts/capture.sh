#!/usr/bin/env bash
# Re-records the real mount outputs tests/unit/test_mounts.py parses. Run as root on a Linux machine
# (util-linux, the repository's venv for ansible.posix.mount), from the repository root:
#   bash tests/data/mounts/capture.sh
# Nothing touches the machine's mounts: every mount is made in a private mount namespace
# (unshare -m --propagation private) that ends with the script; the fstabs are files in a temp dir.
set -euo pipefail
DATA=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$DATA/../../.." && pwd)
B=/tmp/gpulab-mounts-capture  # fixed, so the recorded paths do not change between captures
rm -rf "$B" && mkdir -p "$B"
trap 'rm -rf "$B"' EXIT

# 1. mountinfo from a private mount namespace: tmpfs mounts (one on a path with a space), two tmpfs
#    stacked on one path, bind mounts of a directory, of a subdirectory, of a directory onto itself,
#    and of a directory inside a tmpfs. findmnt (libmount) reads the same table, for a cross-check.
unshare -m --propagation private bash -euo pipefail -s "$B" "$DATA" <<'NS'
B=$1 DATA=$2
mkdir -p "$B/home/alice" "$B/with space" "$B/stack" "$B/src/sub" "$B/bound" "$B/self" "$B/sub-bound" \
    "$B/tmpsrc" "$B/bind-of-tmpfs"
mount -t tmpfs -o size=1m,mode=0755 tmpfs "$B/home/alice"
mount -t tmpfs -o size=1m tmpfs "$B/with space"
mount -t tmpfs -o size=1m tmpfs "$B/stack"
mount -t tmpfs -o size=2m tmpfs "$B/stack"   # stacked: this one is visible
mount -t none -o bind "$B/src" "$B/bound"
mount -t none -o bind "$B/src/sub" "$B/sub-bound"
mount -t none -o bind "$B/self" "$B/self"
mount -t tmpfs -o size=1m other "$B/tmpsrc"  # a tmpfs whose source is not 'tmpfs'
mkdir "$B/tmpsrc/dir"
mount -t none -o bind "$B/tmpsrc/dir" "$B/bind-of-tmpfs"
# Only the root mount and the mounts made here are kept (whole lines, unedited): the rest describes
# this machine, not the parser's cases.
awk -v b="$B/" '$5 == "/" || index($5, b) == 1' /proc/self/mountinfo >"$DATA/mountinfo-namespace.txt"
findmnt -J -l -o ID,PARENT,TARGET,SOURCE,FSTYPE,FSROOT,MAJ:MIN | python3 -c '
import json, sys
b = sys.argv[1]
table = json.load(sys.stdin)
table["filesystems"] = [f for f in table["filesystems"] if f["target"] == "/" or f["target"].startswith(b)]
json.dump(table, sys.stdout, indent=1)
print()' "$B/" >"$DATA/findmnt-namespace.json"
# what umount says about a busy mount point (a process with its cwd in it)
(cd "$B/with space" && sleep 30) &
sleep 0.5
umount "$B/with space" 2>"$DATA/umount-busy.txt.err" || echo "rc=$?" >>"$DATA/umount-busy.txt.err"
kill $!
NS

# 2. fstab as ansible.posix.mount (the module gpulab.fleet.mounts replaces) writes it, on top of
#    this machine's /etc/fstab: an NFS home, a tmpfs on a path with a space, a bind mount.
cp /etc/fstab "$B/fstab"
pm() { "$ROOT/.venv/bin/ansible" localhost -c local -m ansible.posix.mount -a "$1 fstab=$B/fstab state=present" >/dev/null; }
pm "path=/srv/gpulab/home/alice src=storage.lab:/tank/fleet/home/alice fstype=nfs opts=rw,hard,noatime,_netdev"
pm "path='/srv/with space' src=tmpfs fstype=tmpfs opts=size=1m"
pm "path=/srv/datasets src=/data/datasets fstype=none opts=bind,ro dump=1 passno=2"
cp "$B/fstab" "$DATA/fstab-ansible-posix-mount.txt"

# 3. libmount's reading (fstab-ubuntu-forum-raid.txt is not recorded here, see README.md) of every recorded fstab, for a cross-check of the parser.
for f in "$DATA"/fstab-*.txt; do
    findmnt -J --fstab -F "$f" -o SOURCE,TARGET,FSTYPE,OPTIONS,FREQ,PASSNO >"${f%.txt}.findmnt.json"
done
