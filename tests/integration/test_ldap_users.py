"""gpulab.fleet.ldap_users against a real throwaway slapd (tests/fixtures/slapd.py)."""

from __future__ import annotations

import pytest

from tests.helpers import public_key, run_module

pytestmark = pytest.mark.slapd

NOLOGIN = "/usr/sbin/nologin"


def key(seed: str) -> str:
    return public_key(seed, seed)


def sync(srv, users, tls="ldaps", check=False, **options):
    return run_module("ldap_users", {**srv.module_params(tls), "users": users, **options}, check=check)


def person(srv, name):
    return srv.entries(srv.people_dn).get(f"uid={name},{srv.people_dn}".lower())


def group(srv, name):
    return srv.entries(srv.groups_dn).get(f"cn={name},{srv.groups_dn}".lower())


def ok(result):
    assert not result["failed"], result.get("msg")
    return result


@pytest.mark.parametrize("get_info", ["none", "schema"])
def test_add_modify_remove_keys_idempotent_in_both_get_info_modes(slapd, get_info):
    users = [
        {"name": "alice", "uid": 5001, "full_name": "Alice Pleasance Liddell", "mail": "alice@lab.test",
         "ssh_keys": [key("a1"), key("a2")]},
        {"name": "bob", "uid": 5002, "gid": 6002, "shell": "/bin/zsh", "home": "/srv/home/bob"},
    ]  # fmt: skip
    r = ok(sync(slapd, users, get_info=get_info))
    assert r["changed"] and sorted(r["users"]["added"]) == ["alice", "bob"]
    alice = person(slapd, "alice")
    assert alice["cn"] == ["Alice Pleasance Liddell"] and alice["sn"] == ["Liddell"]
    assert alice["givenname"] == ["Alice Pleasance"] and alice["mail"] == ["alice@lab.test"]
    assert sorted(alice["sshpublickey"]) == sorted([key("a1"), key("a2")])
    assert {c.lower() for c in alice["objectclass"]} >= {"inetorgperson", "posixaccount", "ldappublickey"}
    bob = person(slapd, "bob")
    assert bob["gidnumber"] == ["6002"] and bob["loginshell"] == ["/bin/zsh"]
    assert bob["homedirectory"] == ["/srv/home/bob"] and "sshpublickey" not in bob
    assert group(slapd, "bob")["gidnumber"] == ["6002"]

    # Idempotent under BOTH client modes, whichever wrote the entries.
    for mode in ("none", "schema"):
        again = ok(sync(slapd, users, get_info=mode))
        assert again["changed"] is False, (mode, again)

    # Modify: drop one key, rename; only alice changes.
    users[0].update(ssh_keys=[key("a2")], full_name="Alice Hargreaves")
    r = ok(sync(slapd, users, get_info=get_info))
    assert r["users"]["modified"] == ["alice"]
    alice = person(slapd, "alice")
    assert alice["sshpublickey"] == [key("a2")] and alice["sn"] == ["Hargreaves"]
    assert alice["givenname"] == ["Alice"]

    # Remove the last key: the auxiliary class goes with it.
    users[0]["ssh_keys"] = []
    ok(sync(slapd, users, get_info=get_info))
    alice = person(slapd, "alice")
    assert "sshpublickey" not in alice
    assert "ldappublickey" not in {c.lower() for c in alice["objectclass"]}
    assert ok(sync(slapd, users, get_info=get_info))["changed"] is False


def test_shared_groups_and_memberships(slapd):
    # A memberUid of someone this run does not manage must survive.
    slapd.ldap(
        "ldapadd",
        input=f"dn: cn=cpu,{slapd.groups_dn}\nobjectClass: posixGroup\ncn: cpu\ngidNumber: 3001\nmemberUid: zed\n",
    )
    groups = [{"name": "gpu", "gid": 3000}]
    users = [
        {"name": "alice", "uid": 5001, "groups": ["gpu", "cpu"]},
        {"name": "bob", "uid": 5002, "groups": ["gpu"]},
    ]
    r = ok(sync(slapd, users, groups=groups))
    assert sorted(r["groups"]["added"]) == ["alice", "bob", "gpu"]
    assert r["groups"]["modified"] == ["cpu"]
    assert sorted(group(slapd, "gpu")["memberuid"]) == ["alice", "bob"]
    assert sorted(group(slapd, "cpu")["memberuid"]) == ["alice", "zed"]
    assert group(slapd, "alice")["gidnumber"] == ["5001"] and "memberuid" not in group(slapd, "alice")
    assert ok(sync(slapd, users, groups=groups))["changed"] is False

    users[0]["groups"] = ["gpu"]
    r = ok(sync(slapd, users, groups=groups))
    assert r["groups"]["modified"] == ["cpu"] and r["users"]["modified"] == []
    assert group(slapd, "cpu")["memberuid"] == ["zed"]

    # Group state absent deletes it; a user still naming it is refused before anything changes.
    r = sync(slapd, users, groups=[{"name": "gpu", "state": "absent"}])
    assert r["failed"] and "user alice: groups: 'gpu'" in r["msg"]
    assert group(slapd, "gpu") is not None
    for u in users:
        u["groups"] = []
    r = ok(sync(slapd, users, groups=[{"name": "gpu", "state": "absent"}]))
    assert r["groups"]["deleted"] == ["gpu"] and group(slapd, "gpu") is None


