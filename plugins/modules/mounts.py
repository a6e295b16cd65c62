#!/usr/bin/python
# Copyright: (c) 2026, GPU Lab Fleet maintainers
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
from __future__ import annotations

DOCUMENTATION = r"""
---
module: mounts
short_description: Manage a whole set of mounts (fstab entries and live mounts) in one call
version_added: 0.1.0
author: GPU Lab Fleet maintainers (@gpulab)
description:
  - Declares many mount points at once (for example the NFS homes of every user of a GPU host),
    that is their C(/etc/fstab) entries and whether they are mounted now.
  - Reads O(fstab) and O(mountinfo) once, plans every item, writes O(fstab) at most once
    (atomically, a temporary file in the same directory renamed over it, keeping its mode and
    owner, only when its text changes), then runs C(mount -t FSTYPE -o OPTS SRC PATH) or
    C(umount PATH) for the items whose live state differs. A run with 200 mounts that changes
    nothing costs about what a run with one costs; it replaces a loop of M(ansible.posix.mount).
  - "fstab: an entry is found by its mount point (the second field, unescaped). Its first entry is
    updated in place and further entries for the same mount point are removed; every other line,
    comment and blank line is kept byte for byte; new entries are appended. Fields are written
    with the fstab escapes (C(\\040) for a space and so on)."
  - "Live: a missing mount is mounted (the mount point and its missing parents are created with
    mode C(0755)). A mount with another source or type is replaced: unmounted, then mounted.
    The type C(nfs) matches a live C(nfs4). A bind mount (O(mounts[].opts) containing C(bind) or
    C(rbind)) matches when the mount point shows the filesystem and directory of O(mounts[].src)."
  - B(Changed options are not applied to a live mount.) NFS cannot change most options on a
    remount, so the run that changes the options of a mounted item updates fstab, leaves the
    mount alone, lists the mount point in RV(pending_remount) and warns; unmount and mount it
    when it is not in use.
  - O(mounts[].state=absent) unmounts (C(umount), never lazy or forced; every mount stacked on
    the path) and removes the fstab entry. The mount point directory and everything in it are
    kept. A busy mount point fails that item with the C(umount) message.
  - Before the first NFS mount of each server the module connects once to its NFS port
    (2049/tcp, 10 s timeout). An unreachable server fails all its items at once, each naming the
    mount point and the server, instead of C(mount.nfs) retrying each C(hard) mount for 2 minutes.
  - The whole input is validated before anything changes (absolute normalized paths, no
    whitespace or control characters in the fields, no path listed twice, a source for every
    mounted item, a known state); the message names the item, the field and the value. A
    failure of one item does not stop the others; the module fails at the end if any failed.
notes:
  - Mounts are compared through O(mountinfo) as the module's mount namespace sees them.
  - A source under C(/dev/) or given as C(UUID=), C(LABEL=), C(PARTUUID=) or C(PARTLABEL=) is
    resolved to its device before it is compared with the live mount.
  - Options are only compared with the old fstab entry, not with the live mount, so
    RV(pending_remount) is reported by the run that changes them.
  - "The fstab is read, planned and written under an exclusive lock (C(flock) on
    C(/run/lock/gpulab-fleet-fstab.lock)), so two runs at once (two admins, two plays) never drop each
    other's entries: the second waits for the first, up to 120 seconds. The kernel releases the lock
    when the process ends, so a killed run leaves nothing behind."
options:
  mounts:
    description: The desired mounts. Mount points not listed are left alone.
    type: list
    elements: dict
    required: true
    suboptions:
      path:
        description:
          - Mount point, an absolute normalized path (no trailing C(/), C(.) or C(..)), not C(/).
        type: str
        required: true
      src:
        description:
          - What to mount, for example C(storage:/tank/fleet/home/alice), C(tmpfs), or the source
            directory of a bind mount. Required with O(mounts[].state=mounted).
        type: str
      fstype:
        description: Filesystem type (C(nfs), C(tmpfs), C(none) for a bind mount, ...).
        type: str
        default: nfs
      opts:
        description: Mount options, comma-separated, as in fstab.
        type: str
        default: defaults
      dump:
        description: Fifth fstab field.
        type: int
        default: 0
      passno:
        description: Sixth fstab field (fsck order).
        type: int
        default: 0
      state:
        description:
          - C(mounted) (in fstab and mounted now) or C(absent) (unmounted, fstab entry removed,
            the directory kept).
        type: str
        default: mounted
  fstab:
    description: The fstab file to manage (tests use a file of their own).
    type: path
    default: /etc/fstab
  mountinfo:
    description: Where to read the live mounts.
    type: path
    default: /proc/self/mountinfo
attributes:
  check_mode:
    support: full
    description: Reads and plans; writes no file and mounts nothing.
  diff_mode:
    support: full
    description: Shows each changed mount point's fstab entry and live mount before and after.
"""

