# Copyright: (c) 2026, GPU Lab Fleet maintainers
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Mounts for the mounts module: parsers of /proc/self/mountinfo and fstab, input validation, and a
pure planner (desired mounts vs fstab text and live mounts) that the module applies.

Everything here is importable without Ansible and touches no file: the module reads fstab and
mountinfo once, passes their text in, and gets back the new fstab text plus, per mount point, what
to do live (mount, unmount, or remount = unmount + mount). Field escapes follow util-linux: space,
tab, newline and backslash are written as \\040, \\011, \\012, \\134, and any backslash followed by
three octal digits is read back as that character (ansible.posix.mount also writes '&' as \\046).
"""

from __future__ import annotations

import posixpath
import re
from dataclasses import dataclass, field

STATES = ("mounted", "absent")
# Filesystem types the kernel reports under another name: `mount -t nfs -o vers=4.2` shows as nfs4.
FSTYPE_ALIASES = {"nfs4": "nfs"}
BIND_OPTIONS = frozenset({"bind", "rbind"})
_FSTYPE_RE = re.compile(r"^[A-Za-z0-9_.+-]+$")
_OCTAL_RE = re.compile(r"\\([0-7]{3})")
_ESCAPES = {" ": "\\040", "\t": "\\011", "\n": "\\012", "\\": "\\134"}


class MountinfoError(ValueError):
    """A mountinfo line does not have the kernel's layout."""


def unescape(text: str) -> str:
    """'/srv/a\\040b' -> '/srv/a b' (mountinfo and fstab fields)."""
    return _OCTAL_RE.sub(lambda m: chr(int(m.group(1), 8)), text)


def escape(text: str) -> str:
    """'/srv/a b' -> '/srv/a\\040b': a field as fstab stores it."""
    return "".join(_ESCAPES.get(char, char) for char in text)


# ---------------------------------------------------------------------------------------------
# /proc/self/mountinfo


@dataclass(frozen=True)
class LiveMount:
    """One line of /proc/PID/mountinfo (proc(5)), fields unescaped."""

    mount_id: int
    parent_id: int
    device: str  # major:minor of the filesystem
    root: str  # the directory of that filesystem mounted here ('/', or the source dir of a bind mount)
    path: str
    options: str  # per-mount options (rw, nosuid, relatime, ...)
    fstype: str
    source: str
    super_options: str

    def describe(self) -> dict[str, str]:
        """What is mounted, the way findmnt prints it: a bind mount as 'SOURCE[ROOT]'."""
        src = self.source if self.root == "/" else f"{self.source}[{self.root}]"
        return {"src": src, "fstype": self.fstype}


def parse_mountinfo(text: str) -> list[LiveMount]:
    """Every mount, in the kernel's order (a mount stacked on a path comes after the one it covers).

    Layout: ID PARENT MAJ:MIN ROOT MOUNTPOINT OPTIONS [OPTIONAL FIELDS...] - FSTYPE SOURCE SUPEROPTIONS
    """
    mounts = []
    for number, line in enumerate(text.split("\n"), start=1):
        if not line.strip():
            continue
        fields = line.split(" ")
        try:
            sep = fields.index("-", 6)
            mount_id, parent_id, device, root, path, options = fields[:6]
            fstype, source, *rest = fields[sep + 1 :]
            mounts.append(
                LiveMount(
                    mount_id=int(mount_id),
                    parent_id=int(parent_id),
                    device=device,
                    root=unescape(root),
                    path=unescape(path),
                    options=options,
                    fstype=unescape(fstype),
                    source=unescape(source),
                    super_options=" ".join(rest),
                )
            )
        except ValueError:
            raise MountinfoError(
                f"mountinfo line {number} is not 'ID PARENT DEV ROOT PATH OPTS ... - TYPE SOURCE OPTS': {line!r}"
            ) from None
    return mounts


def visible_mounts(mounts: list[LiveMount]) -> dict[str, LiveMount]:
    """{path: the mount one sees there}: of several mounts stacked on one path, the last one."""
    return {m.path: m for m in mounts}


def mount_counts(mounts: list[LiveMount]) -> dict[str, int]:
    """{path: how many mounts are stacked there} (how many umounts leave it unmounted)."""
    counts: dict[str, int] = {}
    for m in mounts:
        counts[m.path] = counts.get(m.path, 0) + 1
    return counts


def is_within(path: str, ancestor: str) -> bool:
    return path == ancestor or ancestor == "/" or path.startswith(ancestor.rstrip("/") + "/")


