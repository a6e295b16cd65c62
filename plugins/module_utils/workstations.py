# Copyright: (c) 2026, GPU Lab Fleet maintainers
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Pure planning for LXD user workstations: validation, desired config/devices, the plan, and the
in-container provisioning (scripts + expected state digest).

Nothing here talks to LXD or the host; the module feeds in what it read once and applies the plan.

Ownership rules (what "managed" means):
- config: the keys in MANAGED_KEYS are compared exactly (string values, as LXD stores them) and
  set or removed; every other key (volatile.*, image.*, keys an admin added) is left alone.
- devices: devices named `gpulab-*` (and `root` when a root disk size is requested) are compared
  exactly and added/replaced/removed; other devices (from profiles or added by hand) are left alone.
- profiles: the list is set exactly.
"""

from __future__ import annotations

import hashlib
import re
from datetime import datetime

from ansible_collections.gpulab.fleet.plugins.module_utils.units import SizeError, format_binary, parse_size
from ansible_collections.gpulab.fleet.plugins.module_utils.validation import (
    ARCHIVE_MARK,
    PlanError,
    archive_mark_problem,
    id_problem,
    normalize_ssh_key,
    ssh_key_problem,
    username_problem,
)

TAG_PREFIX = "user.gpulab."
TAG_MANAGED = "user.gpulab.managed"
TAG_USER = "user.gpulab.user"
TAG_ARCHIVED = "user.gpulab.archived"
TAG_ARCHIVED_FROM = "user.gpulab.archived_from"
DEVICE_PREFIX = "gpulab-"

# Changing these on a running container only takes effect after a restart (id maps, nesting,
# NVIDIA hooks are set up when the container starts), so the plan restarts it.
RESTART_KEYS = frozenset(
    {"raw.idmap", "security.idmap.isolated", "security.nesting", "nvidia.runtime", "nvidia.driver.capabilities"}
)
MANAGED_KEYS = frozenset(
    {
        "limits.cpu",
        "limits.memory",
        "limits.processes",
        "raw.idmap",
        "security.idmap.isolated",
        "security.nesting",
        "nvidia.runtime",
        "nvidia.driver.capabilities",
        TAG_MANAGED,
        TAG_USER,
        TAG_ARCHIVED,
        TAG_ARCHIVED_FROM,
    }
)

# LXD instance names: letters, digits, '-'; not starting with a digit or '-'; at most 63 chars.
# Archiving appends "-archived-YYYYMMDDHHMMSS" (24 chars), so workstation names stay <= 39.
_NAME_RE = re.compile(r"^[a-zA-Z][a-zA-Z0-9-]{0,38}$")
_CPUSET_RE = re.compile(r"^\d+(-\d+)?(,\d+(-\d+)?)*$")
_GROUP_RE = re.compile(r"^[a-z_][a-z0-9_-]{0,31}$")
STATES = ("started", "stopped", "absent")
GPU_MODES = ("lxd", "devices")

SSHD_DROPIN = "/etc/ssh/sshd_config.d/gpulab.conf"
# Debian's sshd_config Includes sshd_config.d/*.conf first, and the first value of a keyword wins.
SSHD_CONFIG = (
    "# Managed by gpulab.fleet.lxd_workstations: key-only logins.\n"
    "PasswordAuthentication no\n"
    "KbdInteractiveAuthentication no\n"
    "PermitRootLogin no\n"
)


# ---- validation -------------------------------------------------------------------------------------


def validate(items: list[dict], defaults: dict) -> tuple[list[dict], list[str]]:
    """Check the whole list; return (normalized workstations, problems). Problems name item and field.

    defaults: image, profiles, gpu_mode (module-level values used when an item leaves them unset).
    """
    problems: list[str] = []
    out: list[dict] = []
    seen_names: dict[str, int] = {}
    seen_uids: dict[int, str] = {}
    for pos, item in enumerate(items):
        ws, errs = _normalize(item, pos, defaults)
        problems += errs
        if ws is None:
            continue
        label = ws["name"]
        if label in seen_names:
            problems.append(f"workstation {label}: name: duplicate (items {seen_names[label]} and {pos})")
        seen_names[label] = pos
        if ws["state"] != "absent":
            uid = ws["user"]["uid"]
            if uid in seen_uids:
                problems.append(f"workstation {label}: user.uid: {uid} is also used by workstation {seen_uids[uid]}")
            seen_uids.setdefault(uid, label)
        out.append(ws)
    return out, problems


def _normalize(item: dict, pos: int, defaults: dict) -> tuple[dict | None, list[str]]:
    errs: list[str] = []
    user = item.get("user") or {}
    name = item.get("name") or user.get("name")
    if not name:
        return None, [f"workstation #{pos}: name: missing (give name or user.name)"]
    label = f"workstation {name}"
    if not isinstance(name, str) or not _NAME_RE.match(name) or name.endswith("-"):
        errs.append(
            f"{label}: name: {name!r} is not a valid instance name (letter first, then letters, digits, '-', "
            "at most 39 characters so the archive name fits LXD's 63)"
        )
    elif archive_mark_problem(name):
        errs.append(f"{label}: name: {archive_mark_problem(name)}")
    state = item.get("state") or "started"
    if state not in STATES:
        errs.append(f"{label}: state: {state!r} is not one of {', '.join(STATES)}")
    purge = bool(item.get("purge"))
    if purge and state != "absent":
        errs.append(f"{label}: purge: only allowed with state=absent")
    ws = {"name": name, "state": state, "purge": purge}
    if state == "absent":
        return ws, errs

    ws["user"], uerrs = _normalize_user(user, label)
    errs += uerrs
    ws["image"] = item.get("image") or defaults.get("image")
    if not ws["image"]:
        errs.append(f"{label}: image: no image alias (set image on the item or the module)")
    profiles = item.get("profiles")
    ws["profiles"] = list(profiles if profiles is not None else defaults.get("profiles") or ["default"])
    ws["gpu_mode"] = item.get("gpu_mode") or defaults.get("gpu_mode") or "lxd"
    if ws["gpu_mode"] not in GPU_MODES:
        errs.append(f"{label}: gpu_mode: {ws['gpu_mode']!r} is not one of {', '.join(GPU_MODES)}")
    ws["gpus"] = item.get("gpus")
    ws["storage_pool"] = item.get("storage_pool")
    ws["limits"], lerrs = _normalize_limits(item.get("limits") or {}, label)
    errs += lerrs
    ws["disks"], derrs = _normalize_disks(item.get("disks") or [], label)
    errs += derrs
    return ws, errs


def _normalize_user(user: dict, label: str) -> tuple[dict, list[str]]:
    errs: list[str] = []
    uname = user.get("name")
    problem = username_problem(uname)
    if problem:
        errs.append(f"{label}: user.name: {problem}")
    out = {"name": uname}
    for field in ("uid", "gid"):
        value = user.get(field)
        if value is None and field == "gid":
            value = user.get("uid")
        if isinstance(value, str) and value.isdigit():
            value = int(value)
        problem = id_problem(value)
        if problem:
            errs.append(f"{label}: user.{field}: {problem}")
        out[field] = value
    groups = user.get("groups") or []
    for g in groups:
        if not isinstance(g, str) or not _GROUP_RE.match(g):
            errs.append(f"{label}: user.groups: {g!r} is not a valid group name")
    out["groups"] = sorted(set(groups)) if all(isinstance(g, str) for g in groups) else []
    shell = user.get("shell") or "/bin/bash"
    if not isinstance(shell, str) or not shell.startswith("/") or any(c in shell for c in " :\n"):
        errs.append(f"{label}: user.shell: {shell!r} is not an absolute path")
    out["shell"] = shell
    keys = []
    for n, key in enumerate(user.get("ssh_keys") or []):
        problem = ssh_key_problem(key)
        if problem:
            errs.append(f"{label}: user.ssh_keys[{n}]: {problem}")
        else:
            keys.append(normalize_ssh_key(key))
    out["ssh_keys"] = list(dict.fromkeys(keys))
    return out, errs


def _normalize_limits(limits: dict, label: str) -> tuple[dict, list[str]]:
    errs: list[str] = []
    out: dict[str, str] = {}
    cpu = limits.get("cpu")
    if cpu is not None:
        text = str(cpu).strip()
        if isinstance(cpu, bool) or not _CPUSET_RE.match(text) or text == "0":
            errs.append(f"{label}: limits.cpu: {cpu!r} is neither a CPU count nor a CPU set such as 0-3,6")
        out["cpu"] = text
    for field in ("memory", "disk"):
        value = limits.get(field)
        if value is None:
            continue
        try:
            size = parse_size(value)
            if not size:
                raise SizeError(f"size {value!r} must be more than 0")
            out[field] = format_binary(size)
        except SizeError as exc:
            errs.append(f"{label}: limits.{field}: {exc}")
    procs = limits.get("processes")
    if procs is not None:
        if isinstance(procs, str) and procs.isdigit():
            procs = int(procs)
        if not isinstance(procs, int) or isinstance(procs, bool) or procs < 1:
            errs.append(f"{label}: limits.processes: {procs!r} is not a positive number")
        out["processes"] = str(procs)
    return out, errs


def _normalize_disks(disks: list, label: str) -> tuple[list[dict], list[str]]:
    errs: list[str] = []
    out: list[dict] = []
    names: set[str] = set()
    for n, disk in enumerate(disks):
        source, path = disk.get("source"), disk.get("path")
        for field, value in (("source", source), ("path", path)):
            if not isinstance(value, str) or not value.startswith("/") or value.rstrip("/") == "":
                errs.append(f"{label}: disks[{n}].{field}: {value!r} must be an absolute path other than /")
        dname = disk.get("name") or re.sub(r"[^a-zA-Z0-9-]+", "-", str(path).strip("/"))
        device = DEVICE_PREFIX + "disk-" + dname
        if device in names:
            errs.append(f"{label}: disks[{n}]: two disks share the device name {device!r} (set name)")
        names.add(device)
        out.append({"device": device, "source": source, "path": path, "readonly": bool(disk.get("readonly"))})
    return out, errs


# ---- desired state ------------------------------------------------------------------------------------


def raw_idmap(uid: int, gid: int) -> str:
    """The user's ids mapped straight through (host id == container id) so shared files keep owners."""
    if uid == gid:
        return f"both {uid} {uid}"
    return f"uid {uid} {uid}\ngid {gid} {gid}"


