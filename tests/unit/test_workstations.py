"""Validation, desired state and planning of lxd_workstations, against instance JSON recorded from the real
LXD 5.0.2 daemon (tests/data/lxd/instances_recursion2.json, `lxc query /1.0/instances?recursion=2`):

- t-wsdev-a: running, made by the module for alice (uid 20901, cpu 1, memory 512MiB, processes 500), then
  changed by hand: limits.memory=2GiB, an unmanaged key user.note and an unmanaged disk device extra-tmp.
- t-wsdev-b: stopped by hand, made for bob (uid 20902, gid 20952, memory 1GiB, root disk 2GiB).
"""

import copy
import json
from datetime import UTC, datetime
from pathlib import Path

import pytest

from ansible_collections.gpulab.fleet.plugins.module_utils import gpu
from ansible_collections.gpulab.fleet.plugins.module_utils import workstations as w

DATA = Path(__file__).resolve().parent.parent / "data"
NOW = datetime(2026, 11, 23, 15, 4, 5, tzinfo=UTC)
DEFAULTS = {"image": "gpulab/debian12", "profiles": ["default"], "gpu_mode": "lxd"}
KEY = (DATA / "lxd" / "digest_alice_key.pub").read_text().strip()
OTHER_KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIIf1xR6c0kDq0B1Xgq3oGm7ew9Jb7rW2Xz3fU8p5Hh5R alice@laptop"


@pytest.fixture
def instances():
    return {i["name"]: i for i in json.loads((DATA / "lxd" / "instances_recursion2.json").read_text())}


@pytest.fixture
def profiles():
    return {p["name"]: p for p in json.loads((DATA / "lxd" / "profiles_recursion1.json").read_text())}


def alice(**over):
    item = {
        "name": "t-wsdev-a",
        "user": {"name": "alice", "uid": 20901, "ssh_keys": [KEY], "groups": ["video"]},
        "limits": {"cpu": 1, "memory": "512M", "processes": 500},
    }
    item.update(over)
    return item


def bob(**over):
    item = {
        "name": "t-wsdev-b",
        "user": {"name": "bob", "uid": 20902, "gid": 20952, "ssh_keys": [KEY]},
        "limits": {"memory": "1G", "disk": "2G"},
        "state": "stopped",
    }
    item.update(over)
    return item


def valid(*items):
    out, problems = w.validate(list(items), DEFAULTS)
    assert problems == []
    return out


def want(ws, gpus=(), controls=(), pool="default"):
    return {
        "config": w.desired_config(ws, list(gpus), "compute,utility"),
        "devices": w.desired_devices(ws, list(gpus), list(controls), pool),
        "profiles": ws["profiles"],
    }


def planned(items, instances):
    wss = valid(*items)
    desired = {ws["name"]: want(ws) for ws in wss if ws["state"] != "absent"}
    return {e["name"]: e for e in w.plan(wss, desired, instances, NOW)}


# ---- validation ----------------------------------------------------------------------------------------


def test_normalization():
    a, b = valid(alice(), bob())
    assert a["user"]["gid"] == 20901 and a["user"]["shell"] == "/bin/bash"
    assert a["limits"] == {"cpu": "1", "memory": "512MiB", "processes": "500"}
    assert b["limits"] == {"memory": "1GiB", "disk": "2GiB"}
    assert a["image"] == "gpulab/debian12" and a["profiles"] == ["default"] and a["state"] == "started"


def test_name_defaults_to_username():
    (ws,) = valid({"user": {"name": "carol", "uid": 20903}})
    assert ws["name"] == "carol"


@pytest.mark.parametrize(
    ("items", "message"),
    [
        ([alice(), alice()], "workstation t-wsdev-a: name: duplicate"),
        ([alice(), bob(user={"name": "bob", "uid": 20901})], "workstation t-wsdev-b: user.uid: 20901 is also used"),
        ([alice(limits={"memory": "12 bananas"})], "workstation t-wsdev-a: limits.memory: invalid size '12 bananas'"),
        ([alice(limits={"memory": "0"})], "workstation t-wsdev-a: limits.memory: size '0' must be more than 0"),
        ([alice(limits={"cpu": "all"})], "workstation t-wsdev-a: limits.cpu: 'all' is neither"),
        ([alice(limits={"disk": "-5G"})], "workstation t-wsdev-a: limits.disk: invalid size"),
        ([alice(user={"name": "Alice!", "uid": 20901})], "workstation t-wsdev-a: user.name: 'Alice!' is not a valid"),
        ([alice(user={"name": "root", "uid": 20901})], "workstation t-wsdev-a: user.name: 'root' is reserved"),
        ([alice(user={"name": "alice", "uid": 20})], "workstation t-wsdev-a: user.uid: 20 is not a number"),
        ([alice(user={"name": "alice", "uid": 20901, "ssh_keys": ["ssh-rsa nope"]})], "user.ssh_keys[0]: ssh-rsa key"),
        ([alice(state="stopped", purge=True)], "workstation t-wsdev-a: purge: only allowed with state=absent"),
        ([alice(name="9lives")], "workstation 9lives: name: '9lives' is not a valid instance name"),
        ([alice(name="a" * 40)], "at most 39 characters"),
        ([alice(disks=[{"source": "relative", "path": "/data"}])], "disks[0].source: 'relative' must be"),
        ([alice(gpu_mode="magic")], "gpu_mode: 'magic' is not one of lxd, devices"),
        ([{"state": "absent"}], "workstation #0: name: missing"),
    ],
)
def test_validation_errors(items, message):
    problems = w.validate(items, DEFAULTS)[1]
    assert any(message in p for p in problems), problems


