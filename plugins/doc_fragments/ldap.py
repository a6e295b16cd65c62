# Copyright: (c) 2026, GPU Lab Fleet maintainers
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Connection options shared by every gpulab.fleet LDAP module (see module_utils/ldap.py)."""

from __future__ import annotations


class ModuleDocFragment:
    DOCUMENTATION = r"""
options:
  server_uri:
    description:
      - URI of the LDAP server, V(ldap://host[:port]), V(ldaps://host[:port]) or V(ldapi://ENCODED_SOCKET_PATH).
      - V(ldapi:///) means the Debian default socket C(/var/run/slapd/ldapi).
    type: str
    required: true
  start_tls:
    description:
      - Upgrade an V(ldap://) connection with StartTLS before binding. Fails if the upgrade fails.
    type: bool
    default: false
  ca_file:
    description:
      - PEM file with the CA certificate(s) that must have signed the server certificate (ldaps and StartTLS).
      - When not set, the system trust store is used.
    type: path
  validate_certs:
    description:
      - Verify the server certificate and its host name. Only set V(false) for throwaway labs.
    type: bool
    default: true
  bind_dn:
    description:
      - DN for a simple bind.
      - When not set, V(ldapi://) connections bind with SASL EXTERNAL (the peer credentials of the
        process, e.g. root = manage on a Debian slapd) and other connections bind anonymously.
    type: str
  bind_pw:
    description:
      - Password for O(bind_dn).
    type: str
  people_dn:
    description:
      - Base DN of the people (posixAccount) entries, e.g. V(ou=people,dc=lab,dc=example).
    type: str
    required: true
  groups_dn:
    description:
      - Base DN of the group (posixGroup) entries, e.g. V(ou=groups,dc=lab,dc=example).
    type: str
    required: true
  timeout:
    description:
      - Seconds to wait for the connection and for each operation.
    type: int
    default: 10
  get_info:
    description:
      - Whether the client reads the server schema after connecting.
      - V(none) is faster (one round trip less). V(schema) lets ldap3 check attribute names and
        values client-side. Results are compared in normalised form, so both give the same outcome.
    type: str
    choices: [none, schema]
    default: none
requirements:
  - ldap3 (Debian package C(python3-ldap3)) on the host that runs the module
"""
