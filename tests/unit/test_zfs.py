"""Pure ZFS parsing and planning (plugins/module_utils/zfs.py) on outputs recorded from real
OpenZFS 2.1.11 in the test VM (tests/data/zfs/, re-record with tests/data/zfs/capture.sh)."""

from __future__ import annotations

from pathlib import Path

import pytest

from ansible_collections.gpulab.fleet.plugins.module_utils import zfs

DATA = Path(__file__).resolve().parent.parent / "data" / "zfs"
HOME = "tank/fleet/home"


def data(name: str) -> str:
    return (DATA / name).read_text()


@pytest.fixture(scope="module")
def tree():
    return zfs.parse_get(data("zfs-get-props-tree.txt"))


# --- parsers -------------------------------------------------------------------------------------


def test_parse_get_reads_exact_bytes_user_props_and_unset(tree):
    assert tree[f"{HOME}/alice"]["quota"] == ("10737418240", "local")
    assert tree[f"{HOME}/alice"]["org.gpulab:owner"] == ("alice", "local")
    assert tree[f"{HOME}/bob"]["quota"] == ("0", "local")  # created with quota=none: reads back 0
    assert tree[f"{HOME}/bob"]["org.gpulab:owner"] == ("-", "-")  # unset user property
    assert tree[f"{HOME}/bob"]["recordsize"] == ("1048576", "local")
    assert tree[f"{HOME}/bob"]["compression"] == ("on", "local")
    assert tree[f"{HOME}/alice"]["compression"] == ("lz4", "inherited from tank")
    # sharenfs options keep their commas; the tree has no snapshots (-t filesystem,volume)
    assert tree[f"{HOME}/carol"]["sharenfs"][0] == "rw=@10.0.0.0/24,no_root_squash"
    assert not [n for n in tree if "@" in n]
    assert tree[f"{HOME}/vol"]["type"] == ("volume", "-")


def test_every_property_of_real_zfs_get_all_is_classified():
    """The property tables match OpenZFS 2.1: each native property zfs reports is known."""
    names = {prop for props in zfs.parse_get(data("zfs-get-all-tree.txt")).values() for prop in props}
    native = {n for n in names if ":" not in n}
    known = zfs.SETTABLE_PROPERTIES | zfs.CREATE_ONLY_PROPERTIES | zfs.READONLY_PROPERTIES
    assert native - known == set()
    assert {"quota", "compression", "recordsize", "sharenfs", "encryption", "used"} <= native


def test_parse_snapshots_orders_by_txg():
    snaps = zfs.parse_snapshots(data("zfs-list-snapshots.txt"))
    assert {s.full for s in snaps} == {
        f"{HOME}/alice@auto-1",
        f"{HOME}/alice@auto-2",
        f"{HOME}/alice@manual",
        f"{HOME}/bob@auto-1",
    }
    alice = {s.name: s for s in snaps if s.dataset.endswith("alice")}
    assert alice["auto-1"].createtxg < alice["auto-2"].createtxg <= alice["manual"].createtxg


def test_parse_zpool_status_raidz_by_id_and_resolved():
    resolved = zfs.parse_zpool_status(data("zpool-status-raidz-P-L.txt"))
    assert [(v.role, v.type, len(v.disks)) for v in resolved] == [("data", "raidz1", 3)]
    # -L resolved two disks but left the third as its by-id partition link (recorded as is): the
    # module must canonicalise both forms itself (zfs_pool.whole_disk), not trust -L.
    assert sorted(resolved[0].disks) == ["/dev/disk/by-id/virtio-gpulab-data3-part1", "/dev/vdb1", "/dev/vdc1"]
    by_id = zfs.parse_zpool_status(data("zpool-status-raidz-P.txt"))
    assert all(d.startswith("/dev/disk/by-id/virtio-gpulab-data") for d in by_id[0].disks)


def test_parse_zpool_status_sections():
    layout = zfs.parse_zpool_status(data("zpool-status-mixed-P-L.txt"))
    assert sorted((v.role, v.type, len(v.disks)) for v in layout) == [
        ("cache", "stripe", 1),
        ("data", "mirror", 2),
        ("log", "stripe", 1),
        ("spare", "stripe", 1),
        ("special", "mirror", 2),
    ]


