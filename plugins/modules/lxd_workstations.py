#!/usr/bin/python
# Copyright: (c) 2026, GPU Lab Fleet maintainers
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
module: lxd_workstations
short_description: The set of personal LXD workstation containers on one GPU host, as one desired list
version_added: 0.1.0
author: GPU Lab Fleet maintainers (@gpulab)
description:
  - Makes the lab members' system containers on one host match a list, in one call, through the
    host's LXD (pylxd; unix socket by default, or an HTTPS endpoint).
  - Reads all instances once, validates the whole list and plans, then applies. Independent
    containers are started, stopped, updated and archived concurrently (LXD background operations);
    new containers are created one after another (about 0.3 s each) because LXD 5.0 can hand two
    concurrently created isolated containers overlapping or invalid id ranges.
  - "Each workstation is an unprivileged container with C(security.idmap.isolated=true) (no two
    containers share host uids) and the user's own uid/gid mapped straight through with
    C(raw.idmap), so files in a shared home keep the same owner inside and outside."
  - "C(security.nesting=true) is always set: on hosts with AppArmor (every stock Debian/Ubuntu server)
    the image's systemd units that use mount namespacing (systemd-networkd and others) otherwise fail
    with status 226/NAMESPACE and the container gets no network."
  - "Managed config keys (limits.cpu, limits.memory, limits.processes, raw.idmap,
    security.idmap.isolated, security.nesting, nvidia.runtime, nvidia.driver.capabilities and the
    C(user.gpulab.*) tags) are compared exactly as strings; volatile.*, image.* and any other key are
    left alone. Managed devices are those named C(gpulab-*) (and C(root) when
    O(workstations[].limits.disk) is set); other devices are left alone. Profiles are set exactly."
  - "An existing instance with a workstation's name that is not tagged C(user.gpulab.managed=true)
    is refused (the module never takes over or archives containers it did not create)."
  - Inside each running workstation (at creation and whenever drift is found) the module keeps the
    user account (uid, gid, shell, supplementary groups), passwordless sudo
    (C(/etc/sudoers.d/gpulab-USER), checked with C(visudo -c)), C(~/.ssh/authorized_keys) with exactly
    the given keys (mode 0600, owned by the user), an sshd drop-in
    (C(/etc/ssh/sshd_config.d/gpulab.conf)) with password, keyboard-interactive and root logins
    disabled, and C(/etc/hostname) = the container name. Drift is detected with one read-only command
    per running container (all run concurrently) that prints a digest of that state; only the parts
    that differ are rewritten. A stopped workstation is provisioned the next time a run starts it.
  - "C(raw.idmap) needs the ids delegated to LXD's user: C(root:UID:1) in /etc/subuid and C(root:GID:1)
    in /etc/subgid on the LXD host (newuidmap reads them at each container start; LXD needs no
    restart). With O(manage_subids=true) missing entries are appended (existing lines are never
    changed or removed); with V(false) a missing entry is an error. Only checked when LXD is reached
    through its local socket."
  - "O(workstations[].state=absent) never deletes: it stops the container, takes a snapshot
    C(gpulab-archive-TIMESTAMP), tags it C(user.gpulab.archived) / C(user.gpulab.archived_from) and
    renames it to C(NAME-archived-YYYYMMDDHHMMSS) (UTC), so the name is free for a new container and
    the data stays. Only O(workstations[].purge=true) deletes the container and all its archives."
  - The whole list is validated before anything changes (names, uids, keys, sizes, GPUs, image
    aliases, profiles); a failure in one container does not stop the others, and the module fails at
    the end naming each failed container with LXD's message.
requirements:
  - pylxd
  - LXD 5.0 or later on the target host
  - "In the image: a POSIX shell, coreutils, passwd (useradd), sudo and openssh-server."
