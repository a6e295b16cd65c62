"""zfs_pool, zfs_datasets and zfs_snapshots against real OpenZFS 2.1 in the test VM.

Every module runs in the guest by direct execution (TestVM.run_module, ~2 s under TCG), and each test
walks through a sequence of runs and checks the backend with one `zfs`/`zpool` command after each.
The pool lives on the VM's 3 extra by-id disks and is destroyed at teardown.
"""

from __future__ import annotations

import uuid

import pytest

from ansible_collections.gpulab.fleet.plugins.module_utils.usermodel import home_quota_properties

pytestmark = [pytest.mark.vm, pytest.mark.slow]


def task(testvm, module, args, **kw):
    return testvm.run_module(module.removeprefix("gpulab.fleet."), args, **kw)


def zfs_values(testvm, props, *datasets):
    """{dataset: {prop: value}} read with zfs get -H -p (missing datasets absent)."""
    out = testvm.ssh(f"zfs get -H -p -o name,property,value {props} {' '.join(datasets)} 2>/dev/null", check=False)
    values: dict[str, dict[str, str]] = {}
    for line in out.stdout.splitlines():
        name, prop, value = line.split("\t")
        values.setdefault(name, {})[prop] = value
    return values


def children(testvm, parent):
    out = testvm.ssh(f"zfs list -H -r -o name {parent}")
    return sorted(line for line in out.stdout.splitlines() if line != parent)


@pytest.fixture(scope="module")
def pool(testvm):
    """Creates the pool through zfs_pool (check mode first), yields (name, runs)."""
    name = f"t{uuid.uuid4().hex[:8]}"
    args = {
        "name": name,
        "vdevs": [{"type": "raidz1", "disks": testvm.disks}],
        "properties": {"ashift": 12},
        "filesystem_properties": {"compression": "lz4", "atime": False},
    }
    runs = {"check": task(testvm, "gpulab.fleet.zfs_pool", args, check=True)}
    runs["exists_after_check"] = testvm.ssh(f"zpool list {name}", check=False).returncode == 0
    runs["create"] = task(testvm, "gpulab.fleet.zfs_pool", args)
    try:
        yield name, args, runs
    finally:
        testvm.ssh(f"zpool destroy -f {name}", check=False)


def test_pool_created_once_and_never_reshaped(testvm, pool):
    name, args, runs = pool
    assert runs["check"]["changed"] and not runs["check"].get("failed")
    assert runs["check"]["command"][:2] == ["zpool", "create"]
    assert runs["exists_after_check"] is False, "check mode created the pool"
    assert runs["create"]["changed"] and runs["create"]["created"], runs["create"]
    status = testvm.ssh(f"zpool status -P {name}; zpool get -H -p -o value ashift {name}").stdout
    assert "raidz1-0" in status and all(d in status for d in testvm.disks)
    assert status.rstrip().endswith("12")

    again = task(testvm, "gpulab.fleet.zfs_pool", args)
    assert not again["changed"] and not again.get("failed") and again["differences"] == [], again

    other = dict(args, vdevs=[{"type": "mirror", "disks": testvm.disks[:2]}], properties={"ashift": 9})
    mismatch = task(testvm, "gpulab.fleet.zfs_pool", other)
    assert mismatch["failed"] and "never changed" in mismatch["msg"]
    assert any("raidz1" in d and "not wanted" in d for d in mismatch["differences"])
    assert any("ashift" in d for d in mismatch["differences"])
    assert "raidz1-0" in testvm.ssh(f"zpool status -P {name}").stdout


