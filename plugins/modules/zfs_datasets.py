#!/usr/bin/python
# Copyright: (c) 2026, GPU Lab Fleet maintainers
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
from __future__ import annotations

DOCUMENTATION = r"""
---
module: zfs_datasets
short_description: Manage the whole set of ZFS datasets under a parent in one call
version_added: 0.1.0
author: GPU Lab Fleet maintainers (@gpulab)
description:
  - Declares the datasets below one parent dataset (for example every user's home under
    C(tank/fleet/home)), creates missing ones, sets the listed properties that differ, sets the
    owner, group and mode of their mountpoints, and archives or destroys datasets marked absent.
  - The current state of the whole tree is read with ONE C(zfs get -H -p -r) call, so a run with
    200 datasets that changes nothing costs about what a run with one costs.
  - Sizes (C(quota), C(refquota), C(reservation), C(recordsize), ...) are compared in bytes after
    parsing human units (C(10G), C(500GiB), C(2T), C(none)), so a second run never re-sets them.
  - B(Nothing is destroyed unless asked.) A dataset with O(datasets[].state=absent) is snapshotted
    (C(@archived-STAMP)) and renamed to C(PARENT/_archive/NAME-STAMP) (with C(/) in NAME written as
    C(.)), made read-only and unshared, and tagged with the user properties
    C(gpulab.fleet:archived-from) and C(gpulab.fleet:archived-at). It is destroyed (with its
    snapshots and children) only with O(purge=true); a purge also destroys the archives that earlier
    runs made of it (found by C(gpulab.fleet:archived-from)), so a user archived months ago is
    purged by listing her again with O(datasets[].state=absent) and O(purge=true).
  - ZFS allows a leading underscore and usernames cannot start with one, so C(_archive) never
    collides with a listed dataset; the name is reserved.
    The archive area is created on first use with C(canmount=off) and C(sharenfs=off).
  - Datasets under the parent that are not listed are returned in RV(unlisted) and left alone;
    with O(prune=true) they are handled as if listed with O(datasets[].state=absent) (archived,
    or destroyed with O(purge=true)). The archive area is never unlisted.
  - The whole input is validated before anything is changed (names, property names, sizes, ids,
    modes, and that the parent exists). A failure of one dataset (with the zfs message) does not
    stop the others; the module fails at the end if any failed.
  - Snapshots and their retention are a separate module, M(gpulab.fleet.zfs_snapshots).
notes:
  - Create-only properties (C(encryption), C(keyformat), C(pbkdf2iters), C(casesensitivity),
    C(normalization), C(utf8only), C(volblocksize)) are applied at creation; a later difference
    is an error for that dataset, never a silent no-op.
  - A property with the value C(null) is inherited (C(zfs inherit)) when it is set locally.
  - Missing intermediate datasets of a nested name (C(shared/projects)) are created with
    C(zfs create -p) and default properties.
options:
  parent:
    description:
      - The existing dataset under which the listed datasets live, for example C(tank/fleet/home).
    type: str
    required: true
  datasets:
    description: The desired datasets.
    type: list
    elements: dict
    required: true
    suboptions:
      name:
        description:
          - Name relative to O(parent), for example C(alice) or C(shared/projects).
          - Letters, digits, C(_ - . :); each component starts with a letter or digit; no C(@),
            C(#), C(%), spaces, C(.)/C(..) components or leading C(/).
        type: str
        required: true
      state:
        description: C(present) or C(absent) (archived, or destroyed with O(purge=true)).
        type: str
        choices: [present, absent]
        default: present
      properties:
        description:
          - ZFS properties to manage (native ones such as C(quota), C(compression), C(recordsize),
            C(atime), C(mountpoint), C(sharenfs), and user properties C(module:property) in lower
            case). Properties not listed are left alone. C(null) inherits.
        type: dict
        default: {}
      owner:
        description: Numeric uid the mountpoint directory belongs to.
        type: int
      group:
        description: Numeric gid the mountpoint directory belongs to.
        type: int
      mode:
        description: Mode of the mountpoint directory, an octal string such as C('0750').
        type: raw
  prune:
    description:
      - Treat datasets under O(parent) that are not listed as absent (archive them, or destroy
        them with O(purge=true)).
    type: bool
    default: false
  purge:
    description:
      - Destroy absent (and, with O(prune), unlisted) datasets instead of archiving them, together
        with their archives from earlier runs.
    type: bool
    default: false
attributes:
  check_mode:
    support: full
    description: Computes and reports the plan; changes no dataset.
  diff_mode:
    support: full
    description: Shows each changed dataset's properties, owner and mode before and after.
"""

