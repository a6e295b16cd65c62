"""The user-level playbooks on the real local LXD: users.yml (the workstations role), snapshot.yml,
restore.yml and rebuild.yml, for two lab members whose GPU host is this machine.

ansible-playbook runs inside a test network namespace (`ip netns exec`), so the port maps the
workstations role writes land in that namespace's iptables, never in the machine's own; LXD is
reached over its unix socket, which the namespace does not affect. Storage and directory groups are
empty here (their roles converge on the test VM, molecule scenarios), so the homes are plain host
directories and snapshot/restore use `-e what=workstation`. Test users have uids 21001/21002, apart
from the other LXD tests' ranges.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from ansible_collections.gpulab.fleet.plugins.module_utils import runlock
from tests.fixtures.lxd import InstanceNames, delete_instances
from tests.fixtures.netns import make_netlab
from tests.helpers import ROOT, finish_playbook, run_playbook, start_playbook

pytestmark = pytest.mark.lxd

PLAYBOOKS = ROOT / "playbooks"


class Lab:
    """Two users on localhost, an inventory for them, the namespace the playbooks run in."""

    def __init__(self, tmp, lxd_client):
        self.tmp = tmp
        self.client = lxd_client
        self.names = InstanceNames()
        self.netlab = make_netlab()
        self.prefix = self.netlab.prefix("host")
        self.alice, self.bob = self.names(), self.names()
        self.pub = {}
        for name in (self.alice, self.bob):  # a key belongs to one user only (the preflight checks)
            subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(tmp / name)], check=True)
            self.pub[name] = (tmp / f"{name}.pub").read_text().strip()
        self.export = tmp / "export"
        for uid, name in ((21001, self.alice), (21002, self.bob)):
            home = self.export / "home" / name
            home.mkdir(parents=True)
            subprocess.run(["chown", f"{uid}:{uid}", str(home)], check=True)
        self.ssh_dir = tmp / "ssh"
        self.memory = "512MiB"
        self.desktop = False
        self.alice_state = "present"
        self.lock = tmp / "run-lock.json"

    def inventory(self) -> str:
        users = [
            {"name": self.alice, "uid": 21001, "ssh_keys": [self.pub[self.alice]], "desktop": self.desktop,
             "state": self.alice_state},
            {"name": self.bob, "uid": 21002, "ssh_keys": [self.pub[self.bob]]},
        ]
        inv = {"all": {
            "children": {"gpu_hosts": {"hosts": {"localhost": {
                "ansible_connection": "local", "ansible_python_interpreter": sys.executable}}}},
            "vars": {
                "fleet_uid_base": 21000,
                "fleet_user_defaults": {"host": "localhost", "cpu": 1, "memory": self.memory},
                "fleet_users": users,
                "workstations_nfs_export_root": str(self.export),
                "workstations_ssh_config_dir": str(self.ssh_dir),
                "workstations_port_persist": False,
                "workstations_processes": 2000,
                # The role's install step with one small package instead of a whole desktop.
                "workstations_desktop_packages": ["xrdp"],
                # this lab's own run lock: not the one of other runs on this machine
                "fleet_run_lock_path": str(self.lock),
            },
        }}  # fmt: skip
        path = self.tmp / "hosts.yml"
        path.write_text(yaml.safe_dump(inv))
        return str(path)

    def play(self, name: str, check: bool = False, **extra) -> dict:
        return run_playbook(PLAYBOOKS / name, self.inventory(), extra_vars=extra or None, check=check,
                            prefix=self.prefix)  # fmt: skip

    def start(self, name: str, **extra):
        return start_playbook(PLAYBOOKS / name, self.inventory(), extra_vars=extra or None, prefix=self.prefix)

    def lock_holder(self, pid: int, timeout: float = 300) -> dict:
        """The run lock's record once the run of ansible-playbook `pid` holds it."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                record = json.loads(self.lock.read_text())
                if record["controller_pid"] == pid:
                    return record
            except (OSError, ValueError):
                pass
            time.sleep(0.2)
        raise AssertionError(f"ansible-playbook {pid} took no run lock in {timeout} s")

    def instance(self, name: str):
        return self.client.instances.get(name)

    def ipv4(self, name: str) -> str:
        net = self.instance(name).state().network["eth0"]
        return next(a["address"] for a in net["addresses"] if a["family"] == "inet")

    def dnat(self) -> dict[int, str]:
        """host port -> container address:port of the DNAT rules in the namespace."""
        nat = self.netlab.exec(self.netlab.ns("host"), ["iptables-save", "-t", "nat"]).stdout
        return {int(m[1]): m[2] for m in re.finditer(r"--dport (\d+) .*-j DNAT --to-destination (\S+)", nat)}

    def archives(self, name: str) -> list[str]:
        return sorted(i.name for i in self.client.instances.all() if i.name.startswith(f"{name}-archived-"))

    def write(self, instance: str, path: str, text: str) -> None:
        subprocess.run(["lxc", "exec", instance, "--", "tee", path], input=text, capture_output=True, text=True,
                       check=True)  # fmt: skip

    def read(self, instance: str, path: str) -> str | None:
        """A file of an instance, or None when it does not exist. A stopped one is read from its pool
        directory: `lxc file pull` fails on a stopped container with an isolated idmap here."""
        inst = self.instance(instance)
        if inst.status == "Running":
            proc = subprocess.run(["lxc", "exec", instance, "--", "cat", path], capture_output=True, text=True,
                                  check=False)  # fmt: skip
            return proc.stdout if proc.returncode == 0 else None
        pool = inst.expanded_devices["root"]["pool"]
        file = Path(f"/var/lib/lxd/storage-pools/{pool}/containers/{instance}/rootfs{path}")
        return file.read_text() if file.exists() else None


