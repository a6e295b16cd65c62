"""Where the homes and shared datasets live: exports, GPU-host NFS mounts and container disks agree."""

import pytest

from ansible_collections.gpulab.fleet.plugins.module_utils import storage_paths
from ansible_collections.gpulab.fleet.plugins.module_utils.usermodel import FleetModelError, require_valid
from tests.unit.test_usermodel import user

LAYOUT = {
    "nfs_server": "192.168.77.10",
    "export_root": "/tank/fleet",
    "home_root": "/srv/gpulab/home",
    "shared_root": "/srv/gpulab/shared",
    "options": "rw,hard,noatime,_netdev",
}
SHARED = [{"name": "datasets"}, {"name": "models/big", "state": "present"}, {"name": "old", "state": "absent"}]


def lab_users():
    return require_valid(
        [
            user("alice", 10001, host="gpu1", memory="1GiB"),
            user("bob", 10002, host="gpu1", state="absent"),
            user("carol", 10003, host="gpu1", state="stopped"),
            user("dave", 10004, host="store"),
        ]
    )


def test_nfs_host_mounts_each_present_home_on_its_own_and_unmounts_the_absent_and_the_moved():
    got = storage_paths.workstation_storage(lab_users(), "gpu1", shared=SHARED, processes=10000, **LAYOUT)
    assert got["home_mounts"] == [
        {
            "path": f"/srv/gpulab/home/{n}",
            "src": f"192.168.77.10:/tank/fleet/home/{n}",
            "fstype": "nfs",
            "opts": LAYOUT["options"],
        }
        for n in ("alice", "carol")
    ]
    # bob left; dave lives on store (moved there, or never here): neither home stays mounted on gpu1
    assert got["gone_mounts"] == [{"path": f"/srv/gpulab/home/{n}", "state": "absent"} for n in ("bob", "dave")]
    assert got["elsewhere"] == ["dave"]
    # the leavers' pass archives bob's workstation (and dave's, elsewhere) before the storage server acts
    assert [(ws["name"], ws["state"]) for ws in got["leaving"]] == [("bob", "absent")]
    assert got["leaving"] == [ws for ws in got["workstations"] if ws["name"] == "bob"]
    # LXD waits for the homes and the present shared datasets, never the absent one
    assert got["lxd_mounts"] == [
        "/srv/gpulab/home/alice",
        "/srv/gpulab/home/carol",
        "/srv/gpulab/shared/datasets",
        "/srv/gpulab/shared/models/big",
    ]


def test_nfs_host_workstations_get_the_mounted_home_and_read_only_shared_disks():
    got = storage_paths.workstation_storage(lab_users(), "gpu1", shared=SHARED, processes=10000, **LAYOUT)
    alice = next(ws for ws in got["workstations"] if ws["name"] == "alice")
    assert alice["limits"] == {"memory": "1GiB", "processes": 10000}
    assert alice["disks"] == [
        {"name": "home", "source": "/srv/gpulab/home/alice", "path": "/home/alice"},
        {
            "name": "shared-datasets",
            "source": "/srv/gpulab/shared/datasets",
            "path": "/shared/datasets",
            "readonly": True,
        },
        {
            "name": "shared-models-big",
            "source": "/srv/gpulab/shared/models/big",
            "path": "/shared/models/big",
            "readonly": True,
        },
    ]
    # every user of the host has an item (absent ones are archived by the module), no other host's
    assert [(ws["name"], ws["state"]) for ws in got["workstations"]] == [
        ("alice", "started"),
        ("bob", "absent"),
        ("carol", "stopped"),
    ]