def test_zfs_error_carries_the_zfs_message():
    err = zfs.ZfsError(["zfs", "get", "quota", "tank/nosuch"], 1, data("zfs-get-missing-parent.txt.err"))
    assert "dataset does not exist" in str(err) and err.not_found
    err = zfs.ZfsError(["zpool", "status", "nosuchpool"], 1, data("zpool-status-missing.txt.err"))
    assert err.not_found
    # zfs appends its usage text to some errors: only the reason is kept
    err = zfs.ZfsError(["zfs", "get", "quota,nosuchprop", HOME], 2, data("zfs-get-bad-property.txt.err"))
    assert str(err).startswith("bad property list: invalid property 'nosuchprop' (rc=2: zfs get")
    assert "usage" not in str(err) and not err.not_found


def test_client_maps_failures_and_reads_tree_in_one_call():
    calls = []

    def run(argv):
        calls.append(argv)
        if argv[-1] == "tank/nosuch":
            return 1, "", data("zfs-get-missing-parent.txt.err")
        return 0, data("zfs-get-props-tree.txt"), ""

    client = zfs.ZfsClient(run)
    assert f"{HOME}/alice" in client.get_tree(HOME, ["quota", "type"])
    assert len(calls) == 1 and calls[0][:5] == ["zfs", "get", "-H", "-p", "-r"]
    with pytest.raises(zfs.ZfsError, match="dataset does not exist"):
        client.get_tree("tank/nosuch", ["quota"])


# --- values and names ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("prop", "value", "expected"),
    [
        ("quota", "10G", 10737418240),
        ("quota", "10GiB", 10737418240),
        ("quota", "none", 0),
        ("refquota", 0, 0),
        ("recordsize", "1M", 1048576),
        ("compression", "LZ4", "lz4"),
        ("atime", False, "off"),
        ("readonly", True, "on"),
        ("mountpoint", "/srv/home/", "/srv/home"),
        ("sharenfs", "rw=@10.0.0.0/24", "rw=@10.0.0.0/24"),
        ("org.gpulab:owner", "Alice", "Alice"),
        ("quota", None, None),
    ],
)
def test_normalize_property(prop, value, expected):
    assert zfs.normalize_property(prop, value) == expected


def test_zero_quota_is_written_as_none():
    # real zfs: `zfs create -o quota=0` -> "use 'none' to disable quota/refquota"
    assert zfs.format_value("quota", 0) == "none" and zfs.format_value("refreservation", 0) == "none"
    assert zfs.format_value("special_small_blocks", 0) == "0"
    assert zfs.format_value("quota", 1024) == "1024"


def test_desired_and_current_sizes_compare_equal(tree):
    assert zfs.normalize_property("quota", "10G") == zfs.normalize_current("quota", tree[f"{HOME}/alice"]["quota"][0])
    assert zfs.normalize_property("quota", "none") == zfs.normalize_current("quota", tree[f"{HOME}/bob"]["quota"][0])
    assert zfs.normalize_current("org.gpulab:owner", "-") is None


@pytest.mark.parametrize(
    "name", ["a@b", "../x", "a/../b", "a b", "/abs", "trail/", "", "a//b", ".hidden", "_archive", "x/_archive", "a#b"]
)
def test_bad_relative_names(name):
    assert zfs.relative_name_problem(name)


@pytest.mark.parametrize("name", ["alice", "shared/projects", "x-1.2:y", "A_b"])
def test_good_relative_names(name):
    assert zfs.relative_name_problem(name) is None


