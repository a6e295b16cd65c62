#!/usr/bin/python
# Copyright: (c) 2026, GPU Lab Fleet maintainers
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
module: gpu_facts
short_description: The host's NVIDIA GPUs as facts
version_added: 0.1.0
author: GPU Lab Fleet maintainers (@gpulab)
description:
  - Lists the host's NVIDIA GPUs with index, UUID, PCI bus id, name, memory, device minor, device node,
    driver version and MIG mode.
  - Uses C(nvidia-smi --query-gpu=index,uuid,pci.bus_id,name,memory.total,driver_version,mig.mode.current
    --format=csv,noheader,nounits) when available, and C(/proc/driver/nvidia/gpus/*/information) for the
    device minor numbers (which may differ from the index) or as the only source when nvidia-smi is
    missing or fails. Device nodes are read from C(/dev/nvidia*).
  - A host without NVIDIA GPUs (or without the driver) gives an empty list, not an error.
  - Sets the facts C(gpulab_gpus) and C(gpulab_gpu_control_devices) and returns the same values.
options:
  nvidia_smi:
    description: nvidia-smi command (name on PATH or path).
    type: str
    default: nvidia-smi
  proc_root:
    description: procfs root (tests point it at a prepared tree).
    type: path
    default: /proc
  gpu_device_root:
    description:
      - Directory with the NVIDIA device nodes (tests point it at fake nodes); named as in
        M(gpulab.fleet.lxd_workstations). C(dev_root) is its former name.
    type: path
    default: /dev
    aliases: [dev_root]
notes:
  - Read-only; supports check mode.
seealso:
  - module: gpulab.fleet.lxd_workstations
"""

EXAMPLES = r"""
- name: Read the GPUs
  gpulab.fleet.gpu_facts:

- name: Give alice the first GPU by UUID
  gpulab.fleet.lxd_workstations:
    image: gpulab/debian12
    workstations:
      - user: {name: alice, uid: 10001}
        gpus: ["{{ gpulab_gpus[0].uuid }}"]
  when: gpulab_gpus | length > 0
"""

RETURN = r"""
gpus:
  description: The GPUs, by index (also set as the fact C(gpulab_gpus)).
  returned: always
  type: list
  elements: dict
  contains:
    index: {description: nvidia-smi index (PCI order)., type: int}
    uuid: {description: GPU UUID (C(GPU-...))., type: str}
    pci_bus_id: {description: "PCI address in LXD's form, e.g. C(0000:3b:00.0)", type: str}
    name: {description: Model name., type: str}
    memory_total_mib: {description: Memory in MiB (null without nvidia-smi)., type: int}
    driver_version: {description: Driver version (null without nvidia-smi)., type: str}
    mig_mode: {description: "C(Enabled), C(Disabled), or null when MIG is not supported.", type: str}
    minor: {description: Device minor number (C(/dev/nvidiaMINOR))., type: int}
    device: {description: "C({path, major, minor}) of the device node, or null when absent.", type: dict}
  sample:
    - index: 0
      uuid: GPU-9221d5d1-b60b-a624-bf14-0a1819cfda3b
      pci_bus_id: "0000:62:00.0"
      name: NVIDIA H100 80GB HBM3
      memory_total_mib: 81559
      driver_version: 535.129.03
      mig_mode: Disabled
      minor: 5
      device: {path: /dev/nvidia5, major: 195, minor: 5}
control_devices:
  description: Driver-wide nodes present (nvidiactl, nvidia-uvm, nvidia-uvm-tools, nvidia-modeset).
  returned: always
  type: list
  elements: dict
  sample: [{path: /dev/nvidiactl, major: 195, minor: 255}]
source:
  description: Where the list came from (C(nvidia-smi), C(procfs) or C(none)).
  returned: always
  type: str
"""

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.gpulab.fleet.plugins.module_utils.gpu import gather


def main() -> None:
    module = AnsibleModule(
        argument_spec=dict(
            nvidia_smi=dict(type="str", default="nvidia-smi"),
            proc_root=dict(type="path", default="/proc"),
            gpu_device_root=dict(type="path", default="/dev", aliases=["dev_root"]),
        ),
        supports_check_mode=True,
    )
    p = module.params
    try:
        facts = gather(p["nvidia_smi"], p["proc_root"], p["gpu_device_root"])
    except (OSError, ValueError) as exc:
        module.fail_json(msg=f"cannot read the GPUs: {exc}")
    for warning in facts["warnings"]:
        module.warn(warning)
    module.exit_json(
        changed=False,
        gpus=facts["gpus"],
        control_devices=facts["control_devices"],
        source=facts["source"],
        ansible_facts={"gpulab_gpus": facts["gpus"], "gpulab_gpu_control_devices": facts["control_devices"]},
    )


if __name__ == "__main__":
    main()
