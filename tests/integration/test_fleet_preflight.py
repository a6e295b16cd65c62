"""fleet_preflight and the fleet filters through ansible-playbook, against a temporary inventory.

The preflight is controller-only (no backend): what matters is how it reads the inventory (vars,
groups, hostvars[host].gpulab_gpus) and how its result reaches the play.
"""

import subprocess
import sys

import pytest
import yaml

from tests.helpers import VENV_BIN, ansible_env, public_key, run_task

FILTERS = (
    "fleet_users",
    "fleet_host_users",
    "fleet_workstations",
    "fleet_ports",
    "fleet_home_datasets",
    "fleet_ldap_users",
    "fleet_ssh_config",
    "fleet_purge_problems",
)


def key(seed: int, comment: str) -> str:
    return public_key(seed, comment)


GPU1_FACTS = [
    {"index": 0, "uuid": "GPU-11111111-2222-3333-4444-555555555555", "pci_bus_id": "00000000:3B:00.0"},
    {"index": 1, "uuid": "GPU-66666666-2222-3333-4444-555555555555", "pci_bus_id": "00000000:AF:00.0"},
]

VALID_USERS = [
    {
        "name": "alice",
        "uid": 10001,
        "full_name": "Alice Liddell",
        "ssh_keys": [key(1, "alice@laptop")],
        "gpus": [0, "GPU-66666666-2222-3333-4444-555555555555"],
        "desktop": True,
        "extra_ports": [8888],
    },
    # a uid written as a template, as inventories sometimes do
    {"name": "bob", "uid": "{{ 10000 + 5 }}", "host": "gpu2", "gpus": "all", "ssh_keys": [key(2, "bob")]},
]


def write_inventory(tmp_path, users, *, extra_vars=None, gpu3_in_group=False):
    gpu_hosts = {"gpu1": {"gpulab_gpus": GPU1_FACTS, "ansible_host": "192.0.2.11"}, "gpu2": {}}
    other = {"localhost": {"ansible_connection": "local", "ansible_python_interpreter": sys.executable}}
    (gpu_hosts if gpu3_in_group else other)["gpu3"] = {"gpulab_gpus": []}
    inventory = {
        "all": {
            "vars": {
                "fleet_users": users,
                "fleet_user_defaults": {"host": "gpu1", "quota": "50G", "memory": "16G"},
                **(extra_vars or {}),
            },
            "children": {"gpu_hosts": {"hosts": gpu_hosts}, "storage": {"hosts": other}},
        }
    }
    path = tmp_path / "inventory.yml"
    path.write_text(yaml.safe_dump(inventory, sort_keys=False))
    return path


def test_valid_model_passes_and_returns_ports(tmp_path):
    inv = write_inventory(tmp_path, VALID_USERS)
    result = run_task({"gpulab.fleet.fleet_preflight": {}}, inventory=inv)
    assert result.get("failed") is not True, result
    assert result["changed"] is False
    users = result["ansible_facts"]["fleet_users_normalized"]
    assert [u["name"] for u in users] == ["alice", "bob"]
    alice, bob = users
    assert alice["ports"] == {
        "block": [20010, 20019],
        "ssh": 20010,
        "desktop": 20011,
        "extra": [{"port": 8888, "proto": "tcp", "host_port": 20012}],
    }
    assert alice["memory"] == 16 << 30 and alice["quota"] == 50 << 30
    assert bob["uid"] == 10005 and bob["ports"]["ssh"] == 20050
    assert result["ports"]["bob"] == {"host": "gpu2", "ssh": 20050, "desktop": None, "extra": []}
    # gpu2 has no gpulab_gpus fact: bob's "all" cannot be checked, which is said, not hidden
    assert any("GPUs of host 'gpu2' are unknown" in w for w in result.get("warnings", [])), result


def test_check_mode_gives_the_same_answer(tmp_path):
    inv = write_inventory(tmp_path, VALID_USERS)
    result = run_task({"gpulab.fleet.fleet_preflight": {}}, inventory=inv, check=True)
    assert result.get("failed") is not True, result
    assert result["changed"] is False
    assert result["ports"]["alice"]["ssh"] == 20010


