"""module_utils/runlock on real processes and files: who a lock's anchor is, when a holder counts as
gone, and that two processes racing for one lock never both get it."""

from __future__ import annotations

import json
import multiprocessing
import os
import subprocess
import sys
import textwrap
import time

import pytest

from ansible_collections.gpulab.fleet.plugins.module_utils import runlock

PROBE = textwrap.dedent("""
    import json, sys
    sys.path[:0] = {path!r}
    from ansible_collections.gpulab.fleet.plugins.module_utils import runlock
    print(json.dumps({{"anchor": runlock.find_anchor(), "self": __import__("os").getpid()}}))
""")


def probe_under(tmp_path, chain: list[str]) -> tuple[dict | None, list[int]]:
    """find_anchor() of a probe run at the bottom of a real chain of processes, each named as in
    `chain` (an executable of that name: comm and argv[0]) and a shell, which stays the parent of
    what it runs (`; true`). Returns (anchor, pids of the chain, top first)."""
    (tmp_path / "probe.py").write_text(PROBE.format(path=sys.path))
    cmd = f"{sys.executable} {tmp_path / 'probe.py'}; true"
    for name in reversed(chain):
        exe = tmp_path / name
        if not exe.exists():
            exe.symlink_to("/bin/sh")
        cmd = f"echo $$ >> {tmp_path / 'pids'}; {exe} -c {shquote(cmd)}; true"
    out = subprocess.run(["/bin/sh", "-c", cmd], capture_output=True, text=True, check=True).stdout
    pids = [int(p) for p in (tmp_path / "pids").read_text().split()]
    return json.loads(out)["anchor"], pids


def shquote(text: str) -> str:
    return "'" + text.replace("'", "'\\''") + "'"


def test_the_anchor_is_the_nearest_sshd_the_ssh_connection(tmp_path):
    anchor, pids = probe_under(tmp_path, ["sshd", "sudo", "sh"])
    # pids: the shell that starts `sshd`, then `sshd` (which wrote its own $$), then `sudo`
    assert anchor["kind"] == "ssh connection" and anchor["pid"] == pids[1], (anchor, pids)
    assert isinstance(anchor["start"], int)


def test_openssh_10_sshd_session_is_an_sshd_too(tmp_path):
    anchor, pids = probe_under(tmp_path, ["sshd-session", "sh"])
    assert anchor["kind"] == "ssh connection" and anchor["pid"] == pids[1], (anchor, pids)


def test_a_local_runs_anchor_is_the_topmost_ansible_process(tmp_path):
    """ansible-playbook -> its worker (both named ansible-playbook) -> sh -> module: the main process,
    which lives for the whole run, not the worker, which ends with the task."""
    anchor, pids = probe_under(tmp_path, ["ansible-playbook", "ansible-playbook", "sh"])
    assert anchor["kind"] == "ansible-playbook" and anchor["pid"] == pids[1], (anchor, pids)


def a_dead_process() -> tuple[int, int]:
    proc = subprocess.Popen(["sleep", "30"])
    start = runlock.process_start(proc.pid)
    proc.kill()
    proc.wait()
    return proc.pid, start


def record(run="other:1:1", anchor=None, boot=None, since=None) -> dict:
    here = {"pid": os.getpid(), "start": runlock.process_start(os.getpid()), "kind": "ssh connection"}
    return {"run": run, "controller": "other", "controller_pid": 1, "playbook": "site.yml", "user": "ann",
            "anchor": here if anchor is None else anchor, "boot": runlock.boot_id() if boot is None else boot,
            "since": time.time() if since is None else since}  # fmt: skip


RUN = {"id": "me:2:2", "controller": "me", "controller_pid": 2, "playbook": "users.yml", "user": "bo"}


def test_a_live_holder_is_waited_for_then_reported(tmp_path):
    path = str(tmp_path / "run.json")
    runlock.write_record(path, record())
    asked = time.monotonic()
    got = runlock.acquire(path, RUN, wait=1)
    assert not got["acquired"] and got["holder"]["run"] == "other:1:1"
    assert time.monotonic() - asked >= 1 and got["waited"] >= 1
    assert json.loads((tmp_path / "run.json").read_text())["run"] == "other:1:1"  # untouched
    assert "site.yml run by ann@other (ansible-playbook pid 1)" in runlock.describe(got["holder"])


@pytest.mark.parametrize("stale,why", [
    (dict(anchor="dead"), "its ssh connection on this host (pid"),
    (dict(boot="an-earlier-boot"), "taken before this host's last boot"),
    (dict(dead_run=True), "its ansible-playbook process on the controller is gone"),
])  # fmt: skip
def test_a_gone_holders_lock_is_taken_over_saying_why(tmp_path, stale, why):
    path = str(tmp_path / "run.json")
    anchor = None
    if stale.get("anchor") == "dead":
        pid, start = a_dead_process()
        anchor = {"pid": pid, "start": start, "kind": "ssh connection"}
    runlock.write_record(path, record(anchor=anchor, boot=stale.get("boot")))
    got = runlock.acquire(path, RUN, wait=0, dead_runs=["other:1:1"] if stale.get("dead_run") else [])
    assert got["acquired"] and why in got["took_over"]["why"], got
    assert json.loads((tmp_path / "run.json").read_text())["run"] == RUN["id"]


def test_check_mode_writes_nothing_and_does_not_wait(tmp_path):
    path = tmp_path / "run.json"
    assert runlock.acquire(str(path), RUN, wait=60, check=True)["acquired"] and not path.exists()
    runlock.write_record(str(path), record())
    asked = time.monotonic()
    assert not runlock.acquire(str(path), RUN, wait=60, check=True)["acquired"]
    assert time.monotonic() - asked < 5


def test_taking_it_again_keeps_since_and_only_the_holder_lets_go(tmp_path):
    path = str(tmp_path / "run.json")
    first = runlock.acquire(path, RUN, wait=0)
    since = json.loads(open(path).read())["since"]
    again = runlock.acquire(path, RUN, wait=0)
    assert first["acquired"] and again["acquired"] and again["took_over"] is None
    assert json.loads(open(path).read())["since"] == since
    assert not runlock.release(path, "someone:else:1") and os.path.exists(path)
    assert runlock.release(path, RUN["id"]) and not os.path.exists(path)
    assert not runlock.release(path, RUN["id"])  # nothing left to let go


def _race(path: str, n: int, results) -> None:
    run = dict(RUN, id=f"racer:{n}:{n}")
    results.put((n, runlock.acquire(path, run, wait=0)["acquired"]))
    time.sleep(1)  # stay alive (the anchor) while the others try


def test_of_processes_racing_for_a_free_lock_exactly_one_wins(tmp_path):
    path = str(tmp_path / "run.json")
    ctx = multiprocessing.get_context("fork")
    results = ctx.Queue()
    racers = [ctx.Process(target=_race, args=(path, n, results)) for n in range(6)]
    for racer in racers:
        racer.start()
    won = [results.get(timeout=60) for _racer in racers]
    for racer in racers:
        racer.join()
    assert sum(1 for _n, got in won if got) == 1, won
