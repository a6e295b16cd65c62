# Copyright: (c) 2026, GPU Lab Fleet maintainers
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The lab's user model: `fleet_users` merged over `fleet_user_defaults`, validated and normalised.

Pure Python (no Ansible import), used by the fleet_preflight action and the fleet filters.

- normalize_users(): defaults + users + settings -> (normalised users, problems). Every problem is
  reported, each naming the user, the field and the value, so an admin fixes the inventory in one go.
- check_placement(): the parts that need the inventory: hosts that exist, GPU requests against the
  hosts' GPU facts.
- Ports are derived, never stored: a user's block of host ports starts at
  port_base + (uid - uid_base) * ports_per_user; slot 0 is SSH, slot 1 remote desktop (reserved even
  when desktop is off, so toggling it moves nothing), extra ports follow in list order.
- Slicing helpers turn normalised users into the item lists of the resource modules, and the
  per-user SSH config snippet. They are deliberately thin: every value is visibly derived.
"""

from __future__ import annotations

import difflib
import re
from dataclasses import dataclass, field

from ansible_collections.gpulab.fleet.plugins.module_utils import gpu
from ansible_collections.gpulab.fleet.plugins.module_utils.units import SizeError, format_binary, parse_size
from ansible_collections.gpulab.fleet.plugins.module_utils.validation import (
    ID_MIN,
    id_problem,
    normalize_ssh_key,
    port_problem,
    ssh_key_problem,
    username_problem,
)

USER_FIELDS = (
    "name",
    "uid",
    "gid",
    "full_name",
    "mail",
    "ssh_keys",
    "host",
    "gpus",
    "cpu",
    "memory",
    "disk",
    "quota",
    "desktop",
    "extra_ports",
    "state",
    "purge",
)
# Identity fields make no sense as a default shared by every user.
NOT_DEFAULTABLE = frozenset({"name", "uid", "gid"})
STATES = ("present", "stopped", "absent")
PROTOS = ("tcp", "udp")
SSH_CONTAINER_PORT = 22
DESKTOP_CONTAINER_PORT = 3389  # xrdp
FIRST_EXTRA_SLOT = 2  # slot 0: SSH, slot 1: remote desktop
ADMIN_SSH_PORT = 22

# Built-in values of the fleet_* settings (the roles' defaults must agree).
DEFAULT_SETTINGS = {
    "uid_base": 10000,
    "port_base": 20000,
    "ports_per_user": 10,
    "reserved_ports": [],
    "admin_ssh_port": ADMIN_SSH_PORT,
}

# Built-in field defaults; fleet_user_defaults overrides them, each user overrides both.
BUILTIN_USER_DEFAULTS = {
    "full_name": None,  # -> name
    "mail": None,
    "ssh_keys": [],
    "host": None,
    "gpus": "none",
    "cpu": None,
    "memory": None,
    "disk": None,
    "quota": None,
    "desktop": False,
    "extra_ports": [],
    "state": "present",
    "purge": False,
}

_CPU_SET_RE = re.compile(r"^\d+(-\d+)?(,\d+(-\d+)?)*$")
_TRUE = frozenset({"true", "yes", "on", "1"})
_FALSE = frozenset({"false", "no", "off", "0"})


class FleetModelError(ValueError):
    """The model is invalid; .problems lists every problem (one line each)."""

    def __init__(self, problems: list[str]):
        super().__init__("invalid fleet user model:\n" + "\n".join(problems))
        self.problems = list(problems)


@dataclass(frozen=True)
class Settings:
    uid_base: int = DEFAULT_SETTINGS["uid_base"]
    port_base: int = DEFAULT_SETTINGS["port_base"]
    ports_per_user: int = DEFAULT_SETTINGS["ports_per_user"]
    reserved_ports: frozenset[int] = field(default_factory=frozenset)
    admin_ssh_port: int = ADMIN_SSH_PORT

    @property
    def reserved(self) -> frozenset[int]:
        """Host ports no user may get: 22, the admin SSH port and fleet_reserved_ports."""
        return self.reserved_ports | {ADMIN_SSH_PORT, self.admin_ssh_port}

    def block(self, uid: int) -> tuple[int, int]:
        start = self.port_base + (uid - self.uid_base) * self.ports_per_user
        return start, start + self.ports_per_user - 1


# ------------------------------------------------------------------------------------------ helpers


def _int(value: object) -> int | None:
    """An integer from an int or a digit string (templating may yield strings); None otherwise."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, str) and value.strip().isdigit():
        return int(value.strip())
    return None


def parse_bool(value: object) -> bool | None:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in _TRUE | _FALSE:
        return value.strip().lower() in _TRUE
    return None


