# Copyright: (c) 2026, GPU Lab Fleet maintainers
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""OpenZFS for the zfs_* modules: a thin CLI client, parsers of real `zfs`/`zpool` output, and
pure planners (desired vs current) that the modules apply.

Everything here is importable without Ansible. The client takes a `run(argv) -> (rc, out, err)`
callable (AnsibleModule.run_command in the modules). Machine-readable forms only (`-H -p`), so
sizes come back as exact byte counts and are compared as integers after parsing human units with
units.parse_size: "10G" in the inventory equals 10737418240 read back, and a second run is a no-op.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass, field

from ansible_collections.gpulab.fleet.plugins.module_utils.units import SizeError, parse_size

# ---------------------------------------------------------------------------------------------
# Properties

# Native dataset properties of OpenZFS 2.1 that can be set (`zfs set` or at creation).
SETTABLE_PROPERTIES = frozenset(
    """aclinherit aclmode acltype atime canmount checksum compression context copies dedup defcontext
    devices dnodesize exec filesystem_limit fscontext keylocation logbias mlslabel mountpoint nbmand
    overlay primarycache quota readonly recordsize redundant_metadata refquota refreservation relatime
    reservation rootcontext secondarycache setuid sharenfs sharesmb snapdev snapdir snapshot_limit
    special_small_blocks sync version volmode volsize vscan xattr zoned""".split()
)
# Only at creation: a later difference cannot be applied and is reported as an error.
CREATE_ONLY_PROPERTIES = frozenset(
    "casesensitivity encryption keyformat normalization pbkdf2iters utf8only volblocksize".split()
)
# Read-only statistics: asking to set one is a input error.
READONLY_PROPERTIES = frozenset(
    """available compressratio createtxg creation clones defer_destroy encryptionroot filesystem_count
    guid keystatus logicalreferenced logicalused mounted objsetid origin receive_resume_token redact_snaps
    refcompressratio
    referenced snapshot_count snapshots_changed type used usedbychildren usedbydataset usedbyrefreservation
    usedbysnapshots userrefs written""".split()
)
# Properties holding a size in bytes; "none" means 0 for the quota/reservation family.
SIZE_PROPERTIES = frozenset(
    "quota refquota reservation refreservation recordsize volsize volblocksize special_small_blocks".split()
)
NONE_IS_ZERO = frozenset("quota refquota reservation refreservation special_small_blocks".split())
# Free-form values compared exactly (case matters); every other native value is lower-cased.
CASE_SENSITIVE = frozenset("mountpoint sharenfs sharesmb keylocation context fscontext defcontext rootcontext".split())
USER_PROPERTY_RE = re.compile(r"^[a-z0-9_.+-]+:[a-z0-9_.:+-]+$")

# A dataset name component: what `zfs create` accepts, minus spaces (they break every exports file
# and shell script downstream) and minus a leading '.'/'_'/'-'/':' (reserved here: '_archive').
COMPONENT_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:-]*$")
MAX_NAME = 255
ARCHIVE = "_archive"
ARCHIVED_FROM = "gpulab.fleet:archived-from"
ARCHIVED_AT = "gpulab.fleet:archived-at"


class ZfsError(Exception):
    """A zfs/zpool command failed; str() is the command's own message (stderr) plus the command."""

    def __init__(self, argv: list[str], rc: int, stderr: str):
        # zfs appends its whole usage text to some errors ("bad property list: ..."); keep the reason.
        self.argv, self.rc, self.stderr = list(argv), rc, stderr.split("\nusage:", 1)[0].strip()
        super().__init__(f"{self.stderr or 'failed'} (rc={rc}: {' '.join(argv)})")

    @property
    def not_found(self) -> bool:
        return "does not exist" in self.stderr or "no such pool" in self.stderr


