//! End-to-end latency (issue 5): from a POS POST to the record being
//! readable in Kafka, at a steady 2,000 sales/s, through the whole real
//! system (agent, cloud Mosquitto, bridge, Kafka). Target: p99 < 100 ms.
//!
//! Latency is measured from just before the POST is sent to the moment a
//! consumer polling the transactions topic receives the record, so it
//! includes the consumer's own fetch delay (pessimistic).
//!
//! Run: `cargo build --release --workspace --bins && cargo run --release -p storelink-tests --bin bench_e2e`
//! (`BENCH_RATE`, default 2000; `BENCH_SECONDS`, default 20).

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use harness::agent::{StoreStack, TERMINALS};
use hdrhistogram::Histogram;
use protocol::topics::{headers, KafkaTopic};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Headers, Message};
use rdkafka::ClientConfig;

fn main() -> Result<()> {
    let rate: u64 = std::env::var("BENCH_RATE")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(2000);
    let secs: u64 = std::env::var("BENCH_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(20);
    let window = std::env::var("BENCH_WINDOW")
        .ok()
        .and_then(|s| s.parse().ok());
    let stack = StoreStack::start_with(harness::agent::StackOptions {
        max_batches_in_flight: window,
        ..Default::default()
    })
    .context("store stack")?;
    // event id → when its POST was sent
    let sent: Arc<Mutex<HashMap<String, Instant>>> = Arc::default();
    let arrived: Arc<Mutex<HashMap<String, Instant>>> = Arc::default();
    let stop = Arc::new(AtomicBool::new(false));

    let consumer_thread = {
        let (arrived, stop, bootstrap, store) = (
            arrived.clone(),
            stop.clone(),
            stack.kafka_bootstrap.clone(),
            stack.store_id.clone(),
        );
        std::thread::spawn(move || -> Result<()> {
            let consumer: BaseConsumer = ClientConfig::new()
                .set("bootstrap.servers", &bootstrap)
                .set("group.id", format!("bench-e2e-{store}"))
                .set("auto.offset.reset", "earliest")
                .set("enable.auto.commit", "false")
                .set("fetch.wait.max.ms", "5")
                .set("fetch.min.bytes", "1")
                .create()?;
            consumer.subscribe(&[KafkaTopic::Transactions.name()])?;
            while !stop.load(Ordering::Relaxed) {
                let Some(Ok(msg)) = consumer.poll(Duration::from_millis(50)) else {
                    continue;
                };
                let now = Instant::now();
                let id = msg.headers().and_then(|h| {
                    h.iter()
                        .find(|h| h.key == headers::EVENT_ID)
                        .and_then(|h| h.value.map(|v| String::from_utf8_lossy(v).into_owned()))
                });
                if let (Some(id), Ok(mut a)) = (id, arrived.lock()) {
                    a.entry(id).or_insert(now);
                }
            }
            Ok(())
        })
    };
    // Let the consumer join before traffic starts.
    std::thread::sleep(Duration::from_secs(3));

    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let posted = rt.block_on(async {
        let client = reqwest::Client::new();
        let mut tick = tokio::time::interval(Duration::from_micros(1_000_000 / rate));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
        let deadline = Instant::now() + Duration::from_secs(secs);
        let mut tasks = tokio::task::JoinSet::new();
        let mut seq = 0u64;
        while Instant::now() < deadline {
            tick.tick().await;
            seq += 1;
            let terminal = TERMINALS[(seq % TERMINALS.len() as u64) as usize];
            let body = serde_json::to_vec(&protocol::samples::sale_numbered(terminal, seq))
                .unwrap_or_default();
            let (client, sent, url) = (
                client.clone(),
                sent.clone(),
                format!("{}/v1/sales", stack.http_base),
            );
            tasks.spawn(async move {
                let started = Instant::now();
                if let Ok(r) = client
                    .post(url)
                    .header("content-type", "application/json")
                    .body(body)
                    .send()
                    .await
                {
                    if let Ok(v) = r.json::<serde_json::Value>().await {
                        if let (Some(id), Ok(mut s)) = (v["event_id"].as_str(), sent.lock()) {
                            s.insert(id.to_owned(), started);
                        }
                    }
                }
            });
            while tasks.try_join_next().is_some() {}
        }
        while tasks.join_next().await.is_some() {}
        seq
    });
    // Wait for the tail to arrive.
    let wait_until = Instant::now() + Duration::from_secs(30);
    loop {
        let (s, a) = (
            sent.lock().map(|s| s.len()).unwrap_or(0),
            arrived.lock().map(|a| a.len()).unwrap_or(0),
        );
        if a >= s || Instant::now() > wait_until {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    stop.store(true, Ordering::Relaxed);
    let _ = consumer_thread.join();
    let sent = sent.lock().map_err(|_| anyhow::anyhow!("lock"))?;
    let arrived = arrived.lock().map_err(|_| anyhow::anyhow!("lock"))?;
    let mut hist = Histogram::<u64>::new_with_bounds(1, 120_000_000, 3)?;
    let mut missing = 0;
    for (id, t0) in sent.iter() {
        match arrived.get(id) {
            Some(t1) => hist.record(t1.saturating_duration_since(*t0).as_micros() as u64)?,
            None => missing += 1,
        }
    }
    println!(
        "e2e      POS POST -> Kafka at {rate} sales/s for {secs} s: {} posted, {} acknowledged, {} in Kafka, {missing} not seen",
        posted,
        sent.len(),
        hist.len()
    );
    println!(
        "e2e      latency p50 {:.1} ms, p99 {:.1} ms, p99.9 {:.1} ms, max {:.1} ms (target p99 < 100 ms)",
        hist.value_at_quantile(0.5) as f64 / 1000.0,
        hist.value_at_quantile(0.99) as f64 / 1000.0,
        hist.value_at_quantile(0.999) as f64 / 1000.0,
        hist.max() as f64 / 1000.0
    );
    Ok(())
}
