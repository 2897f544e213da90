#!/usr/bin/env bash
# Makes the root filesystems hack/bench/delta.sh measures, from Debian packages (debootstrap + apt in a
# chroot), and prints one line per version: "VERSION DIR KIND".
#
#   1.0.0  base: bookworm minbase + the bookworm kernel (linux-image-amd64) + systemd and common packages
#   1.0.1  config: 1.0.0 with one /etc file edited (/etc/ssh/sshd_config, one line appended)
#   1.0.2  library: 1.0.0 with one library package (libssl3) upgraded from bookworm-security
#   1.1.0  kernel: 1.0.0 with bookworm-security's kernel instead (new ABI: new /boot/vmlinuz-*, new
#          /lib/modules/<release>; the old kernel package is purged)
#   1.2.0  rollup: 1.0.0 with every bookworm-security upgrade of an installed package (apt-get upgrade: the
#          kernel's new ABI is a new package, so the kernel is held back; see delta.sh's report)
#
# Every version starts as a copy of 1.0.0's folder, so what differs is only what the change touches
# (plus what dpkg/apt record about it). Folders are cached under $BENCH_DIR/rootfs/<version>-<key>, the key
# a hash of the recipe (mirrors, suite, package lists, the change), so a second run does not debootstrap or
# download again (debootstrap's .debs are kept in $BENCH_DIR/debcache). Next to each folder, .<folder>.packages lists its packages and versions (dpkg-query).
# Usage: hack/bench/deltapairs.sh   (as root; BENCH_DIR default /tmp/basalt-bench-delta)
set -euo pipefail
work=${BENCH_DIR:-/tmp/basalt-bench-delta}
mirror=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
security=${DEBIAN_SECURITY_MIRROR:-http://deb.debian.org/debian-security}
suite=bookworm
# The library package to upgrade from bookworm-security (its versions must differ between the suites).
libpkg=${DELTA_LIBPKG:-libssl3}
# The /etc file the config version edits.
etcfile=/etc/ssh/sshd_config
base_pkgs=(linux-image-amd64 systemd systemd-sysv systemd-boot-efi systemd-timesyncd udev dbus kmod
  iproute2 iputils-ping ifupdown isc-dhcp-client openssh-server openssh-client curl wget ca-certificates
  openssl libssl3 less vim-tiny nano procps psmisc busybox e2fsprogs dosfstools fdisk cryptsetup-bin
  lvm2 nftables iptables conntrack ethtool rsync sudo tzdata locales python3 jq tar xz-utils
  zstd gzip bzip2 file lsof strace tcpdump pciutils usbutils cpio gnupg)

log() { printf '== deltapairs: %s\n' "$*" >&2; }
die() { printf 'deltapairs: %s\n' "$*" >&2; exit 1; }

[ "$(id -u)" = 0 ] || die "must run as root (debootstrap and chroot)"
command -v debootstrap >/dev/null || die "debootstrap missing: apt-get install debootstrap"
[ -e /usr/share/keyrings/debian-archive-keyring.gpg ] || die "Debian archive keyring missing: apt-get install debian-archive-keyring"
command -v sha256sum >/dev/null || die "sha256sum missing: apt-get install coreutils"

mkdir -p "$work/rootfs"
recipe_v=3 # bump when the recipe below changes in a way the key does not see
key() { printf '%s\n' "$recipe_v" "$mirror" "$security" "$suite" "${base_pkgs[*]}" "$@" | sha256sum | cut -c1-16; }
base_key=$(key base)

# chroot_run DIR CMD...: runs CMD inside DIR with /proc, /sys and /dev mounted, and unmounts them after.
chroot_run() {
  local dir=$1; shift
  mount -t proc proc "$dir/proc"
  mount -t sysfs sysfs "$dir/sys"
  mount --bind /dev "$dir/dev"
  local rc=0
  # No daemon may start in the chroot (openssh-server, chrony...).
  printf '#!/bin/sh\nexit 101\n' > "$dir/usr/sbin/policy-rc.d"; chmod 0755 "$dir/usr/sbin/policy-rc.d"
  cp /etc/resolv.conf "$dir/etc/resolv.conf"
  chroot "$dir" /usr/bin/env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin DEBIAN_FRONTEND=noninteractive \
    LC_ALL=C "$@" || rc=$?
  rm -f "$dir/usr/sbin/policy-rc.d"
  umount "$dir/dev" "$dir/sys" "$dir/proc"
  return $rc
}

# finish DIR: drops what apt and the chroot leave behind that no image ships (package lists, downloaded
# .debs, logs of this machine's run) so the folders hold what an OS build would publish.
finish() {
  local dir=$1
  rm -rf "$dir"/var/lib/apt/lists/* "$dir"/var/cache/apt/*.bin "$dir"/var/cache/apt/archives/*.deb \
    "$dir"/var/cache/debconf/*-old "$dir"/var/lib/dpkg/*-old "$dir"/etc/resolv.conf
  mkdir -p "$dir/var/lib/apt/lists/partial"
  : > "$dir/etc/resolv.conf"
  chroot "$dir" dpkg-query -W -f '${Package} ${Version}\n' > "$dir.packages.tmp"
  mv "$dir.packages.tmp" "$(dirname "$dir")/.$(basename "$dir").packages"
}

# normalize DIR: drops what a Basalt image does not ship and a chroot leaves behind: the Debian initramfs
# (basalt build makes its own initrd; update-initramfs output is a compressed cpio that differs on every
# run) and the runtime folders /run and /tmp. Idempotent: applied to cached folders on every run too.
normalize() {
  local dir=$1
  rm -f "$dir"/boot/initrd.img-* "$dir"/initrd.img "$dir"/initrd.img.old
  find "$dir/run" "$dir/tmp" -mindepth 1 -delete
}

sources() { # DIR, with-security (0|1)
  {
    echo "deb $mirror $suite main"
    [ "$2" = 0 ] || echo "deb $security $suite-security main"
  } > "$1/etc/apt/sources.list"
}

build_base() {
  local dir=$work/rootfs/1.0.0-$base_key
  if [ -d "$dir" ]; then echo "$dir"; return; fi
  local tmp=$dir.tmp
  rm -rf "$tmp"
  log "debootstrap --variant=minbase $suite (${#base_pkgs[@]} extra packages) into $tmp"
  local inc
  inc=$(IFS=,; echo "${base_pkgs[*]}")
  mkdir -p "$work/debcache"
  debootstrap --variant=minbase --cache-dir="$work/debcache" --include="$inc" "$suite" "$tmp" "$mirror" > "$work/rootfs/debootstrap.log" 2>&1 ||
    { tail -30 "$work/rootfs/debootstrap.log" >&2; die "debootstrap failed (log: $work/rootfs/debootstrap.log)"; }
  sources "$tmp" 0
  echo basalt-bench > "$tmp/etc/hostname"
  # debootstrap leaves the Release files' lists: the finish step drops them.
  finish "$tmp"
  [ "$(ls "$tmp"/boot/vmlinuz-* | wc -l)" = 1 ] || die "base rootfs: expected one /boot/vmlinuz-*"
  mv "$tmp" "$dir"
  mv "$work/rootfs/.$(basename "$tmp").packages" "$work/rootfs/.$(basename "$dir").packages"
  echo "$dir"
}

# installed_kernel DIR: the installed linux-image-<abi> package(s).
installed_kernel() {
  chroot "$1" dpkg-query -W -f '${db:Status-Abbrev} ${Package}\n' 'linux-image-6*' |
    awk '$1 == "ii" && $2 !~ /-unsigned$/ {print $2}'
}

# variant VERSION KIND: a copy of the base changed as KIND says.
variant() {
  local version=$1 kind=$2 base=$3
  local k
  case $kind in
    config) k=$(key "$kind" "$etcfile") ;;
    library) k=$(key "$kind" "$libpkg") ;;
    *) k=$(key "$kind") ;;
  esac
  local dir=$work/rootfs/$version-$k
  if [ -d "$dir" ]; then echo "$dir"; return; fi
  local tmp=$dir.tmp
  rm -rf "$tmp"
  log "$version ($kind): copy of 1.0.0"
  cp -a "$base" "$tmp"
  case $kind in
    config)
      [ -f "$tmp$etcfile" ] || die "$etcfile not in the base rootfs"
      printf '\n# basalt bench: one edited line\nMaxAuthTries 3\n' >> "$tmp$etcfile"
      ;;
    library)
      sources "$tmp" 1
      chroot_run "$tmp" apt-get -qq update
      local want
      want=$(chroot "$tmp" apt-cache madison "$libpkg" | awk -F'|' '$3 ~ /-security/ {gsub(/ /, "", $2); print $2; exit}')
      [ -n "$want" ] || die "$libpkg: no bookworm-security version"
      local have
      have=$(chroot "$tmp" dpkg-query -W -f '${Version}' "$libpkg")
      [ "$want" != "$have" ] || die "$libpkg: bookworm-security has $want, the base already has it: pick another DELTA_LIBPKG"
      log "$version: $libpkg $have -> $want"
      chroot_run "$tmp" apt-get -qq -y --no-install-recommends install "$libpkg=$want" >&2
      sources "$tmp" 0
      ;;
    kernel)
      sources "$tmp" 1
      chroot_run "$tmp" apt-get -qq update
      local old
      old=$(installed_kernel "$tmp")
      chroot_run "$tmp" apt-get -qq -y --no-install-recommends install linux-image-amd64 >&2
      local new
      new=$(installed_kernel "$tmp" | grep -vx "$old" || true)
      [ -n "$new" ] || die "bookworm-security has no newer kernel ABI than $old"
      log "$version: kernel $old -> $new"
      chroot_run "$tmp" apt-get -qq -y purge "$old" >&2
      sources "$tmp" 0
      ;;
    rollup)
      sources "$tmp" 1
      chroot_run "$tmp" apt-get -qq update
      chroot "$tmp" apt-get -s upgrade | awk '/^Inst /{print "  " $2 " " $3 " -> " $4}' | tr -d '[]()' >&2
      chroot_run "$tmp" apt-get -qq -y --no-install-recommends upgrade >&2
      sources "$tmp" 0
      ;;
    *) die "unknown kind $kind" ;;
  esac
  [ "$(ls "$tmp"/boot/vmlinuz-* | wc -l)" = 1 ] || die "$version: expected one /boot/vmlinuz-*, got: $(ls "$tmp"/boot)"
  finish "$tmp"
  mv "$tmp" "$dir"
  mv "$work/rootfs/.$(basename "$tmp").packages" "$work/rootfs/.$(basename "$dir").packages"
  echo "$dir"
}

base=$(build_base)
normalize "$base"
echo "1.0.0 $base base"
for v in 1.0.1:config 1.0.2:library 1.1.0:kernel 1.2.0:rollup; do
  d=$(variant "${v%%:*}" "${v#*:}" "$base")
  normalize "$d"
  echo "${v%%:*} $d ${v#*:}"
done
