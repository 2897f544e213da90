#!/usr/bin/env bash
# Benchmark (issue 16): delta updates against full installs, same run, on Debian root filesystems.
#
# hack/bench/deltapairs.sh makes five rootfs folders from Debian packages (cached): 1.0.0 (bookworm minbase,
# kernel, systemd, common packages) and four versions that change it one way each: 1.0.1 one /etc file
# edited, 1.0.2 one library package upgraded from bookworm-security, 1.1.0 bookworm-security's kernel
# (new ABI, new modules), 1.2.0 every bookworm-security upgrade (a roll-up). Each is built with bin/basalt
# (same image config, SOURCE_DATE_EPOCH fixed); 1.0.0's disk.raw is the device.
#
# Per pair 1.0.0 -> V, two repositories start as copies of one holding 1.0.0 (stable channel): in one V
# is published as a full payload only, in the other with `--delta-from 1.0.0`. On a fresh copy of 1.0.0's
# disk.raw, `basalt-updater --disk ... install --version V` runs against each, through hack/bench/wirecount
# (a counting reverse proxy on 127.0.0.1 in front of `basalt repo serve`): wire bytes are every response
# body byte the updater fetched, TUF metadata included (the state folder starts empty). Time and peak RSS
# come from /usr/bin/time (%e, %M). The updater's log must name the method it used ("install method",
# method=full / method=delta). After each install the written slot is checked: its first root.size bytes
# hash to the manifest's root sha256, `veritysetup verify` (through a read-only loop device at the
# partition's offset, from `sfdisk -J`) accepts it with the manifest's root hash, and the slot written from
# the delta is `cmp`-identical to the slot written by the full install.
#
# Targets (issue 16): delta bytes on the wire <= 1 % of the full payload (config), <= 3 % (library),
# <= 20 % (kernel); the roll-up has no size target; every delta install no slower than the full one.
# "Full payload" = the version's payload files a full install needs: the compressed root image plus the UKI.
#
# Usage: hack/bench/delta.sh   (as root; BENCH_DIR, default /tmp/basalt-bench-delta, holds the cached rootfs
# folders and this run's files; PAYLOAD_COMPRESSION=xz|zstd, default xz; BASALT_BIN=DIR uses the binaries
# in DIR instead of `make build`). Exit status: 0 when every target is met, 1 when one is not or a check
# fails, 2 when this basalt cannot publish deltas yet (the full installs are still measured and printed).
set -euo pipefail
cd "$(dirname "$0")/../.."
work=${BENCH_DIR:-/tmp/basalt-bench-delta}
codec=${PAYLOAD_COMPRESSION:-xz}
export SOURCE_DATE_EPOCH=1700000000
export CGO_ENABLED=0

need() { # tool, Debian package
  command -v "$1" >/dev/null || [ -x "$1" ] || { echo "delta.sh: $1 missing: apt-get install $2" >&2; exit 1; }
}
need python3 python3; need bc bc; need /usr/bin/time time; need veritysetup cryptsetup-bin
need sfdisk fdisk; need losetup mount; need cmp diffutils; need debootstrap debootstrap; need go golang
[ "$(id -u)" = 0 ] || { echo "delta.sh: run as root (debootstrap, chroot, loop devices)" >&2; exit 1; }

log() { printf '== %s\n' "$*" >&2; }
die() { printf 'delta.sh: %s\n' "$*" >&2; exit 1; }
t0=$(date +%s)

if [ -n "${BASALT_BIN:-}" ]; then
  bindir=$(realpath "$BASALT_BIN")
else
  make -s build
  bindir=$PWD/bin
fi
basalt=$bindir/basalt
updater=$bindir/basalt-updater
[ -x "$basalt" ] && [ -x "$updater" ] || die "no basalt / basalt-updater in $bindir"
if "$basalt" publish --help 2>&1 | grep -q -- --delta-from; then have_delta=1; else
  have_delta=0
  log "WARNING: $basalt publish has no --delta-from yet: measuring full installs only"
fi

mkdir -p "$work"
run=$work/run
rm -rf "$run"; mkdir -p "$run"
go build -o "$run/wirecount" ./hack/bench/wirecount

