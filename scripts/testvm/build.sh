#!/usr/bin/env bash
# Build the cached Debian 12 test VM image (systemd server with OpenZFS 2.1 from contrib).
#
# Output: /var/cache/gpulab-fleet/testvm/<recipe hash>/{root.raw,vmlinuz,initrd.img,id_ed25519,
# id_ed25519.pub,manifest.json}. The key is a hash of build.sh, recipe.env and packages.txt, so an
# unchanged recipe is a no-op. Built in a temp dir next to the cache and renamed into place at the
# end, so a half-built image is never used. A cold build takes ~6-10 min on 2 cores:
#   nohup scripts/testvm/build.sh > /tmp/testvm-build.log 2>&1 &
# Options: --force (rebuild even if cached).
set -euo pipefail

# shellcheck source=lib.sh
. "$(dirname "$0")/lib.sh"
# shellcheck source=recipe.env
. "$TESTVM_DIR/recipe.env"

FORCE=0
[ "${1:-}" = "--force" ] && FORCE=1
[ "$(id -u)" = 0 ] || die "must run as root (debootstrap, chroot, mounts)"

HASH=$(recipe_hash)
OUT="$IMAGE_ROOT/$HASH"
if [ -f "$OUT/manifest.json" ] && [ "$FORCE" = 0 ]; then
    step "cached image is up to date: $OUT"
    exit 0
fi

mkdir -p "$IMAGE_ROOT" "$DEB_CACHE/partial"
exec 9>"$IMAGE_ROOT/.build.lock"
if ! flock -n 9; then
    # Another build.sh (e.g. make test's other lane) is building: wait for it, then use its image.
    step "another build.sh is running (lock $IMAGE_ROOT/.build.lock): waiting for it"
    flock 9
    if [ -f "$OUT/manifest.json" ] && [ "$FORCE" = 0 ]; then
        step "cached image is up to date: $OUT"
        exit 0
    fi
fi

WORK=$(mktemp -d "$IMAGE_ROOT/.build-$HASH-XXXX")
ROOTFS="$WORK/rootfs"
MOUNTS=()

