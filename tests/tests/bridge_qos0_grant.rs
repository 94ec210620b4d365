//! A cloud broker that grants the bridge's subscription only at QoS 0
//! (`max_qos 0`): messages would arrive without acks, so nothing the bridge
//! defers or loses in a crash would be redelivered. The bridge must not
//! report ready, and must say why. Before, any "success" grant counted as
//! subscribed, QoS 0 included.

use std::time::{Duration, Instant};

use anyhow::Result;
use harness::agent::{spawn_bridge, BridgeTls};
use harness::mosquitto::{Mosquitto, MosquittoOptions};

#[test]
fn a_subscription_granted_at_qos_0_keeps_the_bridge_unready() -> Result<()> {
    let kafka = harness::kafka::shared();
    let mosquitto = Mosquitto::start_with(MosquittoOptions {
        max_qos: Some(0),
        ..MosquittoOptions::default()
    })?;
    let dir = tempfile::Builder::new()
        .prefix("storelink-qos0-")
        .tempdir()?;
    let (bridge, port) = spawn_bridge(
        dir.path(),
        "bridge-qos0",
        mosquitto.port(),
        kafka.bootstrap(),
        BridgeTls::default(),
    )?;
    let url = format!("http://127.0.0.1:{port}/readyz");
    let client = reqwest::blocking::Client::builder()
        .timeout(Duration::from_secs(2))
        .build()?;
    let started = Instant::now();
    let mut answers = 0;
    // Watch until the refusal is logged, and at least 5 s: never ready.
    loop {
        if let Ok(r) = client.get(&url).send() {
            let status = r.status().as_u16();
            let body = r.text().unwrap_or_default();
            assert_ne!(status, 200, "ready with a QoS 0 subscription: {body}");
            assert!(body.contains("\"subscribed\":false"), "{body}");
            answers += 1;
        }
        let said = bridge
            .log_tail(10_000)
            .lines()
            .any(|l| l.contains("ERROR") && l.contains("did not grant the subscription at QoS 1"));
        if said && answers > 0 && started.elapsed() >= Duration::from_secs(5) {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "no refusal logged after 60 s:\n{}",
            bridge.log_tail(30)
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    println!(
        "QoS 0 grant: /readyz answered 503 {answers} times; the bridge said: {}",
        bridge
            .log_tail(10_000)
            .lines()
            .find(|l| l.contains("did not grant"))
            .unwrap_or_default()
            .trim()
    );
    Ok(())
}
