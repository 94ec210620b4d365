#!/usr/bin/env bash
# Cross-build store-agent for the ARM store boxes with Debian's own Rust
# toolchain (no rustup targets, no containers).
#
#   cross/build.sh [aarch64|armv7]        (default: aarch64)
#
# Idempotent: packages already installed are not installed again, so it runs
# the same on a fresh Debian 12 machine and on a warm one.
#
# Environment:
#   CROSS_SRC_DIR     Cargo workspace to build (default: repo root)
#   CROSS_PACKAGE     package to build               (default: store-agent)
#   CROSS_BIN         binary name                    (default: $CROSS_PACKAGE)
#   CROSS_MAX_BYTES   size limit of the stripped binary (default: 15000000 = 15 MB)
#   CROSS_SKIP_INSTALL=1  never call apt-get (fail if something is missing)
#   CARGO_TARGET_DIR  default: $CROSS_SRC_DIR/target/cross
#
# Output: $CARGO_TARGET_DIR/dist/<bin>-<arch> (stripped); the path is printed
# on the last line as "artifact: PATH".
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/.." && pwd)"

arch="${1:-aarch64}"
case "$arch" in
  aarch64|arm64)
    arch=aarch64
    deb_arch=arm64
    triple=aarch64-unknown-linux-gnu
    gnu=aarch64-linux-gnu
    ;;
  armv7|armhf)
    # Debian's armhf port *is* armv7 (ARMv7-A, VFPv3-D16, Thumb-2): its
    # libstd-rust-web-dev:armhf ships the std for armv7-unknown-linux-gnueabihf,
    # so the very same route works with the armhf names. It needs the armhf
    # index of bookworm-security (where the 1.96 rustc-web lives) to be
    # consistent; not verified yet: see cross/README.md.
    arch=armv7
    deb_arch=armhf
    triple=armv7-unknown-linux-gnueabihf
    gnu=arm-linux-gnueabihf
    ;;
  *)
    echo "usage: $0 [aarch64|armv7]" >&2
    exit 2
    ;;
esac

src="${CROSS_SRC_DIR:-$repo}"
pkg="${CROSS_PACKAGE:-store-agent}"
bin="${CROSS_BIN:-$pkg}"
max_bytes="${CROSS_MAX_BYTES:-15000000}"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$src/target/cross}"

log() { printf '[cross/build] %s\n' "$*" >&2; }

SUDO=""
if [ "$(id -u)" -ne 0 ]; then
  if command -v sudo >/dev/null 2>&1; then SUDO="sudo"; fi
fi

installed() { dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q 'install ok installed'; }

ensure_toolchain() {
  local need=() p
  # libc6-dev-<arch>-cross: the target's C headers and crt files, which the
  # C parts (libsqlite3-sys "bundled", ring) need. It is only a Recommends of
  # gcc-<gnu>, so with --no-install-recommends it must be named.
  for p in rustc-web cargo-web "libstd-rust-web-dev:$deb_arch" "gcc-$gnu" "binutils-$gnu" \
           "libc6-dev-$deb_arch-cross" file; do
    installed "$p" || need+=("$p")
  done
  # rustc-web and libstd-rust-web-dev:<arch> must be the same upstream version.
  if [ "${#need[@]}" -eq 0 ] && [ -x /usr/bin/rustc ] && [ -x /usr/bin/cargo ]; then
    log "toolchain present: $(/usr/bin/rustc --version), gcc-$gnu"
    return 0
  fi
  if [ "${CROSS_SKIP_INSTALL:-0}" = 1 ]; then
    log "missing packages: ${need[*]} (CROSS_SKIP_INSTALL=1, not installing)"
    exit 1
  fi
  local t0=$SECONDS added_arch=0
  if ! dpkg --print-foreign-architectures | grep -qx "$deb_arch"; then
    log "dpkg --add-architecture $deb_arch"
    $SUDO dpkg --add-architecture "$deb_arch"
    added_arch=1
  fi
  log "apt-get update"
  # A mirror mid-sync can fail one index (seen with bookworm-security armhf);
  # go on and let apt-get install say whether what we need is there.
  $SUDO apt-get update -q >/dev/null || log "warning: apt-get update reported errors, trying the install anyway"
  log "apt-get install ${need[*]}"
  if ! $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${need[@]}" >/dev/null; then
    log "FAIL: could not install ${need[*]}"
    # Leave the machine as we found it: a foreign architecture whose index
    # is broken would make every later `apt-get update` fail.
    if [ "$added_arch" = 1 ]; then $SUDO dpkg --remove-architecture "$deb_arch" || true; fi
    exit 1
  fi
  log "toolchain installed in $((SECONDS - t0))s: $(/usr/bin/rustc --version)"
}

ensure_toolchain

if [ ! -f "$src/Cargo.toml" ]; then
  log "no Cargo.toml in $src"
  exit 1
fi

# Debian's cargo/rustc, not the rustup proxies that come first on PATH (they
# have no std for the ARM targets).
export RUSTC=/usr/bin/rustc
export RUSTDOC=/usr/bin/rustdoc
triple_env="$(echo "$triple" | tr 'a-z-' 'A-Z_')"
triple_cc="$(echo "$triple" | tr '-' '_')"
export "CARGO_TARGET_${triple_env}_LINKER=$gnu-gcc"
export "CC_${triple_cc}=$gnu-gcc"
export "AR_${triple_cc}=$gnu-ar"
# Build scripts (libsqlite3-sys bundled, ring) run on the host: keep the host cc.
export CC_x86_64_unknown_linux_gnu="${CC_x86_64_unknown_linux_gnu:-cc}"

log "building $pkg for $triple in $CARGO_TARGET_DIR"
t0=$SECONDS
(cd "$src" && /usr/bin/cargo build --release --target "$triple" -p "$pkg")
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
