//! A store on a slow uplink (LTE backup at ~400 kbit/s): a large sale takes
//! seconds to cross. It must cross once, on one connection, and the sale
//! behind it must follow. Before, the receipt timeout counted from the send,
//! so a batch still crossing was sent again at every timeout (here: 3 sends
//! of a sale that crossed once, the link carrying copies for 25 s). It now
//! counts from the broker's PUBACK.
//!
//! The agent's limit on writing one message (rumqttc's 5 s by default, now
//! `cloud.network_timeout_secs`) is not reached here: loopback's send buffer
//! takes a whole message at once, where a real slow link's keeps the write
//! waiting on the link.

use std::time::{Duration, Instant};

use harness::agent::{created_id, metric_value, post_sale, StackOptions, StoreStack};

/// 48 KiB/s upwards: a 600 KB sale takes about 12 s to cross.
const UPLINK: u64 = 48 * 1024;

#[test]
fn a_large_sale_crosses_a_slow_uplink_once_and_the_sales_behind_it_follow() {
    let stack = StoreStack::start_with(StackOptions {
        uplink_bytes_per_sec: Some(UPLINK),
        ..StackOptions::default()
    })
    .expect("store stack");
    let client = reqwest::blocking::Client::new();
    let base = &stack.http_base;
    // Connected through the proxy before anything is sent.
    let deadline = Instant::now() + Duration::from_secs(30);
    while metric_value(
        &stack.agent_metrics(),
        "storelink_agent_cloud_mqtt_connected",
    ) != Some(1.0)
    {
        assert!(
            Instant::now() < deadline,
            "the agent never connected through the uplink"
        );
        std::thread::sleep(Duration::from_millis(100));
    }

    let mut large = protocol::samples::sale_numbered("pos-01", 1);
    large.lines[0].description = Some("x".repeat(600_000));
    let posted = Instant::now();
    let large_id = created_id(
        client
            .post(format!("{base}/v1/sales"))
            .header("content-type", "application/json")
            .body(serde_json::to_vec(&large).expect("json"))
            .send()
            .expect("agent answers"),
    );
    let small_id = created_id(post_sale(&client, base, "pos-01", 2).expect("agent answers"));

    // The large sale is over the bridge's 256 KiB event limit: it reaches
    // the dead-letter topic whole (receipted all the same); the small one
    // the transactions topic.
    let (missing, _) = stack.transactions_in_kafka([&small_id], Duration::from_secs(120));
    assert!(
        missing.is_empty(),
        "the sale behind the large one never reached Kafka; agent log:\n{}",
        stack.agent.log_tail(20)
    );
    assert!(stack
        .dead_letter(&large_id, Duration::from_secs(60))
        .is_some());
    let took = posted.elapsed();

    let metrics = stack.agent_metrics();
    let metric = |name: &str| metric_value(&metrics, name).unwrap_or(-1.0);
    let connections = stack.uplink.as_ref().map_or(0, |u| u.connections());
    println!(
        "slow uplink ({} KiB/s): a 600 KB sale and the one behind it in Kafka {:.1} s after the post, \
         over {connections} connection(s), {} events sent, {} resends",
        UPLINK / 1024,
        took.as_secs_f64(),
        metric("storelink_agent_events_sent_total"),
        metric("storelink_agent_resends_total")
    );
    assert_eq!(
        connections,
        1,
        "the connection held; agent log:\n{}",
        stack.agent.log_tail(20)
    );
    assert_eq!(
        metric("storelink_agent_events_sent_total"),
        2.0,
        "each sale crossed once"
    );
    assert_eq!(metric("storelink_agent_resends_total"), 0.0);
}
