# Copyright: (c) 2026, GPU Lab Fleet maintainers
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Pure planning for gpulab.fleet.port_map: validate maps, render the owned chains, diff, build payloads.

The module owns three chains per prefix (P):
- nat    P-DNAT: DNAT rules, jumped to from PREROUTING (remote clients) and OUTPUT (the host itself);
- nat    P-POST: MASQUERADE for hairpin (bridge -> own host port) and for 127.0.0.1 clients;
- filter P-FWD:  ACCEPT for exactly the DNATed connections, jumped to from FORWARD.
A chain is rewritten as a whole (`:P-X - [0:0]`, `-F P-X`, `-A P-X ...`) only when its rules differ;
everything else in the ruleset is left alone, and jump rules are inserted only when missing.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass, field

from ansible_collections.gpulab.fleet.plugins.module_utils.iptables import Rule, Table, format_rule
from ansible_collections.gpulab.fleet.plugins.module_utils.validation import port_problem

PROTOS = ("tcp", "udp")
DEFAULT_RESERVED_PORTS = (22,)
LOCALNET = "127.0.0.0/8"
# Owners end up unquoted-safe in a comment ("owner=NAME"): no spaces, quotes or shell specials.
OWNER_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._@+-]{0,63}$")
# Chain names are at most 28 characters; the longest suffix is "-DNAT".
PREFIX_RE = re.compile(r"^[A-Za-z][A-Za-z0-9_]{0,22}$")
MAP_FIELDS = ("owner", "proto", "host_port", "dest_ip", "dest_port")


@dataclass(frozen=True, order=True)
class PortMap:
    proto: str
    host_port: int
    owner: str
    dest_ip: str
    dest_port: int


@dataclass(frozen=True)
class Settings:
    prefix: str = "FLEET"
    listen_addresses: tuple[str, ...] = ()  # empty: every local address (addrtype LOCAL)
    bridge_subnet: str | None = None
    localhost: bool = False

    @property
    def dnat_chain(self) -> str:
        return f"{self.prefix}-DNAT"

    @property
    def post_chain(self) -> str:
        return f"{self.prefix}-POST"

    @property
    def fwd_chain(self) -> str:
        return f"{self.prefix}-FWD"

    @property
    def tag(self) -> str:
        """Comment of the rules that belong to no single owner (jumps, the localnet RETURN)."""
        return f"gpulab.fleet port_map {self.prefix}"


# ---------------------------------------------------------------------------------------- validation


def _ipv4(value: object) -> ipaddress.IPv4Address | None:
    try:
        return ipaddress.IPv4Address(str(value))
    except ValueError:
        return None


def _where(index: int, item: object) -> str:
    owner = item.get("owner") if isinstance(item, dict) else None
    return f"maps[{index}] (owner {owner!r})" if owner is not None else f"maps[{index}]"


