#!/usr/bin/env bash
# A single-node Apache Kafka (KRaft, broker + controller in one JVM) for tests,
# benchmarks and local development. No Docker, no tarball download: the jars
# come from Maven Central through scripts/kafka/pom.xml.
#
#   scripts/kafka.sh install          resolve the jars once into the cache (idempotent)
#   scripts/kafka.sh start DIR        format DIR (first time), start, wait, print BOOTSTRAP=127.0.0.1:PORT
#                                     (and SSL_BOOTSTRAP=127.0.0.1:PORT with KAFKA_SSL_KEYSTORE)
#   scripts/kafka.sh stop DIR         SIGTERM (controlled shutdown), SIGKILL after KAFKA_STOP_TIMEOUT s
#   scripts/kafka.sh kill DIR         SIGKILL at once (crash / outage tests)
#   scripts/kafka.sh libs             print the libs folder (for `java -cp "$(scripts/kafka.sh libs)/*" ...`)
#   scripts/kafka.sh run CLASS ARGS…  run a Kafka tool class with the same jars, e.g.
#                                     org.apache.kafka.tools.ProducerPerformance
#
# Environment:
#   STORELINK_CACHE        cache root (default ~/.cache/storelink); jars in kafka-4.1.1/libs
#   KAFKA_PORT             client listener port (default: a free port, kept in DIR/ports)
#   KAFKA_CONTROLLER_PORT  controller listener port (default: a free port, kept in DIR/ports)
#   KAFKA_SSL_KEYSTORE     a PEM file with the broker's private key (PKCS#8, unencrypted) and
#                          its certificate chain: the broker also serves TLS on a second client
#                          listener (port kept in DIR/ports), as the fleet's brokers do
#   KAFKA_SSL_TRUSTSTORE   with KAFKA_SSL_KEYSTORE: a PEM CA; TLS clients must then present a
#                          certificate it signed (ssl.client.auth=required)
#   KAFKA_AUTHORIZER=1     Kafka's ACL authorizer on: clients of the plaintext listener (the broker
#                          itself, tests, tools) are super users; a TLS client may do only what
#                          ACLs (`kafka.sh run org.apache.kafka.tools.AclCommand`) grant its
#                          certificate's subject, e.g. User:CN=bridge
#   KAFKA_NUM_PARTITIONS   num.partitions for topics created without a count (default 3)
#   KAFKA_AUTO_CREATE_TOPICS  auto.create.topics.enable (default false: the bridge
#                          creates its topics with `cloud-bridge topics ensure`, so a
#                          typo in a topic name fails loudly instead of creating a topic)
#   KAFKA_HEAP_OPTS        default "-Xms256m -Xmx512m"
#   KAFKA_START_TIMEOUT    seconds to wait for the broker (default 90)
#   KAFKA_STOP_TIMEOUT     seconds to wait for a controlled shutdown (default 30)
#   KAFKA_WATCH_PID        if set, a watchdog kills the broker when this pid exits, so a
#                          test run that dies (even by SIGKILL) never leaves a JVM behind
#   KAFKA_REMOVE_DIR_ON_WATCH_EXIT=1  …and then deletes DIR (for brokers in temp dirs)
#
# Restarting DIR keeps its data and its ports, so clients reconnect to the same address.
set -euo pipefail

KAFKA_VERSION=4.1.1
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
CACHE="${STORELINK_CACHE:-$HOME/.cache/storelink}"
LIBS="$CACHE/kafka-$KAFKA_VERSION/libs"

die() {
    echo "kafka.sh: $*" >&2
    exit 1
}

need_java() {
    command -v java >/dev/null 2>&1 ||
        die "java not found: Kafka needs a Java 17+ runtime (Debian: apt-get install -y openjdk-17-jre-headless, or run scripts/install-deps.sh)"
}

