#!/usr/bin/env bash
# Run a command in test VM instance NAME as root (or an interactive shell without CMD).
#   scripts/testvm/ssh.sh NAME [CMD...]
set -euo pipefail

# shellcheck source=lib.sh
. "$(dirname "$0")/lib.sh"

NAME=${1:-}
[ -n "$NAME" ] || { echo "usage: $0 NAME [CMD...]" >&2; exit 2; }
shift
ENV_FILE="$RUN_ROOT/$NAME/instance.env"
[ -f "$ENV_FILE" ] || die "instance $NAME is not up (no $ENV_FILE); scripts/testvm/up.sh $NAME"
PORT=$(sed -n 's/^PORT=//p' "$ENV_FILE")
KEY=$(sed -n 's/^KEY=//p' "$ENV_FILE")
TTY=()
[ $# -eq 0 ] && [ -t 0 ] && TTY=(-t)
exec ssh "${TTY[@]}" -p "$PORT" -i "$KEY" -o BatchMode=yes -o StrictHostKeyChecking=no \
    -o UserKnownHostsFile=/dev/null -o LogLevel=ERROR root@127.0.0.1 "$@"
