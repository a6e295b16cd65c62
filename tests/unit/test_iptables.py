"""The iptables-save parser and restore formatting, on real output recorded in namespaces."""

from __future__ import annotations

import shlex
from pathlib import Path

import pytest

from ansible_collections.gpulab.fleet.plugins.module_utils.iptables import (
    IptablesCli,
    IptablesError,
    format_rule,
    parse_save,
    quote,
)

DATA = Path(__file__).resolve().parent.parent / "data" / "iptables"


@pytest.mark.parametrize("backend", ["nft", "legacy"])
def test_parse_recorded_save(backend):
    tables = parse_save((DATA / f"{backend}-fleet-3maps.save").read_text())
    assert set(tables) == {"filter", "nat"}
    nat = tables["nat"]
    assert nat.policies["PREROUTING"] == "ACCEPT" and nat.policies["FLEET-DNAT"] == "-"
    jump = ("-m", "comment", "--comment", "gpulab.fleet port_map FLEET", "-j", "FLEET-DNAT")
    assert nat.chain("PREROUTING")[0] == jump
    # The foreign rule comes through as tokens, its quoted comment as one token.
    foreign = nat.chain("PREROUTING")[1]
    assert foreign[:6] == ("-p", "tcp", "-m", "tcp", "--dport", "8080")
    assert foreign[-3:] == ("DNAT", "--to-destination", "10.231.0.9:80")
    assert foreign[6:10] == ("-m", "comment", "--comment", "someone else's rule")
    assert len(nat.chain("FLEET-DNAT")) == 4  # localnet RETURN + 3 maps
    assert tables["filter"].chain("NOPE") is None


def test_declared_empty_chain_is_empty_not_missing():
    tables = parse_save("*nat\n:PREROUTING ACCEPT [0:0]\n:FLEET-POST - [0:0]\nCOMMIT\n")
    assert tables["nat"].chain("FLEET-POST") == []
    assert tables["nat"].chain("FLEET-DNAT") is None


@pytest.mark.parametrize("backend", ["nft", "legacy"])
def test_escaped_foreign_comments_parse(backend):
    nat = parse_save((DATA / f"{backend}-foreign-odd.save").read_text())["nat"]
    odd = nat.chain("POSTROUTING")[-1]
    assert odd[:4] == ("-s", "10.231.0.0/24", "!", "-d")
    assert 'quoted "x" and spaces' in odd


def test_parse_rejects_garbage():
    with pytest.raises(IptablesError, match="outside a table"):
        parse_save("-A INPUT -j ACCEPT\n")
    with pytest.raises(IptablesError, match="unexpected"):
        parse_save("*nat\n-I INPUT 1 -j ACCEPT\nCOMMIT\n")


def test_format_rule_round_trips_through_the_parser():
    rule = ("-p", "tcp", "-m", "comment", "--comment", "gpulab.fleet port_map FLEET", "-j", "FLEET-DNAT")
    line = format_rule("PREROUTING", rule)
    assert line == '-A PREROUTING -p tcp -m comment --comment "gpulab.fleet port_map FLEET" -j FLEET-DNAT'
    assert tuple(shlex.split(line)[2:]) == rule
    assert format_rule("FORWARD", ("-j", "X"), verb="-I", position=1) == "-I FORWARD 1 -j X"


def test_quote_refuses_what_iptables_restore_cannot_read():
    assert quote("owner=alice") == "owner=alice"
    assert quote("a b") == '"a b"'
    with pytest.raises(ValueError):
        quote('a"b')


@pytest.mark.parametrize("backend", ["legacy", "nft"])
def test_restore_error_quotes_the_failing_line(backend):
    """What iptables-restore --test printed for this payload (tests/data/iptables/capture-restore-error.sh)."""
    recorded = (DATA / f"restore-bad-address-{backend}.err").read_text()
    stderr, rc = recorded.rsplit("rc=", 1)
    payload = (DATA / "restore-bad-address.rules").read_text()
    calls = []

    def run(argv, data=None):
        calls.append((argv, data))
        return int(rc), "", stderr

    with pytest.raises(IptablesError) as exc:
        IptablesCli(backend, run).restore(payload, test=True)
    assert "payload line 3: -A X -d 10.99.0.999 -j RETURN" in str(exc.value)
    assert "host/network `10.99.0.999' not found" in str(exc.value)
    wait = ["-w"] if backend == "legacy" else []  # only legacy takes the xtables lock
    assert calls[0][0] == [f"iptables-{backend}-restore", "--noflush", *wait, "--test"]
    assert calls[0][1] == payload


def test_unknown_backend():
    with pytest.raises(ValueError, match="backend"):
        IptablesCli("ebtables", lambda *a, **k: (0, "", ""))
