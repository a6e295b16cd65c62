#!/usr/bin/python
# Copyright: (c) 2026, GPU Lab Fleet maintainers
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)

# The work is done on the controller by plugins/action/fleet_preflight.py; this file only documents it.

from __future__ import annotations

DOCUMENTATION = r"""
---
module: fleet_preflight
short_description: Check the whole lab inventory (user model, ports, secrets) before any host is touched
version_added: 0.1.0
author: GPU Lab Fleet maintainers (@gpulab)
description:
  - Runs on the controller only (an action plugin). Merges C(fleet_users) over C(fleet_user_defaults),
    validates the whole model and either fails listing B(every) problem, one per line, each naming the user,
    the field and the value, or returns the normalised users with their derived ports as the fact
    C(fleet_users_normalized).
  - "Checks: unknown fields (with a did-you-mean hint), malformed and reserved names, unique names, uids and
    ports, user private groups shared by accident, SSH key syntax (type, base64 body, no options, no newlines)
    and the same key in two accounts, sizes (memory, disk, quota), CPU counts and sets, extra ports, states,
    port blocks beyond 65535 or the block size, reserved host ports, hosts that exist in the inventory, and
    GPU requests against each host's GPU facts."
  - "Also checks the lab's secrets on the hosts that need them: C(directory_admin_pw) on every host of the
    C(directory) group whose C(directory_mode) is C(deploy) (the default) must be set, readable (a vault file
    that is missing leaves it undefined) and not a placeholder of the example inventory (anything containing
    C(change-me)). The problem names the host and the variable, never the value."
  - Every option falls back to the inventory variable named in its description, then to the built-in default,
    so in a playbook the task usually has no options at all.
  - The rules and the port formula are described in docs/user-model.md of the collection.
options:
  users:
    description:
      - The lab's users. Default the variable C(fleet_users).
    type: list
    elements: raw
  user_defaults:
    description:
      - Field defaults for every user. Default the variable C(fleet_user_defaults).
    type: dict
  uid_base:
    description:
      - The uid that gets the first port block; smaller uids are an error.
      - Default the variable C(fleet_uid_base), else C(10000).
    type: int
  port_base:
    description:
      - The first host port of the first block. Default the variable C(fleet_port_base), else C(20000).
    type: int
  ports_per_user:
    description:
      - The size of each user's port block (slot 0 SSH, slot 1 remote desktop, then extra ports).
      - Default the variable C(fleet_ports_per_user), else C(10).
    type: int
  reserved_ports:
    description:
      - Host ports no user may get, numbers or ranges like C(8000-8099); 22 and O(admin_ssh_port) always are.
      - Default the variable C(fleet_reserved_ports), else none.
    type: list
    elements: raw
  admin_ssh_port:
    description:
      - The hosts' admin SSH port. Default the variable C(fleet_admin_ssh_port), else C(22).
    type: int
  gpu_hosts:
    description:
      - The hosts users may be placed on.
      - Default the variable C(fleet_gpu_hosts), else the members of the inventory group O(gpu_group) when it
        exists, else every inventory host.
    type: list
    elements: str
  gpu_group:
    description:
      - The inventory group of the GPU hosts, used when O(gpu_hosts) is not given.
      - Default the variable C(fleet_gpu_group), else C(gpu_hosts).
    type: str
  gpu_facts:
    description:
      - Host name to the list of its GPUs (dicts with C(index), C(uuid), C(pci_bus_id)).
      - Default the C(gpulab_gpus) fact of each inventory host that has it (set by gpulab.fleet.gpu_facts).
      - GPU requests on a host without facts are not checked (a warning says so); a host whose list is
        empty has no GPUs, and requesting any there is an error.
    type: dict
attributes:
  check_mode:
    support: full
    description: Nothing is changed in either mode.
  diff_mode:
    support: none
    description: There is nothing to compare; the result lists the problems or the normalised users.
  action:
    support: full
    description: Runs as an action plugin on the controller.
  async:
    support: none
    description: The check takes well under a second.
  platform:
    support: full
    platforms: all
    description: Runs on the controller.
notes:
  - "Run it once, on the controller, before the plays that change hosts, for example in a first play
    C(hosts: localhost) (after gathering GPU facts when they are to be checked)."
"""

EXAMPLES = r"""
- name: Check the user model (fails listing every problem)
  gpulab.fleet.fleet_preflight:

- name: Check an explicit list against explicit GPU facts
  gpulab.fleet.fleet_preflight:
    users:
      - name: alice
        uid: 10001
        host: gpu1
        gpus: [0]
        ssh_keys: ["ssh-ed25519 AAAAC3Nza... alice@laptop"]
    gpu_facts:
      gpu1: [{index: 0, uuid: GPU-6f1c..., pci_bus_id: "00000000:3B:00.0"}]
  register: preflight

- name: Her SSH port
  ansible.builtin.debug:
    msg: "{{ preflight.ports.alice.ssh }}"
"""

RETURN = r"""
ansible_facts:
  description: Facts set on the host the task ran for.
  returned: success
  type: dict
  contains:
    fleet_users_normalized:
      description:
        - The normalised users in input order, with derived ports; the input of the gpulab.fleet.fleet_*
          slicing filters. See the P(gpulab.fleet.fleet_users#filter) filter for the fields.
      type: list
      elements: dict
      sample:
        - name: alice
          uid: 10001
          gid: 10001
          gid_explicit: false
          full_name: Alice Liddell
          mail: alice@lab.example.org
          ssh_keys: ["ssh-ed25519 AAAAC3Nza... alice@laptop"]
          host: gpu1
          gpus: [0]
          cpu: 8
          memory: 34359738368
          disk: 107374182400
          quota: 536870912000
          desktop: true
          extra_ports: [{port: 8888, proto: tcp}]
          state: present
          purge: false
          ports:
            block: [20010, 20019]
            ssh: 20010
            desktop: 20011
            extra: [{port: 8888, proto: tcp, host_port: 20012}]
ports:
  description: User name to her host, SSH port, desktop port (null when off) and extra port maps.
  returned: success
  type: dict
  sample:
    alice: {host: gpu1, ssh: 20010, desktop: 20011, extra: ["8888/tcp -> 20012"]}
problems:
  description: Every problem found, one string each, naming the user, the field and the value.
  returned: failure
  type: list
  elements: str
  sample:
    - "user 'bob': quotaa: unknown field (did you mean 'quota'?)"
    - "user 'carol': uid: 10001 is also the uid of user 'alice'"
"""
