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
//! broker keeps the backlog for it: `bridge_backlog`.)

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
