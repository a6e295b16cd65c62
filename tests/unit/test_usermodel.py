"""The user model: merge, normalisation, derived ports and every validation rule."""


import pytest

from ansible_collections.gpulab.fleet.plugins.module_utils import usermodel
from ansible_collections.gpulab.fleet.plugins.module_utils.usermodel import (
    FleetModelError,
    build_model,
    normalize_users,
    parse_settings,
    require_valid,
)
from tests.helpers import public_key


def key(seed: int, comment: str = "x@lab") -> str:
    return public_key(seed, comment)


def user(name="alice", uid=10001, seed=None, **fields):
    seed = seed or (uid % 251 if isinstance(uid, int) else 1)
    return {"name": name, "uid": uid, "host": "gpu1", "ssh_keys": [key(seed)], **fields}


def problems_of(users, defaults=None, settings=None, **kwargs):
    return build_model(users, defaults, settings, **kwargs).problems


def only_problem(users, **kwargs):
    problems = problems_of(users, **kwargs)
    assert len(problems) == 1, problems
    return problems[0]


# ------------------------------------------------------------------------------- merge and defaults


def test_valid_user_normalised_with_builtin_defaults():
    users, problems = normalize_users([user()])
    assert problems == []
    alice = users[0]
    assert alice["gid"] == 10001 and alice["gid_explicit"] is False
    assert alice["full_name"] == "alice"
    assert alice["mail"] is None
    assert alice["gpus"] == "none"
    assert alice["cpu"] is None and alice["memory"] is None and alice["disk"] is None and alice["quota"] is None
    assert alice["desktop"] is False and alice["purge"] is False
    assert alice["state"] == "present"
    assert alice["extra_ports"] == []


def test_user_fields_override_defaults_which_override_builtins():
    defaults = {"memory": "8G", "quota": "100G", "desktop": True, "host": "gpu2"}
    users = require_valid([user(memory="16GiB"), user("bob", 10002)], defaults)
    alice, bob = users
    assert alice["memory"] == 16 << 30 and bob["memory"] == 8 << 30
    assert alice["quota"] == bob["quota"] == 100 << 30
    assert alice["desktop"] is bob["desktop"] is True
    # user() sets host explicitly, so the default host does not win
    assert alice["host"] == "gpu1"
    assert require_valid([{k: v for k, v in user().items() if k != "host"}], defaults)[0]["host"] == "gpu2"


def test_host_may_come_from_defaults_only():
    raw = {"name": "alice", "uid": 10001, "ssh_keys": [key(1)]}
    assert require_valid([raw], {"host": "gpu3"})[0]["host"] == "gpu3"
    assert only_problem([raw]).startswith("user 'alice': host: missing")


def test_normalised_values():
    u = require_valid(
        [
            user(
                full_name="Alice Liddell",
                mail="alice@lab.example.org",
                gpus=[0, "GPU-ABC", "0000:3b:00.0"],
                cpu="0-3, 8",
                disk="100G",
                quota="none",
                desktop="yes",
                ssh_keys=key(1, "alice@laptop") + "  ",  # one key as a string, stray spaces
                extra_ports=[8888, "6006/udp", {"port": "9000"}, {"port": 53, "proto": "UDP"}],
            )
        ]
    )[0]
    assert u["full_name"] == "Alice Liddell"
    assert u["mail"] == "alice@lab.example.org"
    assert u["gpus"] == [0, "GPU-ABC", "0000:3b:00.0"]
    assert u["cpu"] == "0-3,8"
    assert u["disk"] == 100 << 30
    assert u["quota"] is None
    assert u["desktop"] is True
    assert u["ssh_keys"] == [key(1, "alice@laptop")]
    assert u["extra_ports"] == [
        {"port": 8888, "proto": "tcp"},
        {"port": 6006, "proto": "udp"},
        {"port": 9000, "proto": "tcp"},
        {"port": 53, "proto": "udp"},
    ]


