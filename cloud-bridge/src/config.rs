//! Bridge configuration in two phases: a strict parse of `bridge.toml`
//! (unknown keys are errors) with environment overrides, then validation into
//! [`Config`] that reports *every* problem at once, before anything connects.
//! rumqttc's option setters `assert!` on bad values, so nothing reaches them
//! unvalidated.
//!
//! Environment overrides (all optional):
//!
//! | variable | key |
//! | --- | --- |
//! | `STORELINK_BRIDGE_ID` | `bridge_id` |
//! | `STORELINK_BRIDGE_HTTP_LISTEN` | `http_listen` |
//! | `STORELINK_BRIDGE_MQTT_HOST` | `mqtt.host` |
//! | `STORELINK_BRIDGE_MQTT_PORT` | `mqtt.port` |
//! | `STORELINK_BRIDGE_MQTT_CLIENT_ID` | `mqtt.client_id` |
//! | `STORELINK_BRIDGE_MQTT_SHARE_GROUP` | `mqtt.share_group` |
//! | `STORELINK_BRIDGE_MQTT_USERNAME` / `_PASSWORD` | `mqtt.username` / `mqtt.password` |
//! | `STORELINK_BRIDGE_KAFKA_BOOTSTRAP` | `kafka.bootstrap` |
//! | `STORELINK_BRIDGE_TOPICS_PARTITIONS` | `topics.partitions` |
//! | `STORELINK_BRIDGE_TOPICS_REPLICATION_FACTOR` | `topics.replication_factor` |
//! | `STORELINK_BRIDGE_TOPICS_MIN_INSYNC_REPLICAS` | `topics.min_insync_replicas` |

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("{path} is not a valid bridge config: {source}")]
    Parse {
        path: String,
        source: Box<toml::de::Error>,
    },
    #[error("invalid configuration:\n  - {}", .0.join("\n  - "))]
    Invalid(Vec<String>),
}

/// `bridge.toml` as written. Every section is optional; defaults are safe.
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    pub bridge_id: Option<String>,
    pub http_listen: Option<String>,
    #[serde(default)]
    pub mqtt: RawMqtt,
    #[serde(default)]
    pub kafka: RawKafka,
    #[serde(default)]
    pub topics: RawTopics,
    #[serde(default)]
    pub limits: RawLimits,
    #[serde(default)]
    pub dedupe: RawDedupe,
}

#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct RawMqtt {
    pub host: Option<String>,
    pub port: Option<i64>,
    pub client_id: Option<String>,
    pub share_group: Option<String>,
    pub username: Option<String>,
    pub password: Option<String>,
    pub keep_alive_s: Option<i64>,
    pub max_packet_bytes: Option<i64>,
    pub request_channel_capacity: Option<i64>,
    pub outgoing_inflight: Option<i64>,
    pub receive_maximum: Option<i64>,
    pub session_expiry_s: Option<i64>,
    pub leave_share_group_on_shutdown: Option<bool>,
    pub tls: Option<RawMqttTls>,
}

/// `[mqtt.tls]`: TLS to the broker. `ca_file` is the CA that signed the
/// broker's certificate; `cert_file` and `key_file`, together, are the
/// bridge's own certificate for brokers that require one (mutual TLS).
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct RawMqttTls {
    pub ca_file: Option<PathBuf>,
    pub cert_file: Option<PathBuf>,
    pub key_file: Option<PathBuf>,
}

#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct RawKafka {
    pub bootstrap: Option<String>,
    pub ensure_topics_at_startup: Option<bool>,
    pub acks: Option<String>,
    pub enable_idempotence: Option<bool>,
    pub compression: Option<String>,
    pub linger_ms: Option<i64>,
    pub batch_size: Option<i64>,
    pub message_timeout_ms: Option<i64>,
    pub message_max_bytes: Option<i64>,
    pub retry_max_backoff_ms: Option<i64>,
    /// Any further librdkafka producer properties, passed through as is.
    #[serde(default)]
    pub extra: BTreeMap<String, String>,
}

#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct RawTopics {
    pub partitions: Option<i64>,
    pub replication_factor: Option<i64>,
    pub min_insync_replicas: Option<i64>,
    pub retention_ms: Option<i64>,
    pub dead_letter_retention_ms: Option<i64>,
}

#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct RawLimits {
    pub max_events_in_flight: Option<i64>,
    pub max_messages_in_flight: Option<i64>,
    pub max_bytes_in_flight: Option<i64>,
    pub max_event_bytes: Option<i64>,
    pub shutdown_grace_s: Option<i64>,
}

#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct RawDedupe {
    pub max_entries: Option<i64>,
    pub max_age_s: Option<i64>,
}

/// Validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// Names this replica in receipts and logs.
    pub bridge_id: String,
    pub http_listen: SocketAddr,
    pub mqtt: MqttConfig,
    pub kafka: KafkaConfig,
    pub topics: TopicsConfig,
    pub limits: Limits,
    pub dedupe: DedupeConfig,
}

