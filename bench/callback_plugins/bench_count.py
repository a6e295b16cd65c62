# Copyright: (c) 2026, GPU Lab Fleet maintainers
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Callback for bench/converge_users.py: counts module invocations of a playbook run.

One invocation = one task result for one host, or one loop item (a loop of N items runs the module N
times). Skipped results are counted apart. Controller-side actions (set_fact, assert, debug,
includes, the fleet_preflight action) are counted too but marked, so the report can separate what
ran a module on a target. Writes JSON to $BENCH_COUNT_FILE at the end of the run.
"""

from __future__ import annotations

import json
import os
import time

from ansible.plugins.callback import CallbackBase

DOCUMENTATION = """
name: bench_count
type: aggregate
short_description: count module invocations per action (bench only)
description: Writes per-action counts of executed, changed, skipped and failed results to $BENCH_COUNT_FILE.
requirements: [enable via ANSIBLE_CALLBACKS_ENABLED]
"""

CONTROLLER_ACTIONS = {
    "set_fact",
    "assert",
    "debug",
    "include_role",
    "include_tasks",
    "import_tasks",
    "meta",
    "fleet_preflight",
    "validate_argument_spec",
}


class CallbackModule(CallbackBase):
    CALLBACK_VERSION = 2.0
    CALLBACK_TYPE = "aggregate"
    CALLBACK_NAME = "bench_count"
    CALLBACK_NEEDS_ENABLED = True

    def __init__(self):
        super().__init__()
        self.counts: dict[str, dict[str, int]] = {}
        self.plays: list[list] = []  # [name, start, seconds]
        self.tasks: list[list] = []  # [name, start, seconds]

    def _close_play(self) -> None:
        self._close_task()
        if self.plays and self.plays[-1][2] is None:
            self.plays[-1][2] = time.monotonic() - self.plays[-1][1]

    def _close_task(self) -> None:
        if self.tasks and self.tasks[-1][2] is None:
            self.tasks[-1][2] = time.monotonic() - self.tasks[-1][1]

    def v2_playbook_on_task_start(self, task, is_conditional):
        self._close_task()
        self.tasks.append([task.get_name(), time.monotonic(), None])

    def v2_playbook_on_play_start(self, play):
        self._close_play()
        self.plays.append([play.get_name(), time.monotonic(), None])

    def _bump(self, result, key: str, changed: bool = False) -> None:
        action = result._task.action.rsplit(".", 1)[-1]
        row = self.counts.setdefault(action, {"executed": 0, "changed": 0, "skipped": 0, "failed": 0})
        row[key] += 1
        if changed:
            row["changed"] += 1

    def _is_loop(self, result) -> bool:
        return isinstance(result._result.get("results"), list)

    def v2_runner_on_ok(self, result):
        if not self._is_loop(result):
            self._bump(result, "executed", bool(result._result.get("changed")))

    def v2_runner_on_failed(self, result, ignore_errors=False):
        if not self._is_loop(result):
            self._bump(result, "failed")

    def v2_runner_on_skipped(self, result):
        if not self._is_loop(result):
            self._bump(result, "skipped")

    def v2_runner_item_on_ok(self, result):
        self._bump(result, "executed", bool(result._result.get("changed")))

    def v2_runner_item_on_failed(self, result):
        self._bump(result, "failed")

    def v2_runner_item_on_skipped(self, result):
        self._bump(result, "skipped")

    def v2_playbook_on_stats(self, stats):
        self._close_play()
        path = os.environ.get("BENCH_COUNT_FILE")
        if not path:
            return
        summary = {
            "actions": self.counts,
            "controller_actions": sorted(a for a in self.counts if a in CONTROLLER_ACTIONS),
            "module_runs": sum(
                r["executed"] + r["failed"] for a, r in self.counts.items() if a not in CONTROLLER_ACTIONS
            ),
            "changed": sum(r["changed"] for r in self.counts.values()),
            "plays": [[name, round(seconds, 2)] for name, _start, seconds in self.plays],
            "tasks": [[name, round(seconds, 2)] for name, _start, seconds in self.tasks],
        }
        with open(path, "w", encoding="utf-8") as fh:
            json.dump(summary, fh, indent=1, sort_keys=True)
