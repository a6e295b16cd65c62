"""The pure side of ldap_users: normalisation of both ldap3 result shapes, validation, planning."""

from __future__ import annotations

import pytest

from ansible_collections.gpulab.fleet.plugins.module_utils.ldap import LdapError, _server_target
from ansible_collections.gpulab.fleet.plugins.module_utils.ldap_users import (
    PlanError,
    normalize_attributes,
    plan,
    validate,
)

PEOPLE = "ou=people,dc=lab,dc=test"
GROUPS = "ou=groups,dc=lab,dc=test"
KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIB4rqAlSWSLGlTsxmdPCmwnUpHa7Z0I+6RQAbwo8mHr5 alice@laptop"

# Recorded from ldap3 2.9.1 against slapd 2.5.13 (the same two entries, read once per get_info mode).
RECORDED = {
    "none": (
        [("uid=alice,ou=people,dc=lab,dc=test",
          {"objectClass": ["inetOrgPerson", "posixAccount", "ldapPublicKey"], "uid": ["alice"], "cn": ["Alice Liddell"],
           "sn": ["Liddell"], "givenName": ["Alice"], "uidNumber": ["5001"], "gidNumber": ["5001"],
           "homeDirectory": ["/home/alice"], "loginShell": ["/bin/bash"], "sshPublicKey": [KEY],
           "mail": ["alice@lab.test"]})],
        [("cn=gpu,ou=groups,dc=lab,dc=test",
          {"objectClass": ["posixGroup"], "cn": ["gpu"], "gidNumber": ["3000"], "memberUid": ["alice"]}),
         ("cn=alice,ou=groups,dc=lab,dc=test",
          {"objectClass": ["posixGroup"], "cn": ["alice"], "gidNumber": ["5001"], "memberUid": []})],
    ),
    "schema": (
        [("uid=alice,ou=people,dc=lab,dc=test",
          {"objectClass": ["inetOrgPerson", "posixAccount", "ldapPublicKey"], "uid": ["alice"], "cn": ["Alice Liddell"],
           "sn": ["Liddell"], "givenName": ["Alice"], "uidNumber": 5001, "gidNumber": 5001,
           "homeDirectory": "/home/alice", "loginShell": "/bin/bash", "sshPublicKey": [KEY.encode()],
           "mail": ["alice@lab.test"]})],
        [("cn=gpu,ou=groups,dc=lab,dc=test",
          {"objectClass": ["posixGroup"], "cn": ["gpu"], "gidNumber": 3000, "memberUid": ["alice"]}),
         ("cn=alice,ou=groups,dc=lab,dc=test",
          {"objectClass": ["posixGroup"], "cn": ["alice"], "gidNumber": 5001, "memberUid": []})],
    ),
}  # fmt: skip
ALICE = {"name": "alice", "uid": 5001, "full_name": "Alice Liddell", "mail": "alice@lab.test", "ssh_keys": [KEY],
         "groups": ["gpu"]}  # fmt: skip
GPU = [{"name": "gpu", "gid": 3000}]


def make_plan(users, current=RECORDED["none"], groups=None, **kw):
    return plan(users, GPU if groups is None else groups, current[0], current[1], PEOPLE, GROUPS, **kw)


def test_both_get_info_shapes_normalise_the_same():
    none_people, none_groups = RECORDED["none"]
    schema_people, schema_groups = RECORDED["schema"]
    assert normalize_attributes(none_people[0][1]) == normalize_attributes(schema_people[0][1])
    assert [normalize_attributes(a) for _dn, a in none_groups] == [normalize_attributes(a) for _dn, a in schema_groups]


def test_normalise_names_case_whitespace_and_empties():
    raw = {"UIDNUMBER": 5, "ObjectClass": ["PosixAccount"], "sshPublicKey": [b"ssh-ed25519  AAA  c "],
           "memberUid": [], "mail": None}  # fmt: skip
    norm = normalize_attributes(raw)
    assert norm == {"uidnumber": ["5"], "objectclass": ["posixaccount"], "sshpublickey": ["ssh-ed25519 AAA c"]}


@pytest.mark.parametrize("mode", ["none", "schema"])
def test_matching_directory_plans_nothing(mode):
    p = make_plan([ALICE], RECORDED[mode])
    assert p.ops == [] and p.before == {} and p.after == {}


def test_only_differing_attributes_are_modified():
    p = make_plan([dict(ALICE, shell="/bin/zsh", ssh_keys=["  " + KEY.replace(" ", "   ") + " "])])
    [op] = p.ops
    assert op.kind == "modify" and op.item == "user alice"
    assert op.changes == [("loginShell", "replace", ["/bin/zsh"])]  # the key only differs in whitespace
    assert p.before["users"]["alice"]["loginshell"] == ["/bin/bash"]
    assert p.after["users"]["alice"]["loginshell"] == ["/bin/zsh"]


def test_last_key_removal_drops_the_auxiliary_class():
    [op] = make_plan([dict(ALICE, ssh_keys=[])]).ops
    assert ("objectClass", "delete", ["ldapPublicKey"]) in op.changes
    assert ("sshPublicKey", "delete", []) in op.changes


