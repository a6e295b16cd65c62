#!/usr/bin/env bash
# `make demo`: the whole demo lab (inventories/demo) on one test VM, then the ssh command that logs
# into alice's workstation from this machine.
#
#   scripts/demo.sh            boot (or reuse) the test VM "demo", converge playbooks/site.yml
#   scripts/demo.sh --local    the quick local-only variant: alice's workstation on this machine's
#                              LXD (playbooks/demo_local.yml; no ZFS, LDAP or port maps)
#
# The VM runs OpenZFS, slapd, LXD and the port maps for real (scripts/testvm/, qemu); it keeps
# running after the demo: scripts/testvm/down.sh demo stops it. Keys and SSH snippets: .build/demo/.
# GPULAB_DEMO_VM names another instance.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
export ANSIBLE_COLLECTIONS_PATH="$root/.build/collections"
playbook="$root/.venv/bin/ansible-playbook"

if [ "${1:-}" = --local ]; then
  bash "$root/scripts/lxd-up.sh"
  exec "$playbook" -i localhost, -c local \
    -e ansible_python_interpreter="$root/.venv/bin/python" "$root/playbooks/demo_local.yml"
fi
[ $# -eq 0 ] || { echo "usage: $0 [--local]" >&2; exit 2; }

vm=${GPULAB_DEMO_VM:-demo}
demo=$root/.build/demo
state=${GPULAB_CACHE:-/var/cache/gpulab-fleet}/run/$vm
mkdir -p "$demo"
chmod 700 "$demo"
say() { printf '[demo +%4ds] %s\n' "$SECONDS" "$*"; }

for user in alice bob; do
  [ -f "$demo/${user}_ed25519" ] || ssh-keygen -q -t ed25519 -N "" -C "$user@demo" -f "$demo/${user}_ed25519"
done
export GPULAB_DEMO_VM=$vm GPULAB_DEMO_KEYS=$demo

say "workstation image (built once, cached)"
GPULAB_IMAGE_TARBALL=$(bash "$root/roles/workstation_image/files/recipe/build.sh")
export GPULAB_IMAGE_TARBALL

# Alice's SSH port on the VM, derived by the collection's own user model (gpulab.fleet.fleet_users).
alice_port=$("$root/.venv/bin/ansible" localhost -i "$root/inventories/demo" -c local -m ansible.builtin.debug -a \
  "msg={{ (fleet_users | gpulab.fleet.fleet_users(fleet_user_defaults | default({}), fleet_uid_base | default(none),
          fleet_port_base | default(none), fleet_ports_per_user | default(none))
          | selectattr('name', 'eq', 'alice') | first).ports.ssh }}" |
  sed -n 's/.*"msg": \([0-9]*\).*/\1/p')
[ -n "$alice_port" ] || { echo "demo: cannot derive alice's port from inventories/demo" >&2; exit 1; }

# Reuse the VM when it answers and forwards alice's port; otherwise boot a fresh one.
forwarded() {
  python3 - "$state/instance.json" "$alice_port" <<'EOF'
import json, sys
inst = json.load(open(sys.argv[1]))
print(next((f["host"] for f in inst.get("forwards", []) if f["guest"] == int(sys.argv[2])), ""))
EOF
}
host_port=""
if [ -f "$state/instance.json" ] && "$root/scripts/testvm/ssh.sh" "$vm" true 2>/dev/null; then
  host_port=$(forwarded)
  [ -n "$host_port" ] && say "reusing the running VM $vm"
fi
if [ -z "$host_port" ]; then
  [ -d "$state" ] && "$root/scripts/testvm/down.sh" "$vm"
  # alice's port number on this machine too when it is free, else any free port (127.0.0.1 only).
  host_port=$(python3 - "$alice_port" <<'EOF'
import socket, sys
s = socket.socket()
try:
    s.bind(("127.0.0.1", int(sys.argv[1])))
except OSError:
    s.bind(("127.0.0.1", 0))
print(s.getsockname()[1])
EOF
)
  say "test VM image (built once per recipe, cached; a cold build takes ~10 min)"
  "$root/scripts/testvm/build.sh"
  say "booting the VM $vm (1-5 min under emulation)"
  "$root/scripts/testvm/up.sh" "$vm" --disks 3 --disk-size 2G --memory 3072 --forward "$host_port:$alice_port"
  rm -f "$demo/known_hosts"   # a fresh VM has fresh containers with new host keys
fi

say "fake GPUs on the VM (it has none; alice asks for one)"
"$playbook" -i "$root/inventories/demo" "$root/molecule/resources/fake_gpus.yml"

say "converging playbooks/site.yml with inventories/demo"
"$playbook" -i "$root/inventories/demo" "$root/playbooks/site.yml" -e workstations_ssh_config_dir="$demo/ssh"

cat <<EOF

Alice's workstation (her LXD container on the VM, reached through the VM's port map):

  ssh -i $demo/alice_ed25519 -o UserKnownHostsFile=$demo/known_hosts -o StrictHostKeyChecking=accept-new -p $host_port alice@127.0.0.1

SSH config snippets for the users: $demo/ssh/. Stop the VM: scripts/testvm/down.sh $vm
EOF
