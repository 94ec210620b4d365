//! A whole store, for end-to-end tests: a cloud Mosquitto, a store Mosquitto,
//! (shared) Kafka, the `cloud-bridge` and the `store-agent` as separate
//! processes, each on free loopback ports with its own temp directory.
//!
//! Every stack gets a unique store id, so tests sharing one Kafka broker only
//! read their own records ([`StoreStack::consume`] filters on the
//! `storelink.store_id` header).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, ensure, Context, Result};

use crate::kafka::{self, Record};
use crate::mosquitto::{free_port, BrokerTls, Mosquitto, MosquittoOptions};
use crate::process::{bin_path, ChildProcess};
use crate::tls::{CertPair, TestPki};

/// Terminals every test profile declares.
pub const TERMINALS: [&str; 8] = [
    "pos-01", "pos-02", "pos-03", "pos-04", "pos-05", "pos-06", "pos-07", "pos-08",
];

/// Knobs a test may turn on the generated profile.
#[derive(Debug, Clone)]
pub struct StackOptions {
    /// TOML appended to the profile (`[[scanners]]`, `[[shelf_sensors]]`…).
    pub extra_profile: String,
    pub outbox_max_bytes: u64,
    pub outbox_max_rows: u64,
    pub receipt_timeout_secs: u64,
    /// Start a bridge; tests of the agent alone can leave it out.
    pub with_bridge: bool,
    /// Where the agent keeps its outbox; default: `data/` in the stack's temp dir.
    pub data_dir: Option<PathBuf>,
    /// `outbox.disk_reserve_bytes`; `None` keeps the profile default.
    pub disk_reserve_bytes: Option<u64>,
    /// `cloud.max_batches_in_flight`; `None` keeps the profile default.
    pub max_batches_in_flight: Option<usize>,
    /// The cloud broker serves mutual TLS only (a test CA in the stack's
    /// temp dir); agent and bridge connect with client certificates.
    pub cloud_tls: bool,
    /// The agent reaches the cloud broker through a proxy passing this many
    /// bytes per second upwards (a slow store uplink).
    pub uplink_bytes_per_sec: Option<u64>,
}

impl Default for StackOptions {
    fn default() -> Self {
        StackOptions {
            extra_profile: String::new(),
            outbox_max_bytes: 1 << 30,
            outbox_max_rows: 5_000_000,
            receipt_timeout_secs: 10,
            with_bridge: true,
            data_dir: None,
            disk_reserve_bytes: None,
            max_batches_in_flight: None,
            cloud_tls: false,
            uplink_bytes_per_sec: None,
        }
    }
}

pub struct StoreStack {
    pub store_id: String,
    pub http_base: String,
    pub http_port: u16,
    pub store_mqtt_port: u16,
    pub kafka_bootstrap: String,
    pub cloud_mqtt: Mosquitto,
    pub store_mqtt: Mosquitto,
    pub bridge: Option<ChildProcess>,
    pub agent: ChildProcess,
    /// The slow uplink in front of the cloud broker, if asked for.
    pub uplink: Option<crate::throttle::Throttle>,
    pub dir: tempfile::TempDir,
    profile_path: PathBuf,
    data_dir: PathBuf,
}

/// Writes a bridge config and starts a `cloud-bridge` against these brokers.
pub fn start_bridge(
    dir: &Path,
    name: &str,
    mqtt_port: u16,
    bootstrap: &str,
) -> Result<(ChildProcess, u16)> {
    start_bridge_with(dir, name, mqtt_port, bootstrap, BridgeTls::default())
}

/// How a test bridge reaches its brokers: for each, over TLS with the CA it
/// trusts and its own client certificate, or (`None`) in plaintext.
#[derive(Debug, Clone, Copy, Default)]
pub struct BridgeTls<'a> {
    pub mqtt: Option<(&'a Path, &'a CertPair)>,
    pub kafka: Option<(&'a Path, &'a CertPair)>,
}