@pytest.mark.parametrize(("given", "expected"), [(4, 4), ("4", 4), ("2-5", "2-5"), ("1,3,5", "1,3,5"), (None, None)])
def test_cpu_forms(given, expected):
    assert require_valid([user(cpu=given)])[0]["cpu"] == expected


@pytest.mark.parametrize(("given", "expected"), [("none", "none"), ([], "none"), (None, "none"), ("all", "all")])
def test_gpu_keywords(given, expected):
    assert require_valid([user(gpus=given)])[0]["gpus"] == expected


def test_uid_from_template_string():
    assert require_valid([user(uid="10005")])[0]["uid"] == 10005


# ------------------------------------------------------------------------------------------- ports


def test_port_formula_worked_example():
    settings = {"uid_base": 10000, "port_base": 20000, "ports_per_user": 10}
    u = require_valid([user(uid=10042, desktop=True, extra_ports=[8888, "6006/udp"])], settings=settings)[0]
    # 20000 + (10042 - 10000) * 10 = 20420
    assert u["ports"] == {
        "block": [20420, 20429],
        "ssh": 20420,
        "desktop": 20421,
        "extra": [
            {"port": 8888, "proto": "tcp", "host_port": 20422},
            {"port": 6006, "proto": "udp", "host_port": 20423},
        ],
    }


def test_desktop_slot_is_kept_free_when_desktop_is_off():
    u = require_valid([user(extra_ports=[8888])])[0]
    assert u["ports"]["desktop"] is None
    assert u["ports"]["extra"][0]["host_port"] == u["ports"]["ssh"] + 2


def test_ports_do_not_move_when_other_users_change():
    before = require_valid([user("alice", 10001), user("bob", 10007)])
    after = require_valid([user("bob", 10007, desktop=True)])
    assert before[1]["ports"]["ssh"] == after[0]["ports"]["ssh"] == 20070


def test_first_uid_gets_port_base():
    assert require_valid([user(uid=10000)])[0]["ports"]["ssh"] == 20000


def test_custom_settings():
    settings = {"uid_base": 2000, "port_base": 40000, "ports_per_user": 4}
    u = require_valid([user(uid=2003, extra_ports=[1, 2])], settings=settings)[0]
    assert u["ports"]["block"] == [40012, 40015]
    assert [e["host_port"] for e in u["ports"]["extra"]] == [40014, 40015]


def test_uid_below_base_is_an_error():
    assert only_problem([user(uid=999)]) == "user 'alice': uid: 999 is below fleet_uid_base 10000"


def test_extra_ports_beyond_the_block():
    problem = only_problem([user(extra_ports=[1, 2, 3])], settings={"ports_per_user": 4})
    assert problem.startswith("user 'alice': extra_ports: 3 extra ports do not fit")
    assert "fleet_ports_per_user=4" in problem and "at most 2" in problem


def test_last_block_that_fits_with_the_defaults():
    assert require_valid([user(uid=14552)])[0]["ports"]["block"] == [65520, 65529]
    assert "beyond 65535" in only_problem([user(uid=14553)])


def test_block_beyond_65535():
    # 20000 + 4554 * 10 = 65540 > 65535
    problem = only_problem([user(uid=14554)])
    assert problem == "user 'alice': uid: 14554 gives the port block 65540-65549, beyond 65535"
    # the last block that fits ends exactly at 65535 with port_base 5536
    assert require_valid([user(uid=10000 + 5999)], settings={"port_base": 5536})[0]["ports"]["block"] == [65526, 65535]


def test_reserved_ports():
    settings = {"reserved_ports": [20011, "20012-20013"]}
    # desktop off: 20011 is not used, the extra port on 20012 is
    problem = only_problem([user(extra_ports=[8888])], settings=settings)
    assert problem == "user 'alice': uid: 10001 gives host port 20012, which is reserved"
    problems = problems_of([user(desktop=True)], settings=settings)
    assert problems == ["user 'alice': uid: 10001 gives host port 20011, which is reserved"]


