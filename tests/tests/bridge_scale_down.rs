//! A replica that leaves on purpose (SIGTERM: a scale-down, a rolling
//! update, a drained node) takes no new messages with it.
//!
//! Mosquitto 2.0 keeps routing a shared subscription's round-robin share of
//! new messages to a member whose persistent session is offline
//! (eclipse-mosquitto/mosquitto#2662), where they wait until that client id
//! connects again, or until the agents' receipt timeout sends them again. A
//! replica retired by a scale-down (the fleet's HPA does them) never
//! connects again. So with `mqtt.leave_share_group_on_shutdown`, as the
//! fleet's bridge.toml sets it, a bridge on SIGTERM unsubscribes first, then
//! drains: every later message goes to the replicas that stay. (Without it,
//! the default for a single replica, the session stays subscribed and the
//! broker keeps the backlog for it: `bridge_backlog`, and the second test
//! here.)

mod bridge_support;

use std::time::Duration;

use anyhow::Result;
use bridge_support::*;
use harness::mosquitto::Mosquitto;

#[test]
fn a_replica_stopped_by_sigterm_leaves_no_new_messages_behind() -> Result<()> {
    let kafka = harness::kafka::shared();
    let mosquitto = Mosquitto::start()?;
    let leaving = |name: &str| BridgeOptions {
        leave_share_group_on_shutdown: true,
        ..BridgeOptions::replica(name)
    };
    let a = Bridge::start(mosquitto.port(), kafka.bootstrap(), leaving("scale-a"))?;
    let mut b = Bridge::start(mosquitto.port(), kafka.bootstrap(), leaving("scale-b"))?;
    let store = FakeStore::connect(mosquitto.port(), "store-scale")?;

    // Both replicas share the traffic.
    let before = publish_stream(&store, 20, 10, Duration::from_millis(20))?;
    store.wait_receipted(&before, Duration::from_secs(60))?;
    let b_receipts = b.metric("storelink_bridge_receipts_published_total")?;
    assert!(
        b_receipts > 0.0,
        "replica b took no share of the traffic; the test would prove nothing"
    );

    // b leaves for good, mid-stream: what the broker routed to it before
    // it unsubscribed, it handles itself; everything later goes to a.
    let during = std::thread::scope(|scope| -> Result<_> {
        let publisher = scope.spawn(|| publish_stream(&store, 150, 10, Duration::from_millis(20)));
        std::thread::sleep(Duration::from_secs(1));
        b.process.sigterm()?;
        let status = b.process.wait_exit(Duration::from_secs(30))?;
        assert!(status.success(), "b's exit status after SIGTERM: {status}");
        publisher.join().expect("publisher thread")
    })?;
    let after = publish_stream(&store, 20, 10, Duration::from_millis(20))?;

    // The FakeStore never resends, so a message stranded in b's offline
    // session would never be receipted.
    let all: std::collections::HashSet<_> = during.union(&after).copied().collect();
    let records = assert_all_receipted_then_in_kafka(
        std::slice::from_ref(&store),
        &all,
        kafka.bootstrap(),
        Duration::from_secs(30),
        || {
            format!(
                "a:\n{}\nb:\n{}",
                a.process.log_tail(20),
                b.process.log_tail(20)
            )
        },
    )?;
    let b_log = b.process.log_tail(200);
    println!(
        "b took {b_receipts} of the first 20 batches, then left mid-stream; all {} events published during and after were receipted and are in Kafka ({} duplicate records); b's log: {}",
        all.len(),
        duplicate_count(&records),
        b_log
            .lines()
            .find(|l| l.contains("unsubscribed;"))
            .unwrap_or("(no UNSUBACK line)")
            .trim()
    );
    Ok(())
}

/// A bridge stopped under load (a rolling update of the only replica)
/// finishes the messages it took, receipts and acks included, and leaves
/// the rest unacked with the broker. Restarted, it takes those up, and none
/// of the events it had already published reach Kafka a second time.
///
/// The MQTT event loop must outlive the pipeline's intake, since the
/// messages still settling send their receipts and acks through it, and it
/// must not close its socket before the broker has read them. A loop that
/// stopped at the first message it could no longer hand on left every later
/// ack unsent; one that closed at its own DISCONNECT, with the broker's
/// bytes unread, had the kernel reset the connection and lose the last
/// acks. Either way the broker redelivered messages already in Kafka to the
/// restarted bridge, whose de-duplication window starts empty.
#[test]
fn a_bridge_stopped_under_load_settles_what_it_took_and_leaves_the_rest_to_the_broker() -> Result<()>
{
    const BATCHES: usize = 3_000;
    let kafka = harness::kafka::shared();
    let mosquitto = Mosquitto::start()?;
    let mut bridge = Bridge::start(
        mosquitto.port(),
        kafka.bootstrap(),
        BridgeOptions::replica("sigterm-load"),
    )?;
    let store = FakeStore::connect(mosquitto.port(), "store-sigterm-load")?;

    let ids = std::thread::scope(|scope| -> Result<_> {
        // As fast as the store can publish: the broker's window of 100
        // unacked messages stays full, so SIGTERM finds messages at every
        // stage (in the received queue, producing, awaiting delivery).
        let publisher = scope.spawn(|| publish_stream(&store, BATCHES, 20, Duration::ZERO));
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        let received = loop {
            let received = bridge.metric("storelink_bridge_mqtt_messages_total")?;
            if received >= 300.0 || std::time::Instant::now() > deadline {
                break received;
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        bridge.process.sigterm()?;
        let status = bridge.process.wait_exit(Duration::from_secs(30))?;
        assert!(
            status.success(),
            "the bridge's exit status after SIGTERM: {status}"
        );
        let ids = publisher.join().expect("publisher thread")?;
        assert!(
            received >= 300.0 && received < BATCHES as f64,
            "SIGTERM came when the bridge had received {received} of {BATCHES} messages, not mid-stream; the test would prove nothing"
        );
        Ok(ids)
    })?;
    let stopped_log = std::fs::read_to_string(bridge.process.log_path())?;
    let receipts_before = store.outcomes().len();

    bridge.restart()?;
    let records = assert_all_receipted_then_in_kafka(
        std::slice::from_ref(&store),
        &ids,
        kafka.bootstrap(),
        Duration::from_secs(120),
        || bridge.process.log_tail(30),
    )?;
    let unsent: Vec<&str> = stopped_log
        .lines()
        .filter(|l| l.contains("could not queue a receipt"))
        .collect();
    println!(
        "{} events; {receipts_before} receipted before the restart, the rest after it; {} duplicate records in Kafka; \
         receipts the stopped bridge could not send: {}",
        ids.len(),
        duplicate_count(&records),
        unsent.len()
    );
    assert!(
        receipts_before > 0,
        "nothing was receipted before SIGTERM; the drain was not exercised"
    );
    assert!(
        unsent.is_empty(),
        "the stopping bridge dropped receipts and acks of settled messages:\n{}",
        unsent
            .iter()
            .take(3)
            .copied()
            .collect::<Vec<_>>()
            .join("\n")
    );
    assert_eq!(
        duplicate_count(&records),
        0,
        "events the stopped bridge had settled were published again after the restart"
    );
    Ok(())
}