options:
  workstations:
    description:
      - The desired workstations. Instances not listed are left alone.
    type: list
    elements: dict
    required: true
    suboptions:
      name:
        description:
          - Container name. Defaults to O(workstations[].user.name). At most 39 characters (letters,
            digits, '-') so that the archive name fits LXD's limit of 63.
        type: str
      user:
        description:
          - The lab member using the workstation. Required unless O(workstations[].state=absent).
        type: dict
        suboptions:
          name:
            description: Login name (validated like every gpulab user name).
            type: str
          uid:
            description: uid, mapped straight through to the host (1000 or more).
            type: int
          gid:
            description: gid of the user's primary group (named like the user). Defaults to the uid.
            type: int
          groups:
            description: Supplementary groups inside the container (created when missing). Set exactly.
            type: list
            elements: str
            default: []
          shell:
            description: Login shell.
            type: str
            default: /bin/bash
          ssh_keys:
            description: The public keys in C(authorized_keys), exactly (one OpenSSH key per entry).
            type: list
            elements: str
            default: []
      image:
        description: Image alias to create the container from. Defaults to O(image).
        type: str
      profiles:
        description: LXD profiles, in order. Defaults to O(profiles).
        type: list
        elements: str
      limits:
        description: Resource limits. A limit that is not given is not set (and removed if it was).
        type: dict
        suboptions:
          cpu:
            description: A CPU count (V(4)) or a CPU set (V(0-3,8)); C(limits.cpu).
            type: str
          memory:
            description: Memory limit, e.g. V(32G) (binary units); C(limits.memory).
            type: str
          processes:
            description: Maximum number of processes; C(limits.processes).
            type: int
          disk:
            description:
              - Root disk size, e.g. V(100G); sets a C(root) disk device on the container. Enforced by
                quota-capable pools (zfs, btrfs, lvm), not by C(dir).
            type: str
      gpus:
        description:
          - V(none) (default), V(all), or a list of GPU indices, UUIDs (C(GPU-...)) or PCI addresses
            as reported by M(gpulab.fleet.gpu_facts) on this host.
        type: raw
      gpu_mode:
        description: How GPUs are given to this workstation. Defaults to O(gpu_mode).
        type: str
        choices: [lxd, devices]
      disks:
        description: Host paths mounted into the container (the user's home, shared datasets).
        type: list
        elements: dict
        default: []
        suboptions:
          source:
            description: Path on the host.
            type: str
            required: true
          path:
            description: Path inside the container.
            type: str
            required: true
          readonly:
            description: Mount read-only.
            type: bool
            default: false
          name:
            description: Device name suffix (C(gpulab-disk-NAME)); defaults to the path with '/' as '-'.
            type: str
      storage_pool:
        description: Pool of the root disk when O(workstations[].limits.disk) is set; defaults to the profile's.
        type: str
      state:
        description: V(started), V(stopped), or V(absent) (archived, see above).
        type: str
        choices: [started, stopped, absent]
        default: started
      purge:
        description: With V(absent), delete the container and all its archives instead of archiving.
        type: bool
        default: false
  elsewhere:
    description:
      - Names of workstations that live on another host (members placed elsewhere, for instance after an
        admin changed a member's host). A container of that name here that is managed by gpulab is archived
        as with V(absent) (never purged), so a member never keeps a second, forgotten workstation on her old
        host. An unmanaged instance of that name, or none, is left alone.
      - A name may not also be one of O(workstations).
    type: list
    elements: str
    default: []
  unlisted:
    description:
      - What to do with the workstations on this LXD that neither O(workstations) nor O(elsewhere) names
        (managed by gpulab, not archives), typically those of a member deleted from the inventory instead of
        set to O(workstations[].state=absent), whose container would keep running with its network.
      - V(ignore) is the default, right for calls that name only some workstations (the ops playbooks).
        V(warn) lists them in a warning (the workstations role's default, since it names them all).
        V(archive) archives them as with V(absent), never purging.
      - Every call returns them in RV(unlisted).
    type: str
    choices: [ignore, warn, archive]
    default: ignore
  image:
    description: Default image alias for new workstations.
    type: str
  profiles:
    description: Default profiles.
    type: list
    elements: str
    default: [default]
  gpu_mode:
    description:
      - V(lxd) (production) adds one native LXD C(gpu) device per GPU (C(gputype=physical), C(pci=))
        plus C(nvidia.runtime=true) and O(nvidia_driver_capabilities), so the host's driver libraries
        are injected at start and the image needs no driver.
      - V(devices) passes the NVIDIA device nodes as C(unix-char) devices (C(/dev/nvidiaN) of the
        chosen GPUs plus nvidiactl, nvidia-uvm, nvidia-uvm-tools and nvidia-modeset when present under
        O(gpu_device_root)), with the major/minor numbers of the host's nodes and mode 0666; the image
        then needs a user-space driver matching the host's kernel module.
    type: str
    choices: [lxd, devices]
    default: lxd
  nvidia_driver_capabilities:
    description: C(nvidia.driver.capabilities) in V(lxd) mode (e.g. V(compute,utility) or V(all)).
    type: str
    default: compute,utility
  gpu_device_root:
    description: Directory holding the host's NVIDIA device nodes (tests point it at fake nodes).
    type: path
    default: /dev
  proc_root:
    description: procfs root to read NVIDIA GPU information from.
    type: path
    default: /proc
  nvidia_smi:
    description: nvidia-smi command (name on PATH or path); when missing, procfs is used.
    type: str
    default: nvidia-smi
  url:
    description: LXD HTTPS endpoint (e.g. V(https://gpu1:8443)). When unset, O(socket_path) is used.
    type: str
  socket_path:
    description:
      - LXD's unix socket.
      - When it does not exist and no item is present (only leavers, on a host without LXD yet), there is
        no container to archive and the call changes nothing.
    type: path
    default: /var/lib/lxd/unix.socket
  client_cert:
    description: Client certificate for O(url).
    type: path
  client_key:
    description: Key of O(client_cert).
    type: path
  validate_certs:
    description: Verify the server certificate of O(url).
    type: bool
    default: true
  ca_cert:
    description: CA bundle or server certificate to verify O(url) with.
    type: path
  manage_subids:
    description: Append missing C(root:ID:1) lines to /etc/subuid and /etc/subgid (see above).
    type: bool
    default: true
  ipv4_timeout:
    description: Seconds to wait for the IPv4 address of containers started by this run (0 = do not wait).
    type: int
    default: 30
  operation_timeout:
    description: Seconds to wait for one LXD operation (create, start, stop) before reporting it failed.
    type: int
    default: 600
  exec_timeout:
    description:
      - Seconds one command inside a workstation (the read of its state, its provisioning) may run.
      - It runs the container's own programs, which root in there may have replaced. Past this time, or
        once it prints more than 1 MiB, its processes are killed (on a local LXD, through the host's
        C(/proc)), its logs removed, and that workstation alone fails (RV(failed_workstations)).
    type: int
    default: 30
notes:
  - Check mode computes the plan and runs the read-only digest in running containers; it changes nothing.
  - "C(~/.ssh) is read and written as the user (C(setpriv)): to an NFS server, root in the container
    is just another uid and cannot enter a 0700 home. Only when that fails (for example a local home
    where root took her C(.ssh)) is it repaired as root."
  - "With V(lxd) GPU mode a container only starts on a host with the NVIDIA driver and
    nvidia-container-cli; tests therefore check that mode's config on stopped containers."
  - GPUs with MIG enabled are passed as whole GPUs; MIG instances are not managed.
  - "GPU facts and /etc/subuid are read on the machine that runs the module: with O(url) pointing to
    another host, GPU requests are resolved against the wrong host and subids are not checked, so run
    the module on the GPU host itself (the default, local socket)."
seealso:
  - module: gpulab.fleet.gpu_facts
"""

EXAMPLES = r"""
- name: Workstations of the lab on this GPU host
  gpulab.fleet.lxd_workstations:
    image: gpulab/debian12
    workstations:
      - user:
          name: alice
          uid: 10001
          ssh_keys: ["ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIIf1xR6c0kDq0B1Xgq3oGm7ew9Jb7rW2Xz3fU8p5Hh5R alice@lab"]
        limits: {cpu: 8, memory: 64G, processes: 4096, disk: 200G}
        gpus: [0, 1]
        disks:
          - {source: /srv/homes/alice, path: /home/alice}
          - {source: /srv/datasets, path: /data, readonly: true}
      - user:
          name: bob
          uid: 10002
          ssh_keys: ["{{ lookup('ansible.builtin.file', 'keys/bob.pub') }}"]
        gpus: ["GPU-9221d5d1-b60b-a624-bf14-0a1819cfda3b"]
        state: stopped
      - name: carol
        state: absent          # archived: stopped, snapshotted, renamed carol-archived-...
      - name: dave
        state: absent
        purge: true            # deleted, with all of dave's archives
  register: ws

- name: Show the addresses
  ansible.builtin.debug:
    msg: "{{ ws.workstations | map(attribute='ipv4') }}"
"""

RETURN = r"""
workstations:
  description: One entry per requested workstation, in input order.
  returned: always
  type: list
  elements: dict
  contains:
    name:
      description: Container name.
      type: str
    state:
      description: "State after the run (in check mode: the planned one): started, stopped, absent, frozen."
      type: str
    ipv4:
      description: Global IPv4 address of eth0 when running, else null.
      type: str
    actions:
      description:
        - "What was done (or would be, in check mode): create, update, stop, start, restart, unfreeze,
          archive, delete, provision."
      type: list
      elements: str
    provisioned:
      description: "Sections fixed (check mode: found drifted) inside: account, keys, sudoers, sshd, hostname."
      type: list
      elements: str
    archived_as:
      description: Archive instance name when the run archived the container.
      type: str
    error:
      description: LXD's (or the provisioning script's) message when this container failed.
      type: str
  sample:
    - name: alice
      state: started
      ipv4: 10.93.0.12
      actions: [create, start, provision]
      provisioned: [account, keys, sudoers, sshd, hostname]
subids_added:
  description: Lines appended to /etc/subuid and /etc/subgid (in check mode, the lines that would be).
  returned: always
  type: dict
  sample: {subuid: ["root:10001:1"], subgid: ["root:10001:1"]}
failed_workstations:
  description:
    - The workstations whose own step failed (LXD, the digest or the provisioning inside; each has its
      C(error) in RV(workstations)); the others were converged. Empty when the input was refused.
  returned: always
  type: list
  elements: str
  sample: [bob]
unlisted:
  description:
    - Workstations on this LXD that no O(workstations) or O(elsewhere) item names (see O(unlisted)); with
      O(unlisted=archive) they are also in RV(workstations), archived.
  returned: always
  type: list
  elements: str
  sample: [dave]
"""

import fcntl
import os
import time
from datetime import UTC, datetime

from ansible.module_utils.basic import AnsibleModule, missing_required_lib

from ansible_collections.gpulab.fleet.plugins.module_utils import workstations as wsplan
from ansible_collections.gpulab.fleet.plugins.module_utils.gpu import GpuError, gather, resolve_request
from ansible_collections.gpulab.fleet.plugins.module_utils.lxd import (
    HAS_PYLXD,
    PYLXD_IMPORT_ERROR,
    Lxd,
    LxdError,
    ipv4_of,
)

SUBID_FILES = {"subuid": "/etc/subuid", "subgid": "/etc/subgid"}


def argument_spec() -> dict:
    user = dict(
        name=dict(type="str"),
        uid=dict(type="int"),
        gid=dict(type="int"),
        groups=dict(type="list", elements="str", default=[]),
        shell=dict(type="str", default="/bin/bash"),
        ssh_keys=dict(type="list", elements="str", default=[], no_log=False),
    )
    limits = dict(cpu=dict(type="str"), memory=dict(type="str"), processes=dict(type="int"), disk=dict(type="str"))
    disk = dict(
        source=dict(type="str", required=True),
        path=dict(type="str", required=True),
        readonly=dict(type="bool", default=False),
        name=dict(type="str"),
    )
    item = dict(
        name=dict(type="str"),
        user=dict(type="dict", options=user),
        image=dict(type="str"),
        profiles=dict(type="list", elements="str"),
        limits=dict(type="dict", options=limits),
        gpus=dict(type="raw"),
        gpu_mode=dict(type="str", choices=["lxd", "devices"]),
        disks=dict(type="list", elements="dict", options=disk, default=[]),
        storage_pool=dict(type="str"),
        state=dict(type="str", choices=["started", "stopped", "absent"], default="started"),
        purge=dict(type="bool", default=False),
    )
    return dict(
        workstations=dict(type="list", elements="dict", options=item, required=True),
        elsewhere=dict(type="list", elements="str", default=[]),
        unlisted=dict(type="str", choices=["ignore", "warn", "archive"], default="ignore"),
        image=dict(type="str"),
        profiles=dict(type="list", elements="str", default=["default"]),
        gpu_mode=dict(type="str", choices=["lxd", "devices"], default="lxd"),
        nvidia_driver_capabilities=dict(type="str", default="compute,utility"),
        gpu_device_root=dict(type="path", default="/dev"),
        proc_root=dict(type="path", default="/proc"),
        nvidia_smi=dict(type="str", default="nvidia-smi"),
        url=dict(type="str"),
        socket_path=dict(type="path", default="/var/lib/lxd/unix.socket"),
        client_cert=dict(type="path"),
        client_key=dict(type="path", no_log=False),
        validate_certs=dict(type="bool", default=True),
        ca_cert=dict(type="path"),
        manage_subids=dict(type="bool", default=True),
        ipv4_timeout=dict(type="int", default=30),
        operation_timeout=dict(type="int", default=600),
        exec_timeout=dict(type="int", default=30),
    )


def wants_gpus(ws: dict) -> bool:
    g = ws.get("gpus")
    return not (g is None or g == [] or (isinstance(g, str) and g.lower() == "none"))


def read_subids() -> dict[str, str]:
    out = {}
    for kind, path in SUBID_FILES.items():
        try:
            with open(path, encoding="utf-8") as fh:
                out[kind] = fh.read()
        except FileNotFoundError:
            out[kind] = ""
    return out


def append_subids(missing: dict[str, list[int]]) -> dict[str, list[str]]:
    """Append root:ID:1 lines under an exclusive lock; re-reads so concurrent writers never duplicate."""
    added: dict[str, list[str]] = {"subuid": [], "subgid": []}
    for kind, idents in missing.items():
        if not idents:
            continue
        with open(SUBID_FILES[kind], "a+", encoding="utf-8") as fh:
            fcntl.flock(fh, fcntl.LOCK_EX)
            fh.seek(0)
            text = fh.read()
            lines = [f"root:{i}:1" for i in wsplan.missing_subids(text, idents)]
            if lines:
                fh.write(("" if not text or text.endswith("\n") else "\n") + "\n".join(lines) + "\n")
                added[kind] = lines
    return added


class Run:
    """One module run: the plan entries, their per-container results, and the apply phases."""

    def __init__(self, lxd: Lxd, entries: list[dict], workstations: dict[str, dict], instances: dict):
        self.lxd = lxd
        self.entries = entries
        self.ws = workstations
        self.instances = instances
        self.errors: dict[str, str] = {}
        self.provisioned: dict[str, list[str]] = {}
        self.drift: dict[str, list[str]] = {}
        self.started: set[str] = set()

    def live(self, action: str) -> list[dict]:
        return [e for e in self.entries if action in e["actions"] and e["name"] not in self.errors]

    def phase(self, calls: dict, sequential: bool = False) -> None:
        for name, msg in self.lxd.run_all(calls, sequential).items():
            self.errors.setdefault(name, msg)

    def apply(self) -> None:
        self.delete()
        stops = {
            e["name"]: ("put", f"instances/{e['name']}/state", {"action": "stop", "timeout": 30})
            for e in self.live("stop")
        }
        failed = self.lxd.run_all(stops)
        # A container that ignores the clean shutdown request is stopped forcibly.
        self.phase({n: ("put", f"instances/{n}/state", {"action": "stop", "force": True}) for n in failed})
        self.phase({e["name"]: ("put", f"instances/{e['name']}", self.put_body(e)) for e in self.live("update")})
        # Created one at a time: LXD 5.0 allocates isolated id ranges counting a container that is still
        # being created as base 0, so concurrent creates can get a range outside /etc/subuid (start then
        # fails: newuidmap "not allowed"). Starts, stops and the rest stay concurrent.
        self.phase({e["name"]: ("post", "instances", e["create"]) for e in self.live("create")}, sequential=True)
        self.archive()
        starts = {}
        for action, verb in (("start", "start"), ("restart", "restart"), ("unfreeze", "unfreeze")):
            for e in self.live(action):
                starts[e["name"]] = ("put", f"instances/{e['name']}/state", {"action": verb, "timeout": 30})
        self.phase(starts)
        self.started = {n for n in starts if n not in self.errors}

    def put_body(self, entry: dict) -> dict:
        inst = self.instances[entry["name"]]
        return {
            "architecture": inst.get("architecture"),
            "config": entry["config"],
            "devices": entry["devices"],
            "profiles": entry["profiles"],
            "ephemeral": inst.get("ephemeral", False),
            "description": inst.get("description", ""),
        }

    def delete(self) -> None:
        doomed = {n: e["name"] for e in self.live("delete") for n in e["delete"]}
        running = {n for n in doomed if wsplan.status_of(self.instances.get(n)) != "stopped"}
        stop_errors = self.lxd.run_all(
            {n: ("put", f"instances/{n}/state", {"action": "stop", "force": True}) for n in running}
        )
        calls = {n: ("delete", f"instances/{n}", None) for n in doomed if n not in stop_errors}
        for n, msg in {**stop_errors, **self.lxd.run_all(calls)}.items():
            self.errors.setdefault(doomed[n], f"{n}: {msg}")

    def archive(self) -> None:
        todo = self.live("archive")
        self.phase(
            {e["name"]: ("post", f"instances/{e['name']}/snapshots", {"name": e["archive"]["snapshot"]}) for e in todo}
        )
        todo = [e for e in todo if e["name"] not in self.errors]
        self.phase({e["name"]: ("patch", f"instances/{e['name']}", {"config": e["archive"]["tags"]}) for e in todo})
        todo = [e for e in todo if e["name"] not in self.errors]
        self.phase({e["name"]: ("post", f"instances/{e['name']}", {"name": e["archive"]["name"]}) for e in todo})

    def inside(self, check_mode: bool, running: set[str]) -> None:
        """Digest every running started workstation at once; provision (not in check mode) what drifted."""
        names = [
            e["name"]
            for e in self.entries
            if e["check_inside"] and e["name"] not in self.errors and e["name"] in running
        ]
        digests = self.lxd.exec_all(
            {n: (n, ["sh", "-c", wsplan.DIGEST_SCRIPT, "digest", self.ws[n]["user"]["name"]], None) for n in names}
        )
        for n, res in digests.items():
            if isinstance(res, LxdError):
                self.errors[n] = f"digest: {res}"
            elif res[0] != 0:
                self.errors[n] = f"digest exited {res[0]}: {res[2].strip()[:300]}"
            else:
                sections = wsplan.drift(self.ws[n], wsplan.parse_digest(res[1]))
                if sections:
                    self.drift[n] = sections
        if check_mode or not self.drift:
            return
        results = self.lxd.exec_all(
            {
                n: (n, ["sh", "-c", wsplan.PROVISION_SCRIPT], wsplan.provision_env(self.ws[n], s))
                for n, s in self.drift.items()
            }
        )
        for n, res in results.items():
            if isinstance(res, LxdError):
                self.errors[n] = f"provision: {res}"
            elif res[0] != 0:
                self.errors[n] = f"provision exited {res[0]}: {(res[2] or res[1]).strip()[:300]}"
            else:
                self.provisioned[n] = self.drift[n]


def wait_ipv4(lxd: Lxd, names: set[str], timeout: int) -> dict[str, dict]:
    """Poll the states of `names` until each has a global IPv4 (or stopped running) or the timeout."""
    states: dict[str, dict] = {}
    pending = set(names)
    deadline = time.monotonic() + timeout
    while pending:
        for n in sorted(pending):
            try:
                states[n] = lxd.state(n)
            except LxdError:
                pending.discard(n)
                continue
            if ipv4_of(states[n]) or str(states[n].get("status", "")).lower() != "running":
                pending.discard(n)
        if not pending or time.monotonic() >= deadline:
            break
        time.sleep(0.3)
    return states


def main() -> None:
    module = AnsibleModule(argument_spec=argument_spec(), supports_check_mode=True)
    if not HAS_PYLXD:
        module.fail_json(msg=missing_required_lib("pylxd"), exception=str(PYLXD_IMPORT_ERROR))
    p = module.params
    empty = dict(changed=False, workstations=[], subids_added={"subuid": [], "subgid": []}, unlisted=[],
                 failed_workstations=[])  # fmt: skip

    defaults = {"image": p["image"], "profiles": p["profiles"], "gpu_mode": p["gpu_mode"]}
    workstations, problems = wsplan.validate(p["workstations"], defaults)
    away, away_problems = wsplan.validate([{"name": n, "state": "absent"} for n in p["elsewhere"]], defaults)
    listed = {ws["name"] for ws in workstations}
    problems += [f"elsewhere: {msg}" for msg in away_problems]
    problems += [f"elsewhere: {ws['name']} is also one of workstations" for ws in away if ws["name"] in listed]
    present = [ws for ws in workstations if ws["state"] != "absent"]

    selected: dict[str, list[dict]] = {ws["name"]: [] for ws in present}
    facts = {"gpus": [], "control_devices": []}
    if any(wants_gpus(ws) for ws in present):
        facts = gather(p["nvidia_smi"], p["proc_root"], p["gpu_device_root"])
        for ws in present:
            try:
                selected[ws["name"]] = resolve_request(ws["gpus"], facts["gpus"], ws["name"])
            except GpuError as exc:
                problems.append(str(exc))
    if problems:
        module.fail_json(msg="invalid input: " + "; ".join(problems), problems=problems, **empty)

    if not present and not p["url"] and not os.path.exists(p["socket_path"]):
        # Only leavers to archive, and no LXD here (a host not yet set up): no container can exist.
        module.exit_json(**empty)

    try:
        verify = p["ca_cert"] or p["validate_certs"]
        lxd = Lxd(p["url"], p["socket_path"], p["client_cert"], p["client_key"], verify,
                  operation_timeout=p["operation_timeout"], exec_timeout=p["exec_timeout"])  # fmt: skip
        instances = lxd.instances()
        profiles = lxd.profiles()
        aliases = lxd.image_aliases() if present else set()
    except LxdError as exc:
        module.fail_json(msg=str(exc), **empty)

    desired = {}
    for ws in present:
        label = f"workstation {ws['name']}"
        if ws["image"] not in aliases and module.check_mode and ws["name"] not in instances:
            # check mode on a new host: the image import before this task only said it would run
            module.warn(f"{label}: image alias {ws['image']!r} does not exist yet: check mode shows it created")
        elif ws["image"] not in aliases:
            problems.append(f"{label}: image: alias {ws['image']!r} does not exist on this LXD")
        unknown = [pr for pr in ws["profiles"] if pr not in profiles]
        if unknown:
            problems.append(f"{label}: profiles: {', '.join(unknown)} do not exist on this LXD")
        pool = ws["storage_pool"] or wsplan.root_pool(instances.get(ws["name"]), profiles, ws["profiles"])
        try:
            desired[ws["name"]] = {
                "config": wsplan.desired_config(ws, selected[ws["name"]], p["nvidia_driver_capabilities"]),
                "devices": wsplan.desired_devices(ws, selected[ws["name"]], facts["control_devices"], pool),
                "profiles": ws["profiles"],
            }
        except wsplan.PlanError as exc:
            problems += exc.problems

    missing = {"subuid": [], "subgid": []}
    if lxd.local and present:
        texts = read_subids()
        missing["subuid"] = wsplan.missing_subids(texts["subuid"], [ws["user"]["uid"] for ws in present])
        missing["subgid"] = wsplan.missing_subids(texts["subgid"], [ws["user"]["gid"] for ws in present])
        if not p["manage_subids"]:
            for kind, idents in missing.items():
                for i in idents:
                    problems.append(f"/etc/{kind}: no root:{i}:1 delegation (needed by raw.idmap; manage_subids=false)")
    if problems:
        module.fail_json(msg="invalid input: " + "; ".join(problems), problems=problems, **empty)

    workstations += wsplan.placed_elsewhere(away, instances)
    strays = wsplan.unlisted(instances, listed | {ws["name"] for ws in away})
    if strays and p["unlisted"] == "archive":
        workstations += wsplan.validate([{"name": n, "state": "absent"} for n in strays], defaults)[0]
    elif strays and p["unlisted"] == "warn":
        module.warn(
            f"workstations on this LXD that belong to no listed user: {', '.join(strays)} (still running if they "
            "were; list the user with state: absent to archive hers, or set unlisted: archive)"
        )
    try:
        entries = wsplan.plan(workstations, desired, instances, datetime.now(UTC))
    except wsplan.PlanError as exc:
        module.fail_json(msg="conflicts with LXD: " + str(exc), problems=exc.problems, **empty)

    by_name = {ws["name"]: ws for ws in workstations}
    run = Run(lxd, entries, by_name, instances)
    added = {"subuid": [f"root:{i}:1" for i in missing["subuid"]], "subgid": [f"root:{i}:1" for i in missing["subgid"]]}
    if module.check_mode:
        running = {n for n, i in instances.items() if wsplan.status_of(i) == "started"}
        run.inside(True, running - {e["name"] for e in entries if "restart" in e["actions"]})
    else:
        if any(missing.values()):
            added = append_subids(missing)
        run.apply()
        states = wait_ipv4(lxd, run.started, p["ipv4_timeout"]) if p["ipv4_timeout"] > 0 else {}
        final = lxd.instances() if run.started or any(e["actions"] for e in entries) else instances
        running = {n for n, i in final.items() if wsplan.status_of(i) == "started"}
        run.inside(False, running)
        for n, st in states.items():
            if n in final:
                final[n]["state"] = st
        instances = final

    result_list = []
    for e in entries:
        n = e["name"]
        inst = instances.get(n)
        if module.check_mode:
            status = e["state"] if e["actions"] else wsplan.status_of(instances.get(n))
        else:
            status = wsplan.status_of(instances.get(n))
        actions = list(e["actions"]) + (["provision"] if n in run.drift else [])
        item = {"name": n, "state": status, "ipv4": ipv4_of((inst or {}).get("state")), "actions": actions,
                "provisioned": run.provisioned.get(n, run.drift.get(n, []) if module.check_mode else [])}  # fmt: skip
        if e.get("archive"):
            item["archived_as"] = e["archive"]["name"]
        if n in run.errors:
            item["error"] = run.errors[n]
        result_list.append(item)

    changed = any(r["actions"] for r in result_list) or any(added.values())
    result = dict(changed=changed, workstations=result_list, subids_added=added, unlisted=strays,
                  failed_workstations=sorted(run.errors))  # fmt: skip
    if module._diff:
        before, after = {}, {}
        for e in entries:
            before[e["name"]] = dict(e["before"], inside_drift=run.drift.get(e["name"], []))
            after[e["name"]] = dict(e["after"], inside_drift=[])
        result["diff"] = dict(before=before, after=after)
    if run.errors:
        msgs = [f"{n}: {m}" for n, m in run.errors.items()]
        module.fail_json(msg=f"{len(msgs)} workstation(s) failed: " + "; ".join(msgs), **result)
    module.exit_json(**result)


if __name__ == "__main__":
    main()
