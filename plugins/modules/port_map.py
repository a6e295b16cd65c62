#!/usr/bin/python
# Copyright: (c) 2026, GPU Lab Fleet maintainers
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
---
module: port_map
short_description: Forward host ports to workstation containers with iptables chains the module owns
version_added: 0.1.0
author: GPU Lab Fleet maintainers (@gpulab)
description:
  - Declares B(all) port forwards of a host (for example each lab member's SSH port to her container) as one
    list and applies them atomically with C(iptables-restore --noflush), one restore per table.
  - "The module owns three chains per O(prefix) (default C(FLEET)): C(FLEET-DNAT) in the nat table (DNAT
    rules, jumped to from C(PREROUTING) for remote clients and C(OUTPUT) for the host itself),
    C(FLEET-POST) in the nat table (MASQUERADE for hairpin and 127.0.0.1 clients, jumped to from
    C(POSTROUTING)) and C(FLEET-FWD) in the filter table (ACCEPT for exactly the DNATed connections, both
    directions, jumped to from C(FORWARD))."
  - An owned chain is rewritten as a whole only when its rules differ from the desired ones; rules outside
    the owned chains are never touched, and each jump rule is inserted (at position 1) only when missing.
    A failing restore applies nothing, so the old rules stay exactly as they were.
  - Every rule carries a comment naming its owner (C(owner=alice)), so C(iptables -t nat -S FLEET-DNAT)
    tells an admin whose port it is. Rules that belong to no single owner carry
    C(gpulab.fleet port_map PREFIX).
  - Exclusive - a map missing from O(maps) disappears from the owned chains. An empty list empties them.
  - The whole input is validated before anything is changed; every problem names the map (index and
    owner), the field and the value.
options:
  maps:
    description:
      - The complete list of port forwards of this host.
    type: list
    elements: dict
    required: true
    suboptions:
      owner:
        description:
          - Whom the port belongs to, usually the lab username. Written into each rule's comment.
          - 1-64 characters of C(A-Z a-z 0-9 . _ @ + -), starting with a letter or digit.
        type: str
        required: true
      proto:
        description:
          - Transport protocol, C(tcp) or C(udp). (Checked by the module so the error names the owner.)
        type: str
        default: tcp
      host_port:
        description:
          - Port on the host (1-65535). Unique per protocol in the list; not one of O(reserved_ports).
          - An integer or a string of digits; checked by the module so the error names the owner.
        type: raw
        required: true
      dest_ip:
        description: IPv4 address of the destination (the container).
        type: str
        required: true
      dest_port:
        description:
          - Port on the destination (1-65535), an integer or a string of digits.
        type: raw
        default: 22
  prefix:
    description:
      - Prefix of the owned chains (C(PREFIX-DNAT), C(PREFIX-POST), C(PREFIX-FWD)). Several independent
        sets of port maps can live side by side under different prefixes.
    type: str
    default: FLEET
  listen_addresses:
    description:
      - Host IPv4 addresses the ports listen on. Empty (the default) means every local address of the host
        (C(-m addrtype --dst-type LOCAL)), which also follows address changes without a rerun.
      - With O(localhost=true), C(127.0.0.1) is added to a non-empty list.
    type: list
    elements: str
    default: []
  bridge_subnet:
    description:
      - The containers' bridge network (for example C(10.231.0.0/24) of C(lxdbr0)). When given, a container
        connecting to its own host port (hairpin) is masqueraded so the reply finds its way back.
    type: str
  localhost:
    description:
      - Whether connections to C(127.0.0.1:HOST_PORT) on the host itself must reach the destination.
      - When true, sets C(net.ipv4.conf.all.route_localnet=1) and masquerades C(127.0.0.0/8) sources of
        mapped connections. When false, a first rule in C(PREFIX-DNAT) returns for 127.0.0.0/8 destinations,
        so the host's own loopback services are not captured; the sysctl is then left as it is.
    type: bool
    default: false
  backend:
    description:
      - iptables backend. C(nft) (iptables-nft, the Debian 12 default) or C(legacy) (iptables-legacy).
        Use the backend the rest of the host uses; mixing both on one host confuses every tool.
    type: str
    choices: [nft, legacy]
    default: nft
  reserved_ports:
    description:
      - Host ports no map may use (the admin SSH port and whatever else the host needs).
    type: list
    elements: int
    default: [22]
  persist:
    description:
      - Make the owned chains survive a reboot the Debian way, through C(netfilter-persistent), without
        taking over anybody else's rules.
      - "Chosen design: the owned chains (only them) are written as a C(--noflush) restore file to
        O(persist_rules_path), and an executable netfilter-persistent plugin is written to
        O(persist_plugin_path). At boot C(netfilter-persistent start) runs its plugins in order:
        C(15-ip4tables) restores the admin's C(/etc/iptables/rules.v4) as usual, then this plugin (C(35-...))
        restores the owned chains with C(--noflush), inserts each jump rule only if C(iptables -C) does not
        find it, and sets route_localnet when O(localhost=true). On C(save) and C(flush) the plugin does
        nothing, so C(netfilter-persistent save) keeps saving the whole ruleset to rules.v4 as before; if that
        copy holds stale owned chains, our plugin replaces them right after at the next boot."
      - When false, nothing is written and existing persistence files are left alone.
      - Requires the C(iptables-persistent) package for the boot-time part; the files are written either way.
    type: bool
    default: false
  persist_rules_path:
    description:
      - Where the owned chains are saved when O(persist=true). Default
        C(/etc/iptables/gpulab-fleet-PREFIX.rules.v4).
    type: path
  persist_plugin_path:
    description:
      - Where the netfilter-persistent plugin is written when O(persist=true). Default
        C(/usr/share/netfilter-persistent/plugins.d/35-gpulab-fleet-PREFIX).
    type: path
