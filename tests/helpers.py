"""Run the collection's modules for real, the way Ansible would, and return their JSON result.

Two ways:
- run_module(): executes the module file directly with an ANSIBLE_MODULE_ARGS file (what Ansible's
  module runner does on the target), optionally inside a network namespace or via any command
  prefix. Fast (~0.3 s), no playbook overhead. TestVM.run_module does the same in the test VM.
- run_task(): one task through ansible-playbook (local or against an inventory such as the test VM),
  for what only the executor does: action plugins, connection plugins, check/diff flags, become.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import struct
import subprocess
import sys
import tempfile
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
COLLECTIONS = ROOT / ".build" / "collections"
VENV_BIN = Path(sys.executable).parent
# The playbooks the collection ships (demo_local.yml is the checkout's own), by their collection names.
PLAYBOOKS = ["site", "users", "preflight", "user_op", "run_lock", "run_unlock", "leavers", "snapshot", "restore",
             "rebuild", "move", "build_image"]


def public_key(seed: int | str, comment: str = "x@lab") -> str:
    """A structurally valid ssh-ed25519 public key line, different per seed: an int 0-255 repeats that
    byte, a string is hashed. Fine for parsers, LDAP and authorized_keys; no private key exists."""
    raw = bytes([seed]) * 32 if isinstance(seed, int) else hashlib.sha256(seed.encode()).digest()
    blob = struct.pack(">I", 11) + b"ssh-ed25519" + struct.pack(">I", 32) + raw
    return f"ssh-ed25519 {base64.b64encode(blob).decode()} {comment}"


def ansible_env(extra: dict | None = None) -> dict:
    env = dict(os.environ)
    env["ANSIBLE_COLLECTIONS_PATH"] = str(COLLECTIONS)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(COLLECTIONS), env.get("PYTHONPATH")]))
    env["PATH"] = os.pathsep.join([str(VENV_BIN), env.get("PATH", "")])
    env.setdefault("ANSIBLE_NOCOLOR", "1")
    env.setdefault("ANSIBLE_HOST_KEY_CHECKING", "False")
    env.setdefault("ANSIBLE_RETRY_FILES_ENABLED", "False")
    env.setdefault("ANSIBLE_LOCALHOST_WARNING", "False")
    env.setdefault("ANSIBLE_INVENTORY_UNPARSED_WARNING", "False")
    if extra:
        env.update(extra)
    return env


def module_args(args: dict, *, check: bool, diff: bool) -> dict:
    """The ANSIBLE_MODULE_ARGS document a module reads, with the executor's check and diff flags."""
    return {"ANSIBLE_MODULE_ARGS": dict(args, _ansible_check_mode=check, _ansible_diff=diff)}


def module_result(name: str, rc: int, stdout: str, stderr: str) -> dict:
    """A module's JSON result with 'rc' of its process (and changed/failed always present)."""
    try:
        result = json.loads(stdout)
    except json.JSONDecodeError as exc:
        raise AssertionError(f"module {name} printed no JSON (rc={rc})\nstdout:\n{stdout}\nstderr:\n{stderr}") from exc
    result["rc"] = rc
    result.setdefault("changed", False)
    result.setdefault("failed", False)
    return result


def run_module(
    name: str,
    args: dict,
    *,
    check: bool = False,
    diff: bool = True,
    prefix: list[str] | None = None,
    timeout: float = 600,
) -> dict:
    """Run gpulab.fleet.<name> with args; returns the parsed result (with 'rc' of the process).

    prefix: a command to run the module under, e.g. ["ip", "netns", "exec", "ns1"].
    A failed module returns its result with failed=True (it does not raise).
    (In the test VM: TestVM.run_module, tests/fixtures/testvm.py.)
    """
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as fh:
        json.dump(module_args(args, check=check, diff=diff), fh)
        args_file = fh.name
    try:
        cmd = [
            *(prefix or []),
            sys.executable,
            "-m",
            f"ansible_collections.gpulab.fleet.plugins.modules.{name}",
            args_file,
        ]
        proc = subprocess.run(cmd, capture_output=True, text=True, env=ansible_env(), timeout=timeout, check=False)
    finally:
        os.unlink(args_file)
    return module_result(name, proc.returncode, proc.stdout, proc.stderr)