EXAMPLES = r"""
- name: Homes of this host's users, one task for all of them
  gpulab.fleet.mounts:
    mounts:
      - path: /srv/gpulab/home/alice
        src: storage.lab:/tank/fleet/home/alice
        fstype: nfs
        opts: rw,hard,noatime,_netdev
      - path: /srv/gpulab/home/bob
        state: absent        # unmounted and out of fstab; the directory stays

- name: A tmpfs and a bind mount
  gpulab.fleet.mounts:
    mounts:
      - {path: /srv/scratch, src: tmpfs, fstype: tmpfs, opts: "size=1g,mode=1777"}
      - {path: /srv/datasets, src: /data/datasets, fstype: none, opts: "bind,ro"}
"""

RETURN = r"""
mounts:
  description: One entry per listed mount point, in input order.
  returned: always
  type: list
  elements: dict
  contains:
    path: {description: Mount point., type: str}
    state: {description: The wanted state., type: str}
    fstab: {description: "What happened to its fstab entry: add, update, remove or unchanged.", type: str}
    live: {description: "What happened live: mount, unmount, remount or unchanged.", type: str}
    reason: {description: Why a remount (what was mounted instead)., type: str}
    error: {description: Why this item failed (with the mount or umount message)., type: str}
  sample:
    - {path: /srv/gpulab/home/alice, state: mounted, fstab: add, live: mount}
pending_remount:
  description: Mounted items whose options changed in fstab; the live mount still has the old ones.
  returned: always
  type: list
  elements: str
  sample: [/srv/gpulab/home/alice]
fstab_changed:
  description: Whether the fstab file was (or in check mode would be) rewritten.
  returned: always
  type: bool
"""

import os
import socket
import tempfile
import time
from dataclasses import replace

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.gpulab.fleet.plugins.module_utils.mounts import (
    NFS_PORT,
    MountinfoError,
    MountPlan,
    apply_order,
    build_specs,
    mount_argv,
    nfs_server,
    parse_mountinfo,
    plan_mounts,
    spec_problems,
)
from ansible_collections.gpulab.fleet.plugins.module_utils.runlock import exclusive_lock

# An unreachable NFS server: mount.nfs with `hard` retries each mount for 2 minutes, so one probe per
# server tells it at once (and for every mount of that server) instead of after N x 2 minutes.
NFS_PROBE_TIMEOUT = 10


def probe_nfs(server: str, timeout: float = NFS_PROBE_TIMEOUT) -> str | None:
    """None when the server accepts a TCP connection on the NFS port, else why not."""
    try:
        with socket.create_connection((server, NFS_PORT), timeout=timeout):
            return None
    except OSError as exc:
        return str(exc) or type(exc).__name__


# One lock for every fstab edit on the host; in /run/lock, a tmpfs, so nothing is left after a reboot.
FSTAB_LOCK = "/run/lock/gpulab-fleet-fstab.lock"
FSTAB_LOCK_WAIT = 120

_TAGS = {"UUID=": "by-uuid", "LABEL=": "by-label", "PARTUUID=": "by-partuuid", "PARTLABEL=": "by-partlabel"}


