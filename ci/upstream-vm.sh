#!/usr/bin/env bash
# The upstream testbed: run kvm-msr against a Debian kernel's own kvm + kvm_amd, inside QEMU's TCG
# (`-cpu max` emulates AMD SVM with NPT, so kvm_amd loads and /dev/kvm appears in the VM).
#
#   ci/upstream-vm.sh KERNEL PROFILE [WHAT]
#
# KERNEL   6.1 | 6.12 | latest (newest linux-image-amd64 of bookworm / trixie / sid), or a folder
#          holding the kernel's .deb files.
# PROFILE  default | ignore-msrs (kvm.ignore_msrs=1) | fep (kvm.force_emulation_prefix=1) |
#          all (both). Parameters are given to insmod inside the VM.
# WHAT     report (default): `kvm-msr probe` and `kvm-msr report`, both as JSON.
#          fuzz: a short campaign of every fuzz target with the kernel-log oracle on (needs
#          ci/fuzz-build.sh; see ci/upstream-fuzz.sh).
#          fetch: only download and unpack the kernel (prints its release).
#
# Output in target/upstream-vm/<kernel>-<profile>/: report.json, probe.json, kmsg.txt,
# console.txt, and a summary line "N passed, N failed, N skipped, N deviations" on stdout.
#
# Exit status: the report's own (0 all passed or recorded, 1 a check failed, 2 bad input,
# 4 nothing ran), or 10 bad arguments, 11 a download or tool install failed, 12 the VM did not
# boot, 13 a module failed to load or /dev/kvm did not appear, 14 the guest kernel panicked,
# 15 the VM timed out, 16 the results did not come back.
#
# Environment: UPSTREAM_VM_TIMEOUT (seconds, default 1500); UPSTREAM_VM_SMP (default 1: with
# two vCPUs, 6.1 soft-locks under multi-threaded TCG); UPSTREAM_VM_MEM (default 3G);
# UPSTREAM_VM_REFRESH=1 (look for a newer kernel even if one is cached); KVM_MSR_BIN (a prebuilt
# kvm-msr; default: build target/release/kvm-msr); UPSTREAM_VM_REPORT_ARGS (extra arguments to
# `kvm-msr report`, e.g. "--filter guest-fep.").
set -euo pipefail
caller="$PWD"
cd "$(dirname "$0")/.."
root="$PWD"

die() { local code=$1; shift; echo "upstream-vm: $*" >&2; exit "$code"; }
usage() { sed -n '2,/^set -euo/p' "$0" | sed '$d' | sed 's/^# \{0,1\}//' >&2; exit 10; }

[ $# -ge 2 ] && [ $# -le 3 ] || usage
kernel_arg=$1 profile=$2 what=${3:-report}
case "$profile" in
  default) params_kvm="" ;;
  ignore-msrs) params_kvm="ignore_msrs=1" ;;
  fep) params_kvm="force_emulation_prefix=1" ;;
  all) params_kvm="ignore_msrs=1 force_emulation_prefix=1" ;;
  *) echo "upstream-vm: unknown profile '$profile'" >&2; usage ;;
esac
case "$what" in report|fuzz|fetch) ;; *) echo "upstream-vm: unknown WHAT '$what'" >&2; usage ;; esac

base="$root/target/upstream-vm"
cache="$base/cache"
mkdir -p "$cache"

# --- tools --------------------------------------------------------------------------------------
need_pkgs=()
command -v qemu-system-x86_64 >/dev/null || need_pkgs+=(qemu-system-x86)
# (grep without -q: an early exit would give busybox SIGPIPE and fail the pipeline)
{ [ -x /bin/busybox ] && /bin/busybox --list 2>/dev/null | grep -x insmod >/dev/null \
  && file -L /bin/busybox 2>/dev/null | grep static >/dev/null; } || need_pkgs+=(busybox-static)
