"""The user model's slices must be valid input of the resource modules they feed.

Checked against each module's own argument spec as documented (DOCUMENTATION), so that renaming an
option of a module breaks here and not in the middle of a site.yml run. Types are checked with
Ansible's ArgumentSpecValidator, the same code the modules run.
"""

import importlib

import pytest
import yaml
from ansible.module_utils.common.arg_spec import ArgumentSpecValidator

from ansible_collections.gpulab.fleet.plugins.module_utils import storage_paths, usermodel
from tests.helpers import ROOT, public_key


def key(seed: int) -> str:
    return public_key(seed, f"u{seed}@lab")


LAB = usermodel.require_valid(
    [
        {
            "name": "alice",
            "uid": 10001,
            "host": "gpu1",
            "ssh_keys": [key(1)],
            "mail": "alice@lab.example.org",
            "gpus": [0, "GPU-6f1c"],
            "cpu": "0-3",
            "memory": "32G",
            "disk": "100G",
            "quota": "500G",
            "desktop": True,
            "extra_ports": [8888, "6006/udp"],
        },
        {"name": "bob", "uid": 10002, "host": "gpu1", "ssh_keys": [key(2)], "gpus": "all", "state": "stopped"},
        {"name": "carol", "uid": 10003, "host": "gpu1", "ssh_keys": [], "state": "absent", "purge": True},
    ]
)

_TYPE_KEYS = ("type", "elements", "required", "default", "choices", "suboptions")


def spec_from_doc(options: dict) -> dict:
    """An argument_spec from documented options (types, requiredness, suboptions)."""
    spec = {}
    for name, doc in options.items():
        entry = {k: doc[k] for k in _TYPE_KEYS if k in doc and k != "suboptions"}
        if doc.get("suboptions"):
            entry["options"] = spec_from_doc(doc["suboptions"])
        spec[name] = entry
    return spec


def module_spec(module: str) -> dict:
    try:
        mod = importlib.import_module(f"ansible_collections.gpulab.fleet.plugins.modules.{module}")
    except ImportError as exc:  # pragma: no cover - the module is another engineer's, maybe not there yet
        pytest.fail(f"gpulab.fleet.{module} cannot be imported: {exc}")
    return spec_from_doc(yaml.safe_load(mod.DOCUMENTATION)["options"])


def assert_valid(module: str, params: dict):
    spec = module_spec(module)
    # only the options we pass matter; the module's other required options are the role's business
    spec = {name: {**entry, "required": False} for name, entry in spec.items()}
    result = ArgumentSpecValidator(spec).validate(params)
    assert not result.error_messages, (module, result.error_messages)
    assert not result.unsupported_parameters, (module, result.unsupported_parameters)


def test_workstations_feed_lxd_workstations():
    items = usermodel.workstation_items(LAB, "gpu1")
    assert [i["name"] for i in items] == ["alice", "bob", "carol"]
    assert_valid("lxd_workstations", {"workstations": items})


SHARED = [{"name": "datasets"}, {"name": "old", "state": "absent"}]


@pytest.mark.parametrize("nfs_server", ["192.168.77.10", ""])
def test_workstation_storage_feeds_mounts_and_lxd_workstations(nfs_server):
    got = storage_paths.workstation_storage(
        LAB,
        "gpu1",
        nfs_server=nfs_server,
        export_root="/tank/fleet",
        home_root="/srv/gpulab/home",
        shared_root="/srv/gpulab/shared",
        options="rw,hard",
        shared=SHARED,
        processes=10000,
    )
    assert (len(got["home_mounts"]), len(got["gone_mounts"])) == ((2, 1) if nfs_server else (0, 0))
    assert_valid("mounts", {"mounts": got["home_mounts"] + got["gone_mounts"]})
    assert_valid("lxd_workstations", {"workstations": got["workstations"], "elsewhere": got["elsewhere"]})


def test_shared_mounts_feed_mounts():
    mounts = storage_paths.shared_mounts(SHARED, server="s", export_root="/tank/fleet", root="/srv/s", options="ro")
    assert_valid("mounts", {"mounts": mounts})


@pytest.mark.parametrize("call", ["keep", "purge"])
def test_home_dataset_calls_feed_zfs_datasets(call):
    calls = storage_paths.home_dataset_calls(usermodel.storage_users(LAB), mode="0700", properties={}, quota="none")
    items = calls[call]
    assert items
    assert_valid("zfs_datasets", {"parent": "tank/fleet/home", "datasets": items, "purge": call == "purge"})


def test_port_maps_feed_port_map():
    maps = usermodel.port_maps(LAB, "gpu1", {"alice": "10.10.0.2", "bob": "10.10.0.3"})
    assert len(maps) == 5  # alice: ssh, desktop, 2 extra; bob: ssh; carol (absent): none
    assert_valid("port_map", {"maps": maps})


@pytest.mark.parametrize("purge", [False, True])
def test_home_datasets_feed_zfs_datasets(purge):
    items = usermodel.home_datasets(LAB, purge=purge)
    assert items
    assert_valid("zfs_datasets", {"parent": "tank/fleet/home", "datasets": items, "purge": purge})


@pytest.mark.parametrize("purge", [False, True])
def test_ldap_users_feed_ldap_users(purge):
    items = usermodel.ldap_users(LAB, purge=purge)
    assert items
    assert_valid("ldap_users", {"users": items, "purge": purge})


def role_spec(role: str) -> dict:
    path = ROOT / "roles" / role / "meta" / "argument_specs.yml"
    return spec_from_doc(yaml.safe_load(path.read_text())["argument_specs"]["main"]["options"])


@pytest.mark.parametrize(
    ("role", "option", "items"),
    [
        ("storage_server", "storage_server_users", usermodel.storage_users(LAB)),
        ("directory", "directory_users", usermodel.directory_users(LAB)),
    ],
)
def test_role_slices_feed_their_roles(role, option, items):
    assert [i["name"] for i in items] == ["alice", "bob", "carol"]
    result = ArgumentSpecValidator({option: role_spec(role)[option]}).validate({option: items})
    assert not result.error_messages, (role, result.error_messages)
    assert not result.unsupported_parameters, (role, result.unsupported_parameters)


def test_the_validator_does_catch_a_wrong_key():
    with pytest.raises(AssertionError, match=r"quota"):
        assert_valid("zfs_datasets", {"datasets": [{"name": "alice", "quota": "1G"}]})