def _three(slapd):
    groups = [{"name": "gpu", "gid": 3000}]
    users = [
        {"name": n, "uid": 5000 + i, "ssh_keys": [key(n)], "groups": ["gpu"]}
        for i, n in enumerate(["alice", "bob", "carol"], 1)
    ]
    ok(sync(slapd, users, groups=groups))
    return users, groups


def test_unlisted_people_left_alone_without_prune(slapd):
    users, groups = _three(slapd)
    r = ok(sync(slapd, users[:1], groups=groups))
    assert r["changed"] is False
    assert person(slapd, "bob")["sshpublickey"] == [key("bob")]
    assert sorted(group(slapd, "gpu")["memberuid"]) == ["alice", "bob", "carol"]


def test_prune_disable(slapd):
    users, groups = _three(slapd)
    r = ok(sync(slapd, users[:1], groups=groups, prune="disable"))
    assert sorted(r["users"]["disabled"]) == ["bob", "carol"] and r["users"]["deleted"] == []
    for name in ("bob", "carol"):
        entry = person(slapd, name)
        assert "sshpublickey" not in entry and entry["loginshell"] == [NOLOGIN]
        assert entry["uidnumber"] and group(slapd, name) is not None  # entry and private group kept
    assert group(slapd, "gpu")["memberuid"] == ["alice"]
    assert person(slapd, "alice")["sshpublickey"] == [key("alice")]
    assert ok(sync(slapd, users[:1], groups=groups, prune="disable"))["changed"] is False


def test_prune_delete(slapd):
    users, groups = _three(slapd)
    r = ok(sync(slapd, users[:1], groups=groups, prune="delete"))
    assert sorted(r["users"]["deleted"]) == ["bob", "carol"]
    assert sorted(r["groups"]["deleted"]) == ["bob", "carol"]
    assert person(slapd, "bob") is None and group(slapd, "bob") is None
    assert group(slapd, "gpu")["memberuid"] == ["alice"] and person(slapd, "alice") is not None
    assert ok(sync(slapd, users[:1], groups=groups, prune="delete"))["changed"] is False


def test_absent_disables_unless_purge(slapd):
    users, groups = _three(slapd)
    users[1] = {"name": "bob", "state": "absent"}
    r = ok(sync(slapd, users, groups=groups))
    assert r["users"]["disabled"] == ["bob"]
    assert person(slapd, "bob")["loginshell"] == [NOLOGIN] and "bob" not in group(slapd, "gpu")["memberuid"]
    r = ok(sync(slapd, users, groups=groups, purge=True))
    assert r["users"]["deleted"] == ["bob"] and person(slapd, "bob") is None and group(slapd, "bob") is None
    assert ok(sync(slapd, users, groups=groups, purge=True))["changed"] is False


@pytest.mark.parametrize("tls", ["ldaps", "starttls"])
def test_tls_with_lab_ca_and_wrong_ca(slapd, tls):
    users = [{"name": "alice", "uid": 5001}]
    params = slapd.module_params(tls)
    bad = run_module("ldap_users", {**params, "ca_file": slapd.other_ca_file, "users": users})
    assert bad["failed"] and "certificate" in bad["msg"].lower(), bad["msg"]
    assert person(slapd, "alice") is None
    assert ok(run_module("ldap_users", {**params, "users": users}))["changed"]
    assert person(slapd, "alice") is not None


def test_ldapi_sasl_external(slapd):
    params = {"server_uri": slapd.ldapi_uri, "people_dn": slapd.people_dn, "groups_dn": slapd.groups_dn}
    r = ok(run_module("ldap_users", {**params, "users": [{"name": "alice", "uid": 5001}]}))
    assert r["changed"] and person(slapd, "alice")["uidnumber"] == ["5001"]


