#!/usr/bin/env bash
# Runs the unit and property tests that stay on one thread, compiled for an
# ARM target, under user-mode QEMU: on armv7 that is where a `usize` is 32
# bits, so money, quantities, checksums and frame lengths are checked at
# the width the store box really has.
#
#   cross/unit-tests.sh [armv7]
#
# armv7 only: the aarch64 test binaries (built by Debian's Rust 1.96) spun at
# 100 % CPU under qemu-aarch64-static here even with --test-threads=1, like
# programs that start a second thread (not investigated further); aarch64
# has a 64-bit usize like the host, so the native `cargo test` already
# covers its arithmetic.
#
# What runs: every test of protocol and firmware-config, and the agent's
# library tests except the modules that start threads (their tokio
# runtimes and the outbox's writer thread hang under qemu-user here; the
# same tests run natively in `cargo test`). Each test binary runs with
# --test-threads=1, which keeps libtest on the main thread.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/.." && pwd)"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$repo/target/cross}"

log() { printf '[cross/unit-tests] %s\n' "$*" >&2; }

case "${1:-armv7}" in
  armv7|armhf) ;;
  *) echo "usage: $0 [armv7]  (see the comment at the top for aarch64)" >&2; exit 2 ;;
esac
# shellcheck source=cross/toolchain.sh
source "$here/toolchain.sh" armv7
qemu="qemu-arm-static"
if ! command -v "$qemu" >/dev/null 2>&1; then
  if [ "${CROSS_SKIP_INSTALL:-0}" = 1 ]; then
    log "FAIL: $qemu is missing (CROSS_SKIP_INSTALL=1, not installing)"
    exit 1
  fi
  log "apt-get install qemu-user-static"
  $SUDO apt-get update -q >/dev/null || true
  $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends qemu-user-static >/dev/null
fi
export QEMU_LD_PREFIX="/usr/$gnu"

# Agent modules whose tests start threads (see above).
agent_skips=(--skip http:: --skip outbox::tests --skip devices::scanner)

t0=$SECONDS
log "building test binaries for $triple"
# A failed build stops here (set -e) with cargo's errors on stderr, so a
# partial set of binaries can never pass for the whole.
artifacts="$(cd "$repo" && "$cargo" test --release --locked --target "$triple" \
    -p storelink-protocol -p storelink-firmware-config -p store-agent --lib --tests --no-run \
    --message-format=json)"
# One line per test binary: the crate's directory (tests read files relative
# to it) and the executable.
mapfile -t binaries < <(grep '"executable":"/' <<<"$artifacts" \
  | sed -E 's/.*"manifest_path":"([^"]*)\/Cargo.toml".*"executable":"([^"]*)".*/\1 \2/')
log "built ${#binaries[@]} test binaries in $((SECONDS - t0))s"
if [ "${#binaries[@]}" -eq 0 ]; then
  log "FAIL: no test binaries were built; run: cargo test --target $triple --no-run -p storelink-protocol"
  exit 1
fi

fail=0 passed=0
for line in "${binaries[@]}"; do
  dir="${line%% *}" exe="${line#* }"
  args=(--test-threads=1)
  case "$(basename "$exe")" in store_agent-*) args+=("${agent_skips[@]}") ;; esac
  if out="$(cd "$dir" && timeout 300 "$qemu" "$exe" "${args[@]}" 2>&1)"; then
    result="$(grep '^test result:' <<<"$out" | tail -1)"
    n="$(sed -E 's/.* ([0-9]+) passed.*/\1/' <<<"$result")"
    passed=$((passed + n))
    log "ok: $(basename "$exe"): $result"
  else
    rc=$?
    [ "$rc" -eq 124 ] && out="$out
timed out after 300 s (does a test start a thread? add its module to agent_skips)"
    log "FAIL: $(basename "$exe") (exit $rc):"
    printf '%s\n' "$out" | tail -30 >&2
    fail=1
  fi
done
log "$passed tests passed on $triple under $qemu in $((SECONDS - t0))s"
exit "$fail"
