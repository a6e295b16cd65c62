"""gpulab.fleet.port_map against real iptables (nft and legacy) inside the netlab namespaces.

Every test runs the module in the lab's "host" namespace and checks real traffic:
client -> host port -> container, container -> its own host port (hairpin), host -> 127.0.0.1.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

from tests.helpers import run_module

pytestmark = pytest.mark.netns

BACKENDS = ["nft", "legacy"]
PORT = 22001


def rules(lab, backend: str) -> str:
    """The host namespace's ruleset without timestamps and counters."""
    text = lab.iptables_save(backend=backend)
    return re.sub(r"\[\d+:\d+\]", "", "\n".join(line for line in text.splitlines() if not line.startswith("#")))


def port_map(lab, backend: str = "nft", check: bool = False, **args) -> dict:
    args.setdefault("maps", [{"owner": "alice", "host_port": PORT, "dest_ip": lab.container_ip}])
    return run_module("port_map", {"backend": backend, **args}, check=check, prefix=lab.prefix("host"))


def ok(result: dict) -> dict:
    assert not result["failed"], result.get("msg")
    return result


@pytest.mark.parametrize("backend", BACKENDS)
def test_client_reaches_container_and_removal_closes(netlab, backend):
    assert netlab.connect("client", netlab.host_uplink_ip, PORT) is None

    first = ok(port_map(netlab, backend))
    assert first["changed"]
    # Plain DNAT: the container sees the real client address.
    assert netlab.connect("client", netlab.host_uplink_ip, PORT) == f"container {netlab.client_ip}\n"
    assert "owner=alice" in rules(netlab, backend)

    ok(port_map(netlab, backend, maps=[]))
    assert netlab.connect("client", netlab.host_uplink_ip, PORT) is None
    assert "owner=alice" not in rules(netlab, backend)


@pytest.mark.parametrize("backend", BACKENDS)
def test_idempotent_and_only_owned_chains_change(netlab, backend):
    ipt = f"iptables-{backend}"
    foreign = ["-p", "tcp", "--dport", "8080", "-j", "DNAT", "--to-destination", "10.231.0.9:80"]
    netlab.exec("host", [ipt, "-t", "nat", "-A", "PREROUTING", *foreign])
    args = {"bridge_subnet": netlab.bridge_net, "localhost": True}

    assert ok(port_map(netlab, backend, **args))["changed"]
    after_first = rules(netlab, backend)
    second = ok(port_map(netlab, backend, **args))
    assert not second["changed"]
    assert second["changed_chains"] == [] and second["inserted_jumps"] == []
    assert rules(netlab, backend) == after_first
    # Jumps inserted exactly once, the foreign rule survived both runs.
    assert after_first.count("-j FLEET-DNAT") == 2 and after_first.count("-j FLEET-FWD") == 1
    netlab.exec("host", [ipt, "-t", "nat", "-C", "PREROUTING", *foreign])

    # Change one map: only the chains whose content differs are rewritten; foreign rule still there.
    moved = [{"owner": "alice", "host_port": PORT + 1, "dest_ip": netlab.container_ip}]
    third = ok(port_map(netlab, backend, maps=moved, **args))
    assert third["changed"] and third["inserted_jumps"] == []
    assert sorted(third["changed_chains"]) == ["filter/FLEET-FWD", "nat/FLEET-DNAT"]  # POST unchanged
    netlab.exec("host", [ipt, "-t", "nat", "-C", "PREROUTING", *foreign])
    assert netlab.connect("client", netlab.host_uplink_ip, PORT) is None
    assert netlab.connect("client", netlab.host_uplink_ip, PORT + 1) == f"container {netlab.client_ip}\n"


@pytest.mark.parametrize("backend", BACKENDS)
def test_hairpin_from_container_to_its_own_host_port(netlab, backend):
    ok(port_map(netlab, backend, bridge_subnet=netlab.bridge_net))
    # Masqueraded to the bridge address, so the reply goes back through the host.
    assert netlab.connect("container", netlab.host_uplink_ip, PORT) == f"container {netlab.host_bridge_ip}\n"


def test_without_bridge_subnet_no_hairpin_masquerade(netlab):
    ok(port_map(netlab))
    assert netlab.connect("container", netlab.host_uplink_ip, PORT) is None
    assert netlab.connect("client", netlab.host_uplink_ip, PORT) is not None


@pytest.mark.parametrize("backend", BACKENDS)
def test_localhost_works_only_when_enabled(netlab, backend):
    sysctl = ["sysctl", "-n", "net.ipv4.conf.all.route_localnet"]
    ok(port_map(netlab, backend))
    assert netlab.connect("host", "127.0.0.1", PORT) is None
    assert netlab.exec("host", sysctl).stdout.strip() == "0"  # left alone when not asked

    result = ok(port_map(netlab, backend, localhost=True))
    assert result["changed"]
    assert netlab.exec("host", sysctl).stdout.strip() == "1"
    assert netlab.connect("host", "127.0.0.1", PORT) == f"container {netlab.host_bridge_ip}\n"
    assert not ok(port_map(netlab, backend, localhost=True))["changed"]