def test_unmanaged_mail_is_left_alone():
    assert make_plan([dict(ALICE, mail=None)]).ops == []


def test_new_user_gets_entry_and_private_group_before_memberships():
    bob = {"name": "bob", "uid": 5002, "groups": ["gpu"]}
    p = make_plan([ALICE, bob])
    kinds = [(op.kind, op.item) for op in p.ops]
    assert kinds == [("add", "group bob"), ("add", "user bob"), ("modify", "group gpu")]
    add_user = p.ops[1]
    assert add_user.dn == f"uid=bob,{PEOPLE}"
    assert add_user.attributes["objectClass"] == ["inetOrgPerson", "posixAccount"]
    assert add_user.attributes["gidNumber"] == ["5002"] and "givenName" not in add_user.attributes
    assert p.ops[2].changes == [("memberUid", "add", ["bob"])]
    assert p.summary["users"]["added"] == ["bob"] and p.summary["groups"]["added"] == ["bob"]


def test_absent_disables_and_purge_deletes_with_private_group():
    absent = [{"name": "alice", "state": "absent"}]
    p = make_plan(absent, groups=[])
    assert p.summary["users"]["disabled"] == ["alice"]
    assert [op.kind for op in p.ops] == ["modify", "modify"]  # alice itself, then group gpu
    assert ("loginShell", "replace", ["/usr/sbin/nologin"]) in p.ops[0].changes
    assert p.ops[1].changes == [("memberUid", "delete", ["alice"])]
    p = make_plan(absent, groups=[], purge=True)
    assert [(op.kind, op.item) for op in p.ops[:2]] == [("delete", "user alice"), ("delete", "group alice")]


@pytest.mark.parametrize("prune,kind", [("none", None), ("disable", "disabled"), ("delete", "deleted")])
def test_prune_applies_only_to_unlisted_people(prune, kind):
    p = make_plan([], groups=[], prune=prune)
    if kind is None:
        assert p.ops == []
    else:
        assert p.summary["users"][kind] == ["alice"]


def test_conflicts_with_ldap_name_the_item():
    with pytest.raises(PlanError) as err:
        make_plan([ALICE, {"name": "eve", "uid": 5001, "gid": 7000}, {"name": "bob", "uid": 5002, "groups": ["cpu"]}])
    problems = err.value.problems
    assert "user eve: uid 5001 is already used by alice (in LDAP or this list)" in problems
    assert f"user bob: groups: 'cpu' is neither in groups nor in LDAP under {GROUPS}" in problems
    with pytest.raises(PlanError, match="group gpu: gid 5001 is already used by alice"):
        make_plan([ALICE], groups=[{"name": "gpu", "gid": 5001}])


def test_freed_numbers_can_be_reused_in_the_same_run():
    p = make_plan([{"name": "alice", "state": "absent"}, {"name": "bob", "uid": 5001}], groups=[], purge=True)
    assert p.ops[0].kind == "delete" and ("add", "user bob") in [(op.kind, op.item) for op in p.ops]


def test_validate_reports_every_problem_with_item_field_value():
    problems = validate(
        [
            {"name": "Bob", "uid": 1},
            {"name": "eve", "uid": None},
            {"name": "amy", "uid": 5, "ssh_keys": ["nope"], "mail": "x", "home": "rel/dir", "groups": ["Bad"]},
            {"name": "ann", "uid": 5},
            {"name": "ann", "uid": 6},
        ],
        [{"name": "amy", "gid": 3}, {"name": "g", "gid": None}],
    )
    text = "\n".join(problems)
    for expected in [
        "users[0]: name: 'Bob' is not a valid username",
        "user eve: uid: required when state is present",
        "user amy: ssh_keys[0]: expected 'TYPE BASE64 [comment]'",
        "user amy: mail: 'x' is not a mail address",
        "user amy: home: 'rel/dir' is not an absolute path",
        "user amy: groups: 'Bad' is not a valid group name",
        "user ann: uid: 5 is also the uid of user amy",
        "user ann: name: listed twice (users[3] and users[4])",
        "group amy: name: is also a user",
        "group g: gid: None is not an integer",
    ]:
        assert expected in text, expected


@pytest.mark.parametrize(
    "uri,target,ldapi",
    [
        ("ldap://127.0.0.1:389/", "ldap://127.0.0.1:389", False),
        ("ldaps://ldap.lab.example", "ldaps://ldap.lab.example", False),
        ("ldapi:///", "ldapi:///var/run/slapd/ldapi", True),
        ("ldapi://%2Ftmp%2Fs%2Fldapi", "ldapi:///tmp/s/ldapi", True),
    ],
)
def test_server_uri_forms(uri, target, ldapi):
    assert _server_target(uri) == (target, ldapi)


def test_bad_scheme_and_error_text():
    with pytest.raises(LdapError, match="is not an ldap://"):
        _server_target("http://x")
    assert str(LdapError("bind ldap://x", 49, "invalidCredentials", "")) == "bind ldap://x: 49 invalidCredentials"
