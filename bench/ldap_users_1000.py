"""Benchmark gpulab.fleet.ldap_users: first sync and no-op sync of 1,000 users against real slapd.

Run by hand: .venv/bin/python bench/ldap_users_1000.py [--users N] [--repeat R]
Starts a throwaway slapd (tests/fixtures/slapd.py, TLS + unique overlay), times whole module runs
(process start, connect over ldaps, paged read, plan, apply) with run_module, and prints a Markdown
table for docs/performance.md. A 1-user no-op run is the baseline the 1,000-user no-op is compared to.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / ".build" / "collections")]

from tests.fixtures.slapd import make_tls_files, start_slapd
from tests.helpers import public_key, run_module


def key(seed: str) -> str:
    return public_key(seed, f"{seed}@bench")


def users(n: int) -> list[dict]:
    return [
        {"name": f"u{i:05d}", "uid": 20000 + i, "full_name": f"User Number {i}", "mail": f"u{i}@lab.test",
         "ssh_keys": [key(f"{i}a"), key(f"{i}b")], "groups": ["gpu"] if i % 2 else ["gpu", "cpu"]}
        for i in range(n)
    ]  # fmt: skip


def timed(args: dict) -> tuple[float, dict]:
    start = time.perf_counter()
    result = run_module("ldap_users", args, diff=False)
    elapsed = time.perf_counter() - start
    if result["failed"]:
        raise SystemExit(f"module failed: {result.get('msg')}")
    return elapsed, result


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--users", type=int, default=1000)
    ap.add_argument("--repeat", type=int, default=3)
    opts = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="gf-bench-"))
    srv = start_slapd(tmp / "srv", tls=make_tls_files(tmp / "tls"), unique=True)
    try:
        groups = [{"name": "gpu", "gid": 3000}, {"name": "cpu", "gid": 3001}]
        base = {**srv.module_params("ldaps"), "groups": groups}
        rows = []
        t, r = timed({**base, "users": users(opts.users)})
        assert len(r["users"]["added"]) == opts.users
        rows.append((f"first sync, {opts.users} users (adds {opts.users} users + {opts.users + 2} groups)", t))
        for mode in ("none", "schema"):
            runs = []
            for _run in range(opts.repeat):
                t, r = timed({**base, "users": users(opts.users), "get_info": mode})
                assert r["changed"] is False, r
                runs.append(t)
            rows.append((f"no-op sync, {opts.users} users, get_info={mode} (median of {opts.repeat})",
                         statistics.median(runs)))  # fmt: skip
        runs = []
        for _run in range(opts.repeat):
            # The same directory, a 1-user list: the read is the same, the plan is tiny.
            t, r = timed({**base, "users": users(1)})
            assert r["changed"] is False
            runs.append(t)
        rows.append((f"no-op sync, 1 user listed (directory holds {opts.users}) (median of {opts.repeat})",
                     statistics.median(runs)))  # fmt: skip
        print("| run | seconds |\n| --- | ---: |")
        for label, seconds in rows:
            print(f"| {label} | {seconds:.2f} |")
    finally:
        srv.stop()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
