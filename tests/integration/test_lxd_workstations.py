"""gpulab.fleet.lxd_workstations against the real LXD daemon (scripts/lxd-up.sh) and the gpulab/debian12 image.

Two workstations are created once for this module (module-scoped fixture `pair`) and then read, re-run,
drifted and repaired by the tests below, in file order. Lifecycle, GPU-mode, failure and bad-input tests use
their own containers. Fake NVIDIA device nodes are made with mknod in a per-test directory (never in /dev)
and passed through gpu_device_root / proc_root; the procfs information file is a real recorded one
(tests/data/gpu/information_h100-80gb-hbm3.txt: minor 5, PCI 0000:62:00.0).

Test users have uids in 20000-20999 (each test its own) so their /etc/subuid lines never collide with other
engineers' tests; the module appends `root:UID:1` lines, which are left in place (harmless delegations).
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import stat
import subprocess
import threading
import time
from pathlib import Path

import pytest

from tests.fixtures.lxd import (
    LXD_IMAGE,
    LXD_SOCKET,
    InstanceNames,
    delete_instances,
    launch,
    lxc_exec,
    ssh,
    wait_systemd,
)
from tests.helpers import ROOT, VENV_BIN, ansible_env, run_module

pytestmark = pytest.mark.lxd

H100_INFO = ROOT / "tests" / "data" / "gpu" / "information_h100-80gb-hbm3.txt"
FAKE_UVM_MAJOR = 240  # 240-254 are reserved for local/experimental use; unused on this host


def delete_owned(client, names: InstanceNames) -> None:
    delete_instances(client, names.owns)  # best-effort teardown: errors ignored


def keypair(directory: Path, name: str) -> tuple[Path, str]:
    key = directory / name
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", name, "-f", str(key)], check=True)
    return key, key.with_suffix(".pub").read_text().strip()


def fake_gpu_host(root: Path) -> tuple[Path, Path]:
    """A procfs tree with one real recorded GPU information file, and mknod'ed nodes for it."""
    proc, dev = root / "proc", root / "dev"
    info = proc / "driver" / "nvidia" / "gpus" / "0000:62:00.0"
    info.mkdir(parents=True)
    shutil.copy(H100_INFO, info / "information")
    dev.mkdir()
    for node, major, minor in (("nvidia5", 195, 5), ("nvidiactl", 195, 255), ("nvidia-uvm", FAKE_UVM_MAJOR, 0)):
        os.mknod(dev / node, stat.S_IFCHR | 0o666, os.makedev(major, minor))
    return proc, dev


def inside(name: str, *cmd: str) -> str:
    res = lxc_exec(name, *cmd)
    assert res.returncode == 0, f"{cmd}: {res.stderr}"
    return res.stdout


def lxcfs_meminfo(name: str, tries: int = 5) -> str:
    """/proc/meminfo inside NAME, as lxcfs renders it from the container's memory cgroup.

    lxcfs now and then answers a read with zero bytes (exit status 0) while the host is loaded: seen
    once in CI, right after the container started. An empty read proves nothing about the limit, so
    read again; a wrong MemTotal still fails the caller's assertion.
    """
    for _attempt in range(tries):
        if out := inside(name, "cat", "/proc/meminfo"):
            return out
        time.sleep(1)
    return ""


def config_of(client, name: str) -> dict:
    return client.instances.get(name).config


def by_name(result: dict) -> dict:
    return {w["name"]: w for w in result["workstations"]}


# ---- the shared pair ----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def pair(lxd_client, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("ws")
    names = InstanceNames()
    proc, dev = fake_gpu_host(tmp)
    alice_key, alice_pub = keypair(tmp, "alice")
    bob_key, bob_pub = keypair(tmp, "bob")
    a, b = names(), names()
    args = {
        "image": LXD_IMAGE,
        "gpu_mode": "devices",
        "proc_root": str(proc),
        "gpu_device_root": str(dev),
        "nvidia_smi": str(tmp / "no-nvidia-smi"),
        "workstations": [
            {
                "name": a,
                "user": {"name": "alice", "uid": 20001, "ssh_keys": [alice_pub], "groups": ["video"]},
                "limits": {"cpu": 1, "memory": "512M", "processes": 300},
                "gpus": [0],
            },
            {
                "name": b,
                "user": {"name": "bob", "uid": 20002, "gid": 20052, "ssh_keys": [bob_pub]},
                "limits": {"memory": "768M", "disk": "3G"},
            },
        ],
    }
    result = run_module("lxd_workstations", args)
    yield {"a": a, "b": b, "args": args, "result": result, "keys": {"alice": alice_key, "bob": bob_key},
           "pubs": {"alice": alice_pub, "bob": bob_pub}}  # fmt: skip
    delete_owned(lxd_client, names)


