//! Shared by the `bridge_*` tests: a `cloud-bridge` process with a test
//! config, and a fake store agent that publishes batches over MQTT and
//! collects its receipts.
#![allow(dead_code)]

use std::collections::HashSet;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use harness::kafka::Record;
use harness::process::{bin_path, ChildProcess};
use protocol::receipt::{DeliveryOutcome, DeliveryReceipt};
use protocol::topics::{self, KafkaTopic};
use protocol::{Envelope, EventId};
use rumqttc::{Client, Event, MqttOptions, Packet, QoS};

/// Options of one bridge replica in a test.
#[derive(Debug, Clone)]
pub struct BridgeOptions {
    pub replica: String,
    pub max_events_in_flight: usize,
    pub max_event_bytes: usize,
    pub message_timeout_ms: u64,
    pub dedupe_max_age_s: u64,
    pub shutdown_grace_s: u64,
    /// `mqtt.leave_share_group_on_shutdown`.
    pub leave_share_group_on_shutdown: bool,
    /// `mqtt.receive_maximum` (MQTT 5): unacked messages the broker may send.
    pub receive_maximum: u16,
    /// `mqtt.session_expiry_s` (MQTT 5).
    pub session_expiry_s: u64,
    /// `limits.max_bytes_in_flight`: MQTT payload bytes held.
    pub max_bytes_in_flight: usize,
    /// `kafka.ensure_topics_at_startup`.
    pub ensure_topics_at_startup: bool,
    /// `[kafka.extra]` librdkafka properties.
    pub kafka_extra: Vec<(String, String)>,
}

impl BridgeOptions {
    pub fn replica(name: &str) -> BridgeOptions {
        BridgeOptions {
            replica: name.to_owned(),
            max_events_in_flight: 5_000,
            max_event_bytes: 256 * 1024,
            message_timeout_ms: 30_000,
            dedupe_max_age_s: 600,
            shutdown_grace_s: 10,
            leave_share_group_on_shutdown: false,
            receive_maximum: 100,
            session_expiry_s: 120,
            max_bytes_in_flight: 128 * 1024 * 1024,
            ensure_topics_at_startup: true,
            kafka_extra: Vec::new(),
        }
    }
}

/// A running `cloud-bridge run`.
pub struct Bridge {
    pub process: ChildProcess,
    pub http_port: u16,
    pub opts: BridgeOptions,
    dir: tempfile::TempDir,
    mqtt_port: u16,
    bootstrap: String,
}

impl Bridge {
    /// Starts a replica and waits until `/readyz` says MQTT is subscribed and Kafka answers.
    pub fn start(mqtt_port: u16, bootstrap: &str, opts: BridgeOptions) -> Result<Bridge> {
        let dir = tempfile::Builder::new()
            .prefix("storelink-bridge-")
            .tempdir()
            .context("temp dir for the bridge")?;
        let mut b = Bridge {
            process: spawn_placeholder()?,
            http_port: 0,
            opts,
            dir,
            mqtt_port,
            bootstrap: bootstrap.to_owned(),
        };
        b.launch()?;
        Ok(b)
    }

