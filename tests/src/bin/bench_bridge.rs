//! Bridge throughput against Kafka's own ceiling, on this machine, in one run.
//!
//! ```text
//! cargo build --release -p cloud-bridge -p storelink-tests --bin cloud-bridge --bin bench_bridge
//! target/release/bench_bridge [EVENTS] [EVENTS_PER_BATCH]
//! ```
//!
//! For experiments: `BENCH_ROUNDS`, `BENCH_LINGER_MS` (both sides' linger),
//! `BENCH_RECEIVE_MAXIMUM` (the bridge's MQTT Receive Maximum, the broker's
//! in-flight limit twice that), `BENCH_PERF_OUT`, `BENCH_BRIDGE_LOG`.
//!
//! 1. Ceiling: `org.apache.kafka.tools.ProducerPerformance` (same jars as the
//!    broker) writes EVENTS sale events (the same JSON the bridge forwards,
//!    from a payload file) with the bridge's producer settings: acks=all,
//!    idempotence, lz4, the bridge's linger (5 ms; `BENCH_LINGER_MS`), to a
//!    topic with as many partitions.
//! 2. Bridge: Mosquitto holds EVENTS events as batches pre-loaded into the
//!    bridge's persistent session (the bridge is stopped meanwhile); then the
//!    bridge starts and drains them. Rate = events / (last − first publish),
//!    read from the bridge's own `events_published_total`.
//! 3. Rounds: one warm-up round of both (not counted: the broker is a cold
//!    JVM at first), then `BENCH_ROUNDS` rounds; the figures are medians.
//!    Each ProducerPerformance run is a fresh JVM, so a short run measures
//!    it partly interpreted: the ceiling climbs with EVENTS (BENCHMARKS.md
//!    gives both 300,000 and 900,000).
//! 4. CPU cost of routing one event (envelope parse + header check + full
//!    typed body decode) in this process, to show what the decode costs.
//! 5. CPU per record of every process in each phase (the tool's JVM and
//!    the broker; the bridge, Mosquitto and the broker), from /proc: the
//!    ratio compares whole systems on 2 shared cores, and this says which
//!    part of which system the difference is.

use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use harness::kafka::Kafka;
use harness::mosquitto::{Mosquitto, MosquittoOptions};
use harness::process::{bin_path, ChildProcess};
use protocol::{EventBody, EventId, RawEnvelope};
use rumqttc::{Client, Event, MqttOptions, Outgoing, Packet, QoS};

const PARTITIONS: i32 = 6;
const STORES: usize = 50;

/// `linger.ms` of both the ceiling and the bridge: the bridge's default
/// (`kafka.linger_ms`, 5) unless `BENCH_LINGER_MS` says otherwise.
fn linger_ms() -> u64 {
    harness::bench::env_number("BENCH_LINGER_MS").unwrap_or(5)
}

