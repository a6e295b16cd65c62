"""Roles, playbooks and inventories checked without touching a host.

- every role's meta/argument_specs.yml options and defaults/main.yml keys agree, both ways, with the
  same default values (the argument spec is the documentation; defaults/main.yml is what runs);
- both inventories parse (ansible-inventory --list) and every playbook passes --syntax-check with both;
- the example inventory passes the real fleet_preflight (through ansible-playbook);
- the firewall table rendered by the common role's template for the example lab is accepted by the
  real nft parser (nft -c inside a throwaway network namespace, so the host's rules are never touched).
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from tests.helpers import PLAYBOOKS, ROOT, VENV_BIN, ansible_env, run_task

ROLES = sorted(p.parent.parent for p in (ROOT / "roles").glob("*/meta/argument_specs.yml"))
INVENTORIES = ["example", "demo"]
EXAMPLE_VARS = ROOT / "inventories" / "example" / "group_vars"


def _spec_and_defaults(role: Path) -> tuple[dict, dict]:
    spec = yaml.safe_load((role / "meta" / "argument_specs.yml").read_text())["argument_specs"]["main"]["options"]
    defaults = yaml.safe_load((role / "defaults" / "main.yml").read_text()) or {}
    return spec, defaults


def test_roles_found():
    names = {r.name for r in ROLES}
    assert {"common", "gpu_host", "workstations"} <= names


# A default that follows a lab-wide variable, "{{ fleet_x | default(V) }}": its spec states that template
# (strings) or V (other types: antsibull-docs wants a value of the option's type), and its description
# names fleet_x.
FOLLOWS_RE = re.compile(r"^\{\{ (?:\w+|hostvars\['localhost'\]\['\w+'\]) \| default\((.*)\) \}\}$")


def _fallback(value):
    match = FOLLOWS_RE.match(value) if isinstance(value, str) else None
    if not match:
        return value
    return None if match[1] == "None" else yaml.safe_load(match[1])


@pytest.mark.parametrize("role", ROLES, ids=[r.name for r in ROLES])
def test_argument_specs_match_defaults(role):
    spec, defaults = _spec_and_defaults(role)
    assert sorted(set(spec) - set(defaults)) == [], "options without a default in defaults/main.yml"
    assert sorted(set(defaults) - set(spec)) == [], "defaults/main.yml keys not documented in argument_specs"
    mismatched = {
        name: (opt.get("default"), defaults[name])
        for name, opt in spec.items()
        if "default" in opt and opt["default"] not in (defaults[name], _fallback(defaults[name]))
    }
    assert mismatched == {}, "argument_specs default differs from defaults/main.yml (spec, defaults)"
    undocumented = [name for name, opt in spec.items() if "default" not in opt and not opt.get("required")]
    assert undocumented == [], "optional options must state their default"
    assert all(opt.get("description") for opt in spec.values())


@pytest.mark.parametrize("inventory", INVENTORIES)
def test_inventory_lists(inventory):
    proc = subprocess.run(
        [str(VENV_BIN / "ansible-inventory"), "-i", str(ROOT / "inventories" / inventory), "--list"],
        capture_output=True, text=True, env=ansible_env(), check=False, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    data = json.loads(proc.stdout)
    for group in ("storage", "directory", "gpu_hosts"):
        assert data[group]["hosts"], f"group {group} is empty in inventories/{inventory}"


def test_example_inventory_is_a_realistic_lab():
    proc = subprocess.run(
        [str(VENV_BIN / "ansible-inventory"), "-i", str(ROOT / "inventories" / "example"), "--list"],
        capture_output=True, text=True, env=ansible_env(), check=False, timeout=120,
    )  # fmt: skip
    data = json.loads(proc.stdout)
    assert len(data["storage"]["hosts"]) == 1
    assert len(data["gpu_hosts"]["hosts"]) == 3
    users = data["_meta"]["hostvars"]["gpu1"]["fleet_users"]
    assert len(users) == 5


@pytest.mark.parametrize("inventory", INVENTORIES)
@pytest.mark.parametrize("playbook", PLAYBOOKS)
def test_playbook_syntax(inventory, playbook):
    proc = subprocess.run(
        [str(VENV_BIN / "ansible-playbook"), "--syntax-check", "-i", str(ROOT / "inventories" / inventory),
         str(ROOT / "playbooks" / f"{playbook}.yml")],
        capture_output=True, text=True, env=ansible_env(), check=False, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_example_inventory_passes_preflight():
    """With its placeholder password replaced (as the admin guide says; tests/integration/test_admin_path.py
    shows the placeholder refused)."""
    result = run_task({"gpulab.fleet.fleet_preflight": {}}, inventory=ROOT / "inventories" / "example",
                      extra_vars={"vault_directory_admin_pw": "a real password"})  # fmt: skip
    assert not result.get("failed"), result.get("msg")
    ports = result["ports"]
    assert ports["alice"]["ssh"] == 20010 and ports["alice"]["desktop"] == 20011
    assert ports["bob"]["host"] == "gpu2"
    # no GPU facts were gathered: the preflight says it could not check the GPU requests
    assert any("unknown" in w for w in result.get("warnings", []))


def test_preflight_rejects_a_broken_example(tmp_path):
    """The same inventory with one typo fails the preflight naming the user and the field."""
    inv = tmp_path / "inv"
    shutil.copytree(ROOT / "inventories" / "example", inv)
    users_file = inv / "group_vars" / "all" / "users.yml"
    users = yaml.safe_load(users_file.read_text())
    users["fleet_users"][1]["quotaa"] = "1T"
    users["fleet_users"][2]["uid"] = 10001
    users_file.write_text(yaml.safe_dump(users))
    result = run_task({"gpulab.fleet.fleet_preflight": {}}, inventory=inv)
    assert result.get("failed")
    assert "user 'bob': quotaa: unknown field" in result["msg"]
    assert "user 'carol': uid: 10001 is also the uid of user 'alice'" in result["msg"]


@pytest.mark.netns
def test_common_firewall_table_is_valid_nft(tmp_path):
    """Render the role's nft file for gpu1 of the example lab and let the real nft parser check it."""
    out = tmp_path / "firewall.nft"
    task = {
        "ansible.builtin.template": {
            "src": str(ROOT / "roles" / "common" / "templates" / "gpulab-firewall.nft.j2"),
            "dest": str(out),
            "mode": "0600",
        },
        "delegate_to": "localhost",
        "vars": {
            "ansible_connection": "local",
            **yaml.safe_load((ROOT / "roles" / "common" / "defaults" / "main.yml").read_text()),
            **yaml.safe_load((EXAMPLE_VARS / "gpu_hosts" / "gpu_hosts.yml").read_text()),
        },
    }  # fmt: skip
    task["vars"]["ansible_python_interpreter"] = str(VENV_BIN / "python")
    # what the preflight hands the role in site.yml: the example's users, normalised
    task["vars"]["common_users"] = (
        "{{ fleet_users | gpulab.fleet.fleet_users(fleet_user_defaults, fleet_uid_base, fleet_port_base, "
        "fleet_ports_per_user, fleet_reserved_ports, fleet_admin_ssh_port) }}"
    )
    result = run_task(task, hosts="gpu1", inventory=ROOT / "inventories" / "example")
    assert not result.get("failed"), result.get("msg")
    text = out.read_text()
    # users 10001..10005 -> blocks 20010-20019 to 20050-20059; admin SSH only from the lab network
    assert "th dport 20010-20059 accept" in text
    assert "ip saddr { 10.10.0.0/24 } tcp dport 22 accept" in text
    assert 'iifname { "lxdbr0" } udp dport { 53, 67 } accept' in text
    check = subprocess.run(["unshare", "-n", "nft", "-c", "-f", str(out)], capture_output=True, text=True, check=False)
    assert check.returncode == 0, check.stderr + text


