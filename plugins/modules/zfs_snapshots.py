#!/usr/bin/python
# Copyright: (c) 2026, GPU Lab Fleet maintainers
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
from __future__ import annotations

DOCUMENTATION = r"""
---
module: zfs_snapshots
short_description: Take named ZFS snapshots of a set of datasets and apply a retention policy
version_added: 0.1.0
author: GPU Lab Fleet maintainers (@gpulab)
description:
  - Takes one snapshot of every listed dataset in a single atomic C(zfs snapshot) command, then
    destroys the snapshots named O(prefix) plus a UTC timestamp beyond the O(keep) newest per dataset.
  - With O(name) the snapshot C(DATASET@NAME) is created only where it is missing (idempotent, for
    example C(before-upgrade)). Without O(name), O(prefix) followed by a UTC timestamp
    (C(auto-20260101T120000Z)) is used, so every run takes a new snapshot (for schedules).
  - Retention only ever touches the snapshots this module named for O(prefix) (the prefix followed by
    exactly such a timestamp); snapshots made by people or other tools are never destroyed, even when
    their names start with the prefix (for example sanoid's C(autosnap_...) with O(prefix=auto)).
  - "Why a separate module and not an option of M(gpulab.fleet.zfs_datasets): snapshots have a
    different lifecycle. zfs_datasets declares what exists and converging it twice must change
    nothing, while a schedule must create a snapshot every time it runs and expire old ones; it
    must also work on any set of datasets (for example all homes with O(recursive=true)) without
    restating their properties. Keeping them apart keeps both simple and each idempotent in its
    own sense."
options:
  datasets:
    description: Full dataset names, for example C(tank/fleet/home).
    type: list
    elements: str
    required: true
  recursive:
    description: Snapshot the datasets and all their descendants (C(zfs snapshot -r)); retention too.
    type: bool
    default: false
  name:
    description: Exact snapshot name; created where missing.
    type: str
  prefix:
    description:
      - Prefix of the generated snapshot names (when O(name) is not given) and of the snapshots
        that O(keep) applies to.
    type: str
  keep:
    description: Keep this many newest snapshots of the O(prefix) schedule per dataset; destroy older ones.
    type: int
  create:
    description: Take a snapshot; false applies only the retention.
    type: bool
    default: true
attributes:
  check_mode:
    support: full
    description: Reports the snapshots that would be taken and pruned; changes nothing.
  diff_mode:
    support: full
    description: Shows the managed snapshots before and after.
"""

EXAMPLES = r"""
- name: Hourly snapshot of every home, keep 24
  gpulab.fleet.zfs_snapshots:
    datasets: [tank/fleet/home]
    recursive: true
    prefix: hourly-
    keep: 24

- name: Safety snapshot before an upgrade (once)
  gpulab.fleet.zfs_snapshots:
    datasets: [tank/fleet/home, tank/fleet/shared]
    name: before-upgrade-2026
"""

RETURN = r"""
created:
  description: Snapshots created.
  returned: always
  type: list
  elements: str
  sample: [tank/fleet/home@hourly-20260101T120000Z]
destroyed:
  description: Snapshots destroyed by the retention policy.
  returned: always
  type: list
  elements: str
"""

import re
import time

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.gpulab.fleet.plugins.module_utils.zfs import (
    Snapshot,
    ZfsClient,
    ZfsError,
    expired_snapshots,
    full_name_problem,
    scheduled_name,
    snapshots_to_take,
)

SNAP_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:-]*$")


def main():
    module = AnsibleModule(
        argument_spec=dict(
            datasets=dict(type="list", elements="str", required=True),
            recursive=dict(type="bool", default=False),
            name=dict(type="str"),
            prefix=dict(type="str"),
            keep=dict(type="int"),
            create=dict(type="bool", default=True),
        ),
        required_by={"keep": "prefix"},
        supports_check_mode=True,
    )
    p = module.params
    problems = [problem for problem in map(full_name_problem, p["datasets"]) if problem]
    if not p["datasets"]:
        problems.append("datasets: at least one dataset is needed")
    if p["name"] is not None and not SNAP_NAME_RE.match(p["name"]):
        problems.append(f"name: {p['name']!r} is not a valid snapshot name (letters, digits, _ - . :)")
    if p["prefix"] is not None and not SNAP_NAME_RE.match(p["prefix"]):
        problems.append(f"prefix: {p['prefix']!r} is not a valid snapshot name prefix (letters, digits, _ - . :)")
    if p["create"] and p["name"] is None and p["prefix"] is None:
        problems.append("name or prefix is needed to take a snapshot")
    if p["keep"] is not None and p["keep"] < 1:
        problems.append(f"keep: {p['keep']} must be at least 1")
    if problems:
        module.fail_json(msg="invalid input: " + "; ".join(problems), problems=problems)

    client = ZfsClient(module.run_command, zfs=module.get_bin_path("zfs", required=True))
    result = dict(changed=False, created=[], destroyed=[])
    try:
        # Also proves every dataset exists before anything is changed.
        snaps = client.list_snapshots(p["datasets"], recursive=p["recursive"])
        targets = p["datasets"]
        if p["recursive"]:
            targets = client.list_datasets(p["datasets"])
        if p["create"]:
            snap_name = p["name"] or scheduled_name(p["prefix"], time.time())
            missing, command = snapshots_to_take(p["datasets"], targets, snaps, snap_name, p["recursive"])
            if missing:
                result["created"] = missing
                if module.check_mode:
                    # Count the snapshots this run would take as the newest ones for retention.
                    txg = max((s.createtxg for s in snaps), default=0) + 1
                    snaps = [*snaps, *(Snapshot(*m.split("@", 1), txg, int(time.time())) for m in missing)]
                else:
                    client.snapshot(command, recursive=p["recursive"])
                    snaps = client.list_snapshots(p["datasets"], recursive=p["recursive"])
        if p["keep"] is not None:
            expired = expired_snapshots(snaps, p["prefix"], p["keep"])
            result["destroyed"] = [s.full for s in expired]
            if not module.check_mode:
                by_dataset: dict[str, list[str]] = {}
                for snap in expired:
                    by_dataset.setdefault(snap.dataset, []).append(snap.name)
                for dataset, names in by_dataset.items():
                    # One command per dataset: zfs destroy ds@a,b,c
                    client.destroy(f"{dataset}@{','.join(names)}")
    except ZfsError as exc:
        module.fail_json(msg=str(exc), **result)
    result["changed"] = bool(result["created"] or result["destroyed"])
    if module._diff:
        result["diff"] = dict(
            before="".join(f"{s}\n" for s in result["destroyed"]),
            after="".join(f"{s}\n" for s in result["created"]),
        )
    module.exit_json(**result)


if __name__ == "__main__":
    main()