def did_you_mean(word: str, choices) -> str:
    close = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _port_range(value: object) -> list[int] | None:
    """A reserved-port entry: 8080, '8080' or '8000-8099'."""
    single = _int(value)
    if single is not None:
        return [single]
    if isinstance(value, str):
        m = re.fullmatch(r"\s*(\d+)\s*-\s*(\d+)\s*", value)
        if m and int(m.group(1)) <= int(m.group(2)):
            return list(range(int(m.group(1)), int(m.group(2)) + 1))
    return None


def parse_settings(raw: dict | None) -> tuple[Settings, list[str]]:
    """fleet_* settings (keys without the 'fleet_' prefix) -> (Settings, problems)."""
    raw = {k: v for k, v in (raw or {}).items() if v is not None}
    problems: list[str] = []
    for key in raw:
        if key not in DEFAULT_SETTINGS:
            problems.append(f"settings: unknown setting fleet_{key}{did_you_mean(key, DEFAULT_SETTINGS)}")
    values = {}
    for key in ("uid_base", "port_base", "ports_per_user", "admin_ssh_port"):
        value = raw.get(key, DEFAULT_SETTINGS[key])
        number = _int(value)
        if number is None:
            problems.append(f"settings: fleet_{key}: {value!r} is not a whole number")
            number = DEFAULT_SETTINGS[key]
        values[key] = number
    if values["uid_base"] < ID_MIN:
        problems.append(
            f"settings: fleet_uid_base: {values['uid_base']} is below {ID_MIN} "
            f"(workstations and homes need ids from {ID_MIN})"
        )
    if values["ports_per_user"] < FIRST_EXTRA_SLOT:
        problems.append(
            f"settings: fleet_ports_per_user: {values['ports_per_user']} is too small "
            f"(SSH and remote desktop need {FIRST_EXTRA_SLOT})"
        )
        values["ports_per_user"] = DEFAULT_SETTINGS["ports_per_user"]
    for key in ("port_base", "admin_ssh_port"):
        why = port_problem(values[key])
        if why:
            problems.append(f"settings: fleet_{key}: {why}")
    reserved: set[int] = set()
    entries = raw.get("reserved_ports", [])
    if not isinstance(entries, list):
        problems.append(f"settings: fleet_reserved_ports: {entries!r} is not a list")
        entries = []
    for entry in entries:
        ports = _port_range(entry)
        bad = [p for p in ports or [] if port_problem(p)]
        if ports is None or bad:
            problems.append(f"settings: fleet_reserved_ports: {entry!r} is not a port or a range like '8000-8099'")
            continue
        reserved.update(ports)
    settings = Settings(reserved_ports=frozenset(reserved), **values)
    return settings, problems


# ------------------------------------------------------------------------------------ field parsers
# Each returns (normalised value, problem or None).


def _parse_str(value, *, allow_none: bool):
    if value is None and allow_none:
        return None, None
    if not isinstance(value, str) or not value.strip():
        return None, f"{value!r} is not a non-empty string"
    if any(c in value for c in "\n\r\x00"):
        return None, f"{value!r} must be one line"
    return value.strip(), None


def _parse_mail(value):
    mail, why = _parse_str(value, allow_none=True)
    if why:
        return None, why
    if mail is not None and not re.fullmatch(r"[^@\s]+@[^@\s]+", mail):
        return None, f"{value!r} is not a mail address"
    return mail, None


def _parse_keys(value):
    if isinstance(value, str):  # one key given as a string is a common shorthand
        value = [value]
    if not isinstance(value, list):
        return [], [f"{value!r} is not a list of public keys"]
    keys, problems, seen = [], [], set()
    for i, key in enumerate(value):
        why = ssh_key_problem(key)
        if why:
            problems.append(f"key #{i + 1}: {why}")
            continue
        canonical = normalize_ssh_key(key)
        body = canonical.split()[1]
        if body in seen:
            problems.append(f"key #{i + 1}: duplicate of an earlier key")
            continue
        seen.add(body)
        keys.append(canonical)
    return keys, problems


def _parse_gpus(value):
    """'none' | 'all' | list of indices, UUIDs or PCI addresses; [] means 'none'."""
    if value is None or value == [] or (isinstance(value, str) and value.strip().lower() == "none"):
        return "none", None
    if isinstance(value, str) and value.strip().lower() == "all":
        return "all", None
    if not isinstance(value, list):
        return None, f"{value!r} must be 'none', 'all' or a list of GPU indices, UUIDs or PCI addresses"
    ids = []
    for item in value:
        index = _int(item)
        if index is not None:
            ids.append(index)
        elif isinstance(item, str) and item.strip() and " " not in item.strip():
            ids.append(item.strip())
        else:
            return None, f"{item!r} is not a GPU index, UUID or PCI address"
    if len({_gpu_id(i) for i in ids}) != len(ids):
        return None, f"{value!r} lists a GPU twice"
    return ids, None


