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
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use rdkafka::ClientConfig;

fn wall_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

fn main() -> Result<()> {
    harness::process::stop_children_on_signal()?;
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
    let sent: Arc<Mutex<HashMap<String, (Instant, i64)>>> = Arc::default();
    let arrived: Arc<Mutex<HashMap<String, (Instant, i64)>>> = Arc::default();
    let stop = Arc::new(AtomicBool::new(false));

    let (ready_tx, ready_rx) = std::sync::mpsc::channel::<()>();
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
                .set("enable.auto.commit", "false")
                .set("fetch.wait.max.ms", "5")
                .set("fetch.min.bytes", "1")
                .create()?;
            // Assign every partition at its current end rather than joining a
            // consumer group: a group's first assignment waits for the
            // broker's `group.initial.rebalance.delay.ms` (3 s by default) and
            // the records produced meanwhile would be measured as if the
            // pipeline had stalled.
            let topic = KafkaTopic::Transactions.name();
            let metadata = consumer.fetch_metadata(Some(topic), Duration::from_secs(10))?;
            let mut assignment = TopicPartitionList::new();
            for partition in metadata
                .topics()
                .iter()
                .flat_map(|t| t.partitions().iter().map(|p| p.id()))
            {
                let (_, high) =
                    consumer.fetch_watermarks(topic, partition, Duration::from_secs(10))?;
                assignment.add_partition_offset(topic, partition, Offset::Offset(high))?;
            }
            anyhow::ensure!(assignment.count() > 0, "topic {topic} has no partitions");
            consumer.assign(&assignment)?;
            ready_tx.send(()).ok();
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
                let created = msg.timestamp().to_millis().unwrap_or(0);
                if let (Some(id), Ok(mut a)) = (id, arrived.lock()) {
                    a.entry(id).or_insert((now, created));
                }
            }
            Ok(())
        })
    };
    // Traffic starts once the consumer holds its partitions.
    if ready_rx.recv_timeout(Duration::from_secs(30)).is_err() {
        stop.store(true, Ordering::Relaxed);
        return match consumer_thread.join() {
            Ok(Err(e)) => Err(e.context("Kafka consumer")),
            _ => Err(anyhow::anyhow!(
                "Kafka consumer did not get its partitions within 30 s"
            )),
        };
    }

    let bench_start = Instant::now();
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
                let started_wall = wall_ms();
                if let Ok(r) = client
                    .post(url)
                    .header("content-type", "application/json")
                    .body(body)
                    .send()
                    .await
                {
                    if let Ok(v) = r.json::<serde_json::Value>().await {
                        if let (Some(id), Ok(mut s)) = (v["event_id"].as_str(), sent.lock()) {
                            s.insert(id.to_owned(), (started, started_wall));
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
    let mut per_sec = std::collections::BTreeMap::new();
    // Split at the record's Kafka timestamp (set by the bridge's producer):
    // POST → produced, and produced → consumed.
    let mut to_produce = Histogram::<u64>::new_with_bounds(1, 120_000, 3)?;
    for (id, (t0, w0)) in sent.iter() {
        match arrived.get(id) {
            Some((t1, created)) => {
                let us = t1.saturating_duration_since(*t0).as_micros() as u64;
                hist.record(us)?;
                to_produce.record((created - w0).clamp(1, 120_000) as u64)?;
                let sec = t0.duration_since(bench_start).as_secs();
                let e = per_sec.entry(sec).or_insert(0u64);
                *e = (*e).max(us);
            }
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
    println!(
        "e2e      POST -> bridge produce (Kafka CreateTime, ms resolution): p50 {} ms, p99 {} ms, max {} ms",
        to_produce.value_at_quantile(0.5),
        to_produce.value_at_quantile(0.99),
        to_produce.max()
    );
    println!(
        "target   p99 < 100 ms at {rate} sales/s: {}",
        if hist.value_at_quantile(0.99) < 100_000 && missing == 0 {
            "met"
        } else {
            "NOT met"
        }
    );
    if std::env::var_os("BENCH_E2E_PER_SECOND").is_some() {
        for (sec, max) in per_sec {
            println!("second {sec:3}: max {:.1} ms", max as f64 / 1000.0);
        }
    }
    Ok(())
}
