"""site.yml with inventories/demo, converged for real on a test VM of its own.

Opt-in (GPULAB_VM_SITE=1): the whole lab on one emulated VM takes many minutes under TCG, and the
shared `testvm` fixture cannot be used because the play creates the zpool `tank` on the VM's disks.
The test boots its own instance (scripts/testvm/up.sh), converges twice (the second run must change
nothing), checks from inside the VM that alice's port opens her container with her key and shows her
uid, that bob's key does not open alice's port, and that alice's container cannot reach bob's, then
stops the VM.
"""

from __future__ import annotations

import json
import os
import subprocess
import uuid
from pathlib import Path

import pytest

from tests.helpers import ROOT, VENV_BIN, ansible_env

pytestmark = [
    pytest.mark.vm,
    pytest.mark.slow,
    pytest.mark.skipif(os.environ.get("GPULAB_VM_SITE") != "1", reason="opt-in: GPULAB_VM_SITE=1 (own VM, long)"),
]
TESTVM = ROOT / "scripts" / "testvm"


def converge(env: dict, extra: dict) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(VENV_BIN / "ansible-playbook"), "-i", str(ROOT / "inventories" / "demo"),
         str(ROOT / "playbooks" / "site.yml"), "-e", json.dumps(extra)],
        capture_output=True, text=True, env=env, timeout=5400, check=False,
    )  # fmt: skip


def recap(stdout: str) -> dict:
    """The PLAY RECAP counters of host testvm."""
    line = next(ln for ln in stdout.splitlines() if ln.startswith("testvm") and "ok=" in ln)
    return {k: int(v) for k, v in (part.split("=") for part in line.split()[2:])}


@pytest.fixture
def demo_vm(tmp_path):
    name = f"site-{uuid.uuid4().hex[:6]}"
    up = subprocess.run([str(TESTVM / "up.sh"), name, "--disks", "3", "--disk-size", "2G", "--memory", "3072"],
                        capture_output=True, text=True, check=False)  # fmt: skip
    try:
        assert up.returncode == 0, up.stdout + up.stderr
        inst = json.loads(Path(f"/var/cache/gpulab-fleet/run/{name}/instance.json").read_text())
        yield name, inst
    finally:
        subprocess.run([str(TESTVM / "down.sh"), name], capture_output=True, text=True, check=False)


def test_site_converges_on_the_demo_vm(demo_vm, tmp_path):
    name, inst = demo_vm
    keys = tmp_path / "keys"
    keys.mkdir()
    for user in ("alice", "bob"):
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", f"{user}@test", "-f",
                        str(keys / f"{user}_ed25519")], check=True)  # fmt: skip
    tarball = subprocess.run(["bash", str(ROOT / "scripts" / "image" / "build.sh")], capture_output=True,
                             text=True, check=True).stdout.strip()  # fmt: skip
    env = ansible_env({"GPULAB_DEMO_VM": name, "GPULAB_DEMO_KEYS": str(keys), "GPULAB_IMAGE_TARBALL": tarball})
    extra = {"workstations_ssh_config_dir": str(tmp_path / "ssh")}

    first = converge(env, extra)
    assert first.returncode == 0, first.stdout[-20000:] + first.stderr[-5000:]
    second = converge(env, extra)
    assert second.returncode == 0, second.stdout[-20000:] + second.stderr[-5000:]
    assert recap(second.stdout)["changed"] == 0, second.stdout[-20000:]
    assert "Port 20010" in (tmp_path / "ssh" / "alice.conf").read_text()

    def vm(cmd: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            ["ssh", "-p", str(inst["port"]), "-i", inst["identity_file"], "-o", "BatchMode=yes",
             "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null", "-o", "LogLevel=ERROR",
             "root@127.0.0.1", cmd],
            capture_output=True, text=True, timeout=300, check=False,
        )  # fmt: skip

    for user in ("alice", "bob"):
        copy = subprocess.run(
            ["scp", "-P", str(inst["port"]), "-i", inst["identity_file"], "-o", "StrictHostKeyChecking=no",
             "-o", "UserKnownHostsFile=/dev/null", "-o", "LogLevel=ERROR", str(keys / f"{user}_ed25519"),
             f"root@127.0.0.1:/root/{user}_key"],
            capture_output=True, text=True, check=False,
        )  # fmt: skip
        assert copy.returncode == 0, copy.stderr
    # the VM's own address is LOCAL, so port_map's OUTPUT DNAT applies to a client on the VM itself
    ssh_opts = "-o BatchMode=yes -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null -o ConnectTimeout=30"
    addr = vm("ip -4 -o addr show eth0 | awk '{print $4}' | cut -d/ -f1").stdout.strip()
    alice = vm(f"ssh {ssh_opts} -i /root/alice_key -p 20010 alice@{addr} 'id -u; sudo -n id -u; df --output=target ~'")
    assert alice.returncode == 0, alice.stderr
    assert alice.stdout.split()[:2] == ["10001", "0"]
    wrong = vm(f"ssh {ssh_opts} -i /root/bob_key -p 20010 alice@{addr} true")
    assert wrong.returncode != 0
    bob_ip = vm("lxc list bob -c 4 --format csv | cut -d' ' -f1").stdout.strip()
    # bob's sshd listens on 22; from alice's container the bridge must not carry the connection
    isolated = vm(f"lxc exec alice -- timeout 10 bash -c 'exec 3<>/dev/tcp/{bob_ip}/22'")
    assert bob_ip and isolated.returncode != 0, isolated.stdout
