#!/usr/bin/env bash
# Prints the folder holding an unpacked Debian kernel (boot/vmlinuz-*, lib/modules/*), downloading it
# with `apt-get download` and unpacking it with `dpkg -x` on first use. Nothing is installed on the host.
# Usage: hack/kernel.sh [CACHE_DIR]     (default: .cache/kernel)
set -euo pipefail
cache=${1:-"$(cd "$(dirname "$0")/.." && pwd)/.cache/kernel"}
pkg=$(apt-cache depends linux-image-amd64 2>/dev/null | awk '/Depends: linux-image-[0-9]/ {print $2; exit}')
if [ -z "$pkg" ]; then
  echo "hack/kernel.sh: cannot resolve linux-image-amd64 (run apt-get update)" >&2
  exit 1
fi
dir="$cache/$pkg"
if [ ! -f "$dir/.done" ]; then
  mkdir -p "$cache"
  tmp=$(mktemp -d "$cache/.dl.XXXXXX")
  (cd "$tmp" && apt-get download -q "$pkg" >/dev/null)
  rm -rf "$dir"
  mkdir -p "$dir"
  dpkg -x "$tmp"/"$pkg"_*.deb "$dir"
  rm -rf "$tmp"
  touch "$dir/.done"
fi
echo "$dir"