def backing_mount(visible: dict[str, LiveMount], path: str, exclude: str | None = None) -> LiveMount | None:
    """The mount whose filesystem holds `path` (longest mount point above it), ignoring mounts at or
    below `exclude` (the mount point being checked: a directory bound onto itself is backed by the
    filesystem under the bind, not by the bind)."""
    best = None
    for point, m in visible.items():
        if exclude is not None and is_within(point, exclude):
            continue
        if is_within(path, point) and (best is None or len(point) > len(best.path)):
            best = m
    return best


# ---------------------------------------------------------------------------------------------
# fstab


@dataclass(frozen=True)
class FstabEntry:
    """The six fields of an fstab entry, unescaped; dump and passno as written ('0' when missing)."""

    src: str
    path: str
    fstype: str
    opts: str
    dump: str = "0"
    passno: str = "0"

    def render(self) -> str:
        return " ".join(
            [escape(self.src), escape(self.path), escape(self.fstype), escape(self.opts), self.dump, self.passno]
        )

    def show(self) -> dict[str, str | int]:
        return {
            "src": self.src,
            "fstype": self.fstype,
            "opts": self.opts,
            "dump": _number(self.dump),
            "passno": _number(self.passno),
        }

    def same(self, other: FstabEntry) -> bool:
        return self.show() == other.show()


@dataclass(eq=False)  # lines are compared by identity: two equal lines are still two lines
class FstabLine:
    """One line as read (text without its newline, and the newline: '\\n', or '' for a last line
    without one); `entry` is set for an entry line (two fields or more), else the line is kept as is."""

    text: str
    newline: str = "\n"
    entry: FstabEntry | None = None
    comment: str = ""  # '# ...' after the fields of an entry line


def parse_fstab(text: str) -> list[FstabLine]:
    """Lines of an fstab; "".join(line.text + line.newline) gives `text` back byte for byte."""
    lines = []
    parts = text.split("\n")
    for index, raw in enumerate(parts):
        last = index == len(parts) - 1
        if last and raw == "":
            break
        line = FstabLine(raw, "" if last else "\n")
        body = raw.strip()
        if body and not body.startswith("#"):
            tokens, comment = [], ""
            for match in re.finditer(r"\S+", body):
                if match.group().startswith("#"):
                    comment = body[match.start() :]  # the rest of the line, its own spacing kept
                    break
                tokens.append(match.group())
            if len(tokens) >= 2:
                values = [unescape(t) for t in tokens[:4]] + tokens[4:6]
                src, path = values[0], values[1]
                line.entry = FstabEntry(
                    src=src,
                    path=path,
                    fstype=values[2] if len(values) > 2 else "",
                    opts=values[3] if len(values) > 3 else "defaults",
                    dump=values[4] if len(values) > 4 else "0",
                    passno=values[5] if len(values) > 5 else "0",
                )
                line.comment = comment
        lines.append(line)
    return lines


def render_fstab(lines: list[FstabLine]) -> str:
    return "".join(line.text + line.newline for line in lines)


def _number(value: str) -> str | int:
    return int(value) if value.isdigit() else value


# ---------------------------------------------------------------------------------------------
# Input


@dataclass(frozen=True)
class MountSpec:
    path: str
    src: str | None = None
    fstype: str = "nfs"
    opts: str = "defaults"
    dump: int = 0
    passno: int = 0
    state: str = "mounted"
    # The source as the kernel shows it, when the module knows better than `src`: a bind source or a
    # /dev/disk/by-* link resolved to the real path. None = compare with `src`.
    live_src: str | None = None

    @property
    def bind(self) -> bool:
        return bool(BIND_OPTIONS & set(self.opts.split(",")))

    def entry(self) -> FstabEntry:
        return FstabEntry(self.src or "", self.path, self.fstype, self.opts, str(self.dump), str(self.passno))


def _text_problem(value: object) -> str | None:
    if not isinstance(value, str) or not value:
        return f"{value!r} must be a non-empty string"
    if any(char.isspace() or ord(char) < 32 or ord(char) == 127 for char in value):
        return f"{value!r} contains whitespace or a control character (fstab separates fields with them)"
    return None


