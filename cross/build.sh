#!/usr/bin/env bash
# Cross-build store-agent for the ARM store boxes (no containers).
#
#   cross/build.sh [aarch64|armv7]        (default: aarch64)
#
# The toolchain for each architecture: cross/toolchain.sh.
#
# Idempotent: packages already installed are not installed again, so it runs
# the same on a fresh Debian 12 machine and on a warm one.
#
# Environment:
#   CROSS_SRC_DIR     Cargo workspace to build (default: repo root)
#   CROSS_PACKAGE     package to build               (default: store-agent)
#   CROSS_BIN         binary name                    (default: $CROSS_PACKAGE)
#   CROSS_MAX_BYTES   size limit of the stripped binary (default: 15000000 = 15 MB)
#   CROSS_SKIP_INSTALL=1  never call apt-get or rustup (fail if something is missing)
#   CARGO_TARGET_DIR  default: $CROSS_SRC_DIR/target/cross
#
# Output: $CARGO_TARGET_DIR/dist/<bin>-<arch> (stripped); the path is printed
# on the last line as "artifact: PATH".
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/.." && pwd)"

src="${CROSS_SRC_DIR:-$repo}"
pkg="${CROSS_PACKAGE:-store-agent}"
bin="${CROSS_BIN:-$pkg}"
max_bytes="${CROSS_MAX_BYTES:-15000000}"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$src/target/cross}"

log() { printf '[cross/build] %s\n' "$*" >&2; }

# shellcheck source=cross/toolchain.sh
source "$here/toolchain.sh" "${1:-aarch64}"

if [ ! -f "$src/Cargo.toml" ]; then
  log "no Cargo.toml in $src"
  exit 1
fi

log "building $pkg for $triple in $CARGO_TARGET_DIR"
t0=$SECONDS
(cd "$src" && "$cargo" build --locked --release --target "$triple" -p "$pkg")
log "cargo build took $((SECONDS - t0))s"

built="$CARGO_TARGET_DIR/$triple/release/$bin"
if [ ! -f "$built" ]; then
  log "expected binary not found: $built"
  exit 1
fi
mkdir -p "$CARGO_TARGET_DIR/dist"
out="$CARGO_TARGET_DIR/dist/$bin-$arch"
cp "$built" "$out"
"$gnu-strip" "$out"

size=$(stat -c %s "$out")
log "$(file -b "$out")"
log "stripped size: $size bytes ($(awk -v s="$size" 'BEGIN{printf "%.2f", s/1000000}') MB, limit $max_bytes)"
if [ "$size" -gt "$max_bytes" ]; then
  log "FAIL: $out is larger than $max_bytes bytes"
  exit 1
fi
echo "artifact: $out"
