#!/usr/bin/env bash
# Benchmark: `basalt build` against the reference pipeline (mkfs.ext4 -d + veritysetup format + xz -T2 -6)
# on the same ~250 MB rootfs (the Go toolchain tree plus the demo rootfs), in the same run.
# Prints both times, the ratio, payload sizes and peak RSS. Usage: hack/bench/build.sh [xz|zstd]
set -euo pipefail
cd "$(dirname "$0")/../.."
codec=${1:-xz}
work=${BENCH_DIR:-/tmp/basalt-bench}
export SOURCE_DATE_EPOCH=1700000000
for t in mkfs.ext4 veritysetup xz /usr/bin/time; do
  command -v $t >/dev/null || [ -x "$t" ] || { echo "missing $t: run hack/deps.sh (and apt-get install time)" >&2; exit 1; }
done
make -s build
rm -rf "$work"; mkdir -p "$work"
bash hack/mkrootfs.sh "$work/rootfs" >/dev/null
mkdir -p "$work/rootfs/usr/local"
cp -a "$(go env GOROOT)" "$work/rootfs/usr/local/go"
size_mb=$(du -sm "$work/rootfs" | cut -f1)
entries=$(find "$work/rootfs" | wc -l)
cat > "$work/bench.yaml" <<YAML
name: bench
version: 1.0.0
rootfs:
  dir: rootfs
kernel:
  cmdline: console=ttyS0
disk:
  size: 2GiB
  root: 640MiB
payload:
  compression: $codec
YAML
# Both sides read the rootfs from a warm page cache.
find "$work/rootfs" -type f -exec cat {} + >/dev/null
measure() { # label, command...: prints seconds and peak RSS (KiB)
  local label=$1; shift
  /usr/bin/time -f "%e %M" -o "$work/$label.time" "$@" >"$work/$label.log" 2>&1
}

# basalt: whole build, and the root image + verity step alone (from its log timestamps).
measure basalt ./bin/basalt build "$work/bench.yaml" --out "$work/out" --quiet
read b_sec b_rss < "$work/basalt.time"
b_payload=$(stat -c %s "$work"/out/update/bench_1.0.0.root.$codec)
b_root=$(python3 - "$work/basalt.log" <<'PY'
import re,sys,datetime
t={}
for l in open(sys.argv[1]):
    m=re.search(r'time=(\S+) .*msg="([^"]+)"', l)
    if m: t.setdefault(m.group(2), datetime.datetime.fromisoformat(m.group(1).replace('Z','+00:00')))
print("%.2f" % (t["assembling UKI"]-t["writing root filesystem and dm-verity tree"]).total_seconds())
PY
)

# reference: mkfs.ext4 -d, veritysetup format (hash tree appended), xz -T2 -6.
img="$work/ref.img"
rm -f "$img"; truncate -s 640M "$img"
export E2FSPROGS_FAKE_TIME=$SOURCE_DATE_EPOCH
start=$(date +%s.%N)
measure ref-mkfs mkfs.ext4 -q -F -O ^has_journal -E root_owner=0:0 -d "$work/rootfs" "$img"
used=$(dumpe2fs -h "$img" 2>/dev/null | awk -F: '/^Block count/ {print $2*4096}')
measure ref-verity veritysetup format "$img" "$img" --hash-offset="$used" --data-blocks=$((used/4096))
mid=$(date +%s.%N)
if [ "$codec" = xz ]; then
  measure ref-compress sh -c "head -c \$(( $used + $used/100 + 1048576 )) '$img' | xz -T2 -6 > '$work/ref.img.xz'"
  r_payload=$(stat -c %s "$work/ref.img.xz")
else
  measure ref-compress sh -c "head -c \$(( $used + $used/100 + 1048576 )) '$img' | zstd -T2 -3 -q > '$work/ref.img.zst'"
  r_payload=$(stat -c %s "$work/ref.img.zst")
fi
end=$(date +%s.%N)
r_sec=$(echo "$end - $start" | bc)
r_root=$(echo "$mid - $start" | bc)
r_rss=$(cat "$work"/ref-*.time | awk '{ if ($2>m) m=$2 } END {print m}')

printf '\nrootfs: %s MB, %s entries; codec %s\n' "$size_mb" "$entries" "$codec"
printf '%-34s %8s %10s %14s\n' "" "seconds" "peak RSS" "payload bytes"
printf '%-34s %8.2f %7d MB %14d\n' "basalt build (whole)" "$b_sec" $((b_rss/1024)) "$b_payload"
printf '%-34s %8.2f %7d MB %14d\n' "reference pipeline (whole)" "$r_sec" $((r_rss/1024)) "$r_payload"
printf '%-34s %8.2f\n' "basalt root image + verity" "$b_root"
printf '%-34s %8.2f\n' "mkfs.ext4 -d + veritysetup format" "$r_root"
printf 'ratio whole build basalt/reference:   %.2f  (target <= 1.0)\n' "$(echo "$b_sec / $r_sec" | bc -l)"
printf 'ratio root+verity basalt/reference:   %.2f  (target <= 0.5)\n' "$(echo "$b_root / $r_root" | bc -l)"
printf 'basalt peak RSS: %d MB (target < 256 MB)\n' $((b_rss/1024))
