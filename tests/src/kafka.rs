//! A real single-node Kafka broker for tests, through `scripts/kafka.sh`.
//!
//! * [`Kafka::start`]: a broker of its own in a temp dir (outage tests stop
//!   and restart it on the same ports with the same data);
//!   [`Kafka::start_with_tls`] also serves TLS on a second listener, and
//!   [`Kafka::start_with_tls_and_acls`] makes its clients need ACLs
//!   ([`Kafka::acl`]).
//! * [`shared`]: one broker per test binary, started on first use. Statics
//!   are never dropped, so the broker is started with `KAFKA_WATCH_PID` set to
//!   this process: the script's supervisor kills the JVM (and removes its temp
//!   dir) within a second of the test binary exiting, however it exits.
//! * [`consume`]: reads topics from the beginning until a condition holds.
//!
//! A broker that cannot start is an error naming the cause and quoting the
//! broker log: tests fail, they never skip.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Headers, Message};
use rdkafka::{Offset, TopicPartitionList};

/// `scripts/kafka.sh` of this workspace.
pub fn script_path() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join("scripts")
        .join("kafka.sh")
}

/// The broker side of a TLS listener: its key and certificate, and the CA
/// whose client certificates it requires (mutual TLS).
#[derive(Debug, Clone)]
pub struct BrokerTls {
    pub server: crate::tls::CertPair,
    pub client_ca: PathBuf,
}

/// A broker run by `scripts/kafka.sh` from a temp dir.
pub struct Kafka {
    bootstrap: String,
    /// `host:port` of the TLS listener, when started with one.
    ssl_bootstrap: Option<String>,
    /// The PEM key store and trust store handed to the script, again on restart.
    ssl_env: Option<(PathBuf, PathBuf)>,
    /// Kafka's ACL authorizer is on (`KAFKA_AUTHORIZER=1`), again on restart.
    authorizer: bool,
    dir: PathBuf,
    /// Removes the dir on drop; `None` for the shared broker, whose
    /// supervisor removes it when the test binary exits.
    _tmp: Option<tempfile::TempDir>,
    running: bool,
}

impl Kafka {
    /// Starts a broker of its own (formatted fresh, free ports).
    pub fn start() -> Result<Kafka> {
        Kafka::start_inner(None, false)
    }

    /// [`Kafka::start`], also serving mutual TLS on a second client listener
    /// ([`Kafka::ssl_bootstrap`]); the plaintext listener stays for the
    /// tests' own clients.
    pub fn start_with_tls(tls: &BrokerTls) -> Result<Kafka> {
        Kafka::start_inner(Some(tls), false)
    }

    /// [`Kafka::start_with_tls`] with Kafka's ACL authorizer on, as a
    /// locked-down cluster runs: clients of the plaintext listener (the
    /// tests' own, and the broker itself) are super users, and a TLS client
    /// may do only what [`Kafka::acl`] grants `User:CN=<its certificate's
    /// common name>`.
    pub fn start_with_tls_and_acls(tls: &BrokerTls) -> Result<Kafka> {
        Kafka::start_inner(Some(tls), true)
    }

    fn start_inner(tls: Option<&BrokerTls>, authorizer: bool) -> Result<Kafka> {
        let tmp = tempfile::Builder::new()
            .prefix("storelink-kafka-")
            .tempdir()
            .context("creating a temp dir for Kafka")?;
        let dir = tmp.path().to_owned();
        let ssl_env = match tls {
            Some(tls) => {
                // Kafka's PEM key store is one file: the key, then the chain.
                let keystore = dir.join("broker-keystore.pem");
                let mut pem = std::fs::read(&tls.server.key)
                    .with_context(|| format!("reading {}", tls.server.key.display()))?;
                pem.extend(
                    std::fs::read(&tls.server.cert)
                        .with_context(|| format!("reading {}", tls.server.cert.display()))?,
                );
                std::fs::write(&keystore, pem).context("writing the broker's key store")?;
                Some((keystore, tls.client_ca.clone()))
            }
            None => None,
        };
        let (bootstrap, ssl_bootstrap) =
            run_script_start(&dir, false, ssl_env.as_ref(), authorizer)?;
        let k = Kafka {
            bootstrap,
            ssl_bootstrap,
            ssl_env,
            authorizer,
            dir,
            _tmp: Some(tmp),
            running: true,
        };
        k.wait_for_metadata(Duration::from_secs(60))?;
        Ok(k)
    }

