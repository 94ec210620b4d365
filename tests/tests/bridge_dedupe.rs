//! A batch re-published by an agent shows up once in Kafka within the
//! de-duplication window, and is receipted as `Duplicate`. Also: SIGTERM
//! stops the bridge cleanly with exit status 0. And the window is per store:
//! an id another store used first is no reason to drop an event.

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

/// The two receipts of the batch `payload` of `events`, each checked to
/// name exactly the batch's event ids, once each, with one outcome for all
/// of them; returns (first receipt's outcome, second receipt's outcome) in
/// the order they arrived.
fn receipt_outcomes(
    store: &FakeStore,
    payload: &[u8],
    events: &[protocol::Envelope],
) -> Result<(DeliveryOutcome, DeliveryOutcome)> {
    let batch = protocol::batch::RawBatch::parse(payload)?.batch_id;
    let mut want: Vec<EventId> = events.iter().map(|e| e.id).collect();
    want.sort();
    let receipts: Vec<_> = store
        .receipts()
        .into_iter()
        .filter(|r| r.batch_id == batch)
        .collect();
    if receipts.len() != 2 {
        bail!("batch {batch}: want 2 receipts, got {receipts:?}");
    }
    let mut outcomes = Vec::new();
    for r in &receipts {
        let mut named: Vec<EventId> = r.events.iter().map(|e| e.id).collect();
        named.sort();
        if named != want {
            bail!(
                "a receipt of batch {batch} does not name exactly its {} events: {r:?}",
                want.len()
            );
        }
        let outcome = r.events[0].outcome;
        if r.events.iter().any(|e| e.outcome != outcome) {
            bail!("a receipt of batch {batch} mixes outcomes: {r:?}");
        }
        outcomes.push(outcome);
    }
    Ok((outcomes[0], outcomes[1]))
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

    // The resend after the receipt: its receipt names exactly the batch's
    // events, every one `Duplicate` (the first copy's receipt, every one
    // `Delivered`).
    let (first_receipt, resend) = receipt_outcomes(&store, &p1, &first)?;
    assert_eq!(
        first_receipt,
        DeliveryOutcome::Delivered,
        "the first copy of batch 1 must be receipted Delivered"
    );
    assert_eq!(
        resend,
        DeliveryOutcome::Duplicate,
        "the resend of batch 1 must be receipted Duplicate"
    );

    // The racing resend: the bridge checks a message's ids against the
    // window under one lock, in arrival order, so the copy that arrives
    // first reserves every id and is produced, and the other waits for it
    // and is receipted `Duplicate`. Its receipt may go out first, so the
    // order of the two receipts is not fixed; their outcomes are.
    let (a, b) = receipt_outcomes(&store, &p2, &second)?;
    let mut outcomes = [a, b];
    outcomes.sort_by_key(|o| *o != DeliveryOutcome::Delivered);
    assert_eq!(
        outcomes,
        [DeliveryOutcome::Delivered, DeliveryOutcome::Duplicate],
        "of two racing copies of batch 2, one is receipted all Delivered and the other all Duplicate"
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

/// Agents choose event ids. Store A (hostile, or with a broken id
/// generator) publishes events carrying ids store B will use; B's own events
/// must still reach Kafka and be receipted `Delivered`, not `Duplicate` (a
/// `Duplicate` receipt makes B delete events Kafka never got).
#[test]
fn an_id_another_store_published_first_does_not_drop_an_event() -> Result<()> {
    let kafka = harness::kafka::shared();
    let mosquitto = Mosquitto::start()?;
    let _bridge = Bridge::start(
        mosquitto.port(),
        kafka.bootstrap(),
        BridgeOptions::replica("dedupe-stores-0"),
    )?;
    let store_a = FakeStore::connect(mosquitto.port(), "store-dedupe-a")?;
    let store_b = FakeStore::connect(mosquitto.port(), "store-dedupe-b")?;

    let b_events = fresh_events("store-dedupe-b", 12);
    let a_events: Vec<protocol::Envelope> = fresh_events("store-dedupe-a", 12)
        .into_iter()
        .zip(&b_events)
        .map(|(mut a, b)| {
            a.id = b.id;
            a
        })
        .collect();
    let ids: HashSet<EventId> = b_events.iter().map(|e| e.id).collect();

    store_a.publish_events(&a_events)?;
    store_a.wait_receipted(&ids, Duration::from_secs(60))?;
    store_b.publish_events(&b_events)?;
    store_b.wait_receipted(&ids, Duration::from_secs(60))?;

    let outcomes = store_b.outcomes();
    let not_delivered: Vec<_> = ids
        .iter()
        .filter_map(|id| {
            outcomes
                .get(id)
                .filter(|(o, _)| *o != DeliveryOutcome::Delivered)
        })
        .collect();
    assert!(
        not_delivered.is_empty(),
        "store B's events must be receipted Delivered, got {not_delivered:?}"
    );

    let recs = consume_ids(kafka.bootstrap(), &ids, Duration::from_secs(60))?;
    for store in ["store-dedupe-a", "store-dedupe-b"] {
        let from_store: Vec<harness::kafka::Record> = recs
            .iter()
            .filter(|r| r.header_str(protocol::topics::headers::STORE_ID).as_deref() == Some(store))
            .cloned()
            .collect();
        assert_each_exactly(&from_store, &ids, 1);
    }
    println!(
        "{} ids used by two stores: each store's event in Kafka once, store B's receipted Delivered",
        ids.len()
    );
    Ok(())
}