def test_spec_problems_name_item_field_and_value():
    problems = zfs.spec_problems(
        HOME,
        [
            {"name": "alice", "properties": {"quota": "lots"}},
            {"name": "bob", "properties": {"nosuchprop": "1", "used": 5, "Org.X:Y": "1"}},
            {"name": "a@b"},
            {"name": "ok", "owner": -1, "mode": "999"},
            {"name": "ok"},
        ],
    )
    text = "\n".join(problems)
    assert "datasets[0] ('alice'): properties.quota: invalid size 'lots'" in text
    assert "unknown property 'nosuchprop'" in text
    assert "property 'used' is read-only" in text
    assert "user property 'Org.X:Y'" in text
    assert "datasets[2] ('a@b')" in text
    assert "owner: -1" in text and "mode: '999'" in text
    assert "datasets[4] ('ok'): listed twice" in text
    assert zfs.spec_problems(HOME, [{"name": "a", "state": "absent"}, {"name": "a/b"}])


# --- dataset plan --------------------------------------------------------------------------------


def plan(items, current, **kw):
    return zfs.plan_datasets(HOME, zfs.build_specs(HOME, items), current, stamp="20260101T000000Z", **kw)


def test_plan_noop_when_human_sizes_match_bytes(tree):
    p = plan(
        [
            {"name": "alice", "properties": {"quota": "10G", "org.gpulab:owner": "alice", "compression": "lz4"}},
            {"name": "bob", "properties": {"quota": "none", "recordsize": "1M", "compression": "on"}},
        ],
        tree,
    )
    assert [i.action for i in p.items] == ["unchanged", "unchanged"]
    assert not p.changed
    assert p.unlisted == [f"{HOME}/carol", f"{HOME}/vol"]
    assert p.prune == []


def test_plan_update_create_inherit(tree):
    p = plan(
        [
            {"name": "alice", "properties": {"quota": "20G", "org.gpulab:owner": None}},
            {"name": "bob", "properties": {"compression": "lz4", "org.gpulab:owner": None}},
            {"name": "dave/nested", "properties": {"quota": "1G", "atime": False}, "owner": 2004, "mode": "0700"},
        ],
        tree,
    )
    alice, bob, dave = p.items
    assert alice.action == "update" and alice.set == {"quota": 21474836480} and alice.inherit == ["org.gpulab:owner"]
    assert alice.before == {"quota": 10737418240, "org.gpulab:owner": "alice"}
    assert bob.set == {"compression": "lz4"} and bob.inherit == []  # unset user prop: nothing to inherit
    assert dave.action == "create" and dave.set == {"quota": 1073741824, "atime": "off"}
    assert dave.perms == {"owner": 2004, "mode": 0o700}
    # dave (the implied parent of dave/nested) is not unlisted
    assert f"{HOME}/dave" not in p.unlisted


def test_plan_create_only_difference_is_an_error(tree):
    current = {**tree, f"{HOME}/alice": {**tree[f"{HOME}/alice"], "casesensitivity": ("sensitive", "-")}}
    p = plan([{"name": "alice", "properties": {"casesensitivity": "mixed", "quota": "20G"}}], current)
    assert p.items[0].action == "failed"
    assert "casesensitivity" in p.items[0].error and "only be set when the dataset is created" in p.items[0].error


def test_plan_owner_mode_from_stat(tree):
    items = [{"name": "alice", "owner": 2001, "group": 2001, "mode": "0700"}]
    p = plan(items, tree, stats={f"{HOME}/alice": (2001, 2001, 0o700)})
    assert p.items[0].action == "unchanged"
    p = plan(items, tree, stats={f"{HOME}/alice": (0, 0, 0o755)})
    assert p.items[0].perms == {"owner": 2001, "group": 2001, "mode": 0o700}
    assert p.items[0].before == {"owner": 0, "group": 0, "mode": "0755"}
    p = plan(items, tree, stats={})
    assert p.items[0].action == "failed" and "not mounted" in p.items[0].error


def test_plan_absent_archives_unless_purge(tree):
    p = plan([{"name": "alice", "state": "absent"}, {"name": "gone", "state": "absent"}], tree)
    alice, gone = p.items
    assert alice.action == "archive" and alice.archive_to == f"{HOME}/_archive/alice-20260101T000000Z"
    assert gone.action == "unchanged"
    assert p.need_archive_area
    p = plan([{"name": "alice", "state": "absent"}], tree, purge=True)
    assert p.items[0].action == "destroy" and not p.need_archive_area
    assert p.items[0].destroy == [f"{HOME}/alice"]