#[derive(Debug, Clone)]
pub struct MqttConfig {
    pub host: String,
    pub port: u16,
    /// Stable per replica: the broker keeps this session's unacked messages
    /// while the replica restarts, and only this client id can take them.
    pub client_id: String,
    pub share_group: String,
    pub credentials: Option<(String, String)>,
    pub keep_alive: Duration,
    pub max_packet_bytes: usize,
    pub request_channel_capacity: usize,
    pub outgoing_inflight: u16,
    /// MQTT 5 Receive Maximum: the most unacknowledged messages the broker
    /// may send this session at once, declared by the bridge itself rather
    /// than left to the broker's `max_inflight_messages`.
    pub receive_maximum: u16,
    /// MQTT 5 Session Expiry Interval. The broker keeps this replica's
    /// session (its unacked messages, its place in the share group) this
    /// long after the connection drops, so a restart under the same client
    /// id resumes it; after that it is discarded, and a replica that never
    /// comes back (its node failed) stops taking a round-robin share of new
    /// messages. What the discarded session held, the agents send again
    /// after their receipt timeout: they keep every event until receipted.
    pub session_expiry: Duration,
    /// On SIGTERM, unsubscribe from the share group before draining, so the
    /// broker routes new messages to the other replicas instead of queueing
    /// a share in this session while it is away (for good, after a
    /// scale-down). Only with more than one replica: the last subscriber to
    /// leave takes the broker's backlog for the group with it (agents then
    /// resend after their receipt timeout). Default false.
    pub leave_share_group_on_shutdown: bool,
    pub tls: Option<MqttTls>,
}

/// TLS material, read and checked when the configuration is validated, so a
/// missing or wrong file stops the bridge at start with the file's name
/// instead of failing every connection attempt later.
#[derive(Clone)]
pub struct MqttTls {
    /// PEM certificates the broker's certificate must chain to.
    pub ca_pem: Vec<u8>,
    /// PEM certificate chain and private key of the bridge (mutual TLS).
    pub client_auth: Option<(Vec<u8>, Vec<u8>)>,
}

impl std::fmt::Debug for MqttTls {
    // Never the key's bytes in a log line.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MqttTls")
            .field("ca_pem_bytes", &self.ca_pem.len())
            .field("client_auth", &self.client_auth.is_some())
            .finish()
    }
}

