"""Role gpulab.fleet.directory, deploy mode, configuring a real running slapd through ldapi.

This machine has no systemd, so the package/service part (directory_slapd_service) is exercised on
the lab's `store` VM by molecule `lab` (site.yml in deploy mode with the sshd keys command; its verify
reads LDAP over ldaps/StartTLS with the role's CA and checks sshd -T). Here the role configures a
throwaway slapd from the fixture (directory_slapd_service: false): it adds its own database (suffix,
rootDN/rootPW, indexes, access), the unique overlay, the unique module, TLS from a self-signed lab
CA, the base entries, and syncs users over ldapi EXTERNAL. Every check reads slapd back with ldapsearch.
"""

from __future__ import annotations

import json
import shutil
import socket
import ssl
import subprocess
import tempfile
import uuid
from pathlib import Path

import pytest
import yaml

from tests.helpers import ROOT, VENV_BIN, ansible_env, run_task

pytestmark = pytest.mark.slapd

KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIB4rqAlSWSLGlTsxmdPCmwnUpHa7Z0I+6RQAbwo8mHr5 alice@laptop"


def run_role(
    role_vars: dict,
    check: bool = False,
    inventory: Path | None = None,
    timeout: float = 600,
    tasks_from: str | None = None,
) -> dict:
    """Run the role once (localhost, or every host of inventory); returns stats, failed and changed tasks.

    tasks_from: include only that task file of the role (as playbooks/users.yml does with sync.yml).
    """
    play = {"hosts": "all" if inventory else "localhost", "gather_facts": False, "vars": role_vars}
    if tasks_from:
        play["tasks"] = [{"name": "Include the role", "ansible.builtin.include_role":
                          {"name": "gpulab.fleet.directory", "tasks_from": tasks_from}}]  # fmt: skip
    else:
        play["roles"] = [{"role": "gpulab.fleet.directory"}]
    play = [play]
    with tempfile.TemporaryDirectory() as tmp:
        pb = Path(tmp) / "play.yml"
        pb.write_text(yaml.safe_dump(play))
        cmd = [str(VENV_BIN / "ansible-playbook"), str(pb), "--diff"]
        if inventory:
            cmd += ["-i", str(inventory)]
        else:
            cmd += ["-i", "localhost,", "-c", "local", "-e", f"ansible_python_interpreter={VENV_BIN / 'python'}"]
        if check:
            cmd.append("--check")
        env = ansible_env({"ANSIBLE_STDOUT_CALLBACK": "ansible.builtin.json"})
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=timeout, check=False)
    out = json.loads(proc.stdout)
    results = [
        (task["task"]["name"], host_result)
        for play_out in out["plays"]
        for task in play_out["tasks"]
        for host_result in task["hosts"].values()
    ]
    if not out.get("plays"):
        raise AssertionError(f"ansible-playbook failed (rc={proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    failed = [
        (name, r.get("msg"), [(i.get("item", {}).get("item", {}).get("name"), i.get("stderr") or i.get("msg"))
                              for i in r.get("results", []) if i.get("failed")])
        for name, r in results
        if r.get("failed")
    ]  # fmt: skip
    changed = [name for name, r in results if r.get("changed")]
    stats = next(iter(out["stats"].values()))
    return {"stats": stats, "failed": failed, "changed": changed, "rc": proc.returncode}


@pytest.fixture
def deployed(slapd_factory):
    srv = slapd_factory(tls=True, unique=False)
    workdir = Path(tempfile.mkdtemp(prefix="gf-dir-role-"))
    suffix = f"dc=r{uuid.uuid4().hex[:8]},dc=test"
    role_vars = {
        "directory_mode": "deploy",
        "directory_slapd_service": False,
        "directory_ldapi_uri": srv.ldapi_uri,
        "directory_suffix": suffix,
        "directory_admin_pw": "role-admin-pw",
        "directory_config_dir": str(workdir / "etc"),
        "directory_db_directory": str(workdir / "db"),
        "directory_tls_san": ["DNS:localhost", "IP:127.0.0.1"],
        "directory_groups": [{"name": "gpu", "gid": 3000}],
        "directory_users": [
            {"name": "alice", "uid": 5001, "full_name": "Alice Liddell", "ssh_keys": [KEY], "groups": ["gpu"]},
            {"name": "bob", "uid": 5002},
        ],
    }
    # The role creates its config dir in deploy.yml; the fixture's temp dir stands in for /etc/ldap.
    (workdir / "etc").mkdir()
    yield srv, role_vars, suffix, workdir
    shutil.rmtree(workdir, ignore_errors=True)