def test_listen_addresses_limit_where_the_port_answers(netlab):
    ok(port_map(netlab, listen_addresses=[netlab.host_uplink_ip], bridge_subnet=netlab.bridge_net))
    assert netlab.connect("client", netlab.host_uplink_ip, PORT) == f"container {netlab.client_ip}\n"
    # The host's bridge address is local too, but not listed: no DNAT there.
    assert netlab.connect("container", netlab.host_bridge_ip, PORT) is None
    assert netlab.connect("host", netlab.host_bridge_ip, PORT) is None


def test_udp_map(netlab):
    maps = [{"owner": "carol", "proto": "udp", "host_port": 60001, "dest_ip": netlab.container_ip}]
    ok(port_map(netlab, maps=maps))
    answer = netlab.connect("client", netlab.host_uplink_ip, 60001, proto="udp")
    assert answer == f"container {netlab.client_ip}\n"
    assert netlab.connect("client", netlab.host_uplink_ip, 60001, proto="tcp") is None


def test_forward_chain_admits_only_mapped_traffic_under_drop_policy(netlab):
    netlab.exec("host", ["iptables", "-P", "FORWARD", "DROP"])
    # Give the client a route into the container network so that unmapped traffic could flow.
    netlab.exec("client", ["ip", "route", "add", netlab.bridge_net, "via", netlab.host_uplink_ip])
    netlab.serve("container", 8000, banner="unmapped")
    ok(port_map(netlab, bridge_subnet=netlab.bridge_net))
    assert netlab.connect("client", netlab.host_uplink_ip, PORT) == f"container {netlab.client_ip}\n"
    assert netlab.connect("container", netlab.host_uplink_ip, PORT) == f"container {netlab.host_bridge_ip}\n"
    assert netlab.connect("client", netlab.container_ip, 8000) is None
    assert netlab.connect("client", netlab.container_ip, netlab.server_port) is None  # only via the map


@pytest.mark.parametrize("backend", BACKENDS)
def test_check_mode_changes_nothing(netlab, backend):
    before = rules(netlab, backend)
    result = ok(port_map(netlab, backend, check=True, localhost=True))
    assert result["changed"]
    assert "nat/FLEET-DNAT" in result["changed_chains"]
    assert rules(netlab, backend) == before
    assert netlab.exec("host", ["sysctl", "-n", "net.ipv4.conf.all.route_localnet"]).stdout.strip() == "0"

    ok(port_map(netlab, backend))
    applied = rules(netlab, backend)
    removal = ok(port_map(netlab, backend, check=True, maps=[]))
    assert removal["changed"] and rules(netlab, backend) == applied


def test_diff_shows_owned_rules_before_and_after(netlab):
    first = ok(port_map(netlab))
    assert "owner=alice" not in first["diff"]["before"]
    assert "-A FLEET-DNAT" in first["diff"]["after"] and "owner=alice" in first["diff"]["after"]
    assert '-A PREROUTING -m comment --comment "gpulab.fleet port_map FLEET" -j FLEET-DNAT' in first["diff"]["after"]

    bob = [{"owner": "bob", "host_port": 22002, "dest_ip": netlab.container_ip, "dest_port": 2222}]
    second = ok(port_map(netlab, maps=bob))
    assert "owner=alice" in second["diff"]["before"] and "owner=alice" not in second["diff"]["after"]
    assert "--dport 22002" in second["diff"]["after"] and "10.231.0.2:2222" in second["diff"]["after"]
    assert second["rules"] == second["diff"]["after"]


@pytest.mark.parametrize("backend", BACKENDS)
def test_bad_input_fails_before_any_change(netlab, backend):
    ok(port_map(netlab, backend))
    before = rules(netlab, backend)
    bad = [
        {"owner": "alice", "host_port": PORT, "dest_ip": netlab.container_ip},
        {"owner": "bob", "host_port": PORT, "dest_ip": "10.231.0.3"},  # duplicate host port
        {"owner": "carol", "host_port": 70000, "dest_ip": "10.231.0.4"},
        {"owner": "dave", "host_port": 22, "dest_ip": "10.231.0.5"},  # reserved
        {"owner": "erin", "host_port": 22005, "dest_ip": "10.231.0.999"},
        {"owner": "frank", "proto": "sctp", "host_port": 22006, "dest_ip": "10.231.0.6"},
    ]
    result = port_map(netlab, backend, maps=bad, bridge_subnet="10.231.0.0/33")
    assert result["failed"]
    msg = result["msg"]
    assert "maps[1] (owner 'bob'): host_port 22001/tcp is already mapped by maps[0] (owner 'alice')" in msg
    assert "maps[2] (owner 'carol'): host_port: 70000 is out of range 1-65535" in msg
    assert "maps[3] (owner 'dave'): host_port 22 is reserved" in msg
    assert "maps[4] (owner 'erin'): dest_ip '10.231.0.999' is not an IPv4 address" in msg
    assert "maps[5] (owner 'frank'): proto 'sctp'" in msg
    assert "bridge_subnet: '10.231.0.0/33'" in msg
    assert rules(netlab, backend) == before
    assert netlab.connect("client", netlab.host_uplink_ip, PORT) is not None