#[derive(Debug, Clone)]
pub struct KafkaConfig {
    pub bootstrap: String,
    pub ensure_topics_at_startup: bool,
    /// Producer properties handed to librdkafka (defaults merged with `extra`).
    pub producer: BTreeMap<String, String>,
    /// The `security.*`, `ssl.*` and `sasl.*` entries of `extra`: how to
    /// reach the cluster at all, so the admin client (`topics ensure`) gets
    /// them as well as the producer.
    pub connection: BTreeMap<String, String>,
    pub message_max_bytes: usize,
    pub retry_max_backoff: Duration,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicsConfig {
    pub partitions: i32,
    pub replication_factor: i32,
    pub min_insync_replicas: i32,
    pub retention_ms: i64,
    pub dead_letter_retention_ms: i64,
    /// Each topic's `max.message.bytes`: `kafka.message_max_bytes`, so a
    /// record the producer may send is never refused by its topic (a dead
    /// letter refused for good could never be written, and its message
    /// would stay unacked).
    pub max_message_bytes: i64,
}

#[derive(Debug, Clone)]
pub struct Limits {
    pub max_events_in_flight: usize,
    pub max_messages_in_flight: usize,
    /// MQTT payload bytes held, received and not yet acked
    /// ([`crate::payload_budget`]). With the Kafka client's copy of each
    /// record, the bridge's memory for messages is about twice this.
    pub max_bytes_in_flight: usize,
    pub max_event_bytes: usize,
    pub shutdown_grace: Duration,
}

#[derive(Debug, Clone)]
pub struct DedupeConfig {
    pub max_entries: usize,
    pub max_age: Duration,
}

impl RawConfig {
    pub fn from_file(path: &Path) -> Result<RawConfig, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.display().to_string(),
            source,
        })?;
        Self::from_toml(&text, &path.display().to_string())
    }

    pub fn from_toml(text: &str, origin: &str) -> Result<RawConfig, ConfigError> {
        toml::from_str(text).map_err(|source| ConfigError::Parse {
            path: origin.to_owned(),
            source: Box::new(source),
        })
    }

    /// Applies `STORELINK_BRIDGE_*` variables from `lookup` (the process
    /// environment in `main`, a map in tests). Unparsable numbers are
    /// reported by [`RawConfig::validate`].
    pub fn apply_env(&mut self, lookup: impl Fn(&str) -> Option<String>, errors: &mut Vec<String>) {
        let mut num = |var: &str, slot: &mut Option<i64>| {
            if let Some(v) = lookup(var) {
                match v.trim().parse() {
                    Ok(n) => *slot = Some(n),
                    Err(_) => errors.push(format!("{var}={v:?} is not an integer")),
                }
            }
        };
        num("STORELINK_BRIDGE_MQTT_PORT", &mut self.mqtt.port);
        num(
            "STORELINK_BRIDGE_TOPICS_PARTITIONS",
            &mut self.topics.partitions,
        );
        num(
            "STORELINK_BRIDGE_TOPICS_REPLICATION_FACTOR",
            &mut self.topics.replication_factor,
        );
        num(
            "STORELINK_BRIDGE_TOPICS_MIN_INSYNC_REPLICAS",
            &mut self.topics.min_insync_replicas,
        );
        let strs: [(&str, &mut Option<String>); 8] = [
            ("STORELINK_BRIDGE_ID", &mut self.bridge_id),
            ("STORELINK_BRIDGE_HTTP_LISTEN", &mut self.http_listen),
            ("STORELINK_BRIDGE_MQTT_HOST", &mut self.mqtt.host),
            ("STORELINK_BRIDGE_MQTT_CLIENT_ID", &mut self.mqtt.client_id),
            (
                "STORELINK_BRIDGE_MQTT_SHARE_GROUP",
                &mut self.mqtt.share_group,
            ),
            ("STORELINK_BRIDGE_MQTT_USERNAME", &mut self.mqtt.username),
            ("STORELINK_BRIDGE_MQTT_PASSWORD", &mut self.mqtt.password),
            (
                "STORELINK_BRIDGE_KAFKA_BOOTSTRAP",
                &mut self.kafka.bootstrap,
            ),
        ];
        for (var, slot) in strs {
            if let Some(v) = lookup(var) {
                *slot = Some(v);
            }
        }
    }

    /// Checks everything and returns the typed config or every problem found.
    pub fn validate(self, errors: Vec<String>) -> Result<Config, ConfigError> {
        self.validate_with(errors, Files::Read)
    }

    /// As [`Self::validate`]; with [`Files::Skip`] the TLS files are named
    /// but not read (linting a deployment's config away from its Secrets).
    pub fn validate_with(
        self,
        mut errors: Vec<String>,
        files: Files,
    ) -> Result<Config, ConfigError> {
        let tls = self
            .mqtt
            .tls
            .as_ref()
            .and_then(|t| validate_tls(t, files, &mut errors));
        let mut range = |name: &str, v: Option<i64>, default: i64, min: i64, max: i64| -> i64 {
            let v = v.unwrap_or(default);
            if v < min || v > max {
                errors.push(format!("{name} = {v} is out of range {min}..={max}"));
                default
            } else {
                v
            }
        };
        // 8883 is MQTT over TLS's registered port.
        let default_port = if self.mqtt.tls.is_some() { 8883 } else { 1883 };
        let port = range("mqtt.port", self.mqtt.port, default_port, 1, 65535);
        // rumqttc's MQTT 5 client asserts a keep-alive of at least 5 s.
        let keep_alive_s = range("mqtt.keep_alive_s", self.mqtt.keep_alive_s, 30, 5, 65535);
        // At least the largest packet an agent may send: with MQTT 5 the
        // broker silently drops a larger message for this session, and the
        // store that sent it would resend it forever.
        let max_packet = range(
            "mqtt.max_packet_bytes",
            self.mqtt.max_packet_bytes,
            8 * 1024 * 1024,
            protocol::batch::MAX_PUBLISH_PACKET_BYTES as i64,
            256 * 1024 * 1024,
        );
        let req_cap = range(
            "mqtt.request_channel_capacity",
            self.mqtt.request_channel_capacity,
            4096,
            1,
            1_000_000,
        );
        let out_inflight = range(
            "mqtt.outgoing_inflight",
            self.mqtt.outgoing_inflight,
            1000,
            1,
            65535,
        );
        let receive_maximum = range(
            "mqtt.receive_maximum",
            self.mqtt.receive_maximum,
            100,
            1,
            65535,
        );
        // Long enough for a pod to be rescheduled and restarted; at most a
        // week (a session that outlives that strands a share for as long).
        let session_expiry_s = range(
            "mqtt.session_expiry_s",
            self.mqtt.session_expiry_s,
            120,
            1,
            7 * 24 * 3600,
        );
        let linger = range("kafka.linger_ms", self.kafka.linger_ms, 5, 0, 900_000);
        let batch_size = range(
            "kafka.batch_size",
            self.kafka.batch_size,
            1_000_000,
            1,
            2_147_483_647,
        );
        let msg_timeout = range(
            "kafka.message_timeout_ms",
            self.kafka.message_timeout_ms,
            120_000,
            1_000,
            2_147_483_647,
        );
        // The largest event an agent stores must fit whole in a dead letter:
        // a smaller limit cuts an acknowledged sale's bytes (or, below the
        // headers' size, makes its dead letter impossible to write at all).
        let msg_max = range(
            "kafka.message_max_bytes",
            self.kafka.message_max_bytes,
            1_000_000,
            (protocol::batch::MAX_EVENT_BYTES + protocol::batch::DEAD_LETTER_HEADROOM_BYTES) as i64,
            1_000_000_000,
        );
        let retry_backoff = range(
            "kafka.retry_max_backoff_ms",
            self.kafka.retry_max_backoff_ms,
            5_000,
            10,
            600_000,
        );
        let partitions = range("topics.partitions", self.topics.partitions, 12, 1, 10_000);
        let rf = range(
            "topics.replication_factor",
            self.topics.replication_factor,
            3,
            1,
            32,
        );
        let min_isr = range(
            "topics.min_insync_replicas",
            self.topics.min_insync_replicas,
            2.min(rf),
            1,
            32,
        );
        let retention = range(
            "topics.retention_ms",
            self.topics.retention_ms,
            7 * 24 * 3600 * 1000,
            -1,
            i64::MAX,
        );
        let dlq_retention = range(
            "topics.dead_letter_retention_ms",
            self.topics.dead_letter_retention_ms,
            30 * 24 * 3600 * 1000,
            -1,
            i64::MAX,
        );
        let max_events = range(
            "limits.max_events_in_flight",
            self.limits.max_events_in_flight,
            50_000,
            1,
            10_000_000,
        );
        let max_msgs = range(
            "limits.max_messages_in_flight",
            self.limits.max_messages_in_flight,
            1_000,
            1,
            65_535,
        );
        let max_bytes = range(
            "limits.max_bytes_in_flight",
            self.limits.max_bytes_in_flight,
            128 * 1024 * 1024,
            1024 * 1024,
            64 * 1024 * 1024 * 1024,
        );
        let max_event_bytes = range(
            "limits.max_event_bytes",
            self.limits.max_event_bytes,
            256 * 1024,
            64,
            1_000_000_000,
        );
        let grace = range(
            "limits.shutdown_grace_s",
            self.limits.shutdown_grace_s,
            30,
            0,
            3600,
        );
        let dd_entries = range(
            "dedupe.max_entries",
            self.dedupe.max_entries,
            1_000_000,
            0,
            100_000_000,
        );
        let dd_age = range(
            "dedupe.max_age_s",
            self.dedupe.max_age_s,
            3600,
            0,
            30 * 86400,
        );

        // Each message the pipeline settles queues a receipt and an ack, and
        // its permit is freed once both are queued, not sent: while the
        // event loop cannot write, the pipeline can still settle everything
        // it holds and everything already in the received queue. (The
        // Receive Maximum does not bound this: brokers before Mosquitto
        // 2.0.13 ignore it.) With room for all of those (and the odd
        // SUBSCRIBE or DISCONNECT) no task ever waits on a full request
        // channel; one that did could hand its ack to the next connection,
        // where a forgotten session's packet ids name other messages
        // (mqtt_source::CurrentConnection).
        let settling = crate::mqtt_source::RECEIVED_QUEUE as i64 + max_msgs;
        if req_cap < 2 * settling + 16 {
            errors.push(format!(
                "mqtt.request_channel_capacity ({req_cap}) must be at least {}: a receipt and \
                 an ack for each of the {settling} messages that can be settling at once (the \
                 received queue of {} plus limits.max_messages_in_flight), and 16 more",
                2 * settling + 16,
                crate::mqtt_source::RECEIVED_QUEUE
            ));
        }
        if min_isr > rf {
            errors.push(format!(
                "topics.min_insync_replicas ({min_isr}) exceeds topics.replication_factor ({rf}): \
                 no write with acks=all could ever succeed"
            ));
        }
        if max_event_bytes > msg_max {
            errors.push(format!(
                "limits.max_event_bytes ({max_event_bytes}) exceeds kafka.message_max_bytes ({msg_max}): \
                 Kafka would refuse events the bridge lets through"
            ));
        }

        let bridge_id = self.bridge_id.unwrap_or_else(|| "bridge-0".to_owned());
        check_id("bridge_id", &bridge_id, &mut errors);
        let client_id = self
            .mqtt
            .client_id
            .unwrap_or_else(|| format!("storelink-{bridge_id}"));
        check_id("mqtt.client_id", &client_id, &mut errors);
        let share_group = self
            .mqtt
            .share_group
            .unwrap_or_else(|| "storelink-bridge".to_owned());
        check_id("mqtt.share_group", &share_group, &mut errors);
        let host = self.mqtt.host.unwrap_or_else(|| "127.0.0.1".to_owned());
        if host.trim().is_empty() || host.contains(char::is_whitespace) {
            errors.push(format!("mqtt.host {host:?} is not a host name"));
        }
        let credentials = match (self.mqtt.username, self.mqtt.password) {
            (Some(u), Some(p)) => Some((u, p)),
            (None, None) => None,
            _ => {
                errors.push("mqtt.username and mqtt.password go together".to_owned());
                None
            }
        };
        let http_listen_text = self
            .http_listen
            .unwrap_or_else(|| "0.0.0.0:9090".to_owned());
        let http_listen = match http_listen_text.parse::<SocketAddr>() {
            Ok(a) => Some(a),
            Err(_) => {
                errors.push(format!(
                    "http_listen {http_listen_text:?} is not an address like 0.0.0.0:9090"
                ));
                None
            }
        };
        let bootstrap = self.kafka.bootstrap.unwrap_or_default();
        if bootstrap.trim().is_empty() {
            errors.push(
                "kafka.bootstrap is required (or STORELINK_BRIDGE_KAFKA_BOOTSTRAP)".to_owned(),
            );
        }
        let acks = self.kafka.acks.unwrap_or_else(|| "all".to_owned());
        if acks == "0" {
            errors.push(
                "kafka.acks = \"0\" is refused: the broker would acknowledge nothing, so every \
                 record would be reported delivered and receipted, and the store would delete \
                 events Kafka may never have written; use \"all\" (or \"1\")"
                    .to_owned(),
            );
        } else if !["all", "-1", "1"].contains(&acks.as_str()) {
            errors.push(format!("kafka.acks {acks:?} must be all or 1"));
        }
        let idempotence = self.kafka.enable_idempotence.unwrap_or(true);
        if idempotence && !["all", "-1"].contains(&acks.as_str()) {
            errors.push("kafka.enable_idempotence = true requires kafka.acks = \"all\"".to_owned());
        }
        let compression = self.kafka.compression.unwrap_or_else(|| "lz4".to_owned());
        if !["none", "gzip", "snappy", "lz4", "zstd"].contains(&compression.as_str()) {
            errors.push(format!(
                "kafka.compression {compression:?} must be none, gzip, snappy, lz4 or zstd"
            ));
        }
        for key in self.kafka.extra.keys() {
            if let Some(why) = governed_producer_property(key) {
                errors.push(format!("kafka.extra must not set {key:?}: {why}"));
            }
        }

        if !errors.is_empty() {
            return Err(ConfigError::Invalid(errors));
        }
        let mut producer = BTreeMap::new();
        for (k, v) in [
            ("acks", acks),
            ("enable.idempotence", idempotence.to_string()),
            ("compression.type", compression),
            ("linger.ms", linger.to_string()),
            ("batch.size", batch_size.to_string()),
            ("message.timeout.ms", msg_timeout.to_string()),
            ("message.max.bytes", msg_max.to_string()),
            // Enough room for max_events_in_flight records plus retries.
            ("queue.buffering.max.messages", "1000000".to_owned()),
        ] {
            producer.insert(k.to_owned(), v);
        }
        let connection: BTreeMap<String, String> = self
            .kafka
            .extra
            .iter()
            .filter(|(k, _)| is_connection_property(k))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        producer.extend(self.kafka.extra);
        // Validated above: every conversion below is in range.
        Ok(Config {
            bridge_id,
            http_listen: http_listen.unwrap_or_else(|| SocketAddr::from(([0, 0, 0, 0], 9090))),
            mqtt: MqttConfig {
                host,
                port: port as u16,
                client_id,
                share_group,
                credentials,
                keep_alive: Duration::from_secs(keep_alive_s as u64),
                max_packet_bytes: max_packet as usize,
                request_channel_capacity: req_cap as usize,
                outgoing_inflight: out_inflight as u16,
                receive_maximum: receive_maximum as u16,
                session_expiry: Duration::from_secs(session_expiry_s as u64),
                leave_share_group_on_shutdown: self
                    .mqtt
                    .leave_share_group_on_shutdown
                    .unwrap_or(false),
                tls,
            },
            kafka: KafkaConfig {
                bootstrap,
                ensure_topics_at_startup: self.kafka.ensure_topics_at_startup.unwrap_or(true),
                producer,
                connection,
                message_max_bytes: msg_max as usize,
                retry_max_backoff: Duration::from_millis(retry_backoff as u64),
            },
            topics: TopicsConfig {
                partitions: partitions as i32,
                replication_factor: rf as i32,
                min_insync_replicas: min_isr as i32,
                retention_ms: retention,
                dead_letter_retention_ms: dlq_retention,
                max_message_bytes: msg_max,
            },
            limits: Limits {
                max_events_in_flight: max_events as usize,
                max_messages_in_flight: max_msgs as usize,
                max_bytes_in_flight: usize::try_from(max_bytes).unwrap_or(usize::MAX),
                max_event_bytes: max_event_bytes as usize,
                shutdown_grace: Duration::from_secs(grace as u64),
            },
            dedupe: DedupeConfig {
                max_entries: dd_entries as usize,
                max_age: Duration::from_secs(dd_age as u64),
            },
        })
    }
}

