//! A bridge that comes back to a backlog holds a bounded number of messages.
//!
//! A broker without an in-flight limit (`max_inflight_messages 0`, or Debian
//! 12's Mosquitto 2.0.11 whatever it is configured to) sends a persistent
//! session that reconnects its whole backlog at once, unless the client's
//! MQTT 5 Receive Maximum stops it, and only a broker that honours that does.
//! The bridge takes what fits in its received queue and its in-flight
//! budget, leaves the rest unacked, and reconnects once it has caught up so
//! the broker redelivers it (`mqtt_source.rs`). This test builds such a
//! backlog while the bridge is down, on a broker with no in-flight limit and
//! a bridge declaring the largest Receive Maximum there is (65,535: Mosquitto
//! 2.0.21 honours the default of 100, which would keep the bound below from
//! ever engaging), and checks that the bound engaged and that every event
//! still arrives exactly once. A second test does the same with large
//! messages against the payload-bytes bound.

mod bridge_support;

use std::collections::HashSet;
use std::time::Duration;

use anyhow::Result;
use bridge_support::*;
use harness::mosquitto::{Mosquitto, MosquittoOptions};
use protocol::EventId;

/// A broker without an in-flight limit, a bridge with `options`, and two
/// stores whose `batches` of `batch_size` events each wait for the bridge,
/// which was stopped once its session existed.
struct Backlog {
    _mosquitto: Mosquitto,
    bridge: Bridge,
    stores: [FakeStore; 2],
    ids: HashSet<EventId>,
}

fn backlog(
    options: BridgeOptions,
    store_prefix: &str,
    batches: usize,
    batch_size: usize,
) -> Result<Backlog> {
    let kafka = harness::kafka::shared();
    let mosquitto = Mosquitto::start_with(MosquittoOptions {
        max_inflight_messages: 0,
        ..MosquittoOptions::default()
    })?;
    let mut bridge = Bridge::start(mosquitto.port(), kafka.bootstrap(), options)?;
    let stores = [
        FakeStore::connect(mosquitto.port(), &format!("{store_prefix}-1"))?,
        FakeStore::connect(mosquitto.port(), &format!("{store_prefix}-2"))?,
    ];
    bridge.process.sigterm()?;
    bridge.process.wait_exit(Duration::from_secs(30))?;
    let mut ids: HashSet<EventId> = HashSet::new();
    for store in &stores {
        ids.extend(publish_stream(store, batches, batch_size, Duration::ZERO)?);
    }
    Ok(Backlog {
        _mosquitto: mosquitto,
        bridge,
        stores,
        ids,
    })
}

impl Backlog {
    /// Starts the bridge on its backlog and waits for every event to be
    /// receipted and in Kafka; returns how many messages it deferred and
    /// how many duplicate records reached Kafka.
    fn drain(&mut self) -> Result<(f64, usize)> {
        self.bridge.restart()?;
        let bridge = &self.bridge;
        let recs = assert_all_receipted_then_in_kafka(
            &self.stores,
            &self.ids,
            harness::kafka::shared().bootstrap(),
            Duration::from_secs(180),
            || bridge.process.log_tail(30),
        )?;
        let deferred = bridge.metric("storelink_bridge_mqtt_messages_deferred_total")?;
        Ok((deferred, duplicate_count(&recs)))
    }
}

#[test]
fn a_backlog_larger_than_the_bridge_holds_arrives_whole_and_once() -> Result<()> {
    // 2,400 messages, more than the received queue (512) and the in-flight
    // budget (1,000 messages) together.
    let mut b = backlog(
        BridgeOptions {
            receive_maximum: u16::MAX,
            ..BridgeOptions::replica("backlog")
        },
        "store-backlog",
        1_200,
        4,
    )?;

    let (deferred, duplicates) = b.drain()?;
    eprintln!(
        "backlog: {} events in 2400 messages all in Kafka; {deferred} messages deferred to the broker; {duplicates} duplicate records",
        b.ids.len()
    );
    assert!(
        deferred > 0.0,
        "the backlog never filled the received queue, so this test did not exercise the bound"
    );
    assert_eq!(
        duplicates, 0,
        "redelivered copies must be settled by the de-duplication window"
    );
    Ok(())
}

/// The same backlog in larger messages, on a broker that honours the
/// bridge's Receive Maximum of 100: 100 messages of some 40 KB are more
/// than a 1 MiB payload budget, so it is the bytes bound that engages. The
/// bytes held (their peak, from `/metrics`) never pass the budget, and every
/// event still arrives exactly once.
#[test]
fn a_backlog_of_large_messages_is_held_to_the_payload_budget() -> Result<()> {
    const BUDGET: usize = 1024 * 1024;
    let mut b = backlog(
        BridgeOptions {
            max_bytes_in_flight: BUDGET,
            ..BridgeOptions::replica("backlog-bytes")
        },
        "store-bytes",
        300,
        40,
    )?;

    let (deferred, duplicates) = b.drain()?;
    let peak = b
        .bridge
        .metric("storelink_bridge_mqtt_payload_held_peak_bytes")?;
    eprintln!(
        "large-message backlog: {} events in 600 messages all in Kafka; {deferred} messages deferred; \
         peak payload held {peak} bytes of a {BUDGET}-byte budget; {duplicates} duplicate records",
        b.ids.len()
    );
    assert!(
        deferred > 0.0,
        "the payload budget never filled, so this test did not exercise it"
    );
    assert!(peak > 0.0, "the peak gauge never moved");
    assert!(
        peak <= BUDGET as f64,
        "the bridge held {peak} payload bytes, over its budget of {BUDGET}"
    );
    assert_eq!(duplicates, 0);
    Ok(())
}