def test_bad_input_fails_before_any_change(testvm, pool):
    name = pool[0]
    parent = f"{name}/bad{uuid.uuid4().hex[:6]}"
    testvm.ssh(f"zfs create {parent}")
    bad = task(
        testvm,
        "gpulab.fleet.zfs_datasets",
        {
            "parent": parent,
            "datasets": [
                {"name": "good"},
                {"name": "alice", "properties": {"quota": "lots"}},
                {"name": "bob", "properties": {"nosuchprop": "x"}},
                {"name": "snap@shot"},
                {"name": "../escape"},
                {"name": "with space"},
            ],
        },
    )
    assert bad["failed"]
    for needle in ("'alice'): properties.quota: invalid size 'lots'", "unknown property 'nosuchprop'",
                   "'snap@shot'", "'../escape'", "'with space'"):  # fmt: skip
        assert needle in bad["msg"], (needle, bad["msg"])
    missing = task(testvm, "gpulab.fleet.zfs_datasets", {"parent": f"{parent}/nosuch", "datasets": [{"name": "x"}]})
    assert missing["failed"] and "dataset does not exist" in missing["msg"], missing
    assert children(testvm, parent) == []


def test_datasets_lifecycle(testvm, pool):
    parent = f"{pool[0]}/home{uuid.uuid4().hex[:6]}"
    testvm.ssh(f"zfs create {parent}")
    props = "quota,compression,recordsize,org.gpulab:owner,readonly,gpulab.fleet:archived-from"
    want = [
        {
            "name": "alice",
            "owner": 2001,
            "group": 2001,
            "mode": "0700",
            "properties": {"quota": "10G", "compression": "lz4", "org.gpulab:owner": "alice"},
        },
        {"name": "bob", "properties": {"quota": "none", "recordsize": "1M"}},
        {"name": "shared/proj", "properties": {"quota": "512M"}},
    ]
    args = {"parent": parent, "datasets": want}

    # check mode: reports creations, creates nothing
    check = task(testvm, "gpulab.fleet.zfs_datasets", args, check=True)
    assert check["changed"] and [d["action"] for d in check["datasets"]] == ["create"] * 3, check
    assert children(testvm, parent) == []

    # create, with owner/mode of the mountpoint and the diff
    created = task(testvm, "gpulab.fleet.zfs_datasets", args)
    assert created["changed"] and not created.get("failed"), created
    assert created["diff"]["after"][f"{parent}/alice"]["quota"] == 10737418240
    got = zfs_values(testvm, props, f"{parent}/alice", f"{parent}/bob", f"{parent}/shared/proj")
    assert got[f"{parent}/alice"]["quota"] == "10737418240"
    assert got[f"{parent}/alice"]["org.gpulab:owner"] == "alice"
    assert got[f"{parent}/bob"]["recordsize"] == "1048576" and got[f"{parent}/bob"]["quota"] == "0"
    assert got[f"{parent}/shared/proj"]["quota"] == str(512 << 20)
    assert testvm.ssh(f"stat -c '%u %g %a' /{parent}/alice").stdout.split() == ["2001", "2001", "700"]

    # idempotence: human sizes equal the bytes read back
    again = task(testvm, "gpulab.fleet.zfs_datasets", args)
    assert not again["changed"] and {d["action"] for d in again["datasets"]} == {"unchanged"}, again

    # modify; a create-only difference fails that item only, the others are applied; diff shows bytes
    want[0]["properties"]["quota"] = "20G"
    want[0]["mode"] = "0750"
    want[1]["properties"]["casesensitivity"] = "insensitive"
    testvm.ssh(f"zfs create {parent}/stray")
    modified = task(testvm, "gpulab.fleet.zfs_datasets", args)
    assert modified["failed"] and modified["changed"]
    assert "casesensitivity" in modified["msg"] and f"{parent}/bob" in modified["msg"]
    assert modified["diff"]["before"][f"{parent}/alice"] == {"quota": 10737418240, "mode": "0700"}
    assert modified["diff"]["after"][f"{parent}/alice"] == {"quota": 21474836480, "mode": "0750"}
    assert modified["unlisted"] == [f"{parent}/stray"]
    assert zfs_values(testvm, "quota", f"{parent}/alice")[f"{parent}/alice"]["quota"] == "21474836480"
    assert testvm.ssh(f"stat -c '%a' /{parent}/alice").stdout.strip() == "750"
    del want[1]["properties"]["casesensitivity"]

    # absent without purge + prune: bob and the unlisted stray are archived, never destroyed
    want[1]["state"] = "absent"
    archived = task(testvm, "gpulab.fleet.zfs_datasets", dict(args, prune=True))
    assert archived["changed"] and not archived.get("failed"), archived
    assert set(archived["archived"]) == {f"{parent}/bob", f"{parent}/stray"}
    names = children(testvm, parent)
    assert f"{parent}/bob" not in names and f"{parent}/stray" not in names
    bob_new = archived["archived"][f"{parent}/bob"]
    assert bob_new.startswith(f"{parent}/_archive/bob-") and bob_new in names
    got = zfs_values(testvm, props, bob_new)[bob_new]
    assert got["gpulab.fleet:archived-from"] == f"{parent}/bob" and got["readonly"] == "on"
    assert "@archived-" in testvm.ssh(f"zfs list -H -t snapshot -o name {bob_new}").stdout

    # the archive area is not unlisted; a second run changes nothing
    again = task(testvm, "gpulab.fleet.zfs_datasets", dict(args, prune=True))
    assert not again["changed"] and again["unlisted"] == [], again

    # purge destroys for real: proj, and bob's archive from the run above (bob is still listed absent);
    # check mode first, which destroys nothing
    want[2]["state"] = "absent"
    checked = task(testvm, "gpulab.fleet.zfs_datasets", dict(args, purge=True), check=True)
    assert checked["changed"] and checked["destroyed"] == [bob_new, f"{parent}/shared/proj"], checked
    assert checked["diff"]["before"][f"{parent}/bob"] == {"state": "archived", "archives": [bob_new]}
    assert {f"{parent}/shared/proj", bob_new} <= set(children(testvm, parent))
    purged = task(testvm, "gpulab.fleet.zfs_datasets", dict(args, purge=True))
    assert purged["destroyed"] == [bob_new, f"{parent}/shared/proj"], purged
    names = children(testvm, parent)
    assert f"{parent}/shared/proj" not in names and bob_new not in names
    assert f"{parent}/alice" in names and f"{parent}/_archive/stray-{bob_new.rsplit('-', 1)[1]}" in names
    again = task(testvm, "gpulab.fleet.zfs_datasets", dict(args, purge=True))
    assert not again["changed"] and again["destroyed"] == [], again