def test_validation_reports_every_problem_at_once():
    problems = w.validate([alice(limits={"memory": "x"}), bob(user={"name": "root", "uid": 1})], DEFAULTS)[1]
    assert len(problems) == 4  # memory, user.name, user.uid, and user.gid (defaults to the uid)


def test_absent_needs_only_a_name():
    (ws,) = valid({"name": "t-wsdev-a", "state": "absent", "purge": True})
    assert ws == {"name": "t-wsdev-a", "state": "absent", "purge": True}


# ---- desired config and devices ---------------------------------------------------------------------------


def test_desired_config_identity_and_nesting():
    a, b = valid(alice(), bob())
    ca = w.desired_config(a, [], "compute,utility")
    assert ca["raw.idmap"] == "both 20901 20901"
    assert ca["security.idmap.isolated"] == "true" and ca["security.nesting"] == "true"
    assert ca["limits.memory"] == "512MiB" and "nvidia.runtime" not in ca
    assert w.desired_config(b, [], "x")["raw.idmap"] == "uid 20902 20902\ngid 20952 20952"
    assert all(isinstance(v, str) for v in ca.values())


def two_gpu_host():
    # Two real procfs information files (from two machines) as one host; see tests/data/gpu/README.md.
    infos = [
        gpu.parse_information((DATA / "gpu" / n).read_text())
        for n in ("information_h100-80gb-hbm3.txt", "information_a10g.txt")
    ]
    return gpu.gpus_from_information(infos)


def test_lxd_gpu_mode():
    (ws,) = valid(alice(gpus=[1]))
    chosen = gpu.resolve_request(ws["gpus"], two_gpu_host(), ws["name"])
    config = w.desired_config(ws, chosen, "compute,utility,video")
    assert config["nvidia.runtime"] == "true" and config["nvidia.driver.capabilities"] == "compute,utility,video"
    assert w.desired_devices(ws, chosen, [], "default") == {
        "gpulab-gpu1": {"type": "gpu", "gputype": "physical", "pci": "0000:62:00.0"}
    }


def test_devices_gpu_mode():
    (ws,) = valid(alice(gpus="all", gpu_mode="devices"))
    gpus = two_gpu_host()
    gpus[0]["device"] = {"path": "/tmp/d/nvidia3", "major": 195, "minor": 3}
    gpus[1]["device"] = {"path": "/tmp/d/nvidia5", "major": 195, "minor": 5}
    controls = [
        {"path": "/tmp/d/nvidiactl", "major": 195, "minor": 255},
        {"path": "/tmp/d/nvidia-uvm", "major": 511, "minor": 0},
    ]
    assert "nvidia.runtime" not in w.desired_config(ws, gpus, "compute")
    devices = w.desired_devices(ws, gpus, controls, "default")
    assert sorted(devices) == ["gpulab-nvidia-uvm", "gpulab-nvidia3", "gpulab-nvidia5", "gpulab-nvidiactl"]
    assert devices["gpulab-nvidia5"] == {
        "type": "unix-char",
        "path": "/dev/nvidia5",
        "major": "195",
        "minor": "5",
        "mode": "0666",
    }
    assert devices["gpulab-nvidia-uvm"]["major"] == "511"


def test_devices_mode_without_nodes_is_an_error():
    (ws,) = valid(alice(gpus=[0], gpu_mode="devices"))
    with pytest.raises(w.PlanError, match=r"workstation t-wsdev-a: gpus: no device node for GPU 0 \(minor 3\)"):
        w.desired_devices(ws, two_gpu_host()[:1], [], "default")


