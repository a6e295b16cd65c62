#!/usr/bin/python
# Copyright: (c) 2026, GPU Lab Fleet maintainers
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
module: ldap_users
short_description: The lab's people and their POSIX groups in LDAP, as one desired list
version_added: 0.1.0
author: GPU Lab Fleet maintainers (@gpulab)
description:
  - Makes the posixAccount entries under O(people_dn) and the posixGroup entries under O(groups_dn)
    match one list of users (and optional shared groups) in one call.
  - Reads the current entries once (paged search), plans adds, modifies and deletes, and changes only
    the attributes that differ. Values are compared normalised (bytes or text, scalar or list,
    multi-valued as sets, attribute names case-insensitive), so a second run changes nothing.
  - A user entry is C(uid=NAME,people_dn) with object classes inetOrgPerson, posixAccount and, when
    it has keys, ldapPublicKey (openssh-lpk schema, see the gpulab.fleet.directory role).
  - Each user gets a private group C(cn=NAME,groups_dn) with gidNumber O(users[].gid) unless
    O(private_groups=false). Supplementary groups are posixGroups with memberUid; the module sets the
    memberships of the users it manages and leaves the memberUid values of other users alone.
  - Users and groups are validated as a whole (names, numbers, keys) and checked against LDAP
    (uid and gid numbers unique in the resulting directory) before anything is changed.
  - People not in the list are left alone unless O(prune) says otherwise. Nothing is deleted unless
    O(purge) or O(prune=delete) asks for it.
extends_documentation_fragment:
  - gpulab.fleet.ldap
options:
  users:
    description:
      - The desired users. Users not listed are handled by O(prune).
    type: list
    elements: dict
    default: []
    suboptions:
      name:
        description:
          - Login name (uid attribute and RDN). Lower-case letter first, then a-z, 0-9 and '-', at most 31
            characters; reserved system names are refused.
        type: str
        required: true
      uid:
        description:
          - uidNumber. Required when O(users[].state=present).
        type: int
      gid:
        description:
          - gidNumber of the user's primary (private) group. Defaults to O(users[].uid).
        type: int
      full_name:
        description:
          - Sets cn (the full name), sn (its last word) and givenName (the words before it, removed for a
            one-word name). Defaults to O(users[].name).
        type: str
      mail:
        description:
          - mail attribute. When not given, the attribute is not managed (left as it is).
        type: str
      shell:
        description:
          - loginShell.
        type: str
        default: /bin/bash
      home:
        description:
          - homeDirectory. Defaults to C(/home/NAME).
        type: str
      ssh_keys:
        description:
          - The user's complete list of OpenSSH public keys (sshPublicKey); keys not listed are removed.
          - Plain C(TYPE BASE64 [comment]) lines only; key options are refused.
        type: list
        elements: str
        default: []
      groups:
        description:
          - Names of the supplementary groups (posixGroup, memberUid) the user belongs to; the user is
            removed from the other groups under O(groups_dn). Each group must be in O(groups) or exist.
        type: list
        elements: str
        default: []
      state:
        description:
          - V(present) creates or updates the user.
          - V(absent) without O(purge) disables the user (see O(prune)); with O(purge=true) deletes the
            entry and its private group.
        type: str
        choices: [present, absent]
        default: present
  groups:
    description:
      - Shared posixGroups (besides the private groups). Groups under O(groups_dn) not listed here are
        left as they are, except for the memberships of the managed users.
    type: list
    elements: dict
    default: []
    suboptions:
      name:
        description: Group name (cn and RDN).
        type: str
        required: true
      gid:
        description: gidNumber. Required when O(groups[].state=present).
        type: int
      state:
        description: V(absent) deletes the group.
        type: str
        choices: [present, absent]
        default: present
  private_groups:
    description:
      - Give every present user a private posixGroup named like the user with gidNumber O(users[].gid).
    type: bool
    default: true
  prune:
    description:
      - What happens to people under O(people_dn) that are not in O(users).
      - V(none) leaves them alone.
      - V(disable) removes their SSH keys, sets their shell to O(nologin_shell) and removes them from
        every group; their entry, uid and home stay.
      - V(delete) deletes their entry and their private group.
    type: str
    choices: [none, disable, delete]
    default: none
  purge:
    description:
      - Whether O(users[].state=absent) deletes the entry (and its private group) instead of disabling it.
    type: bool
    default: false
  nologin_shell:
    description:
      - loginShell given to disabled users.
    type: str
    default: /usr/sbin/nologin
notes:
  - Supports check mode and diff mode (before/after of the changed users and groups only).
  - With the unique overlay on the server, a uid or gid number clash that slips past the checks
    (e.g. a concurrent change) fails with C(19 constraintViolation) naming the user.
"""

EXAMPLES = r"""
- name: Sync the lab's people
  gpulab.fleet.ldap_users:
    server_uri: ldaps://ldap.lab.example
    ca_file: /etc/ssl/certs/lab-ca.pem
    bind_dn: cn=admin,dc=lab,dc=example
    bind_pw: "{{ vault_ldap_admin_pw }}"
    people_dn: ou=people,dc=lab,dc=example
    groups_dn: ou=groups,dc=lab,dc=example
    groups:
      - {name: gpu, gid: 3000}
    users:
      - name: alice
        uid: 10001
        full_name: Alice Liddell
        mail: alice@lab.example
        ssh_keys:
          - ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIB4rqAlSWSLGlTsxmdPCmwnUpHa7Z0I+6RQAbwo8mHr5 alice@laptop
        groups: [gpu]
      - name: bob
        state: absent
    prune: disable

