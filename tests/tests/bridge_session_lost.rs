//! A cloud broker that comes back without its sessions (its storage lost)
//! while the bridge holds messages it could not yet publish: their acks must
//! not go out on the new connection, where packet ids start over and the
//! same ids name other stores' new messages. Such an ack would settle a new
//! message before Kafka has it.
//!
//! The broker logs every packet (`log_type debug`), so the test counts the
//! PUBACKs the bridge sent on the new connection: exactly one per message
//! that arrived on it.

mod bridge_support;

use std::collections::HashSet;
use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use bridge_support::*;
use harness::kafka::Kafka;
use harness::mosquitto::{Mosquitto, MosquittoOptions};
use protocol::EventId;

const EVENTS_PER_BATCH: usize = 10;

#[test]
fn acks_for_messages_of_a_lost_connection_never_reach_the_next_session() -> Result<()> {
    let mut kafka = Kafka::start()?;
    let mut mosquitto = Mosquitto::start_with(MosquittoOptions {
        log_packets: true,
        ..MosquittoOptions::default()
    })?;
    let mut opts = BridgeOptions::replica("forgotten-0");
    opts.message_timeout_ms = 10_000;
    let bridge = Bridge::start(mosquitto.port(), kafka.bootstrap(), opts)?;
    let bridge_client = "storelink-test-forgotten-0";

    // Kafka down: the bridge takes these messages and cannot settle them.
    kafka.stop()?;
    let first = FakeStore::connect(mosquitto.port(), "store-forgotten-1")?;
    let held_batches = 5;
    let held = fresh_events(&first.store_id, held_batches * EVENTS_PER_BATCH);
    for batch in held.chunks(EVENTS_PER_BATCH) {
        first.publish_events(batch)?;
    }
    wait_for(&bridge, "storelink_bridge_events_in_flight", held.len(), 20)?;

    // The broker loses every session; the bridge reconnects to a new one.
    mosquitto.restart_forgetting_sessions()?;
    let restarted_at = std::fs::metadata(mosquitto.log_path())?.len();

    // Kafka back: the held events are published and receipted, but the
    // connection their messages came on is gone, so they are not acked.
    kafka.start_again()?;
    let held_ids: HashSet<EventId> = held.iter().map(|e| e.id).collect();
    let records = consume_ids(kafka.bootstrap(), &held_ids, Duration::from_secs(90))?;
    assert_each_exactly(&records, &held_ids, 1);
    wait_for(
        &bridge,
        "storelink_bridge_receipts_published_total",
        held_batches,
        30,
    )?;

    // Messages that arrive on the new session are acked as always.
    let second = FakeStore::connect(mosquitto.port(), "store-forgotten-2")?;
    let new_batches = 3;
    let fresh = fresh_events(&second.store_id, new_batches * EVENTS_PER_BATCH);
    for batch in fresh.chunks(EVENTS_PER_BATCH) {
        second.publish_events(batch)?;
    }
    let fresh_ids: HashSet<EventId> = fresh.iter().map(|e| e.id).collect();
    let records = consume_ids(kafka.bootstrap(), &fresh_ids, Duration::from_secs(60))?;
    assert_each_exactly(&records, &fresh_ids, 1);
    second.wait_receipted(&fresh_ids, Duration::from_secs(30))?;

    // Every ack the bridge sent on the new connection is one of those.
    let deadline = Instant::now() + Duration::from_secs(15);
    let acks = loop {
        let acks = pubacks_from(&mosquitto, restarted_at, bridge_client)?;
        if acks.len() >= new_batches || Instant::now() >= deadline {
            break acks;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    // A stale ack would arrive after the rest; give one the time to.
    std::thread::sleep(Duration::from_secs(1));
    let acks_after = pubacks_from(&mosquitto, restarted_at, bridge_client)?;
    let skipped = bridge.metric("storelink_bridge_mqtt_acks_skipped_total")?;
    eprintln!(
        "held {} events in {held_batches} messages across the broker restart; \
         acks skipped {skipped}; PUBACKs on the new connection: {acks_after:?}",
        held.len(),
    );
    assert_eq!(
        acks.len(),
        new_batches,
        "the bridge must ack exactly the {new_batches} messages of the new session"
    );
    assert_eq!(
        acks_after, acks,
        "an ack went out late on the new connection"
    );
    assert!(
        !acks_after.iter().any(|a| a.contains("unknown packet")),
        "the broker saw acks for packet ids it never sent: {acks_after:?}"
    );
    assert_eq!(
        skipped, held_batches as f64,
        "each message of the lost connection is counted as an ack skipped"
    );
    Ok(())
}

/// Waits until the bridge's `series` reaches `at_least`.
fn wait_for(bridge: &Bridge, series: &str, at_least: usize, secs: u64) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        let v = bridge.metric(series)?;
        if v >= at_least as f64 {
            return Ok(());
        }
        if Instant::now() >= deadline {
            bail!(
                "{series} stayed at {v} (wanted {at_least}) for {secs} s; bridge log:\n{}",
                bridge.process.log_tail(30)
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The broker's log lines for PUBACKs `client` sent it since byte `from`
/// (including its warnings about unknown packet ids).
fn pubacks_from(mosquitto: &Mosquitto, from: u64, client: &str) -> Result<Vec<String>> {
    let log = std::fs::read(mosquitto.log_path())?;
    let start = usize::try_from(from)?.min(log.len());
    let text = String::from_utf8_lossy(&log[start..]);
    let needle = format!("Received PUBACK from {client} ");
    Ok(text
        .lines()
        .filter(|l| l.contains(&needle))
        .map(str::to_owned)
        .collect())
}
