//! The bridge reaches Kafka over mutual TLS, configured the way the fleet's
//! `k3s/cloud/bridge.toml` does it: librdkafka's `security.protocol = "ssl"`
//! and certificate files in `[kafka.extra]`. The broker (real Kafka, a PEM
//! key store) serves a TLS listener that requires a client certificate from
//! the test CA, and the bridge is given only that listener: it creates its
//! topics through the admin client and produces over TLS; every event is
//! receipted and in Kafka exactly once. A bridge that does not trust the
//! broker, and one the broker does not trust, never become ready; the first
//! says why in its log, once per cause and window rather than on every
//! reconnect attempt.

mod bridge_support;

use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use bridge_support::*;
use harness::agent::{spawn_bridge, start_bridge_with, BridgeTls};
use harness::kafka::{BrokerTls, Kafka};
use harness::mosquitto::Mosquitto;
use harness::tls::TestPki;

const STORE: &str = "store-kafka-tls";

/// `cloud_bridge::kafka_log::WINDOW` (the tests run the bridge as a process,
/// not as a library).
const LOG_WINDOW_SECS: u64 = 10;

#[test]
fn the_bridge_produces_over_mutual_tls_and_untrusted_peers_stay_unready() -> Result<()> {
    let dir = tempfile::Builder::new()
        .prefix("storelink-kafka-tls-")
        .tempdir()?;
    let pki = TestPki::create(dir.path(), "kafka-ca")?;
    let kafka = Kafka::start_with_tls(&BrokerTls {
        server: pki.server("kafka-broker")?,
        client_ca: pki.ca.cert.clone(),
    })?;
    let ssl_bootstrap = kafka
        .ssl_bootstrap()
        .context("the broker opened no TLS listener")?
        .to_owned();
    let mosquitto = Mosquitto::start()?;

    let own = pki.client("bridge-kafka-tls")?;
    let (bridge, _) = start_bridge_with(
        dir.path(),
        "bridge-kafka-tls",
        mosquitto.port(),
        &ssl_bootstrap,
        BridgeTls {
            mqtt: None,
            kafka: Some((pki.ca.cert.as_path(), &own)),
        },
    )?;

    // The test reads through the broker's plaintext listener; the bridge
    // only ever had the TLS one.
    let published =
        publish_receipted_once_in_kafka(mosquitto.port(), STORE, kafka.bootstrap(), || {
            bridge.log_tail(30)
        })?;
    println!(
        "Kafka over mutual TLS ({ssl_bootstrap}): {published} events receipted, each once in Kafka"
    );

    // Wrong trust in either direction: a bridge trusting another CA, and a
    // bridge whose certificate the broker's CA did not sign.
    let other = TestPki::create(dir.path(), "other-ca")?;
    let stranger = other.client("bridge-stranger")?;
    let spawned = Instant::now();
    let (distrustful, distrustful_port) = spawn_bridge(
        dir.path(),
        "bridge-distrusts-kafka",
        mosquitto.port(),
        &ssl_bootstrap,
        BridgeTls {
            mqtt: None,
            kafka: Some((other.ca.cert.as_path(), &own)),
        },
    )?;
    let (untrusted, untrusted_port) = spawn_bridge(
        dir.path(),
        "bridge-untrusted-by-kafka",
        mosquitto.port(),
        &ssl_bootstrap,
        BridgeTls {
            mqtt: None,
            kafka: Some((pki.ca.cert.as_path(), &stranger)),
        },
    )?;
    // Not ready "so far" proves little on a busy machine: watch until each
    // log shows its refusal, and at least 10 s; every answer must be 503.
    let mut answered = [None, None];
    let mut bodies = [String::new(), String::new()];
    let deadline = spawned + Duration::from_secs(90);
    loop {
        for (i, port) in [distrustful_port, untrusted_port].into_iter().enumerate() {
            if let Ok((status, body)) = http_get(port, "/readyz") {
                assert_ne!(
                    status, 200,
                    "a bridge without mutual trust with Kafka reported ready: {body}"
                );
                answered[i] = Some(status);
                bodies[i] = body;
            }
        }
        let refused = distrustful
            .log_tail(10_000)
            .contains("certificate verify failed")
            // The bridge sees that the broker's CA did not sign its
            // certificate; the broker then ends the handshake.
            && untrusted
                .log_tail(10_000)
                .contains("No matching issuer found");
        if refused
            && answered.iter().all(Option::is_some)
            && spawned.elapsed() >= Duration::from_secs(10)
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no refusal in the logs after 90 s:\n{}\n---\n{}",
            distrustful.log_tail(20),
            untrusted.log_tail(20)
        );
        std::thread::sleep(Duration::from_millis(250));
    }
    for (bridge, body) in [(&distrustful, &bodies[0]), (&untrusted, &bodies[1])] {
        assert!(
            body.contains("\"kafka_producer_ready\":false"),
            "{}: /readyz must say the producer is not ready: {body}",
            bridge.name()
        );
    }
    let log = distrustful.log_tail(10_000);
    let refusals: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("certificate verify failed"))
        .collect();
    let Some(refusal) = refusals.first() else {
        panic!("the distrustful bridge's log does not say the certificate was refused:\n{log}")
    };
    // librdkafka reports the failure on every reconnect (about 20 a second
    // here); two clients (producer, admin) each say it at most once per
    // window as a log line and once as a client error, in every window the
    // run has reached so far.
    let windows = spawned.elapsed().as_secs() / LOG_WINDOW_SECS + 1;
    let bound = 2 * 2 * usize::try_from(windows)?;
    assert!(
        refusals.len() <= bound,
        "{} 'certificate verify failed' lines in {} log lines: the cause is repeated on every attempt\n{log}",
        refusals.len(),
        log.lines().count()
    );
    println!(
        "untrusted Kafka: bridge stayed unready (/readyz {:?}); {} log lines in all, the cause said {} times: {}",
        answered[0],
        log.lines().count(),
        refusals.len(),
        refusal.trim()
    );
    let log = untrusted.log_tail(10_000);
    println!(
        "bridge certificate from another CA: stayed unready (/readyz {:?}); its log: {}",
        answered[1],
        log.lines()
            .find(|l| l.contains("certificate") && !l.contains("INFO"))
            .unwrap_or("(no line names a certificate)")
            .trim()
    );
    Ok(())
}