def test_invalid_model_fails_listing_every_problem(tmp_path):
    users = [
        *VALID_USERS,
        {"name": "carol", "uid": 10001, "ssh_keys": [key(3, "carol")], "quotaa": "1T"},  # uid of alice, typo
        {"name": "root", "uid": 10007, "ssh_keys": ["ssh-rsa AAAA"], "gpus": [2]},  # reserved, bad key, no GPU 2
        {"name": "dave", "uid": 10008, "host": "gpu9", "ssh_keys": [key(4, "dave")], "memory": "lots"},
        {"name": "erin", "uid": 10009, "host": "gpu3", "ssh_keys": [key(5, "erin")]},  # gpu3: not a GPU host
    ]
    inv = write_inventory(tmp_path, users)
    result = run_task({"gpulab.fleet.fleet_preflight": {}}, inventory=inv)
    assert result["failed"] is True
    assert "ansible_facts" not in result
    expected = [
        "user 'carol': quotaa: unknown field (did you mean 'quota'?)",
        "user 'root': name: 'root' is reserved",
        "user 'root': ssh_keys: key #1: ssh-rsa key body is too short",
        "user 'dave': memory: invalid size 'lots'",
        "user 'carol': uid: 10001 is also the uid of user 'alice'",
        "user 'root': gpus: 2 is not a GPU of host 'gpu1'",
        "user 'dave': host: 'gpu9' is not a host of inventory group 'gpu_hosts'",
        "user 'erin': host: 'gpu3' is not a host of inventory group 'gpu_hosts'",
    ]
    problems = result["problems"]
    assert len(problems) == len(expected), problems
    for line, start in zip(problems, expected, strict=True):
        assert line.startswith(start), (line, start)
    # one problem per line in the message an admin reads
    assert result["msg"].splitlines()[1:] == problems


def test_without_the_gpu_group_any_inventory_host_is_accepted(tmp_path):
    users = [
        {"name": "erin", "uid": 10009, "host": "gpu3", "ssh_keys": [key(5, "erin")]},
        {"name": "dave", "uid": 10008, "host": "gpu9", "ssh_keys": [key(4, "dave")]},
    ]
    inv = write_inventory(tmp_path, users, extra_vars={"fleet_gpu_group": "no_such_group"})
    result = run_task({"gpulab.fleet.fleet_preflight": {}}, inventory=inv)
    (problem,) = result["problems"]
    assert problem.startswith("user 'dave': host: 'gpu9' is not a host of the inventory (did you mean 'gpu")
    assert problem.endswith("(known: gpu1, gpu2, gpu3, localhost)")


def test_gpu_facts_from_hostvars_and_empty_gpu_list(tmp_path):
    users = [{"name": "erin", "uid": 10009, "host": "gpu3", "gpus": "all", "ssh_keys": [key(5, "erin")]}]
    inv = write_inventory(tmp_path, users, gpu3_in_group=True)
    result = run_task({"gpulab.fleet.fleet_preflight": {}}, inventory=inv)
    assert result["problems"] == ["user 'erin': gpus: 'all' requested, but host 'gpu3' has no GPUs"]


def test_task_args_override_inventory_vars(tmp_path):
    inv = write_inventory(tmp_path, VALID_USERS, extra_vars={"fleet_port_base": 30000})
    task = {
        "gpulab.fleet.fleet_preflight": {
            "users": [{"name": "frank", "uid": 10002, "host": "gpu7", "ssh_keys": [key(6, "frank")]}],
            "ports_per_user": 4,
            "gpu_hosts": ["gpu7"],
        }
    }
    result = run_task(task, inventory=inv)
    assert result.get("failed") is not True, result
    (frank,) = result["ansible_facts"]["fleet_users_normalized"]
    # port_base from the inventory variable, block size from the task: 30000 + 2 * 4
    assert frank["ports"]["block"] == [30008, 30011]
    assert frank["memory"] == 16 << 30  # fleet_user_defaults still applies


def test_bad_option_type_is_refused(tmp_path):
    inv = write_inventory(tmp_path, VALID_USERS)
    result = run_task({"gpulab.fleet.fleet_preflight": {"uid_base": "many"}}, inventory=inv)
    assert result["failed"] is True
    assert "uid_base" in result["msg"]