/// [`start_bridge`], connecting over TLS where `tls` says so.
pub fn start_bridge_with(
    dir: &Path,
    name: &str,
    mqtt_port: u16,
    bootstrap: &str,
    tls: BridgeTls<'_>,
) -> Result<(ChildProcess, u16)> {
    let (mut bridge, http_port) = spawn_bridge(dir, name, mqtt_port, bootstrap, tls)?;
    wait_http_ok(
        &format!("http://127.0.0.1:{http_port}/readyz"),
        Duration::from_secs(60),
    )
    .with_context(|| {
        format!(
            "bridge {name} did not become ready; log tail:\n{}",
            bridge.log_tail(30)
        )
    })?;
    ensure_answered_by(&mut bridge, http_port)?;
    Ok((bridge, http_port))
}

/// Starts a `cloud-bridge` without waiting for it to be ready.
pub fn spawn_bridge(
    dir: &Path,
    name: &str,
    mqtt_port: u16,
    bootstrap: &str,
    tls: BridgeTls<'_>,
) -> Result<(ChildProcess, u16)> {
    let http_port = free_port()?;
    let config = dir.join(format!("{name}.toml"));
    // A TOML table naming a CA, a client certificate and its key.
    let table = |header: &str, first: &str, keys: [&str; 3], files: Option<(&Path, &CertPair)>| {
        files
            .map(|(ca, own)| {
                let mut t = format!("\n[{header}]\n{first}");
                for (key, file) in keys.iter().zip([ca, &own.cert, &own.key]) {
                    t += &format!("{key} = {:?}\n", file.display().to_string());
                }
                t
            })
            .unwrap_or_default()
    };
    let mqtt_tls = table(
        "mqtt.tls",
        "",
        ["ca_file", "cert_file", "key_file"],
        tls.mqtt,
    );
    // The fleet's bridge.toml reaches Kafka the same way: librdkafka's own
    // TLS properties in [kafka.extra].
    let kafka_tls = table(
        "kafka.extra",
        "\"security.protocol\" = \"ssl\"\n",
        [
            "\"ssl.ca.location\"",
            "\"ssl.certificate.location\"",
            "\"ssl.key.location\"",
        ],
        tls.kafka,
    );
    std::fs::write(
        &config,
        format!(
            "bridge_id = \"{name}\"\nhttp_listen = \"127.0.0.1:{http_port}\"\n\n[mqtt]\nhost = \"127.0.0.1\"\nport = {mqtt_port}\nclient_id = \"{name}\"\n\n[kafka]\nbootstrap = \"{bootstrap}\"\n{kafka_tls}\n[topics]\npartitions = 3\nreplication_factor = 1\nmin_insync_replicas = 1\n{mqtt_tls}"
        ),
    )
    .context("writing bridge config")?;
    let mut cmd = Command::new(bin_path("cloud-bridge")?);
    cmd.arg("run")
        .arg("--config")
        .arg(&config)
        .env("RUST_LOG", "info");
    let bridge = ChildProcess::spawn_logging_to(name, cmd, &dir.join(format!("{name}.log")))?;
    Ok((bridge, http_port))
}

/// Fails if `process` has exited: then the 200 that [`wait_http_ok`] saw
/// came from some other server on `port`, and the test would run against it.
fn ensure_answered_by(process: &mut ChildProcess, port: u16) -> Result<()> {
    if let Some(status) = process.try_exit_status()? {
        bail!(
            "{} exited ({status}) although 127.0.0.1:{port} answered ready; log tail:\n{}",
            process.name(),
            process.log_tail(30)
        );
    }
    Ok(())
}

/// Polls `url` until it answers 200.
pub fn wait_http_ok(url: &str, timeout: Duration) -> Result<()> {
    let deadline = Instant::now() + timeout;
    let client = reqwest::blocking::Client::builder()
        .timeout(Duration::from_secs(2))
        .build()
        .context("http client")?;
    loop {
        match client.get(url).send() {
            Ok(r) if r.status().is_success() => return Ok(()),
            Ok(r) if Instant::now() >= deadline => bail!("{url} answered {}", r.status()),
            Err(e) if Instant::now() >= deadline => bail!("{url} unreachable: {e}"),
            _ => std::thread::sleep(Duration::from_millis(100)),
        }
    }
}

