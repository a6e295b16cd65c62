"""Role gpulab.fleet.storage_server: its input checks refuse bad input before anything is touched.

The role's real work (pool, homes, exports, sanoid) runs on the lab's `store` VM in molecule `lab`,
where the preflight already refuses these inputs before the role runs. Here the role runs on its own
on this machine, which has no ZFS at all: a check that let the input through would reach the pool
task and fail there instead, so each test also shows that nothing after the check ran.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import yaml

from tests.helpers import run_playbook

ROLE_VARS = {
    "storage_server_install_packages": False,
    "storage_server_pool": "tank",
    "storage_server_pool_vdevs": [{"type": "raidz1", "disks": ["/dev/vdb", "/dev/vdc", "/dev/vdd"]}],
    "storage_server_nfs_clients": ["192.168.77.11"],
}


def run_role(users: list[dict], tasks_from: str = "main", **role_vars) -> dict:
    play = [{
        "hosts": "localhost", "connection": "local", "gather_facts": False,
        "vars": {**ROLE_VARS, **role_vars, "storage_server_users": users, "ansible_python_interpreter": sys.executable},
        "tasks": [{"ansible.builtin.include_role": {"name": "gpulab.fleet.storage_server", "tasks_from": tasks_from}}],
    }]  # fmt: skip
    with tempfile.TemporaryDirectory() as tmp:
        pb = Path(tmp) / "play.yml"
        pb.write_text(yaml.safe_dump(play))
        return run_playbook(pb, "localhost,", timeout=300)


def test_purge_with_state_present_is_refused_naming_user_and_field():
    result = run_role([
        {"name": "alice", "uid": 10001, "purge": True},
        {"name": "carol", "uid": 10003, "state": "absent", "purge": True},
    ])  # fmt: skip
    assert result["rc"] != 0 and result["changed"] == [], result
    [failed] = result["failed"]
    assert failed["task"].endswith("Check the users' purge flags"), failed
    assert "user alice: purge: true only makes sense with state absent (state is present)" in failed["msg"], failed
    assert "carol" not in failed["msg"], failed


def test_wildcard_nfs_client_is_refused_naming_it():
    result = run_role([{"name": "alice", "uid": 10001}], storage_server_nfs_clients=["*"])
    assert result["rc"] != 0 and result["changed"] == [], result
    [failed] = result["failed"]
    assert failed["task"].endswith("Check the users and the NFS clients before changing anything"), failed
    assert "(got ['*'])" in failed["msg"], failed


def test_good_input_passes_the_checks_and_reaches_the_pool():
    """The positive twin: the same role with good input gets past both checks to the pool task (which
    fails here, on a machine without ZFS)."""
    users = [{"name": "alice", "uid": 10001}, {"name": "bob", "uid": 10002, "state": "absent", "purge": True}]
    result = run_role(users)
    [failed] = result["failed"]
    assert failed["task"].endswith("Create the pool (never re-created or reshaped)"), failed


def test_the_members_part_alone_checks_first_then_goes_straight_to_the_homes():
    """users.yml's storage part (tasks_from: members.yml): bad input is refused by the same checks;
    good input goes to the home datasets at once - no packages, pool, sanoid or ZED (on this machine
    without ZFS, the home task is where it fails)."""
    refused = run_role([{"name": "alice", "uid": 10001}], tasks_from="members", storage_server_nfs_clients=["*"])
    assert refused["rc"] != 0 and refused["changed"] == [], refused
    [failed] = refused["failed"]
    assert failed["task"].endswith("Check the users and the NFS clients before changing anything"), failed
    result = run_role([{"name": "alice", "uid": 10001}], tasks_from="members", storage_server_pool_vdevs=[])
    [failed] = result["failed"]
    assert failed["task"].endswith("Manage the home datasets of the lab members"), failed
    ran = [t["task"]["name"] for play in result["out"]["plays"] for t in play["tasks"]]
    assert not any("pool" in name or "sanoid" in name or "ZED" in name for name in ran), ran
