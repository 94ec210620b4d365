#!/usr/bin/env bash
# Smoke-test a cross-built store-agent under user-mode QEMU.
#
#   cross/smoke-test.sh [aarch64|armv7] [BINARY] [PROFILE...]
#
# BINARY defaults to target/cross/dist/store-agent-<arch> (cross/build.sh's
# output); PROFILEs default to every k3s/overlays/**/store.toml.
# Checks that `file` sees an ELF for the right machine, then runs
# `BINARY config check PROFILE` for each profile under qemu-<arch>-static.
# `config check` must stay single-threaded: programs that start a second
# thread hang under qemu-user here, hence the `timeout 60`.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/.." && pwd)"

arch="${1:-aarch64}"
case "$arch" in
  aarch64|arm64) arch=aarch64; qemu="qemu-aarch64-static"; sysroot=/usr/aarch64-linux-gnu; elf_re='ELF 64-bit LSB .*ARM aarch64' ;;
  armv7|armhf)   arch=armv7;   qemu="qemu-arm-static";   sysroot=/usr/arm-linux-gnueabihf; elf_re='ELF 32-bit LSB .*ARM, EABI5' ;;
  *) echo "usage: $0 [aarch64|armv7] [BINARY] [PROFILE...]" >&2; exit 2 ;;
esac
shift || true
bin="${1:-${CARGO_TARGET_DIR:-$repo/target/cross}/dist/store-agent-$arch}"
shift || true

log() { printf '[cross/smoke] %s\n' "$*" >&2; }

need=()
command -v "$qemu" >/dev/null 2>&1 || need+=(qemu-user-static)
command -v file >/dev/null 2>&1 || need+=(file)
if [ "${#need[@]}" -gt 0 ]; then
  SUDO=""; [ "$(id -u)" -ne 0 ] && command -v sudo >/dev/null 2>&1 && SUDO=sudo
  log "installing ${need[*]}"
  # A mirror mid-sync can fail one index (the arm64 ones toolchain.sh
  # added, say): the install below says whether what we need resolved.
  $SUDO apt-get -o Acquire::Retries=3 update -q >/dev/null ||
    log "warning: apt-get update reported errors; trying the install anyway"
  $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${need[@]}" >/dev/null
fi

if [ ! -f "$bin" ]; then
  log "FAIL: no binary at $bin (run cross/build.sh $arch first)"
  exit 1
fi

desc="$(file -b "$bin")"
if ! grep -Eq "$elf_re" <<<"$desc"; then
  log "FAIL: $bin is not a $arch ELF: $desc"
  exit 1
fi
log "ok: file: $desc"

profiles=("$@")
if [ "${#profiles[@]}" -eq 0 ]; then
  mapfile -t profiles < <(find "$repo/k3s/overlays" -name store.toml | sort)
fi
if [ "${#profiles[@]}" -eq 0 ]; then
  log "FAIL: no store.toml found under k3s/overlays"
  exit 1
fi

# The dynamic loader and libc of the target come from the cross libc package
# (libc6-<arch>-cross, pulled in by gcc-<gnu>): point qemu at that sysroot.
export QEMU_LD_PREFIX="$sysroot"
# The TLS files a profile names live on the store box (mounted Secrets), not
# in this checkout: check everything else about the profile here.
export STORELINK_CONFIG_CHECK_FILES=0
fail=0
for p in "${profiles[@]}"; do
  if out="$(timeout 60 "$qemu" "$bin" config check "$p" 2>&1)"; then
    log "ok: config check $p"
  else
    rc=$?
    [ "$rc" -eq 124 ] && out="timed out after 60 s (did config check start a second thread?)"
    log "FAIL: config check $p (exit $rc): $out"
    fail=1
  fi
done
[ "$fail" -eq 0 ] && log "smoke test passed for $bin"
exit "$fail"