def normalize_property(prop: str, value: object) -> str | int | None:
    """The comparable form of a desired property value, or raise ValueError naming the problem.

    None means "inherit" (zfs inherit). Sizes become ints; booleans on/off; native values lower case.
    """
    if value is None:
        return None
    if ":" in prop:
        if isinstance(value, bool):
            return "on" if value else "off"
        return str(value)
    if prop in SIZE_PROPERTIES:
        if isinstance(value, str) and value.strip().lower() == "none":
            if prop in NONE_IS_ZERO:
                return 0
            raise ValueError(f"{prop} cannot be 'none'")
        try:
            return parse_size(value)
        except SizeError as exc:
            raise ValueError(str(exc)) from None
    if isinstance(value, bool):
        return "on" if value else "off"
    text = str(value).strip()
    if prop == "mountpoint" and text.startswith("/") and len(text) > 1:
        text = text.rstrip("/")
    return text if prop in CASE_SENSITIVE else text.lower()


def normalize_current(prop: str, value: str) -> str | int | None:
    """The comparable form of a value read with `zfs get -H -p` ('-' = unset user property)."""
    if prop in SIZE_PROPERTIES:
        if value in ("-", "none"):
            return 0
        try:
            return int(value)
        except ValueError:
            return value
    if ":" in prop and value == "-":
        return None
    return value


def property_problem(prop: object) -> str | None:
    """Why `prop` cannot be managed, or None."""
    if not isinstance(prop, str) or not prop:
        return f"property name {prop!r} is not a string"
    if ":" in prop:
        if not USER_PROPERTY_RE.match(prop):
            return f"user property {prop!r} must look like 'module:property' in lower case"
        return None
    if prop in READONLY_PROPERTIES:
        return f"property {prop!r} is read-only"
    if prop not in SETTABLE_PROPERTIES and prop not in CREATE_ONLY_PROPERTIES:
        return f"unknown property {prop!r}"
    return None


def format_value(prop: str, value: str | int) -> str:
    """The value as `zfs set/create` takes it: zfs refuses quota=0 ("use 'none' to disable")."""
    if value == 0 and prop in NONE_IS_ZERO and prop != "special_small_blocks":
        return "none"
    return str(value)


# ---------------------------------------------------------------------------------------------
# Names


def relative_name_problem(name: object) -> str | None:
    """Why `name` is not a dataset name relative to a parent ('alice', 'shared/projects'), or None."""
    if not isinstance(name, str) or not name:
        return f"name {name!r} must be a non-empty string"
    if name.startswith("/") or name.endswith("/"):
        return f"name {name!r} must be relative to the parent (no leading or trailing '/')"
    for component in name.split("/"):
        if component in ("", ".", ".."):
            return f"name {name!r} contains an empty, '.' or '..' component"
        if component == ARCHIVE:
            return f"name {name!r} uses {ARCHIVE!r}, reserved for archived datasets"
        if not COMPONENT_RE.match(component):
            return (
                f"name {name!r}: component {component!r} may only contain letters, digits, '_', '-', '.', ':' "
                "and must start with a letter or digit (no '@', '#', '%', spaces)"
            )
    return None


def full_name_problem(name: object) -> str | None:
    """Why `name` is not an absolute dataset name ('tank/fleet/home'), or None."""
    if not isinstance(name, str) or not name:
        return f"dataset {name!r} must be a non-empty string"
    pool, _sep, rest = name.partition("/")
    if not re.match(r"^[A-Za-z][A-Za-z0-9_.:-]*$", pool):
        return f"dataset {name!r}: pool name {pool!r} is invalid"
    if rest:
        problem = relative_name_problem(rest)
        if problem and ARCHIVE not in rest.split("/"):
            return f"dataset {name!r}: {problem}"
    if len(name) > MAX_NAME:
        return f"dataset {name!r} is longer than {MAX_NAME} characters"
    return None


def is_within(name: str, ancestor: str) -> bool:
    return name == ancestor or name.startswith(ancestor + "/")


# ---------------------------------------------------------------------------------------------
# Client