def test_plan_purge_destroys_earlier_archives_and_only_theirs(tree):
    current = dict(tree)
    archived = {"type": ("filesystem", "-")}
    current[f"{HOME}/_archive"] = archived
    for name, origin in (("alice-1", "alice"), ("alice-2", "alice"), ("al-1", "al"), ("alice.sub-1", "alice/sub")):
        current[f"{HOME}/_archive/{name}"] = {**archived, zfs.ARCHIVED_FROM: (f"{HOME}/{origin}", "local")}
    # a child of an archive inherits the property: it goes with its archive, not on its own
    inherited = (f"{HOME}/alice", f"inherited from {HOME}/_archive/alice-1")
    current[f"{HOME}/_archive/alice-1/sub"] = {**archived, zfs.ARCHIVED_FROM: inherited}
    alice_archives = [f"{HOME}/_archive/alice-1", f"{HOME}/_archive/alice-2", f"{HOME}/_archive/alice.sub-1"]
    p = plan([{"name": "alice", "state": "absent"}], current, purge=True)
    assert p.items[0].destroy == [f"{HOME}/alice", *alice_archives]
    assert p.items[0].before == {"state": "present", "archives": alice_archives}
    # archived earlier, purged now: only the archives are left to destroy
    del current[f"{HOME}/alice"]
    p = plan([{"name": "alice", "state": "absent"}], current, purge=True)
    assert p.items[0].action == "destroy" and p.items[0].destroy == alice_archives
    assert p.items[0].before == {"state": "archived", "archives": alice_archives}
    # without purge the archives stay, and an archived user is unchanged
    p = plan([{"name": "alice", "state": "absent"}], current)
    assert p.items[0].action == "unchanged" and p.items[0].destroy == []
    p = plan([{"name": "al", "state": "absent"}], current, purge=True)
    assert p.items[0].destroy == [f"{HOME}/_archive/al-1"]


def test_plan_prune_handles_top_unlisted_and_never_the_archive_area(tree):
    current = dict(tree)
    current[f"{HOME}/_archive"] = {"type": ("filesystem", "-")}
    current[f"{HOME}/_archive/old-1"] = {"type": ("filesystem", "-")}
    current[f"{HOME}/carol/sub"] = {"type": ("filesystem", "-")}
    items = [{"name": "alice"}, {"name": "bob"}]
    p = plan(items, current)
    assert p.unlisted == [f"{HOME}/carol", f"{HOME}/carol/sub", f"{HOME}/vol"]
    assert p.prune == [] and not p.changed
    p = plan(items, current, prune=True)
    assert [(i.spec.full, i.action) for i in p.prune] == [(f"{HOME}/carol", "archive"), (f"{HOME}/vol", "archive")]
    assert not p.need_archive_area  # exists already
    p = plan(items, current, prune=True, purge=True)
    assert {i.action for i in p.prune} == {"destroy"}


# --- snapshots retention -------------------------------------------------------------------------


def test_snapshot_list_parses():
    snaps = zfs.parse_snapshots(data("zfs-list-snapshots.txt"))
    assert [(s.full, s.createtxg) for s in snaps][:2] == [(f"{HOME}/alice@auto-1", 37), (f"{HOME}/alice@auto-2", 38)]


def snap(dataset: str, name: str, txg: int) -> zfs.Snapshot:
    return zfs.Snapshot(f"{HOME}/{dataset}", name, txg, 1795446493 + txg)


def test_scheduled_names_carry_the_utc_stamp():
    assert zfs.scheduled_name("hourly-", 1795446493) == "hourly-20261123T150813Z"
    assert zfs.is_scheduled("hourly-20261123T150813Z", "hourly-")
    assert not zfs.is_scheduled("hourly-20261123T150813Z", "hourly")
    assert not zfs.is_scheduled("hourly-before-upgrade", "hourly-")
    assert not zfs.is_scheduled("hourly-20261123T150813Z-copy", "hourly-")
    assert zfs.is_scheduled("a.b-20261123T150813Z", "a.b-") and not zfs.is_scheduled("axb-20261123T150813Z", "a.b-")


