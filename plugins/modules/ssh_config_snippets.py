#!/usr/bin/python
# Copyright: (c) 2026, GPU Lab Fleet maintainers
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)

# The work is done on the controller by plugins/action/ssh_config_snippets.py; this file only documents it.

from __future__ import annotations

DOCUMENTATION = r"""
---
module: ssh_config_snippets
short_description: Write the users' SSH config snippets into a folder on the controller, in one task
version_added: 0.1.0
author: GPU Lab Fleet maintainers (@gpulab)
description:
  - Runs on the controller only (an action plugin). Writes O(snippets) as C(DEST/NAME.conf) where the content
    or the mode differs, and deletes C(DEST/NAME.conf) for each name of O(remove). The folder is created when
    something is written.
  - One call for all users of a host, instead of one C(copy) per user (about 0.7 s each, the only per-user
    module run of a no-op C(users.yml) in the collection's benchmarks).
  - Files are replaced atomically. Bad input (a name that is not a safe file name, a name both written and
    removed, content that is not a string, a bad mode) fails before any file is touched.
  - The snippets themselves come from the P(gpulab.fleet.fleet_ssh_config#filter) filter.
options:
  dest:
    description: Folder of the snippets, on the controller.
    type: path
    required: true
  snippets:
    description: File name without C(.conf) (the user name) to the snippet's content.
    type: dict
    required: true
  remove:
    description: Names whose C(NAME.conf) is deleted when present (users who left).
    type: list
    elements: str
    default: []
  mode:
    description: Permission bits of the written files, octal.
    type: str
    default: "0644"
attributes:
  check_mode:
    support: full
    description: Reports what would be written or removed, and writes nothing.
  diff_mode:
    support: full
    description: One before/after per file written or removed.
  action:
    support: full
    description: Runs as an action plugin on the controller.
  async:
    support: none
    description: Writing a folder of small files takes well under a second.
  platform:
    support: full
    platforms: posix
    description: Runs on the controller.
notes:
  - Files of other names in O(dest) are left alone.
"""

EXAMPLES = r"""
- name: SSH config snippets of this host's users
  gpulab.fleet.ssh_config_snippets:
    dest: "{{ playbook_dir }}/../out/ssh"
    snippets: "{{ users | gpulab.fleet.fleet_ssh_config({inventory_hostname: ansible_host}, 'mylab') }}"
    remove: "{{ users | selectattr('state', 'eq', 'absent') | map(attribute='name') | list }}"
"""

RETURN = r"""
written:
  description: Paths written (or that would be, in check mode).
  returned: success
  type: list
  elements: str
  sample: [/srv/lab/out/ssh/alice.conf]
removed:
  description: Paths deleted (or that would be, in check mode).
  returned: success
  type: list
  elements: str
  sample: [/srv/lab/out/ssh/bob.conf]
"""