def _parse_cpu(value):
    """A count (4) or a CPU set ('0-3,8'); LXD reads a bare number as a count, so sets stay strings."""
    if value is None or (isinstance(value, str) and value.strip().lower() == "none"):
        return None, None
    count = _int(value)
    if count is not None:
        return (count, None) if count >= 1 else (None, f"{value!r} must be at least 1")
    if isinstance(value, str):
        text = value.replace(" ", "")
        ranges = [part.split("-") for part in text.split(",")] if _CPU_SET_RE.match(text) else None
        if ranges and all(int(r[0]) <= int(r[-1]) for r in ranges):
            return text, None
    return None, f"{value!r} is neither a CPU count nor a CPU set like '0-3,8'"


def _parse_size_field(value, *, name: str):
    try:
        size = parse_size(value, allow_none=True)
    except SizeError as exc:
        return None, str(exc)
    if size == 0:
        return None, f"{value!r} must be more than 0 (use 'none' for no {'quota' if name == 'quota' else 'limit'})"
    return size, None


def _parse_extra_ports(value):
    """Container ports: 8888, '8888', '8888/udp' or {port: 8888, proto: udp}; proto defaults to tcp."""
    if value is None:
        return [], []
    if not isinstance(value, list):
        return [], [f"{value!r} is not a list of container ports"]
    ports, problems = [], []
    for i, item in enumerate(value):
        port, proto = item, "tcp"
        if isinstance(item, dict):
            unknown = sorted(set(item) - {"port", "proto"})
            if unknown:
                problems.append(
                    f"#{i + 1}: unknown key {unknown[0]!r}{did_you_mean(unknown[0], ('port', 'proto'))} in {item!r}"
                )
                continue
            port, proto = item.get("port"), item.get("proto", "tcp")
        elif isinstance(item, str) and "/" in item:
            port, proto = item.split("/", 1)
        proto = str(proto).strip().lower()
        why = port_problem(port.strip() if isinstance(port, str) else port)
        if why:
            problems.append(f"#{i + 1}: {why}")
            continue
        if proto not in PROTOS:
            problems.append(f"#{i + 1}: protocol {proto!r} is not tcp or udp")
            continue
        entry = {"port": _int(port), "proto": proto}
        if entry in ports:
            problems.append(f"#{i + 1}: {entry['port']}/{proto} is listed twice")
            continue
        ports.append(entry)
    return ports, problems


# ------------------------------------------------------------------------------------ normalisation


def _label(index: int, raw: object) -> str:
    name = raw.get("name") if isinstance(raw, dict) else None
    return f"user {name!r}" if isinstance(name, str) and name else f"user #{index + 1}"


def _unknown_fields(item: dict, allowed) -> list[str]:
    return [f"{key}: unknown field{did_you_mean(str(key), allowed)}" for key in item if key not in allowed]


def check_defaults(defaults: object) -> list[str]:
    if defaults is None:
        return []
    if not isinstance(defaults, dict):
        return [f"defaults: fleet_user_defaults must be a mapping, got {defaults!r}"]
    allowed = [f for f in USER_FIELDS if f not in NOT_DEFAULTABLE]
    problems = []
    for key in defaults:
        if key in NOT_DEFAULTABLE:
            problems.append(f"defaults: {key}: cannot be a default (it is personal to each user)")
        elif key not in allowed:
            problems.append(f"defaults: {key}: unknown field{did_you_mean(str(key), allowed)}")
    return problems