- name: On the slapd host itself, as root over ldapi (SASL EXTERNAL)
  gpulab.fleet.ldap_users:
    server_uri: ldapi:///
    people_dn: ou=people,dc=lab,dc=example
    groups_dn: ou=groups,dc=lab,dc=example
    users: "{{ lab_users }}"
"""

RETURN = r"""
users:
  description: Names of the users changed, by kind of change (what would change in check mode).
  returned: always
  type: dict
  contains:
    added: {description: Users created., type: list, elements: str}
    modified: {description: Users whose attributes changed., type: list, elements: str}
    disabled: {description: "Users disabled (absent without purge, or prune=disable).", type: list, elements: str}
    deleted: {description: Users deleted., type: list, elements: str}
  sample: {added: [alice], modified: [], disabled: [bob], deleted: []}
groups:
  description: Names of the groups changed, by kind of change.
  returned: always
  type: dict
  contains:
    added: {description: Groups created., type: list, elements: str}
    modified: {description: Groups whose gidNumber or memberships changed., type: list, elements: str}
    deleted: {description: Groups deleted., type: list, elements: str}
  sample: {added: [alice, gpu], modified: [], deleted: []}
errors:
  description: Per-item LDAP failures (item, operation, result code, message); the module fails if any.
  returned: on failure of some operations
  type: list
  elements: str
  sample:
    - "user alice: add uid=alice,ou=people,dc=lab,dc=example: 19 constraintViolation: non-unique attributes found"
problems:
  description: Every problem found in the input or against LDAP before anything was changed.
  returned: when the input is rejected
  type: list
  elements: str
  sample: ["user Bob: name: 'Bob' is not a valid username"]
"""

from ansible.module_utils.basic import AnsibleModule, missing_required_lib

from ansible_collections.gpulab.fleet.plugins.module_utils.ldap import (
    HAS_LDAP3,
    LDAP3_IMPORT_ERROR,
    LDAP_ARGUMENT_SPEC,
    LdapError,
    connect,
)
from ansible_collections.gpulab.fleet.plugins.module_utils.ldap_users import (
    GROUP_ATTRIBUTES,
    GROUPS_FILTER,
    PEOPLE_ATTRIBUTES,
    PEOPLE_FILTER,
    PlanError,
    plan,
    validate,
)

STATE = dict(type="str", choices=["present", "absent"], default="present")


def argument_spec() -> dict:
    spec = dict(LDAP_ARGUMENT_SPEC)
    spec.update(
        users=dict(
            type="list",
            elements="dict",
            default=[],
            options=dict(
                name=dict(type="str", required=True),
                uid=dict(type="int"),
                gid=dict(type="int"),
                full_name=dict(type="str"),
                mail=dict(type="str"),
                shell=dict(type="str", default="/bin/bash"),
                home=dict(type="str"),
                ssh_keys=dict(type="list", elements="str", default=[], no_log=False),
                groups=dict(type="list", elements="str", default=[]),
                state=STATE,
            ),
        ),
        groups=dict(
            type="list",
            elements="dict",
            default=[],
            options=dict(name=dict(type="str", required=True), gid=dict(type="int"), state=STATE),
        ),
        private_groups=dict(type="bool", default=True),
        prune=dict(type="str", choices=["none", "disable", "delete"], default="none"),
        purge=dict(type="bool", default=False),
        nologin_shell=dict(type="str", default="/usr/sbin/nologin"),
    )
    return spec


def main() -> None:
    module = AnsibleModule(argument_spec=argument_spec(), supports_check_mode=True)
    if not HAS_LDAP3:
        module.fail_json(msg=missing_required_lib("ldap3"), exception=str(LDAP3_IMPORT_ERROR))
    p = module.params
    empty = {"users": {k: [] for k in ("added", "modified", "disabled", "deleted")},
             "groups": {k: [] for k in ("added", "modified", "deleted")}}  # fmt: skip

    problems = validate(p["users"], p["groups"], p["private_groups"])
    if problems:
        module.fail_json(msg="invalid input: " + "; ".join(problems), problems=problems, **empty)

    try:
        client = connect(**p)
        people = client.search(p["people_dn"], PEOPLE_FILTER, PEOPLE_ATTRIBUTES)
        groups = client.search(p["groups_dn"], GROUPS_FILTER, GROUP_ATTRIBUTES)
    except LdapError as exc:
        module.fail_json(msg=str(exc), ldap_result=exc.code, **empty)

    try:
        todo = plan(
            p["users"],
            p["groups"],
            people,
            groups,
            people_dn=p["people_dn"],
            groups_dn=p["groups_dn"],
            private_groups=p["private_groups"],
            prune=p["prune"],
            purge=p["purge"],
            nologin_shell=p["nologin_shell"],
        )
    except PlanError as exc:
        client.close()
        module.fail_json(msg="conflicts with LDAP: " + str(exc), problems=exc.problems, **empty)

    errors: list[str] = []
    applied = 0
    if not module.check_mode:
        # One item's failure does not stop the others: each op touches one entry.
        for op in todo.ops:
            try:
                if op.kind == "add":
                    client.add(op.dn, op.attributes)
                elif op.kind == "modify":
                    client.modify(op.dn, op.changes)
                else:
                    client.delete(op.dn)
                applied += 1
            except LdapError as exc:
                errors.append(f"{op.item}: {exc}")
    client.close()

    result = dict(changed=bool(todo.ops) if module.check_mode else applied > 0, **todo.summary)
    if module._diff:
        result["diff"] = dict(before=todo.before, after=todo.after)
    if errors:
        module.fail_json(msg=f"{len(errors)} LDAP operation(s) failed: " + "; ".join(errors), errors=errors, **result)
    module.exit_json(**result)


if __name__ == "__main__":
    main()