def test_filters_in_a_playbook(tmp_path):
    inv = write_inventory(tmp_path, VALID_USERS)
    users = "fleet_users | gpulab.fleet.fleet_users(fleet_user_defaults)"
    expr = "{{ " + users + " | gpulab.fleet.fleet_ssh_config(hostvars, 'mylab') }}"
    result = run_task({"ansible.builtin.debug": {"msg": expr}}, inventory=inv)
    assert result.get("failed") is not True, result
    assert result["msg"]["alice"].startswith("# mylab: workstation of alice on gpu1")
    assert "Host mylab-alice\n    HostName 192.0.2.11\n    Port 20010\n    User alice\n" in result["msg"]["alice"]
    assert "LocalForward 20011 localhost:3389" in result["msg"]["alice"]
    assert "Host mylab-bob\n    HostName gpu2\n    Port 20050\n" in result["msg"]["bob"]

    expr = "{{ " + users + " | gpulab.fleet.fleet_ports('gpu1') }}"
    result = run_task({"ansible.builtin.debug": {"msg": expr}}, inventory=inv)
    assert [(m["host_port"], m["dest_port"]) for m in result["msg"]] == [(20010, 22), (20011, 3389), (20012, 8888)]


def test_filter_fails_listing_problems(tmp_path):
    inv = write_inventory(tmp_path, [*VALID_USERS, {"name": "Bad", "uid": 5, "ssh_keys": []}])
    result = run_task({"ansible.builtin.debug": {"msg": "{{ fleet_users | gpulab.fleet.fleet_users }}"}}, inventory=inv)
    assert result["failed"] is True
    assert "user 'Bad': name:" in result["msg"]
    assert "user 'Bad': uid: 5 is below fleet_uid_base 10000" in result["msg"]


@pytest.mark.parametrize("name", FILTERS)
def test_filter_docs_render(name):
    proc = subprocess.run(
        [str(VENV_BIN / "ansible-doc"), "-t", "filter", f"gpulab.fleet.{name}"],
        capture_output=True,
        text=True,
        env=ansible_env(),
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    assert f"gpulab.fleet.{name}" in proc.stdout and "EXAMPLES" in proc.stdout and "RETURN VALUES" in proc.stdout
    assert not proc.stderr.strip(), proc.stderr


def test_preflight_docs_render():
    proc = subprocess.run(
        [str(VENV_BIN / "ansible-doc"), "gpulab.fleet.fleet_preflight"],
        capture_output=True,
        text=True,
        env=ansible_env(),
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    for text in ("fleet_users_normalized", "gpu_facts", "ports_per_user", "EXAMPLES", "RETURN VALUES"):
        assert text in proc.stdout
    assert not proc.stderr.strip(), proc.stderr


@pytest.mark.parametrize(
    ("directory_vars", "problem"),
    [
        ({"directory_admin_pw": "a real one"}, None),
        ({"directory_mode": "external"}, None),  # an existing LDAP server: no admin password of ours
        ({}, "directory_admin_pw is not set"),
        ({"directory_admin_pw": "Change-Me-later"}, "directory_admin_pw is still a placeholder"),
        ({"directory_admin_pw": "{{ vault_directory_admin_pw }}"}, "directory_admin_pw cannot be read ("),
    ],
    ids=["set", "external", "unset", "placeholder", "vault-file-missing"],
)
def test_the_labs_secrets_are_checked_on_the_hosts_that_need_them(tmp_path, directory_vars, problem):
    inv = write_inventory(tmp_path, VALID_USERS)
    inventory = yaml.safe_load(inv.read_text())
    inventory["all"]["children"]["directory"] = {"hosts": {"nas1": {"ansible_host": "192.0.2.5", **directory_vars}}}
    inv.write_text(yaml.safe_dump(inventory, sort_keys=False))
    result = run_task({"gpulab.fleet.fleet_preflight": {}}, inventory=inv)
    if problem is None:
        assert result.get("failed") is not True, result
        return
    assert result["failed"] is True
    [line] = [p for p in result["problems"] if p.startswith("nas1 (group directory): ")]
    assert problem in line, line
    assert "Change-Me-later" not in result["msg"]  # a reason, never the value
