#!/usr/bin/env bash
# Benchmark (issue 8): basalt-updater install of a ~300 MB root image into a file-backed slot, against the
# reference pipeline `curl | xz -T1 -dc | dd` (and `curl | zstd -dc | dd`), same run, same payload files,
# same loopback HTTP server (basalt repo serve).
#
# It builds one rootfs (the Go toolchain tree plus the demo rootfs, as hack/bench/build.sh), a small factory
# image (v0.1.0, demo rootfs only, same disk layout) to install into, and publishes v1.0.0 with an xz payload
# and v1.1.0 with a zstd payload of the same rootfs. The updater's time is its whole `install`: TUF refresh,
# download + block verification + decompression + write, reading the slot back and recomputing its verity
# root hash, and writing the UKI to the ESP. The pipelines only download, decompress and write.
# Peak RSS is the largest single process (/usr/bin/time %M; for a pipeline, the largest of its processes).
# Usage: hack/bench/install.sh   (BENCH_DIR overrides the scratch folder, default /tmp/basalt-bench-install)
set -euo pipefail
cd "$(dirname "$0")/../.."
work=${BENCH_DIR:-/tmp/basalt-bench-install}
export SOURCE_DATE_EPOCH=1700000000
for t in curl xz zstd dd python3 bc /usr/bin/time; do
  command -v $t >/dev/null || [ -x "$t" ] || { echo "missing $t: run hack/deps.sh (and apt-get install curl time bc zstd)" >&2; exit 1; }
done
make -s build
basalt=$PWD/bin/basalt
updater=$PWD/bin/basalt-updater
rm -rf "$work"; mkdir -p "$work"
log() { printf '== %s\n' "$*" >&2; }

log "rootfs: demo rootfs + Go toolchain"
bash hack/mkrootfs.sh "$work/rootfs" >/dev/null
mkdir -p "$work/rootfs/usr/local"
cp -a "$(go env GOROOT)" "$work/rootfs/usr/local/go"
bash hack/mkrootfs.sh "$work/small" >/dev/null

image() { # file, rootfs dir, codec
  cat > "$1" <<YAML
name: bench
version: 0.0.0
rootfs:
  dir: $2
kernel:
  cmdline: console=ttyS0
disk:
  size: 2GiB
  root: 640MiB
payload:
  compression: $3
YAML
}
image "$work/factory.yaml" small xz
image "$work/xz.yaml" rootfs xz
image "$work/zstd.yaml" rootfs zstd

log "keys, repository, builds (factory 0.1.0, xz 1.0.0, zstd 1.1.0), publish"
$basalt keys init --dir "$work/keys" --log-level warn >/dev/null
$basalt repo init --repo "$work/repo" --keys "$work/keys" --log-level warn >/dev/null
cp "$work/repo/metadata/1.root.json" "$work/root.json"
$basalt build "$work/factory.yaml" --version 0.1.0 --out "$work/factory" --quiet --log-level warn >/dev/null
$basalt build "$work/xz.yaml" --version 1.0.0 --out "$work/xz" --quiet --log-level warn >/dev/null
$basalt build "$work/zstd.yaml" --version 1.1.0 --out "$work/zstd" --quiet --log-level warn >/dev/null
$basalt publish --repo "$work/repo" --keys "$work/keys" --channel stable "$work/xz/update" --log-level warn >/dev/null
$basalt publish --repo "$work/repo" --keys "$work/keys" --channel stable "$work/zstd/update" --log-level warn >/dev/null