def test_create_two_workstations(pair, lxd_client):
    r = pair["result"]
    assert r["failed"] is False, r.get("msg")
    assert r["changed"] is True
    ws = by_name(r)
    for n in (pair["a"], pair["b"]):
        assert ws[n]["state"] == "started"
        assert ws[n]["actions"][:2] == ["create", "start"] and "provision" in ws[n]["actions"]
        assert ws[n]["ipv4"], ws[n]
        assert lxd_client.instances.get(n).status == "Running"
    ca, cb = config_of(lxd_client, pair["a"]), config_of(lxd_client, pair["b"])
    assert (ca["limits.cpu"], ca["limits.memory"], ca["limits.processes"]) == ("1", "512MiB", "300")
    assert ca["raw.idmap"] == "both 20001 20001" and cb["raw.idmap"] == "uid 20002 20002\ngid 20052 20052"
    assert ca["security.idmap.isolated"] == "true" and ca["security.nesting"] == "true"
    assert lxd_client.instances.get(pair["b"]).devices["root"]["size"] == "3GiB"
    # The limits are in force inside.
    assert inside(pair["a"], "nproc").strip() == "1"
    assert "MemTotal:         524288 kB" in lxcfs_meminfo(pair["a"])
    pids_max = "cat /sys/fs/cgroup/pids.max 2>/dev/null || cat /sys/fs/cgroup/pids/pids.max"  # cgroup v2 or v1
    assert inside(pair["a"], "sh", "-c", pids_max).strip() == "300"
    # raw.idmap needed the delegations; the module added them.
    subuid, subgid = Path("/etc/subuid").read_text().split(), Path("/etc/subgid").read_text().split()
    assert "root:20001:1" in subuid and "root:20002:1" in subuid
    assert "root:20001:1" in subgid and "root:20052:1" in subgid


def test_fake_nvidia_nodes_appear_with_major_minor(pair, lxd_client):
    out = inside(
        pair["a"], "stat", "-c", "%n %F %t:%T %a", "/dev/nvidia5", "/dev/nvidiactl", "/dev/nvidia-uvm"
    )
    assert out.splitlines() == [
        "/dev/nvidia5 character special file c3:5 666",
        "/dev/nvidiactl character special file c3:ff 666",
        f"/dev/nvidia-uvm character special file {FAKE_UVM_MAJOR:x}:0 666",
    ]
    # The other workstation asked for no GPU and has none.
    assert "nvidia" not in inside(pair["b"], "ls", "/dev")


def test_account_inside(pair, lxd_client):
    a = pair["a"]
    assert inside(a, "id", "alice").strip() == "uid=20001(alice) gid=20001(alice) groups=20001(alice),44(video)"
    assert inside(pair["b"], "id", "-u", "bob").strip() == "20002"
    assert inside(a, "stat", "-c", "%a %U", "/home/alice/.ssh/authorized_keys").strip() == "600 alice"
    assert inside(a, "cat", "/home/alice/.ssh/authorized_keys") == pair["pubs"]["alice"] + "\n"
    assert inside(a, "cat", "/etc/hostname").strip() == a
    # sshd -T needs host keys, which ssh.service only generates on first boot: wait for the boot to finish.
    wait_systemd(lxd_client, a)
    effective = inside(a, "sshd", "-T")
    for line in ("passwordauthentication no", "kbdinteractiveauthentication no", "permitrootlogin no"):
        assert line in effective.splitlines()


def test_ssh_login_with_key_sudo_works_password_refused(pair, lxd_client):
    a = pair["a"]
    ip = by_name(pair["result"])[a]["ipv4"]
    wait_systemd(lxd_client, a)
    res = ssh(ip, "alice", pair["keys"]["alice"], "id -un; sudo -n id -u; hostname")
    assert res.returncode == 0, res.stderr
    assert res.stdout.split() == ["alice", "0", a]
    # bob's key does not open alice's workstation.
    assert ssh(ip, "alice", pair["keys"]["bob"], "true").returncode != 0
    # The server offers no password or keyboard-interactive method at all.
    argv = ["ssh", "-F", "/dev/null", "-o", "BatchMode=yes", "-o", "PubkeyAuthentication=no",
            "-o", "PreferredAuthentications=password,keyboard-interactive", "-o", "StrictHostKeyChecking=no",
            "-o", "UserKnownHostsFile=/dev/null", "-o", "ConnectTimeout=10", f"alice@{ip}", "true"]  # fmt: skip
    res = subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False)
    assert res.returncode == 255
    assert "Permission denied (publickey)." in res.stderr