log "rootfs folders (hack/bench/deltapairs.sh; cached under $work/rootfs)"
bash hack/bench/deltapairs.sh > "$run/pairs.txt"
declare -A dir kind
versions=()
while read -r v d k; do dir[$v]=$d; kind[$v]=$k; [ "$v" = 1.0.0 ] || versions+=("$v"); done < "$run/pairs.txt"
[ -n "${dir[1.0.0]:-}" ] && [ ${#versions[@]} = 4 ] || die "deltapairs.sh did not list five versions"
t_rootfs=$(date +%s)

# One image config for every version; only rootfs.dir differs. The root slot holds the largest root image.
max_kb=0
for v in 1.0.0 "${versions[@]}"; do
  kb=$(du -sk --apparent-size "${dir[$v]}" | cut -f1)
  [ "$kb" -gt "$max_kb" ] && max_kb=$kb
done
root_mib=$(( (max_kb * 14 / 10 / 1024 + 255) / 256 * 256 ))
disk_mib=$(( 512 + 2 * root_mib + 512 ))
# The kernel. Debian's rootfs is merged-/usr (/lib -> usr/lib) and the builder looks for the modules only
# at /lib/modules/<release> without following that link, so with /boot/vmlinuz-<release> it refuses the
# initrd ("no disk driver ..."). Naming the kernel by the /vmlinuz link leaves the release unknown: the
# initrd then holds no modules (the image would not boot on a machine that needs them; the bench never
# boots it). KERNEL_PATH overrides.
kpath=${KERNEL_PATH:-/vmlinuz}
image() { # file, rootfs dir
  cat > "$1" <<YAML
name: bench
version: 0.0.0
rootfs:
  dir: $2
kernel:
  path: $kpath
  cmdline: console=ttyS0
disk:
  size: ${disk_mib}MiB
  root: ${root_mib}MiB
payload:
  compression: $codec
YAML
}

log "keys, repository, builds (root slot ${root_mib} MiB, $codec payloads)"
"$basalt" keys init --dir "$run/keys" --log-level warn >/dev/null
"$basalt" repo init --repo "$run/repo-base" --keys "$run/keys" --log-level warn >/dev/null
cp "$run/repo-base/metadata/1.root.json" "$run/root.json"
declare -A build_s
for v in 1.0.0 "${versions[@]}"; do
  image "$run/$v.yaml" "${dir[$v]}"
  s=$(date +%s.%N)
  "$basalt" build "$run/$v.yaml" --version "$v" --out "$run/build-$v" --quiet --log-level warn >/dev/null ||
    die "basalt build $v failed"
  build_s[$v]=$(echo "$(date +%s.%N) - $s" | bc)
  log "built $v in ${build_s[$v]%.*} s"
done
"$basalt" publish --repo "$run/repo-base" --keys "$run/keys" --channel stable "$run/build-1.0.0/update" --log-level warn >/dev/null
t_build=$(date +%s)

mf() { python3 -c 'import json,sys; m=json.load(open(sys.argv[1]))
for k in sys.argv[2].split("."): m=m[k]
print(m)' "$run/build-$1/update/manifest.json" "$2"; }
# The full payload: the files of the update folder a full install fetches (root payload + UKI).
payload_bytes() {
  local u=$run/build-$1/update
  echo $(( $(stat -c %s "$u/$(mf "$1" root.payload.path)") + $(stat -c %s "$u/$(mf "$1" uki.path)") ))
}

pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
}
trap cleanup EXIT
port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
# serve REPO WIRELOG: basalt repo serve + wirecount in front; sets $url, $serve_pids.
serve() {
  local p; p=$(port)
  "$basalt" repo serve --repo "$1" --addr "127.0.0.1:$p" --log-level warn >/dev/null 2>&1 &
  serve_pids=($!)
  for _ in $(seq 100); do (echo >"/dev/tcp/127.0.0.1/$p") 2>/dev/null && break; sleep 0.1; done
  rm -f "$2.addr"
  "$run/wirecount" -upstream "http://127.0.0.1:$p" -listen 127.0.0.1:0 -addr-file "$2.addr" -log "$2" &
  serve_pids+=($!)
  pids+=("${serve_pids[@]}")
  for _ in $(seq 100); do [ -s "$2.addr" ] && break; sleep 0.1; done
  [ -s "$2.addr" ] || die "wirecount did not start"
  url=http://$(cat "$2.addr")
  curl -sf -o /dev/null "$url/metadata/timestamp.json" || die "cannot fetch $url/metadata/timestamp.json"
  : > "$2" # the check above is not the device's
}
unserve() { for p in "${serve_pids[@]}"; do kill "$p" 2>/dev/null || true; wait "$p" 2>/dev/null || true; done; }

# slot_of DISK VERSION: "START_BYTES SIZE_BYTES" of the partition whose UUID is the version's partUUID.
slot_of() {
  sfdisk -J "$1" | python3 -c 'import json,sys
t=json.load(sys.stdin)["partitiontable"]; ss=t.get("sectorsize",512)
for p in t["partitions"]:
    if p.get("uuid","").lower()==sys.argv[1].lower(): print(p["start"]*ss, p["size"]*ss); break' "$(mf "$2" root.partUUID)"
}

# check_slot LABEL DISK VERSION: the written slot holds the version's root image; veritysetup agrees.
check_slot() {
  local label=$1 disk=$2 v=$3 off size
  read -r off size < <(slot_of "$disk" "$v") || true
  [ -n "${off:-}" ] || die "$label: no partition with $v's partUUID $(mf "$v" root.partUUID) on $disk"
  local rsize; rsize=$(mf "$v" root.size)
  local sum; sum=$(python3 - "$disk" "$off" "$rsize" <<'PY'
import hashlib,sys
f=open(sys.argv[1],'rb'); f.seek(int(sys.argv[2])); n=int(sys.argv[3]); h=hashlib.sha256()
while n>0:
    b=f.read(min(n,1<<22))
    if not b: break
    h.update(b); n-=len(b)
print(h.hexdigest())
PY
)
  [ "$sum" = "$(mf "$v" root.sha256)" ] || die "$label: slot content does not hash to $v's root sha256"
  local loop; loop=$(losetup -r -f --show -o "$off" --sizelimit "$size" "$disk")
  if ! veritysetup verify "$loop" "$loop" "$(mf "$v" root.verity.rootHash)" \
      --hash-offset="$(mf "$v" root.verity.hashOffset)" > "$run/$label.verity" 2>&1; then
    losetup -d "$loop"; cat "$run/$label.verity" >&2; die "$label: veritysetup verify failed"
  fi
  losetup -d "$loop"
  echo "$off"
}

# install LABEL REPO VERSION: a fresh copy of 1.0.0's disk, basalt-updater install through wirecount.
install() {
  local label=$1 repo=$2 v=$3
  cp --sparse=always "$run/build-1.0.0/disk.raw" "$run/$label.raw"
  serve "$repo" "$run/$label.wire"
  cat > "$run/$label.yaml" <<YAML
repository:
  url: $url
  trustedRoot: $run/root.json
name: bench
channel: stable
stateDir: $run/$label.state
YAML
  # Every install reads the repository from a warm page cache, and the device's disk too.
  find "$repo" -type f -exec cat {} + >/dev/null
  cat "$run/$label.raw" >/dev/null
  log "$label: basalt-updater install --version $v"
  local rc=0
  /usr/bin/time -f "%e %M" -o "$run/$label.time" \
    "$updater" --config "$run/$label.yaml" --disk "$run/$label.raw" install --no-reboot --version "$v" \
    > "$run/$label.log" 2>&1 || rc=$?
  unserve
  [ $rc = 0 ] || { tail -20 "$run/$label.log" >&2; die "$label: basalt-updater install failed (exit $rc, log $run/$label.log)"; }
}
wire_bytes() { awk '{s+=$3} END{print s+0}' "$1"; }
method_of() { { grep -o 'msg="install method".*' "$1" || true; } | { grep -o 'method=[a-z]*' || true; } | head -1 | cut -d= -f2; }

declare -A full_wire full_s full_rss delta_wire delta_s delta_rss meth pay
fail=0
for v in "${versions[@]}"; do
  pay[$v]=$(payload_bytes "$v")
  cp -a --reflink=auto "$run/repo-base" "$run/repo-$v-full"
  "$basalt" publish --repo "$run/repo-$v-full" --keys "$run/keys" --channel stable "$run/build-$v/update" \
    --log-level warn >/dev/null
  install "$v-full" "$run/repo-$v-full" "$v"
  read -r full_s[$v] full_rss[$v] < "$run/$v-full.time"
  full_wire[$v]=$(wire_bytes "$run/$v-full.wire")
  m=$(method_of "$run/$v-full.log"); [ -z "$m" ] || [ "$m" = full ] || die "$v-full: install method $m, want full"
  off_full=$(check_slot "$v-full" "$run/$v-full.raw" "$v")
  if [ $have_delta = 1 ]; then
    cp -a --reflink=auto "$run/repo-base" "$run/repo-$v-delta"
    "$basalt" publish --repo "$run/repo-$v-delta" --keys "$run/keys" --channel stable --delta-from 1.0.0 \
      "$run/build-$v/update" --log-level warn >/dev/null
    find "$run/repo-$v-delta/targets" -path "*/$v/deltas/*" -type f | grep -q . || die "$v: publish wrote no delta files"
    install "$v-delta" "$run/repo-$v-delta" "$v"
    read -r delta_s[$v] delta_rss[$v] < "$run/$v-delta.time"
    delta_wire[$v]=$(wire_bytes "$run/$v-delta.wire")
    meth[$v]=$(method_of "$run/$v-delta.log")
    [ "${meth[$v]}" = delta ] || { log "$v-delta: the updater's install method is '${meth[$v]:-not logged}', not delta"; fail=1; }
    off_delta=$(check_slot "$v-delta" "$run/$v-delta.raw" "$v")
    cmp -n "$(mf "$v" root.size)" -i "$off_full:$off_delta" "$run/$v-full.raw" "$run/$v-delta.raw" ||
      die "$v: the slot written from the delta differs from the slot the full install wrote"
    rm -f "$run/$v-delta.raw"
  fi
  rm -f "$run/$v-full.raw"
done
t_end=$(date +%s)

# Report.
mb() { echo "scale=1; $1 / 1000000" | bc; }
printf '\nimages (%s, SOURCE_DATE_EPOCH=%s): rootfs / root image (ext4 + verity) / full payload (root %s + UKI)\n' \
  "$codec" "$SOURCE_DATE_EPOCH" "$codec"
for v in 1.0.0 "${versions[@]}"; do
  printf '  %-6s %-8s rootfs %6s MB  root image %6s MB  payload %6s MB  built in %5.1f s  %s\n' "$v" "${kind[$v]}" \
    "$(mb $(( $(du -sk --apparent-size "${dir[$v]}" | cut -f1) * 1024 )))" "$(mb "$(mf "$v" root.size)")" \
    "$(mb "$(payload_bytes "$v")")" "${build_s[$v]}" "${dir[$v]}"
done
printf '\n%-15s %12s %12s %12s %7s %7s %7s %8s %8s %6s %s\n' "pair (kind)" "payload B" "full wire B" "delta wire B" \
  "delta %" "full s" "delta s" "full RSS" "delta RSS" "target" "verdict"
for v in "${versions[@]}"; do
  case ${kind[$v]} in config) tgt=1 ;; library) tgt=3 ;; kernel) tgt=20 ;; *) tgt= ;; esac
  if [ $have_delta = 1 ]; then
    pct=$(echo "scale=3; 100 * ${delta_wire[$v]} / ${pay[$v]}" | bc)
    verdict=PASS; why=()
    if [ -n "$tgt" ] && [ "$(echo "$pct <= $tgt" | bc)" != 1 ]; then verdict=FAIL; why+=("size"); fi
    if [ "$(echo "${delta_s[$v]} <= ${full_s[$v]}" | bc)" != 1 ]; then verdict=FAIL; why+=("time"); fi
    if [ "${meth[$v]}" != delta ]; then verdict=FAIL; why+=("method=${meth[$v]:-?}"); fi
    [ $verdict = PASS ] || fail=1
    printf '%-15s %12d %12d %12d %7.2f %7.1f %7.1f %5d MB %6d MB %6s %s\n' "1.0.0->$v" "${pay[$v]}" "${full_wire[$v]}" \
      "${delta_wire[$v]}" "$pct" "${full_s[$v]}" "${delta_s[$v]}" $((full_rss[$v] / 1024)) $((delta_rss[$v] / 1024)) \
      "${tgt:+<=$tgt%}" "$verdict${why:+ (${why[*]})}"
  else
    printf '%-15s %12d %12d %12s %7s %7.1f %7s %5d MB %9s %6s %s\n' "1.0.0->$v" "${pay[$v]}" "${full_wire[$v]}" \
      n/a n/a "${full_s[$v]}" n/a $((full_rss[$v] / 1024)) n/a "${tgt:+<=$tgt%}" "no delta support"
  fi
  printf '  (%s)\n' "${kind[$v]}"
done
printf '\nrun time: %d s (rootfs %d s, builds %d s, publish + installs + checks %d s); %s cores\n' \
  $((t_end - t0)) $((t_rootfs - t0)) $((t_build - t_rootfs)) $((t_end - t_build)) "$(nproc)"
printf 'slots checked: root sha256 = manifest, veritysetup verify with the manifest root hash%s\n' \
  "$([ $have_delta = 1 ] && echo ', delta slot cmp-identical to the full install slot')"
[ $have_delta = 1 ] || exit 2
exit $fail