def ok(run: dict) -> dict:
    assert run["rc"] == 0 and run["failed"] == [], run["failed"] or run["out"]
    return run


@pytest.fixture(scope="module")
def lab(tmp_path_factory, lxd_client):
    lab = Lab(tmp_path_factory.mktemp("user-ops"), lxd_client)
    try:
        yield lab
    finally:
        errors = delete_instances(lxd_client, lab.names.owns)
        lab.netlab.teardown()
        assert not errors, errors


def test_users_yml_creates_the_workstations_and_their_port_maps(lab):
    ok(lab.play("users.yml"))
    for name in (lab.alice, lab.bob):
        inst = lab.instance(name)
        assert inst.status == "Running"
        assert inst.config["limits.memory"] == "512MiB"
    # Ports derive from the uid: 20000 + (uid - 21000) * 10, SSH first.
    assert lab.dnat() == {20010: f"{lab.ipv4(lab.alice)}:22", 20020: f"{lab.ipv4(lab.bob)}:22"}
    snippet = (lab.ssh_dir / f"{lab.alice}.conf").read_text()
    assert re.search(r"(?m)^\s*Port 20010$", snippet) and re.search(rf"(?m)^\s*User {lab.alice}$", snippet)


def test_second_run_changes_nothing(lab):
    run = ok(lab.play("users.yml"))
    assert run["changed"] == []


def test_check_mode_reports_a_model_change_and_makes_none(lab):
    lab.memory = "768MiB"
    try:
        run = ok(lab.play("users.yml", check=True))
    finally:
        lab.memory = "512MiB"
    changed = [c["task"] for c in run["changed"]]
    assert changed == ["gpulab.fleet.workstations : Containers of this host's users"], changed
    assert lab.instance(lab.alice).config["limits.memory"] == "512MiB"


def test_snapshot_is_taken_once(lab):
    first = ok(lab.play("snapshot.yml", user=lab.alice, snapshot="before-exp", what="workstation"))
    assert [c["task"] for c in first["changed"]] == ["Take it"]
    assert "before-exp" in [s.name for s in lab.instance(lab.alice).snapshots.all()]
    assert ok(lab.play("snapshot.yml", user=lab.alice, snapshot="before-exp", what="workstation"))["changed"] == []


