//! The README's main job: a simulated store's traffic flowing into Kafka.
//!
//! Starts real brokers and both binaries through the test harness (cloud and
//! store Mosquitto, a single-node KRaft Kafka, `cloud-bridge`, `store-agent`),
//! then plays a store: POS terminals posting sales, returns and voids, shelf
//! sensors publishing load-cell readings. Every record arriving in Kafka is
//! printed as it lands. Runs until Ctrl-C, or for `DEMO_SECONDS`.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use harness::agent::{StackOptions, StoreStack};
use protocol::topics::{headers, KafkaTopic};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Headers, Message};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};

const SHELF_SENSORS: &str = r#"
[[shelf_sensors]]
id = "shelf-a1"
gtin = "05901234123457"
zero_offset = 8388608
counts_per_gram = 420
unit_weight_grams = 500
low_stock_at = 3
restocked_at = 6
offline_after_secs = 120

[[shelf_sensors]]
id = "shelf-b2"
gtin = "4006381333931"
zero_offset = 8388608
counts_per_gram = 420
unit_weight_grams = 250
low_stock_at = 4
restocked_at = 8
offline_after_secs = 120
"#;

fn main() -> Result<()> {
    let seconds: Option<u64> = std::env::var("DEMO_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok());
    println!(
        "demo: starting Mosquitto (cloud + store), Kafka (KRaft), cloud-bridge and store-agent …"
    );
    // Installed before anything starts: the children run in process groups
    // of their own, which a Ctrl-C (or a closed terminal) never reaches.
    // While the stack starts, a signal stops them all; once it runs, the
    // demo stops and reports as usual.
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let up = Arc::new(std::sync::atomic::AtomicBool::new(false));
    {
        let (stop, up) = (stop.clone(), up.clone());
        harness::process::on_signal(move || {
            if up.load(Ordering::SeqCst) {
                stop.store(true, Ordering::Relaxed);
            } else {
                harness::process::kill_all_children();
                eprintln!("demo: interrupted while starting; stopped every child process");
                std::process::exit(130);
            }
        })?;
    }
    let started = Instant::now();
    let stack = Arc::new(
        StoreStack::start_with(StackOptions {
            extra_profile: SHELF_SENSORS.into(),
            ..StackOptions::default()
        })
        .context("starting the store stack")?,
    );
    println!(
        "demo: store {} ready in {:.1}s — agent {}, Kafka {}",
        stack.store_id,
        started.elapsed().as_secs_f64(),
        stack.http_base,
        stack.kafka_bootstrap
    );

    up.store(true, Ordering::SeqCst);
    let posted = Arc::new(AtomicU64::new(0));
    let pos = {
        let (stack, stop, posted) = (stack.clone(), stop.clone(), posted.clone());
        std::thread::spawn(move || play_terminals(&stack, &stop, &posted))
    };
    let sensors = {
        let (stack, stop) = (stack.clone(), stop.clone());
        std::thread::spawn(move || play_sensors(&stack, &stop))
    };

    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", &stack.kafka_bootstrap)
        .set("group.id", format!("demo-{}", stack.store_id))
        .set("auto.offset.reset", "earliest")
        .set("enable.auto.commit", "false")
        .set("fetch.wait.max.ms", "100")
        .create()
        .context("Kafka consumer")?;
    // Every partition assigned directly, not subscribed as a group: a new
    // group waits for Kafka's initial rebalance delay (3 s), and the first
    // records printed would have looked 3 s slow for it.
    let mut partitions = TopicPartitionList::new();
    for topic in KafkaTopic::ALL {
        let md = consumer
            .fetch_metadata(Some(topic.name()), Duration::from_secs(10))
            .with_context(|| format!("metadata of {}", topic.name()))?;
        let count = md.topics().first().map_or(0, |t| t.partitions().len());
        for p in 0..i32::try_from(count).context("partition count")? {
            partitions
                .add_partition_offset(topic.name(), p, Offset::Beginning)
                .context("building the assignment")?;
        }
    }
    consumer
        .assign(&partitions)
        .context("assigning partitions")?;
    let mut arrived = 0u64;
    let deadline = seconds.map(|s| Instant::now() + Duration::from_secs(s));
    while !stop.load(Ordering::Relaxed) && deadline.is_none_or(|d| Instant::now() < d) {
        let Some(msg) = consumer.poll(Duration::from_millis(500)) else {
            continue;
        };
        let Ok(msg) = msg else { continue };
        let store = msg.headers().and_then(|h| {
            h.iter()
                .find(|h| h.key == headers::STORE_ID)
                .and_then(|h| h.value.map(|v| String::from_utf8_lossy(v).into_owned()))
        });
        if store.as_deref() != Some(stack.store_id.as_str()) {
            continue;
        }
        arrived += 1;
        let value: serde_json::Value = msg
            .payload()
            .and_then(|p| serde_json::from_slice(p).ok())
            .unwrap_or_default();
        let latency = value["recorded_at"]
            .as_str()
            .and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok())
            .map(|t| (chrono::Utc::now() - t.with_timezone(&chrono::Utc)).num_milliseconds())
            .unwrap_or(-1);
        println!(
            "kafka  {:<34} p{} @{:<6} key={:<32} {:<24} {}  ({} ms after the agent accepted it)",
            msg.topic(),
            msg.partition(),
            msg.offset(),
            msg.key()
                .map(|k| String::from_utf8_lossy(k).into_owned())
                .unwrap_or_default(),
            value["schema"].as_str().unwrap_or("?"),
            summary(&value),
            latency
        );
    }
    stop.store(true, Ordering::Relaxed);
    let _ = pos.join();
    let _ = sensors.join();
    println!(
        "demo: {} POS transactions posted, {arrived} records of store {} arrived in Kafka",
        posted.load(Ordering::Relaxed),
        stack.store_id
    );
    Ok(())
}

