//! CPU cost of routing one MQTT message of sale events (no brokers): the
//! bridge's per-event parse, header checks and typed body decode.
//!
//! `cargo run --release -p cloud-bridge --example route_cost [events_per_message]`

use std::time::Instant;

use cloud_bridge::routing::{route, Decision};
use protocol::batch::encode_batch;
use protocol::EventId;

fn main() {
    let per_message: usize = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(100);
    let samples = protocol::samples::envelopes("store-0000");
    let events: Vec<Vec<u8>> = (0..per_message)
        .map(|i| {
            let mut e = samples[i % 2].clone();
            e.id = EventId::new_v7();
            e.to_json()
        })
        .collect();
    let payload = encode_batch(
        uuid::Uuid::now_v7(),
        "store-0000",
        events.iter().map(Vec::as_slice),
    );
    let topic = protocol::topics::store_events_topic("store-0000");
    let rounds = 2_000;
    let mut published = 0usize;
    // Warm-up, then the measured rounds.
    for _ in 0..rounds / 10 {
        published += route(&topic, &payload, 1 << 20).decisions.len();
    }
    let t = Instant::now();
    for _ in 0..rounds {
        published += route(&topic, &payload, 1 << 20)
            .decisions
            .iter()
            .filter(|d| matches!(d, Decision::Publish(_)))
            .count();
    }
    let per_event = t.elapsed().as_secs_f64() * 1e6 / (rounds * per_message) as f64;
    assert!(published > 0);
    println!(
        "route: {per_message} events of {} bytes on average per message, {per_event:.2} µs per event",
        events.iter().map(Vec::len).sum::<usize>() / per_message
    );
}