def desired_config(ws: dict, gpus: list[dict], capabilities: str) -> dict[str, str]:
    """The managed config keys this workstation should have (absent keys are to be removed)."""
    user = ws["user"]
    config = {
        # Unprivileged and isolated: each container gets its own host uid range, so two users'
        # containers never share host uids; only the user's own id is mapped straight through.
        "security.idmap.isolated": "true",
        "raw.idmap": raw_idmap(user["uid"], user["gid"]),
        # Required on AppArmor hosts (every stock Debian/Ubuntu server): without it systemd units
        # with mount namespacing (systemd-networkd, ...) fail with 226/NAMESPACE and the
        # workstation gets no network. Measured in the test VM; the CI host has no AppArmor.
        "security.nesting": "true",
        TAG_MANAGED: "true",
        TAG_USER: user["name"],
    }
    limits = ws["limits"]
    for key in ("cpu", "memory", "processes"):
        if key in limits:
            config[f"limits.{key}"] = limits[key]
    if gpus and ws["gpu_mode"] == "lxd":
        # The host's driver libraries and tools are injected at start (libnvidia-container), so the
        # image needs no driver of its own.
        config["nvidia.runtime"] = "true"
        config["nvidia.driver.capabilities"] = capabilities
    return config


def desired_devices(ws: dict, gpus: list[dict], control_devices: list[dict], pool: str | None) -> dict[str, dict]:
    """The managed devices this workstation should have. Raises PlanError when a device node is missing."""
    devices: dict[str, dict] = {}
    if ws["gpu_mode"] == "lxd":
        for g in gpus:
            devices[f"{DEVICE_PREFIX}gpu{g['index']}"] = {"type": "gpu", "gputype": "physical", "pci": g["pci_bus_id"]}
    elif gpus:
        missing = [f"GPU {g['index']} (minor {g['minor']})" for g in gpus if not g.get("device")]
        if missing:
            raise PlanError(
                [f"workstation {ws['name']}: gpus: no device node for {', '.join(missing)} under the device root"]
            )
        nodes = [g["device"] for g in gpus] + list(control_devices)
        if not any(n["path"].endswith("/nvidiactl") for n in control_devices):
            raise PlanError([f"workstation {ws['name']}: gpus: no nvidiactl node under the device root"])
        for node in nodes:
            base = node["path"].rsplit("/", 1)[-1]
            # No `source`: LXD only accepts sources under /dev and would stat them; with major/minor
            # from the host's node it creates the same node inside (and gpu_device_root can be a test dir).
            devices[DEVICE_PREFIX + base] = {
                "type": "unix-char",
                "path": "/dev/" + base,
                "major": str(node["major"]),
                "minor": str(node["minor"]),
                # The host's NVIDIA nodes are world-usable; LXD's default 0660 root:root would lock the user out.
                "mode": "0666",
            }
    for disk in ws["disks"]:
        dev = {"type": "disk", "source": disk["source"], "path": disk["path"]}
        if disk["readonly"]:
            dev["readonly"] = "true"
        devices[disk["device"]] = dev
    if "disk" in ws["limits"]:
        devices["root"] = {"type": "disk", "path": "/", "pool": pool or "default", "size": ws["limits"]["disk"]}
    return devices