def read_text(path, missing_ok=False):
    """The file's text; undecodable bytes survive a write-back unchanged (surrogateescape)."""
    try:
        with open(path, "rb") as fh:
            return fh.read().decode("utf-8", "surrogateescape")
    except FileNotFoundError:
        if missing_ok:
            return ""
        raise


def write_atomically(path, text):
    """Write `path` through a temporary file in the same directory and a rename: readers see the
    old or the new file, never a partial one. Mode and owner of the old file are kept (new: 0644);
    a symlinked fstab stays a symlink (its target is replaced)."""
    path = os.path.realpath(path)
    try:
        st = os.stat(path)
        mode, uid, gid = st.st_mode & 0o7777, st.st_uid, st.st_gid
    except FileNotFoundError:
        mode, uid, gid = 0o644, -1, -1
    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=f".{os.path.basename(path)}.")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(text.encode("utf-8", "surrogateescape"))
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, mode)
        if uid != -1:
            os.chown(tmp, uid, gid)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    dir_fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def live_source(item):
    """The source as mountinfo will show it: bind sources and device links resolved (else None)."""
    src = item.get("src")
    if not src:
        return None
    if set(str(item.get("opts") or "").split(",")) & {"bind", "rbind"}:
        return os.path.realpath(src)
    for tag, folder in _TAGS.items():
        if src.startswith(tag):
            link = os.path.join("/dev/disk", folder, src[len(tag) :])
            return os.path.realpath(link) if os.path.exists(link) else None
    if src.startswith("/dev/"):
        return os.path.realpath(src)
    return None


def make_dirs(path):
    """mkdir -p with mode 0755 for each directory made (umask aside); existing ones are untouched."""
    missing = []
    current = path
    while not os.path.isdir(current):
        missing.append(current)
        current = os.path.dirname(current)
    for directory in reversed(missing):
        os.mkdir(directory)
        os.chmod(directory, 0o755)


def plan_and_write_fstab(module, specs, fstab):
    """Read the fstab and the live mounts, plan every item, write the fstab (not in check mode)."""
    try:
        fstab_text = read_text(fstab, missing_ok=True)
    except OSError as exc:
        module.fail_json(msg=f"cannot read {fstab}: {exc}")
    try:
        mounts = parse_mountinfo(read_text(module.params["mountinfo"]))
    except (OSError, MountinfoError) as exc:
        module.fail_json(msg=f"cannot read the live mounts from {module.params['mountinfo']}: {exc}")
    plan = plan_mounts(specs, fstab_text, mounts)
    if plan.fstab_changed and not module.check_mode:
        try:
            write_atomically(fstab, plan.fstab_after)
        except OSError as exc:
            module.fail_json(msg=f"cannot write {fstab}: {exc}; nothing was mounted or unmounted")
    return plan


def result_entry(plan: MountPlan):
    entry = {"path": plan.spec.path, "state": plan.spec.state, "fstab": plan.fstab, "live": plan.live}
    if plan.reason:
        entry["reason"] = plan.reason
    if plan.error:
        entry["error"] = plan.error
    return entry