def spec_problems(items: list[dict]) -> list[str]:
    """Every problem with the module input, each naming the item, field and value; empty when all is well."""
    problems = []
    seen: dict[str, int] = {}
    for index, item in enumerate(items):
        path = item.get("path")
        label = f"mounts[{index}] ({path!r})"
        problem = _text_problem(path)
        if problem:
            problems.append(f"{label}: path: {problem}")
        elif not path.startswith("/"):
            problems.append(f"{label}: path: {path!r} is not absolute")
        elif path == "/" or posixpath.normpath(path) != path or path.startswith("//"):
            problems.append(f"{label}: path: {path!r} must be a normalized absolute path other than '/' "
                            f"(no trailing '/', '//', '.' or '..'; {posixpath.normpath(path)!r}?)")  # fmt: skip
        elif path in seen:
            problems.append(f"{label}: path: {path!r} is listed twice (also mounts[{seen[path]}])")
        else:
            seen[path] = index
        state = item.get("state") if item.get("state") is not None else "mounted"
        if state not in STATES:
            problems.append(f"{label}: state: {state!r} is not one of {', '.join(STATES)}")
        src = item.get("src")
        if src is None or src == "":
            if state == "mounted":
                problems.append(f"{label}: src: missing; required with state mounted")
        else:
            problem = _text_problem(src)
            if problem:
                problems.append(f"{label}: src: {problem}")
            elif src.startswith("#"):
                problems.append(f"{label}: src: {src!r} starts with '#' (an fstab comment)")
        for key, default in (("fstype", "nfs"), ("opts", "defaults")):
            value = item.get(key) if item.get(key) is not None else default
            problem = _text_problem(value)
            if problem:
                problems.append(f"{label}: {key}: {problem}")
            elif key == "fstype" and not _FSTYPE_RE.match(value):
                problems.append(f"{label}: fstype: {value!r} may only contain letters, digits, '_', '.', '+', '-'")
            elif key == "opts" and "" in value.split(","):
                problems.append(f"{label}: opts: {value!r} has an empty option (',,' or a leading/trailing ',')")
        for key in ("dump", "passno"):
            value = item.get(key) if item.get(key) is not None else 0
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                problems.append(f"{label}: {key}: {value!r} is not a number >= 0")
    return problems


def build_specs(items: list[dict]) -> list[MountSpec]:
    """Validated input -> specs (call spec_problems first)."""
    specs = []
    for item in items:
        values = {k: item[k] for k in ("src", "fstype", "opts", "dump", "passno", "state") if item.get(k) is not None}
        specs.append(MountSpec(path=item["path"], **values))
    return specs


# ---------------------------------------------------------------------------------------------
# Plan


@dataclass
class MountPlan:
    spec: MountSpec
    fstab: str = "unchanged"  # add, update, remove, unchanged
    live: str = "unchanged"  # mount, unmount, remount, unchanged
    unmounts: int = 0  # umount calls to run (the mounts stacked on the path)
    pending_remount: bool = False  # fstab options changed; the live mount keeps the old ones
    reason: str = ""  # why a remount
    error: str | None = None
    before: dict = field(default_factory=dict)
    after: dict = field(default_factory=dict)

    @property
    def changed(self) -> bool:
        return self.fstab != "unchanged" or self.live != "unchanged"


@dataclass
class Plan:
    items: list[MountPlan]
    fstab_before: str
    fstab_after: str

    @property
    def fstab_changed(self) -> bool:
        return self.fstab_before != self.fstab_after

    @property
    def changed(self) -> bool:
        return self.fstab_changed or any(p.live != "unchanged" for p in self.items)

    @property
    def pending_remount(self) -> list[str]:
        return [p.spec.path for p in self.items if p.pending_remount]


def canonical_fstype(fstype: str) -> str:
    return FSTYPE_ALIASES.get(fstype, fstype)


def canonical_source(src: str) -> str:
    """'server:/export/' and 'server:/export' are one NFS export; '/dev/x/' is '/dev/x'."""
    if len(src) > 1 and src.endswith("/") and not src.endswith(":/"):
        return src.rstrip("/") or "/"
    return src


def live_mismatch(spec: MountSpec, live: LiveMount, visible: dict[str, LiveMount]) -> str | None:
    """Why the mount seen at spec.path is not the one wanted (None when it is).

    A bind mount is compared by filesystem and directory: the mount at the path must show the
    device and root of the directory `src` lives in. Otherwise the source must be equal (trailing '/'
    aside) and the type too (nfs = nfs4; a wanted type 'auto' matches any).
    """
    if spec.bind:
        src = spec.live_src or spec.src or ""
        backing = backing_mount(visible, src, exclude=spec.path)
        if backing is None:
            return f"cannot tell which filesystem holds the bind source {src}"
        rel = posixpath.relpath(src, backing.path)
        want_root = posixpath.normpath(posixpath.join(backing.root, rel)) if rel != "." else backing.root
        if live.device != backing.device or live.root != want_root:
            return f"{live.describe()['src']} is mounted, not a bind of {src}"
        return None
    src = spec.live_src or spec.src or ""
    if canonical_source(live.source) != canonical_source(src):
        return f"{live.source} is mounted, not {src}"
    if spec.fstype != "auto" and canonical_fstype(live.fstype) != canonical_fstype(spec.fstype):
        return f"the mounted filesystem is {live.fstype}, not {spec.fstype}"
    return None