class ZfsClient:
    """Runs zfs/zpool; every failure raises ZfsError with zfs's own message."""

    def __init__(self, run, zfs: str = "zfs", zpool: str = "zpool"):
        self._run, self.zfs, self.zpool = run, zfs, zpool

    def _call(self, argv: list[str]) -> str:
        rc, out, err = self._run(argv)
        if rc != 0:
            raise ZfsError(argv, rc, err or out)
        return out

    # datasets
    def get_tree(self, parent: str, props: list[str]) -> dict[str, dict[str, tuple[str, str]]]:
        """{dataset: {prop: (value, source)}} for `parent` and every filesystem/volume below it."""
        out = self._call(
            [self.zfs, "get", "-H", "-p", "-r", "-t", "filesystem,volume", "-o", "name,property,value,source",
             ",".join(props), parent]
        )  # fmt: skip
        return parse_get(out)

    def create(self, name: str, props: dict[str, str | int]) -> None:
        argv = [self.zfs, "create", "-p"]
        for prop, value in sorted(props.items()):
            argv += ["-o", f"{prop}={format_value(prop, value)}"]
        self._call([*argv, name])

    def set(self, name: str, props: dict[str, str | int]) -> None:
        if props:
            self._call([self.zfs, "set", *(f"{p}={format_value(p, v)}" for p, v in sorted(props.items())), name])

    def inherit(self, name: str, prop: str) -> None:
        self._call([self.zfs, "inherit", prop, name])

    def snapshot(self, names: list[str], recursive: bool = False) -> None:
        """All snapshots in one command: atomic across datasets."""
        self._call([self.zfs, "snapshot", *(["-r"] if recursive else []), *names])

    def rename(self, old: str, new: str) -> None:
        self._call([self.zfs, "rename", old, new])

    def destroy(self, name: str, recursive: bool = False) -> None:
        self._call([self.zfs, "destroy", *(["-r"] if recursive else []), name])

    def list_snapshots(self, datasets: list[str], recursive: bool = False) -> list[Snapshot]:
        depth = ["-r"] if recursive else ["-d", "1"]
        out = self._call(
            [self.zfs, "list", "-H", "-p", "-t", "snapshot", *depth, "-o", "name,createtxg,creation", *datasets]
        )
        return parse_snapshots(out)

    def list_datasets(self, datasets: list[str]) -> list[str]:
        """The datasets and all their filesystem/volume descendants."""
        out = self._call([self.zfs, "list", "-H", "-r", "-t", "filesystem,volume", "-o", "name", *datasets])
        return [line for line in out.splitlines() if line.strip()]

    def mount_info(self, name: str) -> tuple[str, bool]:
        got = self.get_tree_flat(name, ["mountpoint", "mounted"])
        return got.get("mountpoint", ("-", "-"))[0], got.get("mounted", ("no", "-"))[0] == "yes"

    def get_tree_flat(self, name: str, props: list[str]) -> dict[str, tuple[str, str]]:
        out = self._call([self.zfs, "get", "-H", "-p", "-o", "name,property,value,source", ",".join(props), name])
        return parse_get(out).get(name, {})

    # pools
    def pool_status(self, pool: str) -> str | None:
        """`zpool status -P -L POOL` text, or None when the pool does not exist."""
        try:
            return self._call([self.zpool, "status", "-P", "-L", pool])
        except ZfsError as exc:
            if exc.not_found:
                return None
            raise

    def pool_get(self, pool: str) -> dict[str, tuple[str, str]]:
        out = self._call([self.zpool, "get", "-H", "-p", "-o", "name,property,value,source", "all", pool])
        return parse_get(out).get(pool, {})

    def pool_set(self, pool: str, prop: str, value: str) -> None:
        self._call([self.zpool, "set", f"{prop}={value}", pool])

    def pool_create(self, argv_tail: list[str]) -> None:
        self._call([self.zpool, "create", *argv_tail])

    def importable(self) -> str:
        """`zpool import` (the pools this host could import, found by libblkid); '' when there are none."""
        rc, out, err = self._run([self.zpool, "import"])  # none: rc 0, "No pools available..." on stderr
        if rc != 0 and NO_IMPORTABLE not in (err + out).lower():
            raise ZfsError([self.zpool, "import"], rc, err or out)
        return out if rc == 0 else ""


# ---------------------------------------------------------------------------------------------
# Parsers (of real output, see tests/data/zfs/)

NO_IMPORTABLE = "no pools available to import"


def parse_importable(text: str) -> list[tuple[str, str]]:
    """(name, state) of each pool in `zpool import`'s listing."""
    pools, name = [], None
    for line in text.splitlines():
        field = line.strip()
        if field.startswith("pool: "):
            name = field.removeprefix("pool: ").strip()
        elif field.startswith("state: ") and name is not None:
            pools.append((name, field.removeprefix("state: ").strip()))
            name = None
    return pools


