# Copyright: (c) 2026, GPU Lab Fleet maintainers
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Controller side of gpulab.fleet.run_lock: who this run is, and whether a holder from this same
controller is still alive (only the controller can see its processes).

The run is this `ansible-playbook` process: a task runs in a worker forked from it, so it is the
worker's parent. The module is asked in rounds of at most ROUND seconds, so a holder from this
controller that dies while we wait is seen (its SSH connection, shared with us through ControlMaster,
would not close while we use it).
"""

from __future__ import annotations

import getpass
import os
import socket
import time

from ansible import context
from ansible.plugins.action import ActionBase

from ansible_collections.gpulab.fleet.plugins.module_utils import runlock

ROUND = 10


def this_run(playbook: str) -> dict:
    pid = os.getppid()
    host = socket.gethostname()
    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = str(os.getuid())
    # the controller's boot id tells two controllers of one hostname apart (dead_here)
    return {"id": f"{host}:{pid}:{runlock.process_start(pid)}", "controller": host, "controller_pid": pid,
            "controller_boot": runlock.boot_id(), "playbook": playbook, "user": user}


def dead_here(record: dict, run: dict) -> bool:
    """The holder ran on this controller (this boot of it) and its ansible-playbook process is gone."""
    if record.get("controller_boot") != run["controller_boot"] or record.get("controller") != run["controller"]:
        return False
    try:
        _host, pid, start = str(record.get("run")).rsplit(":", 2)
        return not runlock.is_alive(int(pid), int(start))
    except ValueError:
        return False


class ActionModule(ActionBase):
    TRANSFERS_FILES = False

    def run(self, tmp=None, task_vars=None):
        result = super().run(tmp, task_vars)
        args = dict(self._task.args)
        for internal in ("run", "dead_runs"):
            if internal in args:
                return dict(result, failed=True, msg=f"{internal}: set by the action plugin, not by the task")
        run = this_run(" ".join(os.path.basename(str(a)) for a in context.CLIARGS.get("args") or ()) or "a playbook")
        wait = args.get("wait", 120)
        try:
            wait = int(wait)
        except (TypeError, ValueError):
            return dict(result, failed=True, msg=f"wait: must be a number of seconds (got {wait!r}); nothing changed")
        deadline = time.monotonic() + max(wait, 0)
        dead: list[str] = []
        waited = 0.0  # in the module's rounds, not counting the rounds' own start-up
        while True:
            left = max(0, int(deadline - time.monotonic()))
            module_args = dict(args, run=run, dead_runs=dead, wait=min(left, ROUND))
            out = self._execute_module(module_name="gpulab.fleet.run_lock", module_args=module_args,
                                       task_vars=task_vars)
            waited += out.get("waited") or 0
            if out.get("failed") or args.get("state", "held") == "released" or out.get("acquired"):
                break
            holder = out.get("holder") or {}
            if dead_here(holder, run) and holder.get("run") not in dead:
                dead.append(holder["run"])
                continue
            if self._task.check_mode:
                out.setdefault("warnings", []).append(
                    f"another run is changing this host: {runlock.describe(holder)}; what check mode reports "
                    "may change under it")
                break
            if left <= 0:
                out.update(failed=True, msg=(
                    f"another run is changing this host: {runlock.describe(holder)}; waited {wait} s. This run "
                    "changed nothing here: rerun it when that one ends (a run that was killed lets go when its "
                    "SSH connection closes, within a minute, or at once for a rerun from the same controller)"))
                break
        took = out.get("took_over")
        if took:
            out.setdefault("warnings", []).append(
                f"took over the run lock of {runlock.describe(took)}: {took.get('why')}")
        out["waited"] = waited
        if out.get("acquired") and waited >= 1:
            out.setdefault("warnings", []).append(f"waited {waited:.0f} s for another run on this host to end")
        out["changed"] = False
        return dict(result, **out)