def test_restore_of_a_missing_snapshot_fails_and_changes_nothing(lab):
    before = sorted(i.name for i in lab.client.instances.all())
    run = lab.play("restore.yml", user=lab.alice, snapshot="no-such-snap", what="workstation")
    assert run["rc"] != 0
    assert any("no-such-snap" in f["msg"] and lab.alice in f["msg"] for f in run["failed"]), run["failed"]
    assert sorted(i.name for i in lab.client.instances.all()) == before


def test_restore_in_check_mode_changes_nothing(lab):
    before = {i.name: i.config["volatile.uuid"] for i in lab.client.instances.all()}
    run = ok(lab.play("restore.yml", check=True, user=lab.alice, snapshot="before-exp", what="workstation"))
    assert "Archive her current container (the pre-restore state, with all its snapshots)" in [
        c["task"] for c in run["changed"]], run["changed"]  # fmt: skip
    assert {i.name: i.config["volatile.uuid"] for i in lab.client.instances.all()} == before
    assert lab.instance(lab.alice).status == "Running"


def test_restore_goes_back_to_the_snapshot_and_keeps_the_state_before(lab):
    lab.write(lab.alice, "/root/marker", "after-snapshot\n")
    bob_uuid = lab.instance(lab.bob).config["volatile.uuid"]

    ok(lab.play("restore.yml", user=lab.alice, snapshot="before-exp", what="workstation"))

    inst = lab.instance(lab.alice)
    assert inst.status == "Running" and inst.config["limits.memory"] == "512MiB"
    assert lab.read(lab.alice, "/root/marker") is None  # the snapshot's state
    (archive,) = lab.archives(lab.alice)  # the state before the restore, kept
    assert lab.read(archive, "/root/marker") == "after-snapshot\n"
    assert "before-exp" in [s.name for s in lab.instance(archive).snapshots.all()]
    # The port map follows her new container; bob's container was not touched.
    assert lab.dnat()[20010] == f"{lab.ipv4(lab.alice)}:22"
    assert lab.instance(lab.bob).config["volatile.uuid"] == bob_uuid


def test_a_restore_can_be_undone_from_the_archive(lab):
    (archive,) = lab.archives(lab.alice)
    undo = next(s.name for s in lab.instance(archive).snapshots.all() if s.name.startswith("gpulab-archive-"))
    ok(lab.play("restore.yml", user=lab.alice, snapshot=undo, what="workstation"))
    assert lab.read(lab.alice, "/root/marker") == "after-snapshot\n"
    assert len(lab.archives(lab.alice)) == 2
    assert lab.dnat()[20010] == f"{lab.ipv4(lab.alice)}:22"
    # And the model is converged again: nothing left to change.
    assert ok(lab.play("users.yml"))["changed"] == []


def test_rebuild_gives_a_fresh_container_and_archives_the_old(lab):
    lab.write(lab.bob, "/root/marker", "bob-was-here\n")
    old_uuid = lab.instance(lab.bob).config["volatile.uuid"]
    ok(lab.play("rebuild.yml", user=lab.bob))
    inst = lab.instance(lab.bob)
    assert inst.status == "Running" and inst.config["volatile.uuid"] != old_uuid
    assert lab.read(lab.bob, "/root/marker") is None
    (archive,) = lab.archives(lab.bob)
    assert lab.read(archive, "/root/marker") == "bob-was-here\n"
    assert lab.dnat()[20020] == f"{lab.ipv4(lab.bob)}:22"


def test_desktop_installs_xrdp_and_maps_the_second_port(lab):
    lab.desktop = True
    first = ok(lab.play("users.yml"))
    install = "gpulab.fleet.workstations : Install xrdp and Xfce where something is missing"
    assert any(c["task"].startswith(install) for c in first["changed"]), first["changed"]
    active = subprocess.run(["lxc", "exec", lab.alice, "--", "systemctl", "is-active", "xrdp"],
                            capture_output=True, text=True, check=False)  # fmt: skip
    assert active.stdout.strip() == "active", active
    assert lab.dnat()[20011] == f"{lab.ipv4(lab.alice)}:3389"
    assert "20011" in (lab.ssh_dir / f"{lab.alice}.conf").read_text()
    assert ok(lab.play("users.yml"))["changed"] == []