EXAMPLES = r"""
- name: Home datasets of the lab members
  gpulab.fleet.zfs_datasets:
    parent: tank/fleet/home
    datasets:
      - name: alice
        owner: 2001
        group: 2001
        mode: "0700"
        properties:
          quota: 200G
          compression: lz4
          org.gpulab:owner: alice
      - name: bob
        state: absent     # archived to tank/fleet/home/_archive/bob-<stamp>

- name: Remove everything not listed, for real
  gpulab.fleet.zfs_datasets:
    parent: tank/scratch
    datasets:
      - name: current
    prune: true
    purge: true
"""

RETURN = r"""
datasets:
  description: One entry per listed dataset (and per pruned one), in input order.
  returned: always
  type: list
  elements: dict
  contains:
    name: {description: Full dataset name., type: str}
    action: {description: "create, update, archive, destroy, unchanged or failed.", type: str}
    changes: {description: Properties and owner/group/mode set (desired values)., type: dict}
    archived_as: {description: New name of an archived dataset., type: str}
    error: {description: Why this dataset failed (with the zfs message)., type: str}
  sample:
    - {name: tank/fleet/home/alice, action: update, changes: {quota: 214748364800}}
unlisted:
  description: Datasets under the parent that are not listed (top-most only; archive area excluded).
  returned: always
  type: list
  elements: str
  sample: [tank/fleet/home/carol]
archived:
  description: Old name -> new name of every dataset archived by this run.
  returned: always
  type: dict
  sample: {tank/fleet/home/bob: tank/fleet/home/_archive/bob-20260101T000000Z}
destroyed:
  description: Datasets destroyed by this run (purged datasets, then their archives).
  returned: always
  type: list
  elements: str
"""

import os
import time

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.gpulab.fleet.plugins.module_utils.zfs import (
    ARCHIVE,
    ARCHIVED_AT,
    ARCHIVED_FROM,
    ItemPlan,
    ZfsClient,
    ZfsError,
    build_specs,
    plan_datasets,
    properties_to_read,
    spec_problems,
)


def read_stats(tree, names):
    """(uid, gid, mode) of the mountpoints of the mounted datasets among `names`."""
    stats = {}
    for name in names:
        props = tree.get(name)
        if not props or props.get("mounted", ("no",))[0] != "yes":
            continue
        try:
            st = os.stat(props["mountpoint"][0])
        except OSError:
            continue
        stats[name] = (st.st_uid, st.st_gid, st.st_mode & 0o7777)
    return stats


def apply_perms(client, plan: ItemPlan):
    mountpoint, mounted = client.mount_info(plan.spec.full)
    if not mounted:
        raise ZfsError(["chown", plan.spec.full], 1, f"{plan.spec.full} is not mounted; cannot set owner/mode")
    if "owner" in plan.perms or "group" in plan.perms:
        os.chown(mountpoint, plan.perms.get("owner", -1), plan.perms.get("group", -1))
    if "mode" in plan.perms:
        os.chmod(mountpoint, plan.perms["mode"])


def apply_item(client, parent, plan: ItemPlan, stamp):
    spec = plan.spec
    if plan.action == "create":
        client.create(spec.full, plan.set)
        if plan.perms:
            apply_perms(client, plan)
    elif plan.action == "update":
        client.set(spec.full, plan.set)
        for prop in plan.inherit:
            client.inherit(spec.full, prop)
        if plan.perms:
            apply_perms(client, plan)
    elif plan.action == "archive":
        client.snapshot([f"{spec.full}@archived-{stamp}"], recursive=True)
        client.rename(spec.full, plan.archive_to)
        client.set(plan.archive_to, {"readonly": "on", "sharenfs": "off", ARCHIVED_FROM: spec.full, ARCHIVED_AT: stamp})
    elif plan.action == "destroy":
        for name in plan.destroy:
            client.destroy(name, recursive=True)


