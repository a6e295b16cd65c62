"""One contract: whatever the preflight accepts, every module accepts (issue 14, item 5).

The preflight runs before anything changes; a value it lets through and a module rejects fails a run
halfway, after the storage server and LDAP were already changed. So inputs are generated at the
modules' boundaries, field by field (ids, names, sizes, CPU sets, ports, GPU ids, keys, mail, names
of people, states) and for the settings that shape them; each user the preflight accepts is turned
into every module's input by the same functions the roles call (the fleet filters' module_utils), and
each module's own validation (the code its main() runs before it touches anything) must find nothing.
"""

from __future__ import annotations

import pytest

from ansible_collections.gpulab.fleet.plugins.module_utils import (
    ldap_users,
    mounts,
    port_map,
    storage_paths,
    usermodel,
    workstations,
    zfs,
)
from tests.unit.test_usermodel_contract import key

BASE = {"name": "base", "uid": 10000, "host": "gpu1", "ssh_keys": [key(9)]}
CAND = {"name": "cand", "uid": 10010, "host": "gpu1", "ssh_keys": [key(8)]}

# Values at and around each module's limits, and shapes an inventory may hold (strings from templating).
CASES: dict[str, list] = {
    "name": ["a", "a" * 31, "a" * 32, "a-b", "a-", "A", "root", "alice-archived-20260101120000",
             "alice-archived-x", "bob-archive", "carol_x", "9lives"],
    "uid": [999, 1000, 9999, 10001, "10002", 2**31, 4294967294, 4294967295, 2**32, -1, True, "1e4"],
    "gid": [0, 1, 27, 999, 1000, "1001", 10000, 4294967294, 4294967295, 2**32, -5, False],
    "memory": ["1", "1B", "512M", "1.5G", "1T", 1024, "16E", "17E", "0", "-1G", "none", "1 GiB", "1gb"],
    "disk": ["1", "100G", "9999999999T", "0.1", "none"],
    "quota": ["1", "500G", "0", "none", "1P", "2.5T"],
    "cpu": [0, 1, "1", 512, "0", "0-3", "3-0", "0,2", "1-1", "0-3,", "all", "none", True, -1],
    "extra_ports": [[1], [22], [1024], [65535], [65536], [0], ["6006/udp"], ["8888/sctp"], [{"port": 80}],
                    ["80", "80/tcp"], [80, "80/udp"], [1, 2, 3, 4, 5, 6, 7, 8], [1, 2, 3, 4, 5, 6, 7, 8, 9]],
    "gpus": ["all", "none", [], [0], [-1], ["GPU-6f1c1d2e"], ["MIG-0a1b2c3d"], ["0000:01:00.0"], [True],
             [0, "0"], "0", [15]],
    "ssh_keys": [[], [key(1)], key(1), [key(1), key(1)], ["ssh-ed25519 AAAA"], [f'command="x" {key(1)}'],
                 [key(1) + " comment with spaces"]],
    "mail": ["a@b", "ada@lab.example.org", "x", "a@b@c", "", None],
    "full_name": ["Ada Lovelace", "Zoë Ø'Brien", "", "x\ny", " padded "],
    "desktop": [True, False, "yes", "no", "maybe"],
    "state": ["present", "stopped", "absent", "started", "gone"],
    "host": ["gpu1", "store", "gpu-2.lab"],
}
PAIRS = [{"state": "absent", "purge": True}, {"state": "present", "purge": True}, {"state": "absent", "purge": "yes"},
         {"gid": 10000}, {"uid": 10000}, {"desktop": True, "extra_ports": [1, 2, 3, 4, 5, 6, 7, 8]}]
SETTINGS = [
    {},
    {"uid_base": 1000},
    {"uid_base": 999},
    {"uid_base": 0},
    {"port_base": 1024, "ports_per_user": 2},
    {"port_base": 65000, "ports_per_user": 100},
    {"admin_ssh_port": 2222, "reserved_ports": ["20000-20009"]},
]
HOSTS = ("gpu1", "store", "gpu-2.lab")
# What the roles pass the modules besides the users (their defaults).
WORKSTATION_DEFAULTS = {"image": "gpulab-workstation", "profiles": ["default"], "gpu_mode": "lxd"}
BRIDGE = "10.10.0.0/24"


def candidates():
    for field_name, values in CASES.items():
        for value in values:
            yield {}, {**CAND, field_name: value}
    for extra in PAIRS:
        yield {}, {**CAND, **extra}
    for settings in SETTINGS[1:]:
        for uid in (settings.get("uid_base", 10000), settings.get("uid_base", 10000) + 1, 10010):
            yield settings, {**CAND, "uid": uid}