def test_second_run_changes_nothing(pair):
    r = run_module("lxd_workstations", pair["args"])
    assert r["failed"] is False, r.get("msg")
    assert r["changed"] is False
    assert all(w["actions"] == [] and w["state"] == "started" and w["ipv4"] for w in r["workstations"])
    assert r["subids_added"] == {"subuid": [], "subgid": []}


def test_check_mode_changes_nothing(pair, lxd_client):
    a = pair["a"]
    args = dict(pair["args"], workstations=[dict(w) for w in pair["args"]["workstations"]])
    args["workstations"][0] = dict(args["workstations"][0], limits={"cpu": 1, "memory": "1G", "processes": 300})
    args["workstations"][0]["user"] = dict(args["workstations"][0]["user"], ssh_keys=[pair["pubs"]["bob"]])
    before_keys = inside(a, "cat", "/home/alice/.ssh/authorized_keys")
    r = run_module("lxd_workstations", args, check=True)
    assert r["failed"] is False, r.get("msg")
    assert r["changed"] is True
    wa = by_name(r)[a]
    assert wa["actions"] == ["update", "provision"] and wa["provisioned"] == ["keys"]
    assert r["diff"]["before"][a]["config"]["limits.memory"] == "512MiB"
    assert r["diff"]["after"][a]["config"]["limits.memory"] == "1GiB"
    assert r["diff"]["before"][a]["inside_drift"] == ["keys"]
    # Nothing changed in LXD or inside.
    assert config_of(lxd_client, a)["limits.memory"] == "512MiB"
    assert inside(a, "cat", "/home/alice/.ssh/authorized_keys") == before_keys


def test_drift_is_repaired(pair, lxd_client):
    a, b = pair["a"], pair["b"]
    inst = lxd_client.instances.get(a)
    inst.config["limits.memory"] = "2GiB"
    inst.config["user.note"] = "set by an admin"  # not managed: must survive
    inst.save(wait=True)
    inside(a, "sh", "-c", ": > /home/alice/.ssh/authorized_keys")  # key removed by hand
    inside(b, "rm", "/etc/sudoers.d/gpulab-bob")
    # root took bob's .ssh (he has sudo): written as him the keys cannot be fixed, root repairs them
    inside(b, "chown", "-R", "root:root", "/home/bob/.ssh")
    r = run_module("lxd_workstations", pair["args"])
    assert r["failed"] is False, r.get("msg")
    ws = by_name(r)
    assert ws[a]["actions"] == ["update", "provision"] and ws[a]["provisioned"] == ["keys"]
    assert ws[b]["actions"] == ["provision"] and ws[b]["provisioned"] == ["keys", "sudoers"]
    owners = inside(b, "stat", "-c", "%a %u", "/home/bob/.ssh", "/home/bob/.ssh/authorized_keys")
    assert owners.split("\n")[:2] == ["700 20002", "600 20002"]
    config = config_of(lxd_client, a)
    assert config["limits.memory"] == "512MiB" and config["user.note"] == "set by an admin"
    assert inside(a, "cat", "/home/alice/.ssh/authorized_keys") == pair["pubs"]["alice"] + "\n"
    res = ssh(ws[a]["ipv4"], "alice", pair["keys"]["alice"], "sudo -n true && echo ok")
    assert res.stdout.strip() == "ok", res.stderr
    res = ssh(ws[b]["ipv4"], "bob", pair["keys"]["bob"], "sudo -n true && echo ok")
    assert res.stdout.strip() == "ok", res.stderr
    assert run_module("lxd_workstations", pair["args"])["changed"] is False


# ---- identity: the user's uid straight through to a shared home ---------------------------------------------


