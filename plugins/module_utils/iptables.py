# Copyright: (c) 2026, GPU Lab Fleet maintainers
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""A small client for the iptables CLI: read a ruleset with iptables-save, write with iptables-restore.

python-iptables only drives the legacy backend, so the CLI is the one interface that works for both
backends (nft, the Debian 12 default, and legacy). Rules are compared as shlex token tuples of what
`iptables-save` prints: iptables normalises what it is given (adds `-m tcp`, reorders conntrack
options, quotes comments), so callers must render their rules in that printed form.
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Callable
from dataclasses import dataclass, field

BACKENDS = ("nft", "legacy")

Rule = tuple[str, ...]
# run(argv, data) -> (rc, stdout, stderr); AnsibleModule.run_command has a compatible shape.
Runner = Callable[..., tuple[int, str, str]]


class IptablesError(Exception):
    """An iptables command failed; carries its message."""


@dataclass
class Table:
    """One table of an iptables-save dump: chain policies ('-' for user chains) and rules in order."""

    policies: dict[str, str] = field(default_factory=dict)
    rules: dict[str, list[Rule]] = field(default_factory=dict)

    def chain(self, name: str) -> list[Rule] | None:
        """The chain's rules, or None when the chain does not exist."""
        if name not in self.policies:
            return None
        return self.rules.get(name, [])


def parse_save(text: str) -> dict[str, Table]:
    """Parse `iptables-save` output into {table: Table}. Rules become token tuples (after '-A CHAIN')."""
    tables: dict[str, Table] = {}
    current: Table | None = None
    for lineno, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("*"):
            current = tables.setdefault(line[1:], Table())
        elif line == "COMMIT":
            current = None
        elif current is None:
            raise IptablesError(f"iptables-save line {lineno} outside a table: {line!r}")
        elif line.startswith(":"):
            name, policy = line[1:].split()[:2]
            current.policies[name] = policy
            current.rules.setdefault(name, [])
        elif line.startswith("-A "):
            # iptables-save escapes ' as \' inside double quotes, which POSIX shlex keeps literally.
            tokens = [t.replace("\\'", "'") for t in shlex.split(line)]
            current.rules.setdefault(tokens[1], []).append(tuple(tokens[2:]))
        else:
            raise IptablesError(f"unexpected iptables-save line {lineno}: {line!r}")
    return tables


_PLAIN = re.compile(r"^[A-Za-z0-9_.,:/=@+!-]+$")


def quote(token: str) -> str:
    """Quote a token the way iptables-restore reads it (double quotes; it knows no single quotes)."""
    if _PLAIN.match(token):
        return token
    if '"' in token or "\\" in token or "\n" in token:
        raise ValueError(f"token cannot be written for iptables-restore: {token!r}")
    return f'"{token}"'


def format_rule(chain: str, rule: Rule, verb: str = "-A", position: int | None = None) -> str:
    """'-A CHAIN tok tok ...' (or '-I CHAIN 1 ...') as iptables-restore reads it."""
    head = [verb, chain] if position is None else [verb, chain, str(position)]
    return " ".join([*head, *(quote(t) for t in rule)])


class IptablesCli:
    """Runs iptables-save / iptables-restore of one backend (nft or legacy)."""

    def __init__(self, backend: str, run: Runner):
        if backend not in BACKENDS:
            raise ValueError(f"backend must be one of {', '.join(BACKENDS)}, got {backend!r}")
        self.backend = backend
        self._run = run

    @property
    def iptables(self) -> str:
        return f"iptables-{self.backend}"

    def _wait(self) -> list[str]:
        # Only the legacy backend takes the xtables lock; nft restores are transactions.
        return ["-w"] if self.backend == "legacy" else []

    def save(self) -> dict[str, Table]:
        rc, out, err = self._run([f"{self.iptables}-save"])
        if rc != 0:
            raise IptablesError(f"{self.iptables}-save failed (rc={rc}): {err.strip()}")
        return parse_save(out)

    def restore(self, payload: str, *, test: bool = False) -> None:
        """Apply (or with test=True only validate) a `--noflush` payload; one COMMIT is atomic."""
        argv = [f"{self.iptables}-restore", "--noflush", *self._wait()]
        if test:
            argv.append("--test")
        rc, out, err = self._run(argv, data=payload)
        if rc != 0:
            raise IptablesError(_explain(err or out, payload, rc))


def _explain(message: str, payload: str, rc: int) -> str:
    """iptables-restore names a line number; quote that payload line so the error is self-contained."""
    message = message.strip()
    found = re.search(r"line:? (\d+)", message)
    lines = payload.splitlines()
    if found and 0 < int(found.group(1)) <= len(lines):
        message += f" -- payload line {found.group(1)}: {lines[int(found.group(1)) - 1]}"
    return f"iptables-restore failed (rc={rc}): {message}"