def plan_mounts(specs: list[MountSpec], fstab_text: str, mounts: list[LiveMount]) -> Plan:
    """Compare the desired mounts with the fstab text and the live mounts; say what to do.

    fstab: an entry is matched by its mount point (field 2, unescaped). The first match is updated
    in place (its trailing comment kept) and further matches are removed, so the path has exactly
    one entry; every other line, comment and blank line is kept byte for byte. New entries are
    appended. Live: a missing mount is mounted; one with another source or type is remounted
    (unmount, then mount); a changed option only updates fstab and is reported as pending_remount,
    because NFS cannot change most options of a live mount. State absent unmounts every mount
    stacked on the path and removes its fstab entries.
    """
    lines = parse_fstab(fstab_text)
    visible = visible_mounts(mounts)
    counts = mount_counts(mounts)
    plans = []
    for spec in specs:
        plan = MountPlan(spec)
        matches = [line for line in lines if line.entry is not None and line.entry.path == spec.path]
        live = visible.get(spec.path)
        old_entry = matches[0].entry if matches else None
        plan.before = {"fstab": old_entry.show() if old_entry else None, "mounted": live.describe() if live else None}
        if spec.state == "absent":
            if matches:
                plan.fstab = "remove"
                lines = [line for line in lines if all(line is not m for m in matches)]
            if live is not None:
                plan.live, plan.unmounts = "unmount", counts[spec.path]
            plan.after = {"fstab": None, "mounted": None}
        else:
            want = spec.entry()
            if not matches:
                plan.fstab = "add"
                if lines and lines[-1].newline == "":
                    lines[-1].newline = "\n"
                lines.append(FstabLine(want.render(), "\n", want))
            else:
                first = matches[0]
                if not first.entry.same(want) or len(matches) > 1:
                    plan.fstab = "update"
                if not first.entry.same(want):
                    first.text = want.render() + (f" {first.comment}" if first.comment else "")
                    first.entry = want
                lines = [line for line in lines if line is first or all(line is not m for m in matches)]
            if live is None:
                plan.live = "mount"
            else:
                plan.reason = live_mismatch(spec, live, visible) or ""
                if plan.reason:
                    plan.live, plan.unmounts = "remount", counts[spec.path]
                elif old_entry is not None and old_entry.opts != spec.opts:
                    plan.pending_remount = True
            plan.after = {
                "fstab": want.show(),
                "mounted": live.describe() if plan.live == "unchanged" and live else _show_wanted(spec),
            }
        if not plan.changed:
            plan.before, plan.after = {}, {}
        plans.append(plan)
    return Plan(plans, fstab_text, render_fstab(lines))


def _show_wanted(spec: MountSpec) -> dict[str, str]:
    return {"src": spec.src or "", "fstype": spec.fstype}


def apply_order(plans: list[MountPlan]) -> list[tuple[str, MountPlan]]:
    """The live steps: every unmount first (deepest path first, so a mount inside another goes
    before it), then every mount (shallowest first, so a mount point inside another mount is
    made on the right filesystem). A remount is an unmount step and a mount step."""
    down = [p for p in plans if p.live in ("unmount", "remount")]
    up = [p for p in plans if p.live in ("mount", "remount")]
    steps = [("unmount", p) for p in sorted(down, key=lambda p: -p.spec.path.count("/"))]
    steps += [("mount", p) for p in sorted(up, key=lambda p: p.spec.path.count("/"))]
    return steps


NFS_PORT = 2049  # NFSv4: one TCP port, no portmapper


def nfs_server(spec: MountSpec) -> str | None:
    """The server of an NFS mount ('host:/export', '[v6addr]:/export'), None for anything else."""
    if not spec.fstype.startswith("nfs") or not spec.src or ":" not in spec.src:
        return None
    if spec.src.startswith("["):
        host, sep, _export = spec.src[1:].partition("]:")
        return host if sep else None
    return spec.src.split(":", 1)[0] or None


def mount_argv(spec: MountSpec, mount: str = "mount") -> list[str]:
    return [mount, "-t", spec.fstype, "-o", spec.opts, spec.src or "", spec.path]