    fn launch(&mut self) -> Result<()> {
        let http_port = harness::mosquitto::free_port()?;
        let o = &self.opts;
        let config = format!(
            r#"bridge_id = "{id}"
http_listen = "127.0.0.1:{http_port}"

[mqtt]
host = "127.0.0.1"
port = {mqtt}
client_id = "storelink-test-{id}"
share_group = "bridges"
keep_alive_s = 5
leave_share_group_on_shutdown = {leave}
receive_maximum = {receive_maximum}
session_expiry_s = {session_expiry_s}

[kafka]
bootstrap = "{bootstrap}"
linger_ms = 5
message_timeout_ms = {timeout}
retry_max_backoff_ms = 2000
ensure_topics_at_startup = {ensure}

[topics]
partitions = 3
replication_factor = 1
min_insync_replicas = 1

[limits]
max_events_in_flight = {max_events}
max_bytes_in_flight = {max_bytes}
max_event_bytes = {max_event_bytes}
shutdown_grace_s = {grace}

[dedupe]
max_entries = 100000
max_age_s = {dedupe_age}

[kafka.extra]
{extra}
"#,
            id = o.replica,
            mqtt = self.mqtt_port,
            bootstrap = self.bootstrap,
            timeout = o.message_timeout_ms,
            max_events = o.max_events_in_flight,
            max_bytes = o.max_bytes_in_flight,
            max_event_bytes = o.max_event_bytes,
            grace = o.shutdown_grace_s,
            dedupe_age = o.dedupe_max_age_s,
            leave = o.leave_share_group_on_shutdown,
            receive_maximum = o.receive_maximum,
            session_expiry_s = o.session_expiry_s,
            ensure = o.ensure_topics_at_startup,
            extra = o
                .kafka_extra
                .iter()
                .map(|(k, v)| format!("{k:?} = {v:?}\n"))
                .collect::<String>(),
        );
        let path = self.config_path();
        std::fs::write(&path, config).context("writing bridge.toml")?;
        let mut cmd = Command::new(bin_path("cloud-bridge")?);
        cmd.arg("run").arg("--config").arg(&path).env(
            "RUST_LOG",
            std::env::var("BRIDGE_LOG").unwrap_or_else(|_| "info".into()),
        );
        let log = self.dir.path().join("bridge.log");
        self.process =
            ChildProcess::spawn_logging_to(&format!("bridge-{}", self.opts.replica), cmd, &log)?;
        self.http_port = http_port;
        self.wait_ready(Duration::from_secs(60))
    }

    pub fn config_path(&self) -> PathBuf {
        self.dir.path().join("bridge.toml")
    }

