# Copyright: (c) 2026, GPU Lab Fleet maintainers
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Filters exposing the user model (plugins/module_utils/usermodel.py) to playbooks and roles.

Each filter is documented in its own sidecar file next to this one (plugins/filter/NAME.yml).
"""

from __future__ import annotations

from ansible.errors import AnsibleFilterError

from ansible_collections.gpulab.fleet.plugins.module_utils import packages, storage_paths, usermodel, validation


def _model_call(func, *args, **kwargs):
    """Run a model function, turning its error (every problem, one per line) into a filter error."""
    try:
        return func(*args, **kwargs)
    except usermodel.FleetModelError as exc:
        raise AnsibleFilterError(str(exc)) from None


def _flag(value, name):
    flag = usermodel.parse_bool(value)
    if flag is None:
        raise AnsibleFilterError(f"{name}: {value!r} is not a boolean")
    return flag


def fleet_users(
    users,
    defaults=None,
    uid_base=None,
    port_base=None,
    ports_per_user=None,
    reserved_ports=None,
    admin_ssh_port=None,
    hosts=None,
    gpu_facts=None,
):
    settings = {
        "uid_base": uid_base,
        "port_base": port_base,
        "ports_per_user": ports_per_user,
        "reserved_ports": reserved_ports,
        "admin_ssh_port": admin_ssh_port,
    }
    return _model_call(
        usermodel.require_valid,
        users,
        defaults,
        settings,
        hosts=None if hosts is None else list(hosts),
        gpu_facts=gpu_facts,
    )


def fleet_user_port_range(users):
    return _model_call(usermodel.user_port_range, list(users or []))


def fleet_purge_problems(items):
    return usermodel.purge_problems(list(items))


def fleet_host_users(users, host):
    return _model_call(usermodel.host_users, users, host)


def fleet_workstations(users, host):
    return _model_call(usermodel.workstation_items, users, host)


def fleet_ports(users, host, addresses=None):
    return _model_call(usermodel.port_maps, users, host, addresses)


def fleet_home_datasets(users, purge=False):
    return _model_call(usermodel.home_datasets, users, _flag(purge, "purge"))


def fleet_ldap_users(users, purge=False):
    return _model_call(usermodel.ldap_users, users, _flag(purge, "purge"))


def fleet_storage_users(users, held=None):
    return _model_call(usermodel.storage_users, users, list(held or []))


def fleet_held_leavers(users, passed_hosts=None):
    return _model_call(usermodel.held_leavers, users, list(passed_hosts or []))


def fleet_directory_users(users):
    return _model_call(usermodel.directory_users, users)


def fleet_ssh_config(users, addresses=None, lab="lab"):
    return _model_call(usermodel.ssh_configs, users, lab=lab, addresses=addresses)


def fleet_workstation_storage(
    users, host, nfs_server, export_root, home_root, shared_root, options, shared, processes=0
):
    return _model_call(
        storage_paths.workstation_storage,
        users,
        host,
        nfs_server=nfs_server,
        export_root=export_root,
        home_root=home_root,
        shared_root=shared_root,
        options=options,
        shared=list(shared),
        processes=int(processes),
    )


def fleet_shared_mounts(shared, server, export_root, root, options):
    return _model_call(
        storage_paths.shared_mounts, list(shared), server=server, export_root=export_root, root=root, options=options
    )


def fleet_exported_paths(users, shared, pool):
    return _model_call(storage_paths.exported_paths, list(users), list(shared), pool)


def fleet_home_dataset_calls(users, mode, properties, quota):
    return _model_call(
        storage_paths.home_dataset_calls, list(users), mode=mode, properties=dict(properties), quota=quota
    )


def fleet_missing_packages(dpkg_query_output, wanted):
    return packages.missing(str(dpkg_query_output), list(wanted))


def fleet_secret_problem(value):
    """'' when value can serve as a password, else why not (unset, the example's placeholder)."""
    return validation.secret_problem(value) or ""


class FilterModule:
    def filters(self):
        return {
            "fleet_users": fleet_users,
            "fleet_host_users": fleet_host_users,
            "fleet_workstations": fleet_workstations,
            "fleet_ports": fleet_ports,
            "fleet_home_datasets": fleet_home_datasets,
            "fleet_ldap_users": fleet_ldap_users,
            "fleet_storage_users": fleet_storage_users,
            "fleet_held_leavers": fleet_held_leavers,
            "fleet_directory_users": fleet_directory_users,
            "fleet_ssh_config": fleet_ssh_config,
            "fleet_purge_problems": fleet_purge_problems,
            "fleet_user_port_range": fleet_user_port_range,
            "fleet_workstation_storage": fleet_workstation_storage,
            "fleet_shared_mounts": fleet_shared_mounts,
            "fleet_exported_paths": fleet_exported_paths,
            "fleet_home_dataset_calls": fleet_home_dataset_calls,
            "fleet_missing_packages": fleet_missing_packages,
            "fleet_secret_problem": fleet_secret_problem,
        }