def test_shared_home_keeps_owner_inside_and_out(lxd_client, lxd_names, ssh_keypair, tmp_path):
    name = lxd_names()
    uid = 20071
    home = tmp_path / "homes" / "ivy"
    home.mkdir(parents=True)
    os.chown(home, uid, uid)
    home.chmod(0o700)
    key, pub = ssh_keypair
    item = {"name": name, "user": {"name": "ivy", "uid": uid, "ssh_keys": [pub]},
            "disks": [{"source": str(home), "path": "/home/ivy"}]}  # fmt: skip
    r = run_module("lxd_workstations", {"image": LXD_IMAGE, "workstations": [item]})
    assert r["failed"] is False, r.get("msg")
    assert lxd_client.instances.get(name).devices["gpulab-disk-home-ivy"] == {
        "type": "disk",
        "source": str(home),
        "path": "/home/ivy",
    }
    assert inside(name, "stat", "-c", "%u %U", "/home/ivy").strip() == f"{uid} ivy"
    # authorized_keys landed in the shared home, owned by the user on the host too
    assert (home / ".ssh" / "authorized_keys").stat().st_uid == uid
    wait_systemd(lxd_client, name)
    res = ssh(by_name(r)[name]["ipv4"], "ivy", key, "touch ~/made-inside && id -u")
    assert res.returncode == 0 and res.stdout.strip() == str(uid), res.stderr
    assert (home / "made-inside").stat().st_uid == uid
    # container root is not host root on the shared home (isolated high range)
    inside(name, "touch", "/home/ivy/made-by-root")
    assert (home / "made-by-root").stat().st_uid >= 100000


# ---- lifecycle: stopped, absent (archived), purge --------------------------------------------------------------


def test_stopped_absent_archive_and_purge(lxd_client, lxd_names, ssh_keypair):
    name = lxd_names()
    pub = ssh_keypair[1]
    item = {"name": name, "user": {"name": "carol", "uid": 20011, "ssh_keys": [pub]}, "limits": {"memory": "256M"}}

    def run(check=False, **over):
        return run_module("lxd_workstations", {"image": LXD_IMAGE, "workstations": [dict(item, **over)]}, check=check)

    assert run()["changed"] is True
    r = run(state="stopped")
    assert r["changed"] is True and by_name(r)[name]["state"] == "stopped"
    assert lxd_client.instances.get(name).status == "Stopped"
    assert run(state="stopped")["changed"] is False

    r = run(check=True, state="absent")
    assert r["changed"] is True and by_name(r)[name]["actions"] == ["archive"]
    assert lxd_client.instances.exists(name)  # check mode: still there, not renamed

    r = run(state="absent")
    assert r["failed"] is False, r.get("msg")
    archived = by_name(r)[name]["archived_as"]
    assert archived.startswith(f"{name}-archived-") and by_name(r)[name]["state"] == "absent"
    assert not lxd_client.instances.exists(name)
    arch = lxd_client.instances.get(archived)
    assert arch.status == "Stopped"
    assert arch.config["user.gpulab.archived_from"] == name and arch.config["user.gpulab.archived"].endswith("Z")
    assert [s.name for s in arch.snapshots.all()] == ["gpulab-archive-" + archived.rsplit("-", 1)[1]]
    assert run(state="absent")["changed"] is False  # archived stays archived

    r = run(check=True, state="absent", purge=True)
    assert r["changed"] is True and lxd_client.instances.exists(archived)
    r = run(state="absent", purge=True)
    assert r["failed"] is False, r.get("msg")
    assert r["diff"]["before"][name]["archives"] == [archived]
    assert not lxd_client.instances.exists(archived)
    assert run(state="absent", purge=True)["changed"] is False