def test_retention_expires_only_its_own_schedule():
    snaps = [
        snap("alice", "auto-20260101T000000Z", 1),
        snap("alice", "auto-20260102T000000Z", 2),
        snap("alice", "auto-20260103T000000Z", 3),
        snap("alice", "autosnap_2026-01-01_00:00:00_hourly", 4),  # sanoid's, same leading letters
        snap("alice", "auto-keep-me", 5),  # a person's
        snap("alice", "auto-20260104T000000Z", 6),
        snap("bob", "auto-20260101T000000Z", 1),
    ]
    assert [s.full for s in zfs.expired_snapshots(snaps, "auto-", 2)] == [
        f"{HOME}/alice@auto-20260102T000000Z",
        f"{HOME}/alice@auto-20260101T000000Z",
    ]
    assert zfs.expired_snapshots(snaps, "auto", 1) == []  # `auto` is not sanoid's `autosnap_`
    assert zfs.expired_snapshots(snaps, "auto-", 4) == []
    assert zfs.expired_snapshots(snaps, "nomatch-", 1) == []


def test_snapshots_to_take_where_missing():
    existing = [snap("alice", "before-upgrade", 1)]
    homes = [f"{HOME}/alice", f"{HOME}/bob"]
    assert zfs.snapshots_to_take(homes, homes, existing, "before-upgrade", recursive=False) == (
        [f"{HOME}/bob@before-upgrade"],
        [f"{HOME}/bob@before-upgrade"],
    )
    # recursive: one `zfs snapshot -r HOME@x` covers the children that miss it
    missing, command = zfs.snapshots_to_take([HOME], [HOME, *homes], existing, "before-upgrade", recursive=True)
    assert missing == [f"{HOME}@before-upgrade", f"{HOME}/bob@before-upgrade"]
    assert command == [f"{HOME}@before-upgrade"]


# --- pool ----------------------------------------------------------------------------------------


def test_pool_layout_compare_and_create_args():
    want = zfs.desired_vdevs(
        [
            {"type": "raidz", "disks": ["/dev/vdb", "/dev/vdc", "/dev/vdd"]},
            {"role": "log", "disks": ["/dev/vde"]},
            {"role": "cache", "type": "stripe", "disks": ["/dev/vdf", "/dev/vdg"]},
        ]
    )
    same = [
        zfs.Vdev("cache", "stripe", ["/dev/vdg"]),
        zfs.Vdev("data", "raidz1", ["/dev/vdd", "/dev/vdb", "/dev/vdc"]),
        zfs.Vdev("log", "stripe", ["/dev/vde"]),
        zfs.Vdev("cache", "stripe", ["/dev/vdf"]),
    ]
    assert zfs.layout_differences(want, same) == []
    diffs = zfs.layout_differences(want, [zfs.Vdev("data", "mirror", ["/dev/vdb", "/dev/vdc"])])
    assert "data raidz1 [/dev/vdb /dev/vdc /dev/vdd] is wanted but not in the pool" in diffs
    assert "data mirror [/dev/vdb /dev/vdc] is in the pool but not wanted" in diffs
    args = zfs.create_pool_args("tank", want, {"ashift": "12"}, {"compression": "lz4"})
    assert args == [
        "-o", "ashift=12", "-O", "compression=lz4", "tank",
        "raidz1", "/dev/vdb", "/dev/vdc", "/dev/vdd", "log", "/dev/vde", "cache", "/dev/vdf", "/dev/vdg",
    ]  # fmt: skip


