"""GPU parsers and request resolution on recorded real outputs (tests/data/gpu/README.md names the sources)."""

import os
import stat
from pathlib import Path

import pytest

from ansible_collections.gpulab.fleet.plugins.module_utils import gpu
from ansible_collections.gpulab.fleet.plugins.module_utils.gpu import GpuError

H100 = "NVIDIA H100 80GB HBM3"
DATA = Path(__file__).resolve().parent.parent / "data" / "gpu"


def read(name: str) -> str:
    return (DATA / name).read_text()


# ---- nvidia-smi ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("sample", "name", "pci", "mem", "driver", "mig"),
    [
        ("query-gpu_h100-80gb-hbm3_mig-enabled.csv", H100, "0000:00:09.0", 81559, "590.48.01", "Enabled"),
        ("query-gpu_h100-80gb-hbm3_mig-disabled.csv", H100, "0000:00:09.0", 81559, "590.48.01", "Disabled"),
        ("query-gpu_rtx-4080-super.csv", "NVIDIA GeForce RTX 4080 SUPER", "0000:01:00.0", 16376, "595.71.05", None),
    ],
)
def test_query_gpu_with_header_and_units(sample, name, pci, mem, driver, mig):
    (g,) = gpu.gpus_from_query(gpu.parse_query_gpu(read(sample)))
    assert g["index"] == 0
    assert g["uuid"] == "GPU-00000000-0000-0000-0000-000000000000"
    assert (g["name"], g["pci_bus_id"], g["memory_total_mib"], g["driver_version"], g["mig_mode"]) == (
        name,
        pci,
        mem,
        driver,
        mig,
    )
    assert g["minor"] is None and g["device"] is None


def test_query_gpu_module_form_noheader_nounits():
    # SYNTHESIZED: the H100 capture's values rewritten in the module's own form (fixed field order,
    # noheader, nounits as in the RTX 2080 line), with index 3 and bus 3B to exercise the normalization.
    text = "3, GPU-00000000-0000-0000-0000-000000000000, 00000000:3B:00.0, " + H100 + ", 81559, 590.48.01, N/A\n"
    (row,) = gpu.parse_query_gpu(text, gpu.QUERY_FIELDS)
    assert row["index"] == "3" and row["memory.total"] == "81559" and row["mig.mode.current"] is None
    (g,) = gpu.gpus_from_query([row])
    assert g["pci_bus_id"] == "0000:3b:00.0"


def test_query_gpu_real_noheader_nounits_line():
    fields = (
        "power.limit,power.min_limit,power.max_limit,memory.total,vbios_version,driver_version,name,gpu_uuid,"
        "power.draw,temperature.gpu,temperature.memory,clocks.current.graphics,clocks.sm,clocks.mem,"
        "utilization.gpu,utilization.memory,fan.speed,pcie.link.width.current,pstate"
    ).split(",")
    (row,) = gpu.parse_query_gpu(read("query-gpu_rtx-2080_noheader-nounits.csv"), fields)
    assert row["name"] == "GeForce RTX 2080"
    assert row["gpu_uuid"] == "GPU-22b2c6ac-2d49-4863-197c-9c469071178a"
    assert row["memory.total"] == "7979"
    assert row["temperature.memory"] is None  # "N/A"


def test_query_gpu_several_gpus():
    rows = gpu.parse_query_gpu(read("query-gpu_5x-geforce_name-pcibus-index-uuid.csv"))
    assert [r["index"] for r in rows] == ["0", "1", "2", "3", "4"]
    assert rows[1]["name"] == "GeForce GTX 1080 Ti"
    assert rows[4]["pci.bus"] == "0x0A"


def test_query_gpu_empty_and_malformed():
    assert gpu.parse_query_gpu("", gpu.QUERY_FIELDS) == []
    with pytest.raises(ValueError, match="7 fields"):
        gpu.parse_query_gpu("0, GPU-x, 00000000:01:00.0\n", gpu.QUERY_FIELDS)


@pytest.mark.parametrize(
    ("raw", "norm"),
    [
        ("00000000:3B:00.0", "0000:3b:00.0"),
        ("0000:3b:00.0", "0000:3b:00.0"),
        ("3b:00.0", "0000:3b:00.0"),
        ("00000001:01:00.1", "0001:01:00.1"),
    ],
)
def test_normalize_pci(raw, norm):
    assert gpu.normalize_pci(raw) == norm


def test_normalize_pci_rejects_garbage():
    with pytest.raises(ValueError):
        gpu.normalize_pci("3b:00")


# ---- procfs ---------------------------------------------------------------------------------------


def test_information_h100_minor_differs_from_index():
    info = gpu.parse_information(read("information_h100-80gb-hbm3.txt"))
    assert info == {
        "model": "NVIDIA H100 80GB HBM3",
        "uuid": "GPU-9221d5d1-b60b-a624-bf14-0a1819cfda3b",
        "bus_location": "0000:62:00.0",
        "minor": 5,
        "excluded": False,
    }


def test_information_tab_layout():
    info = gpu.parse_information(read("information_a10g.txt"))
    assert (info["model"], info["bus_location"], info["minor"]) == ("NVIDIA A10G", "0000:00:1e.0", 3)


