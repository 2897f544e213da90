#!/usr/bin/env bash
# Installs what Basalt's build, tests and demo need on a fresh Debian 12 machine (run as root), and
# downloads the Go modules. Safe to run again: packages already present are skipped.
set -euo pipefail

packages=(
  # reference readers the tests check our formats with
  gdisk fdisk e2fsprogs cryptsetup-bin mtools dosfstools binutils xz-utils zstd cpio tar
  sbsigntool osslsigncode openssl efitools bc time
  # systemd-boot, the UKI stub, systemd-measure (PCR 11 prediction peer), bootctl and
  # systemd-analyze (the judges of boot entry order)
  systemd systemd-boot systemd-boot-efi
  # the boot chain under QEMU; qemu-utils (qemu-io, qemu-img, qemu-nbd) judge the write-cache NBD server
  qemu-system-x86 qemu-utils ovmf swtpm swtpm-tools tpm2-tools busybox-static
  # loop devices, mounts and flock(1) for the kernel-side tests; gcc checks ioctl numbers against the headers;
  # depmod judges the builder's module dependencies
  mount util-linux gcc linux-libc-dev python3 kmod
)
# kubectl parses the rendered system-upgrade-controller Plan (builder/gitops: apply --dry-run=client).
# Debian's kubernetes-client provides it; a kubectl already installed otherwise (e.g. Google Cloud SDK's
# kubectl package, which owns /usr/bin/kubectl too and would make dpkg refuse the install) serves as well.
command -v kubectl >/dev/null || packages+=(kubernetes-client)

missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "hack/deps.sh: installing ${missing[*]}"
  sudo=""; [ "$(id -u)" -eq 0 ] || sudo=sudo
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi

cd "$(dirname "$0")/.."
go mod download
