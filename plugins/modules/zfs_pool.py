#!/usr/bin/python
# Copyright: (c) 2026, GPU Lab Fleet maintainers
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
from __future__ import annotations

DOCUMENTATION = r"""
---
module: zfs_pool
short_description: Create a ZFS pool with a declared layout, never re-create or reshape it
version_added: 0.1.0
author: GPU Lab Fleet maintainers (@gpulab)
description:
  - Creates the pool with the declared vdev layout (stripe, mirror, raidz1/2/3 data vdevs and
    special, dedup, log, cache and spare devices) when it does not exist.
  - An existing pool is B(never) re-created, extended, shrunk or otherwise changed in its layout.
    Its layout is compared with the declared one and a difference is reported. By default the
    module fails (nothing changed) so that a wrong inventory or a replaced disk is noticed before
    datasets are put on the wrong pool; with O(layout_mismatch=warn) it only warns.
  - A pool that is not imported is created only when no pool of that name can be imported (C(zpool
    import)) and no declared disk carries the label of a pool that can (C(lsblk)), with or without
    O(force). A boot where the import failed, or an exported pool, is reported and left alone, never
    created over.
    Labels of pools that cannot be imported any more (destroyed ones) are what O(force) is for.
  - Idempotent with C(/dev/disk/by-id/...) paths (unlike community.general.zpool). Both the
    declared disks and the devices in C(zpool status -P -L) are resolved to the whole disk they
    are on (C(/dev/disk/by-id/virtio-x) -> C(/dev/vdb); C(/dev/vdb1), the partition ZFS makes
    on a whole disk -> C(/dev/vdb)) before comparing.
  - Pool properties in O(properties) are set at creation; later differences of settable ones are
    applied with C(zpool set); create-only ones (C(ashift), C(altroot)) are reported like a layout
    difference. O(filesystem_properties) apply to the root dataset at creation only (manage them
    later with M(gpulab.fleet.zfs_datasets)).
options:
  name:
    description: Pool name.
    type: str
    required: true
  vdevs:
    description: The layout. Several C(stripe) disks in one entry are single-disk vdevs.
    type: list
    elements: dict
    required: true
    suboptions:
      type:
        description: Vdev type; C(raidz) means C(raidz1).
        type: str
        choices: [stripe, mirror, raidz, raidz1, raidz2, raidz3]
        default: stripe
      role:
        description: What the vdev is for.
        type: str
        choices: [data, special, dedup, log, cache, spare]
        default: data
      disks:
        description: Device paths, preferably C(/dev/disk/by-id/...).
        type: list
        elements: str
        required: true
  properties:
    description: Pool properties (C(zpool create -o)), for example C(ashift=12), C(autotrim=on).
    type: dict
    default: {}
  filesystem_properties:
    description: Root dataset properties at creation (C(zpool create -O)), for example C(compression=lz4).
    type: dict
    default: {}
  layout_mismatch:
    description: What a difference between the declared and the existing layout does.
    type: str
    choices: [fail, warn]
    default: fail
  force:
    description:
      - Pass C(-f) to C(zpool create) (disks with old labels or partitions). Only at creation.
      - It never overrides a pool that can still be imported (see the description).
    type: bool
    default: false
attributes:
  check_mode:
    support: full
    description: Reports whether the pool would be created; creates nothing.
  diff_mode:
    support: full
    description: Shows the pool layout before and after.
"""

EXAMPLES = r"""
- name: Storage pool, raidz2 with a mirrored special vdev
  gpulab.fleet.zfs_pool:
    name: tank
    vdevs:
      - type: raidz2
        disks:
          - /dev/disk/by-id/ata-HGST_1
          - /dev/disk/by-id/ata-HGST_2
          - /dev/disk/by-id/ata-HGST_3
          - /dev/disk/by-id/ata-HGST_4
      - role: special
        type: mirror
        disks: [/dev/disk/by-id/nvme-A, /dev/disk/by-id/nvme-B]
    properties: {ashift: 12, autotrim: "on"}
    filesystem_properties: {compression: lz4, atime: "off", xattr: sa, acltype: posixacl}
"""

RETURN = r"""
created:
  description: Whether the pool was created by this run.
  returned: always
  type: bool
command:
  description: The C(zpool create) command run (or that would run in check mode).
  returned: when the pool is created
  type: list
  elements: str
attempts:
  description:
    - How many C(zpool create) runs it took; more than 1 when udev re-read a disk's partitions under
      zpool (retried up to 5 times, each after C(udevadm settle)).
  returned: when the pool was created (not in check mode)
  type: int
  sample: 1
differences:
  description: Differences between the declared and the existing layout and create-only properties.
  returned: always
  type: list
  elements: str
  sample: ["data raidz1 [/dev/vdb /dev/vdc /dev/vde] is wanted but not in the pool"]
properties_set:
  description: Pool properties changed with zpool set (desired values).
  returned: always
  type: dict
"""

import os

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.gpulab.fleet.plugins.module_utils.zfs import (
    POOL_CREATE_ONLY,
    Vdev,
    ZfsClient,
    ZfsError,
    create_pool_args,
    create_problems,
    desired_vdevs,
    layout_differences,
    parse_importable,
    parse_zfs_labels,
    parse_zpool_status,
    pool_property_value,
    vdev_problems,
)


def whole_disk(path: str) -> str:
    """/dev/disk/by-id/x -> /dev/vdb; /dev/vdb1 or /dev/nvme0n1p1 -> the disk holding the partition."""
    real = os.path.realpath(path)
    base = os.path.basename(real)
    sys_path = f"/sys/class/block/{base}"
    if os.path.exists(f"{sys_path}/partition"):
        return "/dev/" + os.path.basename(os.path.dirname(os.path.realpath(sys_path)))
    return real