def search(srv, base, filt="(objectClass=*)", scope="sub"):
    out = srv.ldap("ldapsearch", "-LLL", "-o", "ldif-wrap=no", "-b", base, "-s", scope, filt, check=False)
    return out.stdout


def test_deploy_mode_configures_slapd_and_syncs_users_idempotently(deployed):
    srv, role_vars, suffix, workdir = deployed
    first = run_role(role_vars)
    assert first["failed"] == [] and first["rc"] == 0, first
    assert first["stats"]["changed"] > 0

    db = search(srv, "cn=config", f"(olcSuffix={suffix})", scope="one")
    assert f"olcRootDN: cn=admin,{suffix}" in db
    for index in ("uid eq", "uidNumber eq", "gidNumber eq", "memberUid eq"):
        assert f"olcDbIndex: {index}" in db
    assert "cn=peercred,cn=external,cn=auth manage" in db
    overlay = search(srv, "cn=config", "(objectClass=olcUniqueConfig)")
    assert f"olcUniqueURI: ldap:///ou=people,{suffix}?uidNumber?sub" in overlay
    assert "olcModuleLoad: {1}unique" in search(srv, "cn=module{0},cn=config", scope="base")
    people = search(srv, f"ou=people,{suffix}")
    assert f"sshPublicKey: {KEY}" in people and "uid: bob" in people
    assert "memberUid: alice" in search(srv, f"cn=gpu,ou=groups,{suffix}", scope="base")
    whoami = subprocess.run(["ldapwhoami", "-x", "-H", srv.ldapi_uri, "-D", f"cn=admin,{suffix}", "-w",
                             "role-admin-pw"], capture_output=True, text=True, check=False)  # fmt: skip
    assert whoami.returncode == 0, whoami.stderr

    # The unique overlay now guards the new database.
    dup = srv.ldap("ldapadd", input=(f"dn: uid=mallory,ou=people,{suffix}\nobjectClass: account\n"
                                     "objectClass: posixAccount\nuid: mallory\ncn: m\nuidNumber: 5001\n"
                                     "gidNumber: 5001\nhomeDirectory: /home/m\n"), check=False)  # fmt: skip
    assert dup.returncode == 19, dup.stderr

    # slapd serves the role's certificate: its lab CA verifies ldaps, the fixture's CA no longer does.
    role_ca = str(workdir / "etc" / "tls" / "ca.crt")
    assert _ldaps_ok(srv, role_ca) and not _ldaps_ok(srv, srv.ca_file)

    second = run_role(role_vars)
    assert second["failed"] == [] and second["stats"]["changed"] == 0, second["changed"]


def _ldaps_ok(srv, ca_file) -> bool:
    ctx = ssl.create_default_context(cafile=ca_file)
    host, port = srv.ldaps_uri.removeprefix("ldaps://").rsplit(":", 1)
    try:
        with socket.create_connection((host, int(port)), timeout=5) as sock:
            with ctx.wrap_socket(sock, server_hostname=host):
                return True
    except ssl.SSLError:
        return False


