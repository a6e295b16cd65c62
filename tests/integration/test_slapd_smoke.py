"""Smoke test of the real slapd backend: an entry written over TLS is read back over TLS."""

from __future__ import annotations

import ssl

import pytest
from ldap3 import NONE, Connection, Server, Tls
from ldap3.core.exceptions import LDAPSocketOpenError, LDAPStartTLSError

pytestmark = pytest.mark.slapd


def _connect(uri: str, ca_file: str, start_tls: bool, srv) -> Connection:
    tls = Tls(validate=ssl.CERT_REQUIRED, ca_certs_file=ca_file)
    conn = Connection(Server(uri, tls=tls, get_info=NONE, connect_timeout=5), srv.bind_dn, srv.bind_pw)
    conn.open()
    if start_tls:
        conn.start_tls()
    assert conn.bind(), conn.result
    return conn


@pytest.mark.parametrize("mode", ["ldaps", "starttls"])
def test_add_then_search_round_trips_over_tls(slapd, mode):
    uri = slapd.ldaps_uri if mode == "ldaps" else slapd.uri
    conn = _connect(uri, slapd.ca_file, mode == "starttls", slapd)
    assert conn.server.ssl == (mode == "ldaps")
    assert conn.tls_started == (mode == "starttls")
    dn = f"uid=smoke-{mode},{slapd.people_dn}"
    key = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIB4rqAlSWSLGlTsxmdPCmwnUpHa7Z0I+6RQAbwo8mHr5 smoke"
    ok = conn.add(
        dn,
        ["inetOrgPerson", "posixAccount", "ldapPublicKey"],
        {"cn": "Smoke", "sn": "Smoke", "uid": f"smoke-{mode}", "uidNumber": 7001, "gidNumber": 7001,
         "homeDirectory": "/home/smoke", "sshPublicKey": key},
    )  # fmt: skip
    assert ok, conn.result
    conn.unbind()

    # Read back on a fresh connection, and independently with ldapsearch over ldapi.
    conn = _connect(uri, slapd.ca_file, mode == "starttls", slapd)
    assert conn.search(slapd.people_dn, f"(uid=smoke-{mode})", attributes=["uidNumber", "sshPublicKey"])
    [entry] = conn.response
    assert entry["attributes"]["uidNumber"] == ["7001"]
    assert entry["attributes"]["sshPublicKey"] == [key]
    conn.unbind()
    out = slapd.ldap("ldapsearch", "-LLL", "-b", slapd.people_dn, f"(uid=smoke-{mode})", "uidNumber").stdout
    assert "uidNumber: 7001" in out


@pytest.mark.parametrize("mode", ["ldaps", "starttls"])
def test_wrong_ca_is_refused(slapd, mode):
    uri = slapd.ldaps_uri if mode == "ldaps" else slapd.uri
    with pytest.raises((LDAPSocketOpenError, LDAPStartTLSError)):
        _connect(uri, slapd.other_ca_file, mode == "starttls", slapd)


def test_unique_overlay_rejects_duplicate_uid_number(slapd):
    out = slapd.ldap(
        "ldapadd",
        input="".join(
            f"dn: uid={n},{slapd.people_dn}\nobjectClass: account\nobjectClass: posixAccount\nuid: {n}\ncn: {n}\n"
            f"uidNumber: 7100\ngidNumber: 7100\nhomeDirectory: /home/{n}\n\n"
            for n in ("dup-a", "dup-b")
        ),
        check=False,
    )
    assert out.returncode == 19, out.stderr
    assert "non-unique attributes found" in out.stderr