def test_a_member_placed_elsewhere_has_her_container_here_archived(lxd_client, lxd_names):
    """After a change of host, the old host lists her in `elsewhere`: her managed container there is
    archived (check mode first: nothing moves); an unmanaged instance of a name in `elsewhere` is left alone."""
    name, other = lxd_names(), lxd_names()
    item = {"name": name, "user": {"name": "ivy", "uid": 20061}, "state": "stopped"}
    assert run_module("lxd_workstations", {"image": LXD_IMAGE, "workstations": [item]})["changed"] is True
    launch(lxd_client, other, start=False)

    def away(check=False):
        return run_module("lxd_workstations", {"workstations": [], "elsewhere": [name, other]}, check=check)

    r = away(check=True)
    assert r["changed"] is True and by_name(r)[name]["actions"] == ["archive"], r
    assert lxd_client.instances.exists(name)
    r = away()
    assert r["failed"] is False, r.get("msg")
    assert [w["name"] for w in r["workstations"]] == [name]  # the unmanaged one is not even planned
    archived = by_name(r)[name]["archived_as"]
    assert not lxd_client.instances.exists(name)
    assert lxd_client.instances.get(archived).config["user.gpulab.archived_from"] == name
    assert lxd_client.instances.get(other).status == "Stopped"  # untouched
    assert away()["changed"] is False

    # the positive twin: her item on this host (not elsewhere) makes a workstation of that name again
    r = run_module("lxd_workstations", {"image": LXD_IMAGE, "workstations": [item], "elsewhere": [other]})
    assert r["changed"] is True and lxd_client.instances.exists(name)
    r = run_module("lxd_workstations", {"image": LXD_IMAGE, "workstations": [item], "elsewhere": [name]})
    assert r["failed"] is True and f"elsewhere: {name} is also one of workstations" in r["msg"]


def test_leavers_on_a_host_without_lxd_change_nothing_present_members_need_it(tmp_path):
    """The leavers' pass (playbooks/leavers.yml) runs before gpu_host installs LXD on a new host: with only
    absent and elsewhere names and no LXD socket there is no container to archive. A present member on
    the same host still needs LXD: the call fails, naming the socket."""
    missing = str(tmp_path / "no-lxd" / "unix.socket")
    leaver = {"name": "ivy", "user": {"name": "ivy", "uid": 20062}, "state": "absent", "purge": True}
    r = run_module("lxd_workstations", {"socket_path": missing, "workstations": [leaver], "elsewhere": ["joe"]})
    assert (r["failed"], r["changed"], r["workstations"]) == (False, False, []), r
    present = {**leaver, "state": "started", "purge": False}
    r = run_module("lxd_workstations", {"socket_path": missing, "image": LXD_IMAGE, "workstations": [present]})
    assert r["failed"] is True and f"cannot connect to LXD at {missing}" in r["msg"], r


# ---- LXD reached by url ------------------------------------------------------------------------------------------


@pytest.fixture
def lxd_over_tcp():
    """http://127.0.0.1:PORT, a plain TCP port relayed to LXD's unix socket (a remote LXD, to the module)."""
    listener = socket.create_server(("127.0.0.1", 0))
    stop = threading.Event()

    def pump(src: socket.socket, dst: socket.socket) -> None:
        with src, dst:
            while chunk := src.recv(65536):
                dst.sendall(chunk)
            dst.shutdown(socket.SHUT_WR)

    def serve() -> None:
        listener.settimeout(0.2)
        while not stop.is_set():
            try:
                client = listener.accept()[0]
            except TimeoutError:
                continue
            client.settimeout(None)
            lxd = socket.socket(socket.AF_UNIX)
            lxd.connect(LXD_SOCKET)
            threading.Thread(target=pump, args=(client, lxd.dup()), daemon=True).start()
            threading.Thread(target=pump, args=(lxd, client.dup()), daemon=True).start()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{listener.getsockname()[1]}"
    finally:
        stop.set()
        thread.join(timeout=5)
        listener.close()


def test_lxd_reached_by_url(lxd_client, lxd_names, ssh_keypair, lxd_over_tcp):
    """O(url) instead of the local socket: created, started with an address, and a second run is a no-op.
    With a url the module leaves /etc/subuid to the LXD host's own configuration, so the test delegates."""
    name = lxd_names()
    for path in ("/etc/subuid", "/etc/subgid"):
        with open(path, "r+", encoding="utf-8") as subids:
            if "root:20071:1" not in subids.read().split():
                subids.write("root:20071:1\n")
    args = {
        "url": lxd_over_tcp,
        "image": LXD_IMAGE,
        "workstations": [{"name": name, "user": {"name": "dora", "uid": 20071, "ssh_keys": [ssh_keypair[1]]}}],
    }
    r = run_module("lxd_workstations", args)
    assert r["failed"] is False, r.get("msg")
    assert by_name(r)[name]["state"] == "started" and by_name(r)[name]["ipv4"], r
    assert lxd_client.instances.get(name).status == "Running"
    again = run_module("lxd_workstations", args)
    assert again["failed"] is False and again["changed"] is False, again.get("msg")


# ---- lxd GPU mode (config only: starting needs a real GPU) -----------------------------------------------------


