# Copyright: (c) 2026, GPU Lab Fleet maintainers
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Benchmark: N mounts with gpulab.fleet.mounts vs the same mounts as a loop of ansible.posix.mount.

Run by hand as root from the repo root (results go to docs/performance.md):

    .venv/bin/python bench/mounts_200.py [--mounts 200] [--baseline-mounts 200] [--runs 3]

Everything happens in a private mount namespace held by `unshare -m --propagation private sleep
infinity` (started here, ended by its PID); every run goes through `nsenter -t PID -m`, so the tmpfs
mounts never show in the machine's mount table. The fstab is a temporary file.
- mounts: one module call with all N, (a) run directly like Ansible's module runner and (b) as one
  ansible-playbook task with connection local; each timed applying and again as a no-op; medians.
- baseline: one ansible-playbook run with a loop of N ansible.posix.mount items (state mounted), applying
  and again as a no-op. With --baseline-mounts < --mounts the time is extrapolated linearly (reported).
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
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / ".build" / "collections")]

import yaml

from tests.helpers import ansible_env, run_module


class Namespace:
    """A private mount namespace, held by a sleeping process of ours."""

    def __init__(self) -> None:
        self.holder = subprocess.Popen(["unshare", "-m", "--propagation", "private", "sleep", "infinity"])
        deadline = time.monotonic() + 10
        # unshare makes the namespace private before it execs sleep: only then is it safe to mount in it.
        while Path(f"/proc/{self.holder.pid}/comm").read_text().strip() != "sleep":
            if time.monotonic() > deadline:
                raise RuntimeError("the namespace holder did not start")
            time.sleep(0.05)
        if os.readlink(f"/proc/{self.holder.pid}/ns/mnt") == os.readlink("/proc/self/ns/mnt"):
            raise RuntimeError("the holder is in this machine's mount namespace")

    @property
    def prefix(self) -> list[str]:
        return ["nsenter", "-t", str(self.holder.pid), "-m"]

    def count(self, root: Path) -> int:
        info = subprocess.run([*self.prefix, "cat", "/proc/self/mountinfo"], capture_output=True, text=True, check=True)
        return sum(1 for line in info.stdout.splitlines() if line.split(" ")[4].startswith(str(root) + "/"))

    def close(self) -> None:
        self.holder.kill()
        self.holder.wait(timeout=10)


def mounts_for(root: Path, n: int) -> list[dict]:
    return [
        {"path": str(root / f"user{i:04d}"), "src": "tmpfs", "fstype": "tmpfs", "opts": "size=1m"} for i in range(n)
    ]


def playbook(ns: Namespace, tasks: list[dict], tmp: Path, name: str) -> float:
    """Run tasks with ansible-playbook, connection local, inside the namespace; seconds."""
    pb = tmp / f"{name}.yml"
    pb.write_text(yaml.safe_dump([{"hosts": "localhost", "gather_facts": False, "tasks": tasks}]))
    cmd = [*ns.prefix, str(Path(sys.executable).parent / "ansible-playbook"), "-i", "localhost,", "-c", "local",
           "-e", f"ansible_python_interpreter={sys.executable}", str(pb)]  # fmt: skip
    start = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=ansible_env(), check=False)
    elapsed = time.perf_counter() - start
    if proc.returncode != 0:
        raise RuntimeError(f"{name} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return elapsed


def fresh(tmp: Path, name: str) -> tuple[Namespace, Path, Path]:
    root = tmp / name
    root.mkdir()
    fstab = root / "fstab"
    fstab.write_text("# fstab of the benchmark\n")
    return Namespace(), root, fstab


def bench_module(n: int, runs: int, tmp: Path) -> dict:
    out = {"direct_apply": [], "direct_noop": [], "direct_noop_1": [], "playbook_noop": []}
    for attempt in range(runs):
        ns, root, fstab = fresh(tmp, f"module{attempt}")
        try:
            args = {"mounts": mounts_for(root, n), "fstab": str(fstab)}
            start = time.perf_counter()
            res = run_module("mounts", args, prefix=ns.prefix, diff=False)
            out["direct_apply"].append(time.perf_counter() - start)
            assert res["changed"] and not res["failed"] and ns.count(root) == n, res.get("msg")
            start = time.perf_counter()
            res = run_module("mounts", args, prefix=ns.prefix, diff=False)
            out["direct_noop"].append(time.perf_counter() - start)
            assert not res["changed"], res
            start = time.perf_counter()
            res = run_module("mounts", {**args, "mounts": args["mounts"][:1]}, prefix=ns.prefix, diff=False)
            out["direct_noop_1"].append(time.perf_counter() - start)
            assert not res["changed"], res
            out["playbook_noop"].append(playbook(ns, [{"gpulab.fleet.mounts": args}], tmp, "module"))
        finally:
            ns.close()
    return {k: statistics.median(v) for k, v in out.items()} | {"raw": out}


def bench_baseline(n: int, tmp: Path) -> dict:
    ns, root, fstab = fresh(tmp, "baseline")
    task = {
        "ansible.posix.mount": {"path": "{{ item.path }}", "src": "{{ item.src }}", "fstype": "{{ item.fstype }}",
                                "opts": "{{ item.opts }}", "fstab": str(fstab), "state": "mounted"},
        "loop": mounts_for(root, n),
    }  # fmt: skip
    try:
        apply = playbook(ns, [task], tmp, "baseline")
        assert ns.count(root) == n, "the baseline did not mount everything"
        noop = playbook(ns, [task], tmp, "baseline")
    finally:
        ns.close()
    return {"apply": apply, "noop": noop}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--mounts", type=int, default=200)
    ap.add_argument("--baseline-mounts", type=int, default=200)
    ap.add_argument("--runs", type=int, default=3)
    opts = ap.parse_args()
    with tempfile.TemporaryDirectory() as t:
        tmp = Path(t)
        module = bench_module(opts.mounts, opts.runs, tmp)
        base = bench_baseline(opts.baseline_mounts, tmp)
    scale = opts.mounts / opts.baseline_mounts
    result = {
        "machine": {"cpus": os.cpu_count(), "kernel": platform.release(), "load": os.getloadavg()},
        "mounts": opts.mounts,
        "module": module,
        "baseline": {"measured_mounts": opts.baseline_mounts, **base,
                     "apply_scaled": base["apply"] * scale, "noop_scaled": base["noop"] * scale},
    }  # fmt: skip
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