impl StoreStack {
    /// A store with the default options plus `extra_profile` TOML.
    pub fn start(extra_profile: &str) -> Result<StoreStack> {
        Self::start_with(StackOptions {
            extra_profile: extra_profile.to_owned(),
            ..StackOptions::default()
        })
    }

    pub fn start_with(opts: StackOptions) -> Result<StoreStack> {
        let dir = tempfile::Builder::new()
            .prefix("storelink-store-")
            .tempdir()
            .context("temp dir")?;
        let store_id = format!("store-{}", &uuid::Uuid::now_v7().simple().to_string()[20..]);
        let pki = if opts.cloud_tls {
            let pki = TestPki::create(dir.path(), "chain-ca").context("test CA")?;
            let broker = pki.server("cloud-broker")?;
            let bridge = pki.client(&format!("bridge-{store_id}"))?;
            let agent = pki.client(&format!("{store_id}-agent"))?;
            Some((pki, broker, bridge, agent))
        } else {
            None
        };
        let cloud_mqtt = Mosquitto::start_with(MosquittoOptions {
            tls: pki.as_ref().map(|(pki, broker, _, _)| BrokerTls {
                ca_file: pki.ca.cert.clone(),
                cert_file: broker.cert.clone(),
                key_file: broker.key.clone(),
            }),
            ..MosquittoOptions::default()
        })
        .context("cloud Mosquitto")?;
        let store_mqtt = Mosquitto::start().context("store Mosquitto")?;
        let kafka_bootstrap = kafka::shared().bootstrap().to_owned();
        let bridge = if opts.with_bridge {
            let (b, _) = start_bridge_with(
                dir.path(),
                &format!("bridge-{store_id}"),
                cloud_mqtt.port(),
                &kafka_bootstrap,
                BridgeTls {
                    mqtt: pki
                        .as_ref()
                        .map(|(pki, _, bridge, _)| (pki.ca.cert.as_path(), bridge)),
                    kafka: None,
                },
            )?;
            Some(b)
        } else {
            None
        };
        let uplink = opts
            .uplink_bytes_per_sec
            .map(|rate| crate::throttle::Throttle::start(cloud_mqtt.port(), rate))
            .transpose()?;
        let agent_cloud_port = uplink.as_ref().map_or(cloud_mqtt.port(), |u| u.port());
        let http_port = free_port()?;
        let data_dir = opts
            .data_dir
            .clone()
            .unwrap_or_else(|| dir.path().join("data"));
        let terminals: String = TERMINALS
            .iter()
            .map(|t| format!("[[terminals]]\nid = \"{t}\"\n\n"))
            .collect();
        let profile = format!(
            r#"[store]
id = "{store_id}"
region = "eu-west"
timezone = "Europe/Dublin"
currency = "EUR"

[agent]
http_listen = "127.0.0.1:{http_port}"
data_dir = "{data_dir}"
shutdown_grace_secs = 10

[cloud]
host = "127.0.0.1"
port = {cloud_port}
client_id = "{store_id}-agent"
receipt_timeout_secs = {receipt_timeout}
{window}

[outbox]
max_bytes = {max_bytes}
max_rows = {max_rows}
{reserve}

[local_mqtt]
host = "127.0.0.1"
port = {store_port}

{terminals}
{extra}
{cloud_tls}
"#,
            data_dir = data_dir.display(),
            cloud_port = agent_cloud_port,
            store_port = store_mqtt.port(),
            receipt_timeout = opts.receipt_timeout_secs,
            max_bytes = opts.outbox_max_bytes,
            max_rows = opts.outbox_max_rows,
            extra = opts.extra_profile,
            cloud_tls = pki
                .as_ref()
                .map(|(pki, _, _, agent)| format!(
                    "[cloud.tls]\nca_file = {:?}\ncert_file = {:?}\nkey_file = {:?}\n",
                    pki.ca.cert.display().to_string(),
                    agent.cert.display().to_string(),
                    agent.key.display().to_string()
                ))
                .unwrap_or_default(),
            window = opts
                .max_batches_in_flight
                .map(|w| format!("max_batches_in_flight = {w}"))
                .unwrap_or_default(),
            reserve = opts
                .disk_reserve_bytes
                .map(|b| format!("disk_reserve_bytes = {b}"))
                .unwrap_or_default(),
        );
        let profile_path = dir.path().join("store.toml");
        std::fs::write(&profile_path, profile).context("writing profile")?;
        let agent = spawn_agent(dir.path(), &profile_path)?;
        let http_base = format!("http://127.0.0.1:{http_port}");
        let mut stack = StoreStack {
            store_id,
            http_base,
            http_port,
            store_mqtt_port: store_mqtt.port(),
            kafka_bootstrap,
            cloud_mqtt,
            store_mqtt,
            bridge,
            agent,
            uplink,
            dir,
            profile_path,
            data_dir,
        };
        stack.wait_agent_ready(Duration::from_secs(30))?;
        Ok(stack)
    }