def test_port_22_and_admin_port_are_always_reserved():
    assert "host port 22," in only_problem([user(uid=10002)], settings={"port_base": 2, "ports_per_user": 10})
    problems = problems_of([user(uid=10000)], settings={"port_base": 2222, "admin_ssh_port": 2222})
    assert problems == ["user 'alice': uid: 10000 gives host port 2222, which is reserved"]


def test_duplicate_uid_ports_reported_once_as_uid():
    problems = problems_of([user("alice", 10001), user("bob", 10001, seed=7)])
    assert problems == ["user 'bob': uid: 10001 is also the uid of user 'alice'"]


def test_extra_port_already_exposed():
    problems = problems_of([user(desktop=True, extra_ports=[22, 3389, "22/udp"])])
    assert problems == [
        "user 'alice': extra_ports: 22/tcp is already exposed as the SSH port",
        "user 'alice': extra_ports: 3389/tcp is already exposed as the remote desktop port",
    ]
    # without a desktop, 3389 may be exposed as an extra port
    assert problems_of([user(extra_ports=[3389])]) == []


@pytest.mark.parametrize(
    ("ports", "fragment"),
    [
        ([0], "extra_ports: #1: 0 is out of range"),
        ([70000], "extra_ports: #1: 70000 is out of range"),
        (["http"], "extra_ports: #1: 'http' is not a port number"),
        (["80/sctp"], "extra_ports: #1: protocol 'sctp' is not tcp or udp"),
        ([{"port": 80, "protocol": "tcp"}], "extra_ports: #1: unknown key 'protocol' (did you mean 'proto'?)"),
        ([80, 80], "extra_ports: #2: 80/tcp is listed twice"),
        ("8080", "extra_ports: '8080' is not a list of container ports"),
    ],
)
def test_bad_extra_ports(ports, fragment):
    assert only_problem([user(extra_ports=ports)]).startswith(f"user 'alice': {fragment}")


# -------------------------------------------------------------------------------------- settings


def test_settings_defaults():
    settings, problems = parse_settings(None)
    assert problems == []
    assert (settings.uid_base, settings.port_base, settings.ports_per_user) == (10000, 20000, 10)
    assert settings.reserved == {22}


@pytest.mark.parametrize(
    ("raw", "fragment"),
    [
        ({"uid_base": "ten"}, "settings: fleet_uid_base: 'ten' is not a whole number"),
        ({"ports_per_user": 1}, "settings: fleet_ports_per_user: 1 is too small"),
        ({"port_base": 70000}, "settings: fleet_port_base: 70000 is out of range"),
        ({"reserved_ports": ["80-70"]}, "settings: fleet_reserved_ports: '80-70' is not a port"),
        ({"reserved_ports": [99999]}, "settings: fleet_reserved_ports: 99999 is not a port"),
        ({"reserved_ports": 80}, "settings: fleet_reserved_ports: 80 is not a list"),
        ({"port_bsae": 1}, "settings: unknown setting fleet_port_bsae (did you mean 'port_base'?)"),
    ],
)
def test_bad_settings(raw, fragment):
    problems = parse_settings(raw)[1]
    assert len(problems) == 1 and problems[0].startswith(fragment), problems


# ---------------------------------------------------------------------------------- names and ids


@pytest.mark.parametrize(
    ("name", "fragment"),
    [
        ("root", "'root' is reserved"),
        ("Alice", "'Alice' is not a valid username"),
        ("al ice", "is not a valid username"),
        ("bob-", "must not end with '-'"),
        (42, "must be a string"),
    ],
)
def test_bad_names(name, fragment):
    problem = only_problem([user(name=name)])
    assert problem.startswith(f"user {name!r}: name: ") or problem.startswith("user #1: name: "), problem
    assert fragment in problem


def test_missing_name_and_uid():
    problems = problems_of([{"host": "gpu1", "ssh_keys": [key(1)]}])
    assert problems == [
        "user #1: name: missing (every user needs a name)",
        "user #1: uid: missing (every user needs a uid)",
    ]