cmd_install() {
    need_java
    if [[ -f "$LIBS/.complete" ]]; then
        return 0
    fi
    command -v mvn >/dev/null 2>&1 ||
        die "mvn not found: it resolves the Kafka jars from Maven Central (Debian: apt-get install -y maven, or run scripts/install-deps.sh)"
    local tmp="$LIBS.tmp.$$"
    rm -rf "$tmp"
    mkdir -p "$tmp"
    echo "kafka.sh: resolving Kafka $KAFKA_VERSION jars into $LIBS (once)" >&2
    if ! mvn -q -B -f "$HERE/kafka/pom.xml" dependency:copy-dependencies \
        -DoutputDirectory="$tmp" -DincludeScope=runtime >&2; then
        rm -rf "$tmp"
        die "mvn could not resolve the Kafka jars (is Maven Central reachable?)"
    fi
    ls "$tmp"/kafka_2.13-"$KAFKA_VERSION".jar >/dev/null 2>&1 || {
        rm -rf "$tmp"
        die "mvn finished but kafka_2.13-$KAFKA_VERSION.jar is missing"
    }
    rm -rf "$LIBS"
    mv "$tmp" "$LIBS"
    touch "$LIBS/.complete"
}

# A TCP port nobody listens on. Racy by nature (another process may take it
# before Kafka binds), so ports are drawn at random from a wide range: below
# the kernel's ephemeral range, which outgoing connections take their local
# ports from. A broker stopped for a minute must find its port free again,
# and a port in that range can meanwhile be some client's.
free_port() {
    local p low=32768 high
    read -r low high </proc/sys/net/ipv4/ip_local_port_range 2>/dev/null || true
    if ((low <= 12000)); then low=60000; fi
    for _ in $(seq 1 200); do
        p=$((10000 + RANDOM % (low - 10000)))
        if ! (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null; then
            echo "$p"
            return 0
        fi
    done
    die "no free TCP port found"
}

port_open() {
    (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null
}

write_configs() {
    local dir="$1" port="$2" cport="$3" sport="$4"
    local listeners="PLAINTEXT://127.0.0.1:$port" ssl_config="" acl_config=""
    if [[ -n "$sport" ]]; then
        listeners="$listeners,SSL://127.0.0.1:$sport"
        # PEM stores (KIP-651): no keytool, the same files openssl made.
        ssl_config="ssl.keystore.type=PEM
ssl.keystore.location=$KAFKA_SSL_KEYSTORE"
        if [[ -n "${KAFKA_SSL_TRUSTSTORE:-}" ]]; then
            ssl_config="$ssl_config
ssl.truststore.type=PEM
ssl.truststore.location=$KAFKA_SSL_TRUSTSTORE
ssl.client.auth=required"
        fi
    fi
    if [[ "${KAFKA_AUTHORIZER:-}" == 1 ]]; then
        acl_config="authorizer.class.name=org.apache.kafka.metadata.authorizer.StandardAuthorizer
super.users=User:ANONYMOUS
allow.everyone.if.no.acl.found=false"
    fi
    cat >"$dir/server.properties" <<EOF
process.roles=broker,controller
node.id=1
controller.quorum.voters=1@127.0.0.1:$cport
listeners=$listeners,CONTROLLER://127.0.0.1:$cport
advertised.listeners=$listeners
controller.listener.names=CONTROLLER
inter.broker.listener.name=PLAINTEXT
listener.security.protocol.map=PLAINTEXT:PLAINTEXT,SSL:SSL,CONTROLLER:PLAINTEXT
$ssl_config
$acl_config
log.dirs=$dir/data
num.partitions=${KAFKA_NUM_PARTITIONS:-3}
auto.create.topics.enable=${KAFKA_AUTO_CREATE_TOPICS:-false}
# One node: every internal topic has one replica.
offsets.topic.replication.factor=1
offsets.topic.num.partitions=3
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
share.coordinator.state.topic.replication.factor=1
share.coordinator.state.topic.min.isr=1
# Tests create consumer groups all the time: no rebalance delay.
group.initial.rebalance.delay.ms=0
# Restarts in outage tests should be quick.
controlled.shutdown.enable=true
log.retention.hours=24
EOF
    cat >"$dir/log4j2.xml" <<EOF
<?xml version="1.0" encoding="UTF-8"?>
<Configuration status="WARN">
  <Appenders>
    <File name="file" fileName="$dir/server.log" append="true">
      <PatternLayout pattern="[%d] %p %m (%c)%n"/>
    </File>
  </Appenders>
  <Loggers>
    <Logger name="kafka" level="INFO"/>
    <Logger name="org.apache.kafka" level="INFO"/>
    <Logger name="state.change.logger" level="WARN"/>
    <Logger name="kafka.request.logger" level="WARN"/>
    <Root level="INFO"><AppenderRef ref="file"/></Root>
  </Loggers>
</Configuration>
EOF
}

java_opts() {
    local dir="$1"
    # shellcheck disable=SC2206
    local heap=(${KAFKA_HEAP_OPTS:--Xms256m -Xmx512m})
    echo "${heap[@]}" -XX:+UseSerialGC -XX:+ExitOnOutOfMemoryError -Djava.awt.headless=true \
        "-Dlog4j2.configurationFile=$dir/log4j2.xml" "-Dkafka.logs.dir=$dir"
}

cmd_start() {
    local dir="${1:-}"
    [[ -n "$dir" ]] || die "usage: kafka.sh start DIR"
    cmd_install
    mkdir -p "$dir"
    dir="$(cd "$dir" && pwd)"
    if [[ -f "$dir/kafka.pid" ]] && kill -0 "$(cat "$dir/kafka.pid")" 2>/dev/null; then
        die "a broker already runs from $dir (pid $(cat "$dir/kafka.pid")); stop it first"
    fi
    local port cport sport=""
    if [[ -n "${KAFKA_SSL_KEYSTORE:-}" ]]; then
        [[ -r "$KAFKA_SSL_KEYSTORE" ]] || die "KAFKA_SSL_KEYSTORE $KAFKA_SSL_KEYSTORE is not readable"
        if [[ -n "${KAFKA_SSL_TRUSTSTORE:-}" && ! -r "$KAFKA_SSL_TRUSTSTORE" ]]; then
            die "KAFKA_SSL_TRUSTSTORE $KAFKA_SSL_TRUSTSTORE is not readable"
        fi
    fi
    if [[ -f "$dir/ports" ]]; then
        read -r port cport sport <"$dir/ports" || true
    else
        port="${KAFKA_PORT:-$(free_port)}"
        cport="${KAFKA_CONTROLLER_PORT:-$(free_port)}"
        [[ "$port" != "$cport" ]] || cport="$(free_port)"
        echo "$port $cport" >"$dir/ports"
    fi
    if [[ -n "${KAFKA_SSL_KEYSTORE:-}" && -z "$sport" ]]; then
        sport="$(free_port)"
        while [[ "$sport" == "$port" || "$sport" == "$cport" ]]; do sport="$(free_port)"; done
        echo "$port $cport $sport" >"$dir/ports"
    elif [[ -z "${KAFKA_SSL_KEYSTORE:-}" ]]; then
        sport=""
    fi
    port_open "$port" && die "port $port is already in use (set KAFKA_PORT or remove $dir/ports)"
    write_configs "$dir" "$port" "$cport" "$sport"
    # shellcheck disable=SC2046
    if [[ ! -f "$dir/data/meta.properties" ]]; then
        local cluster_id
        # A Kafka cluster id is 16 random bytes, base64url without padding.
        # A leading '-' would read as an option to the format tool: draw again.
        cluster_id="-"
        while [[ "$cluster_id" == -* ]]; do
            cluster_id="$(head -c16 /dev/urandom | base64 | tr '+/' '-_' | tr -d '=')"
        done
        java $(java_opts "$dir") -cp "$LIBS/*" kafka.tools.StorageTool format \
            -t "$cluster_id" -c "$dir/server.properties" >"$dir/format.log" 2>&1 ||
            die "formatting $dir failed: $(tail -5 "$dir/format.log")"
    fi

    : >>"$dir/server.log"
    local mark
    mark="$(wc -l <"$dir/server.log")"
    # The JVM runs under a small supervisor shell in its own session: the
    # supervisor records the pid and, if KAFKA_WATCH_PID is set, kills the JVM
    # when that process is gone. All output goes to files so whoever reads our
    # stdout sees EOF as soon as this script exits.
    local watch="${KAFKA_WATCH_PID:-}" remove="${KAFKA_REMOVE_DIR_ON_WATCH_EXIT:-0}"
    # The inner script's variables are its own ($1…): single quotes on purpose.
    # shellcheck disable=SC2046,SC2016
    setsid bash -c '
        dir="$1"; watch="$2"; remove="$3"; shift 3
        "$@" >>"$dir/stdout.log" 2>&1 &
        jpid=$!
        echo "$jpid" >"$dir/kafka.pid"
        if [[ -n "$watch" ]]; then
            while kill -0 "$jpid" 2>/dev/null; do
                if ! kill -0 "$watch" 2>/dev/null; then
                    kill -9 "$jpid" 2>/dev/null
                    wait "$jpid"
                    [[ "$remove" == 1 ]] && rm -rf "$dir"
                    exit 0
                fi
                sleep 1
            done
        fi
        wait "$jpid"
    ' kafka-supervisor "$dir" "$watch" "$remove" \
        java $(java_opts "$dir") -cp "$LIBS/*" kafka.Kafka "$dir/server.properties" \
        </dev/null >/dev/null 2>&1 &

    local deadline=$((SECONDS + ${KAFKA_START_TIMEOUT:-90}))
    while ((SECONDS < deadline)); do
        if [[ -f "$dir/kafka.pid" ]]; then
            local pid
            pid="$(cat "$dir/kafka.pid")"
            if ! kill -0 "$pid" 2>/dev/null; then
                touch "$dir/startup-died"
                die "broker exited during startup; errors in server.log:
$(tail -n +"$((mark + 1))" "$dir/server.log" | grep -E 'ERROR|FATAL|Exception' | tail -10)
server.log tail:
$(tail -20 "$dir/server.log")
stdout tail:
$(tail -20 "$dir/stdout.log" 2>/dev/null)"
            fi
            # "Kafka Server started" is logged once the broker has caught up
            # with the metadata log and opened its client listener.
            if tail -n +"$((mark + 1))" "$dir/server.log" | grep -q "Kafka Server started" &&
                port_open "$port"; then
                echo "BOOTSTRAP=127.0.0.1:$port"
                [[ -z "$sport" ]] || echo "SSL_BOOTSTRAP=127.0.0.1:$sport"
                return 0
            fi
        fi
        sleep 0.2
    done
    # Not left running: the caller starts another, or fails.
    kill -9 "$(cat "$dir/kafka.pid" 2>/dev/null)" 2>/dev/null || true
    rm -f "$dir/kafka.pid"
    die "broker in $dir did not start within ${KAFKA_START_TIMEOUT:-90} s; server.log tail:
$(tail -20 "$dir/server.log")"
}

cmd_stop() {
    local dir="${1:-}" signal="${2:-TERM}"
    [[ -n "$dir" ]] || die "usage: kafka.sh stop|kill DIR"
    [[ -f "$dir/kafka.pid" ]] || return 0
    local pid
    pid="$(cat "$dir/kafka.pid")"
    kill "-$signal" "$pid" 2>/dev/null || {
        rm -f "$dir/kafka.pid"
        return 0
    }
    local deadline=$((SECONDS + ${KAFKA_STOP_TIMEOUT:-30}))
    while kill -0 "$pid" 2>/dev/null; do
        if ((SECONDS >= deadline)); then
            kill -9 "$pid" 2>/dev/null || true
        fi
        sleep 0.1
    done
    rm -f "$dir/kafka.pid"
}

case "${1:-}" in
install) cmd_install ;;
start)
    # A broker that dies while starting in a new DIR is tried once more on
    # fresh ports: the ports were only known to be free when chosen, and
    # another process may bind one before the JVM does. A DIR with data
    # (a restart) is never wiped.
    dir="${2:-}"
    fresh=0
    [[ -n "$dir" && ! -f "$dir/ports" && -z "${KAFKA_PORT:-}" ]] && fresh=1
    if ! (cmd_start "$dir"); then
        [[ "$fresh" == 1 && -f "$dir/startup-died" ]] || exit 1
        echo "kafka.sh: the broker died while starting; trying once more on fresh ports" >&2
        rm -rf "$dir/ports" "$dir/data" "$dir/startup-died" "$dir/kafka.pid"
        cmd_start "$dir"
    fi
    ;;
stop) cmd_stop "${2:-}" TERM ;;
kill) cmd_stop "${2:-}" KILL ;;
libs)
    cmd_install
    echo "$LIBS"
    ;;
run)
    shift
    cmd_install
    [[ $# -ge 1 ]] || die "usage: kafka.sh run CLASS [ARGS...]"
    cls="$1"
    shift
    exec java -Xmx512m -Dlog4j2.level=WARN -cp "$LIBS/*" "$cls" "$@"
    ;;
*)
    die "usage: kafka.sh install | start DIR | stop DIR | kill DIR | libs | run CLASS [ARGS...]"
    ;;
esac
