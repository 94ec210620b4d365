//! A batch re-published by an agent shows up once in Kafka within the
//! de-duplication window, and is receipted as `Duplicate`. Also: SIGTERM
//! stops the bridge cleanly with exit status 0.

mod bridge_support;

use std::collections::HashSet;
use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use bridge_support::*;
use harness::mosquitto::Mosquitto;
use protocol::receipt::DeliveryOutcome;
use protocol::EventId;

fn wait_receipts_for_batch(store: &FakeStore, payload: &[u8], n: usize) -> Result<()> {
    let batch = protocol::batch::RawBatch::parse(payload)?.batch_id;
    let deadline = Instant::now() + Duration::from_secs(60);
    while store
        .receipts()
        .iter()
        .filter(|r| r.batch_id == batch)
        .count()
        < n
    {
        if Instant::now() > deadline {
            bail!("batch {batch}: fewer than {n} receipts after 60 s");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(())
}

#[test]
fn a_republished_batch_shows_up_once_in_kafka_and_is_receipted_duplicate() -> Result<()> {
    let kafka = harness::kafka::shared();
    let mosquitto = Mosquitto::start()?;
    let mut bridge = Bridge::start(
        mosquitto.port(),
        kafka.bootstrap(),
        BridgeOptions::replica("dedupe-0"),
    )?;
    let store = FakeStore::connect(mosquitto.port(), "store-dedupe")?;

    // A resend after the receipt (agent crashed before recording it).
    let first = fresh_events("store-dedupe", 20);
    let p1 = store.publish_events(&first)?;
    wait_receipts_for_batch(&store, &p1, 1)?;
    store.publish_payload(&p1)?;
    wait_receipts_for_batch(&store, &p1, 2)?;

    // A resend racing the first copy (reconnect while in flight).
    let second = fresh_events("store-dedupe", 20);
    let p2 = store.publish_events(&second)?;
    store.publish_payload(&p2)?;
    wait_receipts_for_batch(&store, &p2, 2)?;

    let b1 = protocol::batch::RawBatch::parse(&p1)?.batch_id;
    let receipts = store.receipts();
    let resend = receipts
        .iter()
        .filter(|r| r.batch_id == b1)
        .nth(1)
        .expect("second receipt of batch 1");
    assert!(
        resend
            .events
            .iter()
            .all(|e| e.outcome == DeliveryOutcome::Duplicate),
        "the resend must be receipted Duplicate: {resend:?}"
    );

    let ids: HashSet<EventId> = first.iter().chain(&second).map(|e| e.id).collect();
    // Every receipt is in, so every write is done: consuming now sees any duplicate.
    let recs = consume_ids(kafka.bootstrap(), &ids, Duration::from_secs(60))?;
    assert_each_exactly(&recs, &ids, 1);
    let dups = bridge.metric("storelink_bridge_duplicates_dropped_total")?;
    assert_eq!(dups, 40.0, "duplicates_dropped_total");

    // SIGTERM: stop taking messages, finish in-flight, exit 0.
    bridge.process.sigterm()?;
    let status = bridge.process.wait_exit(Duration::from_secs(30))?;
    assert!(
        status.success(),
        "bridge exit status after SIGTERM: {status}"
    );
    Ok(())
}