def managed_config(config: dict) -> dict[str, str]:
    return {k: v for k, v in config.items() if k in MANAGED_KEYS}


def managed_devices(devices: dict, with_root: bool) -> dict[str, dict]:
    return {k: v for k, v in devices.items() if k.startswith(DEVICE_PREFIX) or (with_root and k == "root")}


def status_of(instance: dict | None) -> str:
    if instance is None:
        return "absent"
    return {"running": "started", "stopped": "stopped", "frozen": "frozen"}.get(
        str(instance.get("status", "")).lower(), str(instance.get("status", "")).lower()
    )


def is_managed(instance: dict) -> bool:
    return (instance.get("config") or {}).get(TAG_MANAGED) == "true"


def root_pool(instance: dict | None, profiles: dict[str, dict], profile_names: list[str]) -> str | None:
    """The storage pool of the root disk: the instance's own, else the last profile defining one."""
    if instance is not None:
        root = (instance.get("expanded_devices") or {}).get("root") or {}
        if root.get("pool"):
            return root["pool"]
    pool = None
    for pname in profile_names:
        root = ((profiles.get(pname) or {}).get("devices") or {}).get("root") or {}
        pool = root.get("pool") or pool
    return pool


# ---- the plan ---------------------------------------------------------------------------------------------


def archive_name(name: str, now: datetime) -> str:
    return f"{name}{ARCHIVE_MARK}{now.strftime('%Y%m%d%H%M%S')}"