def test_not_a_mapping():
    assert problems_of(["alice"]) == ["user #1: must be a mapping of fields, got 'alice'"]
    assert problems_of({"alice": {}}) == ["fleet_users must be a list, got dict"]


def test_duplicate_names():
    problems = problems_of([user("alice", 10001), user("bob", 10002), user("alice", 10003)])
    assert problems == ["user 'alice': name: 'alice' is listed twice (users #1 and #3)"]


@pytest.mark.parametrize(("uid", "fragment"), [("abc", "'abc' is not a whole number"), (True, "True is not")])
def test_bad_uid(uid, fragment):
    assert only_problem([user(uid=uid)]).startswith(f"user 'alice': uid: {fragment}")


def test_explicit_shared_gid_is_allowed():
    assert problems_of([user("alice", 10001, gid=5000), user("bob", 10002, gid=5000)]) == []


def test_default_gid_shared_by_accident():
    # bob joins alice's user private group: alice did not choose to share it
    problems = problems_of([user("alice", 10001), user("bob", 10002, gid=10001)])
    assert problems == [
        "user 'bob': gid: 10001 is the private group of user 'alice' "
        "(sharing a gid requires every user to set it explicitly)"
    ]
    # stated explicitly on both sides, it is a deliberate shared group
    assert problems_of([user("alice", 10001, gid=10001), user("bob", 10002, gid=10001)]) == []


def test_bad_gid():
    assert only_problem([user(gid="staff")]) == "user 'alice': gid: 'staff' is not a whole number"
    assert only_problem([user(gid=27)]) == "user 'alice': gid: 27 is not a number in 1000-2147483647"


# ---------------------------------------------------------------------------------------- ssh keys


@pytest.mark.parametrize(
    ("keys", "fragment"),
    [
        (["ssh-ed25519 !!!notbase64"], "key #1: ssh-ed25519 key body is not valid base64"),
        (["ssh-dss AAAAB3NzaC1kc3M="], "key #1: unknown key type 'ssh-dss'"),
        ([f'command="/bin/sh" {key(1)}'], "key #1: key options are not allowed"),
        ([key(1) + "\n" + key(2)], "key #1: must be one line"),
        (["just-a-word"], "key #1: expected 'TYPE BASE64 [comment]'"),
        ([key(1), key(1, "again")], "key #2: duplicate of an earlier key"),
        ({"a": 1}, "{'a': 1} is not a list of public keys"),
        ([], "no key: the user could not log in"),
    ],
)
def test_bad_keys(keys, fragment):
    problem = only_problem([user(ssh_keys=keys)])
    assert problem.startswith("user 'alice': ssh_keys: "), problem
    assert fragment in problem


def test_rsa_key_whose_body_is_ed25519():
    body = key(1).split()[1]
    assert "key #1: key body is of type 'ssh-ed25519', not 'ssh-rsa'" in only_problem(
        [user(ssh_keys=[f"ssh-rsa {body}"])]
    )


def test_absent_user_needs_no_key():
    assert problems_of([user(ssh_keys=[], state="absent")]) == []


def test_same_key_in_two_accounts():
    problems = problems_of([user("alice", 10001, seed=9), user("bob", 10002, seed=9)])
    assert len(problems) == 1
    assert problems[0].startswith("user 'bob': ssh_keys: key ssh-ed25519 ...")
    assert problems[0].endswith("is also a key of user 'alice'")


# ------------------------------------------------------------------------------ sizes, cpu, flags


@pytest.mark.parametrize("size_field", ["memory", "disk", "quota"])
def test_bad_sizes(size_field):
    problem = only_problem([user(**{size_field: "lots"})])
    assert problem.startswith(f"user 'alice': {size_field}: invalid size 'lots'")
    problem = only_problem([user(**{size_field: "0"})])
    assert problem.startswith(f"user 'alice': {size_field}: '0' must be more than 0")


@pytest.mark.parametrize("cpu", ["3-1", "0-", "a", 0, "0,,1", "1.5"])
def test_bad_cpu(cpu):
    assert only_problem([user(cpu=cpu)]).startswith(f"user 'alice': cpu: {cpu!r}")