/// Ids end up in MQTT client ids, shared-subscription names and receipts:
/// no MQTT wildcards or separators, no whitespace.
fn check_id(name: &str, v: &str, errors: &mut Vec<String>) {
    let ok = !v.is_empty()
        && v.len() <= 128
        && v.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.');
    if !ok {
        errors.push(format!(
            "{name} {v:?} must be 1-128 characters of A-Z a-z 0-9 - _ ."
        ));
    }
}

/// Whether validation reads the files the config names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Files {
    Read,
    Skip,
}

/// Reads, overrides from the process environment, validates.
pub fn load(path: &Path) -> Result<Config, ConfigError> {
    check(path, Files::Read)
}

/// [`load`], optionally without reading the TLS files (`cloud-bridge check`).
pub fn check(path: &Path, files: Files) -> Result<Config, ConfigError> {
    let mut raw = RawConfig::from_file(path)?;
    let mut errors = Vec::new();
    raw.apply_env(|k| std::env::var(k).ok(), &mut errors);
    raw.validate_with(errors, files)
}

/// Why `[kafka.extra]` may not set a librdkafka property, if it may not:
/// one the bridge sets from a checked setting (under any of librdkafka's
/// names for it), or one its delivery accounting or readiness rests on.
/// Before, `extra` was applied last and could quietly undo those checks.
fn governed_producer_property(key: &str) -> Option<&'static str> {
    Some(match key {
        "bootstrap.servers" | "metadata.broker.list" => "use kafka.bootstrap",
        "acks" | "request.required.acks" => "use kafka.acks",
        "enable.idempotence" => "use kafka.enable_idempotence",
        "compression.type" | "compression.codec" => "use kafka.compression",
        "linger.ms" | "queue.buffering.max.ms" => "use kafka.linger_ms",
        "batch.size" => "use kafka.batch_size",
        "message.timeout.ms" | "delivery.timeout.ms" => "use kafka.message_timeout_ms",
        "message.max.bytes" => "use kafka.message_max_bytes",
        "queue.buffering.max.messages" => {
            "the bridge sizes the producer queue for its own in-flight limit"
        }
        "delivery.report.only.error" => {
            "the bridge receipts and acks a message only on every record's delivery report"
        }
        "statistics.interval.ms" => {
            "readiness reads the idempotent producer's state from librdkafka's statistics"
        }
        _ => return None,
    })
}

