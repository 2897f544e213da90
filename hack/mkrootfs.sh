#!/usr/bin/env bash
# Makes a small demo root filesystem in DIR from Debian packages already on this machine (busybox-static,
# systemd-boot-efi) and an unpacked Debian kernel (hack/kernel.sh): busybox is its init, with a shell on
# the console. Usage: hack/mkrootfs.sh DIR [BASALT-INIT]
# BASALT-INIT, a static basalt-init binary, is put at /usr/lib/basalt/basalt-init for the builder to make
# the initrd's /init; without it the image builds but does not boot.
set -euo pipefail
dir=$(realpath -m "${1:?usage: hack/mkrootfs.sh DIR}")
here=$(cd "$(dirname "$0")" && pwd)
kdir=$(bash "$here/kernel.sh")

need() { [ -e "$1" ] || { echo "hack/mkrootfs.sh: $1 missing: apt-get install $2" >&2; exit 1; }; }
need /bin/busybox busybox-static
need /usr/lib/systemd/boot/efi/systemd-bootx64.efi systemd-boot-efi
need /usr/lib/systemd/boot/efi/linuxx64.efi.stub systemd-boot-efi

rm -rf "$dir"
mkdir -p "$dir"/{bin,sbin,etc,boot,dev,proc,sys,run,tmp,var,efi,usr/bin,usr/lib/systemd/boot/efi,usr/share/basalt}
chmod 1777 "$dir/tmp"
cp /bin/busybox "$dir/bin/busybox"
for a in sh ls cat echo mount umount sleep poweroff reboot; do ln -s busybox "$dir/bin/$a"; done
ln -s ../bin/busybox "$dir/sbin/init"
if [ -n "${2:-}" ]; then
  install -D -m 0755 "$2" "$dir/usr/lib/basalt/basalt-init"
fi
cat > "$dir/etc/inittab" <<'INITTAB'
::sysinit:/bin/busybox mount -t tmpfs tmpfs /run
::sysinit:/bin/busybox mount -t tmpfs -o mode=1777 tmpfs /tmp
::sysinit:/bin/sh -c '. /etc/os-release; echo "$PRETTY_NAME is up: / is dm-verity, /var the state partition, /efi the ESP"'
::askfirst:-/bin/sh
::ctrlaltdel:/bin/busybox reboot
::shutdown:/bin/busybox sync
INITTAB
cp /usr/lib/systemd/boot/efi/systemd-bootx64.efi /usr/lib/systemd/boot/efi/linuxx64.efi.stub "$dir/usr/lib/systemd/boot/efi/"
cp "$kdir"/boot/vmlinuz-* "$dir/boot/"
# The kernel's config: the builder reads the FAT character sets the kernel defaults to from it.
cp "$kdir"/boot/config-* "$dir/boot/" 2>/dev/null || true
rel=$(basename "$kdir"/boot/vmlinuz-* | sed 's/^vmlinuz-//')
mkdir -p "$dir/lib/modules/$rel"
# The modules an initrd needs to find, verify and mount the root (virtio disk, dm-verity, ext4, vfat), and
# the network (virtio-net), watchdog and QEMU fw_cfg (the suite's kill points) drivers the end-to-end guest
# uses.
mods=(virtio*.ko dm-*.ko ext4.ko jbd2.ko mbcache.ko crc16.ko reed_solomon.ko vfat.ko fat.ko overlay.ko i6300esb.ko
  net_failover.ko failover.ko nls_cp437.ko nls_ascii.ko nls_utf8.ko crc32c_generic.ko libcrc32c.ko efivarfs.ko
  watchdog.ko qemu_fw_cfg.ko xts.ko ecb.ko cryptd.ko crypto_simd.ko aesni-intel.ko)
find_args=()
for m in "${mods[@]}"; do find_args+=(-o -name "$m"); done
(cd "$kdir/lib/modules/$rel" && find kernel \( "${find_args[@]:1}" \) -print0 | cpio -0pdm --quiet "$dir/lib/modules/$rel")
cp "$kdir/lib/modules/$rel/modules.builtin" "$dir/lib/modules/$rel/" 2>/dev/null || true
cat > "$dir/etc/os-release" <<OS
NAME="Basalt Demo"
ID=basalt-demo
PRETTY_NAME="Basalt Demo"
VERSION_ID=1
OS
echo "$dir"