fn main() -> Result<()> {
    harness::process::stop_children_on_signal()?;
    let mut args = std::env::args().skip(1);
    let events: usize = args
        .next()
        .map(|a| a.parse())
        .transpose()?
        .unwrap_or(300_000);
    let per_batch: usize = args.next().map(|a| a.parse()).transpose()?.unwrap_or(100);
    let batches = events.div_ceil(per_batch);
    let events = batches * per_batch;

    let sales = sale_events(1000);
    let avg = sales.iter().map(Vec::len).sum::<usize>() / sales.len();
    println!(
        "events: {events} sale events of {avg} bytes on average, {per_batch} per MQTT message"
    );
    println!(
        "machine: {} cores",
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(0)
    );

    let (route_with, route_without) = routing_cost(&sales);
    println!(
        "routing cost per event: {:.2} µs with typed body decode, {:.2} µs header only",
        route_with, route_without
    );

    // Rounds of (ceiling, bridge) on the same broker: single runs of either
    // swing by a third on a shared 2-core machine, so the figures are the
    // medians, and every round is printed.
    let rounds = harness::bench::rounds();
    let kafka = Kafka::start()?;
    // A fresh broker is a cold JVM: its first seconds of traffic run
    // interpreted code, and it keeps getting cheaper per record over the
    // first rounds (its CPU share fell from 0.65 to 0.35 of a core across
    // three rounds). So one whole round, the producer tool and the bridge
    // alike, runs first and is not counted.
    println!("== warm-up round (not counted)");
    let warm = producer_performance(&kafka, "bench.warmup", events, &sales)?;
    println!("ProducerPerformance: {}", warm.summary);
    bridge_rate(&kafka, events, per_batch)?;
    let mut results = Vec::new();
    for round in 1..=rounds {
        println!("== round {round} of {rounds}");
        let ceiling =
            producer_performance(&kafka, &format!("bench.ceiling.{round}"), events, &sales)?;
        println!("ProducerPerformance: {}", ceiling.summary);
        let per_record = |s: f64| s * 1e6 / events as f64;
        let (client_us, broker_us) = (
            per_record(ceiling.client_cpu_s),
            per_record(ceiling.broker_cpu_s),
        );
        let ceiling = ceiling.rate;
        println!("ceiling (ProducerPerformance, acks=all, idempotent, lz4): {ceiling:.0} events/s");
        let run = bridge_rate(&kafka, events, per_batch)?;
        let bridge = run.rate;
        // Where the two phases spend the machine's 2 cores: a ratio that
        // stays low because the broker costs more per keyed record than per
        // ceiling record is not the bridge's own CPU.
        println!(
            "CPU per record: ceiling {:.2} µs (ProducerPerformance JVM {client_us:.2} incl. start-up, kafka {broker_us:.2}); \
             bridge phase {:.2} µs ({})",
            client_us + broker_us,
            run.cpu_us.iter().map(|(_, us)| us).sum::<f64>(),
            run.cpu_us
                .iter()
                .map(|(name, us)| format!("{name} {us:.2}"))
                .collect::<Vec<_>>()
                .join(", ")
        );
        println!(
            "bridge (MQTT → Kafka, acks=all, idempotent, lz4, receipts, acks): {bridge:.0} events/s"
        );
        println!("ratio bridge / ceiling: {:.0} %", 100.0 * bridge / ceiling);
        results.push((ceiling, bridge, bridge / ceiling));
    }
    let (ceiling, bridge, ratio) = harness::bench::medians(&results);
    println!(
        "== median of {rounds} rounds: ceiling {ceiling:.0} events/s, bridge {bridge:.0} events/s, ratio {:.0} %",
        100.0 * ratio
    );
    println!(
        "targets: >= 50000 events/s: {}; >= 70 % of ceiling: {}",
        if bridge >= 50_000.0 { "met" } else { "NOT met" },
        if ratio >= 0.7 { "met" } else { "NOT met" }
    );
    Ok(())
}

/// Sale events (both sample sales, alternating), compact JSON, fresh ids.
fn sale_events(n: usize) -> Vec<Vec<u8>> {
    let samples = protocol::samples::envelopes("store-0000");
    (0..n)
        .map(|i| {
            let mut e = samples[i % 2].clone();
            e.id = EventId::new_v7();
            e.to_json()
        })
        .collect()
}

fn routing_cost(sales: &[Vec<u8>]) -> (f64, f64) {
    let rounds = 50;
    let t = Instant::now();
    let mut ok = 0usize;
    for _ in 0..rounds {
        for s in sales {
            if let Ok(env) = RawEnvelope::parse(s) {
                if let Ok(kind) = env.check_header() {
                    ok += usize::from(EventBody::from_json(kind, env.body.get()).is_ok());
                }
            }
        }
    }
    let with = t.elapsed().as_secs_f64() * 1e6 / (rounds * sales.len()) as f64;
    let t = Instant::now();
    for _ in 0..rounds {
        for s in sales {
            if let Ok(env) = RawEnvelope::parse(s) {
                ok += usize::from(env.check_header().is_ok());
            }
        }
    }
    let without = t.elapsed().as_secs_f64() * 1e6 / (rounds * sales.len()) as f64;
    assert!(ok > 0);
    (with, without)
}

