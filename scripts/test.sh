#!/usr/bin/env bash
# Runs every StoreLink test: the README's test command.
#
#   1. installs what the tests need (scripts/install-deps.sh; idempotent)
#   2. checks formatting and clippy (-D warnings)
#   3. builds the binaries the end-to-end tests start as processes
#   4. cargo test --workspace: unit, property, golden-sample and end-to-end
#      tests against real Mosquitto, real Kafka, real SQLite files and real PTYs
#   5. the fleet checks (kustomize, kubernetes-validate, checkov, profiles)
#      and the ARM cross builds with their qemu smoke tests: aarch64 (the
#      store boxes) and armv7, where the single-threaded unit and property
#      tests also run (32-bit usize)
#
# Set STORELINK_SKIP_CROSS=1 to leave out step 5's cross build on a laptop;
# CI never sets it.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

step() { printf '\n=== %s\n' "$*"; }

step "dependencies"
bash scripts/install-deps.sh

step "format and lints"
cargo fmt --all -- --check
cargo clippy --workspace --all-targets --locked -- -D warnings

step "build binaries"
cargo build --workspace --bins --locked

step "tests"
# Two test threads: the end-to-end tests each run several processes.
mkdir -p target
cargo test --workspace --locked --no-fail-fast -- --test-threads=2 2>&1 | tee target/test-output.log
# One closing line for the whole run (cargo prints one per test binary).
totals=$(awk '/^test result:/ { for (i = 1; i <= NF; i++) { if ($(i+1) ~ /^passed;?$/) p += $i; if ($(i+1) ~ /^failed;?$/) f += $i } }
              END { printf "%d passed, %d failed", p, f }' target/test-output.log)

step "fleet manifests and profiles"
STORE_AGENT_BIN=target/debug/store-agent bash scripts/check-fleet.sh

if [[ "${STORELINK_SKIP_CROSS:-0}" != "1" ]]; then
    step "aarch64 cross build and qemu smoke test"
    bash cross/build.sh aarch64
    bash cross/smoke-test.sh aarch64
    step "armv7 cross build, qemu smoke test and 32-bit unit tests"
    bash cross/build.sh armv7
    bash cross/smoke-test.sh armv7
    bash cross/unit-tests.sh armv7
fi

step "summary"
echo "storelink: ${totals}"
