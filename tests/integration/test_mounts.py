"""gpulab.fleet.mounts against real mounts of this machine's kernel, isolated in a private mount namespace.

The `ns` fixture starts a holder process `unshare -m --propagation private sleep infinity` and ends
it by its PID; every module run and every check goes through `nsenter -t PID -m`, so the tmpfs and
bind mounts exist only in that namespace (the fixture checks that it is a different namespace and
that no mount in it propagates, and each test checks that nothing shows in the host's table). The
fstab is a file of the test and the mount points are under tmp_path.
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
import stat
import subprocess
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from ansible_collections.gpulab.fleet.plugins.module_utils.mounts import parse_mountinfo, visible_mounts
from ansible_collections.gpulab.fleet.plugins.modules.mounts import FSTAB_LOCK
from tests.helpers import run_module

pytestmark = pytest.mark.mountns

DATA = Path(__file__).resolve().parent.parent / "data" / "mounts"


def _wait(predicate, what: str, timeout: float = 10.0):
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def _readlink(path: str) -> str | None:
    try:
        return os.readlink(path)
    except OSError:
        return None


def _comm(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return ""


@dataclass
class MountNS:
    pid: int
    root: Path  # tmp_path of the test: fstab and mount points live here

    @property
    def prefix(self) -> list[str]:
        return ["nsenter", "-t", str(self.pid), "-m"]

    def sh(self, script: str, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        proc = subprocess.run(
            [*self.prefix, "sh", "-c", script, "sh", *args], capture_output=True, text=True, check=False
        )
        if check and proc.returncode != 0:
            raise AssertionError(f"in the namespace: {script} {args} failed: {proc.stderr}")
        return proc

    def mountinfo(self) -> str:
        return self.sh("cat /proc/self/mountinfo").stdout

    def mounted(self) -> dict:
        """{path: LiveMount} of the visible mounts under the test's directory, read inside the namespace."""
        return {
            p: mnt
            for p, mnt in visible_mounts(parse_mountinfo(self.mountinfo())).items()
            if p.startswith(str(self.root))
        }

    def run(self, mounts: list[dict], **kw) -> dict:
        args = {"mounts": mounts, "fstab": str(self.root / "fstab")}
        return run_module("mounts", args, prefix=self.prefix, **kw)


def host_mounts_under(path: Path) -> list[str]:
    """Mount points under `path` in THIS process's (the host's) mount table: must stay empty."""
    return [
        mnt.path for mnt in parse_mountinfo(Path("/proc/self/mountinfo").read_text()) if mnt.path.startswith(str(path))
    ]


@pytest.fixture
def ns(tmp_path):
    holder = subprocess.Popen(["unshare", "-m", "--propagation", "private", "sleep", "infinity"])
    try:
        own = os.readlink("/proc/self/ns/mnt")
        # unshare(1) makes the namespace, makes it private, THEN execs sleep: before that, mounts made
        # through nsenter could land in (or propagate to) the host's namespace.
        _wait(lambda: _comm(holder.pid) == "sleep", "the holder to exec sleep")
        assert _readlink(f"/proc/{holder.pid}/ns/mnt") not in (None, own), "the holder is in the host's mount namespace"
        shared = [line for line in Path(f"/proc/{holder.pid}/mountinfo").read_text().splitlines() if " shared:" in line]
        assert shared == [], f"mounts of the test namespace still propagate: {shared[:3]}"
        (tmp_path / "fstab").write_text((DATA / "fstab-ubuntu-forum-raid.txt").read_text())
        yield MountNS(holder.pid, tmp_path)
    finally:
        holder.kill()
        holder.wait(timeout=10)
    assert host_mounts_under(tmp_path) == []


@pytest.fixture
def busy(ns):
    """Start (by calling it with a path) a process of the namespace whose working directory is in the mount."""
    procs = []

    def start(path: Path) -> int:
        # nsenter without --fork execs sh, which execs sleep: the PID is the sleeping process itself
        proc = subprocess.Popen([*ns.prefix, "sh", "-c", 'cd "$1" && exec sleep 600', "sh", str(path)])
        procs.append(proc)
        _wait(
            lambda: _comm(proc.pid) == "sleep" and _readlink(f"/proc/{proc.pid}/cwd") == str(path), "the busy process"
        )
        return proc.pid

    yield start
    for proc in procs:
        proc.kill()
        proc.wait(timeout=10)


def tmpfs(path: Path, **kw) -> dict:
    return {"path": str(path), "src": "tmpfs", "fstype": "tmpfs", "opts": "size=1m", **kw}