def plan(workstations: list[dict], desired: dict[str, dict], instances: dict[str, dict], now: datetime) -> list[dict]:
    """One plan entry per workstation (in input order). Raises PlanError on conflicts, before any change.

    desired: name -> {config, devices, profiles} for workstations that should exist.
    instances: every instance LXD has, by name (as read with recursion=1 or 2).
    Entry: {name, state, actions[...], create (spec), config/devices/profiles (full new values
    when updating), restart, archive {name, snapshot, tags}, delete [names], check_inside,
    before, after}.
    """
    problems: list[str] = []
    entries = []
    for ws in workstations:
        name = ws["name"]
        inst = instances.get(name)
        if inst is not None and not is_managed(inst):
            problems.append(
                f"workstation {name}: an instance {name!r} exists but is not managed by gpulab "
                f"({TAG_MANAGED} is not 'true'); refusing to take it over or archive it"
            )
            continue
        if ws["state"] == "absent":
            entries.append(_plan_absent(ws, inst, instances, now))
        else:
            entries.append(_plan_present(ws, desired[name], inst))
    if problems:
        raise PlanError(problems)
    return entries


def _view(status: str, config: dict, devices: dict, profiles: list | None) -> dict:
    return {"state": status, "config": dict(sorted(config.items())), "devices": dict(sorted(devices.items())),
            "profiles": profiles}  # fmt: skip


