#!/usr/bin/env bash
# Bring up the real LXD test backend: Debian's LXD 5.0.2 daemon, its bridge/pool/profile, the
# production sysctls, and the test image `gpulab/debian12` (built by roles/workstation_image/files/recipe/build.sh).
# Idempotent: when everything is in place it only checks and returns in a few seconds.
#
# Environment: LXD_BRIDGE_CIDR (default 10.117.42.1/24), LXD_POOL_SIZE (default 40GiB),
#              LXD_POOL_DRIVER (btrfs|dir; default: btrfs, falling back to dir),
#              LXD_IMAGE_ALIAS (default gpulab/debian12).
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
bridge=lxdbr0
bridge_cidr=${LXD_BRIDGE_CIDR:-10.117.42.1/24}
pool_size=${LXD_POOL_SIZE:-40GiB}
pool_driver=${LXD_POOL_DRIVER:-btrfs}
image_alias=${LXD_IMAGE_ALIAS:-gpulab/debian12}
socket=/var/lib/lxd/unix.socket

log() { echo "lxd-up: $*"; }
die() { echo "lxd-up: ERROR: $*" >&2; exit 1; }

for cmd in lxd lxc lxcfs; do
  command -v "$cmd" >/dev/null || die "$cmd not installed (run scripts/install-deps.sh)"
done
[ "$(id -u)" = 0 ] || die "must run as root"

# Several engineers / CI jobs may run this at once: one at a time.
exec 9>/run/lock/gpulab-lxd-up.lock
flock 9

lxd_answers() { [ -S "$socket" ] && timeout 10 lxc query /1.0 >/dev/null 2>&1; }

uses_systemd() {
  [ "$(cat /proc/1/comm 2>/dev/null)" = systemd ] &&
    systemctl list-unit-files lxd.service lxd.socket 2>/dev/null | grep -q '^lxd\.'
}

lxcfs_mounted() { grep -q ' /var/lib/lxcfs fuse.lxcfs ' /proc/mounts; }
# A mount entry can outlive its lxcfs process (a machine restored from a snapshot, a crash);
# every read of it then fails with ENOTCONN and LXD, seeing no lxcfs, gives containers the
# host's /proc/meminfo. Only a mount that answers counts.
lxcfs_alive() { head -c1 /var/lib/lxcfs/proc/uptime >/dev/null 2>&1; }

# Daemons are started detached (setsid, own log files) and without our lock fd, so they
# outlive this script and never hold the lock.
start_lxcfs() {
  lxcfs_alive && return 0
  if lxcfs_mounted; then
    log "lxcfs mount is stale (its process is gone): unmounting it"
    umount -l /var/lib/lxcfs || die "could not unmount the stale /var/lib/lxcfs"
  fi
  log "starting lxcfs"
  mkdir -p /var/lib/lxcfs
  setsid nohup lxcfs /var/lib/lxcfs </dev/null >>/var/log/lxcfs.log 2>&1 9>&- &
  for _ in $(seq 100); do
    lxcfs_alive && return 0
    sleep 0.1
  done
  die "lxcfs did not mount /var/lib/lxcfs (see /var/log/lxcfs.log)"
}

start_lxd() {
  log "starting lxd"
  mkdir -p /var/log/lxd
  setsid nohup lxd --group lxd --logfile=/var/log/lxd/lxd.log </dev/null >>/var/log/lxd/lxd.out 2>&1 9>&- &
  lxd waitready --timeout=120 || die "lxd did not become ready (see /var/log/lxd/lxd.log)"
}

ensure_daemon() {
  if lxd_answers; then
    log "daemon already up (pid $(lxc query /1.0 | python3 -c 'import json,sys; print(json.load(sys.stdin)["environment"]["server_pid"])'))"
    if ! uses_systemd && ! lxcfs_alive; then
      # Containers started from now on get working /proc views; running ones keep the dead
      # mount until they restart, and LXD itself only looks for lxcfs when it starts.
      log "warning: lxcfs is not answering; restarting it (restart LXD for it to take effect)"
      start_lxcfs
    fi
    return
  fi
  if uses_systemd; then
    log "starting lxcfs + lxd via systemd"
    systemctl start lxcfs.service lxd.socket lxd.service
    lxd waitready --timeout=120 || die "lxd.service did not become ready (journalctl -u lxd)"
  else
    start_lxcfs
    start_lxd
  fi
  lxd_answers || die "lxd started but $socket does not answer"
}

