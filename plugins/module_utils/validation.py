# Copyright: (c) 2026, GPU Lab Fleet maintainers
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Validation shared by the modules and the user model: usernames, SSH public keys, ports.

Each check returns None when the value is fine and a short reason otherwise, so callers can
collect every problem (naming the item and field) before changing anything.
"""

from __future__ import annotations

import base64
import binascii
import re
import struct

# POSIX-portable login names as useradd accepts them by default, kept short enough for an LXD
# instance name (max 63, no underscore allowed there) and an LDAP RDN without escaping.
USERNAME_RE = re.compile(r"^[a-z][a-z0-9-]{0,30}$")

# A workstation archived by lxd_workstations is renamed NAME-archived-STAMP: a member named like that
# would take over another's archive.
ARCHIVE_MARK = "-archived-"

# A member's uid and gid: from 1000 (below are the system's own ids) to 2^31-1 (LDAP servers and POSIX
# tools that read uidNumber as a signed 32-bit number). The preflight and the modules share this range.
ID_MIN, ID_MAX = 1000, 2**31 - 1

# The example inventory's placeholder passwords contain this: a lab copied from it must not run with them.
PLACEHOLDER_MARK = "change-me"

# Names a lab member must never get: system accounts and names that would collide with tooling.
RESERVED_USERNAMES = frozenset(
    {
        "root",
        "daemon",
        "bin",
        "sys",
        "sync",
        "games",
        "man",
        "lp",
        "mail",
        "news",
        "uucp",
        "proxy",
        "www-data",
        "backup",
        "list",
        "irc",
        "gnats",
        "nobody",
        "systemd-network",
        "systemd-resolve",
        "systemd-timesync",
        "messagebus",
        "sshd",
        "admin",
        "ubuntu",
        "debian",
        "lxd",
        "ansible",
        "fleet",
        "nfsnobody",
        "openldap",
        "_apt",
        "halt",
        "shutdown",
        "operator",
    }
)

SSH_KEY_TYPES = frozenset(
    {
        "ssh-ed25519",
        "ssh-rsa",
        "ecdsa-sha2-nistp256",
        "ecdsa-sha2-nistp384",
        "ecdsa-sha2-nistp521",
        "sk-ssh-ed25519@openssh.com",
        "sk-ecdsa-sha2-nistp256@openssh.com",
    }
)


class PlanError(ValueError):
    """The desired state cannot be reached from what exists (conflicts found while planning, before any
    change); `problems` names each item and field. Every planner raises this one."""

    def __init__(self, problems: list[str]):
        super().__init__("; ".join(problems))
        self.problems = problems


def username_problem(name: object) -> str | None:
    """Why `name` cannot be a lab username, or None."""
    if not isinstance(name, str):
        return f"must be a string, got {name!r}"
    if name in RESERVED_USERNAMES:
        return f"{name!r} is reserved"
    if not USERNAME_RE.match(name):
        return f"{name!r} is not a valid username (lower-case letter first, then a-z 0-9 '-', at most 31 chars)"
    if name.endswith("-"):
        return f"{name!r} must not end with '-'"
    return archive_mark_problem(name)


def archive_mark_problem(name: str) -> str | None:
    """Why `name` cannot be a member's or a workstation's (it would pass for an archive), or None."""
    if ARCHIVE_MARK in name:
        return f"{name!r} contains {ARCHIVE_MARK!r}, which marks archived workstations"
    return None


def id_problem(value: object) -> str | None:
    """Why `value` cannot be a member's uid or gid, or None."""
    if isinstance(value, bool) or not isinstance(value, int):
        return f"{value!r} is not a whole number"
    if not ID_MIN <= value <= ID_MAX:
        return f"{value} is not a number in {ID_MIN}-{ID_MAX}"
    return None


def ssh_key_problem(key: object) -> str | None:
    """Why `key` is not a single plain OpenSSH public key line, or None.

    Accepted: 'TYPE BASE64 [comment]'. Rejected: options (command=..., from=...), newlines, a body
    that is not base64 or whose embedded type differs from the declared one.
    """
    if not isinstance(key, str):
        return f"must be a string, got {type(key).__name__}"
    if "\n" in key or "\r" in key or "\x00" in key:
        return "must be one line (contains a newline or NUL)"
    parts = key.strip().split(None, 2)
    if len(parts) < 2:
        return f"expected 'TYPE BASE64 [comment]', got {key[:40]!r}"
    ktype, body = parts[0], parts[1]
    if ktype not in SSH_KEY_TYPES:
        if "=" in ktype or "," in ktype:
            return f"key options are not allowed ({ktype[:40]!r})"
        return f"unknown key type {ktype[:40]!r}"
    try:
        blob = base64.b64decode(body, validate=True)
    except (binascii.Error, ValueError):
        return f"{ktype} key body is not valid base64"
    if len(blob) < 4:
        return f"{ktype} key body is too short"
    (length,) = struct.unpack(">I", blob[:4])
    embedded = blob[4 : 4 + length].decode("ascii", "replace")
    if embedded != ktype:
        return f"key body is of type {embedded[:40]!r}, not {ktype!r}"
    return None


def normalize_ssh_key(key: str) -> str:
    """Canonical form for comparing keys: single spaces, no trailing whitespace."""
    return " ".join(key.split())


def port_problem(port: object) -> str | None:
    """Why `port` is not a TCP/UDP port number (1-65535), or None."""
    if isinstance(port, bool):
        return f"{port!r} is not a port number"
    if isinstance(port, str) and port.isdigit():
        port = int(port)
    if not isinstance(port, int):
        return f"{port!r} is not a port number"
    if not 1 <= port <= 65535:
        return f"{port} is out of range 1-65535"
    return None


def secret_problem(value: object) -> str | None:
    """Why `value` cannot serve as a password (unset, empty, the example's placeholder), or None."""
    if value is None or not isinstance(value, str) or not value:
        return "is not set"
    if PLACEHOLDER_MARK in value.lower():
        return f"is still a placeholder (it contains {PLACEHOLDER_MARK!r})"
    return None
