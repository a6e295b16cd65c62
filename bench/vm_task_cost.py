# Copyright: (c) 2026, GPU Lab Fleet maintainers
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Benchmark: what one task costs against the emulated (TCG) test VM, the usual way and the ways the
tests use, side by side in one run on one freshly booted VM (results go to docs/performance.md):

    .venv/bin/python bench/vm_task_cost.py [--tasks 15] [--runs 3]

- playbook: one ansible-playbook run of N trivial tasks (ping and command alternately) against the VM,
  with the linear strategy (AnsiballZ: a fresh Python and ansible's module_utils compiled per task) and
  with Mitogen's mitogen_linear (the molecule scenarios' setting, .config/molecule/config.yml);
  the per-task time is (run time - the one-task run time) / (N - 1), so the bootstrap is not counted.
- module: gpulab.fleet.zfs_datasets listing a missing parent, as a one-task ansible-playbook (the way
  pytest's VM tests ran it before) and by direct execution in the guest (TestVM.run_module).
Medians of --runs. The VM is booted with scripts/testvm/up.sh and stopped by scripts/testvm/down.sh.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / ".build" / "collections")]

import yaml

from tests.fixtures.testvm import TESTVM, TestVM, _testvm_paths
from tests.helpers import VENV_BIN, ansible_env, run_task

STRATEGY_PLUGINS = ROOT / "molecule" / "resources" / "strategy_plugins"


def playbook_seconds(vm: TestVM, tasks: int, strategy: str, tmp: Path) -> float:
    steps = [{"ansible.builtin.ping": {}} if i % 2 == 0 else {"ansible.builtin.command": "true"} for i in range(tasks)]
    pb = tmp / f"play-{strategy}-{tasks}.yml"
    pb.write_text(yaml.safe_dump([{"hosts": "all", "gather_facts": False, "tasks": steps}]))
    env = ansible_env({
        "ANSIBLE_PIPELINING": "True", "ANSIBLE_HOST_KEY_CHECKING": "False", "ANSIBLE_TIMEOUT": "120",
        "ANSIBLE_STRATEGY_PLUGINS": str(STRATEGY_PLUGINS), "ANSIBLE_STRATEGY": strategy,
    })  # fmt: skip
    start = time.monotonic()
    subprocess.run([str(VENV_BIN / "ansible-playbook"), "-i", str(vm.inventory), str(pb)], env=env, check=True,
                   capture_output=True, timeout=1800)  # fmt: skip
    return time.monotonic() - start


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tasks", type=int, default=15)
    ap.add_argument("--runs", type=int, default=3)
    opts = ap.parse_args()
    run_root = _testvm_paths()[1]
    name = f"bench-{os.getpid()}-{uuid.uuid4().hex[:6]}"
    subprocess.run([str(TESTVM / "up.sh"), name], check=True, capture_output=True)
    results: dict[str, object] = {"tasks": opts.tasks, "runs": opts.runs, "host": platform.node(),
                                  "date": time.strftime("%Y-%m-%d"), "cpus": os.cpu_count()}  # fmt: skip
    try:
        inst = json.loads((run_root / name / "instance.json").read_text())
        vm = TestVM(name=name, inventory=Path(inst["inventory"]), port=inst["port"],
                    identity_file=inst["identity_file"])  # fmt: skip
        vm.push_module_runtime()
        with tempfile.TemporaryDirectory() as tmp:
            for strategy in ("linear", "mitogen_linear"):
                one = [playbook_seconds(vm, 1, strategy, Path(tmp)) for _run in range(opts.runs)]
                many = [playbook_seconds(vm, opts.tasks, strategy, Path(tmp)) for _run in range(opts.runs)]
                results[strategy] = {
                    "one_task_run_s": statistics.median(one),
                    f"{opts.tasks}_task_run_s": statistics.median(many),
                    "per_task_s": (statistics.median(many) - statistics.median(one)) / (opts.tasks - 1),
                }
        args = {"parent": "nosuchpool/x", "datasets": []}
        via_playbook, direct = [], []
        for _run in range(opts.runs):
            start = time.monotonic()
            run_task({"gpulab.fleet.zfs_datasets": args}, hosts="all", inventory=vm.inventory)
            via_playbook.append(time.monotonic() - start)
            start = time.monotonic()
            vm.run_module("zfs_datasets", args)
            direct.append(time.monotonic() - start)
        results["module"] = {"one_task_playbook_s": statistics.median(via_playbook),
                             "direct_in_guest_s": statistics.median(direct)}  # fmt: skip
    finally:
        subprocess.run([str(TESTVM / "down.sh"), name], check=False, capture_output=True)
    print(json.dumps(results, indent=2))
    out = ROOT / "bench" / "results" / f"vm_task_cost-{results['date']}.json"
    out.write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