def entry_lines(ns: MountNS) -> list[str]:
    return [line for line in (ns.root / "fstab").read_text().split("\n") if line.startswith(("tmpfs", "other", "/"))]


# -------------------------------------------------------------------------------------------------


def test_check_mode_changes_nothing(ns):
    fstab_before, mountinfo_before = (ns.root / "fstab").read_text(), ns.mountinfo()
    mnt = ns.root / "mnt"
    got = ns.run(
        [tmpfs(mnt / "a"), {"path": str(mnt / "b"), "src": str(ns.root), "fstype": "none", "opts": "bind"}], check=True
    )
    assert got["changed"] and not got["failed"], got
    assert [(e["fstab"], e["live"]) for e in got["mounts"]] == [("add", "mount"), ("add", "mount")]
    assert got["fstab_changed"] is True
    assert (ns.root / "fstab").read_text() == fstab_before
    assert ns.mountinfo() == mountinfo_before
    assert not mnt.exists(), "check mode made the mount points"


def test_converge_idempotence_drift_and_absent(ns):
    mnt, src = ns.root / "mnt", ns.root / "src"
    src.mkdir()
    (src / "data.txt").write_text("kept\n")
    (mnt / "bound").mkdir(parents=True)
    (mnt / "bound" / "under-the-mount.txt").write_text("hidden while mounted\n")
    fstab_before = (ns.root / "fstab").read_text()
    (ns.root / "fstab").chmod(0o640)
    want = [
        tmpfs(mnt / "scratch"),
        tmpfs(mnt / "scratch" / "inner"),  # inside the tmpfs above: mounted after it
        {"path": str(mnt / "bound"), "src": str(src), "fstype": "none", "opts": "bind"},
    ]

    first = ns.run(want)
    assert first["changed"] and not first["failed"], first
    assert [(e["fstab"], e["live"]) for e in first["mounts"]] == [("add", "mount")] * 3
    live = ns.mounted()
    assert live[str(mnt / "scratch")].fstype == "tmpfs" and live[str(mnt / "scratch" / "inner")].fstype == "tmpfs"
    assert live[str(mnt / "scratch" / "inner")].parent_id == live[str(mnt / "scratch")].mount_id
    assert live[str(mnt / "bound")].root.endswith(str(src))  # a bind of src
    assert ns.sh('cat "$1"/data.txt', str(mnt / "bound")).stdout == "kept\n"
    assert stat.S_IMODE((mnt / "scratch").stat().st_mode) == 0o755
    text = (ns.root / "fstab").read_text()
    assert text.startswith(fstab_before), "the old lines must stay byte for byte"
    assert text[len(fstab_before) :].splitlines() == [
        f"tmpfs {mnt}/scratch tmpfs size=1m 0 0",
        f"tmpfs {mnt}/scratch/inner tmpfs size=1m 0 0",
        f"{src} {mnt}/bound none bind 0 0",
    ]
    assert stat.S_IMODE((ns.root / "fstab").stat().st_mode) == 0o640, "fstab mode not kept"
    assert sorted(p.name for p in ns.root.iterdir()) == ["fstab", "mnt", "src"], "a temp file was left"
    assert first["diff"]["after"][str(mnt / "bound")]["mounted"] == {"src": str(src), "fstype": "none"}
    assert host_mounts_under(ns.root) == []

    again = ns.run(want)
    assert not again["changed"] and not again["failed"], again
    assert {(e["fstab"], e["live"]) for e in again["mounts"]} == {("unchanged", "unchanged")}
    assert again["diff"] == {"before": {}, "after": {}}

    # drift: someone unmounted the bind; another source is mounted on the scratch tmpfs
    ns.sh('umount "$1"', str(mnt / "bound"))
    ns.sh(
        'umount "$1" && umount "$2" && mount -t tmpfs -o size=1m other "$2"',
        str(mnt / "scratch" / "inner"),
        str(mnt / "scratch"),
    )
    repaired = ns.run(want)
    assert repaired["changed"] and not repaired["failed"], repaired
    assert [(e["fstab"], e["live"]) for e in repaired["mounts"]] == [
        ("unchanged", "remount"), ("unchanged", "mount"), ("unchanged", "mount")
    ]  # fmt: skip
    assert "other is mounted, not tmpfs" in repaired["mounts"][0]["reason"]
    live = ns.mounted()
    assert live[str(mnt / "scratch")].source == "tmpfs" and str(mnt / "scratch" / "inner") in live
    assert live[str(mnt / "bound")].root.endswith(str(src))
    assert (ns.root / "fstab").read_text() == text
    assert not ns.run(want)["changed"]

    # absent: unmounted, its line gone, the directory and what it holds (under and behind the mount) kept
    gone = ns.run([want[0], want[1], {"path": str(mnt / "bound"), "state": "absent"}])
    assert gone["changed"] and not gone["failed"], gone
    assert gone["mounts"][2] == {"path": str(mnt / "bound"), "state": "absent", "fstab": "remove", "live": "unmount"}
    assert str(mnt / "bound") not in ns.mounted() and str(mnt / "scratch") in ns.mounted()
    assert (mnt / "bound" / "under-the-mount.txt").read_text() == "hidden while mounted\n"
    assert (src / "data.txt").read_text() == "kept\n"
    assert (ns.root / "fstab").read_text() == fstab_before + (
        f"tmpfs {mnt}/scratch tmpfs size=1m 0 0\ntmpfs {mnt}/scratch/inner tmpfs size=1m 0 0\n"
    )
    assert not ns.run([{"path": str(mnt / "bound"), "state": "absent"}])["changed"]
    assert host_mounts_under(ns.root) == []