def _normalize_one(raw: dict, defaults: dict, settings: Settings) -> tuple[dict, list[tuple[str, str]]]:
    """One user -> (normalised dict, [(field, problem)]). Fields with problems are left None."""
    merged = {**BUILTIN_USER_DEFAULTS, **{k: v for k, v in defaults.items() if k not in NOT_DEFAULTABLE}, **raw}
    problems: list[tuple[str, str]] = []
    user: dict = {}

    def put(field_name, parsed):
        value, why = parsed
        if why:
            problems.append((field_name, why))
        user[field_name] = value

    name = merged.get("name")
    why = username_problem(name) if name is not None else "missing (every user needs a name)"
    if why:
        problems.append(("name", why))
    user["name"] = name if not why else None

    uid = _int(merged.get("uid"))
    if "uid" not in merged:
        problems.append(("uid", "missing (every user needs a uid)"))
    elif uid is None:
        problems.append(("uid", f"{merged['uid']!r} is not a whole number"))
    elif uid < settings.uid_base:
        problems.append(("uid", f"{uid} is below fleet_uid_base {settings.uid_base}"))
        uid = None
    elif id_problem(uid):
        problems.append(("uid", id_problem(uid)))
        uid = None
    user["uid"] = uid

    gid_given = merged.get("gid") is not None
    gid = _int(merged["gid"]) if gid_given else uid
    if gid_given and id_problem(merged["gid"] if gid is None else gid):
        problems.append(("gid", id_problem(merged["gid"] if gid is None else gid)))
        gid = None
    user["gid"] = gid
    user["gid_explicit"] = gid_given

    full_name, why = _parse_str(merged.get("full_name"), allow_none=True)
    if why:
        problems.append(("full_name", why))
    user["full_name"] = full_name or (name if isinstance(name, str) else None)
    put("mail", _parse_mail(merged.get("mail")))

    keys, key_problems = _parse_keys(merged.get("ssh_keys"))
    problems += [("ssh_keys", p) for p in key_problems]
    user["ssh_keys"] = keys

    if merged.get("host") is None:
        problems.append(
            ("host", "missing (the GPU host of the workstation; set it per user or in fleet_user_defaults)")
        )
        user["host"] = None
    else:
        put("host", _parse_str(merged["host"], allow_none=False))

    put("gpus", _parse_gpus(merged.get("gpus")))
    put("cpu", _parse_cpu(merged.get("cpu")))
    for size_field in ("memory", "disk", "quota"):
        put(size_field, _parse_size_field(merged.get(size_field), name=size_field))
    for flag in ("desktop", "purge"):
        value = parse_bool(merged.get(flag))
        if value is None:
            problems.append((flag, f"{merged.get(flag)!r} is not a boolean"))
        user[flag] = bool(value)

    state = merged.get("state")
    if state not in STATES:
        problems.append(("state", f"{state!r} is not one of {', '.join(STATES)}{did_you_mean(str(state), STATES)}"))
        state = None
    user["state"] = state
    if state == "present" and not keys and not key_problems:
        problems.append(("ssh_keys", "no key: the user could not log in (give at least one public key)"))
    if user["purge"] and state != "absent":
        problems.append(("purge", f"true only makes sense with state absent (state is {state!r})"))

    extra, extra_problems = _parse_extra_ports(merged.get("extra_ports"))
    problems += [("extra_ports", p) for p in extra_problems]
    taken = {SSH_CONTAINER_PORT: "SSH", **({DESKTOP_CONTAINER_PORT: "remote desktop"} if user["desktop"] else {})}
    for entry in extra:
        if entry["proto"] == "tcp" and entry["port"] in taken:
            problems.append(
                ("extra_ports", f"{entry['port']}/tcp is already exposed as the {taken[entry['port']]} port")
            )
    user["extra_ports"] = extra
    user["ports"] = _derive_ports(user, extra, settings, problems) if uid is not None else None
    return user, problems


def _derive_ports(user: dict, extra: list[dict], settings: Settings, problems) -> dict | None:
    uid = user["uid"]
    start, end = settings.block(uid)
    used = FIRST_EXTRA_SLOT + len(extra)
    if used > settings.ports_per_user:
        problems.append(
            (
                "extra_ports",
                f"{len(extra)} extra ports do not fit the block of fleet_ports_per_user={settings.ports_per_user} "
                f"(at most {settings.ports_per_user - FIRST_EXTRA_SLOT})",
            )
        )
        return None
    if end > 65535:
        problems.append(("uid", f"{uid} gives the port block {start}-{end}, beyond 65535"))
        return None
    ports = {
        "block": [start, end],
        "ssh": start,
        "desktop": start + 1 if user["desktop"] else None,
        "extra": [{**entry, "host_port": start + FIRST_EXTRA_SLOT + i} for i, entry in enumerate(extra)],
    }
    for host_port in host_ports(ports):
        if host_port in settings.reserved:
            problems.append(("uid", f"{uid} gives host port {host_port}, which is reserved"))
    return ports


def host_ports(ports: dict) -> list[int]:
    """The host ports a user's `ports` actually maps (SSH, desktop when on, extras)."""
    used = [ports["ssh"]] + ([ports["desktop"]] if ports["desktop"] else [])
    return used + [e["host_port"] for e in ports["extra"]]


def _key_hint(key: str) -> str:
    """'ssh-ed25519 ...p5Hh5R alice@lab': enough of a key line to recognise it in a message."""
    parts = key.split(None, 2)
    return " ".join([parts[0], "..." + parts[1][-8:], *parts[2:]])