    /// Waits for `/readyz` to answer 200.
    pub fn wait_ready(&mut self, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Ok((200, _)) = http_get(self.http_port, "/readyz") {
                return Ok(());
            }
            if let Some(status) = self.process.try_exit_status()? {
                bail!(
                    "bridge {} exited at startup ({status}); log tail:\n{}",
                    self.opts.replica,
                    self.process.log_tail(30)
                );
            }
            if Instant::now() >= deadline {
                bail!(
                    "bridge {} not ready within {timeout:?}; /readyz: {:?}; log tail:\n{}",
                    self.opts.replica,
                    http_get(self.http_port, "/readyz").ok(),
                    self.process.log_tail(30)
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Starts the same replica again (same client id, so the same MQTT session).
    pub fn restart(&mut self) -> Result<()> {
        if self.process.try_exit_status()?.is_none() {
            bail!("bridge {} is still running", self.opts.replica);
        }
        self.launch()
    }

    pub fn metrics(&self) -> Result<String> {
        let (code, body) = http_get(self.http_port, "/metrics")?;
        if code != 200 {
            bail!("/metrics answered {code}");
        }
        Ok(body)
    }

    /// The value of an unlabelled or labelled sample line (`series` is the
    /// name with its label set as written). An error if `/metrics` does not
    /// answer or has no such sample: a renamed metric must fail the test,
    /// not read as 0 and make an assertion on it vacuous. (Every unlabelled
    /// bridge metric is exposed from the start, at 0 until it counts.)
    pub fn metric(&self, series: &str) -> Result<f64> {
        let text = self.metrics()?;
        metric_sample(&text, series).with_context(|| {
            format!(
                "bridge {} exposes no sample {series} on /metrics:\n{text}",
                self.opts.replica
            )
        })
    }
}

/// The value of sample `series` (name with its label set as written) in
/// the text exposition `text`, `None` if there is no such sample.
pub fn metric_sample(text: &str, series: &str) -> Option<f64> {
    text.lines().filter(|l| !l.starts_with('#')).find_map(|l| {
        let (name, value) = l.rsplit_once(' ')?;
        (name == series).then(|| value.parse().ok()).flatten()
    })
}

/// [`metric_sample`] of a sample the caller expects to be there; panics
/// naming it if it is not (a missing series never reads as 0).
pub fn metric_value(text: &str, series: &str) -> f64 {
    metric_sample(text, series)
        .unwrap_or_else(|| panic!("no sample {series} in these metrics:\n{text}"))
}

/// A process that exits at once, standing in until the real one is launched.
fn spawn_placeholder() -> Result<ChildProcess> {
    let mut p = ChildProcess::spawn("placeholder", Command::new("true"))?;
    p.wait_exit(Duration::from_secs(5))?;
    Ok(p)
}

/// Minimal HTTP/1.0 GET on 127.0.0.1: status code and body.
pub fn http_get(port: u16, path: &str) -> Result<(u16, String)> {
    let mut s =
        TcpStream::connect(("127.0.0.1", port)).context("connecting to the bridge HTTP port")?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")?;
    let mut buf = String::new();
    s.read_to_string(&mut buf)?;
    let code = buf
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .context("no HTTP status line")?;
    let body = buf
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    Ok((code, body))
}

/// `n` events for `store`, cycling through every sample kind, each with a fresh id.
pub fn fresh_events(store: &str, n: usize) -> Vec<Envelope> {
    let samples = protocol::samples::envelopes(store);
    (0..n)
        .map(|i| {
            let mut e = samples[i % samples.len()].clone();
            e.id = EventId::new_v7();
            e.recorded_at = chrono::Utc::now();
            e
        })
        .collect()
}

/// A store agent stand-in: publishes batches on its events topic and
/// collects receipts from its receipts topic.
pub struct FakeStore {
    pub store_id: String,
    client: Client,
    receipts: Arc<Mutex<Vec<DeliveryReceipt>>>,
    subscribed: Arc<Mutex<bool>>,
    _thread: std::thread::JoinHandle<()>,
}

impl FakeStore {
    pub fn connect(mqtt_port: u16, store_id: &str) -> Result<FakeStore> {
        let mut o = MqttOptions::new(
            format!("fake-{store_id}-{}", uuid::Uuid::now_v7().simple()),
            "127.0.0.1",
            mqtt_port,
        );
        o.set_keep_alive(Duration::from_secs(5))
            .set_max_packet_size(8 * 1024 * 1024, 8 * 1024 * 1024)
            .set_inflight(200);
        let (client, mut connection) = Client::new(o, 1000);
        client
            .subscribe(topics::store_receipts_topic(store_id), QoS::AtLeastOnce)
            .context("queueing the receipts subscription")?;
        let receipts = Arc::new(Mutex::new(Vec::new()));
        let subscribed = Arc::new(Mutex::new(false));
        let (r, s) = (Arc::clone(&receipts), Arc::clone(&subscribed));
        let thread = std::thread::spawn(move || {
            for ev in connection.iter() {
                match ev {
                    Ok(Event::Incoming(Packet::Publish(p))) => {
                        if let Ok(rc) = serde_json::from_slice::<DeliveryReceipt>(&p.payload) {
                            if let Ok(mut v) = r.lock() {
                                v.push(rc);
                            }
                        }
                    }
                    Ok(Event::Incoming(Packet::SubAck(_))) => {
                        if let Ok(mut v) = s.lock() {
                            *v = true;
                        }
                    }
                    Ok(_) => {}
                    Err(_) => std::thread::sleep(Duration::from_millis(200)),
                }
            }
        });
        let store = FakeStore {
            store_id: store_id.to_owned(),
            client,
            receipts,
            subscribed,
            _thread: thread,
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        while !*store.subscribed.lock().expect("lock") {
            if Instant::now() > deadline {
                bail!("fake store {store_id} could not subscribe to its receipts");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(store)
    }

    /// Publishes events as one batch on this store's events topic; returns the batch payload.
    pub fn publish_events(&self, events: &[Envelope]) -> Result<Vec<u8>> {
        let jsons: Vec<Vec<u8>> = events.iter().map(Envelope::to_json).collect();
        self.publish_raw_events(&jsons)
    }

    /// Publishes already-serialized events (possibly poison) as one batch.
    pub fn publish_raw_events(&self, events: &[Vec<u8>]) -> Result<Vec<u8>> {
        let payload = protocol::batch::encode_batch(
            uuid::Uuid::now_v7(),
            &self.store_id,
            events.iter().map(|e| e.as_slice()),
        );
        self.publish_payload(&payload)?;
        Ok(payload)
    }

    /// Publishes raw bytes on this store's events topic.
    pub fn publish_payload(&self, payload: &[u8]) -> Result<()> {
        self.client
            .publish(
                topics::store_events_topic(&self.store_id),
                QoS::AtLeastOnce,
                false,
                payload.to_vec(),
            )
            .context("queueing an MQTT publish")
    }

    pub fn receipts(&self) -> Vec<DeliveryReceipt> {
        self.receipts.lock().map(|v| v.clone()).unwrap_or_default()
    }

    /// Outcome per event id over all receipts so far (later receipts win).
    pub fn outcomes(
        &self,
    ) -> std::collections::HashMap<EventId, (DeliveryOutcome, Option<String>)> {
        self.receipts()
            .into_iter()
            .flat_map(|r| r.events)
            .map(|e| (e.id, (e.outcome, e.reason)))
            .collect()
    }

    /// Waits until every id in `ids` has a receipt.
    pub fn wait_receipted(&self, ids: &HashSet<EventId>, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            let have: HashSet<EventId> = self.outcomes().into_keys().collect();
            let missing = ids.difference(&have).count();
            if missing == 0 {
                return Ok(());
            }
            if Instant::now() >= deadline {
                bail!(
                    "store {}: {missing} of {} events have no receipt after {timeout:?}",
                    self.store_id,
                    ids.len()
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

/// Domain topics (not the dead-letter one).
pub fn domain_topics() -> Vec<&'static str> {
    KafkaTopic::ALL
        .iter()
        .filter(|t| **t != KafkaTopic::DeadLetters)
        .map(|t| t.name())
        .collect()
}

/// The event id header of a record.
pub fn record_id(r: &Record) -> Option<EventId> {
    r.header_str(topics::headers::EVENT_ID)?.parse().ok()
}

/// Reads the domain topics until every id in `ids` is there (or timeout),
/// then on to the end of every partition.
pub fn consume_ids(
    bootstrap: &str,
    ids: &HashSet<EventId>,
    timeout: Duration,
) -> Result<Vec<Record>> {
    let want = ids.clone();
    let topics = domain_topics();
    let seen = harness::kafka::consume_topics(
        bootstrap,
        &topics,
        move |recs| {
            let got: HashSet<EventId> = recs.iter().filter_map(record_id).collect();
            want.is_subset(&got)
        },
        timeout,
    )?;
    let got: HashSet<EventId> = seen.iter().filter_map(record_id).collect();
    if !ids.is_subset(&got) {
        // The caller's assertion names what is missing.
        return Ok(seen);
    }
    // Every wanted id is in: now read every partition to its end, so a
    // check that something is *not* in Kafka, or is there only once, sees
    // all that was written, not just what came before the last wanted id.
    harness::kafka::consume_to_end(bootstrap, &topics, timeout)
}

/// Fails with a readable summary unless every id is in `records` exactly `times`.
pub fn assert_each_exactly(records: &[Record], ids: &HashSet<EventId>, times: usize) {
    let mut counts = std::collections::HashMap::new();
    for r in records {
        if let Some(id) = record_id(r) {
            *counts.entry(id).or_insert(0usize) += 1;
        }
    }
    let missing: Vec<_> = ids.iter().filter(|id| !counts.contains_key(id)).collect();
    let wrong: Vec<_> = ids
        .iter()
        .filter_map(|id| counts.get(id).filter(|c| **c != times).map(|c| (id, *c)))
        .collect();
    assert!(
        missing.is_empty(),
        "{} of {} events never reached Kafka, e.g. {:?}",
        missing.len(),
        ids.len(),
        missing.iter().take(5).collect::<Vec<_>>()
    );
    assert!(
        wrong.is_empty(),
        "{} events are in Kafka a wrong number of times (want {times}), e.g. {:?}",
        wrong.len(),
        wrong.iter().take(5).collect::<Vec<_>>()
    );
}

/// Publishes `batches` batches of `batch_size` fresh events at `interval`;
/// returns every event id published.
pub fn publish_stream(
    store: &FakeStore,
    batches: usize,
    batch_size: usize,
    interval: Duration,
) -> Result<HashSet<EventId>> {
    Ok(
        publish_stream_batches(store, batches, batch_size, interval)?
            .into_iter()
            .flatten()
            .collect(),
    )
}

/// [`publish_stream`], returning each batch's ids in the order sent.
pub fn publish_stream_batches(
    store: &FakeStore,
    batches: usize,
    batch_size: usize,
    interval: Duration,
) -> Result<Vec<Vec<EventId>>> {
    let mut ids = Vec::with_capacity(batches);
    let start = Instant::now();
    for i in 0..batches {
        let events = fresh_events(&store.store_id, batch_size);
        ids.push(events.iter().map(|e| e.id).collect());
        store.publish_events(&events)?;
        let next = start + interval * u32::try_from(i + 1).unwrap_or(u32::MAX);
        if let Some(d) = next.checked_duration_since(Instant::now()) {
            std::thread::sleep(d);
        }
    }
    Ok(ids)
}

/// Events whose id appears more than once in `records`.
pub fn duplicate_count(records: &[Record]) -> usize {
    let mut seen = HashSet::new();
    records
        .iter()
        .filter_map(record_id)
        .filter(|id| !seen.insert(*id))
        .count()
}

/// Waits until every event in `ids` has a receipt at one of `stores`, then
/// reads them back from Kafka and asserts that none is lost. `log` supplies
/// the bridge log tail shown when the wait times out.
pub fn assert_all_receipted_then_in_kafka(
    stores: &[FakeStore],
    ids: &HashSet<EventId>,
    bootstrap: &str,
    timeout: Duration,
    log: impl Fn() -> String,
) -> Result<Vec<Record>> {
    let deadline = Instant::now() + timeout;
    loop {
        let have: HashSet<EventId> = stores
            .iter()
            .flat_map(|s| s.outcomes().into_keys())
            .collect();
        let missing = ids.difference(&have).count();
        if missing == 0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{missing} of {} events have no receipt after {timeout:?}; bridge log:\n{}",
            ids.len(),
            log()
        );
        std::thread::sleep(Duration::from_millis(250));
    }
    let recs = consume_ids(bootstrap, ids, Duration::from_secs(60))?;
    let got: HashSet<EventId> = recs.iter().filter_map(record_id).collect();
    let lost = ids.difference(&got).count();
    assert_eq!(lost, 0, "{lost} of {} events lost", ids.len());
    Ok(recs)
}

/// Publishes 200 fresh events of `store_id` in four batches, waits until
/// each is receipted (`log`: the bridge's log tail, shown if not), and
/// asserts each is in Kafka exactly once, read through `bootstrap`.
/// Returns how many were published.
pub fn publish_receipted_once_in_kafka(
    mqtt_port: u16,
    store_id: &str,
    bootstrap: &str,
    log: impl Fn() -> String,
) -> Result<usize> {
    let store = FakeStore::connect(mqtt_port, store_id)?;
    let events = fresh_events(store_id, 200);
    for batch in events.chunks(50) {
        store.publish_events(batch)?;
    }
    let ids: HashSet<EventId> = events.iter().map(|e| e.id).collect();
    store
        .wait_receipted(&ids, Duration::from_secs(60))
        .with_context(|| format!("bridge log tail:\n{}", log()))?;
    let records = consume_ids(bootstrap, &ids, Duration::from_secs(60))?;
    assert_each_exactly(&records, &ids, 1);
    Ok(ids.len())
}