def test_a_broken_workstation_fails_alone_and_the_hosts_port_maps_still_converge(lab):
    """Root in bob's container breaks its sh (what every run's read of a workstation goes through) in
    the run where alice leaves: the run fails naming bob only, and still applies the host's port maps
    (alice's ports close, bob's stay). Its twin: once bob's sh is back, the next run converges."""
    subprocess.run(["lxc", "exec", lab.bob, "--", "ln", "-sf", "/bin/false", "/bin/sh"], check=True)
    lab.alice_state = "absent"
    try:
        run = lab.play("users.yml")
        assert run["rc"] != 0
        [failed] = run["failed"]
        assert failed["task"] == "gpulab.fleet.workstations : Fail on the workstations that failed (every other one " \
            "and the port maps are converged)", failed
        assert f"{lab.bob}: digest exited" in failed["msg"] and lab.alice not in failed["msg"], failed["msg"]
        assert lab.dnat() == {20020: f"{lab.ipv4(lab.bob)}:22"}  # alice's 20010 and 20011 closed
        assert lab.archives(lab.alice) and not lab.client.instances.exists(lab.alice)
        # she was archived by the leavers' pass (playbooks/leavers.yml), the run's first change
        leavers = "gpulab.fleet.workstations : Archive the leavers' workstations and those of members placed elsewhere"
        assert [c["task"] for c in run["changed"]][:1] == [leavers], run["changed"]
    finally:
        subprocess.run(["lxc", "exec", lab.bob, "--", "ln", "-sf", "dash", "/bin/sh"], check=True)
    ok(lab.play("users.yml"))
    assert ok(lab.play("users.yml"))["changed"] == []