def result_entry(plan: ItemPlan):
    entry = {"name": plan.spec.full, "action": plan.action}
    changes = {**plan.set, **{p: None for p in plan.inherit}, **plan.after}
    changes.pop("state", None)
    if plan.action in ("create", "update") and changes:
        entry["changes"] = {k: v for k, v in changes.items() if k != "archived_as"}
    if plan.archive_to:
        entry["archived_as"] = plan.archive_to
    if plan.error:
        entry["error"] = plan.error
    return entry


def main():
    module = AnsibleModule(
        argument_spec=dict(
            parent=dict(type="str", required=True),
            datasets=dict(
                type="list",
                elements="dict",
                required=True,
                options=dict(
                    name=dict(type="str", required=True),
                    state=dict(type="str", choices=["present", "absent"], default="present"),
                    properties=dict(type="dict", default={}),
                    owner=dict(type="int"),
                    group=dict(type="int"),
                    mode=dict(type="raw"),
                ),
            ),
            prune=dict(type="bool", default=False),
            purge=dict(type="bool", default=False),
        ),
        supports_check_mode=True,
    )
    parent = module.params["parent"].rstrip("/")
    items = module.params["datasets"]
    problems = spec_problems(parent, items)
    if problems:
        module.fail_json(msg="invalid input: " + "; ".join(problems), problems=problems)

    zfs_bin = module.get_bin_path("zfs", required=True)
    client = ZfsClient(module.run_command, zfs=zfs_bin)
    specs = build_specs(parent, items)
    warnings = []
    try:
        tree = client.get_tree(parent, properties_to_read(specs))
    except ZfsError as exc:
        # Check mode on a new server: the pool (or the parent) is made by an earlier task that only
        # said it would. Preview against an empty parent; a real run still needs the parent.
        if not (module.check_mode and "does not exist" in str(exc)):
            module.fail_json(msg=f"cannot read parent dataset {parent}: {exc}")
        tree = {parent: {}}
        warnings.append(f"{parent} does not exist yet: check mode shows every dataset created under it")
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    wanted_perms = [s.full for s in specs if s.owner is not None or s.group is not None or s.mode is not None]
    plan = plan_datasets(
        parent, specs, tree, stamp=stamp, prune=module.params["prune"], purge=module.params["purge"],
        stats=read_stats(tree, wanted_perms),
    )  # fmt: skip

    all_plans = [*plan.items, *plan.prune]
    if not module.check_mode:
        if plan.need_archive_area:
            try:
                client.create(f"{parent}/{ARCHIVE}", {"canmount": "off", "sharenfs": "off"})
            except ZfsError as exc:
                module.fail_json(msg=f"cannot create the archive area {parent}/{ARCHIVE}: {exc}")
        failed_roots: list[str] = []
        # Parents before children when creating, children before parents when removing, so that
        # archiving 'a/b' and 'a' gives each its own archive entry.
        adding = [p for p in all_plans if p.action in ("create", "update")]
        removing = [p for p in all_plans if p.action in ("archive", "destroy")]
        order = sorted(adding, key=lambda p: p.spec.full.count("/")) + sorted(
            removing, key=lambda p: -p.spec.full.count("/")
        )
        for item in order:
            if item.action in ("unchanged", "failed"):
                continue
            if any(item.spec.full.startswith(root + "/") for root in failed_roots):
                item.action, item.error = "failed", f"{item.spec.full}: not attempted, a parent dataset failed"
                continue
            try:
                apply_item(client, parent, item, stamp)
            except (ZfsError, OSError) as exc:
                item.action, item.error = "failed", f"{item.spec.full}: {exc}"
                failed_roots.append(item.spec.full)

    result = dict(
        changed=any(p.action not in ("unchanged", "failed") for p in all_plans),
        datasets=[result_entry(p) for p in all_plans],
        unlisted=plan.unlisted,
        archived={p.spec.full: p.archive_to for p in all_plans if p.action == "archive"},
        destroyed=[name for p in all_plans if p.action == "destroy" for name in p.destroy],
    )
    if module._diff:
        changed = [p for p in all_plans if p.before or p.after]
        result["diff"] = dict(
            before={p.spec.full: p.before for p in changed},
            after={p.spec.full: p.after for p in changed},
        )
    for warning in warnings:
        module.warn(warning)
    errors = [p.error for p in all_plans if p.error]
    if errors:
        module.fail_json(msg=f"{len(errors)} dataset(s) failed: " + "; ".join(errors), errors=errors, **result)
    module.exit_json(**result)


if __name__ == "__main__":
    main()