def test_disks_and_root(profiles):
    (ws,) = valid(
        alice(
            disks=[
                {"source": "/srv/homes/alice", "path": "/home/alice"},
                {"source": "/srv/data", "path": "/data", "readonly": True},
            ],
            limits={"disk": "20G"},
        )
    )
    pool = w.root_pool(None, profiles, ws["profiles"])
    assert pool == "default"
    assert w.desired_devices(ws, [], [], pool) == {
        "gpulab-disk-home-alice": {"type": "disk", "source": "/srv/homes/alice", "path": "/home/alice"},
        "gpulab-disk-data": {"type": "disk", "source": "/srv/data", "path": "/data", "readonly": "true"},
        "root": {"type": "disk", "path": "/", "pool": "default", "size": "20GiB"},
    }


# ---- the plan against the recorded instances ------------------------------------------------------------


def test_drift_repaired_exactly_and_unmanaged_left_alone(instances):
    e = planned([alice(), bob()], instances)["t-wsdev-a"]
    assert e["actions"] == ["update"] and e["restart"] is False  # limits.memory applies live
    assert e["before"]["config"]["limits.memory"] == "2GiB" and e["after"]["config"]["limits.memory"] == "512MiB"
    cur = instances["t-wsdev-a"]["config"]
    assert e["config"]["user.note"] == "hello"
    assert all(e["config"][k] == v for k, v in cur.items() if k.startswith(("volatile.", "image.")))
    assert e["devices"]["extra-tmp"] == instances["t-wsdev-a"]["devices"]["extra-tmp"]
    assert e["check_inside"] is True


def test_no_op_for_a_container_in_the_desired_state(instances):
    e = planned([alice(), bob()], instances)["t-wsdev-b"]
    assert e["actions"] == [] and e["check_inside"] is False
    assert e["before"] == e["after"]


def test_stopped_container_started(instances):
    e = planned([bob(state="started")], instances)["t-wsdev-b"]
    assert e["actions"] == ["start"]


def test_running_container_stopped(instances):
    e = planned([alice(state="stopped", limits={"cpu": 1, "memory": "2G", "processes": 500})], instances)["t-wsdev-a"]
    assert e["actions"] == ["stop"]


def test_idmap_change_restarts_a_running_container(instances):
    e = planned(
        [alice(user={"name": "alice", "uid": 20911}, limits={"cpu": 1, "memory": "2G", "processes": 500})], instances
    )["t-wsdev-a"]
    assert e["actions"] == ["update", "restart"]
    assert e["config"]["raw.idmap"] == "both 20911 20911"


def test_removed_limit_is_removed(instances):
    e = planned([alice(limits={"cpu": 1, "memory": "2G"})], instances)["t-wsdev-a"]
    assert "limits.processes" in e["before"]["config"] and "limits.processes" not in e["config"]


def test_create_when_missing(instances):
    e = planned([alice(name="t-wsdev-c")], instances)["t-wsdev-c"]
    assert e["actions"] == ["create", "start"]
    assert e["create"]["source"] == {"type": "image", "alias": "gpulab/debian12"}
    assert e["create"]["config"]["user.gpulab.managed"] == "true"


def test_absent_archives_running_container(instances):
    e = planned([{"name": "t-wsdev-a", "state": "absent"}], instances)["t-wsdev-a"]
    assert e["actions"] == ["stop", "archive"]
    assert e["archive"] == {
        "name": "t-wsdev-a-archived-20261123150405",
        "snapshot": "gpulab-archive-20261123150405",
        "tags": {"user.gpulab.archived": "2026-11-23T15:04:05Z", "user.gpulab.archived_from": "t-wsdev-a"},
    }
    assert e["after"] == {"state": "absent", "archives": ["t-wsdev-a-archived-20261123150405"]}


def test_absent_of_stopped_and_of_missing(instances):
    entries = planned([{"name": "t-wsdev-b", "state": "absent"}, {"name": "nobody-here", "state": "absent"}], instances)
    assert entries["t-wsdev-b"]["actions"] == ["archive"]
    assert entries["nobody-here"]["actions"] == []


def with_archive(instances):
    # Derived from the recorded t-wsdev-b: the same instance as the module leaves it after archiving.
    arch = copy.deepcopy(instances["t-wsdev-b"])
    arch["name"] = "t-wsdev-a-archived-20261101000000"
    arch["config"].update({"user.gpulab.archived": "2026-11-01T00:00:00Z", "user.gpulab.archived_from": "t-wsdev-a"})
    return {**instances, arch["name"]: arch}


def test_purge_deletes_container_and_its_archives(instances):
    e = planned([{"name": "t-wsdev-a", "state": "absent", "purge": True}], with_archive(instances))["t-wsdev-a"]
    assert e["actions"] == ["delete"]
    assert e["delete"] == ["t-wsdev-a", "t-wsdev-a-archived-20261101000000"]
    assert e["before"]["archives"] == ["t-wsdev-a-archived-20261101000000"]


