# Copyright: (c) 2026, GPU Lab Fleet maintainers
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Controller-side check of the whole user model before any host is touched.

Everything comes from the task args, else the fleet_* variables, else the built-in defaults; the
inventory (groups) and the hosts' GPU facts (hostvars[host].gpulab_gpus) come from task vars.
Nothing runs on a target host, so check mode needs no special handling.
"""

from __future__ import annotations

from ansible.errors import AnsibleError
from ansible.plugins.action import ActionBase

from ansible_collections.gpulab.fleet.plugins.module_utils import usermodel, validation

# option -> the inventory variable it falls back to
VAR_OF_OPTION = {
    "users": "fleet_users",
    "user_defaults": "fleet_user_defaults",
    "uid_base": "fleet_uid_base",
    "port_base": "fleet_port_base",
    "ports_per_user": "fleet_ports_per_user",
    "reserved_ports": "fleet_reserved_ports",
    "admin_ssh_port": "fleet_admin_ssh_port",
    "gpu_hosts": "fleet_gpu_hosts",
    "gpu_group": "fleet_gpu_group",
}
SETTINGS = ("uid_base", "port_base", "ports_per_user", "reserved_ports", "admin_ssh_port")
GPU_FACTS_VAR = "gpulab_gpus"
# The passwords the roles need, read on each host of their group when it needs them: a placeholder left
# from inventories/example or a vault file that is missing stops the run here, before any host is touched.
SECRETS = (("directory", "directory_admin_pw", lambda read: read("directory_mode") in (None, "deploy")),)
DEFAULT_GPU_GROUP = "gpu_hosts"

ARGUMENT_SPEC = {
    "users": {"type": "list", "elements": "raw"},
    "user_defaults": {"type": "dict"},
    "uid_base": {"type": "int"},
    "port_base": {"type": "int"},
    "ports_per_user": {"type": "int"},
    "reserved_ports": {"type": "list", "elements": "raw"},
    "admin_ssh_port": {"type": "int"},
    "gpu_hosts": {"type": "list", "elements": "str"},
    "gpu_group": {"type": "str"},
    "gpu_facts": {"type": "dict"},
}


def _plain(value):
    """Tagged/lazy containers from the templating layer -> plain dicts and lists."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, bool) or value is None:
        return value
    if isinstance(value, int):
        return int(value)
    if isinstance(value, float):
        return float(value)
    if isinstance(value, str):
        return str(value)
    return value


class ActionModule(ActionBase):
    _supports_check_mode = True
    _supports_async = False
    TRANSFERS_FILES = False

    def run(self, tmp=None, task_vars=None):
        result = super().run(tmp, task_vars)
        task_vars = task_vars or {}
        _validation, args = self.validate_argument_spec(argument_spec=ARGUMENT_SPEC)

        def option(name):
            if args.get(name) is not None:
                return _plain(args[name])
            var = VAR_OF_OPTION[name]
            if var in task_vars:
                return _plain(self._templar.template(task_vars[var]))
            return None

        groups = task_vars.get("groups", {})
        gpu_hosts = option("gpu_hosts")
        hosts_label = "the inventory"
        if gpu_hosts is None:
            group = option("gpu_group") or DEFAULT_GPU_GROUP
            if group in groups:
                gpu_hosts, hosts_label = list(groups[group]), f"inventory group {group!r}"
            else:
                gpu_hosts = list(groups.get("all", []))
        else:
            hosts_label = "gpu_hosts"

        gpu_facts = _plain(args["gpu_facts"]) if args.get("gpu_facts") is not None else self._gpu_facts(task_vars)

        model = usermodel.build_model(
            option("users"),
            option("user_defaults"),
            {key: option(key) for key in SETTINGS},
            hosts=gpu_hosts,
            gpu_facts=gpu_facts,
            hosts_label=hosts_label,
        )
        result["changed"] = False
        if model.warnings:
            result["warnings"] = model.warnings
        problems = model.problems + self._secret_problems(task_vars)
        if problems:
            result["failed"] = True
            result["problems"] = problems
            result["msg"] = f"the lab's inventory has {len(problems)} problem(s):\n" + "\n".join(problems)
            return result
        result["ansible_facts"] = {"fleet_users_normalized": model.users}
        result["ports"] = usermodel.ports_summary(model.users)
        result["msg"] = f"{len(model.users)} user(s) valid"
        return result

    @staticmethod
    def _secret_problems(task_vars) -> list[str]:
        hostvars, groups = task_vars.get("hostvars", {}), task_vars.get("groups", {})
        problems = []
        for group, var, needed in SECRETS:
            for host in groups.get(group, []):
                def read(name, host=host):
                    return hostvars[host].get(name)
                try:
                    if not needed(read):
                        continue
                    reason = validation.secret_problem(read(var))
                except AnsibleError as exc:  # e.g. "{{ vault_... }}" with the vault file missing
                    reason = f"cannot be read ({str(exc).splitlines()[0]})"
                if reason:
                    problems.append(
                        f"{host} (group {group}): {var} {reason}; set the real one in a vault file such as"
                        f" group_vars/{group}/vault.yml, encrypted (docs/admin-guide.md, 'Secrets')"
                    )
        return problems

    @staticmethod
    def _gpu_facts(task_vars) -> dict:
        """host -> its gpulab_gpus facts, for the hosts that have them (others: unknown, not checked)."""
        hostvars = task_vars.get("hostvars", {})
        facts = {}
        for host in task_vars.get("groups", {}).get("all", []):
            try:
                gpus = hostvars[host].get(GPU_FACTS_VAR)
            except (KeyError, AttributeError):
                continue
            if gpus is not None:
                facts[host] = _plain(gpus)
        return facts