@pytest.mark.parametrize("flag", ["desktop", "purge"])
def test_bad_booleans(flag):
    assert only_problem([user(**{flag: "maybe"})]) == f"user 'alice': {flag}: 'maybe' is not a boolean"


def test_bad_state_with_hint():
    assert only_problem([user(state="presnt")]) == (
        "user 'alice': state: 'presnt' is not one of present, stopped, absent (did you mean 'present'?)"
    )


def test_purge_only_with_absent():
    assert only_problem([user(purge=True)]) == (
        "user 'alice': purge: true only makes sense with state absent (state is 'present')"
    )
    assert problems_of([user(purge=True, state="absent")]) == []


@pytest.mark.parametrize(
    ("fields", "fragment"),
    [
        ({"mail": "nobody"}, "mail: 'nobody' is not a mail address"),
        ({"full_name": "A\nB"}, "full_name: 'A\\nB' must be one line"),
        ({"host": ""}, "host: '' is not a non-empty string"),
        ({"gpus": "some"}, "gpus: 'some' must be 'none', 'all' or a list"),
        ({"gpus": [0, "0"]}, "gpus: [0, '0'] lists a GPU twice"),
        ({"gpus": [{"index": 0}]}, "gpus: {'index': 0} is not a GPU index"),
    ],
)
def test_bad_fields(fields, fragment):
    assert only_problem([user(**fields)]).startswith(f"user 'alice': {fragment}")


# ------------------------------------------------------------------------------- unknown fields


def test_unknown_field_with_hint():
    assert only_problem([user(quotaa="10G")]) == "user 'alice': quotaa: unknown field (did you mean 'quota'?)"
    assert only_problem([user(colour="red")]) == "user 'alice': colour: unknown field"


def test_unknown_and_personal_defaults():
    problems = problems_of([user()], {"memroy": "8G", "uid": 10000})
    assert problems == [
        "defaults: memroy: unknown field (did you mean 'memory'?)",
        "defaults: uid: cannot be a default (it is personal to each user)",
    ]
    assert problems_of([user()], ["memory"]) == ["defaults: fleet_user_defaults must be a mapping, got ['memory']"]


# ------------------------------------------------------------------------------ every problem at once


def test_every_problem_is_reported_naming_user_and_field():
    users = [
        user("alice", 10001, desktop=True),
        user("bob", 10001, quotaa="1G", memory="lots", host="gpu9", seed=3),
        user("root", 10003, state="gone", seed=4),
        {"uid": 10004, "ssh_keys": ["nonsense"], "host": "gpu1"},
    ]
    problems = problems_of(users, hosts=["gpu1", "gpu2"])
    assert problems == [
        "user 'bob': quotaa: unknown field (did you mean 'quota'?)",
        "user 'bob': memory: invalid size 'lots': expected a number with an optional unit such as 10G, 500GiB, 2T",
        "user 'root': name: 'root' is reserved",
        "user 'root': state: 'gone' is not one of present, stopped, absent",
        "user #4: name: missing (every user needs a name)",
        "user #4: ssh_keys: key #1: expected 'TYPE BASE64 [comment]', got 'nonsense'",
        "user 'bob': uid: 10001 is also the uid of user 'alice'",
        "user 'bob': host: 'gpu9' is not a host of the inventory (did you mean 'gpu2'?) (known: gpu1, gpu2)",
    ]


def test_require_valid_raises_with_all_problems():
    with pytest.raises(FleetModelError) as info:
        require_valid([user(uid=1), user("bob", 10002, cpu="x")])
    assert len(info.value.problems) == 2
    assert "user 'alice': uid:" in str(info.value) and "user 'bob': cpu:" in str(info.value)


# ------------------------------------------------------------------------------ hosts and GPUs

