# Copyright: (c) 2026, GPU Lab Fleet maintainers
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Pure logic of gpulab.fleet.ldap_users: validate the desired list, normalise what LDAP returned,
and plan the adds, modifies and deletes. No ldap3 and no Ansible here, so it is unit-testable.

Normalised form (both ldap3 get_info modes give the same): {lower-case attribute: sorted list of str};
bytes are decoded, ints become str, scalars become one-element lists, sshPublicKey values have their
whitespace normalised, objectClass values are lower-cased. Values are compared as sets (LDAP keeps no
order).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from ansible_collections.gpulab.fleet.plugins.module_utils.validation import (
    ID_MAX,
    USERNAME_RE,
    PlanError,
    normalize_ssh_key,
    ssh_key_problem,
    username_problem,
)

PEOPLE_ATTRIBUTES = [
    "objectClass",
    "uid",
    "cn",
    "sn",
    "givenName",
    "mail",
    "uidNumber",
    "gidNumber",
    "homeDirectory",
    "loginShell",
    "sshPublicKey",
]
GROUP_ATTRIBUTES = ["objectClass", "cn", "gidNumber", "memberUid"]
PEOPLE_FILTER = "(objectClass=posixAccount)"
GROUPS_FILTER = "(objectClass=posixGroup)"
USER_CLASSES = ["inetOrgPerson", "posixAccount"]
KEY_CLASS = "ldapPublicKey"
GROUP_CLASSES = ["posixGroup"]
# Attributes ldap_users owns on a person entry (lower-case -> LDAP spelling). objectClass and uid (the
# RDN) are handled separately.
MANAGED = {
    a.lower(): a
    for a in ["cn", "sn", "givenName", "mail", "uidNumber", "gidNumber", "homeDirectory", "loginShell", "sshPublicKey"]
}
MAX_ID = ID_MAX  # a user's or a group's uidNumber/gidNumber (groups may be below ID_MIN)
MAIL_RE = re.compile(r"^[^@\s]+@[^@\s]+$")


@dataclass
class Op:
    """One LDAP operation. kind: add (attributes), modify (changes) or delete."""

    kind: str
    item: str  # "user alice" / "group gpu": names the item in errors
    dn: str
    attributes: dict = field(default_factory=dict)
    changes: list = field(default_factory=list)  # [(attribute, 'add'|'delete'|'replace', [values])]


@dataclass
class Plan:
    ops: list[Op] = field(default_factory=list)
    summary: dict = field(default_factory=dict)
    before: dict = field(default_factory=dict)
    after: dict = field(default_factory=dict)


# ---- normalisation -------------------------------------------------------------------------------


def _text(value) -> str:
    if isinstance(value, (bytes, bytearray)):
        return bytes(value).decode("utf-8", "replace")
    return str(value)


def normalize_attributes(attrs: dict) -> dict[str, list[str]]:
    """LDAP attributes as returned by ldap3 (either get_info mode) -> normalised form."""
    out: dict[str, list[str]] = {}
    for name, value in attrs.items():
        values = value if isinstance(value, (list, tuple, set)) else [value]
        key = name.lower()
        texts = [_text(v) for v in values if v is not None and v != ""]
        if key == "sshpublickey":
            texts = [normalize_ssh_key(t) for t in texts]
        elif key == "objectclass":
            texts = [t.lower() for t in texts]
        if texts:
            out[key] = sorted(set(out.get(key, [])) | set(texts))
    return out


def rdn_value(dn: str) -> str:
    """'uid=alice,ou=people,...' -> 'alice' (escapes are left as they are; valid names have none)."""
    first = re.split(r"(?<!\\),", dn, maxsplit=1)[0]
    return first.split("=", 1)[1] if "=" in first else first


def index_entries(entries: list[tuple[str, dict]], key_attr: str) -> dict[str, tuple[str, dict]]:
    """{lower-case name: (dn, normalised attrs)}; the name is key_attr if single, else the RDN value."""
    out = {}
    for dn, attrs in entries:
        norm = normalize_attributes(attrs)
        values = norm.get(key_attr, [])
        name = values[0] if len(values) == 1 else rdn_value(dn)
        out[name.lower()] = (dn, norm)
    return out


# ---- validation ----------------------------------------------------------------------------------


def _id_problem(value) -> str | None:
    if isinstance(value, bool) or not isinstance(value, int):
        return f"{value!r} is not an integer"
    if not 1 <= value <= MAX_ID:
        return f"{value} is out of range 1-{MAX_ID}"
    return None


