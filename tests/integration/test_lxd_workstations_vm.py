"""A workstation on LXD inside the test VM: a stock Debian 12 kernel WITH AppArmor and a ZFS storage pool,
which the CI host lacks. There, the image's systemd units fail without security.nesting (notes); the module
sets it, so the workstation must reach systemd `running` and get an IPv4 address.

The module runs on the host and reaches the VM's LXD through an SSH tunnel from a local TCP port to the
guest's unix socket (`url: http://127.0.0.1:PORT`), i.e. as a remote LXD: it then leaves /etc/subuid to the
host's own configuration, so the test writes the delegation lines in the guest itself. Everything the test
makes in the guest (file-backed zpool, LXD pool, bridge, profile, image alias, container) carries a unique
suffix and is removed at the end.
"""

from __future__ import annotations

import socket
import subprocess
import time
import uuid

import pytest

from tests.helpers import ROOT, run_module

pytestmark = [pytest.mark.vm, pytest.mark.slow]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def vm_lxd(testvm):
    """LXD in the guest with a ZFS pool, a bridge and a profile of our own, reachable on a local port."""
    sfx = uuid.uuid4().hex[:6]
    pool, bridge, profile, alias = f"wsvm{sfx}", f"wsbr{sfx}", f"ws-{sfx}", f"gpulab/ws-{sfx}"
    img = f"/var/tmp/{pool}.img"
    tarball = subprocess.run(["bash", str(ROOT / "scripts" / "image" / "build.sh")], capture_output=True,
                             text=True, check=True).stdout.strip()  # fmt: skip
    testvm.ssh("systemctl start lxd.socket lxd.service && lxd waitready --timeout=300", timeout=400)
    testvm.ssh(f"truncate -s 3G {img} && zpool create {pool} {img}")
    tunnel = None
    try:
        testvm.ssh(f"lxc storage create {pool} zfs source={pool}/lxd")
        # A fixed /24 from the suffix: LXD's `auto` probes subnets with pings, which times out under TCG.
        subnet = f"10.{200 + int(sfx[:2], 16) % 50}.{int(sfx[2:4], 16)}"
        testvm.ssh(f"lxc network create {bridge} ipv4.address={subnet}.1/24 ipv4.nat=true ipv6.address=none")
        testvm.ssh(
            f"lxc profile create {profile} && lxc profile device add {profile} root disk path=/ pool={pool}"
            f" && lxc profile device add {profile} eth0 nic network={bridge} name=eth0"
        )
        remote = f"/var/tmp/{pool}-image.tar.gz"
        subprocess.run(
            ["scp", "-P", str(testvm.port), "-i", testvm.identity_file, "-o", "BatchMode=yes",
             "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null", "-o", "LogLevel=ERROR",
             tarball, f"root@127.0.0.1:{remote}"],
            check=True, timeout=600,
        )  # fmt: skip
        testvm.ssh(f"lxc image import {remote} --alias {alias} && rm -f {remote}", timeout=900)
        port = free_port()
        tunnel = subprocess.Popen(
            ["ssh", "-N", "-p", str(testvm.port), "-i", testvm.identity_file, "-o", "BatchMode=yes",
             "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null", "-o", "LogLevel=ERROR",
             "-o", "ExitOnForwardFailure=yes", "-L", f"127.0.0.1:{port}:/var/lib/lxd/unix.socket",
             "root@127.0.0.1"],
        )  # fmt: skip
        deadline = time.monotonic() + 30
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if time.monotonic() > deadline or tunnel.poll() is not None:
                    raise
                time.sleep(0.2)
        yield {"url": f"http://127.0.0.1:{port}", "profile": profile, "alias": alias, "sfx": sfx, "pool": pool}
    finally:
        if tunnel is not None:
            tunnel.terminate()
            tunnel.wait(timeout=10)
        for cmd in (
            f"for i in $(lxc list -f csv -c n | grep -- '-{sfx}'); do lxc delete -f $i; done",
            f"lxc image delete {alias}",
            f"lxc profile delete {profile}",
            f"lxc network delete {bridge}",
            f"lxc storage delete {pool}",
            f"zpool destroy {pool}",
            f"rm -f {img}",
        ):
            testvm.ssh(cmd, check=False, timeout=300)


def test_workstation_boots_with_apparmor_and_zfs(testvm, vm_lxd, ssh_keypair):
    assert testvm.ssh("cat /sys/module/apparmor/parameters/enabled").stdout.strip() == "Y"
    name = f"ws-vm-{vm_lxd['sfx']}"
    uid = 20061
    testvm.ssh(f"for f in /etc/subuid /etc/subgid; do grep -qx 'root:{uid}:1' $f || echo 'root:{uid}:1' >> $f; done")
    pub = ssh_keypair[1]
    args = {
        "url": vm_lxd["url"],
        "image": vm_lxd["alias"],
        "profiles": [vm_lxd["profile"]],
        # Under TCG, and with other test VMs sharing the 2 cores, the first create (unpacking the
        # image into a ZFS dataset) alone took more than 10 min in one run.
        "ipv4_timeout": 900,
        "operation_timeout": 2400,
        "workstations": [{"name": name, "user": {"name": "alice", "uid": uid, "ssh_keys": [pub]}}],
    }
    r = run_module("lxd_workstations", args, timeout=3600)
    assert r["failed"] is False, r.get("msg")
    (ws,) = r["workstations"]
    assert ws["state"] == "started" and ws["ipv4"], ws
    assert testvm.ssh(f"lxc config get {name} security.nesting").stdout.strip() == "true"
    # The container lives on the ZFS pool (a clone of the image dataset).
    assert testvm.ssh(f"zfs list -H -o name {vm_lxd['pool']}/lxd/containers/{name}", check=False).returncode == 0
    state = testvm.ssh(f"lxc exec {name} -- timeout 300 systemctl is-system-running --wait", check=False, timeout=400)
    failed = testvm.ssh(f"lxc exec {name} -- systemctl --failed --no-legend --plain", check=False).stdout
    assert state.stdout.strip() == "running", f"systemd is {state.stdout.strip()!r}; failed units:\n{failed}"
    assert testvm.ssh(f"lxc exec {name} -- id -u alice").stdout.strip() == str(uid)
    again = run_module("lxd_workstations", args, timeout=3600)
    assert again["failed"] is False and again["changed"] is False, again.get("msg")