def test_snapshots_named_and_retention(testvm, pool):
    ds = f"{pool[0]}/snap{uuid.uuid4().hex[:6]}"
    # t-...Z: the schedule's own; keepme, t-manual: a person's (the second with the schedule's prefix)
    own = ["t-20260101T000000Z", "t-20260102T000000Z"]
    testvm.ssh(f"zfs create -p {ds}/a && for s in {own[0]} {own[1]} keepme t-manual; do zfs snapshot {ds}/a@$s; done")

    def snaps():
        out = testvm.ssh(f"zfs list -H -r -t snapshot -o name {ds}").stdout
        return sorted(line.split("@")[0].rsplit("/", 1)[-1] + "@" + line.split("@")[1] for line in out.splitlines())

    args = {"datasets": [ds], "recursive": True, "prefix": "t-", "keep": 2}
    check = task(testvm, "gpulab.fleet.zfs_snapshots", args, check=True)
    assert check["changed"] and len(check["created"]) == 2 and check["destroyed"] == [f"{ds}/a@{own[0]}"], check
    assert snaps() == ["a@keepme", f"a@{own[0]}", f"a@{own[1]}", "a@t-manual"]

    real = task(testvm, "gpulab.fleet.zfs_snapshots", args)
    assert real["changed"] and real["destroyed"] == [f"{ds}/a@{own[0]}"], real
    after = snaps()
    assert f"a@{own[0]}" not in after and f"a@{own[1]}" in after and "a@keepme" in after and "a@t-manual" in after
    assert len([s for s in after if s.startswith("a@t-") and s.endswith("Z")]) == 2
    assert len([s for s in after if s.startswith(ds.rsplit("/", 1)[-1] + "@t-")]) == 1

    named = {"datasets": [f"{ds}/a"], "name": "before-upgrade"}
    first = task(testvm, "gpulab.fleet.zfs_snapshots", named)
    second = task(testvm, "gpulab.fleet.zfs_snapshots", named)
    assert first["changed"] and first["created"] == [f"{ds}/a@before-upgrade"]
    assert not second["changed"], second