GPUS = {
    "gpu1": [
        {"index": 0, "uuid": "GPU-6f1c0a6e-0000-0000-0000-000000000000", "pci_bus_id": "00000000:3B:00.0"},
        {"index": 1, "uuid": "GPU-77aa0a6e-0000-0000-0000-000000000000", "pci_bus_id": "00000000:AF:00.0"},
    ],
    "cpuonly": [],
}


@pytest.mark.parametrize(
    "gpus",
    [
        [0, 1],
        ["1"],
        ["GPU-6f1c0a6e-0000-0000-0000-000000000000"],
        ["gpu-6F1C0A6E-0000-0000-0000-000000000000"],
        ["0000:3b:00.0"],
        ["3B:00.0"],
        ["00000000:af:00.0"],
        "all",
    ],
)
def test_gpu_requests_that_match(gpus):
    assert problems_of([user(gpus=gpus)], gpu_facts=GPUS) == []


def test_unknown_gpu():
    problem = only_problem([user(gpus=[0, 2])], gpu_facts=GPUS)
    assert problem.startswith("user 'alice': gpus: 2 is not a GPU of host 'gpu1' (it has: 0 (GPU-6f1c")
    assert "1 (GPU-77aa0a6e-0000-0000-0000-000000000000, 0000:af:00.0)" in problem
    assert only_problem([user(gpus=["GPU-nope"])], gpu_facts=GPUS).startswith("user 'alice': gpus: 'GPU-nope'")
    assert only_problem([user(gpus=["0000:3c:00.0"])], gpu_facts=GPUS).startswith("user 'alice': gpus: '0000:3c")


def test_placement_problems_of_badly_named_users_keep_their_label():
    problems = problems_of([user(name="Root", gpus=[5]), {**user(gpus=[5]), "name": None}], gpu_facts=GPUS)
    assert problems[-2].startswith("user 'Root': gpus: 5 is not a GPU of host 'gpu1'")
    assert problems[-1].startswith("user #2: gpus: 5 is not a GPU of host 'gpu1'")


def test_same_gpu_by_two_ids():
    problem = only_problem([user(gpus=[0, "0000:3b:00.0"])], gpu_facts=GPUS)
    assert problem == "user 'alice': gpus: '0000:3b:00.0' is GPU 0 of host 'gpu1' again"
    # without facts, only the same id in two spellings can be spotted
    assert only_problem([user(gpus=["3b:00.0", "0000:3B:00.0"])]).startswith("user 'alice': gpus: ")


def test_gpus_on_a_host_without_any():
    for gpus in ("all", [0]):
        problem = only_problem([user(host="cpuonly", gpus=gpus)], gpu_facts=GPUS)
        assert problem == f"user 'alice': gpus: {gpus!r} requested, but host 'cpuonly' has no GPUs"
    assert problems_of([user(host="cpuonly")], gpu_facts=GPUS) == []


def test_unknown_gpu_facts_are_a_warning_not_a_problem():
    model = build_model([user(host="gpu7", gpus=[3]), user("bob", 10002, host="gpu7", gpus="all")], gpu_facts=GPUS)
    assert model.problems == []
    assert model.warnings == [
        "GPUs of host 'gpu7' are unknown (no gpulab_gpus facts); requests of 'alice', 'bob' not checked"
    ]


def test_hosts_checked_only_when_given():
    assert problems_of([user(host="anywhere")]) == []
    problem = only_problem([user(host="gpu3")], hosts=[], hosts_label="inventory group 'gpu_hosts'")
    assert problem == "user 'alice': host: 'gpu3' is not a host of inventory group 'gpu_hosts' (known: none)"


# ---------------------------------------------------------------------------------- slices


@pytest.fixture
def lab():
    return require_valid(
        [
            user("alice", 10001, desktop=True, gpus=[0], cpu=4, memory="8G", quota="50G", extra_ports=[8888]),
            user("bob", 10002, host="gpu2", state="stopped"),
            user("carol", 10003, state="absent", purge=True),
        ]
    )


def test_host_users(lab):
    assert [u["name"] for u in usermodel.host_users(lab, "gpu1")] == ["alice", "carol"]
    assert usermodel.host_users(lab, "gpu9") == []