def _playbook_json(cmd: list[str], timeout: float) -> tuple[int, dict]:
    """Run an ansible-playbook command with the json callback; returns (rc, parsed output)."""
    env = ansible_env({"ANSIBLE_STDOUT_CALLBACK": "ansible.builtin.json", "ANSIBLE_CALLBACK_RESULT_FORMAT": "json"})
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=timeout, check=False)
    try:
        return proc.returncode, json.loads(proc.stdout)
    except json.JSONDecodeError as exc:
        raise AssertionError(
            f"ansible-playbook output is not JSON (rc={proc.returncode})\n{proc.stdout}\n{proc.stderr}"
        ) from exc


def run_task(
    task: dict,
    *,
    hosts: str = "localhost",
    inventory: str | Path | None = None,
    check: bool = False,
    diff: bool = True,
    extra_vars: dict | None = None,
    timeout: float = 1200,
) -> dict:
    """Run one task through ansible-playbook; returns that task's result for the first host.

    The result dict is the json callback's host result (changed, failed, msg, diff, ...).
    """
    play = [{"hosts": hosts, "gather_facts": False, "tasks": [task]}]
    with tempfile.TemporaryDirectory() as tmp:
        pb = Path(tmp) / "play.yml"
        pb.write_text(yaml.safe_dump(play))
        cmd = [str(VENV_BIN / "ansible-playbook"), str(pb)]
        if inventory is None:
            cmd += ["-i", "localhost,", "-c", "local", "-e", f"ansible_python_interpreter={sys.executable}"]
        else:
            cmd += ["-i", str(inventory)]
        if check:
            cmd.append("--check")
        if diff:
            cmd.append("--diff")
        if extra_vars:
            cmd += ["-e", json.dumps(extra_vars)]
        out = _playbook_json(cmd, timeout)[1]
    results = out["plays"][0]["tasks"][0]["hosts"]
    return next(iter(results.values()))


def run_playbook(
    playbook: str | Path,
    inventory: str | Path,
    *,
    extra_vars: dict | None = None,
    check: bool = False,
    prefix: list[str] | None = None,
    timeout: float = 1800,
) -> dict:
    """Run a whole playbook; returns playbook_summary's dict.

    prefix: a command to run ansible-playbook under, e.g. ["ip", "netns", "exec", "ns1"] so that the
    iptables rules a role writes land in a test namespace.
    """
    rc, out = _playbook_json(playbook_cmd(playbook, inventory, extra_vars, check, prefix), timeout)
    return playbook_summary(rc, out)


def playbook_cmd(playbook, inventory, extra_vars=None, check=False, prefix=None) -> list[str]:
    cmd = [*(prefix or []), str(VENV_BIN / "ansible-playbook"), str(playbook), "-i", str(inventory), "--diff"]
    if check:
        cmd.append("--check")
    if extra_vars:
        cmd += ["-e", json.dumps(extra_vars)]
    return cmd


def start_playbook(playbook, inventory, *, extra_vars=None, prefix=None) -> subprocess.Popen:
    """A playbook run in the background, in a session of its own (so a test can SIGKILL it whole, as a
    crashed controller); finish_playbook reads its result."""
    env = ansible_env({"ANSIBLE_STDOUT_CALLBACK": "ansible.builtin.json", "ANSIBLE_CALLBACK_RESULT_FORMAT": "json"})
    return subprocess.Popen(playbook_cmd(playbook, inventory, extra_vars, prefix=prefix), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env, start_new_session=True)  # fmt: skip


def finish_playbook(proc: subprocess.Popen, timeout: float = 1800) -> dict:
    stdout, stderr = proc.communicate(timeout=timeout)
    try:
        return playbook_summary(proc.returncode, json.loads(stdout))
    except json.JSONDecodeError as exc:
        raise AssertionError(f"ansible-playbook output is not JSON (rc={proc.returncode})\n{stdout}\n{stderr}") from exc


def playbook_summary(rc: int, out: dict) -> dict:
    """{rc, stats (per host), changed / failed: [{host, task, msg}], warnings, out} of a json-callback run."""
    changed, failed, warnings = [], [], []
    for play in out.get("plays", []):
        for task in play["tasks"]:
            for host, res in task["hosts"].items():
                entry = {"host": host, "task": task["task"]["name"], "msg": res.get("msg") or res.get("stderr") or ""}
                if res.get("failed") or any(item.get("failed") for item in res.get("results", [])):
                    failed.append(entry)
                elif res.get("changed"):
                    changed.append(entry)
                warnings += [f"{host}: {w}" for w in res.get("warnings") or []]
    return {"rc": rc, "stats": out.get("stats", {}), "changed": changed, "failed": failed, "warnings": warnings,
            "out": out}
