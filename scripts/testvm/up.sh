#!/usr/bin/env bash
# Boot test VM instance NAME from a throwaway overlay of the cached image and wait for SSH.
#
#   scripts/testvm/up.sh NAME [--disks N] [--disk-size SIZE] [--memory MB] [--smp N]
#                             [--forward HOSTPORT:GUESTPORT]... [--lan LOCALPORT:PEERPORT:ADDR/PREFIX]
#
# State (overlay, extra disks, serial log, pidfile, instance.json, inventory.yml, instance.env)
# lives in /var/cache/gpulab-fleet/run/NAME/; scripts/testvm/down.sh NAME removes it.
# Extra disks are sparse raw files with virtio serials "gpulab-data1".."gpulab-dataN", so every
# guest sees /dev/disk/by-id/virtio-gpulab-data1... (stable by-id paths for pool tests).
# Acceleration: GPULAB_VM_ACCEL=auto (default: kvm only if a probe boots the kernel) | kvm | tcg.
# SSH is forwarded from a free port on 127.0.0.1 only; each --forward adds another 127.0.0.1-only TCP
# forward (e.g. a lab member's SSH port, so the demo can log in from this machine).
# --lan adds a second NIC (eth1) on a private L2 segment with one peer VM, carried as UDP datagrams
# between 127.0.0.1:LOCALPORT and 127.0.0.1:PEERPORT (qemu -netdev socket,udp): nothing is bridged to
# this machine's network. The guest gets ADDR/PREFIX on it (systemd-networkd, kept across guest
# reboots). lab-up.sh boots the VMs of a lab with matching port pairs.
# GPULAB_VM_BOOT_TIMEOUT (600 s) bounds the wait;
# GPULAB_VM_APPEND adds kernel arguments (default mitigations=off).
# shellcheck disable=SC2054  # qemu options are comma-separated by design
set -euo pipefail

# shellcheck source=lib.sh
. "$(dirname "$0")/lib.sh"

usage() {
    echo "usage: $0 NAME [--disks N] [--disk-size SIZE] [--memory MB] [--smp N] [--forward HOSTPORT:GUESTPORT]..." \
        "[--lan LOCALPORT:PEERPORT:ADDR/PREFIX]" >&2
    exit 2
}

NAME=${1:-}
[ -n "$NAME" ] || usage
shift
[[ "$NAME" =~ ^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$ ]] || die "bad instance name '$NAME' (letters, digits, _ . -)"
DISKS=0
DISK_SIZE=4G
MEMORY=2048
SMP=2
FORWARDS=()
LAN=""
while [ $# -gt 0 ]; do
    case "$1" in
    --disks) DISKS=$2 ;;
    --disk-size) DISK_SIZE=$2 ;;
    --memory) MEMORY=$2 ;;
    --smp) SMP=$2 ;;
    --forward) FORWARDS+=("$2") ;;
    --lan) LAN=$2 ;;
    *) usage ;;
    esac
    shift 2 || usage
done
if ! [[ "$DISKS" =~ ^[0-9]+$ ]] || [ "$DISKS" -gt 20 ]; then die "--disks must be 0..20, got '$DISKS'"; fi
[[ "$MEMORY" =~ ^[0-9]+$ ]] || die "--memory must be MB, got '$MEMORY'"
[[ "$SMP" =~ ^[0-9]+$ ]] || die "--smp must be a number, got '$SMP'"
HOSTFWD=""
for fwd in "${FORWARDS[@]}"; do
    if ! [[ "$fwd" =~ ^([1-9][0-9]{0,4}):([1-9][0-9]{0,4})$ ]] || [ "${BASH_REMATCH[1]}" -gt 65535 ] ||
        [ "${BASH_REMATCH[2]}" -gt 65535 ]; then
        die "--forward must be HOSTPORT:GUESTPORT (1..65535), got '$fwd'"
    fi
    HOSTFWD="$HOSTFWD,hostfwd=tcp:127.0.0.1:${BASH_REMATCH[1]}-:${BASH_REMATCH[2]}"
done
LAN_NIC=()
LAN_ADDR=""
LAN_MAC=""
if [ -n "$LAN" ]; then
    if ! [[ "$LAN" =~ ^([1-9][0-9]{0,4}):([1-9][0-9]{0,4}):([0-9.]+/[0-9]{1,2})$ ]] ||
        [ "${BASH_REMATCH[1]}" -gt 65535 ] || [ "${BASH_REMATCH[2]}" -gt 65535 ]; then
        die "--lan must be LOCALPORT:PEERPORT:ADDR/PREFIX, got '$LAN'"
    fi
    LAN_ADDR=${BASH_REMATCH[3]}
    # A locally administered MAC derived from the local port: unique among the VMs of this machine.
    LAN_MAC=$(printf '52:54:00:4c:%02x:%02x' $((BASH_REMATCH[1] >> 8)) $((BASH_REMATCH[1] & 255)))
    LAN_NIC=(-netdev "socket,id=lan,udp=127.0.0.1:${BASH_REMATCH[2]},localaddr=127.0.0.1:${BASH_REMATCH[1]}"
        -device "virtio-net-pci,netdev=lan,mac=$LAN_MAC")