@pytest.mark.parametrize("backend", BACKENDS)
def test_failed_restore_leaves_old_chain_intact(netlab, backend):
    """The atomicity the module relies on: one bad line in a --noflush payload applies nothing."""
    from ansible_collections.gpulab.fleet.plugins.module_utils.iptables import IptablesCli, IptablesError

    ok(port_map(netlab, backend))
    before = rules(netlab, backend)

    def run(argv, data=None):
        proc = subprocess.run(netlab.prefix("host") + argv, input=data, capture_output=True, text=True, check=False)
        return proc.returncode, proc.stdout, proc.stderr

    payload = "\n".join(
        [
            "*nat",
            ":FLEET-DNAT - [0:0]",
            "-F FLEET-DNAT",
            "-A FLEET-DNAT -p tcp -m tcp --dport 22009 -j DNAT --to-destination 10.231.0.2:22",
            "-A FLEET-DNAT -d 10.99.0.999 -p tcp -m tcp --dport 22010 -j DNAT --to-destination 10.231.0.2:22",
            "COMMIT",
            "",
        ]
    )
    with pytest.raises(IptablesError, match=r"10\.99\.0\.999"):
        IptablesCli(backend, run).restore(payload)
    assert rules(netlab, backend) == before
    assert netlab.connect("client", netlab.host_uplink_ip, PORT) is not None


def test_two_prefixes_live_side_by_side(netlab):
    ok(port_map(netlab))
    jup = [{"owner": "alice", "host_port": 28001, "dest_ip": netlab.container_ip}]
    ok(port_map(netlab, prefix="JUPYTER", maps=jup))
    assert netlab.connect("client", netlab.host_uplink_ip, PORT) is not None
    assert netlab.connect("client", netlab.host_uplink_ip, 28001) is not None
    # Emptying one prefix leaves the other's maps alone.
    ok(port_map(netlab, prefix="JUPYTER", maps=[]))
    assert netlab.connect("client", netlab.host_uplink_ip, 28001) is None
    assert netlab.connect("client", netlab.host_uplink_ip, PORT) is not None


@pytest.mark.parametrize("backend", BACKENDS)
def test_persistence_restores_owned_chains_after_a_reboot(netlab, backend, tmp_path: Path):
    rules_file = tmp_path / "etc/iptables/gpulab-fleet-FLEET.rules.v4"
    plugin = tmp_path / "plugins.d/35-gpulab-fleet-FLEET"
    persist = {"persist": True, "persist_rules_path": str(rules_file), "persist_plugin_path": str(plugin)}
    args = {"bridge_subnet": netlab.bridge_net, "localhost": True, **persist}

    assert ok(port_map(netlab, backend, check=True, **args))["changed"]
    assert not rules_file.exists() and not plugin.exists()
    ok(port_map(netlab, backend, **args))
    assert plugin.stat().st_mode & 0o111
    assert "owner=alice" in rules_file.read_text() and "PREROUTING" not in rules_file.read_text()
    assert not ok(port_map(netlab, backend, **args))["changed"]
    wanted = rules(netlab, backend)

    # "Reboot": an admin's own rule is what netfilter-persistent's 15-ip4tables restores from rules.v4;
    # our plugin then adds the owned chains and jumps without touching it.
    ipt = f"iptables-{backend}"
    for table in ("nat", "filter"):
        netlab.exec("host", [ipt, "-t", table, "-F"])
        netlab.exec("host", [ipt, "-t", table, "-X"])
    netlab.exec("host", ["sysctl", "-qw", "net.ipv4.conf.all.route_localnet=0"])
    foreign = ["-p", "tcp", "--dport", "8080", "-j", "DNAT", "--to-destination", "10.231.0.9:80"]
    netlab.exec("host", [ipt, "-t", "nat", "-A", "PREROUTING", *foreign])
    assert netlab.connect("client", netlab.host_uplink_ip, PORT) is None

    netlab.exec("host", [str(plugin), "start"])
    netlab.exec("host", [str(plugin), "start"])  # twice: jumps are still inserted only once
    assert netlab.connect("client", netlab.host_uplink_ip, PORT) == f"container {netlab.client_ip}\n"
    assert netlab.connect("host", "127.0.0.1", PORT) is not None
    netlab.exec("host", [ipt, "-t", "nat", "-C", "PREROUTING", *foreign])
    restored = rules(netlab, backend)
    assert restored.count("-j FLEET-DNAT") == 2
    assert [line for line in restored.splitlines() if "FLEET" in line] == [
        line for line in wanted.splitlines() if "FLEET" in line
    ]
    assert not ok(port_map(netlab, backend, **args))["changed"]
    netlab.exec("host", [str(plugin), "save"])  # a no-op, must not fail
