#!/usr/bin/env bash
# The demo `make demo` runs: make a small rootfs from Debian packages, build a factory image and an
# update payload from it, and show what was built.
set -euo pipefail
cd "$(dirname "$0")/.."
export SOURCE_DATE_EPOCH=${SOURCE_DATE_EPOCH:-1700000000}
basalt=./bin/basalt

echo "== making a demo rootfs in out/demo-rootfs"
bash hack/mkrootfs.sh out/demo-rootfs >/dev/null

echo "== basalt build images/demo.yaml --out out/demo"
$basalt build images/demo.yaml --out out/demo

echo "== basalt inspect out/demo/disk.raw"
$basalt inspect out/demo/disk.raw
echo "== basalt inspect out/demo/update"
$basalt inspect out/demo/update
echo "== disk image: $(du -h --apparent-size out/demo/disk.raw | cut -f1) apparent, $(du -h out/demo/disk.raw | cut -f1) allocated (sparse)"
