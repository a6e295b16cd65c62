#!/usr/bin/env bash
# Build the Debian system-container image for LXD (the test image and the workstation image). The one
# recipe: the workstation_image role runs it from the installed collection, the dev scripts from here.
#
# Prints the path of a unified LXD image tarball (metadata.yaml + templates/ + rootfs/, gzip).
# The tarball is cached under $GPULAB_CACHE/images/, keyed on a hash of the recipe (this script,
# every file beside it, and the parameters below); it is rebuilt only when missing.
# `build.sh --path` prints that path and builds nothing (exit 0 when the tarball exists, else 3).
#
# Parameters (environment):
#   IMAGE_SUITE           Debian suite (default: bookworm)
#   IMAGE_EXTRA_PACKAGES  extra packages, comma- or space-separated (default: none)
#   IMAGE_MIRROR          Debian mirror (default: http://deb.debian.org/debian; not part of the hash)
#   GPULAB_CACHE          cache root (default: /var/cache/gpulab-fleet)
# Progress goes to stderr; stdout is only the tarball path.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
suite=${IMAGE_SUITE:-bookworm}
extra=$(echo "${IMAGE_EXTRA_PACKAGES:-}" | tr ' ,' '\n\n' | sed '/^$/d' | sort -u | paste -sd, -)
mirror=${IMAGE_MIRROR:-http://deb.debian.org/debian}
cache=${GPULAB_CACHE:-/var/cache/gpulab-fleet}

# Packages every image has. udev is required: without it systemd-networkd leaves eth0 "pending".
packages=systemd-sysv,udev,dbus,libpam-systemd,systemd-resolved,openssh-server,python3,iproute2,sudo,procps
[ -n "$extra" ] && packages="$packages,$extra"
# Units that fail or phone home inside a container.
masked=(systemd-binfmt.service e2scrub_reap.service e2scrub_all.timer fstrim.timer
        apt-daily.timer apt-daily-upgrade.timer)

log() { echo "image: $*" >&2; }

recipe_hash() {
  # Content and relative path of every recipe file, plus the parameters that change the result.
  (cd "$here" && find . -type f -print0 | sort -z | xargs -0 sha256sum
   echo "suite=$suite packages=$packages") | sha256sum | cut -c1-16
}

hash=$(recipe_hash)
name=debian-$suite-$hash
[ "$suite" = bookworm ] && name=debian12-$hash
out=$cache/images/$name.tar.gz
if [ "${1:-}" = --path ]; then
  echo "$out"
  [ -s "$out" ] || exit 3
  exit 0
fi
if [ -s "$out" ]; then
  echo "$out"
  exit 0
fi

mkdir -p "$cache/images" "$cache/debs" "$cache/tmp"
# Concurrent callers (several engineers, CI) wait for one build instead of racing.
exec 9>"$cache/images/.build.lock"
flock 9
if [ -s "$out" ]; then
  echo "$out"
  exit 0
fi

work=$(mktemp -d "$cache/tmp/build.XXXXXX")
cleanup() {
  # debootstrap mounts proc/sys inside the target; never rm -rf through a live mount.
  local m
  for m in $(awk -v w="$work/" 'index($2, w) == 1 {print $2}' /proc/mounts | sort -r); do
    umount -l "$m" || true
  done
  if awk -v w="$work/" 'index($2, w) == 1 {found=1} END {exit !found}' /proc/mounts; then
    log "mounts remain under $work; leaving it in place"
  else
    rm -rf --one-file-system "$work"
  fi
}
trap cleanup EXIT

rootfs=$work/rootfs
log "debootstrap $suite (minbase + $packages); usually 3-8 minutes ..."
start=$SECONDS
debootstrap --variant=minbase --include="$packages" --cache-dir="$cache/debs" \
  "$suite" "$rootfs" "$mirror" >"$work/debootstrap.log" 2>&1 || {
  tail -n 30 "$work/debootstrap.log" >&2
  log "debootstrap failed (log above)"
  exit 1
}
log "debootstrap done in $((SECONDS - start)) s"

# Files from the recipe (networkd config, ssh host-key drop-in, ...).
cp -a "$here/rootfs/." "$rootfs/"
chown -R 0:0 "$rootfs/etc/systemd"

# Instance identity is created at first boot: machine-id by systemd, host keys by ssh.service.
: >"$rootfs/etc/machine-id"
rm -f "$rootfs/var/lib/dbus/machine-id" "$rootfs"/etc/ssh/ssh_host_*
echo localhost >"$rootfs/etc/hostname"

systemctl --root="$rootfs" enable systemd-networkd.service systemd-resolved.service ssh.service >/dev/null 2>&1
systemctl --root="$rootfs" mask "${masked[@]}" >/dev/null 2>&1
# DNS: the stub resolver, fed by the DHCP lease from whatever bridge the instance is on.
ln -sfn ../run/systemd/resolve/stub-resolv.conf "$rootfs/etc/resolv.conf"

# Keep the image small and free of host state. Manuals, info pages and translations go (the image has
# neither man-db nor generated locales, so nothing reads them) with the docs except each package's
# copyright: a third of the image's files, which every container create, shift and copy handles
# (docs/dev/lab.md). Packages a member installs later keep theirs (no dpkg path-exclude is left).
find "$rootfs/usr/share/doc" -mindepth 2 ! -type d ! -name copyright -delete
find "$rootfs/usr/share/doc" -mindepth 1 -type d -empty -delete
rm -rf "$rootfs"/usr/share/man/* "$rootfs"/usr/share/info/* "$rootfs"/usr/share/lintian/*
find "$rootfs/usr/share/locale" -mindepth 1 -maxdepth 1 ! -name locale.alias -exec rm -rf {} +
rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/* \
  "$rootfs"/var/log/*.log "$rootfs"/var/log/apt/* "$rootfs"/tmp/* "$rootfs"/root/.bash_history

arch=$(uname -m)
version=$(cut -d. -f1 "$rootfs/etc/debian_version" 2>/dev/null || echo "$suite")
cp -a "$here/templates" "$work/templates"
cat >"$work/metadata.yaml" <<EOF
architecture: $arch
creation_date: $(date +%s)
properties:
  os: debian
  release: $suite
  version: "$version"
  architecture: $arch
  variant: gpulab
  description: "Debian $suite gpulab workstation ($hash)"
  gpulab.recipe: "$hash"
templates:
  /etc/hostname:
    when: [create, copy]
    template: hostname.tpl
  /etc/hosts:
    when: [create, copy]
    template: hosts.tpl
EOF

log "packing ..."
tar --numeric-owner --xattrs --xattrs-include='*' -C "$work" -cf - metadata.yaml templates rootfs \
  | gzip -6 >"$work/image.tar.gz"
mv -f "$work/image.tar.gz" "$out"
log "built $out ($(du -h "$out" | cut -f1)) in $((SECONDS - start)) s"
echo "$out"