def validate(
    maps: list,
    *,
    prefix: str = "FLEET",
    listen_addresses: list | None = None,
    bridge_subnet: str | None = None,
    localhost: bool = False,
    reserved_ports: list | None = None,
) -> tuple[list[PortMap], Settings, list[str]]:
    """Check the whole input; returns (maps, settings, problems). Nothing may be applied if problems."""
    problems: list[str] = []
    if not isinstance(prefix, str) or not PREFIX_RE.match(prefix):
        problems.append(f"prefix: {prefix!r} must be a letter then up to 22 letters, digits or '_'")
    listen: list[str] = []
    for i, addr in enumerate(listen_addresses or []):
        ip = _ipv4(addr)
        if ip is None:
            problems.append(f"listen_addresses[{i}]: {addr!r} is not an IPv4 address")
        else:
            listen.append(str(ip))
    if localhost and listen and "127.0.0.1" not in listen:
        listen.append("127.0.0.1")  # the promise "127.0.0.1 works" holds with explicit addresses too
    subnet = None
    if bridge_subnet not in (None, ""):
        try:
            subnet = str(ipaddress.IPv4Network(str(bridge_subnet), strict=False))
        except ValueError:
            problems.append(f"bridge_subnet: {bridge_subnet!r} is not an IPv4 network (e.g. 10.231.0.0/24)")
    reserved = set()
    for i, port in enumerate(DEFAULT_RESERVED_PORTS if reserved_ports is None else reserved_ports):
        reason = port_problem(port)
        if reason:
            problems.append(f"reserved_ports[{i}]: {reason}")
        else:
            reserved.add(int(port))

    result: list[PortMap] = []
    seen: dict[tuple[str, int], str] = {}
    if not isinstance(maps, list):
        problems.append(f"maps: must be a list, got {type(maps).__name__}")
        maps = []
    for i, item in enumerate(maps):
        where = _where(i, item)
        if not isinstance(item, dict):
            problems.append(f"{where}: must be a dict with {', '.join(MAP_FIELDS)}, got {item!r}")
            continue
        unknown = sorted(set(item) - set(MAP_FIELDS))
        if unknown:
            problems.append(f"{where}: unknown field(s) {', '.join(unknown)}")
        item_problems = []
        owner = item.get("owner")
        if not isinstance(owner, str) or not OWNER_RE.match(owner):
            item_problems.append(f"owner {owner!r} must be 1-64 of A-Z a-z 0-9 . _ @ + - (letter or digit first)")
        proto = item.get("proto", "tcp")
        if proto not in PROTOS:
            item_problems.append(f"proto {proto!r} must be one of {', '.join(PROTOS)}")
        host_port = item.get("host_port")
        reason = port_problem(host_port)
        if reason:
            item_problems.append(f"host_port: {reason}")
        elif int(host_port) in reserved:
            item_problems.append(f"host_port {int(host_port)} is reserved (reserved_ports: {sorted(reserved)})")
        dest_ip = _ipv4(item.get("dest_ip"))
        if dest_ip is None:
            item_problems.append(f"dest_ip {item.get('dest_ip')!r} is not an IPv4 address")
        dest_port = item.get("dest_port", 22)
        reason = port_problem(dest_port)
        if reason:
            item_problems.append(f"dest_port: {reason}")
        problems.extend(f"{where}: {p}" for p in item_problems)
        if item_problems:
            continue
        key = (proto, int(host_port))
        if key in seen:
            problems.append(f"{where}: host_port {key[1]}/{proto} is already mapped by {seen[key]}")
            continue
        seen[key] = where
        result.append(PortMap(proto, int(host_port), owner, str(dest_ip), int(dest_port)))
    settings = Settings(prefix=prefix, listen_addresses=tuple(listen), bridge_subnet=subnet, localhost=bool(localhost))
    return sorted(result), settings, problems


# ---------------------------------------------------------------------------------------- rendering


def _comment(text: str) -> Rule:
    return ("-m", "comment", "--comment", text)


def _owner(m: PortMap) -> Rule:
    return _comment(f"owner={m.owner}")


def desired_chains(maps: list[PortMap], s: Settings) -> dict[str, dict[str, list[Rule]]]:
    """{table: {owned chain: rules}} exactly as iptables-save prints them (order: sorted maps)."""
    dnat: list[Rule] = []
    if not s.localhost:
        # Without the localhost promise, 127.0.0.1:PORT on the host stays the host's own business.
        dnat.append(("-d", LOCALNET, *_comment(s.tag), "-j", "RETURN"))
    post: list[Rule] = []
    fwd: list[Rule] = []
    for m in maps:
        to = ("-j", "DNAT", "--to-destination", f"{m.dest_ip}:{m.dest_port}")
        port = ("-m", m.proto, "--dport", str(m.host_port))
        if s.listen_addresses:
            dnat.extend(("-d", f"{a}/32", "-p", m.proto, *port, *_owner(m), *to) for a in s.listen_addresses)
        else:
            dnat.append(("-p", m.proto, "-m", "addrtype", "--dst-type", "LOCAL", *port, *_owner(m), *to))
        dest = ("-d", f"{m.dest_ip}/32", "-p", m.proto, "-m", m.proto, "--dport", str(m.dest_port))
        dnatted = ("-m", "conntrack", "--ctstate", "DNAT")
        if s.bridge_subnet:
            post.append(("-s", s.bridge_subnet, *dest, *dnatted, *_owner(m), "-j", "MASQUERADE"))
        if s.localhost:
            post.append(("-s", LOCALNET, *dest, *dnatted, *_owner(m), "-j", "MASQUERADE"))
        # Matches both directions of exactly this mapped connection (the conntrack entry, not the packet).
        fwd.append(
            (
                "-p",
                m.proto,
                *dnatted,
                "--ctreplsrc",
                m.dest_ip,
                "--ctorigdstport",
                str(m.host_port),
                "--ctreplsrcport",
                str(m.dest_port),
                *_owner(m),
                "-j",
                "ACCEPT",
            )
        )
    return {"nat": {s.dnat_chain: dnat, s.post_chain: post}, "filter": {s.fwd_chain: fwd}}