def test_busy_mount_fails_that_item_and_applies_the_others(ns, busy):
    mnt = ns.root / "mnt"
    assert not ns.run([tmpfs(mnt / "busy"), tmpfs(mnt / "free")])["failed"]
    busy(mnt / "busy")

    got = ns.run(
        [
            {"path": str(mnt / "busy"), "state": "absent"},
            {"path": str(mnt / "free"), "state": "absent"},
            tmpfs(mnt / "new"),
        ]
    )
    assert got["failed"] and got["changed"], got
    assert [e["live"] for e in got["mounts"]] == ["unmount", "unmount", "mount"]
    assert "target is busy" in got["mounts"][0]["error"] and str(mnt / "busy") in got["msg"]
    assert "error" not in got["mounts"][1] and "error" not in got["mounts"][2]
    live = ns.mounted()
    assert str(mnt / "busy") in live, "a busy mount must stay (never umount -l / -f)"
    assert str(mnt / "free") not in live and str(mnt / "new") in live
    assert entry_lines(ns)[-1:] == [f"tmpfs {mnt}/new tmpfs size=1m 0 0"]  # fstab was written once, first
    assert all("/busy " not in line and "/free " not in line for line in entry_lines(ns))


def test_busy_mount_is_unmounted_once_free(ns, busy):
    mnt = ns.root / "mnt"
    ns.run([tmpfs(mnt / "busy")])
    pid = busy(mnt / "busy")
    absent = [{"path": str(mnt / "busy"), "state": "absent"}]
    assert ns.run(absent)["failed"]
    os.kill(pid, 9)  # the busy process, by its PID (the fixture reaps it)
    _wait(lambda: _readlink(f"/proc/{pid}/cwd") is None, "the busy process to let go of the mount")
    again = ns.run(absent)
    assert again["changed"] and not again["failed"], again
    assert again["mounts"][0]["live"] == "unmount" and again["mounts"][0]["fstab"] == "unchanged"
    assert str(mnt / "busy") not in ns.mounted() and (mnt / "busy").is_dir()


def test_bad_input_fails_naming_field_and_value_and_changes_nothing(ns):
    fstab_before, mountinfo_before = (ns.root / "fstab").read_text(), ns.mountinfo()
    mnt = ns.root / "mnt"
    got = ns.run(
        [
            tmpfs(mnt / "good"),
            tmpfs("relative/path"),
            tmpfs(mnt / "with space"),
            tmpfs(mnt / "good"),
            {"path": str(mnt / "nosrc")},
            tmpfs(mnt / "weird", state="present"),
            tmpfs(mnt / "opts", opts="size=1m,\nmode=0755"),
        ]
    )
    assert got["failed"] and not got["changed"], got
    for needle in (
        "mounts[1] ('relative/path'): path: 'relative/path' is not absolute",
        f"mounts[2] ('{mnt}/with space'): path: '{mnt}/with space' contains whitespace",
        f"mounts[3] ('{mnt}/good'): path: '{mnt}/good' is listed twice (also mounts[0])",
        f"mounts[4] ('{mnt}/nosrc'): src: missing; required with state mounted",
        f"mounts[5] ('{mnt}/weird'): state: 'present' is not one of mounted, absent",
        f"mounts[6] ('{mnt}/opts'): opts: 'size=1m,\\nmode=0755' contains whitespace",
    ):
        assert needle in got["msg"], (needle, got["msg"])
    assert (ns.root / "fstab").read_text() == fstab_before
    assert ns.mountinfo() == mountinfo_before
    assert not mnt.exists()