def test_drift_is_repaired_and_check_mode_changes_nothing(deployed):
    srv, role_vars, suffix, _workdir = deployed
    assert run_role(role_vars)["failed"] == []
    [db_dn] = [line[4:] for line in search(srv, "cn=config", f"(olcSuffix={suffix})", scope="one").splitlines()
               if line.startswith("dn: ")]  # fmt: skip
    srv.ldap("ldapmodify", input=f"dn: {db_dn}\nchangetype: modify\nreplace: olcDbIndex\nolcDbIndex: uid eq\n")
    role_vars["directory_admin_pw"] = "new-admin-pw"
    role_vars["directory_users"][1]["shell"] = "/bin/zsh"
    before = search(srv, "cn=config") + search(srv, suffix)

    check = run_role(role_vars, check=True)
    assert check["failed"] == [] and check["stats"]["changed"] > 0
    report = "gpulab.fleet.directory : Report what ldapmodify would change (schemas, modules, database)"
    assert report in check["changed"]
    assert search(srv, "cn=config") + search(srv, suffix) == before

    fixed = run_role(role_vars)
    assert fixed["failed"] == [], fixed
    assert "olcDbIndex: memberUid eq" in search(srv, db_dn, scope="base")
    assert "loginShell: /bin/zsh" in search(srv, f"uid=bob,ou=people,{suffix}", scope="base")
    whoami = subprocess.run(["ldapwhoami", "-x", "-H", srv.ldapi_uri, "-D", f"cn=admin,{suffix}", "-w",
                             "new-admin-pw"], capture_output=True, text=True, check=False)  # fmt: skip
    assert whoami.returncode == 0, whoami.stderr
    assert run_role(role_vars)["stats"]["changed"] == 0


def test_authorized_keys_command_reads_keys_from_ldap(slapd, tmp_path):
    """The role's AuthorizedKeysCommand script, rendered by the role's template, against real slapd."""
    from tests.helpers import run_module

    assert not run_module("ldap_users", {**slapd.module_params("ldaps"),
                                         "users": [{"name": "alice", "uid": 5001, "ssh_keys": [KEY]}]})["failed"]
    script = tmp_path / "keys"
    template = Path(__file__).resolve().parents[2] / "roles/directory/templates/gpulab-ldap-authorized-keys.j2"
    result = run_task(
        {"ansible.builtin.template": {"src": str(template), "dest": str(script), "mode": "0755"},
         "vars": {"__directory_keys_uri": slapd.ldaps_uri,
                  "__directory_keys_ca_file": slapd.ca_file, "directory_people_dn": slapd.people_dn}}
    )  # fmt: skip
    assert not result.get("failed"), result
    keys = subprocess.run([str(script), "alice"], capture_output=True, text=True, check=False)
    assert keys.returncode == 0 and keys.stdout == KEY + "\n", keys
    for hostile in ("nobody-here", "*", "alice)(uid=*", "-H"):
        out = subprocess.run([str(script), hostile], capture_output=True, text=True, check=False)
        assert out.returncode == 0 and out.stdout == "", (hostile, out)


def test_check_mode_on_a_fresh_server_reports_and_changes_nothing(deployed):
    srv, role_vars, _suffix, workdir = deployed
    before = search(srv, "cn=config")
    check = run_role(role_vars, check=True)
    assert check["failed"] == [] and check["stats"]["changed"] > 0, check
    assert "gpulab.fleet.directory : Report the base entries that would be added" in check["changed"]
    assert search(srv, "cn=config") == before
    assert not (workdir / "db").exists() and not (workdir / "etc" / "tls").exists()


def _user_state(srv, suffix: str, name: str) -> dict:
    """What LDAP holds for one user: her entry, her private group, her shared group membership."""
    return {
        "entry": search(srv, f"ou=people,{suffix}", f"(uid={name})"),
        "private_group": search(srv, f"ou=groups,{suffix}", f"(cn={name})"),
        "in_gpu": f"memberUid: {name}" in search(srv, f"cn=gpu,ou=groups,{suffix}", scope="base"),
    }