cleanup() {
    local rc=$? m
    # Unmount in reverse order BEFORE removing anything: rootfs/dev is a bind of the host's /dev.
    for ((i = ${#MOUNTS[@]} - 1; i >= 0; i--)); do
        m=${MOUNTS[i]}
        mountpoint -q "$m" && { umount "$m" || umount -l "$m"; }
    done
    MOUNTS=()
    if [ -d "$WORK" ]; then
        if grep -q " $WORK/" /proc/mounts; then
            echo "testvm: still mounted under $WORK, not removing it" >&2
        else
            rm -rf --one-file-system "$WORK"
        fi
    fi
    [ "$rc" = 0 ] || echo "testvm: build FAILED (rc=$rc); see the output above" >&2
}
trap cleanup EXIT

mount_in() { # mount_in TARGET MOUNT-ARGS...
    local target=$1
    shift
    mkdir -p "$target"
    mount "$@" "$target"
    MOUNTS+=("$target")
}

in_root() {
    chroot "$ROOTFS" /usr/bin/env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin HOME=/root LANG=C.UTF-8 \
        DEBIAN_FRONTEND=noninteractive DEBCONF_NONINTERACTIVE_SEEN=true "$@"
}

# cryptomgr.notests: no self-test of every kernel crypto driver udev loads for -cpu max (seconds under TCG).
CMDLINE="root=/dev/vda rw console=ttyS0 net.ifnames=0 panic=-1 cryptomgr.notests"

step "recipe $HASH: $SUITE, kernel $KERNEL_ABI, OpenZFS $ZFS_SERIES*, building in $WORK"

step "debootstrap $SUITE minbase (main,contrib)"
debootstrap --variant=minbase --components=main,contrib --cache-dir="$DEB_CACHE" \
    --include=systemd,systemd-sysv,dbus,udev,openssh-server,python3,ca-certificates \
    "$SUITE" "$ROOTFS" "$MIRROR" >"$WORK/debootstrap.log" 2>&1 || {
    tail -n 30 "$WORK/debootstrap.log"
    die "debootstrap failed"
}

step "configure apt (main+contrib, updates, security; no recommends; no service starts)"
cat >"$ROOTFS/etc/apt/sources.list" <<EOF
deb $MIRROR $SUITE main contrib
deb $MIRROR $SUITE-updates main contrib
deb $SECURITY_MIRROR $SUITE-security main contrib
EOF
cat >"$ROOTFS/etc/apt/apt.conf.d/90gpulab-testvm" <<'EOF'
APT::Install-Recommends "false";
APT::Install-Suggests "false";
APT::Periodic::Enable "0";
APT::Periodic::Update-Package-Lists "0";
APT::Periodic::Unattended-Upgrade "0";
EOF
# Daemons must not start inside the build chroot.
printf '#!/bin/sh\nexit 101\n' >"$ROOTFS/usr/sbin/policy-rc.d"
chmod 755 "$ROOTFS/usr/sbin/policy-rc.d"
cp /etc/resolv.conf "$ROOTFS/etc/resolv.conf"
echo testvm >"$ROOTFS/etc/hostname"
printf '127.0.0.1 localhost\n127.0.1.1 testvm.test testvm\n::1 localhost ip6-localhost ip6-loopback\n' \
    >"$ROOTFS/etc/hosts"

mount_in "$ROOTFS/proc" -t proc proc
mount_in "$ROOTFS/sys" -t sysfs sysfs
mount_in "$ROOTFS/dev" --bind /dev
mount_in "$ROOTFS/dev/pts" -t devpts devpts
mount_in "$ROOTFS/var/cache/apt/archives" --bind "$DEB_CACHE"

# iptables-persistent: its postinst would save the ruleset it sees, the BUILD host's (a chroot shares
# its network namespace): no autosave.
# slapd: keep Debian's default dc=nodomain instance (created from debconf defaults); it is
# disabled below so roles that configure slapd start from a known, stopped state.
in_root debconf-set-selections <<'EOF'
slapd slapd/no_configuration boolean false
slapd slapd/domain string nodomain
slapd shared/organization string nodomain
iptables-persistent iptables-persistent/autosave_v4 boolean false
iptables-persistent iptables-persistent/autosave_v6 boolean false
EOF

step "apt-get update"
in_root apt-get -q update >"$WORK/apt.log" 2>&1 || {
    tail -n 30 "$WORK/apt.log"
    die "apt-get update failed"
}

apt_install() {
    in_root apt-get -q -y -o Dpkg::Options::=--force-confdef -o Dpkg::Options::=--force-confold \
        install "$@" >>"$WORK/apt.log" 2>&1 || {
        tail -n 40 "$WORK/apt.log"
        die "apt-get install $* failed"
    }
}

# A small initrd: only what mounts the virtio root disk (the default MODULES=most packs every storage
# and network driver, ~36 MB that the emulated CPU decompresses and probes at every boot).
mkdir -p "$ROOTFS/etc/initramfs-tools/conf.d"
echo MODULES=list >"$ROOTFS/etc/initramfs-tools/conf.d/gpulab-testvm.conf"
printf '%s\n' virtio_pci virtio_blk ext4 >>"$ROOTFS/etc/initramfs-tools/modules"

step "install kernel linux-image-$KERNEL_ABI + headers (exact ABI)"
apt_install "linux-image-$KERNEL_ABI" "linux-headers-$KERNEL_ABI"
[ -d "$ROOTFS/lib/modules/$KERNEL_ABI" ] || die "kernel $KERNEL_ABI not installed"
KERNELS=$(ls "$ROOTFS/lib/modules")
[ "$KERNELS" = "$KERNEL_ABI" ] || die "unexpected kernels in image: $KERNELS"

step "install packages.txt and what the roles install (zfs-dkms compiles here: several minutes)"
mapfile -t PKGS < <(grep -vE '^\s*(#|$)' "$TESTVM_DIR/packages.txt")
mapfile -t ROLE_PKGS < <(role_packages)
[ ${#ROLE_PKGS[@]} -gt 0 ] || die "role-packages.py printed no packages"
apt_install "${PKGS[@]}" "${ROLE_PKGS[@]}"

step "check the zfs dkms module for $KERNEL_ABI"
ZFS_VER=$(in_root dpkg-query -W -f '${Version}' zfs-dkms)
ZFS_UPSTREAM=${ZFS_VER%%-*}
case "$ZFS_UPSTREAM" in "$ZFS_SERIES"*) ;; *) die "zfs-dkms $ZFS_VER is not $ZFS_SERIES*" ;; esac
if ! ls "$ROOTFS/lib/modules/$KERNEL_ABI/updates/dkms/zfs.ko"* >/dev/null 2>&1; then
    step "dkms did not build for $KERNEL_ABI during install; building now"
    in_root dkms install -m zfs -v "$ZFS_UPSTREAM" -k "$KERNEL_ABI" >>"$WORK/apt.log" 2>&1 || {
        tail -n 40 "$WORK/apt.log"
        die "dkms build of zfs for $KERNEL_ABI failed"
    }
fi
ls "$ROOTFS/lib/modules/$KERNEL_ABI/updates/dkms/zfs.ko"* >/dev/null || die "zfs.ko missing"
KERNELS=$(ls "$ROOTFS/lib/modules")
[ "$KERNELS" = "$KERNEL_ABI" ] || die "a package pulled in another kernel: $KERNELS"

step "configure the guest (network, ssh, serial, fstab, services)"
echo zfs >"$ROOTFS/etc/modules-load.d/zfs.conf"
# Drivers udev would load for qemu's emulated PC and -cpu max that no test uses (each load costs
# seconds of emulated CPU at boot): floppy, PC speaker, KVM (the guest never runs VMs), wireless.
printf 'blacklist %s\n' floppy pcspkr kvm_amd kvm_intel kvm ccp cfg80211 \
    >"$ROOTFS/etc/modprobe.d/gpulab-testvm-blacklist.conf"
echo '/dev/vda / ext4 rw,errors=remount-ro 0 1' >"$ROOTFS/etc/fstab"
# qemu user networking (slirp): DHCP on eth0 (net.ifnames=0), DNS at 10.0.2.3.
cat >"$ROOTFS/etc/systemd/network/10-eth0.network" <<'EOF'
[Match]
Name=eth0

[Network]
DHCP=ipv4
EOF
echo 'nameserver 10.0.2.3' >"$ROOTFS/etc/resolv.conf"
in_root systemctl enable systemd-networkd.service ssh.service >/dev/null 2>&1
# No background apt/maintenance work competing with tests for the (emulated) CPU.
for unit in apt-daily.timer apt-daily-upgrade.timer man-db.timer e2scrub_all.timer fstrim.timer \
    systemd-networkd-wait-online.service; do
    in_root systemctl mask "$unit" >/dev/null 2>&1
done
# slapd's default dc=nodomain instance exists but does not run until a role configures it.
in_root systemctl disable slapd.service >/dev/null 2>&1 || true
# The warm-up boot (below) boots into this target: the whole normal boot, then power off.
cat >"$ROOTFS/etc/systemd/system/gpulab-warmup.target" <<'EOF'
[Unit]
Description=gpulab test VM image warm-up: boot fully once, then power off
Requires=multi-user.target gpulab-warmup.service
After=multi-user.target
AllowIsolate=yes
EOF
cat >"$ROOTFS/etc/systemd/system/gpulab-warmup.service" <<'EOF'
[Unit]
Description=Power off after the warm-up boot
After=multi-user.target

[Service]
Type=oneshot
ExecStart=/bin/sh -c 'echo "gpulab-warmup: done" >/dev/console; systemctl --no-block poweroff'
EOF
# A stable machine-id avoids first-boot preset handling on every throwaway overlay.
[ -s "$ROOTFS/etc/machine-id" ] || in_root systemd-machine-id-setup >/dev/null 2>&1
rm -f "$ROOTFS/usr/sbin/policy-rc.d"

ssh-keygen -q -t ed25519 -N '' -C "gpulab-testvm-$HASH" -f "$WORK/id_ed25519"
install -d -m 700 "$ROOTFS/root/.ssh"
install -m 600 "$WORK/id_ed25519.pub" "$ROOTFS/root/.ssh/authorized_keys"
# Login only by key; sshd answers quickly without reverse DNS under slirp.
printf 'PermitRootLogin prohibit-password\nPasswordAuthentication no\nUseDNS no\n' \
    >"$ROOTFS/etc/ssh/sshd_config.d/gpulab-testvm.conf"

step "record the manifest"
in_root dpkg-query -W -f '${Package}\t${Version}\n' >"$WORK/packages.lock"
cp "$ROOTFS/boot/vmlinuz-$KERNEL_ABI" "$WORK/vmlinuz"
cp "$ROOTFS/boot/initrd.img-$KERNEL_ABI" "$WORK/initrd.img"

for ((i = ${#MOUNTS[@]} - 1; i >= 0; i--)); do umount "${MOUNTS[i]}"; done
MOUNTS=()
rm -rf "$ROOTFS/tmp/"*

step "mkfs.ext4 -d rootfs into a sparse $ROOT_SIZE raw image"
mkfs.ext4 -q -F -L testvm-root -d "$ROOTFS" "$WORK/root.raw" "$ROOT_SIZE"

# First-boot work is done once here instead of at every boot of a throwaway overlay: AppArmor compiles
# its policy cache (~50 s under TCG), LXD initialises its database, systemd its first-boot state.
# The warm-up unit powers the guest off once the boot has finished and removes itself.
step "warm-up boot (AppArmor policy cache, LXD database; powers itself off)"
timeout 900 qemu-system-x86_64 -name "gpulab-testvm-warmup-$HASH" -accel tcg,thread=multi -cpu max -m 2048 -smp 2 \
    -kernel "$WORK/vmlinuz" -initrd "$WORK/initrd.img" -append "$CMDLINE systemd.unit=gpulab-warmup.target" \
    -drive "file=$WORK/root.raw,format=raw,if=virtio,cache=unsafe" -nic none -nodefaults \
    -serial "file:$WORK/warmup.log" -monitor none -display none -vga none -no-reboot ||
    die "warm-up boot failed or timed out (console: $WORK/warmup.log)"
grep -q 'gpulab-warmup: done' "$WORK/warmup.log" || {
    tail -n 30 "$WORK/warmup.log" | tr -d '\r'
    die "warm-up boot did not finish its boot (console above)"
}
e2fsck -f -p "$WORK/root.raw" >/dev/null || die "e2fsck of root.raw after the warm-up boot failed"

BUILD_SECONDS=$((SECONDS - _T0))
python3 - "$WORK" <<EOF
import json, sys, pathlib
work = pathlib.Path(sys.argv[1])
pkgs = dict(line.split("\t", 1) for line in (work / "packages.lock").read_text().splitlines() if line)
manifest = {
    "recipe_hash": "$HASH",
    "suite": "$SUITE",
    "kernel_abi": "$KERNEL_ABI",
    "kernel_version": pkgs.get("linux-image-$KERNEL_ABI"),
    "zfs_version": pkgs.get("zfs-dkms"),
    "image": "root.raw",
    "image_format": "raw",
    "kernel": "vmlinuz",
    "initrd": "initrd.img",
    "ssh_key": "id_ed25519",
    "cmdline": "$CMDLINE",
    "build_seconds": $BUILD_SECONDS,
    "packages": pkgs,
}
(work / "manifest.json").write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
EOF

rm -rf --one-file-system "$ROOTFS"
rm -f "$WORK/packages.lock"
if [ -d "$OUT" ]; then
    rm -rf --one-file-system "$OUT.old"
    mv "$OUT" "$OUT.old"
fi
chmod 755 "$WORK"
mv "$WORK" "$OUT"
rm -rf --one-file-system "$OUT.old"
WORK=""
step "done in ${BUILD_SECONDS}s: $OUT ($(du -sh --apparent-size "$OUT/root.raw" | cut -f1) apparent, $(du -sh "$OUT/root.raw" | cut -f1) used)"