def test_absent_when_already_archived_is_a_no_op(instances):
    gone = {k: v for k, v in with_archive(instances).items() if k != "t-wsdev-a"}
    assert planned([{"name": "t-wsdev-a", "state": "absent"}], gone)["t-wsdev-a"]["actions"] == []


def test_unmanaged_instance_is_refused(instances):
    foreign = copy.deepcopy(instances)
    del foreign["t-wsdev-b"]["config"]["user.gpulab.managed"]
    with pytest.raises(w.PlanError, match="t-wsdev-b: an instance 't-wsdev-b' exists but is not managed"):
        planned([bob()], foreign)
    with pytest.raises(w.PlanError, match="refusing to take it over or archive it"):
        planned([{"name": "t-wsdev-b", "state": "absent"}], foreign)


def test_root_pool_from_instance(instances, profiles):
    assert w.root_pool(instances["t-wsdev-a"], profiles, ["default"]) == "default"
    assert w.root_pool(None, {}, ["default"]) is None


# ---- subuid / subgid ---------------------------------------------------------------------------------------

# The format of this machine's /etc/subuid (LXD's package entry) plus one appended delegation.
SUBUID = "_lxd:100000:10000001\nroot:100000:10000001\nroot:20901:1\n"


def test_subid_delegation():
    assert w.delegated(SUBUID, 20901)
    assert w.delegated(SUBUID, 150000)  # inside root's big range
    assert not w.delegated(SUBUID, 20902)
    assert not w.delegated("_lxd:20902:1\n", 20902)  # another owner does not count
    assert w.missing_subids(SUBUID, [20901, 20902, 20902, 20903]) == [20902, 20903]


# ---- inside the container ----------------------------------------------------------------------------------


def test_digest_of_a_provisioned_container_matches():
    (ws,) = valid(alice())
    digest = w.parse_digest((DATA / "lxd" / "digest_alice_provisioned.txt").read_text())
    assert digest == w.expected_digest(ws)
    assert w.drift(ws, digest) == []


def test_digest_drift_sections():
    (ws,) = valid(alice(user={"name": "alice", "uid": 20901, "ssh_keys": [KEY, OTHER_KEY], "groups": ["video"]}))
    digest = w.parse_digest((DATA / "lxd" / "digest_alice_provisioned.txt").read_text())
    assert w.drift(ws, digest) == ["keys"]
    (renamed,) = valid(alice(name="t-wsdev-z"))
    assert w.drift(renamed, digest) == ["hostname"]
    (grouped,) = valid(alice(user={"name": "alice", "uid": 20901, "ssh_keys": [KEY], "groups": []}))
    assert w.drift(grouped, digest) == ["account"]


def test_digest_of_a_fresh_container():
    (ws,) = valid(alice(name="t-wsdev-a", user={"name": "carol", "uid": 20903}))
    digest = w.parse_digest((DATA / "lxd" / "digest_unknown_user.txt").read_text())
    assert w.drift(ws, digest) == ["account", "keys", "sudoers"]


def test_provision_env():
    (ws,) = valid(alice())
    env = w.provision_env(ws, ["keys"])
    assert env["GL_FIX"] == "keys" and env["GL_KEYS"] == KEY + "\n" and env["GL_GROUPS"] == "video"
    assert env["GL_SUDOERS"] == "alice ALL=(ALL:ALL) NOPASSWD: ALL\n"


def test_placed_elsewhere_archives_only_a_managed_container(instances):
    foreign = copy.deepcopy(instances)
    del foreign["t-wsdev-b"]["config"]["user.gpulab.managed"]
    away, problems = w.validate([{"name": n, "state": "absent"} for n in ("t-wsdev-a", "t-wsdev-b", "nobody")], {})
    assert problems == []
    # the managed one is archived as a leaver's; the unmanaged one and the missing one are not planned
    kept = w.placed_elsewhere(away, foreign)
    assert [ws["name"] for ws in kept] == ["t-wsdev-a"]
    e = planned(kept, foreign)["t-wsdev-a"]
    assert e["actions"] == ["stop", "archive"] and e["archive"]["name"] == "t-wsdev-a-archived-20261123150405"


def test_unlisted_are_the_managed_workstations_no_item_names(instances):
    assert w.unlisted(instances, {"t-wsdev-a", "t-wsdev-b"}) == []
    assert w.unlisted(instances, {"t-wsdev-a"}) == ["t-wsdev-b"]
    assert w.unlisted(instances, set()) == ["t-wsdev-a", "t-wsdev-b"]
    others = copy.deepcopy(instances)
    del others["t-wsdev-a"]["config"]["user.gpulab.managed"]  # not ours: never reported
    others["t-wsdev-b"]["config"]["user.gpulab.archived"] = "2026-11-23T15:04:05Z"  # an archive: kept as such
    assert w.unlisted(others, set()) == []
