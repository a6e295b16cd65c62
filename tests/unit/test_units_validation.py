import pytest

from ansible_collections.gpulab.fleet.plugins.module_utils.units import SizeError, format_binary, parse_size
from ansible_collections.gpulab.fleet.plugins.module_utils.validation import (
    port_problem,
    ssh_key_problem,
    username_problem,
)

# A well-formed ed25519 public key line (type prefix + 32-byte body).
ED25519 = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIIf1xR6c0kDq0B1Xgq3oGm7ew9Jb7rW2Xz3fU8p5Hh5R alice@lab"


@pytest.mark.parametrize(
    ("text", "size"),
    [
        ("10G", 10 << 30),
        ("10GiB", 10 << 30),
        ("500gib", 500 << 30),
        ("2T", 2 << 40),
        ("1.5G", 3 << 29),
        ("1024", 1024),
        (4096, 4096),
        ("0", 0),
        ("500MB", 500 * 10**6),
        ("8 GiB", 8 << 30),
    ],
)
def test_parse_size(text, size):
    assert parse_size(text) == size


@pytest.mark.parametrize("bad", ["lots", "10X", "-1", "G", "", "1.5", True])
def test_parse_size_rejects(bad):
    with pytest.raises(SizeError, match="size"):
        parse_size(bad)


def test_none_only_when_allowed():
    assert parse_size("none", allow_none=True) is None
    with pytest.raises(SizeError, match="none"):
        parse_size("none")


def test_format_binary_round_trips():
    for size in (10 << 30, 3 << 29, 1 << 40, 1536, 7):
        assert parse_size(format_binary(size)) == size


@pytest.mark.parametrize("name", ["alice", "bob2", "ann-marie"])
def test_good_usernames(name):
    assert username_problem(name) is None


@pytest.mark.parametrize("name", ["Alice", "root", "a,b", "1abc", "a b", "x" * 40, "bob-", "", "al_ice", 5])
def test_bad_usernames(name):
    assert username_problem(name)


def test_ssh_key_valid():
    assert ssh_key_problem(ED25519) is None


@pytest.mark.parametrize(
    ("key", "reason"),
    [
        ('command="/bin/sh" ' + ED25519, "options"),
        (ED25519 + "\nssh-rsa AAAA", "one line"),
        ("ssh-ed25519 not*base64", "base64"),
        ("ssh-dss AAAAB3NzaC1kc3M=", "unknown key type"),
        ("ssh-rsa " + ED25519.split()[1], "not 'ssh-rsa'"),
        ("ssh-ed25519", "expected"),
    ],
)
def test_ssh_key_invalid(key, reason):
    problem = ssh_key_problem(key)
    assert problem and reason in problem


@pytest.mark.parametrize(
    ("port", "ok"), [(22, True), ("2222", True), (0, False), (65536, False), ("x", False), (True, False)]
)
def test_ports(port, ok):
    assert (port_problem(port) is None) is ok