_LSBLK_PAIR_RE = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')


def parse_zfs_labels(text: str) -> dict[str, str]:
    """{device: pool name} of the ZFS members in `lsblk -n -P -o NAME,FSTYPE,LABEL DISK...`."""
    labels = {}
    for line in text.splitlines():
        pairs = dict(_LSBLK_PAIR_RE.findall(line))
        if pairs.get("FSTYPE") == "zfs_member" and pairs.get("NAME"):
            labels[pairs["NAME"]] = pairs.get("LABEL", "")
    return labels


def create_problems(pool: str, importable: list[tuple[str, str]], labels: dict[str, str]) -> list[str]:
    """Why `zpool create POOL` on disks carrying `labels` must not run, given the importable pools.

    A pool that is not imported may only have failed to import at this boot: creating one of its name,
    or on disks of an importable pool, with -f would destroy it. Labels of pools that cannot be
    imported any more (destroyed ones) are what `force` is for.
    """
    names = dict(importable)
    problems = []
    if pool in names:
        problems.append(
            f"pool {pool} is not imported, but a pool of that name can be imported (state {names[pool]}): "
            f"import it (zpool import {pool}) rather than create a new one; nothing was changed"
        )
    for device, label in sorted(labels.items()):
        if label in names and label != pool:
            problems.append(
                f"disk {device} belongs to pool {label}, which can be imported (state {names[label]}): "
                f"import or destroy that pool first (zpool import {label}); nothing was changed"
            )
    return problems


def parse_get(text: str) -> dict[str, dict[str, tuple[str, str]]]:
    """`zfs get`/`zpool get -H -p -o name,property,value,source` -> {name: {prop: (value, source)}}.

    Values may contain spaces (sharenfs options); fields are tab-separated.
    """
    tree: dict[str, dict[str, tuple[str, str]]] = {}
    for line in text.splitlines():
        if not line.strip():
            continue
        name, prop, value, source = line.split("\t", 3)
        tree.setdefault(name, {})[prop] = (value, source)
    return tree


@dataclass(frozen=True)
class Snapshot:
    dataset: str
    name: str
    createtxg: int
    creation: int

    @property
    def full(self) -> str:
        return f"{self.dataset}@{self.name}"


def parse_snapshots(text: str) -> list[Snapshot]:
    snaps = []
    for line in text.splitlines():
        if not line.strip():
            continue
        full, txg, creation = line.split("\t")
        dataset, _sep, name = full.partition("@")
        snaps.append(Snapshot(dataset, name, int(txg), int(creation)))
    return snaps


# Vdev types as `zpool status` names them (raidz1-0, mirror-1, ...) and section headers.
_SECTIONS = {"special": "special", "dedup": "dedup", "logs": "log", "cache": "cache", "spares": "spare"}
_GROUP_RE = re.compile(r"^(mirror|raidz[123]|draid[123]?[^-]*|replacing|spare)-\d+$")


@dataclass
class Vdev:
    role: str  # data, special, dedup, log, cache, spare
    type: str  # stripe (single disk), mirror, raidz1, raidz2, raidz3
    disks: list[str] = field(default_factory=list)

    def key(self) -> tuple[str, str, tuple[str, ...]]:
        return (self.role, self.type, tuple(sorted(self.disks)))


def parse_zpool_status(text: str) -> list[Vdev]:
    """The vdev layout from `zpool status -P [-L] POOL`.

    The config block is indented with a tab and two spaces per level: the pool (level 0) or a
    section header (special/logs/cache/spares), then vdevs, then the disks of a group vdev.
    A disk being replaced (`replacing-N`) counts as its group's members.
    """
    vdevs: list[Vdev] = []
    in_config = False
    role = "data"
    group: Vdev | None = None
    pool_level_seen = False
    for line in text.splitlines():
        if line.strip().startswith("NAME") and "STATE" in line:
            in_config = True
            continue
        if not in_config:
            continue
        if not line.strip():
            if pool_level_seen:
                break
            continue
        if line.startswith("errors:"):
            break
        body = line.lstrip("\t")
        level = (len(body) - len(body.lstrip(" "))) // 2
        token = body.split()[0]
        if level == 0:
            pool_level_seen = True
            role = _SECTIONS.get(token, "data")
            group = None
            continue
        match = _GROUP_RE.match(token)
        if level == 1:
            if match:
                group = Vdev(role, match.group(1), [])
                vdevs.append(group)
            else:
                group = None
                vdevs.append(Vdev(role, "stripe", [token]))
        elif group is not None and not match:
            group.disks.append(token)
    return vdevs