# What names another collection in a role, playbook or plugin: a task's module key, a role, a filter,
# a test, a lookup, a Python import.
FOREIGN_RE = (
    re.compile(r"^\s*(?:- )?([a-z0-9_]+\.[a-z0-9_]+)\.[a-z0-9_]+:", re.M),
    re.compile(r"role: ([a-z0-9_]+\.[a-z0-9_]+)\.[a-z0-9_]+"),
    re.compile(r"(?:\||\bis(?: not)?)\s*([a-z0-9_]+\.[a-z0-9_]+)\.[a-z0-9_]+"),
    re.compile(r"(?:lookup|query)\('([a-z0-9_]+\.[a-z0-9_]+)\.[a-z0-9_]+"),
    re.compile(r"ansible_collections\.([a-z0-9_]+\.[a-z0-9_]+)\."),
)


def test_the_collection_needs_no_other_collection():
    """galaxy.yml and requirements.yml declare no dependency: keep it true (docs/admin-guide.md)."""
    used = {}
    files = [*ROOT.glob("roles/*/[thv]*/*.yml"), *ROOT.glob("roles/*/templates/*.j2"), *ROOT.glob("playbooks/*.yml"),
             *ROOT.glob("plugins/**/*.py")]  # fmt: skip (tasks, handlers, vars: not defaults' sysctl keys)
    for path in files:
        for pattern in FOREIGN_RE:
            for name in pattern.findall(path.read_text()):
                used.setdefault(name, path.relative_to(ROOT))
    assert {"ansible.builtin", "gpulab.fleet"} <= set(used), used
    assert set(used) == {"ansible.builtin", "gpulab.fleet"}, used
    assert yaml.safe_load((ROOT / "galaxy.yml").read_text())["dependencies"] == {}
    assert yaml.safe_load((ROOT / "requirements.yml").read_text())["collections"] == []