def test_workstation_items(lab):
    alice, carol = usermodel.workstation_items(lab, "gpu1")
    assert alice == {
        "name": "alice",
        "user": {"name": "alice", "uid": 10001, "gid": 10001, "ssh_keys": [key(10001 % 251)]},
        "limits": {"cpu": "4", "memory": "8GiB"},
        "gpus": [0],
        "state": "started",
        "purge": False,
    }
    assert (carol["state"], carol["purge"], carol["limits"]) == ("absent", True, {})
    bob = usermodel.workstation_items(lab, "gpu2")[0]
    assert bob["state"] == "stopped" and bob["gpus"] == "none"
    cpuset = require_valid([user(cpu="0-3,8", disk="500MB")])
    assert usermodel.workstation_items(cpuset, "gpu1")[0]["limits"] == {"cpu": "0-3,8", "disk": "500000000"}


def test_port_maps(lab):
    assert usermodel.port_maps(lab, "gpu1", {"alice": "10.0.0.5"}) == [
        {"owner": "alice", "proto": "tcp", "host_port": 20010, "dest_ip": "10.0.0.5", "dest_port": 22},
        {"owner": "alice", "proto": "tcp", "host_port": 20011, "dest_ip": "10.0.0.5", "dest_port": 3389},
        {"owner": "alice", "proto": "tcp", "host_port": 20012, "dest_ip": "10.0.0.5", "dest_port": 8888},
    ]
    # absent carol gets no maps even with an address; unknown addresses are skipped
    assert usermodel.port_maps(lab, "gpu1", {"alice": "10.0.0.5", "carol": "10.0.0.6"})[-1]["owner"] == "alice"
    assert usermodel.port_maps(lab, "gpu1", {}) == []
    assert [m["dest_ip"] for m in usermodel.port_maps(lab, "gpu2")] == [None]


def test_user_port_range_spans_the_derived_blocks(lab):
    # uids 10001..10003 -> blocks 20010-20019 .. 20030-20039, the absent member's too (her maps close,
    # not the firewall's range); the same blocks port_maps uses
    assert usermodel.user_port_range(lab) == "20010-20039"
    assert usermodel.user_port_range(require_valid([user("dora", 10042)])) == "20420-20429"
    assert usermodel.user_port_range([]) == "none"
    with pytest.raises(usermodel.FleetModelError, match="expected normalised users"):
        usermodel.user_port_range([{"name": "raw", "uid": 10001}])


def test_home_datasets(lab):
    alice, bob = usermodel.home_datasets(lab)
    assert alice == {
        "name": "alice",
        "properties": {"refquota": "50GiB", "quota": "none"},
        "owner": 10001,
        "group": 10001,
        "mode": "0700",
        "state": "present",
    }
    assert bob["properties"] == {"refquota": "none", "quota": "none"} and bob["state"] == "present"
    # carol (absent, purge) only in the purge call
    (carol,) = usermodel.home_datasets(lab, purge=True)
    assert (carol["name"], carol["state"]) == ("carol", "absent")


def test_absent_without_purge_is_in_the_normal_call():
    users = require_valid([user(state="absent")])
    assert usermodel.home_datasets(users)[0]["state"] == "absent"
    assert usermodel.ldap_users(users)[0]["state"] == "absent"
    assert usermodel.home_datasets(users, purge=True) == usermodel.ldap_users(users, purge=True) == []


def test_ldap_users(lab):
    alice, bob = usermodel.ldap_users(lab)
    assert alice == {
        "name": "alice",
        "uid": 10001,
        "gid": 10001,
        "full_name": "alice",
        "ssh_keys": [key(10001 % 251)],
        "state": "present",
    }
    assert bob["state"] == "present"
    assert [(u["name"], u["state"]) for u in usermodel.ldap_users(lab, purge=True)] == [("carol", "absent")]
    with_mail = require_valid([user(mail="alice@lab.example.org")])
    assert usermodel.ldap_users(with_mail)[0]["mail"] == "alice@lab.example.org"


