# Copyright: (c) 2026, GPU Lab Fleet maintainers
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The one LDAP client of the collection (ldap3): connect, TLS, bind, paged search, add/modify/delete.

Every failure, from the server or raised client-side by ldap3, becomes an LdapError carrying the LDAP
result code (None for client-side errors), its name and the server's message, so callers can report
them per item. The option set matches doc_fragments/ldap.py (LDAP_ARGUMENT_SPEC).
"""

from __future__ import annotations

import ssl
import urllib.parse
import warnings

try:
    with warnings.catch_warnings():
        # ldap3 2.9.1 imports pyasn1 names deprecated since pyasn1 0.5 (harmless).
        warnings.simplefilter("ignore", DeprecationWarning)
        import ldap3
        from ldap3.core.exceptions import LDAPException
    HAS_LDAP3 = True
    LDAP3_IMPORT_ERROR = None
except ImportError as exc:  # reported by the module with missing_required_lib
    HAS_LDAP3 = False
    LDAP3_IMPORT_ERROR = exc
    LDAPException = Exception

DEFAULT_LDAPI_SOCKET = "/var/run/slapd/ldapi"
PAGE_SIZE = 500

LDAP_ARGUMENT_SPEC = dict(
    server_uri=dict(type="str", required=True),
    start_tls=dict(type="bool", default=False),
    ca_file=dict(type="path"),
    validate_certs=dict(type="bool", default=True),
    bind_dn=dict(type="str"),
    bind_pw=dict(type="str", no_log=True),
    people_dn=dict(type="str", required=True),
    groups_dn=dict(type="str", required=True),
    timeout=dict(type="int", default=10),
    get_info=dict(type="str", choices=["none", "schema"], default="none"),
)


class LdapError(Exception):
    """An LDAP failure: result code (None when ldap3 failed client-side), its name and the message."""

    def __init__(self, operation: str, code: int | None, name: str, message: str):
        self.operation, self.code, self.name, self.message = operation, code, name, message
        code_text = f"{code} {name}" if code is not None else name
        super().__init__(f"{operation}: {code_text}: {message}".rstrip(": "))


def _server_target(uri: str) -> tuple[str, bool]:
    """(uri as ldap3 wants it, is_ldapi). ldap3 chokes on a trailing '/' and has no default socket."""
    scheme = uri.split("://", 1)[0].lower() if "://" in uri else ""
    if scheme not in ("ldap", "ldaps", "ldapi"):
        raise LdapError("connect", None, "invalid server_uri", f"{uri!r} is not an ldap://, ldaps:// or ldapi:// URI")
    if scheme == "ldapi":
        path = urllib.parse.unquote(uri[len("ldapi://") :]).rstrip("/") or DEFAULT_LDAPI_SOCKET
        return "ldapi://" + path, True
    return uri.rstrip("/"), False


class LdapClient:
    """A bound connection. Use connect(); every method raises LdapError."""

    def __init__(self, conn):
        self.conn = conn

    def _check(self, operation: str, ok: bool) -> None:
        if not ok:
            res = self.conn.result or {}
            raise LdapError(operation, res.get("result"), res.get("description", "error"), res.get("message", ""))

    def _call(self, operation: str, func, *args, **kwargs):
        try:
            ok = func(*args, **kwargs)
        except LDAPException as exc:
            raise LdapError(operation, None, type(exc).__name__, str(exc)) from exc
        self._check(operation, ok)

    def search(self, base: str, search_filter: str, attributes: list[str]) -> list[tuple[str, dict]]:
        """All entries under base (subtree) as (dn, attributes), read in pages.

        A missing base is an error (noSuchObject), not an empty result: a wrong people_dn must not
        look like an empty directory.
        """
        entries: list[tuple[str, dict]] = []
        cookie = None
        while True:
            try:
                self.conn.search(
                    base,
                    search_filter,
                    search_scope=ldap3.SUBTREE,
                    attributes=attributes,
                    paged_size=PAGE_SIZE,
                    paged_cookie=cookie,
                )
            except LDAPException as exc:
                raise LdapError(f"search {base}", None, type(exc).__name__, str(exc)) from exc
            res = self.conn.result
            if res.get("result") != 0:
                raise LdapError(f"search {base}", res.get("result"), res.get("description"), res.get("message", ""))
            found = [e for e in self.conn.response if e.get("type") == "searchResEntry"]
            entries += [(e["dn"], dict(e["attributes"])) for e in found]
            cookie = res.get("controls", {}).get("1.2.840.113556.1.4.319", {}).get("value", {}).get("cookie")
            if not cookie:
                return entries

    def add(self, dn: str, attributes: dict) -> None:
        self._call(f"add {dn}", self.conn.add, dn, attributes=attributes)

    def modify(self, dn: str, changes: list[tuple[str, str, list]]) -> None:
        """changes: [(attribute, op, values)] with op 'add', 'delete' or 'replace', applied atomically."""
        ops = {"add": ldap3.MODIFY_ADD, "delete": ldap3.MODIFY_DELETE, "replace": ldap3.MODIFY_REPLACE}
        grouped: dict[str, list] = {}
        for attr, op, values in changes:
            grouped.setdefault(attr, []).append((ops[op], list(values)))
        self._call(f"modify {dn}", self.conn.modify, dn, grouped)

    def delete(self, dn: str) -> None:
        self._call(f"delete {dn}", self.conn.delete, dn)

    def close(self) -> None:
        try:
            self.conn.unbind()
        except LDAPException:
            pass


def connect(
    server_uri: str,
    start_tls: bool = False,
    ca_file: str | None = None,
    validate_certs: bool = True,
    bind_dn: str | None = None,
    bind_pw: str | None = None,
    timeout: int = 10,
    get_info: str = "none",
    **_ignored,
) -> LdapClient:
    """Open, optionally StartTLS, and bind. Accepts the module params dict as **kwargs."""
    target, is_ldapi = _server_target(server_uri)
    tls = None
    if target.lower().startswith("ldaps://") or start_tls:
        tls = ldap3.Tls(
            validate=ssl.CERT_REQUIRED if validate_certs else ssl.CERT_NONE,
            ca_certs_file=ca_file,
        )
    info = {"none": ldap3.NONE, "schema": ldap3.SCHEMA}[get_info]
    try:
        server = ldap3.Server(target, tls=tls, get_info=info, connect_timeout=timeout)
        if bind_dn:
            auth = dict(user=bind_dn, password=bind_pw or "", authentication=ldap3.SIMPLE)
        elif is_ldapi:
            # sasl_credentials="" sends an empty authzid; None makes slapd answer saslBindInProgress.
            auth = dict(authentication=ldap3.SASL, sasl_mechanism=ldap3.EXTERNAL, sasl_credentials="")
        else:
            auth = dict(authentication=ldap3.ANONYMOUS)
        conn = ldap3.Connection(server, receive_timeout=timeout, raise_exceptions=False, **auth)
    except LDAPException as exc:
        raise LdapError(f"connect {server_uri}", None, type(exc).__name__, str(exc)) from exc
    client = LdapClient(conn)
    try:
        conn.open()
    except LDAPException as exc:
        raise LdapError(f"connect {server_uri}", None, type(exc).__name__, str(exc)) from exc
    if start_tls:
        client._call(f"StartTLS {server_uri}", conn.start_tls)
    client._call(f"bind {server_uri} as {bind_dn or ('EXTERNAL' if is_ldapi else 'anonymous')}", conn.bind)
    if get_info == "schema" and conn.server.schema is None:
        # ldap3 reads the schema during bind; without it values would silently come back unconverted.
        raise LdapError(f"read schema from {server_uri}", None, "noSchema", "the server returned no schema")
    return client