def test_a_home_quota_does_not_count_her_snapshots(testvm, pool):
    """The homes' quota properties as the roles pass them (usermodel.home_quota_properties): after a
    snapshot, deleting her files frees room for new ones. The twin with a plain ZFS quota shows what
    the refquota avoids: the snapshot keeps the deleted blocks charged, and the same write fails."""
    parent = f"{pool[0]}/q{uuid.uuid4().hex[:6]}"
    testvm.ssh(f"zfs create {parent}")
    items = [
        {"name": "home", "properties": home_quota_properties("32M")},
        {"name": "plain", "properties": {"quota": "32M"}},
    ]
    created = task(testvm, "gpulab.fleet.zfs_datasets", {"parent": parent, "datasets": items})
    assert created["changed"] and not created.get("failed"), created
    assert zfs_values(testvm, "refquota,quota", f"{parent}/home")[f"{parent}/home"] == {
        "refquota": str(32 << 20),
        "quota": "0",
    }

    def fill_snapshot_delete_fill(dataset):
        # random bytes: the pool compresses zeros away; sync so the blocks are charged before the check
        return testvm.ssh(
            f"set -e; m=$(zfs get -H -o value mountpoint {dataset}); "
            f"dd if=/dev/urandom of=$m/a bs=1M count=20 status=none conv=fsync; zfs snapshot {dataset}@s; "
            f"rm $m/a; sync; sleep 1; dd if=/dev/urandom of=$m/b bs=1M count=20 status=none conv=fsync",
            check=False,
        )

    home = fill_snapshot_delete_fill(f"{parent}/home")
    assert home.returncode == 0, home.stderr
    plain = fill_snapshot_delete_fill(f"{parent}/plain")
    assert plain.returncode != 0 and "Disk quota exceeded" in plain.stderr, (plain.returncode, plain.stderr)


def test_a_pool_that_can_be_imported_is_never_created_over(testvm, pool):
    """A boot where the import failed looks like a missing pool: zfs_pool must not create one over its
    disks, force or not, under its name or another. Its twin: once the pool is destroyed (its labels
    can no longer be imported), force creates the pool on the same disks. Runs last: it ends with a
    fresh pool of the fixture's name."""
    name, args, _runs = pool
    at = f"$(zfs get -H -o value mountpoint {name})/mark"
    mark = testvm.ssh(f"head -c 4096 /dev/urandom > {at}; sha256sum {at}")
    testvm.ssh(f"zpool export {name}")
    try:
        same = task(testvm, "gpulab.fleet.zfs_pool", dict(args, force=True))
        assert same["failed"] and f"zpool import {name}" in same["msg"] and "can be imported" in same["msg"], same
        other = task(testvm, "gpulab.fleet.zfs_pool", dict(args, name=f"{name}x", force=True))
        assert other["failed"] and f"belongs to pool {name}, which can be imported" in other["msg"], other
        check = task(testvm, "gpulab.fleet.zfs_pool", dict(args, force=True), check=True)
        assert check["failed"] and not check["changed"], check  # check mode says it too
        assert testvm.ssh(f"zpool list {name}x", check=False).returncode != 0
    finally:
        testvm.ssh(f"zpool import {name}")
    assert testvm.ssh(f"sha256sum {at}").stdout == mark.stdout  # the data is intact

    testvm.ssh(f"zpool destroy {name}")
    fresh = task(testvm, "gpulab.fleet.zfs_pool", dict(args, force=True))
    assert fresh["changed"] and fresh["created"] and not fresh.get("failed"), fresh