fi
BOOT_TIMEOUT=${GPULAB_VM_BOOT_TIMEOUT:-600}

IMG=$(image_dir)
[ -f "$IMG/manifest.json" ] ||
    die "no cached test VM image for the current recipe ($IMG); run scripts/testvm/build.sh"
STATE="$RUN_ROOT/$NAME"
if [ -f "$STATE/qemu.pid" ] && kill -0 "$(cat "$STATE/qemu.pid")" 2>/dev/null; then
    die "instance $NAME is already running (pid $(cat "$STATE/qemu.pid")); scripts/testvm/down.sh $NAME"
fi
rm -rf --one-file-system "$STATE"
mkdir -p "$STATE"

# --- acceleration -------------------------------------------------------------------------
# Probe once per image + qemu version: boot the kernel under KVM with no root; a kernel that gets as
# far as freeing its init memory proves KVM can run it (nested/PVM /dev/kvm often cannot).
kvm_works() {
    [ -r /dev/kvm ] && [ -w /dev/kvm ] || return 1
    # Without vmx/svm in the CPU flags (e.g. a paravirtualised /dev/kvm) the probe can only fail: skip its 30 s.
    grep -qwE 'vmx|svm' /proc/cpuinfo || return 1
    local probe_key cache log
    probe_key=$(printf '%s %s' "$(basename "$IMG")" "$(qemu-system-x86_64 --version | head -1)" | sha256sum | cut -c1-16)
    cache="$RUN_ROOT/.kvm-probe-$probe_key"
    if [ ! -f "$cache" ]; then
        step "probing KVM (once): booting the kernel under -accel kvm for up to 30 s"
        log=$(mktemp)
        timeout 30 qemu-system-x86_64 -accel kvm -cpu host -m 256 -no-reboot -display none \
            -kernel "$IMG/vmlinuz" -append "console=ttyS0 panic=-1 root=/dev/nonexistent" \
            -serial "file:$log" -monitor none -nic none >/dev/null 2>&1 || true
        if grep -q 'Freeing unused kernel' "$log"; then echo kvm >"$cache"; else echo tcg >"$cache"; fi
        rm -f "$log"
    fi
    [ "$(cat "$cache")" = kvm ]
}

case "${GPULAB_VM_ACCEL:-auto}" in
kvm) ACCEL=(-accel kvm -cpu host) ACCEL_NAME=kvm ;;
tcg) ACCEL=(-accel tcg,thread=multi -cpu "${GPULAB_VM_TCG_CPU:-max}") ACCEL_NAME=tcg ;;
auto)
    if kvm_works; then ACCEL=(-accel kvm -cpu host) ACCEL_NAME=kvm; else
        ACCEL=(-accel tcg,thread=multi -cpu "${GPULAB_VM_TCG_CPU:-max}") ACCEL_NAME=tcg
    fi
    ;;
*) die "GPULAB_VM_ACCEL must be auto, kvm or tcg" ;;
esac

# --- disks and network ---------------------------------------------------------------------
qemu-img create -q -f qcow2 -b "$IMG/root.raw" -F raw "$STATE/overlay.qcow2"
DRIVES=(-drive "file=$STATE/overlay.qcow2,format=qcow2,if=none,id=root,cache=unsafe,discard=unmap"
    -device virtio-blk-pci,drive=root,serial=gpulab-root)
DISK_IDS=()
for ((i = 1; i <= DISKS; i++)); do
    truncate -s "$DISK_SIZE" "$STATE/disk$i.raw"
    DRIVES+=(-drive "file=$STATE/disk$i.raw,format=raw,if=none,id=data$i,cache=unsafe,discard=unmap"
        -device "virtio-blk-pci,drive=data$i,serial=gpulab-data$i")
    DISK_IDS+=("/dev/disk/by-id/virtio-gpulab-data$i")
done

PORT=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
KEY="$IMG/id_ed25519"
CMDLINE=$(python3 -c 'import json, sys; print(json.load(open(sys.argv[1]))["cmdline"])' "$IMG/manifest.json")
# An emulated CPU pays dearly for speculative-execution mitigations; the guest is a throwaway test box.
CMDLINE="$CMDLINE ${GPULAB_VM_APPEND-mitigations=off}"

step "booting $NAME ($ACCEL_NAME, ${MEMORY} MB, $SMP cpus, $DISKS extra disks of $DISK_SIZE) ssh on 127.0.0.1:$PORT"
T_BOOT=$SECONDS
qemu-system-x86_64 -name "gpulab-testvm-$NAME" "${ACCEL[@]}" -m "$MEMORY" -smp "$SMP" \
    -kernel "$IMG/vmlinuz" -initrd "$IMG/initrd.img" -append "$CMDLINE" \
    "${DRIVES[@]}" \
    -nic "user,model=virtio-net-pci,hostfwd=tcp:127.0.0.1:$PORT-:22$HOSTFWD" "${LAN_NIC[@]}" \
    -nodefaults -serial "file:$STATE/serial.log" -monitor none -display none -vga none \
    -daemonize -pidfile "$STATE/qemu.pid"