fn summary(v: &serde_json::Value) -> String {
    let b = &v["body"];
    match v["schema"].as_str() {
        Some("storelink.sale") | Some("storelink.return") => format!(
            "{} #{} {} {} minor units",
            b["terminal_id"].as_str().unwrap_or(""),
            b["sequence_number"],
            b["currency"].as_str().unwrap_or(""),
            b["totals"]["grand"]
        ),
        Some("storelink.void") => format!(
            "{} voids #{}",
            b["terminal_id"].as_str().unwrap_or(""),
            b["voided"]["sequence_number"]
        ),
        Some("storelink.shelf_reading") => format!("{} g, {} items", b["grams"], b["item_count"]),
        Some("storelink.stock_alert") => format!(
            "{} at {} items",
            b["kind"].as_str().unwrap_or(""),
            b["item_count"]
        ),
        _ => String::new(),
    }
}

fn play_terminals(stack: &StoreStack, stop: &std::sync::atomic::AtomicBool, posted: &AtomicU64) {
    let client = reqwest::blocking::Client::new();
    let mut seq = 0u64;
    while !stop.load(Ordering::Relaxed) {
        seq += 1;
        let terminal = harness::agent::TERMINALS[(seq % 4) as usize];
        let (path, body) = if seq % 17 == 0 {
            let mut v = protocol::samples::void();
            v.terminal_id = terminal.into();
            v.sequence_number = seq;
            v.voided.terminal_id = terminal.into();
            v.voided.sequence_number = seq - 1;
            ("voids", serde_json::to_vec(&v))
        } else if seq % 11 == 0 {
            let mut r = protocol::samples::return_();
            r.transaction.terminal_id = terminal.into();
            r.transaction.sequence_number = seq;
            ("returns", serde_json::to_vec(&r))
        } else {
            (
                "sales",
                serde_json::to_vec(&protocol::samples::sale_numbered(terminal, seq)),
            )
        };
        let Ok(body) = body else { continue };
        match client
            .post(format!("{}/v1/{path}", stack.http_base))
            .header("content-type", "application/json")
            .body(body)
            .send()
        {
            Ok(r) if r.status().is_success() => {
                posted.fetch_add(1, Ordering::Relaxed);
            }
            Ok(r) => eprintln!("demo: POST /v1/{path} answered {}", r.status()),
            Err(e) => eprintln!("demo: POST /v1/{path} failed: {e}"),
        }
        std::thread::sleep(Duration::from_millis(150));
    }
}

fn play_sensors(stack: &StoreStack, stop: &std::sync::atomic::AtomicBool) {
    // A shelf being emptied and refilled: 8 items of 500 g down to 1, then back.
    let mut items: i64 = 8;
    let mut down = true;
    while !stop.load(Ordering::Relaxed) {
        let raw = 8_388_608 + items * 500 * 420;
        if let Err(e) = stack.publish_shelf_reading("shelf-a1", raw) {
            eprintln!("demo: shelf sensor could not publish: {e:#}");
        }
        if down {
            items -= 1;
            down = items > 1;
        } else {
            items += 1;
            down = items >= 8;
        }
        std::thread::sleep(Duration::from_millis(700));
    }
}