def test_changed_options_update_fstab_and_are_reported_pending(ns):
    path = ns.root / "mnt" / "opts"
    ns.run([tmpfs(path)])
    changed = ns.run([tmpfs(path, opts="size=2m")])
    assert changed["changed"] and not changed["failed"], changed
    assert changed["mounts"][0]["fstab"] == "update" and changed["mounts"][0]["live"] == "unchanged"
    assert changed["pending_remount"] == [str(path)]
    warnings = json.dumps(changed.get("warnings", []))  # 2.19: WarningSummary dicts around the message
    assert f"options of {path} changed in fstab but the live mount keeps the old ones" in warnings, changed
    assert changed["diff"]["before"][str(path)]["fstab"]["opts"] == "size=1m"
    assert changed["diff"]["after"][str(path)]["fstab"]["opts"] == "size=2m"
    assert entry_lines(ns)[-1] == f"tmpfs {path} tmpfs size=2m 0 0"
    assert "size=1024k" in ns.mounted()[str(path)].super_options, "the live mount must not be remounted"
    again = ns.run([tmpfs(path, opts="size=2m")])
    assert not again["changed"] and again["pending_remount"] == []


def test_unreachable_nfs_server_fails_its_mounts_at_once_and_applies_the_others(ns):
    # A real connect to the NFS port of 127.0.0.1, where nothing listens (checked first): the module's
    # probe is refused and fails every mount of that server with the server and the mount point named,
    # without running mount.nfs (which retries a `hard` mount for 2 minutes, per mount).
    with socket.socket() as probe:
        if probe.connect_ex(("127.0.0.1", 2049)) == 0:
            pytest.skip("something listens on 127.0.0.1:2049 on this machine")
    mnt = ns.root / "mnt"
    homes = [
        {"path": str(mnt / name), "src": f"127.0.0.1:/tank/fleet/home/{name}", "fstype": "nfs", "opts": "rw,hard"}
        for name in ("carol", "dave")
    ]
    got = ns.run([*homes, tmpfs(mnt / "local")])
    assert got["failed"] and got["changed"], got
    for home, entry in zip(homes, got["mounts"][:2], strict=True):
        why = f"{home['path']}: NFS server 127.0.0.1 is unreachable from this host (tcp/2049: "
        assert entry["error"].startswith(why), entry
        assert home["path"] in got["msg"]
    assert "error" not in got["mounts"][2]
    live = ns.mounted()
    assert str(mnt / "local") in live and str(mnt / "carol") not in live and str(mnt / "dave") not in live
    # fstab holds them (a boot, or the next run, mounts them once the server answers) ...
    fstab = (ns.root / "fstab").read_text().splitlines()
    assert [line for line in fstab if line.startswith("127.0.0.1:")] == [
        f"{h['src']} {h['path']} nfs rw,hard 0 0" for h in homes
    ]
    # ... and the next run tries again, the local mount being done (the reachable server's twin: the
    # lab's gpu1, molecule/lab, mounts its homes from store through the same probe)
    again = ns.run([*homes, tmpfs(mnt / "local")])
    assert again["failed"], again
    assert [(e["fstab"], e["live"], "error" in e) for e in again["mounts"]] == [
        ("unchanged", "mount", True), ("unchanged", "mount", True), ("unchanged", "unchanged", False)
    ]  # fmt: skip


def test_a_run_waits_for_another_runs_fstab_edit_and_keeps_its_entry(ns):
    """Two runs at once (two admins): the second reads the fstab only once the first has written it, so
    neither drops the other's entry. The test plays the first run: it holds the lock, edits the fstab
    while the module waits, then lets go."""
    fstab = ns.root / "fstab"
    path = ns.root / "mine"
    holder = os.open(FSTAB_LOCK, os.O_RDWR | os.O_CREAT, 0o600)
    fcntl.flock(holder, fcntl.LOCK_EX)
    result: dict = {}
    try:
        run = threading.Thread(target=lambda: result.update(ns.run([tmpfs(path)])))
        run.start()
        time.sleep(3)
        assert str(path) not in fstab.read_text(), "the module wrote the fstab while another run held the lock"
        with fstab.open("a") as fh:
            fh.write("other:/srv/x /srv/other nfs defaults 0 0\n")
    finally:
        os.close(holder)
    run.join(timeout=120)
    assert result["changed"] is True and not result.get("failed"), result
    assert "for another run's fstab edits to end" in json.dumps(result.get("warnings", [])), result
    text = fstab.read_text()
    assert "other:/srv/x /srv/other nfs defaults 0 0" in text and f"tmpfs {path} tmpfs size=1m" in text, text
    assert str(path) in ns.mounted()