def test_information_old_driver_without_minor():
    info = gpu.parse_information(read("information_geforce-gtx-650.txt"))
    assert info["minor"] is None and info["bus_location"] == "0000:04:00.0"


def test_proc_devices():
    majors = gpu.parse_proc_devices(read("proc-devices_nvidia.txt"))
    assert majors["nvidia-frontend"] == 195 and majors["nvidia-uvm"] == 234 and majors["nvidia-caps"] == 506
    assert "blkext" not in majors  # block section ignored
    assert not {k for k in gpu.parse_proc_devices(read("proc-devices_no-gpu_this-ci-host.txt")) if "nvidia" in k}


def test_merge_minor_by_pci_not_index():
    (g,) = gpu.gpus_from_query(gpu.parse_query_gpu(read("query-gpu_h100-80gb-hbm3_mig-disabled.csv")))
    # Same GPU as seen by procfs, at the nvidia-smi bus address (the H100 information file's values otherwise).
    info = dict(gpu.parse_information(read("information_h100-80gb-hbm3.txt")), bus_location="0000:00:09.0")
    gpu.merge_minors([g], [info])
    assert g["minor"] == 5


# Two real information files (from two different machines) combined as one host's procfs tree.
def two_gpu_host():
    infos = [gpu.parse_information(read(n)) for n in ("information_h100-80gb-hbm3.txt", "information_a10g.txt")]
    return gpu.gpus_from_information(infos)


def test_procfs_only_indexes_in_pci_order():
    gpus = two_gpu_host()
    assert [(g["index"], g["pci_bus_id"], g["minor"]) for g in gpus] == [(0, "0000:00:1e.0", 3), (1, "0000:62:00.0", 5)]


# ---- resolution -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("request_", "indices"),
    [
        ("all", [0, 1]),
        ("none", []),
        (None, []),
        ([], []),
        ([1], [1]),
        (["0"], [0]),
        (["GPU-9221D5D1-B60B-A624-BF14-0A1819CFDA3B"], [1]),
        (["62:00.0"], [1]),
        (["00000000:00:1E.0", 0, 1], [0, 1]),
    ],
)
def test_resolve(request_, indices):
    assert [g["index"] for g in gpu.resolve_request(request_, two_gpu_host(), "alice")] == indices


@pytest.mark.parametrize(
    ("request_", "message"),
    [
        ([7], "workstation alice: gpus: no GPU matches 7"),
        (["GPU-00000000-0000-0000-0000-000000000000"], "no GPU matches 'GPU-0000"),
        (["0000:99:00.0"], "no GPU matches '0000:99:00.0'"),
        (["fast-one"], "no GPU matches 'fast-one'"),
        ({"index": 0}, "expected 'all', 'none' or a list"),
    ],
)
def test_resolve_errors(request_, message):
    with pytest.raises(GpuError, match=message):
        gpu.resolve_request(request_, two_gpu_host(), "alice")


@pytest.mark.parametrize("request_", ["all", [0]])
def test_resolve_on_host_without_gpus(request_):
    with pytest.raises(GpuError, match=r"workstation bob: gpus: .* this host has no NVIDIA GPU"):
        gpu.resolve_request(request_, [], "bob")


# ---- gather (files under a test root; no nvidia-smi on this machine) -------------------------------


def test_gather_no_gpu(tmp_path):
    facts = gpu.gather(nvidia_smi=str(tmp_path / "nvidia-smi"), proc_root=str(tmp_path), dev_root=str(tmp_path))
    assert facts["gpus"] == [] and facts["control_devices"] == [] and facts["source"] == "none"


@pytest.mark.skipif(os.geteuid() != 0, reason="mknod needs root")
def test_gather_procfs_and_nodes(tmp_path):
    proc = tmp_path / "proc"
    dev = tmp_path / "dev"
    for name, bus in (("information_h100-80gb-hbm3.txt", "0000:62:00.0"), ("information_a10g.txt", "0000:00:1e.0")):
        d = proc / "driver" / "nvidia" / "gpus" / bus
        d.mkdir(parents=True)
        (d / "information").write_text(read(name))
    (proc / "devices").write_text(read("proc-devices_nvidia.txt"))
    dev.mkdir()
    os.mknod(dev / "nvidia3", stat.S_IFCHR | 0o666, os.makedev(195, 3))
    os.mknod(dev / "nvidiactl", stat.S_IFCHR | 0o666, os.makedev(195, 255))
    os.mknod(dev / "nvidia-uvm", stat.S_IFCHR | 0o666, os.makedev(234, 0))
    facts = gpu.gather(nvidia_smi=str(tmp_path / "absent"), proc_root=str(proc), dev_root=str(dev))
    assert facts["source"] == "procfs"
    a10g, h100 = facts["gpus"]
    assert a10g["device"] == {"path": str(dev / "nvidia3"), "major": 195, "minor": 3}
    assert h100["minor"] == 5 and h100["device"] is None  # no /dev/nvidia5 made
    assert [d["path"].rsplit("/", 1)[1] for d in facts["control_devices"]] == ["nvidiactl", "nvidia-uvm"]
    assert facts["majors"] == {"nvidia-frontend": 195, "nvidia-uvm": 234, "nvidia-caps": 506}