notes:
  - IPv4 only. Runs the C(iptables-nft-save)/C(iptables-nft-restore) (or C(-legacy-)) commands; needs root.
  - Hairpin (a container connecting to its own host port) needs O(bridge_subnet). Where br_netfilter is active
    (C(net.bridge.bridge-nf-call-iptables=1)), the hairpin packet is bridged back out of the port it came in on,
    so the containers' bridge ports must also be in hairpin mode (C(bridge -d link show)).
  - Check mode reads the ruleset and reports what would change, without changing anything.
  - Diff mode returns the owned chains and jump rules before and after, in C(iptables-save) form.
seealso:
  - name: iptables-restore(8)
    description: The --noflush restore format used to replace one chain atomically.
    link: https://manpages.debian.org/bookworm/iptables/iptables-restore.8.en.html
"""

EXAMPLES = r"""
- name: Give every lab member her SSH port
  gpulab.fleet.port_map:
    bridge_subnet: 10.231.0.0/24
    localhost: true
    persist: true
    reserved_ports: [22, 2222]
    maps:
      - owner: alice
        host_port: 22001
        dest_ip: 10.231.0.11
      - owner: bob
        host_port: 22002
        dest_ip: 10.231.0.12
        dest_port: 22

- name: Only on the public address, legacy backend, a separate set of chains
  gpulab.fleet.port_map:
    prefix: JUPYTER
    backend: legacy
    listen_addresses: [192.0.2.10]
    reserved_ports: [22, 80, 443]
    maps:
      - owner: alice
        host_port: 28001
        dest_ip: 10.231.0.11
        dest_port: 8888
"""

RETURN = r"""
changed_chains:
  description: Owned chains that were (or in check mode would be) rewritten, as C(table/CHAIN).
  returned: always
  type: list
  elements: str
  sample: [nat/FLEET-DNAT, filter/FLEET-FWD]
inserted_jumps:
  description: Built-in chains that got (or would get) a jump rule to an owned chain, as C(table/CHAIN).
  returned: always
  type: list
  elements: str
  sample: [nat/PREROUTING]
rules:
  description: The owned chains and jump rules after the run, in C(iptables-save) form.
  returned: always
  type: str
  sample: |
    *filter
    -A FORWARD -m comment --comment "gpulab.fleet port_map FLEET" -j FLEET-FWD
    :FLEET-FWD - [0:0]
maps:
  description: The validated maps, sorted by protocol and host port.
  returned: always
  type: list
  elements: dict
  sample: [{owner: alice, proto: tcp, host_port: 22001, dest_ip: 10.231.0.11, dest_port: 22}]
"""

import os
import shlex
from dataclasses import asdict

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.gpulab.fleet.plugins.module_utils.iptables import IptablesCli, IptablesError
from ansible_collections.gpulab.fleet.plugins.module_utils.port_map import (
    jump_rules,
    persist_payload,
    plan,
    validate,
)

ROUTE_LOCALNET = "/proc/sys/net/ipv4/conf/all/route_localnet"


def _plugin_script(settings, backend: str, rules_path: str) -> str:
    """A netfilter-persistent plugin restoring only the owned chains, after the distribution's plugins."""
    ipt = f"iptables-{backend}"
    # Each jump is checked with -C first: rules.v4 restored before us may already hold it.
    jumps = [
        f"    {ipt} -t {table} -C {chain} {shlex.join(rule)} 2>/dev/null ||"
        f" {ipt} -t {table} -I {chain} 1 {shlex.join(rule)}"
        for table, pairs in sorted(jump_rules(settings).items())
        for chain, rule in pairs
    ]
    sysctl = ["    sysctl -qw net.ipv4.conf.all.route_localnet=1"] if settings.localhost else []
    wait = " -w" if backend == "legacy" else ""
    return "\n".join(
        [
            "#!/bin/sh",
            "# Managed by gpulab.fleet.port_map: restores ONLY the chains it owns",
            f"# ({settings.prefix}-DNAT, {settings.prefix}-POST, {settings.prefix}-FWD), after netfilter-persistent's",
            "# own plugins restored /etc/iptables/rules.v4. save/flush are left to those plugins.",
            "set -e",
            f"RULES={shlex.quote(rules_path)}",
            'case "$1" in',
            "start|restart|reload|force-reload)",
            '    [ -f "$RULES" ] || exit 0',
            *sysctl,
            f'    {ipt}-restore --noflush{wait} < "$RULES"',
            *jumps,
            "    ;;",
            "save|flush)",
            "    ;;",
            "*)",
            '    echo "usage: $0 {start|restart|reload|force-reload|save|flush}" >&2',
            "    exit 1",
            "    ;;",
            "esac",
            "",
        ]
    )


