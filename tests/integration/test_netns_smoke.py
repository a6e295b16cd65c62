"""Smoke test of the netns backend: real iptables DNAT in the "host" namespace carries TCP."""

from __future__ import annotations

import re
import subprocess

import pytest

from tests.fixtures.netns import make_netlab

pytestmark = pytest.mark.netns

DNAT_PORT = "2201"


def _root_ruleset() -> str:
    """The root namespace's iptables rules (read only), without counters and timestamps."""
    out = subprocess.run(["iptables-nft-save"], capture_output=True, text=True, check=True).stdout
    out = "\n".join(line for line in out.splitlines() if not line.startswith("#"))
    return re.sub(r"\[\d+:\d+\]", "", out)


def _dnat(netlab, action: str) -> None:
    target = f"{netlab.container_ip}:{netlab.server_port}"
    rule = f"-t nat {action} PREROUTING -p tcp --dport {DNAT_PORT} -j DNAT --to-destination {target}"
    netlab.exec("host", ["iptables", *rule.split()])


def test_dnat_rule_carries_client_connection(netlab):
    assert netlab.connect("client", netlab.host_uplink_ip, int(DNAT_PORT)) is None

    _dnat(netlab, "-A")
    answer = netlab.connect("client", netlab.host_uplink_ip, int(DNAT_PORT))
    # The server saw the client's own address: plain DNAT, no masquerade.
    assert answer == f"container {netlab.client_ip}\n"

    _dnat(netlab, "-D")
    assert netlab.connect("client", netlab.host_uplink_ip, int(DNAT_PORT)) is None


def test_lab_leaves_root_namespace_alone():
    before_rules = _root_ruleset()
    before_ns = set(subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=False).stdout.split())
    lab = make_netlab()
    try:
        names = lab.namespaces
        rule = f"-t nat -A PREROUTING -p tcp --dport 2202 -j DNAT --to-destination {lab.container_ip}:22"
        lab.exec("host", ["iptables", *rule.split()])
        assert "2202" in lab.iptables_save("host")
        # No interface of the lab leaked into the root namespace.
        root_links = subprocess.run(["ip", "-o", "link"], capture_output=True, text=True, check=True).stdout
        assert "uplink0" not in root_links and "vc0" not in root_links
        assert "2202" not in _root_ruleset()
    finally:
        lab.teardown()
    assert _root_ruleset() == before_rules
    after_ns = set(subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=False).stdout.split())
    assert not set(names) & after_ns, "teardown left namespaces behind"
    assert not set(names) & before_ns