def test_per_user_purge_deletes_only_that_user(deployed):
    """bob leaves (absent: disabled, kept), carol leaves with purge (deleted with her private group)."""
    srv, role_vars, suffix, _workdir = deployed
    role_vars["directory_users"].append(
        {"name": "carol", "uid": 5003, "full_name": "Carol Danvers", "ssh_keys": [KEY], "groups": ["gpu"]}
    )
    role_vars["directory_users"][1]["groups"] = ["gpu"]
    first = run_role(role_vars)
    assert first["failed"] == [], first
    for name in ("bob", "carol"):
        state = _user_state(srv, suffix, name)
        assert f"uid: {name}" in state["entry"] and f"cn: {name}" in state["private_group"] and state["in_gpu"]

    role_vars["directory_users"][1:] = [
        {"name": "bob", "uid": 5002, "state": "absent"},
        {"name": "carol", "uid": 5003, "state": "absent", "purge": True},
    ]
    before = search(srv, suffix)
    check = run_role(role_vars, check=True)
    assert check["failed"] == [] and check["rc"] == 0, check
    assert "gpulab.fleet.directory : Delete the users with purge (entry and private group)" in check["changed"]
    assert "gpulab.fleet.directory : Sync users and groups to LDAP" in check["changed"]  # bob disabled
    assert search(srv, suffix) == before, "check mode changed LDAP"

    leave = run_role(role_vars)
    assert leave["failed"] == [] and leave["rc"] == 0, leave
    bob, carol = _user_state(srv, suffix, "bob"), _user_state(srv, suffix, "carol")
    # bob: disabled, not deleted - entry, uidNumber and private group stay; no keys, no shell, no groups.
    assert "uid: bob" in bob["entry"] and "uidNumber: 5002" in bob["entry"], bob
    assert "loginShell: /usr/sbin/nologin" in bob["entry"] and "sshPublicKey" not in bob["entry"], bob
    assert "cn: bob" in bob["private_group"] and not bob["in_gpu"], bob
    # carol: gone, with her private group and her membership.
    assert carol == {"entry": "", "private_group": "", "in_gpu": False}, carol
    # alice untouched.
    alice = _user_state(srv, suffix, "alice")
    assert f"sshPublicKey: {KEY}" in alice["entry"] and "loginShell: /bin/bash" in alice["entry"]
    assert alice["in_gpu"]

    after = search(srv, suffix)
    again = run_role(role_vars)
    assert again["failed"] == [] and again["stats"]["changed"] == 0, again["changed"]
    check_again = run_role(role_vars, check=True)
    assert check_again["failed"] == [] and check_again["stats"]["changed"] == 0, check_again["changed"]
    assert search(srv, suffix) == after


def test_purged_users_numbers_are_free_in_the_same_run(deployed):
    """The purge call runs first, so a new user may take a purged user's uid in the same run."""
    srv, role_vars, suffix, _workdir = deployed
    assert run_role(role_vars)["failed"] == []
    role_vars["directory_users"][1] = {"name": "bob", "state": "absent", "purge": True}
    role_vars["directory_users"].append({"name": "dave", "uid": 5002})
    result = run_role(role_vars)
    assert result["failed"] == [] and result["rc"] == 0, result
    assert "uid: bob" not in search(srv, f"ou=people,{suffix}", "(uid=bob)")
    dave = search(srv, f"ou=people,{suffix}", "(uid=dave)")
    assert "uidNumber: 5002" in dave and "gidNumber: 5002" in dave, dave
    assert "gidNumber: 5002" in search(srv, f"ou=groups,{suffix}", "(cn=dave)")


@pytest.mark.parametrize("tasks_from", [None, "sync.yml"])
def test_purge_with_state_present_fails_before_any_change(deployed, tasks_from):
    """purge: true on a present user fails naming user and field; the role (or sync.yml alone) changes nothing."""
    srv, role_vars, suffix, workdir = deployed
    if tasks_from:  # sync.yml alone needs a configured server
        assert run_role(role_vars)["failed"] == []
    before = search(srv, "cn=config") + search(srv, suffix)
    role_vars["directory_users"][0]["purge"] = True  # alice, state present
    role_vars["directory_users"][1].update(state="absent", purge="maybe")
    result = run_role(role_vars, tasks_from=tasks_from)
    assert result["rc"] != 0 and result["stats"]["changed"] == 0, result
    [(task, msg, _items)] = result["failed"]
    assert task.endswith("Check the users' purge flags"), result
    assert "user alice: purge: true only makes sense with state absent (state is present)" in msg, msg
    assert "user bob: purge: maybe is not a boolean" in msg, msg
    assert search(srv, "cn=config") + search(srv, suffix) == before
    if not tasks_from:
        assert not (workdir / "db").exists()


def _not_after(path: Path) -> str:
    out = subprocess.run(["openssl", "x509", "-noout", "-enddate", "-in", str(path)], capture_output=True,
                         text=True, check=True)  # fmt: skip
    return out.stdout.strip()