def module_problems(users: list[dict], settings: usermodel.Settings) -> list[str]:
    """Every problem each module's own validation finds in what the roles would pass it."""
    problems: list[str] = []
    addresses = {u["name"]: f"10.10.0.{i + 2}" for i, u in enumerate(users)}
    for host in HOSTS:
        for nfs_server in ("192.168.77.10", ""):
            storage = storage_paths.workstation_storage(
                users, host, nfs_server=nfs_server, export_root="/tank/fleet", home_root="/srv/gpulab/home",
                shared_root="/srv/gpulab/shared", options="rw,hard", shared=[{"name": "datasets"}],
                processes=10000,
            )
            problems += workstations.validate(storage["workstations"], WORKSTATION_DEFAULTS)[1]
            problems += workstations.validate([{"name": n, "state": "absent"} for n in storage["elsewhere"]],
                                              WORKSTATION_DEFAULTS)[1]
            problems += mounts.spec_problems(storage["home_mounts"] + storage["gone_mounts"])
        problems += port_map.validate(
            usermodel.port_maps(users, host, addresses),
            bridge_subnet=BRIDGE,
            reserved_ports=sorted({22, settings.admin_ssh_port}),
        )[2]
    storage_users = usermodel.storage_users(users)
    for call in storage_paths.home_dataset_calls(storage_users, mode="0700", properties={}, quota="none").values():
        problems += zfs.spec_problems("tank/fleet/home", call)
    directory = usermodel.directory_users(users)
    for purge in (False, True):
        items = [{k: v for k, v in u.items() if k != "purge"} for u in directory if bool(u.get("purge")) == purge]
        problems += ldap_users.validate(items, [], private_groups=True)
    return problems


def run_case(settings_raw: dict, candidate: dict):
    settings, setting_problems = usermodel.parse_settings(settings_raw)
    base = {**BASE, "uid": settings.uid_base} if settings_raw.get("uid_base") is not None else BASE
    users, problems = usermodel.normalize_users([base, candidate], settings=settings_raw)
    if problems or setting_problems:
        return "rejected", problems + setting_problems
    return "accepted", module_problems(users, settings)


ALL = list(candidates())


@pytest.mark.parametrize(("settings", "candidate"), ALL, ids=[f"{i}" for i in range(len(ALL))])
def test_what_the_preflight_accepts_every_module_accepts(settings, candidate):
    verdict, problems = run_case(settings, candidate)
    if verdict == "accepted":
        assert problems == [], (settings, candidate)


def test_the_cases_reach_both_sides():
    verdicts = [run_case(s, c)[0] for s, c in ALL]
    # a generator whose every case is rejected (or accepted) would prove nothing
    assert verdicts.count("accepted") > 60 and verdicts.count("rejected") > 40


@pytest.mark.parametrize(
    ("field_name", "value", "why"),
    [
        ("gid", 27, r"gid: 27 is not a number in 1000-2147483647"),
        ("gid", 999, r"gid: 999 is not a number in 1000-2147483647"),
        ("gid", 4294967295, r"gid: 4294967295 is not a number in 1000-2147483647"),
        ("uid", 4294967295, r"uid: 4294967295 is not a number in 1000-2147483647"),
        ("name", "alice-archived-20260101120000", r"contains '-archived-', which marks archived workstations"),
    ],
)
def test_the_preflight_names_what_a_module_would_have_refused(field_name, value, why):
    verdict, problems = run_case({}, {**CAND, field_name: value})
    assert verdict == "rejected"
    assert any(why in p for p in problems), problems


def test_a_uid_base_below_what_the_modules_take_is_refused():
    _settings, problems = usermodel.parse_settings({"uid_base": 999})
    assert problems == ["settings: fleet_uid_base: 999 is below 1000 (workstations and homes need ids from 1000)"]


def test_each_module_check_in_the_contract_can_fail():
    # The contract is only as good as module_problems: normalised users broken past the preflight must
    # be caught by each module's own validation, so none of them is silently skipped.
    users, problems = usermodel.normalize_users([BASE])
    assert problems == [] and module_problems(users, usermodel.Settings()) == []
    spaced = set(module_problems([{**users[0], "name": "a b"}], usermodel.Settings()))
    assert {p.split(" ")[0] for p in spaced} == {"datasets[0]", "maps[0]", "mounts[0]", "users[0]:", "workstation"}
    assert module_problems([{**users[0], "gid": 27}], usermodel.Settings())[0].startswith("workstation base: user.gid")
    assert module_problems([{**users[0], "mail": "x"}], usermodel.Settings())[0].startswith("user base: mail")