    pub fn wait_agent_ready(&mut self, timeout: Duration) -> Result<()> {
        wait_http_ok(&format!("{}/readyz", self.http_base), timeout).with_context(|| {
            format!(
                "store-agent not ready; log tail:\n{}",
                self.agent.log_tail(30)
            )
        })?;
        ensure_answered_by(&mut self.agent, self.http_port)
    }

    /// Waits up to `timeout` for the outbox to hold no events (every one
    /// receipted); returns how many it still holds (`None`: no answer).
    pub fn wait_outbox_empty(&self, timeout: Duration) -> Option<u64> {
        let deadline = Instant::now() + timeout;
        loop {
            let left = self.outbox_stats().ok().and_then(|s| s["events"].as_u64());
            if left == Some(0) || Instant::now() >= deadline {
                return left;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    pub fn data_dir(&self) -> PathBuf {
        self.data_dir.clone()
    }

    pub fn outbox_path(&self) -> PathBuf {
        self.data_dir().join("outbox.db")
    }

    /// Stops the agent with SIGTERM and fails unless it exits cleanly in 30 s.
    pub fn stop_agent_cleanly(&mut self) -> Result<()> {
        self.agent.sigterm()?;
        let status = self
            .agent
            .wait_exit(Duration::from_secs(30))
            .context("the agent did not stop within 30 s of SIGTERM")?;
        if !status.success() {
            bail!(
                "the agent exited with {status} on SIGTERM; log tail:\n{}",
                self.agent.log_tail(30)
            );
        }
        Ok(())
    }

    /// Starts the agent again on the same profile and data (after a kill).
    pub fn restart_agent(&mut self) -> Result<()> {
        self.spawn_agent_again()?;
        self.wait_agent_ready(Duration::from_secs(30))
    }

    /// Starts the agent process again without waiting for it to be ready
    /// (a test that expects it may not be).
    pub fn spawn_agent_again(&mut self) -> Result<()> {
        self.agent = spawn_agent(self.dir.path(), &self.profile_path)?;
        Ok(())
    }

    /// This store's records on `topic`, read from the beginning until
    /// `until(records)` holds or `timeout` passes.
    pub fn consume(
        &self,
        topic: &str,
        until: impl Fn(&[Record]) -> bool,
        timeout: Duration,
    ) -> Vec<Record> {
        let store = self.store_id.clone();
        let mine = move |r: &Record| {
            r.header_str(protocol::topics::headers::STORE_ID).as_deref() == Some(store.as_str())
        };
        let filter = mine.clone();
        let all = kafka::consume(
            &self.kafka_bootstrap,
            topic,
            |rs| until(&rs.iter().filter(|r| filter(r)).cloned().collect::<Vec<_>>()),
            timeout,
        )
        .unwrap_or_else(|e| panic!("consuming {topic}: {e:#}"));
        all.into_iter().filter(|r| mine(r)).collect()
    }

    /// The dead letter of event `event_id` in this store's dead-letter
    /// topic, waiting up to `timeout` for it.
    pub fn dead_letter(&self, event_id: &str, timeout: Duration) -> Option<Record> {
        let of_event = |r: &Record| {
            r.header_str(protocol::topics::headers::EVENT_ID).as_deref() == Some(event_id)
        };
        self.consume(
            protocol::topics::KafkaTopic::DeadLetters.name(),
            |rs| rs.iter().any(of_event),
            timeout,
        )
        .into_iter()
        .find(of_event)
    }

    /// Every record of this store on `topics`, read from the beginning up to
    /// the end each partition has now (its high watermark when this is
    /// called): unlike [`StoreStack::consume`], which stops as soon as its
    /// condition holds, nothing written before the call is left unread, so
    /// duplicates can be counted on the result. Call it once the events of
    /// interest are in Kafka (for instance once the outbox is empty: a
    /// receipt is only sent once Kafka has the event). Fails if the end is
    /// not reached within `timeout`.
    pub fn consume_to_end(&self, topics: &[&str], timeout: Duration) -> Result<Vec<Record>> {
        let all = kafka::consume_to_end(&self.kafka_bootstrap, topics, timeout)?;
        let store = self.store_id.as_str();
        Ok(all
            .into_iter()
            .filter(|r| r.header_str(protocol::topics::headers::STORE_ID).as_deref() == Some(store))
            .collect())
    }

    /// Waits until every event id in `want` is among this store's records
    /// on the transactions topic, or `timeout` passes; returns the ids still
    /// missing and how many duplicate records arrived.
    pub fn transactions_in_kafka<'a>(
        &self,
        want: impl IntoIterator<Item = &'a String>,
        timeout: Duration,
    ) -> (Vec<String>, usize) {
        let want: HashSet<&String> = want.into_iter().collect();
        let event_id = |r: &Record| r.header_str(protocol::topics::headers::EVENT_ID);
        let records = self.consume(
            protocol::topics::KafkaTopic::Transactions.name(),
            |rs| {
                let ids: HashSet<String> = rs.iter().filter_map(event_id).collect();
                want.iter().all(|id| ids.contains(*id))
            },
            timeout,
        );
        let mut counts: HashMap<String, usize> = HashMap::new();
        for id in records.iter().filter_map(event_id) {
            *counts.entry(id).or_default() += 1;
        }
        let missing = want
            .into_iter()
            .filter(|id| !counts.contains_key(*id))
            .cloned()
            .collect();
        let duplicates = counts.values().map(|n| n - 1).sum();
        (missing, duplicates)
    }

    /// Publishes one raw load-cell reading to the store broker (QoS 1), the
    /// way a shelf sensor does, with the real `mosquitto_pub` client.
    pub fn publish_shelf_reading(&self, sensor: &str, raw: i64) -> Result<()> {
        let status = Command::new("mosquitto_pub")
            .args([
                "-h",
                "127.0.0.1",
                "-p",
                &self.store_mqtt_port.to_string(),
                "-q",
                "1",
            ])
            .args([
                "-t",
                &protocol::topics::shelf_sensor_topic(sensor),
                "-m",
                &raw.to_string(),
            ])
            .status()
            .context(
                "running mosquitto_pub (install mosquitto-clients: scripts/install-deps.sh)",
            )?;
        if !status.success() {
            bail!("mosquitto_pub exited with {status}");
        }
        Ok(())
    }

    /// The agent's `/metrics` text ("" if the agent does not answer; see
    /// [`StoreStack::try_agent_metrics`] and [`StoreStack::agent_metric`] for
    /// an error instead).
    pub fn agent_metrics(&self) -> String {
        self.try_agent_metrics().unwrap_or_default()
    }

    /// The agent's `/metrics` text; an error if it does not answer 200.
    pub fn try_agent_metrics(&self) -> Result<String> {
        let url = format!("{}/metrics", self.http_base);
        reqwest::blocking::get(&url)
            .and_then(|r| r.error_for_status())
            .and_then(|r| r.text())
            .with_context(|| format!("GET {url}"))
    }

    /// The value of the agent's sample `series` (name with its label set as
    /// written); an error if `/metrics` does not answer or has no such
    /// sample, so a renamed metric fails a test instead of reading as 0.
    pub fn agent_metric(&self, series: &str) -> Result<f64> {
        let text = self.try_agent_metrics()?;
        metric_value(&text, series)
            .ok_or_else(|| anyhow!("the agent's /metrics has no sample {series}:\n{text}"))
    }

    /// The agent's `/v1/outbox` statistics.
    pub fn outbox_stats(&self) -> Result<serde_json::Value> {
        Ok(reqwest::blocking::get(format!("{}/v1/outbox", self.http_base))?.json()?)
    }

    /// Events left in the outbox file, read straight from SQLite.
    pub fn outbox_rows_on_disk(&self) -> Result<i64> {
        let conn = rusqlite::Connection::open(self.outbox_path())?;
        Ok(conn.query_row("SELECT count(*) FROM events", [], |r| r.get(0))?)
    }
}

fn spawn_agent(dir: &Path, profile: &Path) -> Result<ChildProcess> {
    let mut cmd = Command::new(bin_path("store-agent")?);
    cmd.arg("run")
        .arg("--profile")
        .arg(profile)
        .env("RUST_LOG", "info");
    ChildProcess::spawn_logging_to("store-agent", cmd, &dir.join("store-agent.log"))
}

/// The value of a Prometheus sample `name` (with its label set as written) in `text`.
pub fn metric_value(text: &str, name_and_labels: &str) -> Option<f64> {
    text.lines().find_map(|l| {
        l.strip_prefix(name_and_labels)?
            .trim()
            .split(' ')
            .next()?
            .parse()
            .ok()
    })
}

/// Checks ARCHITECTURE.md promise 5 ("Order") on one store's records of the
/// transactions topic, read in full: each carries the store's partition key
/// (`protocol::topics::partition_key`: a store's transactions share one
/// key), all lie in one partition, and per terminal the sales, each taken
/// at the first occurrence of its event id in offset order (a resend after
/// a rewind may add a later copy), come in the order that terminal posted
/// them: its sequence numbers strictly increase. This holds for terminals
/// that post one sale at a time and number them in posting order.
///
/// Returns each terminal's sequence numbers in that order.
pub fn sales_in_posting_order(
    store_id: &str,
    records: &[Record],
) -> Result<BTreeMap<String, Vec<u64>>> {
    let mut partitions: BTreeMap<i32, usize> = BTreeMap::new();
    for r in records {
        ensure!(
            r.key.as_deref() == Some(store_id),
            "transaction record {}/{} has key {:?}, not the store's {store_id:?}",
            r.partition,
            r.offset,
            r.key
        );
        *partitions.entry(r.partition).or_default() += 1;
    }
    ensure!(
        partitions.len() <= 1,
        "store {store_id}'s transactions are spread over partitions (partition → records): {partitions:?}"
    );
    let mut in_offset_order: Vec<&Record> = records.iter().collect();
    in_offset_order.sort_by_key(|r| r.offset);
    let mut seen: HashSet<String> = HashSet::new();
    let mut per_terminal: BTreeMap<String, Vec<(u64, i64)>> = BTreeMap::new();
    for r in in_offset_order {
        let env: serde_json::Value = serde_json::from_slice(&r.value)
            .with_context(|| format!("record {}/{} is not JSON", r.partition, r.offset))?;
        let id = env["id"]
            .as_str()
            .with_context(|| format!("record {}/{} has no id: {env}", r.partition, r.offset))?;
        if !seen.insert(id.to_owned()) {
            continue;
        }
        let terminal = env["body"]["terminal_id"]
            .as_str()
            .with_context(|| format!("record {id} has no terminal_id: {env}"))?;
        let seq = env["body"]["sequence_number"]
            .as_u64()
            .with_context(|| format!("record {id} has no sequence_number: {env}"))?;
        per_terminal
            .entry(terminal.to_owned())
            .or_default()
            .push((seq, r.offset));
    }
    for (terminal, sales) in &per_terminal {
        if let Some(w) = sales.windows(2).find(|w| w[1].0 <= w[0].0) {
            bail!(
                "terminal {terminal}'s sales are out of posting order in Kafka: sequence number {} \
                 (first at offset {}) comes after {} (offset {})",
                w[1].0,
                w[1].1,
                w[0].0,
                w[0].1
            );
        }
    }
    Ok(per_terminal
        .into_iter()
        .map(|(t, sales)| (t, sales.into_iter().map(|(seq, _)| seq).collect()))
        .collect())
}

/// POSTs the sample sale of `terminal` numbered `seq` to the agent at `http_base`.
pub fn post_sale(
    client: &reqwest::blocking::Client,
    http_base: &str,
    terminal: &str,
    seq: u64,
) -> reqwest::Result<reqwest::blocking::Response> {
    let body =
        serde_json::to_vec(&protocol::samples::sale_numbered(terminal, seq)).unwrap_or_default();
    client
        .post(format!("{http_base}/v1/sales"))
        .header("content-type", "application/json")
        .body(body)
        .send()
}

/// The event id of a `201 Created` answer; panics (failing the test) with
/// the answer on any other.
pub fn created_id(answer: reqwest::blocking::Response) -> String {
    let status = answer.status();
    let v: serde_json::Value = answer.json().expect("a JSON answer");
    assert_eq!(status.as_u16(), 201, "{v}");
    v["event_id"].as_str().expect("event_id").to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sale(partition: i32, offset: i64, id: &str, terminal: &str, seq: u64) -> Record {
        Record {
            topic: "retail.transactions.v1".into(),
            partition,
            offset,
            key: Some("s1".into()),
            headers: Vec::new(),
            value: serde_json::to_vec(&serde_json::json!({
                "id": id,
                "body": {"terminal_id": terminal, "sequence_number": seq},
            }))
            .expect("json"),
        }
    }

    #[test]
    fn first_copies_in_posting_order_pass_and_later_copies_are_ignored() {
        let rs = [
            sale(1, 10, "a", "pos-01", 1),
            sale(1, 11, "x", "pos-02", 1),
            sale(1, 12, "b", "pos-01", 2),
            // A resend after a rewind: a second copy of `a`, later.
            sale(1, 13, "a", "pos-01", 1),
            sale(1, 14, "c", "pos-01", 3),
        ];
        let order = sales_in_posting_order("s1", &rs).expect("in order");
        assert_eq!(order["pos-01"], [1, 2, 3]);
        assert_eq!(order["pos-02"], [1]);
    }

    #[test]
    fn sales_out_of_order_another_partition_or_another_key_fail() {
        let swapped = [sale(0, 1, "b", "pos-01", 2), sale(0, 2, "a", "pos-01", 1)];
        assert!(sales_in_posting_order("s1", &swapped).is_err());
        let spread = [sale(0, 1, "a", "pos-01", 1), sale(2, 1, "b", "pos-01", 2)];
        assert!(sales_in_posting_order("s1", &spread).is_err());
        let mut other_key = sale(0, 1, "a", "pos-01", 1);
        other_key.key = Some("s1/pos-01".into());
        assert!(sales_in_posting_order("s1", &[other_key]).is_err());
        // The same sale recorded twice under two ids is not in order either.
        let twice = [sale(0, 1, "a", "pos-01", 1), sale(0, 2, "b", "pos-01", 1)];
        assert!(sales_in_posting_order("s1", &twice).is_err());
    }
}