def canonical(vdevs: list[Vdev]) -> list[Vdev]:
    return [Vdev(v.role, v.type, [whole_disk(d) for d in v.disks]) for v in vdevs]


# zpool's messages when udev re-read a disk's partitions under it (see create_pool).
UDEV_RACE = ("no such pool or dataset", "currently unavailable")
CREATE_ATTEMPTS = 5


def create_pool(module, client, argv):
    """zpool create, after `udevadm settle`, tried up to CREATE_ATTEMPTS times on udev's race.

    zpool labels each whole disk and then opens its new partition; when the label's writer closes
    the disk, systemd-udevd re-reads the partition table (its inotify watch), and an open that falls
    in between fails: "one or more devices is currently unavailable" (or "no such pool or dataset"
    when zpool's own wait for the partition ran out). On the test VM under load 1 create in 5
    failed, and in a full make test the single retry after a settle failed as well. The failed
    attempt leaves its labels on the new partitions; zpool create overwrites them without -f (seen),
    so trying again is safe while the pool does not exist.
    """
    udevadm = module.get_bin_path("udevadm")
    for attempt in range(1, CREATE_ATTEMPTS + 1):
        if udevadm:
            module.run_command([udevadm, "settle", "--timeout=120"])
        try:
            client.pool_create(argv)
            return attempt
        except ZfsError as exc:
            if attempt == CREATE_ATTEMPTS or not any(m in exc.stderr for m in UDEV_RACE):
                raise
            if client.pool_status(module.params["name"]) is not None:
                return attempt


def zfs_labels(module, vdevs):
    """{device: pool name} of the ZFS labels on the declared disks and their partitions (lsblk)."""
    disks = [d for v in vdevs for d in v.disks]
    rc, out, err = module.run_command([module.get_bin_path("lsblk", required=True), "-n", "-P", "-o",
                                       "NAME,FSTYPE,LABEL", *disks])  # fmt: skip
    if rc != 0:
        module.fail_json(msg=f"cannot read the labels of {', '.join(disks)}: {err or out}")
    return parse_zfs_labels(out)


def main():
    module = AnsibleModule(
        argument_spec=dict(
            name=dict(type="str", required=True),
            vdevs=dict(
                type="list",
                elements="dict",
                required=True,
                options=dict(
                    type=dict(
                        type="str",
                        default="stripe",
                        choices=["stripe", "mirror", "raidz", "raidz1", "raidz2", "raidz3"],
                    ),
                    role=dict(
                        type="str", default="data", choices=["data", "special", "dedup", "log", "cache", "spare"]
                    ),
                    disks=dict(type="list", elements="str", required=True),
                ),
            ),
            properties=dict(type="dict", default={}),
            filesystem_properties=dict(type="dict", default={}),
            layout_mismatch=dict(type="str", choices=["fail", "warn"], default="fail"),
            force=dict(type="bool", default=False),
        ),
        supports_check_mode=True,
    )
    pool = module.params["name"]
    problems = vdev_problems(module.params["vdevs"])
    if problems:
        module.fail_json(msg=f"invalid layout for pool {pool}: " + "; ".join(problems), problems=problems)
    wanted = desired_vdevs(module.params["vdevs"])
    props = {k: pool_property_value(v) for k, v in module.params["properties"].items()}
    fs_props = {k: pool_property_value(v) for k, v in module.params["filesystem_properties"].items()}
    client = ZfsClient(
        module.run_command,
        zfs=module.get_bin_path("zfs", required=True),
        zpool=module.get_bin_path("zpool", required=True),
    )
    result = dict(changed=False, created=False, differences=[], properties_set={})
    try:
        status = client.pool_status(pool)
        if status is None:
            missing = [d for v in wanted for d in v.disks if not os.path.exists(d)]
            if missing:
                module.fail_json(msg=f"pool {pool}: disks do not exist: {', '.join(missing)}", **result)
            refused = create_problems(pool, parse_importable(client.importable()), zfs_labels(module, wanted))
            if refused:
                module.fail_json(msg="; ".join(refused), problems=refused, **result)
            argv = create_pool_args(pool, wanted, props, fs_props, force=module.params["force"])
            result.update(changed=True, created=True, command=["zpool", "create", *argv])
            if module._diff:
                result["diff"] = dict(before="", after=f"zpool create {' '.join(argv)}\n")
            if not module.check_mode:
                result["attempts"] = create_pool(module, client, argv)
            module.exit_json(**result)

        differences = layout_differences(canonical(wanted), canonical(parse_zpool_status(status)))
        current = client.pool_get(pool)
        to_set = {}
        for prop, value in sorted(props.items()):
            have = current.get(prop, ("-", "-"))[0]
            if have == value:
                continue
            if prop in POOL_CREATE_ONLY:
                differences.append(f"property {prop} is {have!r}, {value!r} is wanted (only settable at creation)")
            else:
                to_set[prop] = value
        result["differences"] = differences
        if differences:
            text = f"pool {pool} exists with a different layout; it is never changed by this module: " + "; ".join(
                differences
            )
            if module.params["layout_mismatch"] == "fail":
                module.fail_json(msg=text, **result)
            module.warn(text)
        if to_set:
            result.update(changed=True, properties_set=to_set)
            if module._diff:
                result["diff"] = dict(before={p: current.get(p, ("-",))[0] for p in to_set}, after=dict(to_set))
            if not module.check_mode:
                for prop, value in to_set.items():
                    client.pool_set(pool, prop, value)
    except ZfsError as exc:
        module.fail_json(msg=f"pool {pool}: {exc}", **result)
    module.exit_json(**result)


if __name__ == "__main__":
    main()