PID=$(cat "$STATE/qemu.pid")

# --- instance files -------------------------------------------------------------------------
cat >"$STATE/instance.env" <<EOF
NAME=$NAME
PORT=$PORT
KEY=$KEY
PID=$PID
EOF
python3 - "$STATE" "$NAME" "$PORT" "$KEY" "$PID" "$ACCEL_NAME" "$IMG" "${FORWARDS[*]}" "$LAN_ADDR" "${DISK_IDS[@]}" <<'EOF'
import json, sys, pathlib
state, name, port, key, pid, accel, img, forwards, lan, *disks = sys.argv[1:]
ssh_args = "-o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null -o LogLevel=ERROR"
inst = {"name": name, "address": "127.0.0.1", "port": int(port), "user": "root",
        "identity_file": key, "pid": int(pid), "accel": accel, "image_dir": img,
        "state_dir": state, "serial_log": f"{state}/serial.log", "disks": disks,
        "inventory": f"{state}/inventory.yml", "lan_address": lan.split("/")[0] if lan else None,
        "forwards": [{"host": int(h), "guest": int(g)} for h, g in (f.split(":") for f in forwards.split())]}
pathlib.Path(state, "instance.json").write_text(json.dumps(inst, indent=2) + "\n")
host = {"ansible_host": "127.0.0.1", "ansible_port": int(port), "ansible_user": "root",
        "ansible_ssh_private_key_file": key, "ansible_python_interpreter": "/usr/bin/python3",
        "ansible_ssh_common_args": ssh_args, "testvm_disks": disks, "testvm_lan_address": inst["lan_address"]}
inv = {"all": {"hosts": {name: host}}}
# JSON is valid YAML: no PyYAML needed on the host side.
pathlib.Path(state, "inventory.yml").write_text(json.dumps(inv, indent=2) + "\n")
EOF

# --- wait for SSH ---------------------------------------------------------------------------
SSH=(ssh -p "$PORT" -i "$KEY" -o BatchMode=yes -o ConnectTimeout=10 -o StrictHostKeyChecking=no
    -o UserKnownHostsFile=/dev/null -o LogLevel=ERROR root@127.0.0.1)
# The last N readable lines of the guest console (without terminal escapes).
console_tail() {
    tail -c 20000 "$STATE/serial.log" | tr '\r' '\n' | sed 's/\x1b\[[0-9;]*[A-Za-z]//g; s/\x1bM//g' |
        grep -av '^\s*$' | tail -n "$1"
}
fail_boot() {
    echo "----- serial log tail ($STATE/serial.log) -----" >&2
    console_tail 40 >&2 || true
    die "$1 (instance left for inspection; scripts/testvm/down.sh $NAME)"
}
last=0
until "${SSH[@]}" true 2>/dev/null; do
    kill -0 "$PID" 2>/dev/null || fail_boot "qemu exited during boot"
    elapsed=$((SECONDS - T_BOOT))
    [ "$elapsed" -lt "$BOOT_TIMEOUT" ] || fail_boot "no SSH after ${BOOT_TIMEOUT}s"
    if [ $((elapsed - last)) -ge 10 ]; then
        last=$elapsed
        step "waiting for SSH (${elapsed}s): $(console_tail 1 | cut -c1-100)"
    fi
    sleep 2
done
step "SSH answers after $((SECONDS - T_BOOT))s"
if [ -n "$LAN_ADDR" ]; then
    # Matched by MAC (not by name): the file stays right whatever order the guest names its NICs in.
    "${SSH[@]}" "cat > /etc/systemd/network/20-gpulab-lan.network && networkctl reload" <<EOF
[Match]
MACAddress=$LAN_MAC

[Network]
Address=$LAN_ADDR
LinkLocalAddressing=no
IPv6AcceptRA=no
EOF
    step "lan address $LAN_ADDR (mac $LAN_MAC, udp 127.0.0.1:${LAN%%:*})"
fi
# Let boot finish so services (zfs module, nfs-server) are up before callers use the VM.
# udevadm settle: pool tests need every disk's by-id links before the first zpool create.
STATE_NOW=$("${SSH[@]}" 'timeout 300 systemctl is-system-running --wait; udevadm settle --timeout=120' 2>/dev/null || true)
if [ "$STATE_NOW" != running ]; then
    step "systemd is '$STATE_NOW'; failed units:"
    "${SSH[@]}" 'systemctl --failed --no-legend --plain' || true
fi
step "$NAME is up ($STATE_NOW) after $((SECONDS - T_BOOT))s: inventory $STATE/inventory.yml"