command -v cpio >/dev/null || need_pkgs+=(cpio)
command -v xz >/dev/null || need_pkgs+=(xz-utils)
command -v zstd >/dev/null || need_pkgs+=(zstd)
command -v file >/dev/null || need_pkgs+=(file)
command -v python3 >/dev/null || need_pkgs+=(python3)
if [ ${#need_pkgs[@]} -gt 0 ]; then
  echo "upstream-vm: installing ${need_pkgs[*]}" >&2
  { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need_pkgs[@]}"; } \
    >"$cache/apt-install.log" 2>&1 || die 11 "could not install ${need_pkgs[*]} (see $cache/apt-install.log); install them by hand or run as root"
fi
busybox=/bin/busybox
file -L "$busybox" | grep -q static || die 11 "$busybox is not statically linked (install busybox-static)"

# --- the kernel ---------------------------------------------------------------------------------
# Each series gets its own apt state under target/, so the host's apt sources are never touched.
fetch_series() { # series suites... -> prints the folder holding the .deb files
  local series=$1; shift
  local dir="$cache/kernels/$series" apt="$cache/apt-$series"
  if [ -s "$dir/packages" ] && [ "${UPSTREAM_VM_REFRESH:-0}" != 1 ]; then
    echo "$dir"; return
  fi
  mkdir -p "$apt/lists/partial" "$apt/archives/partial" "$dir"
  : >"$apt/sources.list"
  local s
  for s in "$@"; do
    local uri=http://deb.debian.org/debian
    case "$s" in *-security) uri=http://deb.debian.org/debian-security ;; esac
    echo "deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] $uri $s main" >>"$apt/sources.list"
  done
  local -a A=(-o "Dir::Etc::SourceList=$apt/sources.list" -o Dir::Etc::SourceParts=/dev/null
    -o "Dir::State::Lists=$apt/lists" -o "Dir::Cache=$apt" -o Dir::State::status=/dev/null
    -o Acquire::Languages=none -o APT::Get::List-Cleanup=0)
  apt-get "${A[@]}" update >"$apt/update.log" 2>&1 || die 11 "apt-get update for $series failed (see $apt/update.log)"
  # linux-image-amd64 -> linux-image-<release>-amd64 -> (on newer kernels) linux-binary/modules-<release>
  local image
  image=$(apt-cache "${A[@]}" depends linux-image-amd64 2>/dev/null | sed -n 's/^ *Depends: \(linux-image-[^ ]*-amd64\)$/\1/p' | head -n 1)
  [ -n "$image" ] || die 11 "no linux-image-amd64 in $*"
  local rel=${image#linux-image-}
  local pkgs=("$image")
  local p
  for p in "linux-binary-$rel" "linux-modules-$rel"; do
    apt-cache "${A[@]}" show "$p" >/dev/null 2>&1 && pkgs+=("$p")
  done
  if [ "$(cat "$dir/packages" 2>/dev/null)" != "${pkgs[*]}" ]; then
    rm -rf "$dir" && mkdir -p "$dir"
    (cd "$dir" && apt-get "${A[@]}" download "${pkgs[@]}" >"$apt/download.log" 2>&1) \
      || die 11 "apt-get download ${pkgs[*]} failed (see $apt/download.log)"
    echo "${pkgs[*]}" >"$dir/packages"
  fi
  echo "$dir"
}

case "$kernel_arg" in
  6.1) debs=$(fetch_series 6.1 bookworm bookworm-updates bookworm-security) ;;
  6.12) debs=$(fetch_series 6.12 trixie trixie-updates trixie-security) ;;
  latest) debs=$(fetch_series latest sid) ;;
  *)
    case "$kernel_arg" in /*) ;; *) kernel_arg="$caller/$kernel_arg" ;; esac
    [ -d "$kernel_arg" ] || die 10 "KERNEL must be 6.1, 6.12, latest or a folder of .deb files; '$kernel_arg' is none"
    ls "$kernel_arg"/*.deb >/dev/null 2>&1 || die 10 "no .deb files in $kernel_arg"
    debs=$(cd "$kernel_arg" && pwd) ;;
esac

tree="$cache/trees/$(echo "$debs" | md5sum | cut -c1-12)-$(ls "$debs"/*.deb | xargs -n1 basename | md5sum | cut -c1-12)"
if [ ! -f "$tree/.done" ]; then
  rm -rf "$tree" && mkdir -p "$tree"
  for d in "$debs"/*.deb; do dpkg-deb -x "$d" "$tree" || die 11 "cannot unpack $d"; done
  touch "$tree/.done"
fi
moddir=$(ls -d "$tree"/usr/lib/modules/*/ "$tree"/lib/modules/*/ 2>/dev/null | head -n 1 || true)
[ -n "$moddir" ] || die 11 "no lib/modules in the kernel packages ($debs)"
release=$(basename "$moddir")
vmlinuz=$(ls "$tree"/boot/vmlinuz-* "$moddir"vmlinuz 2>/dev/null | head -n 1 || true)
[ -n "$vmlinuz" ] || die 11 "no vmlinuz in the kernel packages ($debs)"
if [ "$what" = fetch ]; then
  echo "$release"
  exit 0
fi
kernel_name=$kernel_arg
[ -d "$kernel_arg" ] && kernel_name=$release
out="$base/$kernel_name-$profile"
[ "$what" = fuzz ] && out="$base/$kernel_name-$profile-fuzz"
rm -rf "$out" && mkdir -p "$out"
echo "upstream-vm: kernel $release ($debs), profile $profile, $what" >&2

# --- the binary ---------------------------------------------------------------------------------
bin=${KVM_MSR_BIN:-}
if [ -z "$bin" ]; then
  cargo build --release --locked --bin kvm-msr >&2 || die 11 "cargo build of kvm-msr failed"
  bin="$root/target/release/kvm-msr"
fi
[ -x "$bin" ] || die 10 "KVM_MSR_BIN=$bin is not an executable"

# --- the initramfs ------------------------------------------------------------------------------
ird="$out/initramfs"
mkdir -p "$ird"/{bin,dev,proc,sys,tmp,lib/kvm,out,fuzz}
cp "$busybox" "$ird/bin/busybox"
cp "$bin" "$ird/bin/kvm-msr"
# The binary's shared libraries, at the paths the dynamic loader looks for them.
ldd "$bin" | awk '/=> \//{print $3} /^\t\/lib/{print $1}' | while read -r lib; do
  mkdir -p "$ird$(dirname "$lib")" && cp -L "$lib" "$ird$lib"
done
cp -r "$root/fixtures" "$ird/fixtures"

# kvm_amd and what it depends on (the `depends=` of each module's .modinfo), in load order,
# decompressed for busybox's insmod.
unpack_ko() { # file -> stdout
  case "$1" in
    *.xz) xz -dc "$1" ;; *.zst) zstd -qdc "$1" ;; *.gz) gzip -dc "$1" ;; *) cat "$1" ;;
  esac
}
declare -a order=()
add_mod() { # module name (dashes or underscores)
  local name=${1//_/-} m f deps
  for m in "${order[@]}"; do [ "$m" = "$name" ] && return; done
  f=$(find "$moddir" -name "$name.ko*" -o -name "${1//-/_}.ko*" | head -n 1)
  [ -n "$f" ] || die 11 "module $1 is not in $moddir"
  unpack_ko "$f" >"$ird/lib/kvm/$name.ko"
  deps=$(tr '\0' '\n' <"$ird/lib/kvm/$name.ko" | sed -n 's/^depends=//p' | head -n 1)
  for m in ${deps//,/ }; do add_mod "$m"; done
  order+=("$name")
}
add_mod kvm-amd
: >"$ird/lib/kvm/order"
for name in "${order[@]}"; do
  params=""
  [ "$name" = kvm ] && params=$params_kvm
  echo "$name.ko $params" >>"$ird/lib/kvm/order"
done

if [ "$what" = fuzz ]; then
  # fuzz targets and their seeds, placed by ci/upstream-fuzz.sh
  [ -d "$base/fuzz-payload" ] || die 10 "no $base/fuzz-payload (run ci/upstream-fuzz.sh, which builds it)"
  cp -r "$base/fuzz-payload"/. "$ird/fuzz/"
  ldd "$ird"/fuzz/bin/* 2>/dev/null | awk '/=> \//{print $3}' | sort -u | while read -r lib; do
    mkdir -p "$ird$(dirname "$lib")" && cp -L "$lib" "$ird$lib"
  done
fi

cat >"$ird/init" <<EOF
#!/bin/busybox sh
/bin/busybox --install -s /bin
export PATH=/bin
mount -t proc proc /proc; mount -t sysfs sys /sys; mount -t devtmpfs dev /dev; mount -t tmpfs tmp /tmp
echo "@@uvm booted \$(uname -r)"
while read -r mod params; do
  if ! insmod /lib/kvm/\$mod \$params; then
    echo "@@uvm modfail \$mod \$params"; poweroff -f
  fi
done </lib/kvm/order
[ -e /dev/kvm ] || { echo "@@uvm modfail no /dev/kvm after loading kvm_amd"; poweroff -f; }
echo "@@uvm modules-loaded"
for p in /sys/module/kvm/parameters/ignore_msrs /sys/module/kvm/parameters/force_emulation_prefix; do
  echo "@@uvm param \$p=\$(cat \$p 2>/dev/null)"
done
export KVM_MSR_FIXTURES=/fixtures RUST_BACKTRACE=1
cd /out
if [ "$what" = report ]; then
  kvm-msr probe --format json >probe.json 2>probe.err; echo \$? >probe.rc
  echo "@@uvm probe rc=\$(cat probe.rc)"
  kvm-msr report --format json $(echo "${UPSTREAM_VM_REPORT_ARGS:-}") >report.json 2>report.err; echo \$? >report.rc
  echo "@@uvm report rc=\$(cat report.rc)"
else
  sh /fuzz/run.sh >fuzz.txt 2>&1; echo \$? >fuzz.rc
  echo "@@uvm fuzz rc=\$(cat fuzz.rc)"
fi
dmesg >kmsg.txt
stty -F /dev/ttyS1 raw -echo 2>/dev/null
{ echo "@@uvm-data-begin"; tar cz . | base64; echo "@@uvm-data-end"; } >/dev/ttyS1
echo "@@uvm done"
poweroff -f
EOF
chmod +x "$ird/init"
(cd "$ird" && find . | cpio -o -H newc --quiet | gzip -1 >"$out/initramfs.cpio.gz")
rm -rf "$ird"

# --- the VM -------------------------------------------------------------------------------------
timeout_s=${UPSTREAM_VM_TIMEOUT:-1500}
start=$(date +%s)
set +e
timeout --foreground -k 10 "$timeout_s" qemu-system-x86_64 \
  -accel tcg,thread=multi -cpu max -smp "${UPSTREAM_VM_SMP:-1}" -m "${UPSTREAM_VM_MEM:-3G}" \
  -nodefaults -nographic -no-reboot -display none \
  -kernel "$vmlinuz" -initrd "$out/initramfs.cpio.gz" \
  -append "console=ttyS0 panic=-1 oops=panic quiet loglevel=4 mitigations=off" \
  -serial "file:$out/console.txt" -serial "file:$out/data.b64" \
  </dev/null >"$out/qemu.log" 2>&1
qrc=$?
set -e
secs=$(( $(date +%s) - start ))
tr -d '\r' <"$out/console.txt" >"$out/console.tmp" && mv "$out/console.tmp" "$out/console.txt"
echo "upstream-vm: the VM ran ${secs}s (qemu exit $qrc)" >&2

grep -q "@@uvm booted" "$out/console.txt" || {
  [ "$qrc" -eq 124 ] && die 15 "timed out after ${timeout_s}s before the VM booted (see $out/console.txt)"
  die 12 "the VM did not boot (qemu exit $qrc; see $out/qemu.log and $out/console.txt)"
}
if grep -q "Kernel panic" "$out/console.txt"; then
  grep -A3 "Kernel panic" "$out/console.txt" >&2
  die 14 "the guest kernel panicked (see $out/console.txt)"
fi
if grep -q "@@uvm modfail" "$out/console.txt"; then
  grep "@@uvm modfail" "$out/console.txt" >&2
  die 13 "a module failed to load (see $out/console.txt)"
fi
[ "$qrc" -eq 124 ] && die 15 "timed out after ${timeout_s}s (see $out/console.txt for how far it got)"
tr -d '\r' <"$out/data.b64" | sed -n '/^@@uvm-data-begin$/,/^@@uvm-data-end$/p' | sed '1d;$d' \
  | base64 -d 2>/dev/null | tar xz -C "$out" 2>/dev/null || die 16 "the results did not come back (see $out/console.txt)"
rm -f "$out/data.b64"

if [ "$what" = fuzz ]; then
  cat "$out/fuzz.txt"
  exit "$(cat "$out/fuzz.rc")"
fi
[ -s "$out/report.json" ] || { cat "$out/report.err" >&2 2>/dev/null; die 16 "no report came back (see $out/report.err)"; }
rc=$(cat "$out/report.rc")
python3 - "$out/report.json" <<'PY' || true
import json, sys
r = json.load(open(sys.argv[1]))
c = r["counts"]
print(f'{c.get("pass",0)} passed, {c.get("fail",0)} failed, {c.get("skip",0)} skipped, {c.get("deviation",0)} deviations')
PY
exit "$rc"
