//! A sale as large as a terminal may post (the agent takes bodies up to
//! 1 MiB) is larger than a batch and goes to the cloud alone. It must not
//! stall the store's link: before, the agent's MQTT client refused to send a
//! packet over `cloud.batch_max_bytes` + 64 KiB, the connection dropped, the
//! same event was sent again after the reconnect, and no later sale ever
//! left the store. Now every message an agent may send fits the contract's
//! packet size (`protocol::batch::MAX_PUBLISH_PACKET_BYTES`; an event is at
//! most `MAX_EVENT_BYTES`, 960 KiB), and the bridge
//! dead-letters the event as `oversized` (its own `limits.max_event_bytes`,
//! 256 KiB by default), bytes intact, while the sales around it reach the
//! transactions topic.

use std::time::Duration;

use harness::agent::{created_id, post_sale, StoreStack};
use protocol::topics::headers;

#[test]
fn a_sale_larger_than_a_batch_is_dead_lettered_whole_and_the_sales_after_it_still_flow() {
    let stack = StoreStack::start("").expect("store stack");
    let client = reqwest::blocking::Client::new();
    let base = &stack.http_base;

    let before = created_id(post_sale(&client, base, "pos-01", 1).expect("agent answers"));

    // 900 KB of description: under the agent's 1 MiB body limit, more than
    // three times the default batch of 256 KiB.
    let mut large = protocol::samples::sale_numbered("pos-01", 2);
    large.lines[0].description = Some("x".repeat(900_000));
    let body = serde_json::to_vec(&large).expect("json");
    let large_id = created_id(
        client
            .post(format!("{base}/v1/sales"))
            .header("content-type", "application/json")
            .body(body)
            .send()
            .expect("agent answers"),
    );

    let after: Vec<String> = (3..=12)
        .map(|seq| created_id(post_sale(&client, base, "pos-01", seq).expect("agent answers")))
        .collect();

    let want: Vec<String> = std::iter::once(before).chain(after).collect();
    let (missing, _) = stack.transactions_in_kafka(want.iter(), Duration::from_secs(60));
    assert!(
        missing.is_empty(),
        "{} of {} sales posted around the large one never reached Kafka: the store's link \
         stalled; agent log:\n{}",
        missing.len(),
        want.len(),
        stack.agent.log_tail(20)
    );

    let letter = stack
        .dead_letter(&large_id, Duration::from_secs(60))
        .expect("the large sale is in the dead-letter topic");
    assert_eq!(
        letter.header_str(headers::DLQ_REASON).as_deref(),
        Some("oversized")
    );
    let value: serde_json::Value = serde_json::from_slice(&letter.value).expect("whole JSON");
    assert_eq!(
        value["body"]["lines"][0]["description"]
            .as_str()
            .map(str::len),
        Some(900_000),
        "the dead letter keeps the sale's bytes"
    );
    assert!(
        value["body"] == serde_json::to_value(&large).expect("json"),
        "the dead letter holds the sale as posted, every field"
    );

    // Receipts came back for everything, the large sale's batch included.
    assert_eq!(
        stack.wait_outbox_empty(Duration::from_secs(30)),
        Some(0),
        "outbox drained"
    );
}
