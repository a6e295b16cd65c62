# Copyright: (c) 2026, GPU Lab Fleet maintainers
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""One run at a time per host, with a lock that a crashed run does not leave behind.

A run is one `ansible-playbook` process on one controller. Its lock on a host is a small record in
/run/lock (a tmpfs: a reboot clears it) naming the run and its anchor: the process on the host that
lives exactly as long as the run can still act there - the SSH connection's sshd (Ansible keeps one
connection per host for the whole run) or, for a local connection, the `ansible-playbook` process
itself. The record is only ever read and written under a short flock (`exclusive_lock`).

Another run may take the lock over when it is stale: made before the last boot, its anchor gone, or
(decided on the controller, which alone can see it) its `ansible-playbook` process gone from the same
controller. Otherwise it waits, then fails naming the holder. Nothing here talks to Ansible.
"""

from __future__ import annotations

import fcntl
import json
import os
import time

RUN_RECORD = "/run/lock/gpulab-fleet-run.json"
FALLBACK_RECORD = "/var/lock/gpulab-fleet-run.json"  # where /run/lock is missing
POLL = 0.5


def exclusive_lock(path: str, wait: float, poll: float = 0.2) -> int:
    """A descriptor holding an exclusive flock on `path` (made if missing): close it to release the
    lock (the kernel does when the process ends). TimeoutError after `wait` seconds."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    deadline = time.monotonic() + wait
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return fd
        except BlockingIOError:
            if time.monotonic() >= deadline:
                os.close(fd)
                raise TimeoutError(f"another run held {path} for {wait:g} s") from None
            time.sleep(poll)


def read_stat(pid: int, proc_root: str = "/proc") -> tuple[str, list[str]] | None:
    """(comm, the fields after it) of /proc/PID/stat, None when the process is gone. comm (field 2) is
    in parentheses and may hold spaces or ')': the fields start after the last ')'."""
    try:
        with open(f"{proc_root}/{pid}/stat", encoding="utf-8", errors="replace") as fh:
            stat = fh.read()
    except OSError:
        return None
    return stat[stat.index("(") + 1 : stat.rindex(")")], stat[stat.rindex(")") + 2 :].split()


def process_start(pid: int, proc_root: str = "/proc") -> int | None:
    """The process's start time in clock ticks since boot (field 22 of stat), None when it is gone:
    with the pid it names one process, even after the pid is reused."""
    stat = read_stat(pid, proc_root)
    return None if stat is None else int(stat[1][19])


def is_alive(pid: int, start: int, proc_root: str = "/proc") -> bool:
    return process_start(pid, proc_root) == start


def _cmdline(pid: int, proc_root: str) -> list[str]:
    try:
        with open(f"{proc_root}/{pid}/cmdline", "rb") as fh:
            return [a.decode("utf-8", "replace") for a in fh.read().split(b"\0") if a]
    except OSError:
        return []


def _is_ansible(pid: int, proc_root: str) -> bool:
    return any(os.path.basename(arg).startswith("ansible") for arg in _cmdline(pid, proc_root)[:2])


def find_anchor(pid: int | None = None, proc_root: str = "/proc") -> dict | None:
    """The process that outlives every task of this run on this host: the nearest sshd ancestor (the
    connection: `sshd: user@notty`, `sshd-session` on OpenSSH >= 9.8), else the topmost of the nearest
    chain of ansible processes (a local connection's `ansible-playbook`; its workers die per task).
    None when neither is found (then only the controller can tell whether the run is alive)."""
    pid = os.getpid() if pid is None else pid
    ansible_top = None
    while pid > 1:
        stat = read_stat(pid, proc_root)
        if stat is None:
            break
        comm, fields = stat
        if comm.startswith("sshd"):
            return {"pid": pid, "start": int(fields[19]), "kind": "ssh connection"}
        if _is_ansible(pid, proc_root):
            ansible_top = (pid, int(fields[19]))
        elif ansible_top is not None:
            break
        pid = int(fields[1])
    if ansible_top is None:
        return None
    return {"pid": ansible_top[0], "start": ansible_top[1], "kind": "ansible-playbook"}


