# Copyright: (c) 2026, GPU Lab Fleet maintainers
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Where the homes and shared datasets live: the storage server's exports, each GPU host's NFS
mounts, and the disks of the containers. One place for the paths the three roles must agree on.

Pure Python (no Ansible import), used by the fleet filters (plugins/filter/fleet.py). The storage
server exports POOL/fleet/home/NAME and POOL/fleet/shared/NAME; a GPU host with an NFS server mounts
them at HOME_ROOT/NAME and SHARED_ROOT/NAME, each home on its own mount (docs/dev/lab.md: LXD's lstat
of a disk's source then needs no permission on the server); a GPU host without one (the storage
server itself) uses the datasets in place under EXPORT_ROOT.
"""

from __future__ import annotations

from ansible_collections.gpulab.fleet.plugins.module_utils import usermodel


def is_present(item: dict, what: str) -> bool:
    """True for state present (the default), False for absent; any other state is an error naming the item."""
    state = item.get("state") or "present"
    if state not in ("present", "absent"):
        raise usermodel.FleetModelError([f"{what} {item.get('name')}: state: {state!r} is not present or absent"])
    return state == "present"


def _present_names(items: list[dict], what: str) -> list[str]:
    return [item["name"] for item in items if is_present(item, what)]


def exported_paths(users: list[dict], shared: list[dict], pool: str) -> list[str]:
    """The storage server's NFS export paths: the present users' homes, then the present shared datasets
    (storage_server_users and storage_server_shared_datasets items; absent ones are not exported)."""
    homes = [f"/{pool}/fleet/home/{name}" for name in _present_names(users, "user")]
    return homes + [f"/{pool}/fleet/shared/{name}" for name in _present_names(shared, "shared dataset")]


def home_dataset_calls(users: list[dict], *, mode: str, properties: dict, quota: str) -> dict[str, list[dict]]:
    """The storage server's two zfs_datasets calls for the homes: `keep` (users without purge; absent
    ones are archived) and `purge` (purge: true, destroyed). quota: for users without their own."""
    calls: dict[str, list[dict]] = {"keep": [], "purge": []}
    for user in users:
        is_present(user, "user")
        calls["purge" if usermodel.parse_bool(user.get("purge") or False) else "keep"].append(
            {
                "name": user["name"],
                "state": user.get("state") or "present",
                "owner": user["uid"],
                "group": user.get("gid") or user["uid"],
                "mode": mode,
                "properties": {**properties, **usermodel.home_quota_properties(user.get("quota") or quota)},
            }
        )
    return calls


def shared_mounts(shared: list[dict], *, server: str, export_root: str, root: str, options: str) -> list[dict]:
    """A GPU host's gpulab.fleet.mounts items for the shared datasets: present ones mounted from the
    NFS server at ROOT/NAME, absent ones unmounted."""
    mounts = []
    for item in shared:
        path = f"{root}/{item['name']}"
        if is_present(item, "shared dataset"):
            mounts.append(
                {"path": path, "src": f"{server}:{export_root}/shared/{item['name']}", "fstype": "nfs", "opts": options}
            )
        else:
            mounts.append({"path": path, "state": "absent"})
    return mounts


def workstation_storage(
    users: list[dict],
    host: str,
    *,
    nfs_server: str,
    export_root: str,
    home_root: str,
    shared_root: str,
    options: str,
    shared: list[dict],
    processes: int = 0,
) -> dict[str, list]:
    """What the workstations role of one GPU host passes to its modules.

    - home_mounts / gone_mounts: mounts items for the NFS homes of the host's present users / of its
      absent users and the users placed on other hosts (empty without an NFS server: the homes are in
      place);
    - elsewhere: the names of the users placed on other hosts (lxd_workstations archives a managed
      container of theirs left here, e.g. after a change of host);
    - lxd_mounts: the paths LXD must wait for at boot (those homes and the present shared datasets);
    - workstations: lxd_workstations items (usermodel.workstation_items) with the home and the present
      shared datasets (read-only) as disks, and the process limit when processes > 0;
    - leaving: the items of the host's absent users, which the leavers' pass (playbooks/leavers.yml)
      archives, with `elsewhere`, before the storage server touches their homes.
    """
    nfs = bool(nfs_server)
    host_users = usermodel.host_users(users, host)
    present = [u["name"] for u in host_users if u["state"] != "absent"]
    elsewhere = sorted(u["name"] for u in usermodel.users_elsewhere(users, host))
    gone = [u["name"] for u in host_users if u["state"] == "absent"] + elsewhere
    shared_names = _present_names(shared, "shared dataset")
    home_parent = home_root if nfs else f"{export_root}/home"
    shared_parent = shared_root if nfs else f"{export_root}/shared"
    shared_disks = [
        {
            "name": "shared-" + name.replace("/", "-"),
            "source": f"{shared_parent}/{name}",
            "path": f"/shared/{name}",
            "readonly": True,
        }
        for name in shared_names
    ]
    items = []
    for ws in usermodel.workstation_items(users, host):
        limits = {**ws["limits"], **({"processes": processes} if processes > 0 else {})}
        home = {"name": "home", "source": f"{home_parent}/{ws['name']}", "path": f"/home/{ws['name']}"}
        items.append({**ws, "limits": limits, "disks": [home, *shared_disks]})
    home_mounts = [
        {
            "path": f"{home_root}/{name}",
            "src": f"{nfs_server}:{export_root}/home/{name}",
            "fstype": "nfs",
            "opts": options,
        }
        for name in (present if nfs else [])
    ]
    return {
        "home_mounts": home_mounts,
        "gone_mounts": [{"path": f"{home_root}/{name}", "state": "absent"} for name in (gone if nfs else [])],
        "lxd_mounts": [m["path"] for m in home_mounts]
        + ([f"{shared_root}/{name}" for name in shared_names] if nfs else []),
        "workstations": items,
        "leaving": [ws for ws in items if ws["state"] == "absent"],
        "elsewhere": elsewhere,
    }