def test_pool_layout_problems():
    problems = zfs.vdev_problems(
        [
            {"type": "raidz2", "disks": ["/dev/a", "/dev/b"]},
            {"role": "cache", "type": "mirror", "disks": ["/dev/c", "/dev/d"]},
            {"disks": ["sdb", "/dev/a"]},
        ]
    )
    text = "\n".join(problems)
    assert "raidz2 needs at least 3 disks" in text
    assert "cache devices cannot be mirror" in text
    assert "disk 'sdb' must be a /dev path" in text
    assert "disk '/dev/a' is used twice" in text
    assert zfs.vdev_problems([{"role": "log", "disks": ["/dev/x"]}]) == ["vdevs: at least one data vdev is needed"]


# --- what zfs_pool reads before a create (tests/data/zfs/capture.sh, `bash -s import`) --------------------


def test_no_pool_of_that_name_can_be_imported_and_no_disk_of_one():
    assert zfs.create_problems("tank", [], {}) == []
    # a destroyed pool's labels (not importable any more): force's business, not refused
    assert zfs.create_problems("tank", [], {"vdb1": "tank", "vdc1": "old"}) == []
    assert zfs.create_problems("tank", [("other", "ONLINE")], {}) == []


def test_a_pool_that_can_be_imported_is_not_created_over():
    (same,) = zfs.create_problems("tank", [("tank", "ONLINE")], {"vdb1": "tank"})
    assert same.startswith("pool tank is not imported, but a pool of that name can be imported (state ONLINE)")
    assert "zpool import tank" in same
    (other,) = zfs.create_problems("tank", [("old", "DEGRADED")], {"vdb1": "old", "vdc": ""})
    assert other.startswith("disk vdb1 belongs to pool old, which can be imported (state DEGRADED)")
    assert len(zfs.create_problems("tank", [("tank", "UNAVAIL"), ("old", "ONLINE")], {"vdb1": "old"})) == 2


def test_zpool_import_listing_parses():
    assert zfs.parse_importable(data("zpool-import-exported.txt")) == [("tank", "ONLINE")]
    # nothing to import: rc 0, the message on stderr and nothing on stdout (recorded together)
    assert "no pools available to import" in data("zpool-import-none.txt")
    assert zfs.parse_importable("") == []
    assert "rc=0" in data("zpool-import-after-destroy.txt")  # a destroyed pool is not listed


def test_lsblk_labels_name_the_pools_on_the_disks():
    assert zfs.parse_zfs_labels(data("lsblk-blank-disks.txt")) == {}
    assert zfs.parse_zfs_labels(data("lsblk-pool-disks.txt")) == {"vdb1": "tank", "vdc1": "tank", "vdd1": "tank"}
    # a destroyed pool's labels stay: refused only while `zpool import` lists that pool
    destroyed = zfs.parse_zfs_labels(data("lsblk-destroyed-pool-disks.txt"))
    assert destroyed == {"vdb1": "tank", "vdc1": "tank", "vdd1": "tank"}
    assert zfs.create_problems("tank", zfs.parse_importable(""), destroyed) == []
    assert zfs.create_problems("tank", zfs.parse_importable(data("zpool-import-exported.txt")), destroyed)


def replay(rc: int, out: str, err: str = ""):
    """A runner that answers every call with one recorded result (tests/data/zfs/capture.sh)."""
    return lambda argv: (rc, out, err)


def test_importable_reads_the_listing_and_nothing_to_import_is_no_pools():
    listing = data("zpool-import-exported.txt").rsplit("rc=", 1)[0]
    assert zfs.parse_importable(zfs.ZfsClient(replay(0, listing)).importable()) == [("tank", "ONLINE")]
    # OpenZFS 2.1 (recorded): rc 0, the message on stderr; older releases exit 1 with it: no pools either
    none = data("zpool-import-none.txt").rsplit("rc=", 1)[0]
    assert zfs.ZfsClient(replay(0, "", none)).importable() == ""
    assert zfs.ZfsClient(replay(1, "", none)).importable() == ""
    # any other failure is zpool's own error, not an empty listing (which would let a pool be created);
    # a recorded zpool error stands for it
    failure = data("zpool-status-missing.txt.err").rsplit("rc=", 1)[0]
    with pytest.raises(zfs.ZfsError) as err:
        zfs.ZfsClient(replay(1, "", failure)).importable()
    assert failure.strip() in str(err.value)
