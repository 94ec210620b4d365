//! One of two bridge replicas killed with SIGKILL mid-stream: every event arrives.
//!
//! What Mosquitto 2.0 does (and this test relies on): a shared subscription
//! hands each message to one member's session. A member that dies keeps its
//! unacknowledged messages — and keeps receiving its round-robin share of new
//! ones — in its persistent session; nothing is handed to the other members
//! (eclipse-mosquitto/mosquitto#2662). So a killed replica comes back with
//! the same client id (as a StatefulSet pod does) and Mosquitto redelivers.
//! Records it had produced but not acked are produced again: at-least-once,
//! duplicates carry the same event id.

mod bridge_support;

use std::collections::HashSet;
use std::time::Duration;

use anyhow::Result;
use bridge_support::*;
use harness::mosquitto::Mosquitto;
use protocol::EventId;

#[test]
fn one_of_two_replicas_killed_mid_stream_loses_nothing() -> Result<()> {
    let kafka = harness::kafka::shared();
    let mosquitto = Mosquitto::start()?;
    let a = Bridge::start(
        mosquitto.port(),
        kafka.bootstrap(),
        BridgeOptions::replica("kill-a"),
    )?;
    let mut b = Bridge::start(
        mosquitto.port(),
        kafka.bootstrap(),
        BridgeOptions::replica("kill-b"),
    )?;
    let stores = [
        FakeStore::connect(mosquitto.port(), "store-kill-1")?,
        FakeStore::connect(mosquitto.port(), "store-kill-2")?,
        FakeStore::connect(mosquitto.port(), "store-kill-3")?,
    ];

    // 3 stores × 20 batches/s × 10 events = 600 events/s for 12 s.
    let (ids, a_progress) = std::thread::scope(|s| -> Result<_> {
        let publishers: Vec<_> = stores
            .iter()
            .map(|st| s.spawn(move || publish_stream(st, 240, 10, Duration::from_millis(50))))
            .collect();
        std::thread::sleep(Duration::from_secs(4));
        let a_before = a.metric("storelink_bridge_receipts_published_total")?;
        // b must have held traffic when it dies, or the kill proves nothing.
        let b_before = b.metric("storelink_bridge_receipts_published_total")?;
        anyhow::ensure!(
            b_before > 0.0,
            "replica b took no share of the traffic before the kill; the test would prove nothing"
        );
        b.process.kill9()?;
        std::thread::sleep(Duration::from_secs(4));
        let a_after = a.metric("storelink_bridge_receipts_published_total")?;
        b.restart()?;
        let mut ids: HashSet<EventId> = HashSet::new();
        for p in publishers {
            ids.extend(p.join().expect("publisher thread")?);
        }
        Ok((ids, (a_before, a_after)))
    })?;
    assert!(
        a_progress.1 > a_progress.0,
        "replica a stopped working while b was dead: receipts {a_progress:?}"
    );

    let recs = assert_all_receipted_then_in_kafka(
        &stores,
        &ids,
        kafka.bootstrap(),
        Duration::from_secs(90),
        || b.process.log_tail(30),
    )?;
    eprintln!(
        "all {} events in Kafka; {} duplicate records from b's unacked messages",
        ids.len(),
        duplicate_count(&recs)
    );
    Ok(())
}