def main():
    module = AnsibleModule(
        argument_spec=dict(
            mounts=dict(
                type="list",
                elements="dict",
                required=True,
                options=dict(
                    path=dict(type="str", required=True),
                    src=dict(type="str"),
                    fstype=dict(type="str", default="nfs"),
                    opts=dict(type="str", default="defaults"),
                    dump=dict(type="int", default=0),
                    passno=dict(type="int", default=0, no_log=False),  # fsck order, not a password
                    state=dict(type="str", default="mounted"),
                ),
            ),
            fstab=dict(type="path", default="/etc/fstab"),
            mountinfo=dict(type="path", default="/proc/self/mountinfo"),
        ),
        supports_check_mode=True,
    )
    items = module.params["mounts"]
    problems = spec_problems(items)
    if problems:
        module.fail_json(msg="invalid input: " + "; ".join(problems), problems=problems)
    specs = [replace(spec, live_src=live_source(item)) for spec, item in zip(build_specs(items), items, strict=True)]
    fstab = module.params["fstab"]
    asked = time.monotonic()
    try:
        lock = exclusive_lock(FSTAB_LOCK if os.path.isdir(os.path.dirname(FSTAB_LOCK)) else f"{fstab}.gpulab-lock",
                              FSTAB_LOCK_WAIT)
    except (OSError, TimeoutError) as exc:
        module.fail_json(msg=f"cannot lock the fstab edits: {exc}; nothing was changed")
    if time.monotonic() - asked >= 1:
        module.warn(f"waited {time.monotonic() - asked:.0f} s for another run's fstab edits to end")
    try:
        plan = plan_and_write_fstab(module, specs, fstab)
    finally:
        # The mounts below need no lock; released on failure too (an interpreter that outlives the
        # module, as Mitogen's may, would keep it).
        os.close(lock)

    done = []  # live steps that succeeded
    if not module.check_mode:
        steps = apply_order(plan.items)
        if steps:
            mount_bin = module.get_bin_path("mount", required=True)
            umount_bin = module.get_bin_path("umount", required=True)
        down: set[str] = set()  # mount points that failed to (re)mount: nothing below them is mounted
        probes: dict[str, str | None] = {}  # NFS server -> why it is unreachable (None: it answers)
        for step, item in steps:
            path = item.spec.path
            if item.error:
                continue  # its unmount failed: the remount's mount is not attempted
            if step == "unmount":
                for attempt in range(item.unmounts):  # one umount per mount stacked on the path
                    rc, out, err = module.run_command([umount_bin, path])
                    if rc != 0:
                        stacked = (
                            f" (mount {attempt + 1} of {item.unmounts} stacked there)" if item.unmounts > 1 else ""
                        )
                        item.error = f"{path}: umount failed{stacked} (rc={rc}): {(err or out).strip()}"
                        if item.live == "remount":
                            down.add(path)  # the old mount stays: mount nothing new on or below it
                        break
                else:
                    done.append(item)
                continue
            parent = next((d for d in sorted(down) if path.startswith(d + "/")), None)
            if parent:
                item.error = f"{path}: not mounted because {parent} (which holds it) failed"
                down.add(path)
                continue
            try:
                make_dirs(path)
            except OSError as exc:
                item.error = f"{path}: cannot make the mount point: {exc}"
                down.add(path)
                continue
            server = nfs_server(item.spec)
            if server and server not in probes:
                probes[server] = probe_nfs(server)
            if server and probes[server]:
                item.error = (
                    f"{path}: NFS server {server} is unreachable from this host "
                    f"(tcp/{NFS_PORT}: {probes[server]}); not mounted"
                )
                down.add(path)
                continue
            rc, out, err = module.run_command(mount_argv(item.spec, mount_bin))
            if rc != 0:
                item.error = f"{path}: mount failed (rc={rc}): {(err or out).strip()}"
                down.add(path)
            else:
                done.append(item)
        changed = plan.fstab_changed or bool(done)
    else:
        changed = plan.changed

    for path in plan.pending_remount:
        module.warn(
            f"mounts: the options of {path} changed in fstab but the live mount keeps the old ones; "
            f"unmount and mount it when it is not in use"
        )
    result = dict(
        changed=changed,
        mounts=[result_entry(p) for p in plan.items],
        pending_remount=plan.pending_remount,
        fstab_changed=plan.fstab_changed,
    )
    if module._diff:
        shown = [p for p in plan.items if p.before or p.after]
        result["diff"] = dict(
            before={p.spec.path: p.before for p in shown},
            after={p.spec.path: p.after for p in shown},
        )
    errors = [p.error for p in plan.items if p.error]
    if errors:
        module.fail_json(msg=f"{len(errors)} mount(s) failed: " + "; ".join(errors), errors=errors, **result)
    module.exit_json(**result)


if __name__ == "__main__":
    main()
