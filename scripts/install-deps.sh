#!/usr/bin/env bash
# Installs what StoreLink's tests, demo and benchmarks need on a fresh Debian
# machine, and nothing twice: Mosquitto's clients (mosquitto_pub), socat
# (pseudo-terminal pairs for scanner tests), Java 17 and Maven (Apache Kafka
# from Maven Central), build tools, then the Kafka jars (scripts/kafka.sh
# install) and the Mosquitto 2.0.21 broker (scripts/mosquitto.sh install, which
# says why not Debian 12's 2.0.11).
#
# Idempotent: a second run checks and returns in about a second.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

missing=()
command -v mosquitto_pub >/dev/null 2>&1 || missing+=(mosquitto-clients)
command -v socat >/dev/null 2>&1 || missing+=(socat)
command -v java >/dev/null 2>&1 || missing+=(openjdk-17-jre-headless)
command -v mvn >/dev/null 2>&1 || missing+=(maven)
# rdkafka's bundled librdkafka builds with these.
command -v cmake >/dev/null 2>&1 || missing+=(cmake)
command -v cc >/dev/null 2>&1 || missing+=(build-essential)
command -v curl >/dev/null 2>&1 || missing+=(curl)
# Building the Mosquitto broker (scripts/mosquitto.sh), with TLS.
command -v make >/dev/null 2>&1 || missing+=(make)
[[ -f /usr/include/openssl/ssl.h ]] || missing+=(libssl-dev)
# librdkafka's TLS to Kafka links OpenSSL found through pkg-config; the TLS
# tests make their certificates with the openssl command.
command -v pkg-config >/dev/null 2>&1 || missing+=(pkg-config)
command -v openssl >/dev/null 2>&1 || missing+=(openssl)

if ((${#missing[@]})); then
    echo "install-deps: installing ${missing[*]}" >&2
    SUDO=""
    [[ $(id -u) -eq 0 ]] || SUDO="sudo"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

bash scripts/kafka.sh install
bash scripts/mosquitto.sh install
echo "install-deps: mosquitto $(bash scripts/mosquitto.sh path), socat, java, mvn and the Kafka jars are ready" >&2