# ---------------------------------------------------------------------------------------------
# Dataset plan


@dataclass
class DatasetSpec:
    name: str  # relative to the parent
    full: str
    state: str = "present"
    properties: dict[str, str | int | None] = field(default_factory=dict)
    owner: int | None = None
    group: int | None = None
    mode: int | None = None


@dataclass
class ItemPlan:
    spec: DatasetSpec
    action: str = "unchanged"  # create, update, archive, destroy, unchanged, failed
    set: dict[str, str | int] = field(default_factory=dict)
    inherit: list[str] = field(default_factory=list)
    perms: dict[str, int] = field(default_factory=dict)  # owner/group/mode to apply
    archive_to: str | None = None
    destroy: list[str] = field(default_factory=list)  # what a purge destroys: the dataset, then its archives
    error: str | None = None
    before: dict = field(default_factory=dict)
    after: dict = field(default_factory=dict)


@dataclass
class DatasetPlan:
    items: list[ItemPlan]
    unlisted: list[str]
    prune: list[ItemPlan]
    need_archive_area: bool

    @property
    def changed(self) -> bool:
        return any(p.action not in ("unchanged", "failed") for p in (*self.items, *self.prune))


def spec_problems(parent: str, items: list[dict]) -> list[str]:
    """Every problem with the module input, each naming the item and field; empty when all is well."""
    problems = []
    problem = full_name_problem(parent)
    if problem:
        problems.append(f"parent: {problem}")
    seen: set[str] = set()
    for index, item in enumerate(items):
        name = item.get("name")
        label = f"datasets[{index}] ({name!r})"
        problem = relative_name_problem(name)
        if problem:
            problems.append(f"{label}: {problem}")
        elif name in seen:
            problems.append(f"{label}: listed twice")
        else:
            seen.add(name)
            if len(f"{parent}/{name}") > MAX_NAME:
                problems.append(f"{label}: full name is longer than {MAX_NAME} characters")
        for prop, value in (item.get("properties") or {}).items():
            problem = property_problem(prop)
            if problem:
                problems.append(f"{label}: properties: {problem}")
                continue
            try:
                normalize_property(prop, value)
            except ValueError as exc:
                problems.append(f"{label}: properties.{prop}: {exc}")
        for key in ("owner", "group"):
            value = item.get(key)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 0):
                problems.append(f"{label}: {key}: {value!r} is not a numeric id")
        mode = item.get("mode")
        if mode is not None and parse_mode(mode) is None:
            problems.append(f"{label}: mode: {mode!r} is not an octal mode such as '0750'")
    absent = {i.get("name") for i in items if i.get("state") == "absent"}
    for item in items:
        name = item.get("name")
        if item.get("state", "present") == "present" and isinstance(name, str):
            for gone in absent:
                if isinstance(gone, str) and name.startswith(gone + "/"):
                    problems.append(f"datasets ({name!r}): is present but its ancestor {gone!r} is absent")
    return problems


def parse_mode(mode: object) -> int | None:
    if isinstance(mode, bool):
        return None
    if isinstance(mode, int):
        return mode if 0 <= mode <= 0o7777 else None
    if isinstance(mode, str) and re.match(r"^0?[0-7]{3,4}$", mode.strip()):
        return int(mode.strip(), 8)
    return None


