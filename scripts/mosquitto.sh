#!/usr/bin/env bash
# The Mosquitto broker that tests, benchmarks and the demo run: 2.0.21, built
# once from Debian's source pool (the upstream tarball Debian ships, checked
# against the SHA-256 in Debian's Sources index).
#
# Why not Debian 12's own `mosquitto` package: it is 2.0.11, whose outgoing
# in-flight accounting is broken (fixed upstream in 2.0.13, "Various fixes
# around inflight quota management", #2306). Every PUBACK for the head of a
# client's in-flight list moves up to `max_inflight_messages` more queued
# messages into flight, so a subscriber that acks in order receives its whole
# backlog at once, whatever it or the broker configured (MQTT v5's receive
# maximum included). The fleet runs the same release, eclipse-mosquitto 2.0.21
# (k3s/base): the tests see the broker the stores run.
#
#   scripts/mosquitto.sh install   download, verify and build into the cache (idempotent)
#   scripts/mosquitto.sh path      print the broker executable's path
#
# Environment:
#   STORELINK_CACHE   cache root (default ~/.cache/storelink); the broker lands in
#                     mosquitto-2.0.21/mosquitto
#
# Build needs: a C compiler, cmake, make and OpenSSL headers (scripts/install-deps.sh).
set -euo pipefail

VERSION=2.0.21
SHA256=551daff96cd0675faf888f8881536177934424ecc45924fecf94cffe207f6e81
URL="http://deb.debian.org/debian/pool/main/m/mosquitto/mosquitto_${VERSION}.orig.tar.gz"
CACHE="${STORELINK_CACHE:-$HOME/.cache/storelink}"
DEST="$CACHE/mosquitto-$VERSION"
BIN="$DEST/mosquitto"

die() {
    echo "mosquitto.sh: $*" >&2
    exit 1
}

cmd_install() {
    if [[ -x "$BIN" ]]; then
        return 0
    fi
    for tool in curl cmake make cc; do
        command -v "$tool" >/dev/null 2>&1 ||
            die "$tool not found: building Mosquitto $VERSION needs it (run scripts/install-deps.sh)"
    done
    [[ -f /usr/include/openssl/ssl.h ]] ||
        die "OpenSSL headers not found (Debian: apt-get install -y libssl-dev, or run scripts/install-deps.sh)"
    # Global, not local: the EXIT trap runs after this function has returned.
    tmp="$(mktemp -d)"
    trap 'rm -rf "$tmp"' EXIT
    echo "mosquitto.sh: building Mosquitto $VERSION into $DEST (once)" >&2
    curl -fsSL --retry 3 --connect-timeout 20 --max-time 600 -o "$tmp/src.tar.gz" "$URL" || die "could not download $URL"
    echo "$SHA256  $tmp/src.tar.gz" | sha256sum -c --quiet - ||
        die "checksum mismatch for $URL (expected sha256 $SHA256)"
    tar -xzf "$tmp/src.tar.gz" -C "$tmp"
    # The broker only: no clients (the tests use rumqttc and Debian's
    # mosquitto_pub), no docs, no plugins, no websockets, no cJSON.
    cmake -S "$tmp/mosquitto-$VERSION" -B "$tmp/build" -DCMAKE_BUILD_TYPE=Release \
        -DDOCUMENTATION=OFF -DWITH_CLIENTS=OFF -DWITH_APPS=OFF -DWITH_PLUGINS=OFF \
        -DWITH_WEBSOCKETS=OFF -DWITH_CJSON=OFF -DWITH_STATIC_LIBRARIES=OFF \
        >"$tmp/cmake.log" 2>&1 || die "cmake failed; log: $(tail -20 "$tmp/cmake.log")"
    make -C "$tmp/build" -j"$(nproc)" mosquitto >"$tmp/make.log" 2>&1 ||
        die "build failed; log: $(tail -20 "$tmp/make.log")"
    local banner
    # `mosquitto -h` prints its version and exits non-zero.
    banner="$("$tmp/build/src/mosquitto" -h 2>&1 | head -1 || true)"
    [[ "$banner" == "mosquitto version $VERSION" ]] ||
        die "the build reports '$banner', not version $VERSION"
    mkdir -p "$DEST"
    install -m 0755 "$tmp/build/src/mosquitto" "$BIN.tmp.$$"
    mv -f "$BIN.tmp.$$" "$BIN"
    echo "mosquitto.sh: $banner ready at $BIN" >&2
}

case "${1:-}" in
    install) cmd_install ;;
    path) echo "$BIN" ;;
    *) die "usage: scripts/mosquitto.sh install|path" ;;
esac