/// librdkafka properties every client needs to reach the cluster.
fn is_connection_property(key: &str) -> bool {
    ["security.", "ssl.", "sasl."]
        .iter()
        .any(|p| key.starts_with(p))
}

/// Reads `[mqtt.tls]`'s files, pushing one error per problem.
fn validate_tls(t: &RawMqttTls, files: Files, errors: &mut Vec<String>) -> Option<MqttTls> {
    let pem = |key: &str, path: &Path, label: &str, errors: &mut Vec<String>| match files {
        Files::Read => read_pem(key, path, label, errors),
        Files::Skip => Some(Vec::new()),
    };
    let ca = match &t.ca_file {
        Some(p) => pem("mqtt.tls.ca_file", p, "CERTIFICATE", errors),
        None => {
            errors.push("mqtt.tls.ca_file is required with [mqtt.tls]".to_owned());
            None
        }
    };
    let client_auth = match (&t.cert_file, &t.key_file) {
        (Some(c), Some(k)) => Some((
            pem("mqtt.tls.cert_file", c, "CERTIFICATE", errors),
            pem("mqtt.tls.key_file", k, "PRIVATE KEY", errors),
        )),
        (None, None) => None,
        _ => {
            errors.push("mqtt.tls.cert_file and mqtt.tls.key_file go together".to_owned());
            None
        }
    };
    match (ca, client_auth) {
        (Some(ca_pem), None) => Some(MqttTls {
            ca_pem,
            client_auth: None,
        }),
        (Some(ca_pem), Some((Some(cert), Some(key)))) => Some(MqttTls {
            ca_pem,
            client_auth: Some((cert, key)),
        }),
        _ => None,
    }
}

