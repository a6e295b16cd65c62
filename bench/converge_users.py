# Copyright: (c) 2026, GPU Lab Fleet maintainers
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Benchmark: converge cost of playbooks/users.yml against the number of users (issue 8, items 1-3).

Run by hand as root from the repo root, with one test VM of your own as the storage server:

    scripts/testvm/up.sh bench-h8 --disks 3 --disk-size 2G --memory 2048
    .venv/bin/python bench/converge_users.py --vm bench-h8 [--sizes 1,10,50,100] [--runs 3]
        [--baseline-runs 3] [--provision 1,10] [--baseline-storage-max N] [--json out.json]
    scripts/testvm/down.sh bench-h8

What produced docs/performance.md (two invocations, ~70 min on the 2-core machine):
    ... --sizes 1,10 --runs 3 --baseline-runs 3
    ... --sizes 50,100 --provision "" --runs 3 --baseline-runs 1,1 --baseline-storage-max 10
Stop it with `kill -TERM PID`: it still cleans up.

The lab (all real backends):
- storage: the test VM (OpenZFS 2.1, nfs-kernel-server), set up once by users.yml with no users
  (storage_server role: raidz1 pool on the VM's 3 disks, the fleet dataset tree, exports, sanoid);
- directory: a throwaway slapd on 127.0.0.1 (tests/fixtures/slapd.py), synced by the directory
  role's sync tasks in external mode (host `bench-dir`, connection local);
- GPU host: this machine (`bench-gpu`, connection local) with the real LXD. Its modules run under
  `ip netns exec <bench netns>` (ansible_python_interpreter is a wrapper script), so port_map and the
  baseline's iptables tasks write into a throwaway namespace, never the root namespace's rules; LXD's
  unix socket works from any namespace. The homes are local directories (this kernel has no NFS client).

For each N in --sizes: converge users.yml to N users (the first converge of a size listed in
--provision uses N NEW users and is timed until every new user can SSH into her container with her own
key = item 3), then --runs no-op converges of users.yml (item 1) and --baseline-runs no-op runs of
bench/baseline_users.yml, the same desired state as loops of community.general.lxd_container,
ansible.builtin.iptables, community.general.zfs (+ ansible.builtin.file for owner/mode),
community.general.ldap_entry/ldap_attrs (item 2). Every no-op run must report changed=0 (the baseline
too: that proves it describes the state ours converged). Module invocations are counted by
bench/callback_plugins/bench_count.py. Everything the bench creates (containers bench-<run>-NNN, the
netns, slapd, home directories, datasets on the VM, /etc/subuid lines) is removed at the end, also on
failure. Results: printed as Markdown and saved as JSON (--json), written into docs/performance.md by hand.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / ".build" / "collections")]

import pylxd
import yaml

from tests.fixtures.lxd import delete_instances
from tests.fixtures.slapd import start_slapd
from tests.helpers import ansible_env

VENV_PY = Path(sys.executable)
RUN_ROOT = Path("/var/cache/gpulab-fleet/run")
UID_BASE = 30000
PORT_BASE = 40000
BRIDGE_SUBNET = "10.117.42.0/24"
BASELINE = ROOT / "bench" / "baseline_users.yml"
SUBID_FILES = (Path("/etc/subuid"), Path("/etc/subgid"))


def sh(cmd: list[str], check: bool = True, **kw) -> subprocess.CompletedProcess:
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False, **kw)
    if check and proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed (rc={proc.returncode}): {proc.stderr.strip()[-2000:]}")
    return proc


