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

use std::collections::HashSet;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use bridge_support::*;
use harness::agent::{spawn_bridge, start_bridge_with, BridgeTls};
use harness::kafka::{BrokerTls, Kafka};
use harness::mosquitto::Mosquitto;
use harness::tls::TestPki;
use protocol::EventId;

const STORE: &str = "store-kafka-tls";

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

    let store = FakeStore::connect(mosquitto.port(), STORE)?;
    let events = fresh_events(STORE, 200);
    for batch in events.chunks(50) {
        store.publish_events(batch)?;
    }
    let ids: HashSet<EventId> = events.iter().map(|e| e.id).collect();
    store
        .wait_receipted(&ids, Duration::from_secs(60))
        .with_context(|| format!("bridge log tail:\n{}", bridge.log_tail(30)))?;
    // The test reads through the broker's plaintext listener; the bridge
    // only ever had the TLS one.
    let records = consume_ids(kafka.bootstrap(), &ids, Duration::from_secs(60))?;
    assert_each_exactly(&records, &ids, 1);
    println!(
        "Kafka over mutual TLS ({ssl_bootstrap}): {} events receipted, each once in Kafka",
        ids.len()
    );

    // Wrong trust in either direction: a bridge trusting another CA, and a
    // bridge whose certificate the broker's CA did not sign.
    let other = TestPki::create(dir.path(), "other-ca")?;
    let stranger = other.client("bridge-stranger")?;
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
    let mut answered = [None, None];
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        for (i, port) in [distrustful_port, untrusted_port].into_iter().enumerate() {
            if let Ok((status, body)) = http_get(port, "/readyz") {
                assert_ne!(
                    status, 200,
                    "a bridge without mutual trust with Kafka reported ready: {body}"
                );
                answered[i] = Some(status);
            }
        }
        std::thread::sleep(Duration::from_millis(250));
    }
    for (bridge, status) in [(&distrustful, answered[0]), (&untrusted, answered[1])] {
        assert!(
            status.is_some(),
            "{} never answered /readyz:\n{}",
            bridge.name(),
            bridge.log_tail(20)
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
    // window as a log line and once as a client error, over at most two
    // windows of this run.
    let bound = 2 * 2 * 2;
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
