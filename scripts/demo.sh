#!/usr/bin/env bash
# The README's main job: a simulated store's traffic flowing into Kafka, visibly.
#
# Installs what is missing (Mosquitto, socat, Java/Maven, the Kafka jars),
# builds the binaries, then runs the demo program (tests/src/bin/demo.rs):
# real Mosquitto brokers, a real single-node Kafka, cloud-bridge and
# store-agent as processes, POS terminals and shelf sensors playing a store,
# and every Kafka record printed as it arrives. Ctrl-C stops everything;
# DEMO_SECONDS=N stops after N seconds.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
bash scripts/install-deps.sh
cargo build --workspace --bins
exec cargo run -q -p storelink-tests --bin demo