def _check_unique(users: list[dict], labels: list[str], positions: list[int]) -> list[str]:
    problems = []
    seen_name: dict[str, int] = {}
    seen_uid: dict[int, str] = {}
    for index, user, label in zip(positions, users, labels, strict=True):
        if user["name"] is not None:
            if user["name"] in seen_name:
                first = seen_name[user["name"]]
                problems.append(f"{label}: name: {user['name']!r} is listed twice (users #{first} and #{index})")
            else:
                seen_name[user["name"]] = index
        if user["uid"] is not None:
            if user["uid"] in seen_uid:
                problems.append(f"{label}: uid: {user['uid']} is also the uid of {seen_uid[user['uid']]}")
            else:
                seen_uid[user["uid"]] = label

    # A gid may be shared only when every user holding it sets it explicitly: the default gid is the
    # user private group, which must not be shared by accident.
    by_gid: dict[int, list[int]] = {}
    for i, user in enumerate(users):
        if user["gid"] is not None:
            by_gid.setdefault(user["gid"], []).append(i)
    for gid, holders in by_gid.items():
        if len(holders) < 2:
            continue
        implicit = [i for i in holders if not users[i]["gid_explicit"]]
        if implicit:
            owner = implicit[0]
            for i in holders:
                # the same uid twice is already reported as a duplicate uid
                if users[i]["uid"] != users[owner]["uid"]:
                    problems.append(
                        f"{labels[i]}: gid: {gid} is the private group of {labels[owner]} "
                        "(sharing a gid requires every user to set it explicitly)"
                    )

    # Blocks never overlap for distinct uids; this catches overlap through duplicate uids only once.
    owner_of_port: dict[int, tuple[str, int]] = {}
    for user, label in zip(users, labels, strict=True):
        if not user["ports"]:
            continue
        for port in host_ports(user["ports"]):
            other = owner_of_port.get(port)
            if other and other[1] != user["uid"]:
                problems.append(f"{label}: ports: host port {port} is also used by {other[0]}")
            owner_of_port.setdefault(port, (label, user["uid"]))

    # The same key in two accounts lets one person log into the other's workstation.
    key_owner: dict[str, str] = {}
    for user, label in zip(users, labels, strict=True):
        for key in user["ssh_keys"]:
            body = key.split()[1]
            if body in key_owner and key_owner[body] != label:
                problems.append(f"{label}: ssh_keys: key {_key_hint(key)} is also a key of {key_owner[body]}")
            key_owner.setdefault(body, label)
    return problems


def normalize_users(
    users: object, defaults: object = None, settings: Settings | dict | None = None
) -> tuple[list[dict], list[str]]:
    """Merge, validate and normalise; returns (users, problems). Users are usable only without problems.

    Normalised user: name, uid, gid, gid_explicit, full_name, mail, ssh_keys (canonical lines), host,
    gpus ('none' | 'all' | [ids]), cpu (count int | set str | None), memory/disk/quota (bytes | None),
    desktop, extra_ports ([{port, proto}]), state, purge, ports ({block, ssh, desktop, extra}).
    """
    normalised, _labels, problems = _normalize_all(users, defaults, settings)
    return normalised, problems


def _normalize_all(users: object, defaults: object, settings) -> tuple[list[dict], list[str], list[str]]:
    problems: list[str] = []
    if not isinstance(settings, Settings):
        settings, setting_problems = parse_settings(settings)
        problems += setting_problems
    problems += check_defaults(defaults)
    defaults = defaults if isinstance(defaults, dict) else {}
    if users is None:
        users = []
    if not isinstance(users, list):
        return [], [], [*problems, f"fleet_users must be a list, got {type(users).__name__}"]

    normalised, labels, positions = [], [], []
    for index, raw in enumerate(users):
        label = _label(index, raw)
        if not isinstance(raw, dict):
            problems.append(f"{label}: must be a mapping of fields, got {raw!r}")
            continue
        problems += [f"{label}: {p}" for p in _unknown_fields(raw, USER_FIELDS)]
        user, user_problems = _normalize_one(raw, defaults, settings)
        problems += [f"{label}: {field_name}: {why}" for field_name, why in user_problems]
        normalised.append(user)
        labels.append(label)
        positions.append(index + 1)
    problems += _check_unique(normalised, labels, positions)
    return normalised, labels, problems


# -------------------------------------------------------------------------------- inventory checks


def _gpu_id(ident: int | str) -> str:
    """A requested GPU in a comparable form, to spot the same GPU listed twice without facts."""
    if isinstance(ident, int) or ident.isdigit():
        return str(int(ident))
    return gpu.normalize_pci(ident) if gpu.is_pci_address(ident) else ident.lower()


