#!/usr/bin/env bash
# Boots a Basalt disk image in QEMU with UEFI firmware (OVMF, Secure Boot off: the demo's own Secure Boot
# key is not enrolled in it) and a software TPM, the serial console on this terminal. The firmware's
# variables and the TPM's state are kept beside the image, as a device keeps them across power cycles.
# Usage: [ACCEL=kvm] hack/boot.sh DISK.raw        (Ctrl-A X quits QEMU)
set -euo pipefail
disk=$(realpath "${1:?usage: hack/boot.sh DISK.raw}")
need() { command -v "$1" >/dev/null || { echo "hack/boot.sh: $1 missing: apt-get install $2" >&2; exit 1; }; }
need qemu-system-x86_64 qemu-system-x86
need swtpm swtpm
[ -e /usr/share/OVMF/OVMF_CODE_4M.fd ] || { echo "hack/boot.sh: OVMF missing: apt-get install ovmf" >&2; exit 1; }

state="${disk%.raw}.boot"
mkdir -p "$state/tpm"
[ -e "$state/vars.fd" ] || cp /usr/share/OVMF/OVMF_VARS_4M.fd "$state/vars.fd"
rm -f "$state/tpm/sock"
swtpm socket --tpm2 --tpmstate dir="$state/tpm" --ctrl type=unixio,path="$state/tpm/sock" \
  --flags startup-clear --terminate &
tpm=$!
trap 'kill $tpm 2>/dev/null || true' EXIT
for _ in $(seq 100); do [ -S "$state/tpm/sock" ] && break; sleep 0.05; done

# TCG by default: it works everywhere (a /dev/kvm that is present is not always usable); ACCEL=kvm is faster.
accel=${ACCEL:-tcg}
echo "hack/boot.sh: booting $disk ($accel); Ctrl-A X quits" >&2
qemu-system-x86_64 -accel "$accel" -machine q35 -m 1024 -nographic \
  -drive if=pflash,format=raw,unit=0,readonly=on,file=/usr/share/OVMF/OVMF_CODE_4M.fd \
  -drive if=pflash,format=raw,unit=1,file="$state/vars.fd" \
  -drive file="$disk",format=raw,if=virtio \
  -nic user,model=virtio-net-pci \
  -chardev socket,id=chrtpm,path="$state/tpm/sock" -tpmdev emulator,id=tpm0,chardev=chrtpm \
  -device tpm-tis,tpmdev=tpm0