/// The file's bytes if it is readable PEM holding a `BEGIN … {label}` block.
fn read_pem(key: &str, path: &Path, label: &str, errors: &mut Vec<String>) -> Option<Vec<u8>> {
    match std::fs::read(path) {
        Ok(bytes) => {
            let text = String::from_utf8_lossy(&bytes);
            let end = format!("{label}-----");
            let found = text
                .lines()
                .any(|l| l.starts_with("-----BEGIN ") && l.trim_end().ends_with(&end));
            if found {
                Some(bytes)
            } else {
                errors.push(format!(
                    "{key} {}: no PEM {label} in the file",
                    path.display()
                ));
                None
            }
        }
        Err(e) => {
            errors.push(format!("{key} {}: {e}", path.display()));
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn validate(toml: &str, env: &[(&str, &str)]) -> Result<Config, ConfigError> {
        let mut raw = RawConfig::from_toml(toml, "test")?;
        let mut errors = Vec::new();
        raw.apply_env(
            |k| {
                env.iter()
                    .find(|(n, _)| *n == k)
                    .map(|(_, v)| v.to_string())
            },
            &mut errors,
        );
        raw.validate(errors)
    }

    #[test]
    fn defaults_are_the_safe_producer_settings() {
        let c = validate("[kafka]\nbootstrap = \"k:9092\"\n", &[]).expect("valid");
        assert_eq!(c.kafka.producer["enable.idempotence"], "true");
        assert_eq!(c.kafka.producer["acks"], "all");
        assert_eq!(c.topics.replication_factor, 3);
        assert_eq!(c.topics.min_insync_replicas, 2);
        assert_eq!(c.mqtt.client_id, "storelink-bridge-0");
        assert_eq!(c.mqtt.session_expiry, Duration::from_secs(120));
        assert_eq!(c.mqtt.receive_maximum, 100);
    }

    #[test]
    fn environment_overrides_the_file() {
        let c = validate(
            "[mqtt]\nport = 1\n[kafka]\nbootstrap = \"a:1\"\n",
            &[
                ("STORELINK_BRIDGE_MQTT_PORT", "2883"),
                ("STORELINK_BRIDGE_KAFKA_BOOTSTRAP", "b:2"),
            ],
        )
        .expect("valid");
        assert_eq!(c.mqtt.port, 2883);
        assert_eq!(c.kafka.bootstrap, "b:2");
    }

    #[test]
    fn the_request_channel_holds_a_receipt_and_an_ack_per_settling_message() {
        // 512 received + 1000 in flight (the default): 2 * 1512 + 16.
        let base = "[kafka]\nbootstrap = \"k:9092\"\n[mqtt]\nreceive_maximum = 100\n";
        let err = validate(&format!("{base}request_channel_capacity = 3039\n"), &[])
            .expect_err("too small");
        assert!(err.to_string().contains("must be at least 3040"), "{err}");
        let c = validate(&format!("{base}request_channel_capacity = 3040\n"), &[]).expect("enough");
        assert_eq!(c.mqtt.request_channel_capacity, 3040);
        // The default capacity with a larger in-flight limit.
        let big = "[kafka]\nbootstrap = \"k:9092\"\n[limits]\nmax_messages_in_flight = 5000\n";
        let err = validate(big, &[]).expect_err("5512 settling do not fit in 4096");
        assert!(err.to_string().contains("must be at least 11040"), "{err}");
    }

    #[test]
    fn acks_0_is_refused_because_nothing_would_be_acknowledged() {
        for text in [
            "[kafka]\nbootstrap = \"k:9092\"\nacks = \"0\"\nenable_idempotence = false\n",
            "[kafka]\nbootstrap = \"k:9092\"\n[kafka.extra]\n\"acks\" = \"0\"\n",
        ] {
            let err = validate(text, &[]).expect_err("acks=0");
            assert!(err.to_string().contains("acks"), "{text}: {err}");
        }
        let c = validate(
            "[kafka]\nbootstrap = \"k:9092\"\nacks = \"1\"\nenable_idempotence = false\n\
             [kafka.extra]\n\"security.protocol\" = \"ssl\"\n\"client.id\" = \"b\"\n",
            &[],
        )
        .expect("acks=1 without idempotence, and other extra properties, are allowed");
        assert_eq!(c.kafka.producer["acks"], "1");
        assert_eq!(c.kafka.producer["client.id"], "b");
    }

    #[test]
    fn every_problem_is_reported_at_once() {
        let err = validate(
            "bridge_id = \"a b\"\n[mqtt]\nport = 70000\nkeep_alive_s = 0\nsession_expiry_s = 0\n\
             receive_maximum = 0\n[kafka]\nacks = \"1\"\n\
             [kafka.extra]\n\"request.required.acks\" = \"0\"\n\"delivery.report.only.error\" = \"true\"\n\
             [topics]\nreplication_factor = 1\nmin_insync_replicas = 2\n",
            &[("STORELINK_BRIDGE_TOPICS_PARTITIONS", "x")],
        )
        .expect_err("invalid");
        let ConfigError::Invalid(list) = err else {
            panic!("expected Invalid, got {err}")
        };
        let text = list.join("\n");
        for needle in [
            "mqtt.port",
            "keep_alive_s",
            "mqtt.session_expiry_s = 0",
            "mqtt.receive_maximum = 0",
            "bridge_id",
            "kafka.bootstrap",
            "enable_idempotence",
            "must not set \"request.required.acks\": use kafka.acks",
            "must not set \"delivery.report.only.error\"",
            "min_insync_replicas",
            "STORELINK_BRIDGE_TOPICS_PARTITIONS",
        ] {
            assert!(text.contains(needle), "{needle} missing from:\n{text}");
        }
    }

    #[test]
    fn mqtt_values_the_client_would_assert_on_are_refused_up_front() {
        // rumqttc's setters panic where the configuration is refused here.
        for (key, value) in [
            ("keep_alive_s", 4),
            ("receive_maximum", 0),
            ("session_expiry_s", 0),
            ("outgoing_inflight", 0),
        ] {
            let err = validate(
                &format!("[mqtt]\n{key} = {value}\n[kafka]\nbootstrap = \"k:1\"\n"),
                &[],
            )
            .expect_err("out of range");
            assert!(
                err.to_string().contains(&format!("mqtt.{key} = {value}")),
                "{err}"
            );
        }
        let c = validate(
            "[mqtt]\nkeep_alive_s = 5\n[kafka]\nbootstrap = \"k:1\"\n",
            &[],
        )
        .expect("5 s is the shortest keep-alive the client takes");
        assert!(std::panic::catch_unwind(|| crate::mqtt_source::client(&c.mqtt)).is_ok());
    }

    #[test]
    fn a_packet_limit_under_what_an_agent_may_send_is_refused() {
        let least = protocol::batch::MAX_PUBLISH_PACKET_BYTES;
        let err = validate(
            &format!(
                "[mqtt]\nmax_packet_bytes = {}\n[kafka]\nbootstrap = \"k:1\"\n",
                least - 1
            ),
            &[],
        )
        .expect_err("too small for the largest batch");
        assert!(
            err.to_string()
                .contains(&format!("mqtt.max_packet_bytes = {}", least - 1)),
            "{err}"
        );
        let c = validate(
            &format!("[mqtt]\nmax_packet_bytes = {least}\n[kafka]\nbootstrap = \"k:1\"\n"),
            &[],
        )
        .expect("the contract's packet size is enough");
        assert_eq!(c.mqtt.max_packet_bytes, least);
    }

    #[test]
    fn a_kafka_record_limit_that_cannot_hold_the_largest_event_as_a_dead_letter_is_refused() {
        let least = protocol::batch::MAX_EVENT_BYTES + protocol::batch::DEAD_LETTER_HEADROOM_BYTES;
        let toml =
            |bytes: usize| format!("[kafka]\nbootstrap = \"k:1\"\nmessage_max_bytes = {bytes}\n");
        let err = validate(&toml(least - 1), &[]).expect_err("too small");
        assert!(
            err.to_string()
                .contains(&format!("kafka.message_max_bytes = {}", least - 1)),
            "{err}"
        );
        let c = validate(&toml(least), &[]).expect("large enough");
        assert_eq!(c.topics.max_message_bytes, least as i64);
        // The default holds it.
        let d = validate("[kafka]\nbootstrap = \"k:1\"\n", &[]).expect("valid");
        assert!(d.kafka.message_max_bytes >= least);
    }

    #[test]
    fn the_example_config_is_valid_and_states_the_defaults() {
        let c = validate(include_str!("../bridge.example.toml"), &[]).expect("example is valid");
        let d = validate("[kafka]\nbootstrap = \"x:1\"\n", &[]).expect("valid");
        assert_eq!(c.topics, d.topics);
        assert_eq!(c.kafka.producer, d.kafka.producer);
        assert_eq!(c.limits.max_events_in_flight, d.limits.max_events_in_flight);
        assert_eq!(c.limits.max_bytes_in_flight, d.limits.max_bytes_in_flight);
        assert_eq!(c.mqtt.session_expiry, d.mqtt.session_expiry);
        assert_eq!(c.mqtt.receive_maximum, d.mqtt.receive_maximum);
        assert_eq!(c.mqtt.outgoing_inflight, d.mqtt.outgoing_inflight);
    }

    #[test]
    fn the_fleet_config_is_valid() {
        // What the StatefulSet mounts; the TLS files live in Secrets.
        let mut raw = RawConfig::from_toml(include_str!("../../k3s/cloud/bridge.toml"), "fleet")
            .expect("k3s/cloud/bridge.toml parses");
        let mut errors = Vec::new();
        raw.apply_env(|_| None, &mut errors);
        let c = raw
            .validate_with(errors, Files::Skip)
            .expect("k3s/cloud/bridge.toml is valid");
        assert_eq!((c.mqtt.port, c.mqtt.tls.is_some()), (8883, true));
        assert_eq!(
            c.kafka
                .connection
                .get("security.protocol")
                .map(String::as_str),
            Some("ssl")
        );
        assert_eq!(
            c.kafka
                .producer
                .get("security.protocol")
                .map(String::as_str),
            Some("ssl")
        );
        assert_eq!(
            (c.topics.replication_factor, c.topics.min_insync_replicas),
            (3, 2)
        );
        // The HPA scales 2..8 replicas: a retired one must leave the share
        // group, or its share of new messages waits in its offline session.
        assert!(c.mqtt.leave_share_group_on_shutdown);
    }

    #[test]
    fn tls_files_are_read_and_checked_up_front() {
        let dir = tempfile::tempdir().expect("temp dir");
        let ca = dir.path().join("ca.crt");
        std::fs::write(
            &ca,
            "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n",
        )
        .expect("write");
        let not_pem = dir.path().join("key.txt");
        std::fs::write(&not_pem, "hello").expect("write");
        let c = validate(
            &format!(
                "[mqtt.tls]\nca_file = {:?}\n[kafka]\nbootstrap = \"x:1\"\n",
                ca.display().to_string()
            ),
            &[],
        )
        .expect("CA only is valid");
        assert_eq!(c.mqtt.port, 8883, "TLS defaults to MQTT's TLS port");
        assert!(c.mqtt.tls.as_ref().is_some_and(|t| t.client_auth.is_none()));

        let err = validate(
            &format!(
                "[mqtt.tls]\nca_file = \"/nonexistent/ca.crt\"\ncert_file = {:?}\nkey_file = {:?}\n",
                ca.display().to_string(),
                not_pem.display().to_string()
            ),
            &[],
        )
        .expect_err("missing CA and a key that is not PEM");
        let text = err.to_string();
        assert!(
            text.contains("mqtt.tls.ca_file /nonexistent/ca.crt"),
            "{text}"
        );
        assert!(
            text.contains("mqtt.tls.key_file") && text.contains("no PEM PRIVATE KEY"),
            "{text}"
        );

        let err = validate(
            &format!(
                "[mqtt.tls]\nca_file = {:?}\ncert_file = {:?}\n",
                ca.display().to_string(),
                ca.display().to_string()
            ),
            &[],
        )
        .expect_err("cert without key");
        assert!(err.to_string().contains("go together"), "{err}");
    }

    #[test]
    fn unknown_keys_are_rejected() {
        let err = validate("[mqtt]\nprot = 1\n", &[]).expect_err("unknown key");
        assert!(err.to_string().contains("prot"), "{err}");
    }
}