def test_storage_and_directory_users_are_both_calls_in_one_list(lab):
    homes = usermodel.storage_users(lab)
    assert homes[0] == {"name": "alice", "uid": 10001, "gid": 10001, "quota": "50GiB", "state": "present",
                        "purge": False}  # fmt: skip
    assert [(h["name"], h["quota"], h["state"], h["purge"]) for h in homes] == [
        ("alice", "50GiB", "present", False),
        ("bob", "none", "present", False),
        ("carol", "none", "absent", True),
    ]
    entries = usermodel.directory_users(lab)
    assert entries[:2] == usermodel.ldap_users(lab)  # no purge key: the role's default (false)
    assert entries[2:] == [{**usermodel.ldap_users(lab, purge=True)[0], "purge": True}]


def test_leavers_whose_gpu_host_did_not_finish_the_leavers_pass_keep_their_homes(lab):
    """carol (absent, purge, on gpu1) is held while gpu1 has not finished the leavers' pass: her home is
    left out of the storage items (the role then leaves it as it is); present members never are."""
    assert usermodel.held_leavers(lab, ["gpu1", "gpu2"]) == []
    assert usermodel.held_leavers(lab, ["gpu2"]) == ["carol"]
    assert usermodel.held_leavers(lab, []) == ["carol"]  # no GPU host in the run (--limit storage)
    assert [h["name"] for h in usermodel.storage_users(lab, held=["carol"])] == ["alice", "bob"]
    assert usermodel.storage_users(lab, held=[]) == usermodel.storage_users(lab)


def test_slices_refuse_raw_users():
    with pytest.raises(FleetModelError, match="expected normalised users"):
        usermodel.home_datasets([user()])


def test_ports_summary(lab):
    assert usermodel.ports_summary(lab)["alice"] == {
        "host": "gpu1",
        "ssh": 20010,
        "desktop": 20011,
        "extra": ["8888/tcp -> 20012"],
    }


# ------------------------------------------------------------------------------------- ssh config


def test_ssh_config_with_desktop(lab):
    text = usermodel.ssh_config(lab[0], lab="mylab", addresses={"gpu1": "gpu1.lab.example.org"})
    assert text == (
        "# mylab: workstation of alice on gpu1 (generated by gpulab.fleet)\n"
        "Host mylab-alice\n"
        "    HostName gpu1.lab.example.org\n"
        "    Port 20010\n"
        "    User alice\n"
        "\n"
        "# remote desktop through SSH: ssh -N mylab-alice-desktop, then RDP to localhost:20011\n"
        "Host mylab-alice-desktop\n"
        "    HostName gpu1.lab.example.org\n"
        "    Port 20010\n"
        "    User alice\n"
        "    LocalForward 20011 localhost:3389\n"
    )


def test_ssh_configs_hostvars_like_addresses_and_absent_users(lab):
    hostvars = {"gpu2": {"ansible_host": "192.0.2.7"}, "gpu1": {"fleet_public_address": "a", "ansible_host": "b"}}
    configs = usermodel.ssh_configs(lab, addresses=hostvars)
    assert set(configs) == {"alice", "bob"}
    assert "Host lab-bob\n    HostName 192.0.2.7\n    Port 20020\n    User bob\n" in configs["bob"]
    assert "LocalForward" not in configs["bob"]
    assert "HostName a\n" in configs["alice"]
    assert "HostName gpu2\n" in usermodel.ssh_configs(lab)["bob"]


def test_purge_problems_name_the_user_and_the_value():
    items = [
        {"name": "alice", "state": "present", "purge": True},
        {"name": "bob", "purge": "maybe"},
        {"name": "carol", "state": "absent", "purge": "yes"},
        {"name": "dave", "state": "absent"},
        {"name": "erin", "purge": None},
    ]
    assert usermodel.purge_problems(items) == [
        "user alice: purge: true only makes sense with state absent (state is present)",
        "user bob: purge: maybe is not a boolean",
    ]