# LXD's recommended production values (docs: "Production setup"); only ever raised. With the
# kernel defaults only ~15 systemd containers can run at once (inotify instances run out).
ensure_sysctls() {
  local kv key want have
  for kv in fs.aio-max-nr=524288 fs.inotify.max_queued_events=1048576 \
    fs.inotify.max_user_instances=1048576 fs.inotify.max_user_watches=1048576 \
    kernel.keys.maxbytes=2000000 kernel.keys.maxkeys=2000 vm.max_map_count=262144 \
    net.ipv4.neigh.default.gc_thresh3=8192 net.ipv6.neigh.default.gc_thresh3=8192; do
    key=${kv%%=*} want=${kv#*=}
    have=$(sysctl -n "$key" 2>/dev/null) || continue
    if [ "$have" -lt "$want" ]; then
      sysctl -qw "$key=$want" || log "warning: could not set $key=$want"
    fi
  done
}

# LXD (running as root) maps unprivileged containers into root's subordinate ranges. Debian's
# package relies on an existing `root:` range of at least 65536 ids; add a large one if none.
# Single-id entries (root:<uid>:1) belong to the lxd_workstations module and are left alone.
ensure_subids() {
  local f
  for f in /etc/subuid /etc/subgid; do
    touch "$f"
    if ! awk -F: '$1 == "root" && $3 >= 65536 {found=1} END {exit !found}' "$f"; then
      log "adding root:1000000:1000000000 to $f"
      echo "root:1000000:1000000000" >>"$f"
    fi
  done
}

ensure_config() {
  [ "$(lxc config get images.auto_update_interval)" = 0 ] || lxc config set images.auto_update_interval 0

  if ! lxc network show "$bridge" >/dev/null 2>&1; then
    log "creating bridge $bridge ($bridge_cidr, NAT, no IPv6)"
    lxc network create "$bridge" ipv4.address="$bridge_cidr" ipv4.nat=true ipv6.address=none >/dev/null
  fi

  if ! lxc storage show default >/dev/null 2>&1; then
    # btrfs on a sparse loop file enforces root disk sizes and snapshots ~10x faster than dir.
    if [ "$pool_driver" = btrfs ] && lxc storage create default btrfs size="$pool_size" >/dev/null 2>/tmp/lxd-up-pool.err; then
      log "created storage pool default (btrfs, $pool_size loop file)"
    else
      [ "$pool_driver" = btrfs ] && log "btrfs pool failed ($(tr '\n' ' ' </tmp/lxd-up-pool.err)); falling back to dir"
      lxc storage create default dir >/dev/null
      log "created storage pool default (dir)"
    fi
  fi

  local profile
  profile=$(lxc profile show default)
  if ! grep -q '^  root:' <<<"$profile"; then
    lxc profile device add default root disk path=/ pool=default >/dev/null
  fi
  if ! grep -q '^  eth0:' <<<"$profile"; then
    lxc profile device add default eth0 nic name=eth0 network="$bridge" >/dev/null
  fi
}

alias_target() {  # fingerprint behind the alias, empty if none
  lxc query "/1.0/images/aliases/$image_alias" 2>/dev/null |
    python3 -c 'import json,sys; print(json.load(sys.stdin)["target"])' 2>/dev/null || true
}

image_recipe() {  # gpulab.recipe property of image $1, empty if none
  [ -n "$1" ] || return 0
  lxc query "/1.0/images/$1" 2>/dev/null |
    python3 -c 'import json,sys; print(json.load(sys.stdin)["properties"].get("gpulab.recipe", ""))' 2>/dev/null || true
}

ensure_image() {
  local tarball want have fp old
  tarball=$(bash "$here/../roles/workstation_image/files/recipe/build.sh") || die "image build failed"
  want=$(basename "$tarball" .tar.gz) want=${want##*-}
  old=$(alias_target)
  have=$(image_recipe "$old")
  if [ "$have" = "$want" ]; then
    log "image $image_alias up to date (recipe $want)"
    return
  fi
  log "importing $tarball as $image_alias (had recipe '${have:-none}')"
  # A unified image's fingerprint is the sha256 of its tarball.
  fp=$(sha256sum "$tarball" | cut -d' ' -f1)
  lxc query "/1.0/images/$fp" >/dev/null 2>&1 || lxc image import "$tarball" >/dev/null
  # Same tarball already imported but its property was changed by hand: restore it.
  [ "$(image_recipe "$fp")" = "$want" ] || lxc image set-property "$fp" gpulab.recipe "$want"
  if [ -n "$old" ]; then
    # Retarget in one request, so concurrent launches never see the alias missing.
    lxc query -X PUT "/1.0/images/aliases/$image_alias" -d "{\"target\": \"$fp\", \"description\": \"\"}" >/dev/null
  else
    lxc image alias create "$image_alias" "$fp"
  fi
  # Instances keep their own copy of the rootfs, so the superseded image can go.
  if [ -n "$old" ] && [ "$old" != "$fp" ]; then
    lxc image delete "$old" || log "warning: could not delete old image $old"
  fi
  [ "$(image_recipe "$(alias_target)")" = "$want" ] || die "image $image_alias does not carry recipe $want after import"
}

start=$SECONDS
ensure_sysctls
ensure_subids
ensure_daemon
ensure_config
ensure_image
log "ready in $((SECONDS - start)) s: socket $socket, bridge $bridge $bridge_cidr," \
  "pool default ($(lxc storage show default | awk '/^driver:/ {print $2}')), image $image_alias"