def _plan_present(ws: dict, want: dict, inst: dict | None) -> dict:
    name = ws["name"]
    with_root = "root" in want["devices"]
    entry = {"name": name, "state": ws["state"], "actions": [], "restart": False,
             "check_inside": ws["state"] == "started"}  # fmt: skip
    entry["after"] = _view(ws["state"], want["config"], want["devices"], want["profiles"])
    if inst is None:
        entry["actions"].append("create")
        entry["create"] = {
            "name": name,
            "source": {"type": "image", "alias": ws["image"]},
            "profiles": want["profiles"],
            "config": want["config"],
            "devices": want["devices"],
        }
        if ws["state"] == "started":
            entry["actions"].append("start")
        entry["before"] = _view("absent", {}, {}, None)
        return entry

    status = status_of(inst)
    cur_config = inst.get("config") or {}
    cur_devices = inst.get("devices") or {}
    have_cfg = managed_config(cur_config)
    have_dev = managed_devices(cur_devices, with_root)
    entry["before"] = _view(status, have_cfg, have_dev, inst.get("profiles"))

    if have_cfg != want["config"] or have_dev != want["devices"] or inst.get("profiles") != want["profiles"]:
        entry["actions"].append("update")
        # Full new values: unmanaged keys/devices kept as they are, managed ones replaced exactly.
        entry["config"] = {k: v for k, v in cur_config.items() if k not in MANAGED_KEYS} | want["config"]
        entry["devices"] = {k: v for k, v in cur_devices.items() if k not in have_dev} | want["devices"]
        entry["profiles"] = want["profiles"]
        changed_keys = {k for k in set(have_cfg) | set(want["config"]) if have_cfg.get(k) != want["config"].get(k)}
        entry["restart"] = status == "started" and ws["state"] == "started" and bool(changed_keys & RESTART_KEYS)
    if ws["state"] == "started" and status != "started":
        entry["actions"].append("unfreeze" if status == "frozen" else "start")
    elif ws["state"] == "started" and entry["restart"]:
        entry["actions"].append("restart")
    elif ws["state"] == "stopped" and status != "stopped":
        entry["actions"].insert(0, "stop")
    return entry


def _plan_absent(ws: dict, inst: dict | None, instances: dict[str, dict], now: datetime) -> dict:
    name = ws["name"]
    entry = {"name": name, "state": "absent", "actions": [], "check_inside": False, "restart": False}
    archives = sorted(
        n for n, i in instances.items() if is_managed(i) and (i.get("config") or {}).get(TAG_ARCHIVED_FROM) == name
    )
    entry["before"] = {"state": status_of(inst), "archives": archives}
    if ws["purge"]:
        doomed = ([name] if inst is not None else []) + archives
        if doomed:
            entry["actions"].append("delete")
            entry["delete"] = doomed
        entry["after"] = {"state": "absent", "archives": []}
        return entry
    if inst is None:
        entry["after"] = entry["before"]
        return entry
    stamp = now.strftime("%Y%m%d%H%M%S")
    if status_of(inst) != "stopped":
        entry["actions"].append("stop")
    entry["actions"].append("archive")
    entry["archive"] = {
        "name": archive_name(name, now),
        "snapshot": f"gpulab-archive-{stamp}",
        "tags": {TAG_ARCHIVED: now.strftime("%Y-%m-%dT%H:%M:%SZ"), TAG_ARCHIVED_FROM: name},
    }
    entry["after"] = {"state": "absent", "archives": sorted([*archives, entry["archive"]["name"]])}
    return entry


def placed_elsewhere(away: list[dict], instances: dict[str, dict]) -> list[dict]:
    """The absent items of `away` (workstations that live on another host) to plan here: those whose
    instance on this host is managed, archived like a leaver's. An unmanaged instance of that name, or
    none, is left alone (and not refused: it is not this host's member)."""
    return [ws for ws in away if ws["name"] in instances and is_managed(instances[ws["name"]])]


def unlisted(instances: dict[str, dict], names: set[str]) -> list[str]:
    """Workstations here that no item names: managed by gpulab, not archives, not in `names` (the host's
    workstations and those placed elsewhere). A member deleted from the inventory instead of set to
    state absent leaves one, still running with its network and ports."""
    return sorted(
        n
        for n, i in instances.items()
        if is_managed(i) and TAG_ARCHIVED not in (i.get("config") or {}) and n not in names
    )


def is_change(entry: dict) -> bool:
    return bool(entry["actions"])


# ---- /etc/subuid and /etc/subgid --------------------------------------------------------------------------


