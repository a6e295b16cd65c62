"""The pure port_map planner: validation, rendering as iptables prints it, diffing, payloads."""

from __future__ import annotations

from pathlib import Path

import pytest

from ansible_collections.gpulab.fleet.plugins.module_utils.iptables import parse_save
from ansible_collections.gpulab.fleet.plugins.module_utils.port_map import (
    PortMap,
    Settings,
    desired_chains,
    persist_payload,
    plan,
    validate,
)

DATA = Path(__file__).resolve().parent.parent / "data" / "iptables"

# The maps and options tests/data/iptables/*-fleet-3maps.save was recorded with (a real module run).
RECORDED = [
    {"owner": "alice", "host_port": 22001, "dest_ip": "10.231.0.11"},
    {"owner": "bob", "host_port": 22002, "dest_ip": "10.231.0.12", "dest_port": 2222},
    {"owner": "carol", "proto": "udp", "host_port": 60001, "dest_ip": "10.231.0.13", "dest_port": 60001},
]


def recorded(name):
    return parse_save((DATA / name).read_text())


def checked(maps, **kw):
    result, settings, problems = validate(maps, **kw)
    assert problems == []
    return result, settings


@pytest.mark.parametrize("backend", ["nft", "legacy"])
def test_rendered_rules_equal_what_iptables_printed(backend):
    maps, s = checked(RECORDED, bridge_subnet="10.231.0.0/24")
    p = plan(recorded(f"{backend}-fleet-3maps.save"), maps, s)
    assert not p.changed and p.changed_chains == [] and p.missing_jumps == []
    assert p.before == p.after


@pytest.mark.parametrize("backend", ["nft", "legacy"])
def test_listen_and_localhost_rendering_equals_recording(backend):
    maps, s = checked(RECORDED, bridge_subnet="10.231.0.0/24", localhost=True, listen_addresses=["10.230.0.1"])
    assert s.listen_addresses == ("10.230.0.1", "127.0.0.1")
    assert not plan(recorded(f"{backend}-fleet-listen-localhost.save"), maps, s).changed


def test_fresh_ruleset_gets_chains_and_jumps_in_one_payload_per_table():
    maps, s = checked(RECORDED[:1], bridge_subnet="10.231.0.0/24")
    p = plan({}, maps, s)
    assert sorted(p.payloads) == ["filter", "nat"]
    nat = p.payloads["nat"].splitlines()
    assert nat[0] == "*nat" and nat[-1] == "COMMIT"
    assert ":FLEET-DNAT - [0:0]" in nat and "-F FLEET-DNAT" in nat
    # Chains are declared before the jumps that need them; jumps go to the top.
    assert nat.index(":FLEET-POST - [0:0]") < nat.index(
        '-I POSTROUTING 1 -m comment --comment "gpulab.fleet port_map FLEET" -j FLEET-POST'
    )
    assert p.missing_jumps == ["filter/FORWARD", "nat/PREROUTING", "nat/OUTPUT", "nat/POSTROUTING"]
    assert p.before == "*filter\n*nat\n"


def test_only_the_differing_chain_is_rewritten():
    current = recorded("nft-fleet-3maps.save")
    maps, s = checked([*RECORDED, {"owner": "dave", "host_port": 22004, "dest_ip": "10.231.0.11"}],
                      bridge_subnet="10.231.0.0/24")
    p = plan(current, maps, s)
    # dave shares alice's destination: FLEET-POST gains a (duplicate-destination) rule too.
    assert p.changed_chains == ["filter/FLEET-FWD", "nat/FLEET-DNAT", "nat/FLEET-POST"]
    assert p.missing_jumps == []
    assert "-I " not in p.payloads["nat"]
    maps2, s2 = checked(RECORDED, bridge_subnet="10.231.0.0/24", listen_addresses=["10.230.0.1"])
    p2 = plan(current, maps2, s2)
    assert p2.changed_chains == ["nat/FLEET-DNAT"] and list(p2.payloads) == ["nat"]
    assert "FLEET-POST" not in p2.payloads["nat"]


def test_removed_map_disappears_and_foreign_rules_are_not_in_any_payload():
    current = recorded("nft-foreign-odd.save")
    maps, s = checked([], bridge_subnet="10.231.0.0/24")
    p = plan(current, maps, s)
    everything = "".join(p.payloads.values())
    assert "owner=" not in everything
    assert "8080" not in everything and "quoted" not in everything
    assert "owner=alice" in p.before and "owner=alice" not in p.after


