"""gpulab.fleet.gpu_facts on this machine (no NVIDIA GPU) and on prepared procfs/dev trees.

The procfs information files are real recorded ones (tests/data/gpu/README.md); the device nodes are made
with mknod in a per-test directory. No nvidia-smi output is faked: where nvidia-smi is involved, the test
uses a stand-in that fails the way nvidia-smi does without a loaded driver, to check the fallback.
"""

from __future__ import annotations

import os
import shutil
import stat

from tests.helpers import ROOT, run_module, run_task

DATA = ROOT / "tests" / "data" / "gpu"


def test_host_without_gpu_gives_empty_list():
    r = run_module("gpu_facts", {})
    assert r["failed"] is False and r["changed"] is False
    assert r["gpus"] == [] and r["source"] == "none"
    assert r["ansible_facts"] == {"gpulab_gpus": [], "gpulab_gpu_control_devices": []}


def prepared_host(tmp_path):
    proc, dev = tmp_path / "proc", tmp_path / "dev"
    for sample, bus in (("information_h100-80gb-hbm3.txt", "0000:62:00.0"), ("information_a10g.txt", "0000:00:1e.0")):
        d = proc / "driver" / "nvidia" / "gpus" / bus
        d.mkdir(parents=True)
        shutil.copy(DATA / sample, d / "information")
    shutil.copy(DATA / "proc-devices_nvidia.txt", proc / "devices")
    dev.mkdir()
    for node, major, minor in (
        ("nvidia3", 195, 3),
        ("nvidia5", 195, 5),
        ("nvidiactl", 195, 255),
        ("nvidia-uvm", 234, 0),
    ):
        os.mknod(dev / node, stat.S_IFCHR | 0o666, os.makedev(major, minor))
    return proc, dev


def test_procfs_and_device_nodes(tmp_path):
    proc, dev = prepared_host(tmp_path)
    # dev_root: the option's old name, kept as an alias
    r = run_module("gpu_facts", {"proc_root": str(proc), "dev_root": str(dev), "nvidia_smi": str(tmp_path / "none")})
    assert r["failed"] is False and r["source"] == "procfs"
    assert [(g["index"], g["pci_bus_id"], g["minor"], g["name"]) for g in r["gpus"]] == [
        (0, "0000:00:1e.0", 3, "NVIDIA A10G"),
        (1, "0000:62:00.0", 5, "NVIDIA H100 80GB HBM3"),
    ]
    assert r["gpus"][1]["device"] == {"path": str(dev / "nvidia5"), "major": 195, "minor": 5}
    assert r["gpus"][1]["uuid"] == "GPU-9221d5d1-b60b-a624-bf14-0a1819cfda3b"
    assert [d["path"] for d in r["control_devices"]] == [str(dev / "nvidiactl"), str(dev / "nvidia-uvm")]
    assert r["ansible_facts"]["gpulab_gpus"] == r["gpus"]


def test_failing_nvidia_smi_falls_back_to_procfs_with_a_warning(tmp_path):
    proc, dev = prepared_host(tmp_path)
    smi = tmp_path / "nvidia-smi"
    # The message and exit code nvidia-smi gives when the kernel driver is not loaded (rc 9, see nvidia-smi(1)).
    message = "NVIDIA-SMI has failed because it could not communicate with the NVIDIA driver."
    smi.write_text(f"#!/bin/sh\necho '{message}'\nexit 9\n")
    smi.chmod(0o755)
    r = run_module("gpu_facts", {"proc_root": str(proc), "gpu_device_root": str(dev), "nvidia_smi": str(smi)})
    assert r["failed"] is False and r["source"] == "procfs" and len(r["gpus"]) == 2
    # ansible-core 2.19 serializes warnings as WarningSummary objects; older ones as strings.
    assert "failed (rc=9): " + message in str(r.get("warnings"))


def test_sets_facts_through_ansible(tmp_path):
    proc, dev = prepared_host(tmp_path)
    task = {
        "gpulab.fleet.gpu_facts": {"proc_root": str(proc), "gpu_device_root": str(dev),
                                   "nvidia_smi": str(tmp_path / "none")}
    }
    res = run_task(task, check=True)
    assert res.get("failed") is not True, res
    assert [g["minor"] for g in res["ansible_facts"]["gpulab_gpus"]] == [3, 5]