def build_specs(parent: str, items: list[dict]) -> list[DatasetSpec]:
    """Validated input -> specs with normalized property values (call spec_problems first)."""
    specs = []
    for item in items:
        props = {p: normalize_property(p, v) for p, v in (item.get("properties") or {}).items()}
        mode = item.get("mode")
        specs.append(
            DatasetSpec(
                name=item["name"],
                full=f"{parent}/{item['name']}",
                state=item.get("state") or "present",
                properties=props,
                owner=item.get("owner"),
                group=item.get("group"),
                mode=parse_mode(mode) if mode is not None else None,
            )
        )
    return specs


def properties_to_read(specs: list[DatasetSpec]) -> list[str]:
    props = {"type", "mountpoint", "mounted", ARCHIVED_FROM}
    for spec in specs:
        props.update(spec.properties)
    return sorted(props)


def archive_name(parent: str, name: str, stamp: str) -> str:
    """Where `name` goes when archived: <parent>/_archive/<name with '/' as '.'>-<stamp>."""
    return f"{parent}/{ARCHIVE}/{name.replace('/', '.')}-{stamp}"


def plan_datasets(
    parent: str,
    specs: list[DatasetSpec],
    current: dict[str, dict[str, tuple[str, str]]],
    *,
    stamp: str,
    prune: bool = False,
    purge: bool = False,
    stats: dict[str, tuple[int, int, int]] | None = None,
) -> DatasetPlan:
    """Compare desired specs with the current tree (from get_tree) and say what to do.

    stats: {dataset: (uid, gid, mode)} of mounted mountpoints, for owner/group/mode.
    stamp: UTC timestamp used in archive names (passed in, so planning stays pure).
    """
    stats = stats or {}
    items = [_plan_item(parent, spec, current, stats, stamp, purge) for spec in specs]
    listed = {s.full for s in specs}
    # Ancestors of listed datasets are implicitly listed (created by `zfs create -p` if missing).
    implied = {s.full.rsplit("/", k)[0] for s in specs for k in range(1, s.name.count("/") + 1)}
    archive_root = f"{parent}/{ARCHIVE}"
    unlisted = sorted(
        n for n in current if n != parent and n not in listed and n not in implied and not is_within(n, archive_root)
    )
    # Report and prune only the top-most unlisted datasets: their children go with them.
    tops = [n for n in unlisted if not any(n.startswith(u + "/") for u in unlisted if u != n)]
    prune_plans = []
    if prune:
        for full in tops:
            spec = DatasetSpec(name=full[len(parent) + 1 :], full=full, state="absent")
            prune_plans.append(_plan_item(parent, spec, current, stats, stamp, purge))
    need_area = archive_root not in current and any(p.action == "archive" for p in (*items, *prune_plans))
    return DatasetPlan(items, unlisted, prune_plans, need_area)


def _plan_item(parent, spec, current, stats, stamp, purge) -> ItemPlan:
    plan = ItemPlan(spec)
    have = current.get(spec.full)
    if spec.state == "absent":
        if purge:
            # Purge means the data is gone: earlier runs' archives of it go too.
            archives = archives_of(parent, spec.full, current)
            plan.destroy = ([spec.full] if have is not None else []) + archives
            if plan.destroy:
                plan.action = "destroy"
                plan.before = {"state": "present" if have is not None else "archived"}
                if archives:
                    plan.before["archives"] = archives
                plan.after = {"state": "absent"}
        elif have is not None:
            plan.action = "archive"
            plan.archive_to = archive_name(parent, spec.name, stamp)
            plan.before = {"state": "present"}
            plan.after = {"state": "archived", "archived_as": plan.archive_to}
        return plan
    if have is None:
        plan.action = "create"
        plan.set = {p: v for p, v in spec.properties.items() if v is not None}
        plan.perms = _wanted_perms(spec)
        plan.before = {"state": "absent"}
        plan.after = {"state": "present", **_show(plan.set), **_show_perms(plan.perms)}
        return plan
    errors = []
    for prop, want in spec.properties.items():
        value, source = have.get(prop, ("-", "-"))
        now = normalize_current(prop, value)
        if want is None:
            if source == "local":
                plan.inherit.append(prop)
                plan.before[prop], plan.after[prop] = now, "(inherited)"
            continue
        if now == want:
            continue
        if prop in CREATE_ONLY_PROPERTIES:
            errors.append(f"{prop} is {now!r} but {want!r} is wanted; it can only be set when the dataset is created")
            continue
        plan.set[prop] = want
        plan.before[prop], plan.after[prop] = now, want
    wanted = _wanted_perms(spec)
    if wanted:
        stat = stats.get(spec.full)
        if stat is None:
            errors.append("owner/group/mode requested but the dataset is not mounted")
        else:
            for key, now in zip(("owner", "group", "mode"), stat, strict=True):
                if key in wanted and wanted[key] != now:
                    plan.perms[key] = wanted[key]
                    plan.before[key] = _show_perms({key: now})[key]
                    plan.after[key] = _show_perms({key: wanted[key]})[key]
    if errors:
        plan.action, plan.error = "failed", f"{spec.full}: " + "; ".join(errors)
    elif plan.set or plan.inherit or plan.perms:
        plan.action = "update"
    return plan


