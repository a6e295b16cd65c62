#!/usr/bin/env bash
# `make demo`: the throwaway demo lab on this machine. Brings up the local LXD (and its image),
# then converges playbooks/demo_local.yml and prints the ssh command that logs into alice's
# workstation.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
bash "$root/scripts/lxd-up.sh"
export ANSIBLE_COLLECTIONS_PATH="$root/.build/collections"
"$root/.venv/bin/ansible-playbook" -i localhost, -c local \
  -e ansible_python_interpreter="$root/.venv/bin/python" "$root/playbooks/demo_local.yml"