def jump_rules(s: Settings) -> dict[str, list[tuple[str, Rule]]]:
    """{table: [(built-in chain, jump rule)]}: how traffic enters the owned chains."""

    def jump(target: str) -> Rule:
        return (*_comment(s.tag), "-j", target)

    return {
        "nat": [
            ("PREROUTING", jump(s.dnat_chain)),
            ("OUTPUT", jump(s.dnat_chain)),
            ("POSTROUTING", jump(s.post_chain)),
        ],
        "filter": [("FORWARD", jump(s.fwd_chain))],
    }


# ---------------------------------------------------------------------------------------- planning


@dataclass
class Plan:
    payloads: dict[str, str] = field(default_factory=dict)  # table -> iptables-restore --noflush payload
    changed_chains: list[str] = field(default_factory=list)
    missing_jumps: list[str] = field(default_factory=list)  # "table/CHAIN"
    before: str = ""
    after: str = ""

    @property
    def changed(self) -> bool:
        return bool(self.payloads)


def _owned_text(tables: dict[str, dict[str, list[Rule] | None]], jumps: dict[str, list[tuple[str, Rule]]]) -> str:
    """What the module owns, in iptables-save form, for diffs: present jumps first, then chains."""
    out = []
    for table in sorted(tables):
        out.append(f"*{table}")
        out.extend(format_rule(chain, rule) for chain, rule in jumps.get(table, []))
        for chain, rules in tables[table].items():
            if rules is None:
                continue
            out.append(f":{chain} - [0:0]")
            out.extend(format_rule(chain, r) for r in rules)
    return "\n".join(out) + "\n"


def plan(current: dict[str, Table], maps: list[PortMap], s: Settings) -> Plan:
    """Compare the owned chains and jumps in `current` with the desired ones; one payload per changed table."""
    desired = desired_chains(maps, s)
    jumps = jump_rules(s)
    result = Plan()
    before_chains: dict[str, dict[str, list[Rule] | None]] = {}
    before_jumps: dict[str, list[tuple[str, Rule]]] = {}
    for table in sorted(desired):
        have = current.get(table, Table())
        before_chains[table] = {chain: have.chain(chain) for chain in desired[table]}
        before_jumps[table] = [(c, r) for c, r in jumps[table] if r in (have.chain(c) or [])]
        lines: list[str] = []
        for chain, rules in desired[table].items():
            if have.chain(chain) == rules:
                continue
            result.changed_chains.append(f"{table}/{chain}")
            lines += [f":{chain} - [0:0]", f"-F {chain}", *(format_rule(chain, r) for r in rules)]
        for builtin, rule in jumps[table]:
            if (builtin, rule) not in before_jumps[table]:
                result.missing_jumps.append(f"{table}/{builtin}")
                lines.append(format_rule(builtin, rule, verb="-I", position=1))
        if lines:
            result.payloads[table] = "\n".join([f"*{table}", *lines, "COMMIT"]) + "\n"
    result.before = _owned_text(before_chains, before_jumps)
    result.after = _owned_text(desired, jumps)
    return result


def persist_payload(maps: list[PortMap], s: Settings) -> str:
    """The owned chains as a `--noflush` restore file (no jumps: the boot script checks those with -C)."""
    out = []
    for table, chains in sorted(desired_chains(maps, s).items()):
        out.append(f"*{table}")
        for chain, rules in chains.items():
            out += [f":{chain} - [0:0]", f"-F {chain}", *(format_rule(chain, r) for r in rules)]
        out.append("COMMIT")
    return "\n".join(out) + "\n"