def archives_of(parent: str, full: str, current: dict[str, dict[str, tuple[str, str]]]) -> list[str]:
    """The archives (from earlier runs) of `full` and of datasets below it, oldest name first.

    An archive is a dataset in the archive area whose archived-from property is set locally (its
    children inherit it) and names `full` or a dataset within it.
    """
    archive_root = f"{parent}/{ARCHIVE}"
    found = []
    for name, props in current.items():
        origin, source = props.get(ARCHIVED_FROM, ("-", "-"))
        if source == "local" and is_within(name, archive_root) and is_within(origin, full):
            found.append(name)
    return sorted(found)


def _wanted_perms(spec: DatasetSpec) -> dict[str, int]:
    wanted = {"owner": spec.owner, "group": spec.group, "mode": spec.mode}
    return {k: v for k, v in wanted.items() if v is not None}


def _show(props: dict) -> dict:
    return dict(props)


def _show_perms(perms: dict[str, int]) -> dict:
    return {k: (f"{v:04o}" if k == "mode" else v) for k, v in perms.items()}


# ---------------------------------------------------------------------------------------------
# Snapshot retention


# zfs_snapshots names a scheduled snapshot PREFIX + a UTC stamp, and retention acts on those names
# only: a prefix alone would also match others' names (`auto` matches sanoid's `autosnap_...`,
# `hourly-` a person's `hourly-before-upgrade`).
SCHEDULED_STAMP = "%Y%m%dT%H%M%SZ"
_SCHEDULED_STAMP_RE = r"[0-9]{8}T[0-9]{6}Z"


def scheduled_name(prefix: str, when: float) -> str:
    """The name of a snapshot the schedule `prefix` takes at `when` (seconds since the epoch)."""
    return prefix + time.strftime(SCHEDULED_STAMP, time.gmtime(when))


def is_scheduled(name: str, prefix: str) -> bool:
    """Whether `name` is one of the schedule `prefix`'s own snapshots (scheduled_name's form)."""
    return re.fullmatch(re.escape(prefix) + _SCHEDULED_STAMP_RE, name) is not None


def snapshots_to_take(
    datasets: list[str], targets: list[str], existing: list[Snapshot], name: str, recursive: bool
) -> tuple[list[str], list[str]]:
    """(snapshots missing, arguments of the one `zfs snapshot` that takes them).

    targets: every dataset the snapshot covers (with recursive, the datasets and their descendants);
    recursive snapshots are taken from the listed datasets that miss it, with -r.
    """
    have = {s.full for s in existing}
    missing = [f"{d}@{name}" for d in targets if f"{d}@{name}" not in have]
    if not recursive:
        return missing, missing
    return missing, [f"{d}@{name}" for d in datasets if f"{d}@{name}" not in have]


def expired_snapshots(snaps: list[Snapshot], prefix: str, keep: int) -> list[Snapshot]:
    """The schedule `prefix`'s own snapshots beyond the `keep` newest, per dataset (by createtxg, then name)."""
    by_dataset: dict[str, list[Snapshot]] = {}
    for snap in snaps:
        if is_scheduled(snap.name, prefix):
            by_dataset.setdefault(snap.dataset, []).append(snap)
    expired = []
    for dataset in sorted(by_dataset):
        ordered = sorted(by_dataset[dataset], key=lambda s: (s.createtxg, s.name), reverse=True)
        expired.extend(ordered[keep:])
    return expired