def group_name_problem(name) -> str | None:
    if not isinstance(name, str) or not USERNAME_RE.match(name) or name.endswith("-"):
        return f"{name!r} is not a valid group name (lower-case letter first, then a-z 0-9 '-', at most 31 chars)"
    return None


def validate(users: list[dict], groups: list[dict], private_groups: bool = True) -> list[str]:
    """Every problem of the desired lists, each naming the item, the field and the value."""
    problems: list[str] = []
    seen_names: dict[str, int] = {}
    seen_uids: dict[int, str] = {}
    for i, user in enumerate(users):
        name = user.get("name")
        problem = username_problem(name)
        if problem:
            problems.append(f"users[{i}]: name: {problem}")
            continue
        label = f"user {name}"
        if name in seen_names:
            problems.append(f"{label}: name: listed twice (users[{seen_names[name]}] and users[{i}])")
        seen_names[name] = i
        if user.get("state", "present") != "present":
            continue
        if user.get("uid") is None:
            problems.append(f"{label}: uid: required when state is present")
        else:
            problem = _id_problem(user["uid"])
            if problem:
                problems.append(f"{label}: uid: {problem}")
            elif user["uid"] in seen_uids:
                problems.append(f"{label}: uid: {user['uid']} is also the uid of user {seen_uids[user['uid']]}")
            else:
                seen_uids[user["uid"]] = name
        if user.get("gid") is not None and _id_problem(user["gid"]):
            problems.append(f"{label}: gid: {_id_problem(user['gid'])}")
        for fld in ("home", "shell"):
            value = user.get(fld)
            if value is not None and (not value.startswith("/") or any(c in value for c in "\n\0 ")):
                problems.append(f"{label}: {fld}: {value!r} is not an absolute path without spaces")
        if user.get("mail") is not None and not MAIL_RE.match(user["mail"]):
            problems.append(f"{label}: mail: {user['mail']!r} is not a mail address")
        full_name = user.get("full_name")
        if full_name is not None and (not full_name.strip() or "\n" in full_name):
            problems.append(f"{label}: full_name: {full_name!r} must be one non-empty line")
        for k, key in enumerate(user.get("ssh_keys") or []):
            problem = ssh_key_problem(key)
            if problem:
                problems.append(f"{label}: ssh_keys[{k}]: {problem}")
        for group in user.get("groups") or []:
            problem = group_name_problem(group)
            if problem:
                problems.append(f"{label}: groups: {problem}")
    seen_groups: dict[str, int] = {}
    for i, group in enumerate(groups):
        name = group.get("name")
        problem = group_name_problem(name)
        if problem:
            problems.append(f"groups[{i}]: name: {problem}")
            continue
        if name in seen_groups:
            problems.append(f"group {name}: name: listed twice (groups[{seen_groups[name]}] and groups[{i}])")
        seen_groups[name] = i
        if private_groups and name in seen_names:
            problems.append(f"group {name}: name: is also a user, whose private group it would be")
        if group.get("state", "present") == "present":
            problem = _id_problem(group.get("gid"))
            if problem:
                problems.append(f"group {name}: gid: {problem}")
    return problems


# ---- desired entries -----------------------------------------------------------------------------


def desired_user(user: dict) -> dict[str, list[str]]:
    """Normalised managed attributes of a present user (mail only when given: else unmanaged)."""
    name = user["name"]
    full_name = " ".join((user.get("full_name") or name).split())
    words = full_name.split(" ")
    keys: list[str] = []
    for key in user.get("ssh_keys") or []:
        norm = normalize_ssh_key(key)
        if norm not in keys:
            keys.append(norm)
    attrs = {
        "cn": [full_name],
        "sn": [words[-1]],
        "givenname": [" ".join(words[:-1])] if len(words) > 1 else [],
        "uidnumber": [str(user["uid"])],
        "gidnumber": [str(user["gid"] if user.get("gid") is not None else user["uid"])],
        "homedirectory": [user.get("home") or f"/home/{name}"],
        "loginshell": [user.get("shell") or "/bin/bash"],
        "sshpublickey": keys,
    }
    if user.get("mail") is not None:
        attrs["mail"] = [user["mail"]]
    return attrs


def _add_attributes(desired: dict[str, list[str]], classes: list[str], extra: dict) -> dict:
    attrs = {"objectClass": classes, **extra}
    for key, values in desired.items():
        if values:
            attrs[MANAGED.get(key, key)] = values
    return attrs


def _attribute_changes(current: dict, desired: dict) -> list[tuple[str, str, list]]:
    changes = []
    for key, values in desired.items():
        have = current.get(key, [])
        if set(have) == set(values):
            continue
        if values:
            changes.append((MANAGED.get(key, key), "replace", values))
        else:
            changes.append((MANAGED.get(key, key), "delete", []))
    return changes