def test_lxd_gpu_mode_on_stopped_container(lxd_client, lxd_names, tmp_path):
    name = lxd_names()
    proc, dev = fake_gpu_host(tmp_path)
    args = {
        "image": LXD_IMAGE,
        "proc_root": str(proc),
        "gpu_device_root": str(dev),
        "nvidia_smi": str(tmp_path / "no-nvidia-smi"),
        "nvidia_driver_capabilities": "compute,utility,video",
        "workstations": [
            {
                "name": name,
                "user": {"name": "dave", "uid": 20021},
                "gpus": ["GPU-9221d5d1-b60b-a624-bf14-0a1819cfda3b"],
                "state": "stopped",
            }
        ],
    }
    r = run_module("lxd_workstations", args)
    assert r["failed"] is False, r.get("msg")
    inst = lxd_client.instances.get(name)
    assert inst.status == "Stopped"
    assert inst.devices == {"gpulab-gpu0": {"type": "gpu", "gputype": "physical", "pci": "0000:62:00.0"}}
    assert inst.config["nvidia.runtime"] == "true"
    assert inst.config["nvidia.driver.capabilities"] == "compute,utility,video"
    assert run_module("lxd_workstations", args)["changed"] is False
    # Without GPUs the devices and the runtime keys are removed again.
    args["workstations"][0]["gpus"] = "none"
    assert run_module("lxd_workstations", args)["changed"] is True
    inst = lxd_client.instances.get(name)
    assert inst.devices == {} and "nvidia.runtime" not in inst.config


# ---- one failure does not stop the others ---------------------------------------------------------------------


def test_failure_of_one_container_is_reported_and_others_proceed(lxd_client, lxd_names, tmp_path):
    good, bad = lxd_names(), lxd_names()
    args = {
        "image": LXD_IMAGE,
        "ipv4_timeout": 0,
        "workstations": [
            {"name": bad, "user": {"name": "erin", "uid": 20031},
             "disks": [{"source": str(tmp_path / "does-not-exist"), "path": "/data"}]},
            {"name": good, "user": {"name": "frank", "uid": 20032}},
        ],
    }  # fmt: skip
    r = run_module("lxd_workstations", args)
    assert r["failed"] is True
    ws = by_name(r)
    assert "error" in ws[bad] and "does-not-exist" in ws[bad]["error"]
    assert bad in r["msg"] and good not in r["msg"].split(":")[0]
    assert "error" not in ws[good]
    assert lxd_client.instances.get(good).status == "Running"
    assert "frank" in inside(good, "getent", "passwd", "frank")


def test_a_workstation_whose_sh_hangs_or_floods_is_killed_and_fails_alone(lxd_client, lxd_names):
    """Root in one workstation makes its sh print without end, in another sleep for ever (what every run's
    read of a workstation goes through). The call returns after exec_timeout, those two fail naming the
    bound they broke, their processes are gone and no exec log is left on the host; the third converges.
    The twin: with their sh back, the next call converges both."""
    noisy, sleepy, calm = lxd_names(), lxd_names(), lxd_names()
    items = [{"name": n, "user": {"name": f"u{uid}", "uid": uid}} for n, uid in ((noisy, 20071), (sleepy, 20072))]
    args = {"image": LXD_IMAGE, "ipv4_timeout": 0, "exec_timeout": 5, "workstations": items}
    assert run_module("lxd_workstations", args)["failed"] is False
    broken = {noisy: "exec yes gpulab-flood", sleepy: "exec sleep 86397"}
    for name, script in broken.items():
        inside(name, "sh", "-c", f"printf '#!/bin/dash\\n{script}\\n' > /bin/gl-sh && chmod 755 /bin/gl-sh")
        inside(name, "ln", "-sf", "/bin/gl-sh", "/bin/sh")
    items.append({"name": calm, "user": {"name": "u20073", "uid": 20073}})
    try:
        r = run_module("lxd_workstations", args)
        assert r["failed"] is True and sorted(r["failed_workstations"]) == sorted(broken), r.get("msg")
        ws = by_name(r)
        assert "printed more than 1048576 bytes (killed)" in ws[noisy]["error"], ws[noisy]
        assert "still running after 5 s (killed)" in ws[sleepy]["error"], ws[sleepy]
        assert "error" not in ws[calm] and "u20073" in inside(calm, "getent", "passwd", "u20073")
        for name in broken:
            assert lxd_client.instances.get(name).status == "Running"
            logs = sorted(p.name for p in Path(f"/var/log/lxd/{name}").glob("exec_*"))
            assert logs == [], (name, logs)
        left = [p for p in Path("/proc").glob("[0-9]*/cmdline") if re.search(rb"gpulab-flood|86397", _read(p))]
        assert left == [], left
    finally:
        for name in broken:
            inside(name, "ln", "-sf", "dash", "/bin/sh")
    r = run_module("lxd_workstations", args)
    assert r["failed"] is False, r.get("msg")
    for name, uid in ((noisy, 20071), (sleepy, 20072)):
        assert f"u{uid}" in inside(name, "getent", "passwd", f"u{uid}")


