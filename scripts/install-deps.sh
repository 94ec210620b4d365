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
# scripts/check-fleet.sh makes a venv for its validators.
python3 -c 'import ensurepip, venv' >/dev/null 2>&1 || missing+=(python3-venv)

SUDO=""
[[ $(id -u) -eq 0 ]] || SUDO="sudo"
if ((${#missing[@]})); then
    echo "install-deps: installing ${missing[*]}" >&2
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
# scripts/check-fleet.sh renders the manifests with `kubectl kustomize`.
# Debian has no kubectl package; an apt source that carries one (Kubernetes'
# or Google Cloud's) may. Only the fleet check needs it, so without it the
# rest still installs and check-fleet says what is missing.
if ! command -v kubectl >/dev/null 2>&1; then
    if DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends kubectl >/dev/null 2>&1; then
        echo "install-deps: installed kubectl" >&2
    else
        echo "install-deps: WARNING: no kubectl package in the configured apt sources; scripts/check-fleet.sh (part of scripts/test.sh) will fail until kubectl is on PATH" >&2
    fi
fi

bash scripts/kafka.sh install
bash scripts/mosquitto.sh install
echo "install-deps: mosquitto $(bash scripts/mosquitto.sh path), socat, java, mvn and the Kafka jars are ready" >&2
