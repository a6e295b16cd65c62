# Copyright: (c) 2026, GPU Lab Fleet maintainers
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Benchmark: N port maps with gpulab.fleet.port_map vs the same maps as N ansible.builtin.iptables tasks.

Run by hand as root from the repo root (results go to docs/performance.md):

    .venv/bin/python bench/port_map_1000.py [--maps 1000] [--baseline-maps 1000] [--runs 3]

Everything happens inside a throwaway netlab (tests/fixtures/netns.py), never in the root namespace.
- port_map: one module call with all maps, (a) directly executed like Ansible's module runner and
  (b) as one ansible-playbook task with connection local, run under `ip netns exec HOST`. Each is timed
  applying from an empty ruleset and again as a no-op; medians of --runs.
- baseline: one ansible-playbook run with a loop of N ansible.builtin.iptables items (one DNAT rule per
  map: the baseline does LESS than port_map, which also writes FORWARD and MASQUERADE rules), from empty
  and again as a no-op. With --baseline-maps < --maps the time is extrapolated linearly (reported as such).
"""

from __future__ import annotations

import argparse
import json
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

from tests.fixtures.netns import make_netlab
from tests.helpers import ansible_env, run_module

FIRST_PORT = 20000


def maps_for(n: int) -> list[dict]:
    # Spread destinations over the bridge network like real containers (10.231.0.10 upwards).
    return [
        {"owner": f"user{i:04d}", "host_port": FIRST_PORT + i, "dest_ip": f"10.231.{i // 250}.{i % 250 + 2}"}
        for i in range(n)
    ]


def playbook(lab, tasks: list[dict], tmp: Path, name: str) -> float:
    """Run tasks with ansible-playbook, connection local, inside the lab's host namespace; seconds."""
    pb = tmp / f"{name}.yml"
    pb.write_text(yaml.safe_dump([{"hosts": "localhost", "gather_facts": False, "tasks": tasks}]))
    cmd = [
        *lab.prefix("host"),
        str(Path(sys.executable).parent / "ansible-playbook"),
        "-i",
        "localhost,",
        "-c",
        "local",
        "-e",
        f"ansible_python_interpreter={sys.executable}",
        str(pb),
    ]
    start = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=ansible_env(), check=False)
    elapsed = time.perf_counter() - start
    if proc.returncode != 0:
        raise RuntimeError(f"{name} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return elapsed


def bench_port_map(n: int, runs: int, tmp: Path) -> dict:
    maps = maps_for(n)
    args = {"maps": maps, "bridge_subnet": "10.231.0.0/16"}
    out = {"direct_apply": [], "direct_noop": [], "playbook_apply": [], "playbook_noop": []}
    for _attempt in range(runs):
        lab = make_netlab()
        try:
            start = time.perf_counter()
            res = run_module("port_map", args, prefix=lab.prefix("host"), diff=False)
            out["direct_apply"].append(time.perf_counter() - start)
            assert res["changed"] and not res["failed"], res.get("msg")
            start = time.perf_counter()
            res = run_module("port_map", args, prefix=lab.prefix("host"), diff=False)
            out["direct_noop"].append(time.perf_counter() - start)
            assert not res["changed"], res
            rules = lab.iptables_save()
            assert rules.count("-j DNAT") == n, "not every map was applied"
        finally:
            lab.teardown()
        lab = make_netlab()
        try:
            task = {"gpulab.fleet.port_map": args}
            out["playbook_apply"].append(playbook(lab, [task], tmp, "port_map"))
            out["playbook_noop"].append(playbook(lab, [task], tmp, "port_map"))
        finally:
            lab.teardown()
    return {k: statistics.median(v) for k, v in out.items()} | {"raw": out}


def bench_baseline(n: int, tmp: Path) -> dict:
    task = {
        "ansible.builtin.iptables": {
            "table": "nat",
            "chain": "PREROUTING",
            "protocol": "tcp",
            "destination_port": "{{ item.host_port }}",
            "jump": "DNAT",
            "to_destination": "{{ item.dest_ip }}:22",
            "comment": "owner={{ item.owner }}",
        },
        "loop": maps_for(n),
    }
    lab = make_netlab()
    try:
        apply = playbook(lab, [task], tmp, "baseline")
        rules = lab.iptables_save()
        assert rules.count("-j DNAT") == n, "baseline did not apply every rule"
        noop = playbook(lab, [task], tmp, "baseline")
    finally:
        lab.teardown()
    return {"apply": apply, "noop": noop}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--maps", type=int, default=1000)
    ap.add_argument("--baseline-maps", type=int, default=1000)
    ap.add_argument("--runs", type=int, default=3)
    opts = ap.parse_args()
    with tempfile.TemporaryDirectory() as t:
        tmp = Path(t)
        pm = bench_port_map(opts.maps, opts.runs, tmp)
        base = bench_baseline(opts.baseline_maps, tmp)
    scale = opts.maps / opts.baseline_maps
    result = {
        "machine": {
            "cpus": subprocess.run(["nproc"], capture_output=True, text=True, check=False).stdout.strip(),
            "kernel": platform.release(),
            "iptables": subprocess.run(
                ["iptables", "--version"], capture_output=True, text=True, check=False
            ).stdout.strip(),
            "python": platform.python_version(),
        },
        "maps": opts.maps,
        "port_map": pm,
        "baseline_maps": opts.baseline_maps,
        "baseline": base,
        "baseline_extrapolated": {k: v * scale for k, v in base.items()},
        "ratio_apply_playbook": base["apply"] * scale / pm["playbook_apply"],
        "ratio_noop_playbook": base["noop"] * scale / pm["playbook_noop"],
    }
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