def boot_id(proc_root: str = "/proc") -> str:
    try:
        with open(f"{proc_root}/sys/kernel/random/boot_id", encoding="ascii") as fh:
            return fh.read().strip()
    except OSError:
        return ""


def staleness(record: dict, boot: str, dead_runs=(), proc_root: str = "/proc") -> str | None:
    """Why the run that holds `record` can no longer act on this host, None while it may."""
    if record.get("boot") != boot:
        return "it was taken before this host's last boot"
    if record.get("run") in dead_runs:
        return "its ansible-playbook process on the controller is gone"
    anchor = record.get("anchor")
    if anchor and anchor.get("start") is not None and not is_alive(anchor["pid"], anchor["start"], proc_root):
        return f"its {anchor['kind']} on this host (pid {anchor['pid']}) is gone"
    return None


def read_record(path: str) -> dict | None:
    """The record, None when there is none; an unreadable one counts as none (a torn write cannot
    happen: records are renamed into place)."""
    try:
        with open(path, encoding="utf-8") as fh:
            record = json.load(fh)
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) and "run" in record else None


def write_record(path: str, record: dict) -> None:
    tmp = f"{path}.{os.getpid()}.tmp"
    try:
        with open(tmp, "w", encoding="utf-8") as fh:
            json.dump(record, fh, sort_keys=True)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def acquire(path: str, run: dict, wait: float, check: bool = False, dead_runs=(), proc_root: str = "/proc") -> dict:
    """Take the lock for `run` (id, controller, controller_pid, playbook, user), waiting up to `wait`
    seconds for another live run to let it go. Returns {acquired, holder (the other run's record, when
    not acquired), took_over (why a stale holder's lock was taken), waited}. In check mode nothing is
    written: acquired says whether it would be."""
    asked = time.monotonic()
    deadline = asked + wait
    boot = boot_id(proc_root)
    while True:
        guard = exclusive_lock(f"{path}.guard", wait=30)
        try:
            record = read_record(path)
            mine = record is not None and record.get("run") == run["id"]
            why_stale = None if record is None or mine else staleness(record, boot, dead_runs, proc_root)
            if record is None or mine or why_stale:
                if not check:
                    fields = {k: v for k, v in run.items() if k != "id"}
                    write_record(path, {**fields, "run": run["id"], "anchor": find_anchor(proc_root=proc_root),
                                        "boot": boot, "since": record["since"] if mine else time.time()})
                took = dict(record, why=why_stale) if why_stale else None
                return {"acquired": True, "holder": None, "took_over": took, "waited": time.monotonic() - asked}
        finally:
            os.close(guard)
        if check or time.monotonic() >= deadline:
            return {"acquired": False, "holder": record, "took_over": None, "waited": time.monotonic() - asked}
        time.sleep(POLL)


def release(path: str, run_id: str, check: bool = False) -> bool:
    """Let go of the lock when `run_id` holds it; True when it did (or would, in check mode)."""
    guard = exclusive_lock(f"{path}.guard", wait=30)
    try:
        record = read_record(path)
        if record is None or record.get("run") != run_id:
            return False
        if not check:
            os.unlink(path)
        return True
    finally:
        os.close(guard)


def describe(record: dict, now: float | None = None) -> str:
    """The holder, for an admin: what runs, by whom, from where, since when."""
    since = float(record.get("since") or 0)
    age = int((time.time() if now is None else now) - since)
    started = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(since))
    return (f"{record.get('playbook') or 'a playbook'} run by {record.get('user') or '?'}@"
            f"{record.get('controller') or '?'} (ansible-playbook pid {record.get('controller_pid')}), "
            f"since {started} ({age} s)")