def _clean_facts(facts: list) -> list[dict]:
    """GPU facts as gpu.resolve_request expects them, whatever form a hand-written fact uses."""
    cleaned = []
    for fact in facts:
        if not isinstance(fact, dict):
            continue
        pci = fact.get("pci_bus_id")
        cleaned.append(
            {
                "index": _int(fact.get("index")),
                "uuid": fact.get("uuid"),
                "pci_bus_id": gpu.normalize_pci(pci) if isinstance(pci, str) and gpu.is_pci_address(pci) else pci,
            }
        )
    return cleaned


def check_placement(
    users: list[dict],
    hosts: object = None,
    gpu_facts: dict | None = None,
    *,
    hosts_label: str = "the inventory",
    labels: list[str] | None = None,
) -> tuple[list[str], list[str]]:
    """Hosts that exist and GPU requests that a host can satisfy -> (problems, warnings).

    hosts: the allowed GPU host names (None: not checked). gpu_facts: host -> list of GPU dicts
    (index, uuid, pci_bus_id) as gpu_facts returns them; a host missing from it has unknown GPUs,
    whose requests are not checked (a warning); a host with an empty list has no GPUs at all.
    """
    problems: list[str] = []
    warnings: list[str] = []
    gpu_facts = gpu_facts or {}
    known_hosts = None if hosts is None else set(hosts)
    unchecked: dict[str, list[str]] = {}
    labels = labels or [f"user {u['name']!r}" for u in users]
    for user, label in zip(users, labels, strict=True):
        host = user.get("host")
        if host is None:
            continue
        if known_hosts is not None and host not in known_hosts:
            choices = sorted(known_hosts)
            problems.append(
                f"{label}: host: {host!r} is not a host of {hosts_label}{did_you_mean(host, choices)}"
                f" (known: {', '.join(choices) or 'none'})"
            )
            continue
        gpus = user.get("gpus")
        if gpus in (None, "none"):
            continue
        facts = gpu_facts.get(host)
        if facts is None:
            unchecked.setdefault(host, []).append(label.removeprefix("user "))
            continue
        if not facts:
            problems.append(f"{label}: gpus: {gpus!r} requested, but host {host!r} has no GPUs")
            continue
        if gpus == "all":
            continue
        # the same resolver as lxd_workstations, so preflight accepts exactly what the module will
        facts = _clean_facts(facts)
        chosen: list[dict] = []
        for ident in gpus:
            try:
                (found,) = gpu.resolve_request([ident], facts, label)
            except gpu.GpuError:
                listing = ", ".join(f"{g['index']} ({g['uuid']}, {g['pci_bus_id']})" for g in facts)
                problems.append(f"{label}: gpus: {ident!r} is not a GPU of host {host!r} (it has: {listing})")
                continue
            if found in chosen:
                problems.append(f"{label}: gpus: {ident!r} is GPU {found['index']} of host {host!r} again")
            chosen.append(found)
    for host, names in unchecked.items():
        warnings.append(
            f"GPUs of host {host!r} are unknown (no gpulab_gpus facts); requests of {', '.join(names)} not checked"
        )
    return problems, warnings


@dataclass
class Model:
    users: list[dict]
    problems: list[str]
    warnings: list[str]


def build_model(
    users: object,
    defaults: object = None,
    settings: Settings | dict | None = None,
    *,
    hosts: object = None,
    gpu_facts: dict | None = None,
    hosts_label: str = "the inventory",
) -> Model:
    """Everything preflight checks, in one call."""
    normalised, labels, problems = _normalize_all(users, defaults, settings)
    placement, warnings = check_placement(normalised, hosts, gpu_facts, hosts_label=hosts_label, labels=labels)
    return Model(normalised, problems + placement, warnings)


def require_valid(users: object, defaults: object = None, settings=None, **kwargs) -> list[dict]:
    """Normalised users, or FleetModelError listing every problem."""
    model = build_model(users, defaults, settings, **kwargs)
    if model.problems:
        raise FleetModelError(model.problems)
    return model.users


# ------------------------------------------------------------------------------ per-resource slices
# Inputs are normalised users (the output of normalize_users / fleet_preflight). Option names follow
# the resource modules; keep them aligned when those modules change.


def _check_normalised(users: object) -> list[dict]:
    if not isinstance(users, list) or any(not isinstance(u, dict) or "ports" not in u for u in users):
        raise FleetModelError(["expected normalised users (the output of the fleet_users filter or fleet_preflight)"])
    return users