def _expires_within(path: Path, days: int) -> bool:
    return subprocess.run(["openssl", "x509", "-noout", "-checkend", str(days * 86400), "-in", str(path)],
                          capture_output=True, check=False).returncode == 1  # fmt: skip


def test_certificates_about_to_expire_are_renewed(deployed):
    """A lab CA and a server certificate with a day left (as after ~2.3 years of the defaults): the next
    run renews both (the CA with its own key, so the server certificate it signed before still
    verifies), and the run after changes nothing. Check mode says it would, and changes nothing."""
    _srv, role_vars, suffix, workdir = deployed
    assert run_role(role_vars)["failed"] == []
    tls = workdir / "etc" / "tls"
    assert not _expires_within(tls / "ca.crt", 30) and not _expires_within(tls / "server.crt", 30)
    # made again as the role makes them (same keys, names, extensions and request), with 1 day left
    subprocess.run(
        f"set -e; cd {tls}; openssl req -x509 -new -key ca.key -sha256 -days 1 -subj '/CN=GPU lab LDAP CA {suffix}'"
        " -addext basicConstraints=critical,CA:TRUE -addext keyUsage=critical,keyCertSign,cRLSign -out ca.crt;"
        " openssl x509 -req -in server.csr -CA ca.crt -CAkey ca.key -CAcreateserial -days 1 -sha256"
        " -extfile server.ext -out server.crt; cp ca.crt ca-expiring.crt",
        shell=True, check=True, capture_output=True,
    )  # fmt: skip
    assert _expires_within(tls / "ca.crt", 2) and _expires_within(tls / "server.crt", 2)
    short = {f: _not_after(tls / f) for f in ("ca.crt", "server.crt")}

    check = run_role(role_vars, check=True)
    would = "gpulab.fleet.directory : Certificates this run would make or renew (check mode)"
    assert check["failed"] == [] and check["changed"] == [would], check["changed"]
    assert {f: _not_after(tls / f) for f in short} == short  # check mode renewed nothing

    renewed = run_role(role_vars)
    assert renewed["failed"] == [], renewed
    assert {f"gpulab.fleet.directory : {t}" for t in (
        "Make the lab CA certificate (new, or renewed with the same key before it expires)",
        "Issue the server certificate (new, its names changed, or expiring)",
    )} <= set(renewed["changed"]), renewed["changed"]
    assert not _expires_within(tls / "ca.crt", 800) and not _expires_within(tls / "server.crt", 800)
    verify = subprocess.run(["openssl", "verify", "-CAfile", str(tls / "ca.crt"), str(tls / "server.crt")],
                            capture_output=True, text=True, check=False)  # fmt: skip
    assert verify.returncode == 0, verify.stdout + verify.stderr
    # a client still holding the expiring CA certificate keeps verifying the new server certificate
    old_ca = subprocess.run(["openssl", "verify", "-CAfile", str(tls / "ca-expiring.crt"), str(tls / "server.crt")],
                            capture_output=True, text=True, check=False)  # fmt: skip
    assert old_ca.returncode == 0, old_ca.stdout + old_ca.stderr
    again = run_role(role_vars)
    assert again["failed"] == [] and again["stats"]["changed"] == 0, again["changed"]


def test_the_example_inventorys_placeholder_password_is_refused(deployed):
    """inventories/example ships `change-me-with-ansible-vault`: the role alone (without site.yml's
    preflight) fails before any change, naming the variable (the other tests are the positive twin: a
    real password deploys)."""
    _srv, role_vars, _suffix, workdir = deployed
    example = yaml.safe_load((ROOT / "inventories/example/group_vars/directory/vault.yml").read_text())
    result = run_role({**role_vars, "directory_admin_pw": example["vault_directory_admin_pw"]})
    assert result["rc"] != 0 and result["stats"]["changed"] == 0, result
    [(task, msg, _items)] = result["failed"]
    assert task.endswith("Check that the admin password is not the example's placeholder"), task
    assert "directory_admin_pw is still a placeholder (it contains 'change-me')" in msg, msg
    assert not (workdir / "db").exists()