class BenchLab:
    """The throwaway lab: netns, slapd, homes, keys, inventory; cleanup() removes all of it."""

    def __init__(self, vm: str, workdir: Path):
        self.run_id = uuid.uuid4().hex[:4]
        self.prefix = f"bench-{self.run_id}-"
        self.netns = f"gfbench{self.run_id}"
        self.work = workdir
        self.homes = Path(f"/var/tmp/gf-bench-{self.run_id}")
        self.vm = json.loads((RUN_ROOT / vm / "instance.json").read_text())
        self.slapd = None
        self.keys: dict[str, str] = {}  # user name -> public key
        self.subids_before = {p: set(p.read_text().splitlines()) for p in SUBID_FILES}
        self.lxd = pylxd.Client()

    # ------------------------------------------------------------------ set-up
    def setup(self) -> None:
        sh(["ip", "netns", "add", self.netns])
        sh(["ip", "netns", "exec", self.netns, "ip", "link", "set", "lo", "up"])
        sh(["ip", "netns", "exec", self.netns, "sysctl", "-qw", "net.ipv4.ip_forward=1"])
        wrapper = self.work / "python-in-netns"
        wrapper.write_text(f'#!/bin/sh\nexec ip netns exec {self.netns} {VENV_PY} "$@"\n')
        wrapper.chmod(0o755)
        self.slapd = start_slapd(self.work / "slapd")
        (self.homes / "home").mkdir(parents=True)
        (self.work / "keys").mkdir()
        (self.work / "ssh").mkdir()

    def user(self, index: int) -> dict:
        name = f"{self.prefix}{index:03d}"
        if name not in self.keys:
            key = self.work / "keys" / name
            sh(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", f"{name}@bench", "-f", str(key)])
            self.keys[name] = key.with_suffix(".pub").read_text().strip()
            home = self.homes / "home" / name
            home.mkdir()
            os.chown(home, UID_BASE + index, UID_BASE + index)
        return {"name": name, "uid": UID_BASE + index, "full_name": f"Bench User {index}",
                "mail": f"{name}@lab.test", "ssh_keys": [self.keys[name]]}  # fmt: skip

    def inventory(self, users: list[dict]) -> Path:
        vm = self.vm
        inv = {
            "all": {
                "vars": {
                    "fleet_users": users,
                    "fleet_user_defaults": {"host": "bench-gpu", "cpu": 1, "memory": "512MiB", "quota": "1G"},
                    "fleet_uid_base": UID_BASE,
                    "fleet_port_base": PORT_BASE,
                    "fleet_lab_name": "bench",
                    "fleet_storage_pool": "tank",
                    "fleet_nfs_server": "",
                    "fleet_shared_datasets": [],
                },
                "hosts": {
                    "localhost": {"ansible_connection": "local", "ansible_python_interpreter": str(VENV_PY)},
                },
                "children": {
                    "gpu_hosts": {"hosts": {"bench-gpu": {
                        "ansible_connection": "local",
                        "ansible_python_interpreter": str(self.work / "python-in-netns"),
                        "workstations_nfs_export_root": str(self.homes),
                        "workstations_gpu_mode": "devices",
                        "workstations_bridge_subnet": BRIDGE_SUBNET,
                        "workstations_port_persist": False,
                        "workstations_ssh_config_dir": str(self.work / "ssh"),
                        "bench_netns": self.netns,
                    }}},
                    "storage": {"hosts": {"bench-storage": {
                        "ansible_host": vm["address"],
                        "ansible_port": vm["port"],
                        "ansible_user": vm["user"],
                        "ansible_ssh_private_key_file": vm["identity_file"],
                        "ansible_ssh_common_args": "-o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null "
                        "-o LogLevel=ERROR",
                        "ansible_python_interpreter": "/usr/bin/python3",
                        "storage_server_pool_vdevs": [{"type": "raidz1", "disks": vm["disks"]}],
                        "storage_server_install_packages": False,
                        "storage_server_nfs_clients": ["127.0.0.1"],
                    }}},
                    "directory": {"hosts": {"bench-dir": {
                        "ansible_connection": "local",
                        "ansible_python_interpreter": str(VENV_PY),
                        # the baseline's community.general LDAP modules need python-ldap (Debian python3-ldap)
                        "bench_system_python": "/usr/bin/python3",
                        "directory_mode": "external",
                        "directory_server_uri": self.slapd.uri,
                        "directory_bind_dn": self.slapd.bind_dn,
                        "directory_bind_pw": self.slapd.bind_pw,
                        "directory_suffix": self.slapd.suffix,
                    }}},
                },
            }
        }  # fmt: skip
        path = self.work / "inventory.yml"
        path.write_text(yaml.safe_dump(inv, sort_keys=False))
        return path

    # ------------------------------------------------------------------ clean-up
    def cleanup(self) -> list[str]:
        errors = [f"container {e}" for e in delete_instances(self.lxd, lambda name: name.startswith(self.prefix))]
        # archived containers (state absent) would carry a suffix: none are made by this bench
        if self.slapd:
            self.slapd.stop()
        sh(["ip", "netns", "del", self.netns], check=False)
        shutil.rmtree(self.homes, ignore_errors=True)
        vm = self.vm
        proc = vm_ssh(vm, f"for d in $(zfs list -H -o name -r tank/fleet/home | grep '/{self.prefix}'); "
                          "do zfs destroy -r $d; done; true", check=False)  # fmt: skip
        if proc.returncode != 0:
            errors.append(f"datasets on the VM: {proc.stderr.strip()}")
        for path, before in self.subids_before.items():
            # lxd_workstations appends root:UID:1 for each user; drop only the lines this run added
            lines = path.read_text().splitlines()
            kept = [ln for ln in lines if ln in before or not ln.startswith("root:3")]
            if kept != lines:
                path.write_text("\n".join(kept) + "\n")
        return errors


def vm_ssh(vm: dict, command: str, check: bool = True) -> subprocess.CompletedProcess:
    return sh(["ssh", "-F", "/dev/null", "-i", vm["identity_file"], "-p", str(vm["port"]),
               "-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null",
               "-o", "LogLevel=ERROR", f"{vm['user']}@{vm['address']}", command], check=check)  # fmt: skip


def playbook(lab: BenchLab, path: Path, inventory: Path, label: str, limit: str | None = None) -> dict:
    """Run one ansible-playbook; returns seconds, counts (bench_count callback) and the log path."""
    count_file = lab.work / f"{label}.count.json"
    log = lab.work / f"{label}.log"
    env = ansible_env(
        {
            "ANSIBLE_CALLBACK_PLUGINS": str(ROOT / "bench" / "callback_plugins"),
            "ANSIBLE_CALLBACKS_ENABLED": "bench_count",
            "BENCH_COUNT_FILE": str(count_file),
            "ANSIBLE_PIPELINING": "True",  # usual tuning, for ours and the baseline alike
            "ANSIBLE_SSH_ARGS": "-o ControlMaster=auto -o ControlPersist=300s",
        }
    )
    cmd = [str(VENV_PY.parent / "ansible-playbook"), "-i", str(inventory), str(path)]
    if limit:
        cmd += ["--limit", limit]
    start = time.perf_counter()
    with open(log, "w") as fh:
        proc = subprocess.run(cmd, stdout=fh, stderr=subprocess.STDOUT, env=env, check=False, cwd=ROOT)
    seconds = time.perf_counter() - start
    if proc.returncode != 0:
        tail = log.read_text()[-4000:]
        raise RuntimeError(f"{label}: ansible-playbook failed (rc={proc.returncode}), log {log}:\n{tail}")
    counts = json.loads(count_file.read_text())
    return {"seconds": seconds, "module_runs": counts["module_runs"], "changed": counts["changed"],
            "actions": counts["actions"], "plays": counts["plays"], "log": str(log)}  # fmt: skip


def changed_actions(run: dict) -> dict:
    return {a: r["changed"] for a, r in run["actions"].items() if r["changed"]}


def ssh_ok(ip: str, user: str, key: Path) -> bool:
    proc = subprocess.run(
        ["ssh", "-F", "/dev/null", "-i", str(key), "-o", "BatchMode=yes", "-o", "IdentitiesOnly=yes",
         "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null", "-o", "ConnectTimeout=3",
         "-o", "LogLevel=ERROR", f"{user}@{ip}", "id -un"],
        capture_output=True, text=True, timeout=20, check=False,
    )  # fmt: skip
    return proc.returncode == 0 and proc.stdout.strip() == user


def wait_ssh(lab: BenchLab, names: list[str], deadline: float) -> None:
    """Until each user logs into her container with her own key (directly on the bridge: the DNAT lives
    in the bench namespace, which has no route to the containers)."""
    pending = list(names)
    while pending:
        for name in list(pending):
            state = lab.lxd.instances.get(name).state()
            addrs = [a["address"] for a in ((state.network or {}).get("eth0") or {}).get("addresses", [])
                     if a.get("family") == "inet" and a.get("scope") == "global"]  # fmt: skip
            if addrs and ssh_ok(addrs[0], name, lab.work / "keys" / name):
                pending.remove(name)
        if pending and time.monotonic() > deadline:
            raise TimeoutError(f"no SSH login yet for {pending}")
        if pending:
            time.sleep(0.5)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n", maxsplit=1)[0])
    ap.add_argument("--vm", required=True, help="name of a running test VM (scripts/testvm/up.sh NAME --disks 3)")
    ap.add_argument("--sizes", default="1,10,50,100")
    ap.add_argument("--runs", type=int, default=3, help="no-op runs of users.yml per size")
    ap.add_argument("--baseline-runs", default="3", help="no-op runs of the baseline per size, e.g. 3 or 3,3,1,1")
    ap.add_argument("--provision", default="1,10", help="sizes whose first converge uses only NEW users (item 3)")
    ap.add_argument(
        "--baseline-storage-max",
        type=int,
        default=10**6,
        help="above this N, run the baseline without its storage play (slow on an emulated VM)",
    )
    ap.add_argument("--json", default=None, help="write all results here")
    ap.add_argument("--keep", action="store_true", help="do not clean up (debugging)")
    opts = ap.parse_args()
    sizes = [int(s) for s in opts.sizes.split(",")]
    provision = {int(s) for s in opts.provision.split(",") if s}
    brs = [int(s) for s in opts.baseline_runs.split(",")]
    baseline_runs = {n: (brs[i] if i < len(brs) else brs[-1]) for i, n in enumerate(sizes)}
    work = Path(tempfile.mkdtemp(prefix="gf-bench-users-"))
    lab = BenchLab(opts.vm, work)
    results: dict = {"machine": machine(), "run_id": lab.run_id, "sizes": {}}
    out = Path(opts.json) if opts.json else work / "results.json"

    def save():
        out.write_text(json.dumps(results, indent=1))

    # kill -TERM PID stops the bench and still cleans up (background jobs ignore SIGINT)
    signal.signal(signal.SIGTERM, lambda *_args: sys.exit(143))
    users_yml = ROOT / "playbooks" / "users.yml"
    print(f"work dir {work}, containers {lab.prefix}*, results {out}", flush=True)
    try:
        lab.setup()
        start = time.perf_counter()
        setup = playbook(lab, users_yml, lab.inventory([]), "setup-0-users")
        results["setup_seconds"] = setup["seconds"]
        print(f"setup (users.yml, 0 users: pool, fleet tree, exports): {setup['seconds']:.1f} s", flush=True)
        current: list[int] = []
        next_index = 1
        for n in sizes:
            row: dict = {}
            fresh = n in provision
            chosen = [] if fresh else list(current)
            while len(chosen) < n:
                chosen.append(next_index)
                next_index += 1
            new = [i for i in chosen if i not in current]
            current = chosen
            users = [lab.user(i) for i in chosen]
            inv = lab.inventory(users)
            start = time.perf_counter()
            try:
                run = playbook(lab, users_yml, inv, f"n{n}-apply")
            except RuntimeError as exc:
                # A failed converge is a finding, not the end of the bench: record it, converge again
                # (what an admin does) and time the repair run too.
                failed = re.findall(r'"msg": "([^"]*)"', Path(lab.work / f"n{n}-apply.log").read_text())
                row["apply_failed"] = {"seconds": time.perf_counter() - start, "msg": failed or [str(exc)[:300]]}
                print(f"N={n}: converge FAILED ({failed}), converging again", flush=True)
                run = playbook(lab, users_yml, inv, f"n{n}-apply-again")
            row["apply"] = {k: run[k] for k in ("seconds", "module_runs", "changed")} | {"new_users": len(new)}
            if fresh:
                wait_ssh(lab, [f"{lab.prefix}{i:03d}" for i in new], time.monotonic() + 600)
                row["provision_until_ssh"] = time.perf_counter() - start
            print(
                f"N={n}: converge adding {len(new)} users {run['seconds']:.1f} s"
                + (f", all can SSH in after {row['provision_until_ssh']:.1f} s" if fresh else ""),
                flush=True,
            )
            # The baseline writes its rules into the standard chains (ours: owned FLEET-* chains), so its
            # first run adds them; everything else it checks must already be as users.yml left it.
            # Under TCG every module run on the VM costs 3-5 s, so above --baseline-storage-max the
            # baseline's storage play (3 module runs per user on the VM) is left out, and reported so.
            limit = "gpu_hosts:directory" if n > opts.baseline_storage_max else None
            row["baseline_limit"] = limit
            prime = playbook(lab, BASELINE, inv, f"n{n}-baseline-prime", limit)
            unexpected = {a: c for a, c in changed_actions(prime).items() if a != "iptables"}
            if unexpected:
                raise RuntimeError(f"baseline disagrees with users.yml at N={n}: {unexpected} (log {prime['log']})")
            row["baseline_prime"] = {k: prime[k] for k in ("seconds", "module_runs", "changed")}
            for label, pb, count in (("ours", users_yml, opts.runs), ("baseline", BASELINE, baseline_runs[n])):
                runs = []
                for k in range(count):
                    r = playbook(lab, pb, inv, f"n{n}-{label}-noop{k}", limit if label == "baseline" else None)
                    if r["changed"]:
                        raise RuntimeError(f"{label} no-op at N={n} changed: {changed_actions(r)} (log {r['log']})")
                    runs.append(r)
                    print(f"N={n}: {label} no-op {r['seconds']:.1f} s, {r['module_runs']} module runs", flush=True)
                row[label] = {
                    "runs": [r["seconds"] for r in runs],
                    "median": statistics.median(r["seconds"] for r in runs) if runs else None,
                    "module_runs": runs[-1]["module_runs"] if runs else None,
                    "actions": runs[-1]["actions"] if runs else None,
                    "plays": [r["plays"] for r in runs],
                }
            results["sizes"][str(n)] = row
            save()
        print_tables(results)
    finally:
        save()
        if opts.keep:
            print(f"--keep: left {lab.prefix}* containers, netns {lab.netns}, {lab.homes}, slapd pid {lab.slapd.pid}")
        else:
            errors = lab.cleanup()
            if errors:
                print("CLEAN-UP PROBLEMS:\n" + "\n".join(errors), file=sys.stderr)
        print(f"results: {out}")


def machine() -> dict:
    mem = Path("/proc/meminfo").read_text().split("\n")[0]
    return {
        "nproc": os.cpu_count(),
        "mem": mem,
        "kernel": os.uname().release,
        "loadavg_start": Path("/proc/loadavg").read_text().split()[:3],
        "cpu": next(
            (
                ln.split(":", 1)[1].strip()
                for ln in Path("/proc/cpuinfo").read_text().splitlines()
                if ln.startswith("model name")
            ),
            "?",
        ),
    }


def print_tables(results: dict) -> None:
    print("\n| N | users.yml no-op (s) | module runs | baseline no-op (s) | module runs | ours/baseline |")
    print("| ---: | ---: | ---: | ---: | ---: | ---: |")
    for n, row in results["sizes"].items():
        ours, base = row["ours"], row["baseline"]
        ratio = f"{ours['median'] / base['median']:.2f}" if base["median"] else "-"
        base_s = f"{base['median']:.1f}" if base["median"] else "-"
        print(f"| {n} | {ours['median']:.1f} | {ours['module_runs']} | {base_s} | {base['module_runs']} | {ratio} |")
    print("\n| N | new users | converge (s) | until all can SSH in (s) |\n| ---: | ---: | ---: | ---: |")
    for n, row in results["sizes"].items():
        if "provision_until_ssh" in row:
            apply = row["apply"]
            print(f"| {n} | {apply['new_users']} | {apply['seconds']:.1f} | {row['provision_until_ssh']:.1f} |")


if __name__ == "__main__":
    main()
