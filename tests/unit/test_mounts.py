"""Pure mount parsing and planning (plugins/module_utils/mounts.py) on tables recorded from a real
mount namespace and real fstabs (tests/data/mounts/, see its README; re-record with capture.sh).
libmount's own reading of the same files (findmnt -J) is the reference for the parsers."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ansible_collections.gpulab.fleet.plugins.module_utils import mounts as m

DATA = Path(__file__).resolve().parent.parent / "data" / "mounts"
B = "/tmp/gpulab-mounts-capture"


def data(name: str) -> str:
    return (DATA / name).read_text()


@pytest.fixture(scope="module")
def live():
    return m.parse_mountinfo(data("mountinfo-namespace.txt"))


def plan(specs, fstab="", live_mounts=()):
    return m.plan_mounts(specs, fstab, list(live_mounts))


def spec(path, src=None, **kw):
    return m.MountSpec(path=path, src=src, **kw)


# --- mountinfo -----------------------------------------------------------------------------------


def test_mountinfo_matches_findmnt(live):
    """Every field libmount reads from the same table, including the unescaped space and bind roots."""
    ref = json.loads(data("findmnt-namespace.json"))["filesystems"]
    assert len(live) == len(ref) == 10
    for mine, theirs in zip(live, ref, strict=True):
        assert (mine.mount_id, mine.parent_id, mine.path, mine.fstype, mine.root, mine.device) == (
            theirs["id"], theirs["parent"], theirs["target"], theirs["fstype"], theirs["fsroot"], theirs["maj:min"]
        )  # fmt: skip
        assert mine.describe()["src"] == theirs["source"]  # findmnt shows a bind as SOURCE[ROOT] too


def test_mountinfo_space_stacking_and_bind_roots(live):
    visible = m.visible_mounts(live)
    assert f"{B}/with space" in visible and visible[f"{B}/with space"].fstype == "tmpfs"
    # two tmpfs stacked on one path: the later one (mounted on top of the first) is the one seen
    assert [x.mount_id for x in live if x.path == f"{B}/stack"] == [116, 117]
    assert visible[f"{B}/stack"].mount_id == 117 and "size=2048k" in visible[f"{B}/stack"].super_options
    assert m.mount_counts(live)[f"{B}/stack"] == 2
    assert visible[f"{B}/bound"].root == f"{B}/src" and visible[f"{B}/bound"].source == "/dev/vda"
    assert visible[f"{B}/bind-of-tmpfs"].root == "/dir" and visible[f"{B}/bind-of-tmpfs"].source == "other"


def test_mountinfo_garbage_names_the_line():
    text = data("mountinfo-namespace.txt").splitlines()[0] + "\nno separator here\n"
    with pytest.raises(m.MountinfoError, match=r"line 2 .*no separator here"):
        m.parse_mountinfo(text)


def test_escape_round_trip():
    assert m.unescape("/srv/with\\040space\\011tab\\134x") == "/srv/with space\ttab\\x"
    assert m.unescape("a\\046b") == "a&b"  # ansible.posix.mount writes '&' escaped
    assert m.unescape("\\12 stays") == "\\12 stays"  # not three octal digits: literal
    for text in ("/a b", "x\ty\nz", "back\\slash", "plain"):
        assert m.unescape(m.escape(text)) == text
    assert m.escape("/srv/a b") == "/srv/a\\040b"


# --- fstab ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["fstab-ansible-posix-mount", "fstab-ubuntu-forum-raid"])
def test_fstab_parse_matches_libmount_and_renders_byte_for_byte(name):
    text = data(f"{name}.txt")
    lines = m.parse_fstab(text)
    assert m.render_fstab(lines) == text
    assert m.render_fstab(m.parse_fstab(text.rstrip("\n"))) == text.rstrip("\n")  # no final newline
    ref = json.loads(data(f"{name}.findmnt.json"))["filesystems"]
    entries = [line.entry for line in lines if line.entry]
    assert [(e.src, e.path, e.fstype, e.opts, int(e.dump), int(e.passno)) for e in entries] == [
        (f["source"], f["target"], f["fstype"], f["options"], f["freq"], f["passno"]) for f in ref
    ]


def test_fstab_written_by_ansible_posix_mount_is_already_right():
    """A role that switches from ansible.posix.mount to this module does not rewrite its entries."""
    specs = [
        spec("/srv/gpulab/home/alice", "storage.lab:/tank/fleet/home/alice", opts="rw,hard,noatime,_netdev"),
        spec("/srv/datasets", "/data/datasets", fstype="none", opts="bind,ro", dump=1, passno=2),
    ]
    got = plan(specs, data("fstab-ansible-posix-mount.txt"))
    assert [p.fstab for p in got.items] == ["unchanged", "unchanged"]
    assert not got.fstab_changed
    assert [p.live for p in got.items] == ["mount", "mount"]  # not mounted in this (empty) table


def test_fstab_add_update_remove_keep_every_other_line():
    text = data("fstab-ubuntu-forum-raid.txt")
    old = text.split("\n")
    got = plan(
        [
            spec("/srv/gpulab/home/alice", "storage.lab:/tank/fleet/home/alice", opts="rw,hard"),
            spec("/media/SRAID1", "/dev/md0", fstype="ext4", opts="defaults,nofail", passno=2),
            spec("/proc", state="absent"),
        ],
        text,
    )
    assert [p.fstab for p in got.items] == ["add", "update", "remove"]
    # /proc's entry is gone, md0's is rewritten in place (single spaces), the home is appended; every
    # other line (comments, the blank lines, the installer's alignment) is the same string
    proc = next(line for line in old if line.startswith("proc "))
    md0 = next(line for line in old if line.startswith("/dev/md0"))
    expected = (
        text.replace(proc + "\n", "").replace(md0, "/dev/md0 /media/SRAID1 ext4 defaults,nofail 0 2")
        + "storage.lab:/tank/fleet/home/alice /srv/gpulab/home/alice nfs rw,hard 0 0\n"
    )
    assert got.fstab_after == expected
    # the result reads back as wanted, and a second plan on it changes nothing in fstab
    again = plan([p.spec for p in got.items], got.fstab_after)
    assert not again.fstab_changed and {p.fstab for p in again.items} == {"unchanged"}


def test_fstab_keeps_other_lines_exactly():
    """Exact check: only the managed lines differ (removed / replaced / appended)."""
    text = data("fstab-ubuntu-forum-raid.txt")
    got = plan([spec("/media/SRAID1", "/dev/md0", fstype="ext4", opts="defaults", passno=2)], text)
    before, after = text.split("\n"), got.fstab_after.split("\n")
    assert len(before) == len(after)
    changed = [(a, b) for a, b in zip(before, after, strict=True) if a != b]
    assert changed == [
        ("/dev/md0\t/media/SRAID1\text4\tdefaults,nobootwait\t0\t2", "/dev/md0 /media/SRAID1 ext4 defaults 0 2")
    ]


def test_fstab_append_after_a_last_line_without_newline():
    text = data("fstab-ansible-posix-mount.txt").rstrip("\n")
    got = plan([spec("/srv/new", "tmpfs", fstype="tmpfs")], text)
    assert got.fstab_after == text + "\ntmpfs /srv/new tmpfs defaults 0 0\n"


def test_fstab_duplicates_collapse_to_the_first_and_trailing_comment_is_kept():
    lines = data("fstab-ansible-posix-mount.txt").split("\n")
    home = lines[1]  # storage.lab:/tank/fleet/home/alice /srv/gpulab/home/alice nfs ... 0 0
    text = "\n".join([lines[0], home + "  # alice, see ticket 12", lines[2], home, lines[3], ""])
    want = spec("/srv/gpulab/home/alice", "storage.lab:/tank/fleet/home/alice", opts="rw,hard,noatime,_netdev")
    got = plan([want], text)
    assert got.items[0].fstab == "update"
    assert got.fstab_after == "\n".join([lines[0], home + "  # alice, see ticket 12", lines[2], lines[3], ""])
    moved = plan([m.MountSpec(**{**want.__dict__, "opts": "ro"})], text)
    assert moved.fstab_after.split("\n")[1] == (
        "storage.lab:/tank/fleet/home/alice /srv/gpulab/home/alice nfs ro 0 0 # alice, see ticket 12"
    )


def test_fstab_entry_with_space_is_matched_unescaped_and_removed():
    text = data("fstab-ansible-posix-mount.txt")
    got = plan([spec("/srv/with space", state="absent")], text)
    assert got.items[0].fstab == "remove"
    assert "with\\040space" in text and "with\\040space" not in got.fstab_after
    assert got.fstab_after.count("\n") == text.count("\n") - 1


# --- live ----------------------------------------------------------------------------------------


def test_live_unchanged_mount_remount_and_absent(live):
    specs = [
        spec(f"{B}/home/alice", "tmpfs", fstype="tmpfs"),  # right
        spec(f"{B}/with space", "tmpfs", fstype="nfs"),  # wrong type
        spec(f"{B}/tmpsrc", "tmpfs", fstype="tmpfs"),  # wrong source ('other')
        spec(f"{B}/nothing-here", "tmpfs", fstype="tmpfs"),  # not mounted
        spec(f"{B}/stack", state="absent"),  # two stacked mounts
        spec(f"{B}/never", state="absent"),  # nothing to do
    ]
    got = plan(specs, "", live)
    assert [p.live for p in got.items] == ["unchanged", "remount", "remount", "mount", "unmount", "unchanged"]
    assert "tmpfs, not nfs" in got.items[1].reason
    assert "other is mounted, not tmpfs" in got.items[2].reason
    assert got.items[4].unmounts == 2 and got.items[1].unmounts == 1
    assert [p.fstab for p in got.items] == ["add", "add", "add", "add", "unchanged", "unchanged"]
    assert not got.items[5].changed and got.items[5].before == {} == got.items[5].after


def test_bind_mounts_compare_filesystem_and_directory(live):
    cases = {
        (f"{B}/bound", f"{B}/src"): "unchanged",
        (f"{B}/bound", f"{B}/src/sub"): "remount",
        (f"{B}/sub-bound", f"{B}/src/sub"): "unchanged",
        (f"{B}/self", f"{B}/self"): "unchanged",  # a directory bound onto itself
        (f"{B}/bind-of-tmpfs", f"{B}/tmpsrc/dir"): "unchanged",  # source inside a tmpfs
        (f"{B}/bind-of-tmpfs", f"{B}/src"): "remount",
        (f"{B}/home/alice", f"{B}/src"): "remount",  # a tmpfs where a bind is wanted
    }
    for (path, src), want in cases.items():
        got = plan([spec(path, src, fstype="none", opts="bind")], "", live).items[0]
        assert got.live == want, (path, src, got.reason)
    wrong = plan([spec(f"{B}/bound", f"{B}/src/sub", fstype="none", opts="rbind,ro")], "", live).items[0]
    assert wrong.reason == f"/dev/vda[{B}/src] is mounted, not a bind of {B}/src/sub"


def test_nfs_matches_nfs4_and_a_trailing_slash():
    # Constructed line (this kernel has no NFS client; the VM test mounts real NFS): the layout of the
    # recorded lines with the type and source an NFSv4 mount shows.
    line = "130 89 0:60 / /srv/gpulab/home/alice rw,noatime - nfs4 storage.lab:/tank/fleet/home/alice rw,vers=4.2"
    table = m.parse_mountinfo(line)
    for src in ("storage.lab:/tank/fleet/home/alice", "storage.lab:/tank/fleet/home/alice/"):
        assert plan([spec("/srv/gpulab/home/alice", src)], "", table).items[0].live == "unchanged"
    other = plan([spec("/srv/gpulab/home/alice", "storage.lab:/tank/fleet/home/bob")], "", table).items[0]
    assert other.live == "remount"


def test_changed_options_update_fstab_and_are_pending_not_remounted(live):
    path = f"{B}/home/alice"
    fstab = f"tmpfs {path} tmpfs size=1m,mode=0755 0 0\n"
    got = plan([spec(path, "tmpfs", fstype="tmpfs", opts="size=2m")], fstab, live)
    item = got.items[0]
    assert (item.fstab, item.live, item.pending_remount) == ("update", "unchanged", True)
    assert got.pending_remount == [path] and got.fstab_after == f"tmpfs {path} tmpfs size=2m 0 0\n"
    assert item.before["fstab"]["opts"] == "size=1m,mode=0755" and item.after["fstab"]["opts"] == "size=2m"
    assert item.before["mounted"] == item.after["mounted"] == {"src": "tmpfs", "fstype": "tmpfs"}
    # dump/passno only: fstab changes, nothing pending
    numbers = plan([spec(path, "tmpfs", fstype="tmpfs", opts="size=1m,mode=0755", passno=2)], fstab, live)
    assert numbers.items[0].fstab == "update" and numbers.pending_remount == []


def test_diff_shows_fstab_and_mount_before_and_after(live):
    got = plan([spec(f"{B}/tmpsrc", "tmpfs", fstype="tmpfs"), spec(f"{B}/bound", state="absent")], "", live)
    remount, gone = got.items
    assert remount.before == {"fstab": None, "mounted": {"src": "other", "fstype": "tmpfs"}}
    assert remount.after == {
        "fstab": {"src": "tmpfs", "fstype": "tmpfs", "opts": "defaults", "dump": 0, "passno": 0},
        "mounted": {"src": "tmpfs", "fstype": "tmpfs"},
    }
    assert gone.before["mounted"] == {"src": f"/dev/vda[{B}/src]", "fstype": "ext4"}
    assert gone.after == {"fstab": None, "mounted": None}


def test_apply_order_unmounts_deepest_first_then_mounts_shallowest_first():
    items = [
        m.MountPlan(spec("/a", "x"), live="mount"),
        m.MountPlan(spec("/a/b/c", "x"), live="mount"),
        m.MountPlan(spec("/a/b", "x"), live="remount"),
        m.MountPlan(spec("/z/y", state="absent"), live="unmount"),
        m.MountPlan(spec("/z", state="absent"), live="unmount"),
        m.MountPlan(spec("/q", "x")),
    ]
    steps = [(step, p.spec.path) for step, p in m.apply_order(items)]
    assert steps == [
        ("unmount", "/a/b"), ("unmount", "/z/y"), ("unmount", "/z"),
        ("mount", "/a"), ("mount", "/a/b"), ("mount", "/a/b/c"),
    ]  # fmt: skip
    assert m.mount_argv(spec("/srv/x", "h:/e", opts="vers=4.2,hard"), "/usr/bin/mount") == [
        "/usr/bin/mount", "-t", "nfs", "-o", "vers=4.2,hard", "h:/e", "/srv/x"
    ]  # fmt: skip


# --- input ---------------------------------------------------------------------------------------


def test_valid_input_has_no_problems_and_defaults():
    items = [
        {"path": "/srv/gpulab/home/alice", "src": "storage:/tank/fleet/home/alice"},
        {"path": "/srv/gpulab/home/bob", "state": "absent"},
        {"path": "/srv/x", "src": "tmpfs", "fstype": "tmpfs", "opts": "size=1m", "dump": 0, "passno": 0},
    ]
    assert m.spec_problems(items) == []
    alice, bob, _x = m.build_specs(items)
    assert (alice.fstype, alice.opts, alice.dump, alice.passno, alice.state) == ("nfs", "defaults", 0, 0, "mounted")
    assert bob.state == "absent" and bob.src is None


@pytest.mark.parametrize(
    ("item", "needle"),
    [
        ({"path": "srv/home", "src": "s:/e"}, "mounts[0] ('srv/home'): path: 'srv/home' is not absolute"),
        ({"path": "/srv/a b", "src": "s:/e"}, "mounts[0] ('/srv/a b'): path: '/srv/a b' contains whitespace"),
        ({"path": "/srv/a\nb", "src": "s:/e"}, "path: '/srv/a\\nb' contains whitespace"),
        ({"path": "/srv/home/", "src": "s:/e"}, "path: '/srv/home/' must be a normalized absolute path"),
        ({"path": "/srv/../etc", "src": "s:/e"}, "path: '/srv/../etc' must be a normalized"),
        ({"path": "/", "src": "s:/e"}, "mounts[0] ('/'): path: '/' must be a normalized absolute path other than '/'"),
        ({"path": "/srv/h"}, "mounts[0] ('/srv/h'): src: missing; required with state mounted"),
        ({"path": "/srv/h", "src": "s:/a b"}, "mounts[0] ('/srv/h'): src: 's:/a b' contains whitespace"),
        ({"path": "/srv/h", "src": "#s"}, "src: '#s' starts with '#'"),
        ({"path": "/srv/h", "src": "s:/e", "opts": "rw, hard"}, "opts: 'rw, hard' contains whitespace"),
        ({"path": "/srv/h", "src": "s:/e", "opts": "rw,,hard"}, "opts: 'rw,,hard' has an empty option"),
        ({"path": "/srv/h", "src": "s:/e", "fstype": "nfs\t"}, "fstype: 'nfs\\t' contains whitespace"),
        ({"path": "/srv/h", "src": "s:/e", "fstype": "a/b"}, "fstype: 'a/b' may only contain"),
        ({"path": "/srv/h", "src": "s:/e", "state": "present"}, "state: 'present' is not one of mounted, absent"),
        ({"path": "/srv/h", "src": "s:/e", "dump": -1}, "dump: -1 is not a number >= 0"),
        ({"path": "/srv/h", "src": "s:/e", "passno": True}, "passno: True is not a number >= 0"),
    ],
)
def test_bad_input_names_item_field_and_value(item, needle):
    problems = m.spec_problems([item])
    assert any(needle in p for p in problems), problems


def test_duplicate_paths_name_both_items():
    items = [
        {"path": "/srv/h", "src": "a:/x"},
        {"path": "/srv/g", "src": "a:/y"},
        {"path": "/srv/h", "state": "absent"},
    ]
    assert m.spec_problems(items) == ["mounts[2] ('/srv/h'): path: '/srv/h' is listed twice (also mounts[0])"]


@pytest.mark.parametrize(
    ("src", "fstype", "server"),
    [
        ("store:/tank/fleet/home/alice", "nfs", "store"),
        ("192.168.77.10:/tank/fleet/home/carol", "nfs4", "192.168.77.10"),
        ("[fd00::5]:/tank/fleet/shared/datasets", "nfs", "fd00::5"),
        ("[fd00::5/tank", "nfs", None),
        (":/tank", "nfs", None),
        ("/dev/sdb1", "ext4", None),
        ("/srv/data", "none", None),
        (None, "nfs", None),
    ],
)
def test_nfs_server_is_the_host_part_of_an_nfs_source(src, fstype, server):
    assert m.nfs_server(spec("/srv/x", src, fstype=fstype)) == server
