//! A cloud broker whose ACL does not let the bridge publish one store's
//! receipts: Kafka gets that store's events, but the broker refuses every
//! receipt (MQTT 5 PUBACK "not authorized"), so the store never hears of the
//! delivery and will resend for ever. rumqttc only logs the refusal at warn
//! level without a topic; before this test the bridge counted those
//! receipts as published and said nothing. Now it counts them by reason
//! (`storelink_bridge_receipts_refused_total`) and says at error level what
//! access it lacks, at most once per 10 s. The other store is unaffected.

mod bridge_support;

use std::collections::HashSet;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use bridge_support::*;
use harness::mosquitto::{Mosquitto, MosquittoOptions};
use protocol::topics;
use protocol::EventId;

const ALLOWED: &str = "store-receipts-ok";
const REFUSED: &str = "store-receipts-refused";

#[test]
fn a_receipt_the_broker_refuses_is_counted_and_named_not_taken_for_published() -> Result<()> {
    let kafka = harness::kafka::shared();
    // Every client is anonymous here: events may be published and read
    // everywhere, receipts read everywhere, and written for ALLOWED only.
    let acl = format!(
        "topic readwrite {}\ntopic read {}\ntopic write {}\n",
        topics::ALL_STORE_EVENTS,
        topics::store_receipts_topic("+"),
        topics::store_receipts_topic(ALLOWED),
    );
    let mosquitto = Mosquitto::start_with(MosquittoOptions {
        acl: Some(acl),
        // Not the harness's 0 (no limit): with 0, Mosquitto 2.0 also drops
        // the connection of a client whose publish it refused ("Quota
        // exceeded"), so each refusal would cost a reconnect (k3s/README.md).
        max_queued_messages: 1000,
        ..MosquittoOptions::default()
    })?;
    let started = Instant::now();
    let bridge = Bridge::start(
        mosquitto.port(),
        kafka.bootstrap(),
        BridgeOptions::replica("receipt-refused-0"),
    )?;
    let allowed = FakeStore::connect(mosquitto.port(), ALLOWED)?;
    let refused = FakeStore::connect(mosquitto.port(), REFUSED)?;

    let allowed_events = fresh_events(ALLOWED, 20);
    let refused_events = fresh_events(REFUSED, 20);
    for batch in refused_events.chunks(5) {
        refused.publish_events(batch)?;
    }
    allowed.publish_events(&allowed_events)?;
    let allowed_ids: HashSet<EventId> = allowed_events.iter().map(|e| e.id).collect();
    let refused_ids: HashSet<EventId> = refused_events.iter().map(|e| e.id).collect();

    allowed.wait_receipted(&allowed_ids, Duration::from_secs(60))?;
    // Kafka has both stores' events: the bridge did its part.
    let all: HashSet<EventId> = allowed_ids.union(&refused_ids).copied().collect();
    let records = consume_ids(kafka.bootstrap(), &all, Duration::from_secs(60))?;
    assert_each_exactly(&records, &all, 1);

    // Four receipts (one per message of REFUSED), each refused.
    let deadline = Instant::now() + Duration::from_secs(30);
    let counted = loop {
        let n = bridge
            .metric("storelink_bridge_receipts_refused_total{reason=\"not_authorized\"}")
            .unwrap_or(0.0);
        if n >= 4.0 || Instant::now() >= deadline {
            break n;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(
        counted,
        4.0,
        "every refused receipt is counted; bridge log:\n{}",
        bridge.process.log_tail(30)
    );
    assert!(
        refused.receipts().is_empty(),
        "the broker delivered a receipt its ACL refuses"
    );
    let log = bridge.process.log_tail(10_000);
    let lines: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("ERROR") && l.contains("refused a delivery receipt"))
        .collect();
    // At most one line per 10 s window the refusals spread over (one,
    // unless this machine is very slow), never one per refusal.
    let windows = 1 + started.elapsed().as_secs() / 10;
    assert!(
        !lines.is_empty() && (lines.len() as u64) <= windows && lines.len() < 4,
        "{} error lines for 4 refusals in {} s:\n{log}",
        lines.len(),
        started.elapsed().as_secs()
    );
    assert!(
        lines[0].contains("not_authorized") && lines[0].contains("receipts"),
        "the error line names the reason and the topics: {}",
        lines[0]
    );
    let published = bridge
        .metric("storelink_bridge_receipts_published_total")
        .context("receipts published")?;
    // The allowed store's one receipt and the four refused ones: every
    // receipt was handed to the broker once (the fake stores never resend).
    assert_eq!(published, 5.0, "receipts handed to the broker");
    println!(
        "{} receipts published (the allowed store's one among them), 4 refused and counted; the bridge said: {}",
        published,
        lines[0].trim()
    );
    Ok(())
}