def _read(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError:
        return b""


# ---- refusals before any change -----------------------------------------------------------------------------------


def test_unmanaged_instance_with_the_same_name_is_refused(lxd_client, lxd_names):
    name = lxd_names()
    launch(lxd_client, name, start=False)
    r = run_module(
        "lxd_workstations",
        {"image": LXD_IMAGE, "workstations": [{"name": name, "user": {"name": "gina", "uid": 20041}}]},
    )
    assert r["failed"] is True and "is not managed by gpulab" in r["msg"]
    inst = lxd_client.instances.get(name)
    assert inst.status == "Stopped" and "raw.idmap" not in inst.config
    r = run_module("lxd_workstations", {"workstations": [{"name": name, "state": "absent"}]})
    assert r["failed"] is True and lxd_client.instances.exists(name)


@pytest.mark.parametrize(
    ("item", "extra", "message"),
    [
        ({"gpus": [3]}, "gpu_host", "workstation {name}: gpus: no GPU matches 3"),
        ({"gpus": ["GPU-00000000-0000-0000-0000-000000000000"]}, "gpu_host", "gpus: no GPU matches 'GPU-0000"),
        ({"gpus": "all"}, "no_gpu_host", "workstation {name}: gpus: 'all' requested but this host has no NVIDIA GPU"),
        ({"limits": {"memory": "lots"}}, None, "workstation {name}: limits.memory: invalid size 'lots'"),
        (
            {"image": "gpulab/no-such-image"},
            None,
            "workstation {name}: image: alias 'gpulab/no-such-image' does not exist",
        ),
        ({"profiles": ["default", "no-such-profile"]}, None, "profiles: no-such-profile do not exist"),
        ({"user": {"name": "hank", "uid": 20051, "ssh_keys": ["ssh-ed25519 AAAA"]}}, None, "user.ssh_keys[0]"),
        ({"duplicate": "name"}, None, "workstation {name}: name: duplicate"),
        ({"duplicate": "uid"}, None, "user.uid: 20051 is also used by workstation {name}"),
    ],
)
def test_bad_input_fails_before_any_change(lxd_client, lxd_names, tmp_path, item, extra, message):
    name = lxd_names()
    base = {"name": name, "user": {"name": "hank", "uid": 20051}}
    args = {"image": LXD_IMAGE, "workstations": [], "nvidia_smi": str(tmp_path / "none")}
    if extra == "gpu_host":
        proc, dev = fake_gpu_host(tmp_path)
        args.update(proc_root=str(proc), gpu_device_root=str(dev))
    elif extra == "no_gpu_host":
        args.update(proc_root=str(tmp_path), gpu_device_root=str(tmp_path))
    dup = item.pop("duplicate", None)
    first = {**base, **item}
    args["workstations"].append(first)
    if dup == "name":
        args["workstations"].append({**base, "user": {"name": "ida", "uid": 20052}})
    elif dup == "uid":
        args["workstations"].append({"name": lxd_names(), "user": {"name": "ida", "uid": 20051}})
    r = run_module("lxd_workstations", args)
    assert r["failed"] is True
    assert message.format(name=name) in r["msg"]
    assert not lxd_client.instances.exists(name)


# ---- documentation -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("module", ["lxd_workstations", "gpu_facts"])
def test_ansible_doc_renders(module):
    res = subprocess.run(
        [str(VENV_BIN / "ansible-doc"), f"gpulab.fleet.{module}"],
        capture_output=True, text=True, env=ansible_env(), timeout=120, check=False,
    )  # fmt: skip
    assert res.returncode == 0, res.stderr
    assert f"gpulab.fleet.{module}" in res.stdout and "OPTIONS" in res.stdout and "RETURN VALUES" in res.stdout
