"""Role gpulab.fleet.directory converged for real on the test VM (Debian 12 with systemd).

Deploy mode end to end: packages, slapd service and listeners, self-signed TLS, cn=config through
ldapi, users synced over ldapi EXTERNAL, the sshd AuthorizedKeysCommand. Checked inside the guest
with ldapsearch over ldaps (verified with the role's lab CA) and with sshd itself.
"""

from __future__ import annotations

import pytest

from tests.integration.test_directory_role import KEY, run_role

pytestmark = [pytest.mark.vm, pytest.mark.slow]

SUFFIX = "dc=vmlab,dc=test"
CA = "/etc/ldap/gpulab/tls/ca.crt"


def test_directory_role_deploys_slapd_and_users_on_the_vm(testvm):
    role_vars = {
        "directory_mode": "deploy",
        "directory_suffix": SUFFIX,
        "directory_admin_pw": "vm-admin-pw",
        "directory_tls_san": ["DNS:localhost", "IP:127.0.0.1"],
        "directory_groups": [{"name": "gpu", "gid": 3000}],
        "directory_users": [
            {"name": "alice", "uid": 5001, "full_name": "Alice Liddell", "ssh_keys": [KEY], "groups": ["gpu"]},
            {"name": "bob", "uid": 5002},
        ],
        "directory_sshd_keys_command": True,
        "directory_sshd_keys_uri": "ldaps://127.0.0.1",
        "directory_sshd_keys_ca_file": CA,
    }
    try:
        first = run_role(role_vars, inventory=testvm.inventory, timeout=2400)
        assert first["failed"] == [] and first["rc"] == 0, first
        assert first["stats"]["changed"] > 0

        # Over the network listener, with TLS verified against the role's CA, anonymously.
        out = testvm.ssh(
            f"LDAPTLS_CACERT={CA} ldapsearch -x -LLL -o ldif-wrap=no -H ldaps://127.0.0.1 "
            f"-b ou=people,{SUFFIX} '(uid=alice)' uidNumber sshPublicKey"
        ).stdout
        assert "uidNumber: 5001" in out and f"sshPublicKey: {KEY}" in out
        out = testvm.ssh(
            f"LDAPTLS_CACERT={CA} ldapsearch -x -ZZ -LLL -H ldap://127.0.0.1 -b ou=groups,{SUFFIX} '(cn=gpu)' memberUid"
        ).stdout
        assert "memberUid: alice" in out
        assert testvm.ssh("systemctl is-enabled slapd").stdout.strip() == "enabled"
        assert testvm.ssh("/usr/local/sbin/gpulab-ldap-authorized-keys alice").stdout == KEY + "\n"
        sshd = testvm.ssh("sshd -T").stdout
        assert "authorizedkeyscommand /usr/local/sbin/gpulab-ldap-authorized-keys %u" in sshd

        second = run_role(role_vars, inventory=testvm.inventory, timeout=2400)
        assert second["failed"] == [] and second["stats"]["changed"] == 0, second["changed"]
    finally:
        # Leave the shared VM as the image had it: slapd stopped, our database and files gone.
        testvm.ssh(
            "systemctl stop slapd; systemctl disable slapd; rm -f /etc/ssh/sshd_config.d/gpulab-ldap-keys.conf "
            "/usr/local/sbin/gpulab-ldap-authorized-keys; systemctl reload ssh",
            check=False,
        )