# ---------------------------------------------------------------------------------------------
# Pool plan

VDEV_TYPES = ("stripe", "mirror", "raidz1", "raidz2", "raidz3")
VDEV_ROLES = ("data", "special", "dedup", "log", "cache", "spare")
_MIN_DISKS = {"stripe": 1, "mirror": 2, "raidz1": 2, "raidz2": 3, "raidz3": 4}
# Pool properties that only `zpool create` can set.
POOL_CREATE_ONLY = frozenset({"ashift", "altroot"})


def vdev_problems(vdevs: list[dict]) -> list[str]:
    problems = []
    seen: set[str] = set()
    if not any((v.get("role") or "data") == "data" for v in vdevs):
        problems.append("vdevs: at least one data vdev is needed")
    for index, vdev in enumerate(vdevs):
        role, vtype = vdev.get("role") or "data", vdev.get("type") or "stripe"
        vtype = "raidz1" if vtype == "raidz" else vtype
        label = f"vdevs[{index}]"
        if role not in VDEV_ROLES:
            problems.append(f"{label}: role {role!r} is not one of {', '.join(VDEV_ROLES)}")
        if vtype not in VDEV_TYPES:
            problems.append(f"{label}: type {vtype!r} is not one of raidz, {', '.join(VDEV_TYPES)}")
            continue
        if role in ("cache", "spare") and vtype != "stripe":
            problems.append(f"{label}: {role} devices cannot be {vtype}; use type stripe")
        disks = vdev.get("disks") or []
        if len(disks) < _MIN_DISKS[vtype]:
            problems.append(f"{label}: {vtype} needs at least {_MIN_DISKS[vtype]} disks, got {len(disks)}")
        for disk in disks:
            if not isinstance(disk, str) or not disk.startswith("/dev/"):
                problems.append(f"{label}: disk {disk!r} must be a /dev path (preferably /dev/disk/by-id/...)")
            elif disk in seen:
                problems.append(f"{label}: disk {disk!r} is used twice")
            seen.add(disk)
    return problems


def desired_vdevs(vdevs: list[dict]) -> list[Vdev]:
    result = []
    for vdev in vdevs:
        vtype = vdev.get("type") or "stripe"
        vtype = "raidz1" if vtype == "raidz" else vtype
        role = vdev.get("role") or "data"
        if vtype == "stripe":
            # A striped group of N disks is N single-disk vdevs, which is how zpool status shows it.
            result.extend(Vdev(role, "stripe", [d]) for d in vdev["disks"])
        else:
            result.append(Vdev(role, vtype, list(vdev["disks"])))
    return result


def layout_differences(desired: list[Vdev], current: list[Vdev]) -> list[str]:
    """Human-readable differences between two layouts whose disks are already canonical."""
    want = sorted(v.key() for v in desired)
    have = sorted(v.key() for v in current)
    diffs = []
    for key in want:
        if key in have:
            have.remove(key)
        else:
            diffs.append(f"{key[0]} {key[1]} [{' '.join(key[2])}] is wanted but not in the pool")
    diffs.extend(f"{k[0]} {k[1]} [{' '.join(k[2])}] is in the pool but not wanted" for k in have)
    return diffs


def create_pool_args(
    pool: str, vdevs: list[Vdev], properties: dict[str, str], fs_properties: dict[str, str], force: bool = False
) -> list[str]:
    """Arguments after `zpool create` (disks as given: by-id paths stay by-id in the pool)."""
    argv = ["-f"] if force else []
    for prop, value in sorted(properties.items()):
        argv += ["-o", f"{prop}={value}"]
    for prop, value in sorted(fs_properties.items()):
        argv += ["-O", f"{prop}={value}"]
    argv.append(pool)
    for role in VDEV_ROLES:
        group = [v for v in vdevs if v.role == role]
        if not group:
            continue
        if role != "data":
            argv.append(role)
        for vdev in group:
            if vdev.type != "stripe":
                argv.append(vdev.type)
            argv.extend(vdev.disks)
    return argv


def pool_property_value(value: object) -> str:
    if isinstance(value, bool):
        return "on" if value else "off"
    return str(value).strip()