def _class_changes(current: dict, want_keys: bool, base_classes: list[str]) -> list[tuple[str, str, list]]:
    have = set(current.get("objectclass", []))
    wanted = [*base_classes, KEY_CLASS] if want_keys else base_classes
    missing = [c for c in wanted if c.lower() not in have]
    changes = [("objectClass", "add", missing)] if missing else []
    if not want_keys and KEY_CLASS.lower() in have:
        # Dropped together with the last key: with the MUST variant of the schema a keyless
        # ldapPublicKey entry is invalid.
        changes.append(("objectClass", "delete", [KEY_CLASS]))
    return changes


def _view(attrs: dict) -> dict:
    return {k: v for k, v in sorted(attrs.items()) if v}


# ---- planning ------------------------------------------------------------------------------------


def plan(
    users: list[dict],
    groups: list[dict],
    current_people: list[tuple[str, dict]],
    current_groups: list[tuple[str, dict]],
    people_dn: str,
    groups_dn: str,
    private_groups: bool = True,
    prune: str = "none",
    purge: bool = False,
    nologin_shell: str = "/usr/sbin/nologin",
) -> Plan:
    """Operations that make LDAP match the desired lists. Raises PlanError on conflicts with LDAP.

    Users in the list with state absent are disabled (purge=False) or deleted with their private
    group (purge=True); people not in the list are left alone, disabled (prune=disable) or deleted
    (prune=delete). Disabled = no SSH keys, nologin shell, member of no group.
    """
    people = index_entries(current_people, "uid")
    have_groups = index_entries(current_groups, "cn")
    result = Plan(summary={k: [] for k in ("added", "modified", "disabled", "deleted")})
    group_summary: dict[str, list] = {k: [] for k in ("added", "modified", "deleted")}

    present = {u["name"]: u for u in users if u.get("state", "present") == "present"}
    listed = {u["name"] for u in users}
    absent_listed = {u["name"] for u in users if u.get("state") == "absent" and u["name"] in people}
    unlisted = {n for n in people if n not in listed} if prune != "none" else set()
    remove = absent_listed | unlisted
    delete_users = (absent_listed if purge else set()) | (unlisted if prune == "delete" else set())
    disable_users = remove - delete_users

    desired_users = {name: desired_user(u) for name, u in present.items()}

    # Desired groups: declared ones, then private groups of present users.
    want_groups: dict[str, str] = {}  # name -> gid
    delete_groups: set[str] = set()
    for g in groups:
        if g.get("state", "present") == "present":
            want_groups[g["name"]] = str(g["gid"])
        elif g["name"] in have_groups:
            delete_groups.add(g["name"])
    if private_groups:
        for name, attrs in desired_users.items():
            want_groups[name] = attrs["gidnumber"][0]
        for name in delete_users:
            grp = have_groups.get(name)
            if grp and grp[1].get("gidnumber") == people[name][1].get("gidnumber"):
                delete_groups.add(name)

    # Conflicts with what is in LDAP: uid/gid numbers used twice in the final state, unknown groups.
    problems = []
    final_uids: dict[str, str] = {n: e[1].get("uidnumber", [""])[0] for n, e in people.items()}
    for n in delete_users:
        final_uids.pop(n, None)
    final_uids.update({n: a["uidnumber"][0] for n, a in desired_users.items()})
    problems += _duplicates(final_uids, present, "uid", "user")
    final_gids: dict[str, str] = {n: e[1].get("gidnumber", [""])[0] for n, e in have_groups.items()}
    for n in delete_groups:
        final_gids.pop(n, None)
    final_gids.update(want_groups)
    problems += _duplicates(final_gids, set(want_groups), "gid", "group")
    for name, user in present.items():
        for group in user.get("groups") or []:
            if group not in final_gids:
                problems.append(f"user {name}: groups: {group!r} is neither in groups nor in LDAP under {groups_dn}")
    if problems:
        raise PlanError(problems)

    # Order: deletes first (they free numbers the unique overlay would otherwise refuse), then group
    # adds, user adds/modifies/disables, group membership changes.
    deletes: list[Op] = []
    members_of: dict[str, set[str]] = {}
    for name, user in present.items():
        for group in user.get("groups") or []:
            members_of.setdefault(group, set()).add(name)
    managed_names = listed | remove
    later: list[Op] = []
    for name, gid in want_groups.items():
        members = sorted(members_of.get(name, set()))
        if name not in have_groups:
            attrs = {"objectClass": GROUP_CLASSES, "cn": [name], "gidNumber": [gid]}
            if members:
                attrs["memberUid"] = members
            result.ops.append(Op("add", f"group {name}", f"cn={name},{groups_dn}", attributes=attrs))
            group_summary["added"].append(name)
            result.before.setdefault("groups", {})[name] = None
            result.after.setdefault("groups", {})[name] = _view({"gidnumber": [gid], "memberuid": members})
    for name, (dn, cur) in have_groups.items():
        if name in delete_groups:
            continue
        changes = []
        if name in want_groups and cur.get("gidnumber") != [want_groups[name]]:
            changes.append(("gidNumber", "replace", [want_groups[name]]))
        have_members = set(cur.get("memberuid", []))
        # memberUid of users this run does not manage is left as it is.
        want_members = {m for m in have_members if m.lower() not in managed_names} | members_of.get(name, set())
        add, drop = sorted(want_members - have_members), sorted(have_members - want_members)
        if add:
            changes.append(("memberUid", "add", add))
        if drop:
            changes.append(("memberUid", "delete", drop))
        if changes:
            later.append(Op("modify", f"group {name}", dn, changes=changes))
            group_summary["modified"].append(name)
            after = dict(cur, memberuid=sorted(want_members))
            if name in want_groups:
                after["gidnumber"] = [want_groups[name]]
            result.before.setdefault("groups", {})[name] = _view(_group_view(cur))
            result.after.setdefault("groups", {})[name] = _view(_group_view(after))

    # Users.
    for name, desired in desired_users.items():
        if name not in people:
            extra = {"uid": [name]}
            classes = [*USER_CLASSES, KEY_CLASS] if desired["sshpublickey"] else list(USER_CLASSES)
            attrs = _add_attributes(desired, classes, extra)
            result.ops.append(Op("add", f"user {name}", f"uid={name},{people_dn}", attributes=attrs))
            result.summary["added"].append(name)
            result.before.setdefault("users", {})[name] = None
            result.after.setdefault("users", {})[name] = _view(desired)
            continue
        dn, cur = people[name]
        changes = _class_changes(cur, bool(desired["sshpublickey"]), USER_CLASSES)
        changes += _attribute_changes(cur, desired)
        if changes:
            result.ops.append(Op("modify", f"user {name}", dn, changes=changes))
            result.summary["modified"].append(name)
            _record(result, name, cur, desired)
    for name in sorted(disable_users):
        dn, cur = people[name]
        desired = {"loginshell": [nologin_shell], "sshpublickey": []}
        changes = _class_changes(cur, False, []) + _attribute_changes(cur, desired)
        if changes:
            result.ops.append(Op("modify", f"user {name}", dn, changes=changes))
            result.summary["disabled"].append(name)
            _record(result, name, cur, desired)
    for name in sorted(delete_users):
        dn, cur = people[name]
        deletes.append(Op("delete", f"user {name}", dn))
        result.summary["deleted"].append(name)
        result.before.setdefault("users", {})[name] = _view(_user_view(cur))
        result.after.setdefault("users", {})[name] = None
    for name in sorted(delete_groups):
        dn, cur = have_groups[name]
        deletes.append(Op("delete", f"group {name}", dn))
        group_summary["deleted"].append(name)
        result.before.setdefault("groups", {})[name] = _view(_group_view(cur))
        result.after.setdefault("groups", {})[name] = None
    result.ops = deletes + result.ops + later
    result.summary = {"users": result.summary, "groups": group_summary}
    return result


def _user_view(attrs: dict) -> dict:
    return {k: v for k, v in attrs.items() if k in MANAGED}


def _group_view(attrs: dict) -> dict:
    return {k: v for k, v in attrs.items() if k in ("gidnumber", "memberuid")}


def _record(result: Plan, name: str, cur: dict, desired: dict) -> None:
    before = _user_view(cur)
    after = dict(before)
    after.update(desired)
    result.before.setdefault("users", {})[name] = _view(before)
    result.after.setdefault("users", {})[name] = _view(after)


def _duplicates(final: dict[str, str], desired_names, what: str, kind: str) -> list[str]:
    """Problems for desired items whose number another item also has in the final state."""
    by_number: dict[str, list[str]] = {}
    for name, number in final.items():
        if number:
            by_number.setdefault(number, []).append(name)
    problems = []
    for number, names in sorted(by_number.items()):
        if len(names) < 2:
            continue
        for name in sorted(n for n in names if n in desired_names):
            others = ", ".join(sorted(n for n in names if n != name))
            problems.append(f"{kind} {name}: {what} {number} is already used by {others} (in LDAP or this list)")
    return problems