def running_module(pid: int, module: str) -> bool:
    """Whether a descendant of process `pid` runs the Ansible module `module` (AnsiballZ_<module>.py)."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        stat = runlock.read_stat(int(entry)) if entry.isdigit() else None
        if stat is not None:
            children.setdefault(int(stat[1][1]), []).append(int(entry))
    todo = list(children.get(pid, []))
    while todo:
        child = todo.pop()
        try:
            with open(f"/proc/{child}/cmdline", "rb") as fh:
                if f"AnsiballZ_{module}.py".encode() in fh.read():
                    return True
        except OSError:
            pass
        todo += children.get(child, [])
    return False


def test_two_runs_at_once_one_fails_cleanly_one_waits(lab):
    """While one run holds the host (a playbook that holds the run lock until the test lets it go), a
    users.yml told not to wait fails at the lock naming the holder, having changed nothing; one with
    the default wait waits, then converges. Every run lets go at the end: no record is left."""
    go = lab.tmp / "holder-may-go"
    go.write_text("")
    holder_pb = lab.tmp / "hold.yml"
    holder_pb.write_text(yaml.safe_dump([{"hosts": "gpu_hosts", "gather_facts": False, "tasks": [
        {"gpulab.fleet.run_lock": {"path": str(lab.lock)}},
        {"ansible.builtin.wait_for": {"path": str(go), "state": "absent", "timeout": 600}},
        {"gpulab.fleet.run_lock": {"path": str(lab.lock), "state": "released"}},
    ]}]))  # fmt: skip
    lab.memory = "600MiB"  # work for the runs to do
    holder = start_playbook(holder_pb, lab.inventory(), prefix=lab.prefix)
    try:
        record = lab.lock_holder(holder.pid)
        assert record["playbook"] == "hold.yml" and record["anchor"]["kind"] == "ansible-playbook", record
        refused = lab.play("users.yml", fleet_run_lock_wait=0)
        assert refused["rc"] != 0 and refused["changed"] == [], refused["changed"]
        [failed] = refused["failed"]
        assert "another run is changing this host: hold.yml run by" in failed["msg"], failed
        assert f"pid {holder.pid}" in failed["msg"] and "This run changed nothing here" in failed["msg"], failed
        assert lab.instance(lab.bob).config["limits.memory"] != "600MiB"
        waiting = lab.start("users.yml")
        deadline = time.monotonic() + 300
        while not running_module(waiting.pid, "run_lock") and time.monotonic() < deadline:
            time.sleep(0.2)
        time.sleep(3)  # it waits: the holder still holds
        assert waiting.poll() is None and json.loads(lab.lock.read_text())["controller_pid"] == holder.pid
    finally:
        go.unlink()
        held = finish_playbook(holder)
    ok(held)
    run = ok(finish_playbook(waiting))
    assert any("for another run on this host to end" in w for w in run["warnings"]), run["warnings"]
    assert lab.instance(lab.bob).config["limits.memory"] == "600MiB"
    assert not lab.lock.exists()  # users.yml let go at its end


def test_a_run_killed_while_it_creates_a_workstation_leaves_nothing_the_next_run_cannot_finish(lab):
    """SIGKILL of the whole ansible-playbook (a crashed controller) while alice's new workstation is
    being made: the rerun takes the dead run's lock over (saying so), converges her workstation and
    keeps every archive; the run after changes nothing."""
    lab.alice_state, lab.desktop = "present", False
    archives = lab.archives(lab.alice) + lab.archives(lab.bob)
    run = lab.start("users.yml")
    try:
        lab.lock_holder(run.pid)
        deadline = time.monotonic() + 300
        while not lab.client.instances.exists(lab.alice) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert lab.client.instances.exists(lab.alice), "users.yml made no container for alice"
    finally:
        os.killpg(run.pid, signal.SIGKILL)
        run.communicate()
    assert json.loads(lab.lock.read_text())["controller_pid"] == run.pid  # the killed run let nothing go
    rerun = ok(lab.play("users.yml"))
    assert any("took over the run lock of users.yml run by" in w and f"pid {run.pid}" in w
               for w in rerun["warnings"]), rerun["warnings"]  # fmt: skip
    assert lab.instance(lab.alice).status == "Running"
    assert lab.instance(lab.alice).config["limits.memory"] == "600MiB"
    assert lab.dnat()[20010] == f"{lab.ipv4(lab.alice)}:22"
    assert lab.archives(lab.alice) + lab.archives(lab.bob) == archives  # nothing lost, nothing doubled
    assert ok(lab.play("users.yml"))["changed"] == []
    assert not lab.lock.exists()


def test_the_lxd_daemon_killed_and_restarted_mid_run_the_rerun_converges(lab):
    """The LXD daemon dies (kill -9, its pid from `lxc query /1.0`) right after users.yml started bob's
    new workstation, while the run waits for its address and provisions it, and is started again: the
    run fails or finishes, the rerun converges (the containers that ran are re-attached, bob's is
    provisioned), nothing is lost; the run after changes nothing. (Killed while LXD unpacks the image,
    LXD 5.0.2 leaves an instance it cannot delete: docs/dev/lxd-workstations.md.)"""
    lab.client.instances.get(lab.bob).stop(wait=True, force=True)
    lab.instance(lab.bob).delete(wait=True)  # work for users.yml: bob's workstation is made again
    archives = lab.archives(lab.alice) + lab.archives(lab.bob)
    run = lab.start("users.yml")
    try:
        lab.lock_holder(run.pid)
        deadline = time.monotonic() + 300
        while not (lab.client.instances.exists(lab.bob) and lab.instance(lab.bob).status == "Running"):
            assert time.monotonic() < deadline, "users.yml started no container for bob"
            time.sleep(0.2)
        server_pid = json.loads(subprocess.run(["lxc", "query", "/1.0"], capture_output=True, text=True,
                                               check=True).stdout)["environment"]["server_pid"]  # fmt: skip
        os.kill(server_pid, signal.SIGKILL)
    finally:
        subprocess.run(["bash", str(ROOT / "scripts" / "lxd-up.sh")], check=True, capture_output=True)
        finish_playbook(run, timeout=900)  # failed or converged: either is fine, the rerun tells
    rerun = ok(lab.play("users.yml"))
    for name in (lab.alice, lab.bob):
        assert lab.instance(name).status == "Running", name
    assert lab.dnat() == {20010: f"{lab.ipv4(lab.alice)}:22", 20020: f"{lab.ipv4(lab.bob)}:22"}, rerun["changed"]
    assert lab.archives(lab.alice) + lab.archives(lab.bob) == archives
    assert ok(lab.play("users.yml"))["changed"] == []