def _sync_file(path: str, content: str, mode: int, check: bool) -> bool:
    try:
        with open(path) as fh:
            if fh.read() == content and (os.stat(path).st_mode & 0o777) == mode:
                return False
    except FileNotFoundError:
        pass
    if not check:
        os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
        tmp = f"{path}.tmp"
        with open(tmp, "w") as fh:
            fh.write(content)
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    return True


def main():
    module = AnsibleModule(
        argument_spec=dict(
            maps=dict(
                type="list",
                elements="dict",
                required=True,
                options=dict(
                    owner=dict(type="str", required=True),
                    # proto and ports are checked by validate() so errors name the owner.
                    proto=dict(type="str", default="tcp"),
                    host_port=dict(type="raw", required=True),
                    dest_ip=dict(type="str", required=True),
                    dest_port=dict(type="raw", default=22),
                ),
            ),
            prefix=dict(type="str", default="FLEET"),
            listen_addresses=dict(type="list", elements="str", default=[]),
            bridge_subnet=dict(type="str"),
            localhost=dict(type="bool", default=False),
            backend=dict(type="str", choices=["nft", "legacy"], default="nft"),
            reserved_ports=dict(type="list", elements="int", default=[22]),
            persist=dict(type="bool", default=False),
            persist_rules_path=dict(type="path"),
            persist_plugin_path=dict(type="path"),
        ),
        supports_check_mode=True,
    )
    p = module.params
    maps, settings, problems = validate(
        p["maps"],
        prefix=p["prefix"],
        listen_addresses=p["listen_addresses"],
        bridge_subnet=p["bridge_subnet"],
        localhost=p["localhost"],
        reserved_ports=p["reserved_ports"],
    )
    if problems:
        module.fail_json(msg="invalid port maps, nothing changed: " + "; ".join(problems), problems=problems)

    cli = IptablesCli(p["backend"], lambda argv, data=None: module.run_command(argv, data=data))
    try:
        the_plan = plan(cli.save(), maps, settings)
    except IptablesError as exc:
        module.fail_json(msg=str(exc))

    changed = the_plan.changed
    if the_plan.changed and not module.check_mode:
        try:
            # Validate every table's payload first, so a bad nat payload cannot leave filter applied alone.
            cli.restore("".join(the_plan.payloads.values()), test=True)
            for payload in the_plan.payloads.values():
                cli.restore(payload)
        except IptablesError as exc:
            module.fail_json(msg=f"{exc} (prefix {settings.prefix}; owned chains left as they were)")

    if settings.localhost:
        with open(ROUTE_LOCALNET) as fh:
            if fh.read().strip() != "1":
                changed = True
                if not module.check_mode:
                    with open(ROUTE_LOCALNET, "w") as out:
                        out.write("1\n")

    if p["persist"]:
        rules_path = p["persist_rules_path"] or f"/etc/iptables/gpulab-fleet-{settings.prefix}.rules.v4"
        plugin_path = p["persist_plugin_path"] or (
            f"/usr/share/netfilter-persistent/plugins.d/35-gpulab-fleet-{settings.prefix}"
        )
        changed |= _sync_file(rules_path, persist_payload(maps, settings), 0o644, module.check_mode)
        changed |= _sync_file(plugin_path, _plugin_script(settings, p["backend"], rules_path), 0o755, module.check_mode)

    result = dict(
        changed=changed,
        changed_chains=the_plan.changed_chains,
        inserted_jumps=the_plan.missing_jumps,
        rules=the_plan.after,
        maps=[asdict(m) for m in maps],
    )
    if module._diff:
        result["diff"] = dict(
            before=the_plan.before,
            after=the_plan.after,
            before_header=f"{p['backend']} owned chains {settings.prefix}",
            after_header=f"{p['backend']} owned chains {settings.prefix}",
        )
    module.exit_json(**result)


if __name__ == "__main__":
    main()
