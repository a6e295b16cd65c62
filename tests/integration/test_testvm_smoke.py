"""The test VM is a usable Debian 12 server: systemd, OpenZFS 2.1 (userland + kernel module), pools
on its extra disks, the kernel NFS server, and Ansible over the generated inventory."""

from __future__ import annotations

import re
import uuid

import pytest

from tests.helpers import run_task

pytestmark = [pytest.mark.vm, pytest.mark.slow]


def test_systemd_is_running(testvm):
    state = testvm.ssh("systemctl is-system-running", check=False).stdout.strip()
    failed = testvm.ssh("systemctl --failed --no-legend --plain", check=False).stdout
    assert state == "running", f"systemd is {state!r}; failed units:\n{failed}"


def test_zfs_userland_and_kernel_module_are_2_1(testvm):
    out = testvm.ssh("zfs version").stdout
    assert re.search(r"^zfs-2\.1\.\d+", out, re.M), out
    assert re.search(r"^zfs-kmod-2\.1\.\d+", out, re.M), out
    # loaded at boot (modules-load.d), not by the zfs command above
    assert testvm.ssh("cat /sys/module/zfs/version").stdout.startswith("2.1.")


def test_raidz_pool_on_the_extra_disks(testvm):
    assert len(testvm.disks) == 3
    pool = f"smoke{uuid.uuid4().hex[:6]}"
    testvm.ssh(["zpool", "create", "-f", pool, "raidz", *testvm.disks])
    try:
        status = testvm.ssh(["zpool", "status", "-P", pool]).stdout
        assert "raidz1-0" in status
        for disk in testvm.disks:
            # zpool records the by-id path it was given (what pool idempotence tests rely on)
            assert disk in status, status
        assert testvm.ssh(["zpool", "list", "-H", "-o", "health", pool]).stdout.strip() == "ONLINE"
    finally:
        testvm.ssh(["zpool", "destroy", pool], check=False)
    assert pool not in testvm.ssh("zpool list -H -o name", check=False).stdout


def test_nfs_kernel_server_is_active(testvm):
    assert testvm.ssh("systemctl is-active nfs-server", check=False).stdout.strip() == "active"
    assert "nfsd" in testvm.ssh("cat /proc/filesystems").stdout


def test_ansible_reaches_the_vm_through_the_inventory(testvm):
    result = run_task({"ansible.builtin.ping": {}}, hosts="all", inventory=testvm.inventory)
    assert result.get("ping") == "pong", result
    facts = run_task({"ansible.builtin.command": "cat /etc/debian_version"}, hosts="all", inventory=testvm.inventory)
    assert facts["stdout"].startswith("12."), facts
