"""gpulab.fleet.mounts with real NFS: the kernel NFS server of the test VM exports a temp directory to
127.0.0.1 and the module mounts it in the same VM (fstype nfs, NFSv4.2), run there directly like in
test_zfs.py. The module manages the VM's real /etc/fstab; the test checks that every other
line stays, and removes its export, mount and fstab line at the end (also on failure).
"""

from __future__ import annotations

import shlex
import uuid

import pytest

pytestmark = [pytest.mark.vm, pytest.mark.slow]

OPTS = "vers=4.2,hard,noatime,_netdev"


def task(testvm, args, **kw):
    return testvm.run_module("mounts", args, **kw)


def mountinfo_line(testvm, path):
    """The mountinfo fields of the mount at `path` in the VM ([] when nothing is mounted there)."""
    out = testvm.ssh("cat /proc/self/mountinfo").stdout
    lines = [line.split(" ") for line in out.splitlines() if line.split(" ")[4] == path]
    return lines[-1] if lines else []


@pytest.fixture
def nfs_export(testvm):
    """(export dir, mount point): a temp dir of the VM exported to 127.0.0.1; cleaned up afterwards."""
    tag = uuid.uuid4().hex[:8]
    export, mnt = f"/srv/gpulab-nfs-{tag}", f"/mnt/gpulab-nfs-{tag}/home"
    q_export, q_mnt = shlex.quote(export), shlex.quote(mnt)
    testvm.ssh(f"mkdir -p {q_export} && echo served >{q_export}/hello.txt && "
               f"exportfs -o rw,sync,no_subtree_check,no_root_squash 127.0.0.1:{q_export}")  # fmt: skip
    try:
        yield export, mnt
    finally:
        testvm.ssh(
            f"while mountpoint -q {q_mnt}; do umount {q_mnt} || break; done; "
            f"sed -i '\\#{mnt}#d' /etc/fstab; exportfs -u 127.0.0.1:{q_export}; "
            f"rm -rf {q_export} /mnt/gpulab-nfs-{tag}",
            check=False,
        )


def test_nfs_mount_lifecycle(testvm, nfs_export):
    export, mnt = nfs_export
    fstab_before = testvm.ssh("cat /etc/fstab").stdout
    # the module ends a last line that has no newline before it appends
    base = fstab_before if fstab_before.endswith("\n") or not fstab_before else fstab_before + "\n"
    want = {"mounts": [{"path": mnt, "src": f"127.0.0.1:{export}", "fstype": "nfs", "opts": OPTS}]}

    check = task(testvm, want, check=True)
    assert check["changed"] and not check.get("failed"), check
    assert check["mounts"][0]["fstab"] == "add" and check["mounts"][0]["live"] == "mount"
    assert mountinfo_line(testvm, mnt) == [] and testvm.ssh("cat /etc/fstab").stdout == fstab_before

    first = task(testvm, want)
    assert first["changed"] and not first.get("failed"), first
    fields = mountinfo_line(testvm, mnt)
    sep = fields.index("-")
    assert fields[sep + 1 : sep + 3] == ["nfs4", f"127.0.0.1:{export}"], fields
    assert "vers=4.2" in fields[sep + 3]
    fstab = testvm.ssh("cat /etc/fstab").stdout
    assert fstab == base + f"127.0.0.1:{export} {mnt} nfs {OPTS} 0 0\n"
    # a write through the mount reaches the exported directory; the served file is readable
    testvm.ssh(f"echo through-nfs >{shlex.quote(mnt)}/written.txt")
    assert testvm.ssh(f"cat {shlex.quote(export)}/written.txt").stdout == "through-nfs\n"
    assert testvm.ssh(f"cat {shlex.quote(mnt)}/hello.txt").stdout == "served\n"

    # idempotent: the kernel shows nfs4 for fstype nfs, and that is the same mount
    again = task(testvm, want)
    assert not again["changed"] and not again.get("failed"), again
    assert again["mounts"][0]["live"] == "unchanged"

    # changed options: fstab updated, the live mount left alone and reported
    opts2 = OPTS.replace("noatime", "relatime")
    changed = task(testvm, {"mounts": [dict(want["mounts"][0], opts=opts2)]})
    assert changed["changed"] and changed["pending_remount"] == [mnt], changed
    assert mountinfo_line(testvm, mnt)[0] == fields[0], "the NFS mount was remounted (new mount ID)"
    assert f"{mnt} nfs {opts2} 0 0" in testvm.ssh("cat /etc/fstab").stdout

    # absent: unmounted, the line gone (the rest of fstab as it was), mount point and data kept
    gone = task(testvm, {"mounts": [{"path": mnt, "state": "absent"}]})
    assert gone["changed"] and not gone.get("failed"), gone
    assert gone["mounts"][0]["live"] == "unmount" and gone["mounts"][0]["fstab"] == "remove"
    assert mountinfo_line(testvm, mnt) == []
    assert testvm.ssh("cat /etc/fstab").stdout == base
    assert testvm.ssh(f"test -d {shlex.quote(mnt)} && cat {shlex.quote(export)}/written.txt").stdout == "through-nfs\n"
    assert not task(testvm, {"mounts": [{"path": mnt, "state": "absent"}]})["changed"]