def delegated(text: str, ident: int, owners: tuple[str, ...] = ("root", "0")) -> bool:
    """Whether a subid file (owner:start:count lines) delegates `ident` to LXD's user (root)."""
    for line in text.splitlines():
        parts = line.strip().split(":")
        if len(parts) != 3 or parts[0] not in owners or not (parts[1].isdigit() and parts[2].isdigit()):
            continue
        start, count = int(parts[1]), int(parts[2])
        if start <= ident < start + count:
            return True
    return False


def missing_subids(text: str, idents: list[int]) -> list[int]:
    return sorted({i for i in idents if not delegated(text, i)})


# ---- inside the container -------------------------------------------------------------------------------

# One exec per running container, read-only: prints `key=value` lines compared with expected_digest().
DIGEST_SCRIPT = r"""
U="$1"; H="/home/$1"
F='h() { if [ -f "$1" ] && [ ! -L "$1" ]; then sha256sum "$1" | cut -d" " -f1; else echo -; fi; }
s() { stat -c "%a %u %g" "$1" 2>/dev/null || echo -; }'
eval "$F"
echo "passwd=$(getent passwd "$U" | cut -d: -f3,4,6,7)"
echo "groups=$(id -Gn "$U" 2>/dev/null | tr ' ' '\n' | grep -vx "$(id -gn "$U" 2>/dev/null)" | sort | tr '\n' ' ')"
# Her home may be an NFS export, where root in here is just another uid (no capability crosses the
# wire): her files are read as her.
ids=$(getent passwd "$U" | cut -d: -f3,4)
if [ -n "$ids" ] && setpriv --reuid="${ids%%:*}" --regid="${ids##*:}" --clear-groups sh -c "$F"'
echo "ssh_dir=$(s "$1/.ssh")"; echo "keys=$(h "$1/.ssh/authorized_keys") $(s "$1/.ssh/authorized_keys")"' sh "$H"
then :; else echo "ssh_dir=-"; echo "keys=- -"; fi
echo "sudoers=$(h "/etc/sudoers.d/gpulab-$U") $(s "/etc/sudoers.d/gpulab-$U")"
echo "sshd=$(h /etc/ssh/sshd_config.d/gpulab.conf) $(s /etc/ssh/sshd_config.d/gpulab.conf)"
echo "hostname=$(cat /etc/hostname 2>/dev/null)"
"""

# Fixes only the sections named in GL_FIX (account keys sudoers sshd hostname); content comes in the
# environment. Files are written to a temporary name and renamed, sudoers and sshd validated first.
PROVISION_SCRIPT = r"""
set -eu
U="$GL_USER"; H="/home/$GL_USER"
fix() { case " $GL_FIX " in *" $1 "*) return 0;; esac; return 1; }
if fix account; then
  if ! getent group "$GL_GID" >/dev/null; then
    if getent group "$U" >/dev/null; then groupmod -g "$GL_GID" "$U"; else groupadd -g "$GL_GID" "$U"; fi
  fi
  for g in $GL_GROUPS; do getent group "$g" >/dev/null || groupadd "$g"; done
  sup=$(printf '%s' "$GL_GROUPS" | tr ' ' ',')
  if getent passwd "$U" >/dev/null; then
    usermod -u "$GL_UID" -g "$GL_GID" -s "$GL_SHELL" -d "$H" -G "$sup" "$U"
  elif [ -n "$sup" ]; then
    useradd -m -u "$GL_UID" -g "$GL_GID" -s "$GL_SHELL" -d "$H" -G "$sup" "$U"
  else
    useradd -m -u "$GL_UID" -g "$GL_GID" -s "$GL_SHELL" -d "$H" "$U"
  fi
fi
if fix keys; then
  [ -d "$H" ] || install -d -m 750 -o "$GL_UID" -g "$GL_GID" "$H"
  K='set -e; H="$1"
  [ ! -L "$H/.ssh" ] || rm -f "$H/.ssh"
  install -d -m 700 -o "$GL_UID" -g "$GL_GID" "$H/.ssh"
  t=$(mktemp "$H/.ssh/.authorized_keys.XXXXXX")
  printf "%s" "$GL_KEYS" > "$t"; chown "$GL_UID:$GL_GID" "$t"; chmod 600 "$t"
  mv -f "$t" "$H/.ssh/authorized_keys"'
  # As her first: on an NFS home root in here is just another uid. As root second: that repairs a
  # local home where root owns her .ssh (which she cannot chown back).
  setpriv --reuid="$GL_UID" --regid="$GL_GID" --clear-groups sh -c "$K" keys "$H" 2>/dev/null || sh -c "$K" keys "$H"
fi
if fix sudoers; then
  command -v visudo >/dev/null || { echo "sudo is not installed in the image" >&2; exit 3; }
  t=$(mktemp /etc/sudoers.d/.gpulab.XXXXXX)
  printf '%s' "$GL_SUDOERS" > "$t"; chmod 440 "$t"
  visudo -cqf "$t" || { rm -f "$t"; echo "sudoers entry failed visudo -c" >&2; exit 3; }
  mv -f "$t" "/etc/sudoers.d/gpulab-$U"
fi
if fix sshd; then
  install -d -m 755 /etc/ssh/sshd_config.d
  t=$(mktemp /etc/ssh/sshd_config.d/.gpulab.XXXXXX)
  printf '%s' "$GL_SSHD" > "$t"; chmod 644 "$t"
  d=/etc/ssh/sshd_config.d/gpulab.conf
  [ ! -e "$d" ] || cp -p "$d" "$d.bak"
  mv -f "$t" "$d"
  # sshd -t needs host keys, which a fresh image may only generate when ssh.service first starts.
  if command -v sshd >/dev/null && ls /etc/ssh/ssh_host_*_key >/dev/null 2>&1 && ! sshd -t; then
    if [ -e "$d.bak" ]; then mv -f "$d.bak" "$d"; else rm -f "$d"; fi
    echo "sshd -t failed with the gpulab drop-in (previous one restored)" >&2; exit 3
  fi
  rm -f "$d.bak"
  systemctl try-reload-or-restart ssh.service >/dev/null 2>&1 || true
fi
if fix hostname; then
  printf '%s\n' "$GL_HOSTNAME" > /etc/hostname
  hostname "$GL_HOSTNAME" 2>/dev/null || true
fi
echo ok
"""


