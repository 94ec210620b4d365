# shellcheck shell=bash disable=SC2034  # sets variables for the script that sources it
# Sourced by cross/build.sh and cross/unit-tests.sh: picks the target for
# the architecture in $1, installs what is missing (idempotent), and exports
# the linker, C compiler and archiver for it. Sets: arch, deb_arch, triple,
# gnu, route, cargo. Expects a log function.
#
# aarch64 uses Debian's Rust 1.96 (rustc-web) and its arm64 std; armv7 uses
# rustup's std for the target (see the case below for why).
#
#   CROSS_SKIP_INSTALL=1  never call apt-get or rustup (fail if something is missing)

arch="${1:-aarch64}"
case "$arch" in
  aarch64|arm64)
    arch=aarch64
    deb_arch=arm64
    triple=aarch64-unknown-linux-gnu
    gnu=aarch64-linux-gnu
    route=debian
    ;;
  armv7|armhf)
    # Debian's armhf port *is* armv7 (ARMv7-A, VFPv3-D16, Thumb-2), but its
    # route does not work here: the bookworm-security armhf index (where the
    # 1.96 std that matches rustc-web lives) fails to download, and the
    # Multi-Arch packages it would pull in must match amd64 versions that
    # only that index has. So armv7 takes rustup's std for the target (a
    # download from static.rust-lang.org) with the host's rustup toolchain;
    # the cross gcc, binutils and libc headers are host (amd64/all) packages,
    # so no foreign dpkg architecture is needed at all.
    arch=armv7
    deb_arch=armhf
    triple=armv7-unknown-linux-gnueabihf
    gnu=arm-linux-gnueabihf
    route=rustup
    ;;
  *)
    echo "usage: $0 [aarch64|armv7]" >&2
    exit 2
    ;;
esac

SUDO=""
if [ "$(id -u)" -ne 0 ]; then
  if command -v sudo >/dev/null 2>&1; then SUDO="sudo"; fi
fi

installed() { dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q 'install ok installed'; }

# Route "rustup": the std for the target from rustup, the C cross tools from
# apt (host packages only).
ensure_rustup_toolchain() {
  local need=() p
  for p in "gcc-$gnu" "binutils-$gnu" "libc6-dev-$deb_arch-cross" file; do
    installed "$p" || need+=("$p")
  done
  if [ "${#need[@]}" -gt 0 ]; then
    if [ "${CROSS_SKIP_INSTALL:-0}" = 1 ]; then
      log "missing packages: ${need[*]} (CROSS_SKIP_INSTALL=1, not installing)"
      exit 1
    fi
    log "apt-get install ${need[*]}"
    $SUDO apt-get update -q >/dev/null || log "warning: apt-get update reported errors, trying the install anyway"
    if ! $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${need[@]}" >/dev/null; then
      log "FAIL: could not install ${need[*]}"
      exit 1
    fi
  fi
  if ! rustup target list --installed 2>/dev/null | grep -qx "$triple"; then
    if [ "${CROSS_SKIP_INSTALL:-0}" = 1 ]; then
      log "rustup has no std for $triple (CROSS_SKIP_INSTALL=1, not installing)"
      exit 1
    fi
    log "rustup target add $triple"
    timeout 600 rustup target add "$triple" >&2 || { log "FAIL: rustup target add $triple"; exit 1; }
  fi
  log "toolchain present: $(rustc --version) with std for $triple, gcc-$gnu"
}

# Route "debian": rustc-web, cargo-web and the target's std from Debian.
ensure_debian_toolchain() {
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

if [ "$route" = rustup ]; then ensure_rustup_toolchain; else ensure_debian_toolchain; fi

# Route "debian": Debian's cargo/rustc, not the rustup proxies that come first
# on PATH (they have no std for aarch64 unless rustup added it).
cargo=cargo
if [ "$route" = debian ]; then
  export RUSTC=/usr/bin/rustc
  export RUSTDOC=/usr/bin/rustdoc
  cargo=/usr/bin/cargo
fi
triple_env="$(echo "$triple" | tr 'a-z-' 'A-Z_')"
triple_cc="$(echo "$triple" | tr '-' '_')"
export "CARGO_TARGET_${triple_env}_LINKER=$gnu-gcc"
export "CC_${triple_cc}=$gnu-gcc"
export "AR_${triple_cc}=$gnu-ar"
# Build scripts (libsqlite3-sys bundled, ring) run on the host: keep the host cc.
export CC_x86_64_unknown_linux_gnu="${CC_x86_64_unknown_linux_gnu:-cc}"