    /// `host:port` for `bootstrap.servers`.
    pub fn bootstrap(&self) -> &str {
        &self.bootstrap
    }

    /// `host:port` of the TLS listener ([`Kafka::start_with_tls`]).
    pub fn ssl_bootstrap(&self) -> Option<&str> {
        self.ssl_bootstrap.as_deref()
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn log_tail(&self, n: usize) -> String {
        crate::process::log_tail(&self.dir.join("server.log"), n)
    }

    /// Process id of the broker JVM while it runs.
    pub fn pid(&self) -> Option<u32> {
        std::fs::read_to_string(self.dir.join("kafka.pid"))
            .ok()
            .and_then(|s| s.trim().parse().ok())
    }

    /// Controlled shutdown (SIGTERM, SIGKILL after 30 s).
    pub fn stop(&mut self) -> Result<()> {
        run_script(&["stop"], &self.dir)?;
        self.running = false;
        Ok(())
    }

    /// Crash (SIGKILL).
    pub fn kill9(&mut self) -> Result<()> {
        run_script(&["kill"], &self.dir)?;
        self.running = false;
        Ok(())
    }

    /// Starts the broker again: same ports, same data.
    pub fn start_again(&mut self) -> Result<()> {
        let (bootstrap, _) =
            run_script_start(&self.dir, false, self.ssl_env.as_ref(), self.authorizer)?;
        if bootstrap != self.bootstrap {
            bail!("Kafka came back on {bootstrap}, not on {}", self.bootstrap);
        }
        self.running = true;
        self.wait_for_metadata(Duration::from_secs(60))
    }

    /// Waits until the broker answers a metadata request.
    pub fn wait_for_metadata(&self, timeout: Duration) -> Result<()> {
        wait_for_metadata(&self.bootstrap, timeout)
            .with_context(|| format!("broker log tail:\n{}", self.log_tail(20)))
    }

    pub fn create_topics(&self, topics: &[(&str, i32)]) -> Result<()> {
        create_topics(&self.bootstrap, topics)
    }

    /// Runs Kafka's own `AclCommand` (same jars) through the plaintext
    /// listener, e.g. `["--add", "--allow-principal", "User:CN=bridge",
    /// "--operation", "Write", "--topic", "t"]`; returns what it printed.
    pub fn acl(&self, args: &[&str]) -> Result<String> {
        let out = Command::new("bash")
            .arg(script_path())
            .args(["run", "org.apache.kafka.tools.AclCommand"])
            .args(["--bootstrap-server", &self.bootstrap])
            .args(args)
            .output()
            .context("running scripts/kafka.sh run org.apache.kafka.tools.AclCommand")?;
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        if !out.status.success() {
            bail!(
                "AclCommand {args:?} failed ({}): {}\n{stdout}",
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(stdout)
    }
}

impl Drop for Kafka {
    fn drop(&mut self) {
        if self.running {
            let _ = run_script(&["kill"], &self.dir);
        }
    }
}

/// The broker shared by all tests of this test binary, started on first use.
///
/// Panics (failing the test) with the cause if the broker cannot start.
pub fn shared() -> &'static Kafka {
    // The first failure is kept: every later test fails at once with it
    // instead of starting (and waiting for) another broker.
    static SHARED: OnceLock<Result<Kafka, String>> = OnceLock::new();
    match SHARED.get_or_init(|| start_shared().map_err(|e| format!("{e:#}"))) {
        Ok(kafka) => kafka,
        Err(e) => panic!("shared Kafka broker: {e}"),
    }
}

fn start_shared() -> Result<Kafka> {
    let tmp = tempfile::Builder::new()
        .prefix("storelink-kafka-shared-")
        .tempdir()
        .context("creating a temp dir for Kafka")?;
    // Ownership of the dir passes to the script's supervisor (removes it when
    // this process exits).
    let dir = tmp.keep();
    let bootstrap = match run_script_start(&dir, true, None, false) {
        Ok((b, _)) => b,
        Err(e) => {
            let _ = std::fs::remove_dir_all(&dir);
            return Err(e);
        }
    };
    let k = Kafka {
        bootstrap,
        ssl_bootstrap: None,
        ssl_env: None,
        authorizer: false,
        dir,
        _tmp: None,
        running: true,
    };
    k.wait_for_metadata(Duration::from_secs(60))?;
    // A static is never dropped; the supervisor's watchdog ends the JVM.
    Ok(k)
}

/// Runs `kafka.sh start`; returns the plaintext and (with `ssl`: key store,
/// trust store) the TLS bootstrap address.
fn run_script_start(
    dir: &Path,
    remove_on_exit: bool,
    ssl: Option<&(PathBuf, PathBuf)>,
    authorizer: bool,
) -> Result<(String, Option<String>)> {
    let mut cmd = Command::new("bash");
    cmd.arg(script_path())
        .arg("start")
        .arg(dir)
        .env("KAFKA_WATCH_PID", std::process::id().to_string());
    if remove_on_exit {
        cmd.env("KAFKA_REMOVE_DIR_ON_WATCH_EXIT", "1");
    }
    if authorizer {
        cmd.env("KAFKA_AUTHORIZER", "1");
    }
    if let Some((keystore, truststore)) = ssl {
        cmd.env("KAFKA_SSL_KEYSTORE", keystore)
            .env("KAFKA_SSL_TRUSTSTORE", truststore);
    }
    let out = cmd
        .output()
        .context("running scripts/kafka.sh start (is bash installed?)")?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        bail!(
            "scripts/kafka.sh start {} failed ({}): {}",
            dir.display(),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    let line = |prefix: &str| {
        stdout
            .lines()
            .find_map(|l| l.strip_prefix(prefix))
            .map(str::to_owned)
    };
    let bootstrap = line("BOOTSTRAP=")
        .ok_or_else(|| anyhow!("scripts/kafka.sh start printed no BOOTSTRAP= line: {stdout}"))?;
    let ssl_bootstrap = match ssl {
        Some(_) => Some(line("SSL_BOOTSTRAP=").ok_or_else(|| {
            anyhow!("scripts/kafka.sh start printed no SSL_BOOTSTRAP= line: {stdout}")
        })?),
        None => None,
    };
    Ok((bootstrap, ssl_bootstrap))
}

fn run_script(args: &[&str], dir: &Path) -> Result<()> {
    let out = Command::new("bash")
        .arg(script_path())
        .args(args)
        .arg(dir)
        .output()
        .context("running scripts/kafka.sh")?;
    if !out.status.success() {
        bail!(
            "scripts/kafka.sh {args:?} {} failed: {}",
            dir.display(),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

fn client_config(bootstrap: &str) -> ClientConfig {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", bootstrap)
        .set("log_level", "3")
        .set("socket.timeout.ms", "10000");
    c
}

/// Waits until `bootstrap` answers a metadata request with at least one broker.
pub fn wait_for_metadata(bootstrap: &str, timeout: Duration) -> Result<()> {
    let consumer: BaseConsumer = client_config(bootstrap)
        .create()
        .context("creating a Kafka client")?;
    let deadline = Instant::now() + timeout;
    let mut last = String::new();
    while Instant::now() < deadline {
        match consumer.fetch_metadata(None, Duration::from_secs(5)) {
            Ok(md) if !md.brokers().is_empty() => return Ok(()),
            Ok(_) => last = "metadata without brokers".into(),
            Err(e) => last = e.to_string(),
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    bail!(
        "Kafka at {bootstrap} did not serve metadata within {} s (last error: {last})",
        timeout.as_secs()
    )
}

/// Creates topics (name, partitions) with replication factor 1; existing
/// topics are left as they are.
pub fn create_topics(bootstrap: &str, topics: &[(&str, i32)]) -> Result<()> {
    let admin: AdminClient<DefaultClientContext> = client_config(bootstrap)
        .create()
        .context("creating a Kafka admin client")?;
    let new: Vec<NewTopic<'_>> = topics
        .iter()
        .map(|(name, parts)| NewTopic::new(name, *parts, TopicReplication::Fixed(1)))
        .collect();
    let opts = AdminOptions::new().operation_timeout(Some(Duration::from_secs(30)));
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("building a runtime for the admin client")?;
    let results = rt
        .block_on(admin.create_topics(&new, &opts))
        .context("creating topics")?;
    for r in results {
        match r {
            Ok(_) => {}
            Err((_, rdkafka::types::RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((name, code)) => bail!("creating topic {name}: {code}"),
        }
    }
    Ok(())
}

/// Sets a topic's configs the way an operator's tool might, through the
/// (legacy, replacing) AlterConfigs: every config set on the topic and not
/// named here returns to the broker default.
pub fn replace_topic_configs(bootstrap: &str, topic: &str, configs: &[(&str, &str)]) -> Result<()> {
    let admin: AdminClient<DefaultClientContext> = client_config(bootstrap)
        .create()
        .context("creating a Kafka admin client")?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("building a runtime for the admin client")?;
    let mut alter =
        rdkafka::admin::AlterConfig::new(rdkafka::admin::ResourceSpecifier::Topic(topic));
    for (k, v) in configs {
        alter = alter.set(k, v);
    }
    let opts = AdminOptions::new().request_timeout(Some(Duration::from_secs(30)));
    let result = rt
        .block_on(admin.alter_configs([&alter], &opts))
        .context("altering topic configs")?;
    match result.into_iter().next() {
        Some(Ok(_)) => Ok(()),
        Some(Err((_, code))) => bail!("altering {topic}: {code}"),
        None => bail!("altering {topic}: no answer"),
    }
}

/// A topic as the broker describes it: its partition count and the
/// configs set on it explicitly (`DynamicTopicConfig`), by name.
pub fn describe_topic(
    bootstrap: &str,
    topic: &str,
) -> Result<(usize, std::collections::BTreeMap<String, String>)> {
    let admin: AdminClient<DefaultClientContext> = client_config(bootstrap)
        .create()
        .context("creating a Kafka admin client")?;
    let md = admin
        .inner()
        .fetch_metadata(Some(topic), Duration::from_secs(10))
        .with_context(|| format!("fetching metadata of {topic}"))?;
    let partitions = md
        .topics()
        .first()
        .filter(|t| t.error().is_none())
        .map(|t| t.partitions().len())
        .with_context(|| format!("topic {topic} does not exist"))?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("building a runtime for the admin client")?;
    let opts = AdminOptions::new().request_timeout(Some(Duration::from_secs(30)));
    let described = rt
        .block_on(admin.describe_configs(&[rdkafka::admin::ResourceSpecifier::Topic(topic)], &opts))
        .context("describing topic configs")?;
    let resource = described
        .into_iter()
        .next()
        .context("no answer for the topic")?
        .map_err(|e| anyhow!("describing {topic}: {e}"))?;
    let configs = resource
        .entries
        .into_iter()
        .filter(|e| e.source == rdkafka::admin::ConfigSource::DynamicTopic)
        .filter_map(|e| Some((e.name, e.value?)))
        .collect();
    Ok((partitions, configs))
}

/// One consumed Kafka record, owned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    pub topic: String,
    pub partition: i32,
    pub offset: i64,
    pub key: Option<String>,
    pub headers: Vec<(String, Vec<u8>)>,
    pub value: Vec<u8>,
}

impl Record {
    /// The first header named `name`.
    pub fn header(&self, name: &str) -> Option<&[u8]> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_slice())
    }

    /// The first header named `name` as UTF-8 (lossy).
    pub fn header_str(&self, name: &str) -> Option<String> {
        self.header(name)
            .map(|v| String::from_utf8_lossy(v).into_owned())
    }
}

/// Reads `topic` from the beginning of every partition until `until(all
/// records so far)` is true or `timeout` passes, and returns what it read.
///
/// Reaching the timeout is not an error here: the caller asserts on the
/// records and can say what is missing. Errors are client failures and a
/// topic that does not exist.
pub fn consume(
    bootstrap: &str,
    topic: &str,
    until: impl Fn(&[Record]) -> bool,
    timeout: Duration,
) -> Result<Vec<Record>> {
    consume_topics(bootstrap, &[topic], until, timeout)
}

/// Every record of `topics`, read from the beginning up to the end each
/// partition has now (its high watermark when this is called): unlike
/// [`consume`], which stops as soon as its condition holds, nothing written
/// before the call is left unread, so absence and duplicates can be judged
/// on the result. Fails if the end is not reached within `timeout`.
pub fn consume_to_end(bootstrap: &str, topics: &[&str], timeout: Duration) -> Result<Vec<Record>> {
    let ends = high_watermarks(bootstrap, topics)?;
    let short = |rs: &[Record]| -> Vec<(String, i32, i64)> {
        ends.iter()
            .filter(|((topic, partition), high)| {
                !rs.iter().any(|r| {
                    &r.topic == topic && r.partition == *partition && r.offset >= **high - 1
                })
            })
            .map(|((t, p), h)| (t.clone(), *p, *h))
            .collect()
    };
    let all = consume_topics(bootstrap, topics, |rs| short(rs).is_empty(), timeout)?;
    let not_reached = short(&all);
    anyhow::ensure!(
        not_reached.is_empty(),
        "{topics:?} not read to the end within {timeout:?}: (topic, partition, high watermark) \
         not reached: {not_reached:?}"
    );
    Ok(all)
}

/// The high watermark (offset of the next record) of every partition of
/// `topics` that holds records.
fn high_watermarks(
    bootstrap: &str,
    topics: &[&str],
) -> Result<std::collections::BTreeMap<(String, i32), i64>> {
    let consumer: BaseConsumer = client_config(bootstrap)
        .create()
        .context("creating a Kafka client")?;
    let mut ends = std::collections::BTreeMap::new();
    for topic in topics {
        let md = consumer
            .fetch_metadata(Some(topic), Duration::from_secs(10))
            .with_context(|| format!("fetching metadata of {topic}"))?;
        let partitions: Vec<i32> = md
            .topics()
            .iter()
            .filter(|t| t.name() == *topic && t.error().is_none())
            .flat_map(|t| t.partitions().iter().map(|p| p.id()))
            .collect();
        anyhow::ensure!(!partitions.is_empty(), "topic {topic} has no partitions");
        for p in partitions {
            let (low, high) = consumer
                .fetch_watermarks(topic, p, Duration::from_secs(10))
                .with_context(|| format!("fetching the watermarks of {topic}/{p}"))?;
            if high > low {
                ends.insert(((*topic).to_owned(), p), high);
            }
        }
    }
    Ok(ends)
}

/// [`consume`] over several topics at once.
pub fn consume_topics(
    bootstrap: &str,
    topics: &[&str],
    until: impl Fn(&[Record]) -> bool,
    timeout: Duration,
) -> Result<Vec<Record>> {
    let group = format!("storelink-test-{}", uuid::Uuid::now_v7());
    let consumer: BaseConsumer = client_config(bootstrap)
        .set("group.id", &group)
        .set("enable.auto.commit", "false")
        .set("auto.offset.reset", "earliest")
        .set("fetch.wait.max.ms", "100")
        .create()
        .context("creating a Kafka consumer")?;
    // Explicit assignment of every partition from the start: no group
    // rebalance to wait for, and nothing is committed.
    let deadline = Instant::now() + timeout;
    let mut tpl = TopicPartitionList::new();
    for topic in topics {
        let partitions = loop {
            let md = consumer
                .fetch_metadata(Some(topic), Duration::from_secs(10))
                .with_context(|| format!("fetching metadata of {topic} from {bootstrap}"))?;
            let n = md
                .topics()
                .first()
                .filter(|t| t.error().is_none())
                .map(|t| t.partitions().len())
                .unwrap_or(0);
            if n > 0 {
                break n;
            }
            if Instant::now() >= deadline {
                bail!("topic {topic} does not exist on {bootstrap}");
            }
            std::thread::sleep(Duration::from_millis(200));
        };
        for p in 0..partitions {
            let p = i32::try_from(p).context("partition count")?;
            tpl.add_partition_offset(topic, p, Offset::Beginning)
                .context("building an assignment")?;
        }
    }
    consumer.assign(&tpl).context("assigning partitions")?;

    let mut records = Vec::new();
    while Instant::now() < deadline {
        let mut got_any = false;
        while let Some(res) = consumer.poll(Duration::from_millis(100)) {
            let m = res.context("consuming")?;
            let headers = m
                .headers()
                .map(|hs| {
                    hs.iter()
                        .map(|h| {
                            (
                                h.key.to_owned(),
                                h.value.map(<[u8]>::to_vec).unwrap_or_default(),
                            )
                        })
                        .collect()
                })
                .unwrap_or_default();
            records.push(Record {
                topic: m.topic().to_owned(),
                partition: m.partition(),
                offset: m.offset(),
                key: m.key().map(|k| String::from_utf8_lossy(k).into_owned()),
                headers,
                value: m.payload().map(<[u8]>::to_vec).unwrap_or_default(),
            });
            got_any = true;
            if Instant::now() >= deadline {
                break;
            }
        }
        if until(&records) {
            return Ok(records);
        }
        if !got_any {
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    Ok(records)
}
