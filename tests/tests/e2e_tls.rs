//! The cloud side over mutual TLS, as the fleet deploys it: the cloud
//! Mosquitto serves TLS only and requires a client certificate from the
//! chain's CA; the store agent (`[cloud.tls]`) and the bridge (`[mqtt.tls]`)
//! each present one. Sales reach Kafka, receipts come back through the same
//! broker (the outbox empties), and a bridge that does not trust the broker's
//! certificate never becomes ready and says why in its log.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use harness::agent::{post_sale, spawn_bridge, BridgeTls, StackOptions, StoreStack, TERMINALS};
use harness::tls::TestPki;
use protocol::topics::{headers, KafkaTopic};

const SALES_PER_TERMINAL: u64 = 25;

#[test]
fn sales_flow_over_mutual_tls_and_a_bridge_that_distrusts_the_broker_stays_unready() {
    let stack = StoreStack::start_with(StackOptions {
        cloud_tls: true,
        ..StackOptions::default()
    })
    .expect("a store whose cloud broker serves mutual TLS");

    let client = reqwest::blocking::Client::new();
    let mut accepted = HashSet::new();
    for seq in 1..=SALES_PER_TERMINAL {
        for terminal in &TERMINALS[..4] {
            let resp =
                post_sale(&client, &stack.http_base, terminal, seq).expect("agent reachable");
            assert_eq!(resp.status().as_u16(), 201, "sale {terminal}/{seq} refused");
            let answer: serde_json::Value = resp.json().expect("json answer");
            let id = answer["event_id"].as_str().expect("event_id").to_owned();
            accepted.insert(id);
        }
    }

    let records = stack.consume(
        KafkaTopic::Transactions.name(),
        |rs| {
            let seen: HashSet<String> = rs
                .iter()
                .filter_map(|r| r.header_str(headers::EVENT_ID))
                .collect();
            accepted.iter().all(|id| seen.contains(id))
        },
        Duration::from_secs(90),
    );
    let seen: HashSet<String> = records
        .iter()
        .filter_map(|r| r.header_str(headers::EVENT_ID))
        .collect();
    let missing = accepted.iter().filter(|id| !seen.contains(*id)).count();
    assert_eq!(
        missing, 0,
        "{missing} accepted sales never reached Kafka over TLS"
    );

    // Receipts travelled back over the same TLS broker: the outbox empties.
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut rows = stack.outbox_rows_on_disk().expect("outbox readable");
    while rows > 0 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(200));
        rows = stack.outbox_rows_on_disk().expect("outbox readable");
    }
    assert_eq!(rows, 0, "receipts did not come back over TLS");
    println!(
        "mutual TLS: {} sales accepted, all {} in Kafka, outbox empty after receipts",
        accepted.len(),
        accepted.len()
    );

    // A bridge that trusts another CA refuses the broker's certificate.
    let other = TestPki::create(stack.dir.path(), "other-ca").expect("second CA");
    let own = other
        .client("bridge-distrustful")
        .expect("client certificate");
    let (bridge, http_port) = spawn_bridge(
        stack.dir.path(),
        "bridge-distrustful",
        stack.cloud_mqtt.port(),
        &stack.kafka_bootstrap,
        BridgeTls {
            mqtt: Some((other.ca.cert.as_path(), &own)),
            kafka: None,
        },
    )
    .expect("bridge process starts");
    // Not ready "so far" proves little on a busy machine: watch until the
    // log shows the refusal, and at least 8 s; every answer must be 503.
    let ready_url = format!("http://127.0.0.1:{http_port}/readyz");
    let spawned = Instant::now();
    let deadline = spawned + Duration::from_secs(90);
    let mut answered = None;
    let mut body = String::new();
    let refusal = loop {
        if let Ok(r) = reqwest::blocking::get(&ready_url) {
            let status = r.status().as_u16();
            body = r.text().unwrap_or_default();
            assert_ne!(
                status, 200,
                "a bridge that distrusts the broker's certificate reported ready: {body}"
            );
            answered = Some(status);
        }
        let log = bridge.log_tail(200);
        // rustls: the broker's certificate chains to no CA this bridge trusts.
        let refusal = log
            .lines()
            .find(|l| l.contains("UnknownIssuer"))
            .map(str::to_owned);
        if let Some(line) = refusal {
            if answered.is_some() && spawned.elapsed() >= Duration::from_secs(8) {
                break line;
            }
        }
        assert!(
            Instant::now() < deadline,
            "no certificate refusal in the bridge's log after 90 s (/readyz {answered:?}):\n{}",
            bridge.log_tail(20)
        );
        std::thread::sleep(Duration::from_millis(250));
    };
    assert!(
        body.contains("\"mqtt_connected\":false"),
        "/readyz must say the MQTT connection is down: {body}"
    );
    println!(
        "untrusted broker: bridge stayed unready (/readyz {answered:?}); its log: {}",
        refusal.trim()
    );
}