def host_users(users: list[dict], host: str) -> list[dict]:
    """The normalised users whose workstation lives on `host`."""
    return [u for u in _check_normalised(users) if u["host"] == host]


def users_elsewhere(users: list[dict], host: str) -> list[dict]:
    """The normalised users whose workstation lives on another host than `host` (present or absent)."""
    return [u for u in _check_normalised(users) if u["host"] != host]


def workstation_items(users: list[dict], host: str) -> list[dict]:
    """lxd_workstations `workstations` items for one GPU host.

    State present -> started. Limits not set are left out (the module then removes them). The role
    adds what the model does not know: the home and shared `disks`, image, profiles, and the remote
    desktop (desktop is not a workstation option).
    """
    items = []
    for u in host_users(users, host):
        limits = {"cpu": None if u["cpu"] is None else str(u["cpu"])}
        limits.update({f: None if u[f] is None else format_binary(u[f]) for f in ("memory", "disk")})
        items.append(
            {
                "name": u["name"],
                "user": {"name": u["name"], "uid": u["uid"], "gid": u["gid"], "ssh_keys": u["ssh_keys"]},
                "limits": {k: v for k, v in limits.items() if v is not None},
                "gpus": u["gpus"],
                "state": "started" if u["state"] == "present" else u["state"],
                "purge": u["purge"],
            }
        )
    return items


def user_port_range(users: list[dict]) -> str:
    """The host ports a GPU host's firewall accepts for the members: 'FIRST-LAST' from the start of the
    lowest port block to the end of the highest (the blocks the preflight derived), 'none' without users."""
    blocks = [u["ports"]["block"] for u in _check_normalised(users)]
    if not blocks:
        return "none"
    return f"{min(b[0] for b in blocks)}-{max(b[1] for b in blocks)}"


def port_maps(users: list[dict], host: str, addresses: dict | None = None) -> list[dict]:
    """port_map items (owner, proto, host_port, dest_ip, dest_port) for one GPU host.

    Absent users get none (that is how a removed user's port closes). addresses: workstation name ->
    IPv4 (as lxd_workstations returns them); when given, users without an address are skipped;
    when None, dest_ip is None for the caller to fill in.
    """
    maps = []
    for u in host_users(users, host):
        if u["state"] == "absent":
            continue
        if addresses is not None and not addresses.get(u["name"]):
            continue
        dest_ip = addresses.get(u["name"]) if addresses is not None else None
        ports = u["ports"]
        pairs = [("tcp", ports["ssh"], SSH_CONTAINER_PORT)]
        if ports["desktop"]:
            pairs.append(("tcp", ports["desktop"], DESKTOP_CONTAINER_PORT))
        pairs += [(e["proto"], e["host_port"], e["port"]) for e in ports["extra"]]
        maps += [
            {"owner": u["name"], "proto": proto, "host_port": hp, "dest_ip": dest_ip, "dest_port": dp}
            for proto, hp, dp in pairs
        ]
    return maps


def purge_problems(items: list[dict]) -> list[str]:
    """The `purge` flags of role items ({name, state, purge}) that are wrong: not a boolean, or true
    for a user who is not absent. One line each, naming the user; empty when all are fine."""
    problems = []
    for item in items:
        raw = item.get("purge", False)
        purge = False if raw is None else parse_bool(raw)
        state = item.get("state") or "present"
        label = f"user {item.get('name')}: purge:"
        if purge is None:
            problems.append(f"{label} {raw} is not a boolean")
        elif purge and state != "absent":
            problems.append(f"{label} true only makes sense with state absent (state is {state})")
    return problems


def _purge_selection(users: list[dict], purge: bool) -> list[dict]:
    return [u for u in _check_normalised(users) if u["purge"] == purge]


def home_quota_properties(quota: str) -> dict[str, str]:
    """The ZFS properties of a home with this quota ('none' or a size): a refquota, so that her
    snapshots do not count against her (deleting files frees space at once; a restore never meets
    EDQUOT halfway), and quota none, which clears a quota that earlier versions set."""
    return {"refquota": quota, "quota": "none"}


def home_datasets(users: list[dict], purge: bool = False) -> list[dict]:
    """zfs_datasets `datasets` items for the homes (names relative to the homes parent).

    zfs_datasets has one module-wide `purge`, so the purge users are a separate call:
    purge=False gives every user except those with purge: true (absent ones are archived);
    purge=True gives only those (to pass with the module's purge: true).
    """
    return [
        {
            "name": u["name"],
            "properties": home_quota_properties("none" if u["quota"] is None else format_binary(u["quota"])),
            "owner": u["uid"],
            "group": u["gid"],
            "mode": "0700",
            "state": "absent" if u["state"] == "absent" else "present",
        }
        for u in _purge_selection(users, purge)
    ]


