//! A bridge told to stop while the Kafka client refuses a record outright
//! (its topic deleted, or the bridge's ACL on it revoked: librdkafka fails
//! every produce to it at once) still stops within its shutdown grace,
//! leaving that message unacked for the broker to redeliver. Before, the
//! one dispatcher retried the produce until the process was killed: a
//! rollout's SIGTERM did nothing until Kubernetes' SIGKILL.

mod bridge_support;

use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use bridge_support::*;
use harness::kafka::Kafka;
use harness::mosquitto::Mosquitto;
use protocol::topics::KafkaTopic;
use protocol::EventKind;

const GRACE_S: u64 = 3;

#[test]
fn a_bridge_stops_within_its_grace_while_kafka_refuses_a_record() -> Result<()> {
    // Every domain topic but the devices one; no auto-creation (the harness
    // broker's default), and the bridge does not create topics itself.
    let kafka = Kafka::start()?;
    let topics: Vec<(&str, i32)> = KafkaTopic::ALL
        .iter()
        .filter(|t| **t != KafkaTopic::Devices)
        .map(|t| (t.name(), 3))
        .collect();
    kafka.create_topics(&topics)?;
    let mosquitto = Mosquitto::start()?;
    let mut bridge = Bridge::start(
        mosquitto.port(),
        kafka.bootstrap(),
        BridgeOptions {
            ensure_topics_at_startup: false,
            shutdown_grace_s: GRACE_S,
            // Give up waiting for the missing topic to appear in seconds,
            // not librdkafka's default 30 s: then every produce to it fails
            // at once.
            kafka_extra: vec![("topic.metadata.propagation.max.ms".into(), "1000".into())],
            ..BridgeOptions::replica("refused")
        },
    )?;
    let store = FakeStore::connect(mosquitto.port(), "store-refused")?;
    let device_status = || {
        fresh_events("store-refused", 9)
            .into_iter()
            .find(|e| e.schema == EventKind::DeviceStatus)
            .context("a device status sample")
    };
    store.publish_events(&[device_status()?])?;

    let deadline = Instant::now() + Duration::from_secs(60);
    while !std::fs::read_to_string(bridge.process.log_path())
        .unwrap_or_default()
        .contains("Kafka client refused a record")
    {
        anyhow::ensure!(
            Instant::now() < deadline,
            "the Kafka client never refused the record; bridge log:\n{}",
            bridge.process.log_tail(30)
        );
        std::thread::sleep(Duration::from_millis(200));
    }

    // The first message's records were queued while librdkafka still
    // looked for the topic, and are retried by its delivery task. A message
    // after that is refused as it is handed over, in the dispatcher itself.
    store.publish_events(&[device_status()?])?;
    std::thread::sleep(Duration::from_secs(2));
    let refused = bridge.metric("storelink_bridge_kafka_records_refused_total")?;
    anyhow::ensure!(refused > 0.0, "no refusal counted");
    // The log names the cause once per window, not ten times a second.
    let lines = std::fs::read_to_string(bridge.process.log_path())
        .unwrap_or_default()
        .matches("Kafka client refused a record")
        .count();
    assert!(
        (lines as f64) < refused,
        "{lines} log lines for {refused} refusals"
    );

    let asked = Instant::now();
    bridge.process.sigterm()?;
    let exit = bridge
        .process
        .wait_exit(Duration::from_secs(GRACE_S + 15))
        .context("the bridge did not stop while Kafka refused a record")?;
    let took = asked.elapsed();
    println!("stopped {took:?} after SIGTERM with a record refused (grace {GRACE_S} s): {exit}");
    assert!(
        took < Duration::from_secs(GRACE_S + 10),
        "stopping took {took:?}"
    );
    assert!(
        store.receipts().is_empty(),
        "the refused message was neither receipted nor acked"
    );
    Ok(())
}