def sudoers_line(username: str) -> str:
    return f"{username} ALL=(ALL:ALL) NOPASSWD: ALL\n"


def authorized_keys(keys: list[str]) -> str:
    return "".join(k + "\n" for k in keys)


def _sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def expected_digest(ws: dict) -> dict[str, str]:
    u = ws["user"]
    ids = f"{u['uid']} {u['gid']}"
    return {
        "passwd": f"{u['uid']}:{u['gid']}:/home/{u['name']}:{u['shell']}",
        "groups": "".join(g + " " for g in sorted(u["groups"])),
        "ssh_dir": f"700 {ids}",
        "keys": f"{_sha(authorized_keys(u['ssh_keys']))} 600 {ids}",
        "sudoers": f"{_sha(sudoers_line(u['name']))} 440 0 0",
        "sshd": f"{_sha(SSHD_CONFIG)} 644 0 0",
        "hostname": ws["name"],
    }


def parse_digest(stdout: str) -> dict[str, str]:
    out = {}
    for line in stdout.splitlines():
        key, sep, value = line.partition("=")
        if sep:
            out[key.strip()] = value
    return out


# Digest key -> provisioning section that fixes it.
_SECTION = {"passwd": "account", "groups": "account", "ssh_dir": "keys", "keys": "keys", "sudoers": "sudoers",
            "sshd": "sshd", "hostname": "hostname"}  # fmt: skip


def drift(ws: dict, digest: dict[str, str]) -> list[str]:
    """Provisioning sections whose state inside differs from the desired one (in a fixed order)."""
    want = expected_digest(ws)
    sections = {_SECTION[k] for k, v in want.items() if digest.get(k) != v}
    return [s for s in ("account", "keys", "sudoers", "sshd", "hostname") if s in sections]


def provision_env(ws: dict, sections: list[str]) -> dict[str, str]:
    u = ws["user"]
    return {
        "GL_FIX": " ".join(sections),
        "GL_USER": u["name"],
        "GL_UID": str(u["uid"]),
        "GL_GID": str(u["gid"]),
        "GL_SHELL": u["shell"],
        "GL_GROUPS": " ".join(u["groups"]),
        "GL_KEYS": authorized_keys(u["ssh_keys"]),
        "GL_SUDOERS": sudoers_line(u["name"]),
        "GL_SSHD": SSHD_CONFIG,
        "GL_HOSTNAME": ws["name"],
    }