def ldap_users(users: list[dict], purge: bool = False) -> list[dict]:
    """ldap_users `users` items. Absent users are state absent: disabled by the module, deleted only
    in the purge call (purge=True selects the users with purge: true, as in home_datasets)."""
    items = []
    for u in _purge_selection(users, purge):
        item = {
            "name": u["name"],
            "uid": u["uid"],
            "gid": u["gid"],
            "full_name": u["full_name"],
            "ssh_keys": u["ssh_keys"],
            "state": "absent" if u["state"] == "absent" else "present",
        }
        if u["mail"] is not None:  # not given = not managed by ldap_users
            item["mail"] = u["mail"]
        items.append(item)
    return items


def held_leavers(users: list[dict], passed_hosts) -> list[str]:
    """The leavers (state absent) whose GPU host did not finish this run's leavers' pass (it failed, or
    --limit left it out): their containers may still run on their homes, so the storage server leaves
    those homes as they are this run (not archived, not destroyed) - see storage_users."""
    passed = set(passed_hosts or ())
    return [u["name"] for u in _check_normalised(users) if u["state"] == "absent" and u["host"] not in passed]


def storage_users(users: list[dict], held=()) -> list[dict]:
    """storage_server role `storage_server_users` items: every home, the purge ones flagged; the `held`
    leavers' homes are left out, which the role (zfs_datasets without prune) leaves as they are.

    The role takes one list and splits it into its two zfs_datasets calls itself (see home_datasets).
    """
    held = set(held or ())
    return [
        {
            "name": home["name"],
            "uid": home["owner"],
            "gid": home["group"],
            "quota": home["properties"]["refquota"],
            "state": home["state"],
            "purge": purge,
        }
        for purge in (False, True)
        for home in home_datasets(users, purge)
        if home["name"] not in held
    ]


def directory_users(users: list[dict]) -> list[dict]:
    """directory role `directory_users` items: every LDAP entry, the purge ones flagged (see ldap_users)."""
    return ldap_users(users) + [{**item, "purge": True} for item in ldap_users(users, purge=True)]


def ports_summary(users: list[dict]) -> dict[str, dict]:
    """name -> {host, ssh, desktop, extra: ['8888/tcp -> 20012']} for reports and docs."""
    return {
        u["name"]: {
            "host": u["host"],
            "ssh": u["ports"]["ssh"],
            "desktop": u["ports"]["desktop"],
            "extra": [f"{e['port']}/{e['proto']} -> {e['host_port']}" for e in u["ports"]["extra"]],
        }
        for u in _check_normalised(users)
    }


def _address_of(host: str, addresses: object) -> str:
    """HostName for a GPU host: addresses[host] may be an address or a hostvars-like mapping."""
    if not addresses or host not in addresses:
        return host
    entry = addresses[host]
    if isinstance(entry, str):
        return entry
    for key in ("fleet_public_address", "ansible_host"):
        try:
            value = entry.get(key)
        except AttributeError:
            return host
        if value:
            return str(value)
    return host


def ssh_config(user: dict, *, lab: str = "lab", addresses: object = None) -> str:
    """The ~/.ssh/config snippet for one user: `<lab>-<name>`, plus `<lab>-<name>-desktop` with a
    LocalForward of the remote desktop through SSH (local port = her desktop host port, so several
    labs' or users' tunnels never clash)."""
    alias = f"{lab}-{user['name']}"
    hostname = _address_of(user["host"], addresses)
    entry = [
        f"Host {alias}",
        f"    HostName {hostname}",
        f"    Port {user['ports']['ssh']}",
        f"    User {user['name']}",
    ]
    lines = [f"# {lab}: workstation of {user['name']} on {user['host']} (generated by gpulab.fleet)", *entry]
    if user["desktop"]:
        lines += [
            "",
            f"# remote desktop through SSH: ssh -N {alias}-desktop, then RDP to localhost:{user['ports']['desktop']}",
            f"Host {alias}-desktop",
            *entry[1:],
            f"    LocalForward {user['ports']['desktop']} localhost:{DESKTOP_CONTAINER_PORT}",
        ]
    return "\n".join(lines) + "\n"


def ssh_configs(users: list[dict], *, lab: str = "lab", addresses: object = None) -> dict[str, str]:
    """name -> snippet for every user who is not absent."""
    return {
        u["name"]: ssh_config(u, lab=lab, addresses=addresses)
        for u in _check_normalised(users)
        if u["state"] != "absent"
    }