/// What one ProducerPerformance run printed.
struct ProducerRun {
    rate: f64,
    summary: String,
    /// CPU seconds of the tool's JVM (start-up and JIT included) and of
    /// the broker while the tool ran.
    client_cpu_s: f64,
    broker_cpu_s: f64,
}

/// Kafka's own producer tool, with the bridge's producer settings.
fn producer_performance(
    kafka: &Kafka,
    topic: &str,
    events: usize,
    sales: &[Vec<u8>],
) -> Result<ProducerRun> {
    kafka.create_topics(&[(topic, PARTITIONS)])?;
    let dir = tempfile::tempdir()?;
    let payloads = dir.path().join("sales.jsonl");
    let mut text = Vec::new();
    for s in sales {
        text.extend_from_slice(s);
        text.push(b'\n');
    }
    std::fs::write(&payloads, text)?;
    let (children0, broker0) = (children_cpu_seconds(), cpu_seconds(kafka.pid()));
    let out = Command::new("bash")
        .arg(harness::kafka::script_path())
        .args(["run", "org.apache.kafka.tools.ProducerPerformance"])
        .args(["--topic", topic, "--num-records", &events.to_string()])
        .args(["--throughput", "-1", "--payload-delimiter", "\n"])
        .arg("--payload-file")
        .arg(&payloads)
        .arg("--producer-props")
        .arg(format!("bootstrap.servers={}", kafka.bootstrap()))
        .args([
            "acks=all",
            "enable.idempotence=true",
            "compression.type=lz4",
            &format!("linger.ms={}", linger_ms()),
            "batch.size=1000000",
        ])
        .output()
        .context("running ProducerPerformance")?;
    let (client_cpu_s, broker_cpu_s) = (
        children_cpu_seconds() - children0,
        cpu_seconds(kafka.pid()) - broker0,
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        bail!(
            "ProducerPerformance failed: {}\n{stdout}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    // "300000 records sent, 123456.7 records/sec (…), … ms avg latency, …"
    let last = stdout
        .lines()
        .rev()
        .find(|l| l.contains("records sent"))
        .context("no summary line from ProducerPerformance")?;
    let rate = last
        .split(", ")
        .nth(1)
        .and_then(|s| s.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .context("cannot read records/sec")?;
    Ok(ProducerRun {
        rate,
        summary: last.to_owned(),
        client_cpu_s,
        broker_cpu_s,
    })
}

/// What one drain measured: its rate, and the CPU each process spent per
/// event during it (µs).
struct BridgeRun {
    rate: f64,
    cpu_us: Vec<(&'static str, f64)>,
}

fn bridge_rate(kafka: &Kafka, events: usize, per_batch: usize) -> Result<BridgeRun> {
    // BENCH_RECEIVE_MAXIMUM: the bridge's MQTT Receive Maximum (default 100),
    // with the broker's own in-flight limit kept above it.
    let receive_maximum: Option<u16> = harness::bench::env_number("BENCH_RECEIVE_MAXIMUM");
    let mut mosquitto = Mosquitto::start_with(MosquittoOptions {
        max_inflight_messages: receive_maximum.map_or(200, |r| 2 * u32::from(r)),
        max_queued_messages: 0,
        autosave_interval_s: 3600,
        ..MosquittoOptions::default()
    })?;
    let http = harness::mosquitto::free_port()?;
    let dir = tempfile::tempdir()?;
    let config = dir.path().join("bridge.toml");
    std::fs::write(
        &config,
        format!(
            r#"bridge_id = "bench-0"
http_listen = "127.0.0.1:{http}"
[mqtt]
port = {mqtt}
{receive_maximum}
[kafka]
bootstrap = "{bootstrap}"
compression = "lz4"
linger_ms = {linger}
[topics]
partitions = {PARTITIONS}
replication_factor = 1
min_insync_replicas = 1
[limits]
max_events_in_flight = 50000
max_messages_in_flight = 1000
"#,
            mqtt = mosquitto.port(),
            bootstrap = kafka.bootstrap(),
            linger = linger_ms(),
            receive_maximum = receive_maximum
                .map(|r| format!("receive_maximum = {r}"))
                .unwrap_or_default(),
        ),
    )?;
    // BENCH_BRIDGE_LOG=file keeps the bridge's log after the run.
    let log = std::env::var_os("BENCH_BRIDGE_LOG")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| dir.path().join("bridge.log"));
    let start_bridge = || -> Result<ChildProcess> {
        let mut cmd = Command::new(bin_path("cloud-bridge")?);
        cmd.args(["run", "--config"])
            .arg(&config)
            .env("RUST_LOG", "warn");
        ChildProcess::spawn_logging_to("cloud-bridge", cmd, &log)
    };

    // 1. Create the persistent session (and topics), then stop the bridge.
    let mut b = start_bridge()?;
    wait_metric(
        http,
        "storelink_bridge_events_in_flight",
        |_| true,
        Duration::from_secs(60),
        &b,
    )?;
    wait_ready(http, &b)?;
    b.sigterm()?;
    b.wait_exit(Duration::from_secs(30))?;

    // 2. Pre-load the backlog.
    let t = Instant::now();
    preload(mosquitto.port(), events, per_batch)?;
    println!(
        "pre-loaded {} MQTT messages in {:.1} s",
        events / per_batch,
        t.elapsed().as_secs_f64()
    );

    // 3. Drain.
    let b = start_bridge()?;
    let series = "storelink_bridge_events_published_total{topic=\"retail.transactions.v1\"}";
    let pids = [
        ("bridge", Some(b.pid())),
        ("mosquitto", mosquitto.pid()),
        ("kafka", kafka.pid()),
    ];
    // BENCH_PERF_OUT=file: profile the draining bridge with `perf record -g`.
    let perf = match std::env::var_os("BENCH_PERF_OUT") {
        Some(out) => Some(
            Command::new("perf")
                .args([
                    "record",
                    "-F",
                    "2999",
                    "-g",
                    "-p",
                    &b.pid().to_string(),
                    "-o",
                ])
                .arg(out)
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .spawn()
                .context("starting perf")?,
        ),
        None => None,
    };
    let first = wait_metric(http, series, |v| v > 0.0, Duration::from_secs(60), &b)?;
    let cpu0: Vec<f64> = pids.iter().map(|(_, p)| cpu_seconds(*p)).collect();
    let last = wait_metric(
        http,
        series,
        |v| v >= events as f64,
        Duration::from_secs(600),
        &b,
    )?;
    let secs = last.duration_since(first).as_secs_f64();
    if let Some(mut perf) = perf {
        let _ = Command::new("kill")
            .args(["-INT", &perf.id().to_string()])
            .status();
        let _ = perf.wait();
    }
    let spent: Vec<(&'static str, f64)> = pids
        .iter()
        .zip(&cpu0)
        .map(|((name, p), c0)| (*name, cpu_seconds(*p) - c0))
        .collect();
    let cpu: Vec<String> = spent
        .iter()
        .map(|(name, s)| format!("{name} {:.0} %", 100.0 * s / secs))
        .collect();
    println!(
        "CPU during the drain (100 % = one core): {}",
        cpu.join(", ")
    );
    let m = metrics(http)?;
    println!(
        "bridge drained {events} events in {secs:.2} s; produce retries {}; MQTT messages deferred {}",
        metric_value(&m, "storelink_bridge_produce_retries_total"),
        metric_value(&m, "storelink_bridge_mqtt_messages_deferred_total")
    );
    drop(b);
    mosquitto.stop()?;
    Ok(BridgeRun {
        rate: events as f64 / secs,
        cpu_us: spent
            .into_iter()
            .map(|(name, s)| (name, s * 1e6 / events as f64))
            .collect(),
    })
}

fn preload(port: u16, events: usize, per_batch: usize) -> Result<()> {
    let mut o = MqttOptions::new("bench-loader", "127.0.0.1", port);
    o.set_max_packet_size(16 << 20, 16 << 20)
        .set_inflight(500)
        .set_keep_alive(Duration::from_secs(30));
    let (client, mut conn) = Client::new(o, 1000);
    let batches = events / per_batch;
    let samples: Vec<Vec<protocol::Envelope>> = (0..STORES)
        .map(|i| protocol::samples::envelopes(&format!("store-{i:04}")))
        .collect();
    let payloads: Vec<(String, Vec<u8>)> = (0..batches)
        .map(|i| {
            let store = format!("store-{:04}", i % STORES);
            let evs: Vec<Vec<u8>> = (0..per_batch)
                .map(|j| {
                    // A sale (one of the two samples) with a fresh id.
                    let mut e = samples[i % STORES][j % 2].clone();
                    e.id = EventId::new_v7();
                    e.recorded_at = chrono::Utc::now();
                    e.to_json()
                })
                .collect();
            let payload = protocol::batch::encode_batch(
                uuid::Uuid::now_v7(),
                &store,
                evs.iter().map(|e| e.as_slice()),
            );
            (protocol::topics::store_events_topic(&store), payload)
        })
        .collect();
    let c = client.clone();
    let publisher = std::thread::spawn(move || -> Result<()> {
        for (topic, payload) in payloads {
            c.publish(topic, QoS::AtLeastOnce, false, payload)?;
        }
        Ok(())
    });
    // Disconnect only once Mosquitto acknowledged every message: a DISCONNECT
    // queued earlier would overtake publishes still waiting for an in-flight slot.
    let mut acked = 0usize;
    for ev in conn.iter() {
        match ev {
            Ok(Event::Incoming(Packet::PubAck(_))) => {
                acked += 1;
                if acked == batches {
                    client.disconnect()?;
                }
            }
            Ok(Event::Outgoing(Outgoing::Disconnect)) => break,
            Ok(_) => {}
            Err(e) => bail!("pre-loading: {e}"),
        }
    }
    publisher
        .join()
        .map_err(|_| anyhow::anyhow!("publisher panicked"))??;
    Ok(())
}

/// CPU seconds of a process so far (0 if unknown).
fn cpu_seconds(pid: Option<u32>) -> f64 {
    pid.and_then(harness::bench::cpu_seconds).unwrap_or(0.0)
}

/// CPU seconds of this process's waited-for children so far (0 if unknown).
fn children_cpu_seconds() -> f64 {
    harness::bench::children_cpu_seconds().unwrap_or(0.0)
}

fn metrics(port: u16) -> Result<String> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port))?;
    write!(s, "GET /metrics HTTP/1.0\r\n\r\n")?;
    let mut buf = String::new();
    s.read_to_string(&mut buf)?;
    Ok(buf)
}

fn metric_value(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|l| {
            let (name, v) = l.rsplit_once(' ')?;
            (name == series).then(|| v.parse().ok()).flatten()
        })
        .unwrap_or(0.0)
}

fn wait_ready(port: u16, p: &ChildProcess) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        use std::io::{Read, Write};
        if let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", port)) {
            let _ = write!(s, "GET /readyz HTTP/1.0\r\n\r\n");
            let mut buf = String::new();
            let _ = s.read_to_string(&mut buf);
            if buf.starts_with("HTTP/1.0 200") || buf.starts_with("HTTP/1.1 200") {
                return Ok(());
            }
        }
        if Instant::now() > deadline {
            bail!("bridge not ready; log:\n{}", p.log_tail(20));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Polls a metric every 10 ms until `ok(value)`; returns when that was seen.
fn wait_metric(
    port: u16,
    series: &str,
    ok: impl Fn(f64) -> bool,
    timeout: Duration,
    p: &ChildProcess,
) -> Result<Instant> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Ok(m) = metrics(port) {
            if m.contains(series.split('{').next().unwrap_or(series))
                && ok(metric_value(&m, series))
            {
                return Ok(Instant::now());
            }
        }
        if Instant::now() > deadline {
            bail!(
                "{series} did not reach its target within {timeout:?}; now {:?}; bridge log:\n{}",
                metrics(port).map(|m| metric_value(&m, series)).ok(),
                p.log_tail(20)
            );
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}