root_size=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["root"]["size"])' "$work/xz/update/manifest.json")
root_size_z=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["root"]["size"])' "$work/zstd/update/manifest.json")
[ "$root_size" = "$root_size_z" ] || { echo "xz and zstd root images differ in size: $root_size vs $root_size_z" >&2; exit 1; }
# The payload files as published (with consistent snapshots their names start with their hash).
target() { find "$work/repo/targets" -type f -name "*$1" | head -1; }
xz_file=$(target bench_1.0.0.root.xz)
zst_file=$(target bench_1.1.0.root.zstd)
[ -n "$xz_file" ] && [ -n "$zst_file" ] || { echo "payload targets not found under $work/repo/targets" >&2; exit 1; }
xz_url=${xz_file#"$work/repo/"}
zst_url=${zst_file#"$work/repo/"}

port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
$basalt repo serve --repo "$work/repo" --addr "127.0.0.1:$port" --log-level warn >/dev/null &
server=$!
trap 'kill $server 2>/dev/null || true' EXIT
for _ in $(seq 50); do (echo >"/dev/tcp/127.0.0.1/$port") 2>/dev/null && break; sleep 0.1; done
base=http://127.0.0.1:$port
curl -sfo /dev/null "$base/$xz_url" || { echo "cannot fetch $base/$xz_url" >&2; exit 1; }
# Every run reads its payload from a warm page cache.
cat "$xz_file" "$zst_file" >/dev/null

measure() { # label, command...: seconds and peak RSS (KiB) into $work/label.time
  local label=$1; shift
  /usr/bin/time -f "%e %M" -o "$work/$label.time" "$@" >"$work/$label.log" 2>&1
}
slot=$((640 * 1024 * 1024))
pipeline() { # label, url, decompressor
  rm -f "$work/$1.slot"; truncate -s $slot "$work/$1.slot"
  log "reference: curl | $3 | dd"
  measure "$1" sh -c "curl -sf '$base/$2' | $3 | dd of='$work/$1.slot' bs=1M conv=notrunc status=none"
  head -c "$root_size" "$work/$1.slot" | sha256sum | cut -d' ' -f1 > "$work/$1.sum"
}
updater_install() { # label, version
  cp --sparse=always "$work/factory/disk.raw" "$work/$1.raw"
  cat > "$work/$1.yaml" <<YAML
repository:
  url: $base
  trustedRoot: $work/root.json
name: bench
channel: stable
stateDir: $work/$1.state
YAML
  log "basalt-updater install --version $2"
  measure "$1" "$updater" --config "$work/$1.yaml" --disk "$work/$1.raw" install --no-reboot --version "$2"
}
pipeline ref-xz "$xz_url" "xz -T1 -dc"
updater_install basalt-xz 1.0.0
pipeline ref-zstd "$zst_url" "zstd -dc"
updater_install basalt-zstd 1.1.0

# The reference slots must hold the root image each manifest names (the two builds' salts differ).
for c in xz zstd; do
  want=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["root"]["sha256"])' "$work/$c/update/manifest.json")
  [ "$(cat "$work/ref-$c.sum")" = "$want" ] || { echo "ref-$c: slot content does not match the manifest's root sha256" >&2; exit 1; }
done
for l in basalt-xz basalt-zstd; do
  grep -q . "$work/$l.time" || { echo "$l failed:" >&2; cat "$work/$l.log" >&2; exit 1; }
done

# Phases of the updater's install from its state-change log lines (when they carry timestamps).
phases() {
  python3 - "$work/$1.log" <<'PY'
import re,sys,datetime
t={}
for l in open(sys.argv[1]):
    m=re.search(r'time=(\S+) .*msg="update state" from=(\S+) to=(\S+)', l)
    if m: t[m.group(3)]=datetime.datetime.fromisoformat(m.group(1).replace('Z','+00:00'))
def d(a,b): return "%.2f" % (t[b]-t[a]).total_seconds() if a in t and b in t else "?"
print("download+write %s s, read back + verity %s s, ESP + switch %s s" % (d("downloading","written"), d("written","verified"), d("verified","switched")))
PY
}

read rx_sec rx_rss < "$work/ref-xz.time"
read rz_sec rz_rss < "$work/ref-zstd.time"
read bx_sec bx_rss < "$work/basalt-xz.time"
read bz_sec bz_rss < "$work/basalt-zstd.time"
mbs() { echo "$root_size / $1 / 1000000" | bc -l; }
ratio() { echo "$rx_sec / $1" | bc -l; }  # throughput relative to the xz pipeline
yes_no() { if [ "$(echo "$1" | bc -l)" = 1 ]; then echo met; else echo "NOT met"; fi; }

printf '\nroot image %d bytes (%.1f MB); payloads: xz %d bytes, zstd %d bytes; %s cores\n' \
  "$root_size" "$(echo "$root_size/1000000" | bc -l)" "$(stat -c %s "$xz_file")" "$(stat -c %s "$zst_file")" "$(nproc)"
printf '%-44s %8s %9s %9s %10s\n' "" "seconds" "MB/s" "peak RSS" "vs xz pipe"
row() { printf '%-44s %8.2f %9.1f %6d MB %9.2fx\n' "$1" "$2" "$(mbs "$2")" $(($3 / 1024)) "$(ratio "$2")"; }
row "curl | xz -T1 -dc | dd (reference)" "$rx_sec" "$rx_rss"
row "curl | zstd -dc | dd" "$rz_sec" "$rz_rss"
row "basalt-updater install, xz payload (whole)" "$bx_sec" "$bx_rss"
row "basalt-updater install, zstd payload (whole)" "$bz_sec" "$bz_rss"
printf 'updater xz phases:   %s\n' "$(phases basalt-xz)"
printf 'updater zstd phases: %s\n' "$(phases basalt-zstd)"
printf 'target xz payload   >= 1.0x xz pipeline: %.2fx  %s\n' "$(ratio "$bx_sec")" "$(yes_no "$rx_sec / $bx_sec >= 1.0")"
printf 'target zstd payload >= 3.0x xz pipeline: %.2fx  %s\n' "$(ratio "$bz_sec")" "$(yes_no "$rx_sec / $bz_sec >= 3.0")"
printf 'target peak RSS <= 64 MB: xz %d MB %s, zstd %d MB %s\n' \
  $((bx_rss / 1024)) "$(yes_no "$bx_rss <= 65536")" $((bz_rss / 1024)) "$(yes_no "$bz_rss <= 65536")"
