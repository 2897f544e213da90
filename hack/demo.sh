#!/usr/bin/env bash
# The demo `make demo` runs, end to end on this machine:
#   make keys and a TUF repository; make a small rootfs from Debian packages; build v1.0.0 (signed for
#   Secure Boot, the repository's root of trust baked in) and v1.1.0; publish both; serve the repository
#   on 127.0.0.1; and let basalt-updater update v1.0.0's factory disk image to v1.1.0 through TUF.
set -euo pipefail
cd "$(dirname "$0")/.."
export SOURCE_DATE_EPOCH=${SOURCE_DATE_EPOCH:-1700000000}
basalt=./bin/basalt
updater=./bin/basalt-updater
out=out/demo
rm -rf "$out"; mkdir -p "$out"

step() { printf '\n== %s\n' "$*"; }

step "basalt keys init + basalt repo init"
$basalt keys init --dir "$out/keys" --root-keys 3 --root-threshold 2
$basalt repo init --repo "$out/repo" --keys "$out/keys"
cp "$out/repo/metadata/1.root.json" "$out/root.json"

step "making a demo rootfs (busybox, systemd-boot, a Debian kernel) in out/demo-rootfs"
bash hack/mkrootfs.sh out/demo-rootfs bin/basalt-init >/dev/null

step "basalt build images/demo.yaml: v1.0.0 and v1.1.0"
$basalt build images/demo.yaml --keys "$out/keys" --version 1.0.0 --out "$out/v1.0.0"
$basalt build images/demo.yaml --keys "$out/keys" --version 1.1.0 --out "$out/v1.1.0"

step "sbverify: the UKI and systemd-boot carry our Secure Boot signature"
"$basalt" keys export-public --dir "$out/keys" --out "$out/public" >/dev/null
sbverify --cert "$out/public/secureboot.crt" "$out/v1.1.0/update/basalt-demo_1.1.0.efi"

step "basalt publish (channel stable)"
$basalt publish --repo "$out/repo" --keys "$out/keys" --channel stable "$out/v1.0.0/update"
$basalt publish --repo "$out/repo" --keys "$out/keys" --channel stable "$out/v1.1.0/update"

step "basalt repo serve on 127.0.0.1 + basalt-updater install into the factory image of v1.0.0"
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
$basalt repo serve --repo "$out/repo" --addr "127.0.0.1:$port" --log-level warn &
server=$!
trap 'kill $server 2>/dev/null || true' EXIT
for _ in $(seq 50); do (echo >"/dev/tcp/127.0.0.1/$port") 2>/dev/null && break; sleep 0.1; done
disk="$out/device.raw"
cp --sparse=always "$out/v1.0.0/disk.raw" "$disk"
cat > "$out/updater.yaml" <<YAML
repository:
  url: http://127.0.0.1:$port
  trustedRoot: root.json
name: basalt-demo
channel: stable
stateDir: $PWD/$out/state
YAML
$updater --config "$out/updater.yaml" --disk "$disk" status
$updater --config "$out/updater.yaml" --disk "$disk" check
$updater --config "$out/updater.yaml" --disk "$disk" install --no-reboot

step "basalt inspect $disk (v1.1.0 in root-b, its entry on trial with 3 tries)"
$basalt inspect "$disk"
step "disk image: $(du -h --apparent-size "$disk" | cut -f1) apparent, $(du -h "$disk" | cut -f1) allocated (sparse)"
