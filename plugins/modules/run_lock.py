#!/usr/bin/python
# Copyright: (c) 2026, GPU Lab Fleet maintainers
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
from __future__ import annotations

DOCUMENTATION = r"""
---
module: run_lock
short_description: One playbook run at a time per host, with a lock a crashed run does not leave behind
version_added: 0.1.0
author: GPU Lab Fleet maintainers (@gpulab)
description:
  - Takes (O(state=held)) or lets go of (O(state=released)) this host's run lock for the current
    C(ansible-playbook) run. C(site.yml), C(users.yml) and the per-user playbooks take it on every host
    they change right after the preflight, and let it go at the end, so two admins (or two terminals)
    never change one host at once.
  - The lock is a record in C(/run/lock/gpulab-fleet-run.json) naming the run (controller, its
    C(ansible-playbook) process, the playbook, the controller user) and its anchor on the host - the
    SSH connection's C(sshd), which Ansible keeps for the whole run, or the C(ansible-playbook) process
    of a local connection. A lock whose run cannot act any more is taken over, with a warning naming
    it - made before the host's last boot, its anchor gone (a killed run's connection closes within
    C(ControlPersist), 60 s by default), or, seen from the same controller, its C(ansible-playbook)
    process gone. A live holder is waited for up to O(wait) seconds; then the task fails naming it,
    before this run changed anything on the host.
  - The run identity and the controller-side check come from the action plugin of the same name; the
    task never reports changed (the lock is bookkeeping of the run, not state of the host).
  - Without SSH connection reuse (C(ControlMaster)/C(ControlPersist) turned off, or another connection
    plugin) the anchor is the connection of the lock task alone, so runs from other controllers are not
    held off; runs from the same controller still are.
options:
  state:
    description: C(held) takes the lock (waiting for another run), C(released) lets go of this run's lock.
    type: str
    choices: [held, released]
    default: held
  wait:
    description: Seconds to wait for another live run to let go before failing.
    type: int
    default: 120
  path:
    description: The lock record; C(/var/lock/gpulab-fleet-run.json) where C(/run/lock) is missing.
    type: path
    default: /run/lock/gpulab-fleet-run.json
  run:
    description: The run, filled in by the action plugin (do not set).
    type: dict
  dead_runs:
    description: Runs whose controller process the action plugin saw gone (do not set).
    type: list
    elements: str
    default: []
  proc_root:
    description: Where procfs is mounted (tests).
    type: path
    default: /proc
attributes:
  check_mode:
    support: full
    description: Reports whether the lock is free or who holds it, without taking it and without waiting.
  diff_mode:
    support: none
    description: The lock is bookkeeping of the run, not state of the host; there is nothing to show.
"""

EXAMPLES = r"""
- name: One run at a time on this host
  gpulab.fleet.run_lock:
    wait: 300

- name: Let it go at the end of the run
  gpulab.fleet.run_lock:
    state: released
"""

RETURN = r"""
acquired:
  description: Whether this run holds the lock now (state=held; in check mode, whether it would).
  returned: always
  type: bool
holder:
  description:
    - The other run's record when the lock was not acquired (run, controller, controller_pid, playbook,
      user, since, anchor).
  returned: always
  type: dict
took_over:
  description: The stale record that was replaced, with C(why), or null.
  returned: always
  type: dict
released:
  description: Whether this run's lock was let go (state=released).
  returned: always
  type: bool
waited:
  description: Seconds spent waiting for another run.
  returned: always
  type: float
"""

import os

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.gpulab.fleet.plugins.module_utils import runlock


def record_path(path: str) -> str:
    if path == runlock.RUN_RECORD and not os.path.isdir(os.path.dirname(path)):
        return runlock.FALLBACK_RECORD
    return path


def main():
    module = AnsibleModule(
        argument_spec=dict(
            state=dict(type="str", choices=["held", "released"], default="held"),
            wait=dict(type="int", default=120),
            path=dict(type="path", default=runlock.RUN_RECORD),
            run=dict(type="dict"),
            dead_runs=dict(type="list", elements="str", default=[]),
            proc_root=dict(type="path", default="/proc"),
        ),
        supports_check_mode=True,
    )
    p = module.params
    run = p["run"] or {}
    if not isinstance(run.get("id"), str) or not run["id"]:
        module.fail_json(msg="run: the run's identity is missing (run the task as gpulab.fleet.run_lock, "
                         "whose action plugin fills it in); nothing was changed")
    if p["wait"] < 0:
        module.fail_json(msg=f"wait: must be 0 or more seconds (got {p['wait']}); nothing was changed")
    path = record_path(p["path"])
    result = {"changed": False, "acquired": False, "holder": None, "took_over": None, "released": False, "waited": 0.0}
    try:
        if p["state"] == "released":
            result["released"] = runlock.release(path, run["id"], module.check_mode)
        else:
            result.update(runlock.acquire(path, run, p["wait"], module.check_mode, p["dead_runs"], p["proc_root"]))
    except (OSError, TimeoutError) as exc:
        module.fail_json(msg=f"cannot read or write the run lock {path}: {exc}; nothing was changed", **result)
    module.exit_json(**result)


if __name__ == "__main__":
    main()