def test_check_mode_changes_nothing_and_diffs(slapd):
    users, groups = _three(slapd)
    before = slapd.entries()
    users[0].update(ssh_keys=[key("new")], full_name="Alice Doe")
    users.append({"name": "dave", "uid": 5004})
    r = ok(sync(slapd, users, groups=groups, check=True, prune="delete"))
    assert r["changed"] and r["users"]["added"] == ["dave"] and r["users"]["modified"] == ["alice"]
    assert r["diff"]["after"]["users"]["alice"]["sshpublickey"] == [key("new")]
    assert r["diff"]["before"]["users"]["alice"]["sshpublickey"] == [key("alice")]
    assert r["diff"]["before"]["users"]["dave"] is None
    assert slapd.entries() == before


def test_bad_input_is_refused_before_any_change(slapd):
    base = [{"name": "alice", "uid": 5001}]
    cases = {
        "name": ([{"name": "eve,ou=x", "uid": 5009}], "'eve,ou=x' is not a valid username"),
        "reserved": ([{"name": "root", "uid": 5009}], "'root' is reserved"),
        "dup uid": ([{"name": "eve", "uid": 5001}], "user eve: uid: 5001 is also the uid of user alice"),
        "key": ([{"name": "eve", "uid": 5009, "ssh_keys": ["ssh-ed25519 AAAA!!"]}], "user eve: ssh_keys[0]"),
        "key options": ([{"name": "eve", "uid": 5009, "ssh_keys": ['command="x" ' + key("e")]}], "options"),
    }
    before = slapd.entries()
    for label, (extra, message) in cases.items():
        r = sync(slapd, base + extra)
        assert r["failed"] and message in r["msg"], (label, r["msg"])
    assert slapd.entries() == before


def test_uid_already_used_in_ldap(slapd):
    ok(sync(slapd, [{"name": "alice", "uid": 5001}]))
    before = slapd.entries()
    r = sync(slapd, [{"name": "alice", "uid": 5001}, {"name": "eve", "uid": 5001, "gid": 7000}])
    assert r["failed"] and "5001 is also the uid of user alice" in r["msg"]
    # Against LDAP only (alice is not in this list, so not a within-list duplicate).
    r = sync(slapd, [{"name": "eve", "uid": 5001, "gid": 7000}])
    assert r["failed"] and "user eve: uid 5001 is already used by alice" in r["msg"], r["msg"]
    r = sync(slapd, [{"name": "eve", "uid": 5009, "gid": 5001}])
    assert r["failed"] and "group eve: gid 5001 is already used by alice" in r["msg"], r["msg"]
    assert slapd.entries() == before


def test_connection_errors_carry_ldap_result(slapd):
    users = [{"name": "alice", "uid": 5001}]
    r = run_module("ldap_users", {**slapd.module_params("ldaps"), "bind_pw": "wrong", "users": users})
    assert r["failed"] and "49 invalidCredentials" in r["msg"], r["msg"]
    assert r["ldap_result"] == 49
    params = {**slapd.module_params("none"), "server_uri": "ldap://127.0.0.1:1", "timeout": 2}
    r = run_module("ldap_users", {**params, "users": users})
    assert r["failed"] and "connect ldap://127.0.0.1:1" in r["msg"], r["msg"]
    r = run_module("ldap_users", {**slapd.module_params("ldaps"), "people_dn": f"ou=nobody,{slapd.suffix}",
                                  "users": users})  # fmt: skip
    assert r["failed"] and "32 noSuchObject" in r["msg"], r["msg"]
    assert person(slapd, "alice") is None


def test_one_failing_user_does_not_stop_the_others(slapd):
    # An entry with the DN ldap_users would use, but not a posixAccount: invisible to the
    # planner, so the add fails on the server with its result code.
    slapd.ldap("ldapadd", input=f"dn: uid=dave,{slapd.people_dn}\nobjectClass: account\nuid: dave\n")
    r = sync(slapd, [{"name": "alice", "uid": 5001}, {"name": "dave", "uid": 5004}, {"name": "erin", "uid": 5005}])
    assert r["failed"] and r["changed"]
    [error] = r["errors"]
    assert error.startswith(f"user dave: add uid=dave,{slapd.people_dn}: 68 entryAlreadyExists"), error
    assert error in r["msg"]
    assert person(slapd, "alice") is not None and person(slapd, "erin") is not None