def test_rules_carry_owner_comments():
    maps, s = checked(RECORDED, bridge_subnet="10.231.0.0/24", localhost=True)
    chains = desired_chains(maps, s)
    for table in chains.values():
        for rules in table.values():
            for rule in rules:
                comment = rule[rule.index("--comment") + 1]
                assert comment.startswith("owner=") or comment == s.tag
    # localhost=True: no RETURN for 127.0.0.0/8 in the DNAT chain.
    assert all("RETURN" not in r for r in chains["nat"]["FLEET-DNAT"])


def test_persist_payload_has_owned_chains_only():
    maps, s = checked(RECORDED[:1])
    text = persist_payload(maps, s)
    assert "PREROUTING" not in text and "FORWARD " not in text
    assert text.count("COMMIT") == 2 and "-F FLEET-FWD" in text


def test_validate_sorts_and_normalises():
    maps, s = checked(
        [
            {"owner": "b", "host_port": "2202", "dest_ip": "10.0.0.2"},
            {"owner": "a", "host_port": 2201, "dest_ip": "10.0.0.1"},
        ],
        bridge_subnet="10.231.0.7/24",
    )
    assert maps == [PortMap("tcp", 2201, "a", "10.0.0.1", 22), PortMap("tcp", 2202, "b", "10.0.0.2", 22)]
    assert s == Settings(bridge_subnet="10.231.0.0/24")


def test_same_port_on_tcp_and_udp_is_fine_but_twice_on_one_proto_is_not():
    ok = [{"owner": "a", "host_port": 5000, "dest_ip": "10.0.0.1"},
          {"owner": "a", "proto": "udp", "host_port": 5000, "dest_ip": "10.0.0.1"}]
    assert validate(ok)[2] == []
    problems = validate([*ok, {"owner": "b", "proto": "udp", "host_port": 5000, "dest_ip": "10.0.0.2"}])[2]
    assert problems == ["maps[2] (owner 'b'): host_port 5000/udp is already mapped by maps[1] (owner 'a')"]


@pytest.mark.parametrize(
    ("item", "kw", "expected"),
    [
        ({"owner": "a b", "host_port": 2201, "dest_ip": "10.0.0.1"}, {}, "owner 'a b' must be"),
        ({"owner": "a", "host_port": 0, "dest_ip": "10.0.0.1"}, {}, "host_port: 0 is out of range"),
        ({"owner": "a", "host_port": "x", "dest_ip": "10.0.0.1"}, {}, "host_port: 'x' is not a port number"),
        ({"owner": "a", "host_port": 2201, "dest_ip": "10.0.0.1", "dest_port": 65536}, {}, "dest_port: 65536"),
        ({"owner": "a", "host_port": 2201, "dest_ip": "fe80::1"}, {}, "dest_ip 'fe80::1' is not an IPv4"),
        ({"owner": "a", "host_port": 2201, "dest_ip": "10.0.0.1", "proto": "icmp"}, {}, "proto 'icmp'"),
        ({"owner": "a", "host_port": 2222, "dest_ip": "10.0.0.1"}, {"reserved_ports": [22, 2222]}, "2222 is reserved"),
        ({"owner": "a", "host_port": 2201, "dest_ip": "10.0.0.1", "port": 1}, {}, "unknown field(s) port"),
        ({"owner": "a", "host_port": 2201, "dest_ip": "10.0.0.1"}, {"listen_addresses": ["1.2.3"]},
         "listen_addresses[0]: '1.2.3'"),
        ({"owner": "a", "host_port": 2201, "dest_ip": "10.0.0.1"}, {"bridge_subnet": "10.0.0.0/40"}, "bridge_subnet"),
        ({"owner": "a", "host_port": 2201, "dest_ip": "10.0.0.1"}, {"prefix": "FLEET-X"}, "prefix: 'FLEET-X'"),
    ],
)
def test_validation_names_item_field_and_value(item, kw, expected):
    problems = validate([item], **kw)[2]
    assert len(problems) == 1 and expected in problems[0], problems
    if "owner" in expected or "host_port" in expected or "dest" in expected or "proto" in expected:
        assert problems[0].startswith("maps[0]")


def test_reserved_defaults_to_ssh():
    problems = validate([{"owner": "a", "host_port": 22, "dest_ip": "10.0.0.1"}])[2]
    assert problems == ["maps[0] (owner 'a'): host_port 22 is reserved (reserved_ports: [22])"]
    assert validate([{"owner": "a", "host_port": 22, "dest_ip": "10.0.0.1"}], reserved_ports=[])[2] == []