def test_storage_host_uses_the_datasets_in_place_and_mounts_nothing():
    got = storage_paths.workstation_storage(lab_users(), "store", shared=SHARED, **{**LAYOUT, "nfs_server": ""})
    assert got["home_mounts"] == got["gone_mounts"] == got["lxd_mounts"] == []
    # every user of another host, absent ones included: a container of theirs left here is archived
    assert got["elsewhere"] == ["alice", "bob", "carol"]
    (dave,) = got["workstations"]
    assert [d["source"] for d in dave["disks"]] == [
        "/tank/fleet/home/dave",
        "/tank/fleet/shared/datasets",
        "/tank/fleet/shared/models/big",
    ]
    assert "processes" not in dave["limits"]  # processes=0: not set


def test_gpu_host_shared_mounts():
    got = storage_paths.shared_mounts(
        SHARED, server="192.168.77.10", export_root="/tank/fleet", root="/srv/gpulab/shared", options="ro,hard"
    )
    assert got == [
        {
            "path": "/srv/gpulab/shared/datasets",
            "src": "192.168.77.10:/tank/fleet/shared/datasets",
            "fstype": "nfs",
            "opts": "ro,hard",
        },
        {
            "path": "/srv/gpulab/shared/models/big",
            "src": "192.168.77.10:/tank/fleet/shared/models/big",
            "fstype": "nfs",
            "opts": "ro,hard",
        },
        {"path": "/srv/gpulab/shared/old", "state": "absent"},
    ]


def test_exports_match_what_the_gpu_hosts_mount():
    users = [
        {"name": "alice", "uid": 10001},
        {"name": "bob", "uid": 10002, "state": "absent"},
        {"name": "carol", "uid": 10003, "state": "present"},
    ]
    paths = storage_paths.exported_paths(users, SHARED, "tank")
    assert paths == [
        "/tank/fleet/home/alice",
        "/tank/fleet/home/carol",
        "/tank/fleet/shared/datasets",
        "/tank/fleet/shared/models/big",
    ]
    # what a GPU host mounts (its src paths) is exactly what the storage server exports
    host = storage_paths.workstation_storage(lab_users(), "gpu1", shared=SHARED, **LAYOUT)
    shared = storage_paths.shared_mounts(SHARED, server="s", export_root="/tank/fleet", root="/r", options="o")
    mounted = [m["src"].split(":", 1)[1] for m in host["home_mounts"] + shared if "src" in m]
    assert set(mounted) <= set(storage_paths.exported_paths(users, SHARED, "tank"))


def test_home_dataset_calls_split_by_purge():
    users = [
        {"name": "alice", "uid": 10001, "quota": "500GiB"},
        {"name": "bob", "uid": 10002, "gid": 10100, "state": "absent"},
        {"name": "dave", "uid": 10004, "state": "absent", "purge": True},
    ]
    got = storage_paths.home_dataset_calls(users, mode="0700", properties={"compression": "lz4"}, quota="none")
    assert got["keep"] == [
        {
            "name": "alice",
            "state": "present",
            "owner": 10001,
            "group": 10001,
            "mode": "0700",
            # a refquota: her snapshots do not count against her; quota none clears an earlier version's
            "properties": {"compression": "lz4", "refquota": "500GiB", "quota": "none"},
        },
        {
            "name": "bob",
            "state": "absent",
            "owner": 10002,
            "group": 10100,
            "mode": "0700",
            "properties": {"compression": "lz4", "refquota": "none", "quota": "none"},
        },
    ]
    assert [h["name"] for h in got["purge"]] == ["dave"]


@pytest.mark.parametrize(
    "call",
    [
        lambda bad: storage_paths.exported_paths([], [bad], "tank"),
        lambda bad: storage_paths.shared_mounts([bad], server="s", export_root="/e", root="/r", options="o"),
        lambda bad: storage_paths.workstation_storage(lab_users(), "gpu1", shared=[bad], **LAYOUT),
    ],
)
def test_a_bad_state_names_the_dataset_and_the_value(call):
    with pytest.raises(FleetModelError, match=r"shared dataset models: state: 'gone' is not present or absent"):
        call({"name": "models", "state": "gone"})
