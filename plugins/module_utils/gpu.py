# Copyright: (c) 2026, GPU Lab Fleet maintainers
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""NVIDIA GPU facts: pure parsers for nvidia-smi / procfs output, request resolution, and gathering.

The parsers take text and return plain dicts so they are unit-tested on recorded real outputs
(tests/data/gpu/). gather() is the only function touching the host (a command and a few files),
with every path configurable so tests can point it at a prepared directory.

A GPU fact:
    {index, uuid, pci_bus_id ("0000:3b:00.0", LXD's form), name, memory_total_mib, driver_version,
     mig_mode ("Enabled" | "Disabled" | None when not supported), minor (device minor or None),
     device ({path, major, minor} of /dev/nvidiaN when present, else None)}
"""

from __future__ import annotations

import csv
import glob
import os
import re
import shutil
import stat
import subprocess

# Fields the module asks nvidia-smi for, in this order (--format=csv,noheader,nounits).
QUERY_FIELDS = ("index", "uuid", "pci.bus_id", "name", "memory.total", "driver_version", "mig.mode.current")

# Driver-wide nodes a container needs besides /dev/nvidiaN (present or not depending on modules loaded).
CONTROL_NODES = ("nvidiactl", "nvidia-uvm", "nvidia-uvm-tools", "nvidia-modeset")

# nvidia-smi prints these (bracketed or not) when a value does not apply to the GPU.
_NOT_AVAILABLE = {
    "",
    "n/a",
    "[n/a]",
    "not supported",
    "[not supported]",
    "[requested functionality has been deprecated]",
}
_UNIT_SUFFIX = re.compile(r"^(-?\d+(?:\.\d+)?)\s*(MiB|W|MHz|%|us|ms|C)$")
_HEADER_UNIT = re.compile(r"\s*\[[^\]]*\]$")
_PCI_RE = re.compile(r"^(?:([0-9a-fA-F]{1,8}):)?([0-9a-fA-F]{1,2}):([0-9a-fA-F]{1,2})\.([0-7])$")
_UUID_RE = re.compile(r"^GPU-[0-9a-fA-F-]{36}$")


class GpuError(ValueError):
    """A GPU request that cannot be satisfied; the message names the item and the value."""


def _value(raw: str) -> str | None:
    raw = raw.strip()
    if raw.lower() in _NOT_AVAILABLE:
        return None
    m = _UNIT_SUFFIX.match(raw)
    return m.group(1) if m else raw


def parse_query_gpu(text: str, fields: tuple[str, ...] | list[str] | None = None) -> list[dict]:
    """Rows of `nvidia-smi --query-gpu=... --format=csv[,noheader][,nounits]` as dicts field -> str|None.

    With `fields` the output has no header (noheader); without, the first line is the header
    (`memory.total [MiB]` is read as `memory.total`). Units ("81559 MiB") and N/A forms are stripped.
    """
    lines = [line for line in text.splitlines() if line.strip()]
    if not lines:
        return []
    rows = list(csv.reader(lines, skipinitialspace=True))
    if fields is None:
        fields = [_HEADER_UNIT.sub("", h.strip()) for h in rows[0]]
        rows = rows[1:]
    out = []
    for n, row in enumerate(rows, 1):
        if len(row) != len(fields):
            got = ",".join(row)[:120]
            raise ValueError(f"nvidia-smi line {n}: {len(row)} values for {len(fields)} fields: {got!r}")
        out.append({f: _value(v) for f, v in zip(fields, row, strict=True)})
    return out


def normalize_pci(address: str) -> str:
    """'00000000:3B:00.0', '0000:3b:00.0' or '3b:00.0' -> '0000:3b:00.0' (what LXD and procfs use)."""
    m = _PCI_RE.match(address.strip())
    if not m:
        raise ValueError(f"{address!r} is not a PCI address (domain:bus:device.function)")
    domain = int(m.group(1) or "0", 16)
    return f"{domain:04x}:{int(m.group(2), 16):02x}:{int(m.group(3), 16):02x}.{m.group(4)}"


def is_pci_address(value: str) -> bool:
    return bool(_PCI_RE.match(value.strip()))


def gpus_from_query(rows: list[dict]) -> list[dict]:
    """GPU facts from parse_query_gpu() rows of QUERY_FIELDS (minor/device filled in later)."""
    gpus = []
    for row in rows:
        mem = row.get("memory.total")
        gpus.append(
            {
                "index": int(row["index"]),
                "uuid": row.get("uuid"),
                "pci_bus_id": normalize_pci(row["pci.bus_id"]) if row.get("pci.bus_id") else None,
                "name": row.get("name"),
                "memory_total_mib": int(float(mem)) if mem is not None else None,
                "driver_version": row.get("driver_version"),
                "mig_mode": row.get("mig.mode.current"),
                "minor": None,
                "device": None,
            }
        )
    return sorted(gpus, key=lambda g: g["index"])


def parse_information(text: str) -> dict:
    """/proc/driver/nvidia/gpus/<pci>/information -> {model, uuid, bus_location, minor, excluded}.

    Lines are 'Key:<tabs/spaces>value'; the value may itself contain ':' (Bus Location).
    Old drivers have no 'Device Minor' line: minor is then None.
    """
    raw = {}
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        if sep:
            raw[key.strip()] = value.strip()
    minor = raw.get("Device Minor")
    bus = raw.get("Bus Location")
    return {
        "model": raw.get("Model"),
        "uuid": raw.get("GPU UUID"),
        "bus_location": normalize_pci(bus) if bus else None,
        "minor": int(minor) if minor and minor.isdigit() else None,
        "excluded": raw.get("GPU Excluded", "No").lower() == "yes",
    }


def parse_proc_devices(text: str) -> dict[str, int]:
    """Character device majors from /proc/devices: {'nvidia-frontend': 195, 'nvidia-uvm': 234, ...}."""
    majors: dict[str, int] = {}
    in_char = False
    for line in text.splitlines():
        if line.strip().endswith("devices:"):
            in_char = line.strip().lower().startswith("character")
            continue
        parts = line.split(None, 1)
        if in_char and len(parts) == 2 and parts[0].isdigit():
            majors.setdefault(parts[1].strip(), int(parts[0]))
    return majors


def gpus_from_information(infos: list[dict]) -> list[dict]:
    """GPU facts from procfs alone (no nvidia-smi): indexed in PCI bus order, as nvidia-smi numbers them."""
    gpus = []
    present = sorted((i for i in infos if not i["excluded"]), key=lambda i: i["bus_location"] or "")
    for index, info in enumerate(present):
        gpus.append(
            {
                "index": index,
                "uuid": info["uuid"],
                "pci_bus_id": info["bus_location"],
                "name": info["model"],
                "memory_total_mib": None,
                "driver_version": None,
                "mig_mode": None,
                "minor": info["minor"],
                "device": None,
            }
        )
    return gpus


def merge_minors(gpus: list[dict], infos: list[dict]) -> list[dict]:
    """Fill each GPU's device minor from procfs, matched by PCI address (index and minor may differ)."""
    by_pci = {i["bus_location"]: i for i in infos}
    for gpu in gpus:
        info = by_pci.get(gpu["pci_bus_id"])
        if info is not None and gpu["minor"] is None:
            gpu["minor"] = info["minor"]
    return gpus


# ---- resolution of a workstation's request -------------------------------------------------------


def resolve_request(request, gpus: list[dict], item: str) -> list[dict]:
    """GPUs selected by `request` ('all', 'none', None, or a list of indices / UUIDs / PCI addresses).

    Raises GpuError naming the item and the value that matches no GPU, or GPUs requested on a
    host without any.
    """
    if request is None or request == [] or (isinstance(request, str) and request.lower() == "none"):
        return []
    if isinstance(request, str) and request.lower() == "all":
        if not gpus:
            raise GpuError(f"workstation {item}: gpus: 'all' requested but this host has no NVIDIA GPU")
        return list(gpus)
    if isinstance(request, (str, int)):
        request = [request]
    if not isinstance(request, list):
        raise GpuError(f"workstation {item}: gpus: expected 'all', 'none' or a list, got {request!r}")
    if not gpus:
        raise GpuError(f"workstation {item}: gpus: {request!r} requested but this host has no NVIDIA GPU")
    chosen: list[dict] = []
    for want in request:
        gpu = _find(want, gpus)
        if gpu is None:
            known = ", ".join(f"{g['index']} ({g['uuid']}, {g['pci_bus_id']})" for g in gpus)
            raise GpuError(f"workstation {item}: gpus: no GPU matches {want!r}; this host has: {known}")
        if gpu not in chosen:
            chosen.append(gpu)
    return sorted(chosen, key=lambda g: g["index"])


def _find(want, gpus: list[dict]) -> dict | None:
    if isinstance(want, bool):
        return None
    if isinstance(want, int) or (isinstance(want, str) and want.strip().isdigit()):
        return next((g for g in gpus if g["index"] == int(want)), None)
    if not isinstance(want, str):
        return None
    text = want.strip()
    if text.upper().startswith("GPU-"):
        return next((g for g in gpus if (g["uuid"] or "").lower() == text.lower()), None)
    if is_pci_address(text):
        pci = normalize_pci(text)
        return next((g for g in gpus if g["pci_bus_id"] == pci), None)
    return None


# ---- gathering on the host ------------------------------------------------------------------------


def char_device(path: str) -> dict | None:
    """{path, major, minor} of a character device node, or None when absent / not a char device."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    if not stat.S_ISCHR(st.st_mode):
        return None
    return {"path": path, "major": os.major(st.st_rdev), "minor": os.minor(st.st_rdev)}


def gather(nvidia_smi: str = "nvidia-smi", proc_root: str = "/proc", dev_root: str = "/dev") -> dict:
    """The host's GPUs: {gpus, control_devices, source, warnings}. No GPU is an empty list, not an error.

    nvidia-smi is preferred (names, memory, MIG mode); procfs fills device minors and is the
    fallback when nvidia-smi is missing or fails (driver loaded without the utilities).
    """
    warnings: list[str] = []
    infos = []
    for path in sorted(glob.glob(os.path.join(proc_root, "driver", "nvidia", "gpus", "*", "information"))):
        with open(path, encoding="utf-8", errors="replace") as fh:
            infos.append(parse_information(fh.read()))

    gpus: list[dict] | None = None
    source = "none"
    exe = shutil.which(nvidia_smi)
    if exe:
        cmd = [exe, "--query-gpu=" + ",".join(QUERY_FIELDS), "--format=csv,noheader,nounits"]
        proc = subprocess.run(cmd, capture_output=True, text=True, check=False, timeout=60)
        if proc.returncode == 0:
            gpus = merge_minors(gpus_from_query(parse_query_gpu(proc.stdout, QUERY_FIELDS)), infos)
            source = "nvidia-smi"
        elif "No devices were found" in proc.stdout + proc.stderr:
            gpus, source = [], "nvidia-smi"
        else:
            warnings.append(f"{exe} failed (rc={proc.returncode}): {(proc.stdout + proc.stderr).strip()[:200]}")
    if gpus is None and infos:
        gpus, source = gpus_from_information(infos), "procfs"
    gpus = gpus or []

    for gpu in gpus:
        if gpu["minor"] is not None:
            gpu["device"] = char_device(os.path.join(dev_root, f"nvidia{gpu['minor']}"))
        if gpu["mig_mode"] == "Enabled":
            warnings.append(f"GPU {gpu['index']} has MIG enabled: it is passed as a whole GPU, not per MIG instance")
    controls = [d for d in (char_device(os.path.join(dev_root, n)) for n in CONTROL_NODES) if d]
    majors = {}
    try:
        with open(os.path.join(proc_root, "devices"), encoding="utf-8") as fh:
            majors = {k: v for k, v in parse_proc_devices(fh.read()).items() if k.startswith("nvidia")}
    except OSError:
        pass
    return {"gpus": gpus, "control_devices": controls, "majors": majors, "source": source, "warnings": warnings}
