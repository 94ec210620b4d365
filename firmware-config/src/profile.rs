//! The profile's shape. Every struct denies unknown keys: a typo in a
//! profile must fail the rollout, not silently fall back to a default.

use std::net::SocketAddr;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct StoreProfile {
    pub store: Store,
    #[serde(default)]
    pub agent: Agent,
    pub cloud: Cloud,
    #[serde(default)]
    pub outbox: OutboxLimits,
    #[serde(default)]
    pub local_mqtt: Option<LocalMqtt>,
    #[serde(default)]
    pub terminals: Vec<Terminal>,
    #[serde(default)]
    pub scanners: Vec<Scanner>,
    #[serde(default)]
    pub shelf_sensors: Vec<ShelfSensor>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Store {
    /// Lowercase letters, digits and `-`; appears in MQTT topics and Kafka keys.
    pub id: String,
    pub region: String,
    /// IANA time zone, e.g. `Europe/Dublin`.
    pub timezone: String,
    /// ISO 4217 code the store trades in.
    pub currency: String,
    #[serde(default)]
    pub maintenance_window: Option<MaintenanceWindow>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct MaintenanceWindow {
    /// `mon` … `sun`: the days the window starts on.
    pub days: Vec<String>,
    /// Local `HH:MM` in the store's time zone.
    pub start: String,
    /// Local `HH:MM`; earlier than `start` means the window ends the next day.
    pub end: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Agent {
    #[serde(default = "default_http_listen")]
    pub http_listen: SocketAddr,
    #[serde(default = "default_data_dir")]
    pub data_dir: PathBuf,
    /// Seconds SIGTERM waits for in-flight work before exiting.
    #[serde(default = "default_shutdown_grace_secs")]
    #[schemars(range(min = 1, max = 600))]
    pub shutdown_grace_secs: u64,
    /// Directory with one file per POS terminal, named by the terminal id and
    /// holding the bearer token that terminal must present. When set, every
    /// POST needs `Authorization: Bearer <token>` of the terminal named in its
    /// body. Mounted from a Secret at the store.
    #[serde(default)]
    pub terminal_tokens_dir: Option<PathBuf>,
}

fn default_http_listen() -> SocketAddr {
    SocketAddr::from(([0, 0, 0, 0], 8080))
}
fn default_data_dir() -> PathBuf {
    PathBuf::from("/var/lib/storelink")
}
fn default_shutdown_grace_secs() -> u64 {
    20
}

impl Default for Agent {
    fn default() -> Self {
        Agent {
            http_listen: default_http_listen(),
            data_dir: default_data_dir(),
            shutdown_grace_secs: default_shutdown_grace_secs(),
            terminal_tokens_dir: None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Cloud {
    pub host: String,
    pub port: u16,
    pub client_id: String,
    #[serde(default)]
    pub tls: Option<Tls>,
    /// Events per MQTT message.
    #[serde(default = "default_batch_max_events")]
    pub batch_max_events: usize,
    /// The largest batch payload the agent sends, frame and separators
    /// included (a single event larger than this goes alone), at most
    /// 4 MiB: the size every bridge accepts and the cloud broker's
    /// `message_size_limit` must allow.
    #[serde(default = "default_batch_max_bytes")]
    #[schemars(range(min = 1024, max = 4194304))]
    pub batch_max_bytes: usize,
    /// Batches sent but not yet receipted. 1 (the default) keeps every
    /// store's events in order in Kafka even when several bridge replicas
    /// share the load (each batch is in Kafka before the next is sent); a
    /// larger window drains faster over a slow link but lets two replicas
    /// publish consecutive batches out of order.
    #[serde(default = "default_max_batches_in_flight")]
    pub max_batches_in_flight: usize,
    /// Seconds to wait for a delivery receipt before sending again,
    /// counted from the broker's PUBACK (when the whole batch has crossed
    /// the uplink), not from the send: a large batch on a slow link is not
    /// resent for being slow.
    #[serde(default = "default_receipt_timeout_secs")]
    pub receipt_timeout_secs: u64,
    /// MQTT keep-alive, seconds. A ping queued behind a batch is answered
    /// only once the batch has crossed: keep this above the largest
    /// message's time on the store's slowest uplink (a 256 KiB batch takes
    /// 16 s at 128 kbit/s).
    #[serde(default = "default_keep_alive_secs")]
    #[schemars(range(min = 5, max = 600))]
    pub keep_alive_secs: u64,
    /// The longest a connect, or the write of one message, may take before
    /// the connection counts as lost. Above the largest message's time on
    /// the slowest uplink: a lone sale of 960 KiB takes 60 s at 128 kbit/s.
    #[serde(default = "default_network_timeout_secs")]
    #[schemars(range(min = 5, max = 600))]
    pub network_timeout_secs: u64,
}

fn default_batch_max_events() -> usize {
    500
}
fn default_batch_max_bytes() -> usize {
    256 * 1024
}
fn default_max_batches_in_flight() -> usize {
    1
}
fn default_receipt_timeout_secs() -> u64 {
    30
}
fn default_keep_alive_secs() -> u64 {
    30
}
fn default_network_timeout_secs() -> u64 {
    120
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Tls {
    pub ca_file: PathBuf,
    pub cert_file: PathBuf,
    pub key_file: PathBuf,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct OutboxLimits {
    /// Disk the outbox may use: at least 3,932,160 bytes, four of the
    /// largest events.
    #[serde(default = "default_max_bytes")]
    #[schemars(range(min = 3932160))]
    pub max_bytes: u64,
    #[serde(default = "default_max_rows")]
    pub max_rows: u64,
    /// Disk space held back in a reserve file next to the outbox. When the
    /// disk fills up anyway (other programs, a small card), the agent frees
    /// it so receipts can still delete delivered events and the outbox can
    /// recover, instead of being stuck on a disk too full to shrink. At
    /// most 1 GiB; 0 for none.
    #[serde(default = "default_disk_reserve_bytes")]
    #[schemars(range(max = 1073741824))]
    pub disk_reserve_bytes: u64,
}

fn default_disk_reserve_bytes() -> u64 {
    8 * 1024 * 1024
}

fn default_max_bytes() -> u64 {
    1 << 30
}
fn default_max_rows() -> u64 {
    5_000_000
}

impl Default for OutboxLimits {
    fn default() -> Self {
        OutboxLimits {
            max_bytes: default_max_bytes(),
            max_rows: default_max_rows(),
            disk_reserve_bytes: default_disk_reserve_bytes(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct LocalMqtt {
    pub host: String,
    pub port: u16,
    #[serde(default)]
    pub client_id: Option<String>,
    /// The agent's login at the in-store broker (whose ACL lets it read `sensors/#`).
    #[serde(default)]
    pub username: Option<String>,
    /// File holding the password for `username` (mounted from a Secret).
    #[serde(default)]
    pub password_file: Option<PathBuf>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Terminal {
    pub id: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Parity {
    None,
    Odd,
    Even,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum FlowControl {
    None,
    Software,
    Hardware,
}

/// What ends a scanner frame: `"cr"`, `"lf"`, `"crlf"`, or one byte given
/// as a number (`terminator = 3` for ETX; `{ byte = 3 }` is accepted too).
///
/// The three line modes frame identically: any CR or LF ends a frame and
/// empty frames are dropped, so a scanner that sends CRLF while configured
/// for CR (or mixes them) loses nothing and produces no empty reads. The
/// setting still records what the scanner is programmed to send. A byte
/// terminator makes CR and LF ordinary (noise) bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Terminator {
    Cr,
    Lf,
    Crlf,
    Byte(u8),
}

impl Serialize for Terminator {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Terminator::Cr => s.serialize_str("cr"),
            Terminator::Lf => s.serialize_str("lf"),
            Terminator::Crlf => s.serialize_str("crlf"),
            Terminator::Byte(b) => s.serialize_u8(*b),
        }
    }
}

impl<'de> Deserialize<'de> for Terminator {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        const EXPECTED: &str = "`cr`, `lf`, `crlf` or a byte value 0-255";
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = Terminator;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str(EXPECTED)
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Terminator, E> {
                match v {
                    "cr" => Ok(Terminator::Cr),
                    "lf" => Ok(Terminator::Lf),
                    "crlf" => Ok(Terminator::Crlf),
                    other => Err(E::custom(format!(
                        "unknown terminator `{other}`, expected {EXPECTED}"
                    ))),
                }
            }
            fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<Terminator, E> {
                u8::try_from(v).map(Terminator::Byte).map_err(|_| {
                    E::custom(format!(
                        "terminator byte {v} is out of range, expected 0-255"
                    ))
                })
            }
            fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<Terminator, E> {
                u8::try_from(v).map(Terminator::Byte).map_err(|_| {
                    E::custom(format!(
                        "terminator byte {v} is out of range, expected 0-255"
                    ))
                })
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut map: A,
            ) -> Result<Terminator, A::Error> {
                // The shape the first version of this type derived: `{ byte = 3 }`.
                let mut byte = None;
                while let Some(key) = map.next_key::<String>()? {
                    if key != "byte" {
                        return Err(serde::de::Error::unknown_field(&key, &["byte"]));
                    }
                    byte = Some(map.next_value::<u8>()?);
                }
                byte.map(Terminator::Byte)
                    .ok_or_else(|| serde::de::Error::missing_field("byte"))
            }
        }
        d.deserialize_any(V)
    }
}

impl schemars::JsonSchema for Terminator {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "Terminator".into()
    }

    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({
            "description": "What ends a scanner frame: `cr`, `lf`, `crlf` (any CR or LF ends a frame; empty frames are dropped) or one byte value.",
            "oneOf": [
                { "type": "string", "enum": ["cr", "lf", "crlf"] },
                { "type": "integer", "minimum": 0, "maximum": 255 },
                {
                    "type": "object",
                    "properties": { "byte": { "type": "integer", "minimum": 0, "maximum": 255 } },
                    "required": ["byte"],
                    "additionalProperties": false
                }
            ]
        })
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Scanner {
    pub id: String,
    /// Serial device, e.g. `/dev/ttyUSB0` or a stable `/dev/serial/by-id/…` link.
    pub port: PathBuf,
    /// Lane or register the scanner serves.
    pub lane: String,
    /// One of the standard rates (1200 … 921600).
    #[serde(default = "default_baud")]
    #[schemars(extend("enum" = [300, 600, 1200, 2400, 4800, 9600, 19200, 38400, 57600, 115200, 230400, 460800, 921600]))]
    pub baud_rate: u32,
    /// 5 to 8.
    #[serde(default = "default_data_bits")]
    #[schemars(range(min = 5, max = 8))]
    pub data_bits: u8,
    #[serde(default = "default_parity")]
    pub parity: Parity,
    /// 1 or 2.
    #[serde(default = "default_stop_bits")]
    #[schemars(range(min = 1, max = 2))]
    pub stop_bits: u8,
    #[serde(default = "default_flow")]
    pub flow_control: FlowControl,
    #[serde(default = "default_terminator")]
    pub terminator: Terminator,
    /// Longest read kept, in bytes; longer frames are cut and marked truncated.
    #[serde(default = "default_max_frame_len")]
    #[schemars(range(min = 16, max = 8192))]
    pub max_frame_len: usize,
    /// How long an unfinished read may wait for its terminator after its
    /// last byte, in milliseconds. Then it is reported as an invalid
    /// `incomplete` read, so line noise (a power-up byte) or a read cut off
    /// mid-frame is not glued onto the next scan and does not spoil it. A
    /// scanner that sends no suffix at all shows up as nothing but
    /// `incomplete` reads, each with its data. At least 10 characters' time
    /// at the port's baud rate.
    #[serde(default = "default_frame_timeout_ms")]
    #[schemars(range(min = 100, max = 60_000))]
    pub frame_timeout_ms: u64,
    /// Longest wait between attempts to reopen a vanished port (exponential
    /// backoff with jitter up to this), in milliseconds.
    #[serde(default = "default_reconnect_max_backoff_ms")]
    #[schemars(range(min = 100, max = 600_000))]
    pub reconnect_max_backoff_ms: u64,
    /// What an 8-digit read without an AIM symbology identifier is: `ean8`
    /// (the default) or `upc_e`, for a scanner that sends UPC-E unexpanded,
    /// as most do out of the box. The digits alone cannot tell them apart.
    /// With identifiers on, this does not matter: EAN-8 arrives as `]E4`,
    /// UPC-E expanded to 13 digits as `]E0`.
    #[serde(default)]
    pub eight_digit_reads: EightDigitReads,
}

/// How a scanner's unprefixed 8-digit reads are decoded.
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum EightDigitReads {
    /// An EAN-8 (GTIN-8).
    #[default]
    Ean8,
    /// A UPC-E (number system 0 or 1, six digits, check digit), expanded to
    /// its UPC-A GTIN-12.
    UpcE,
}

fn default_baud() -> u32 {
    9600
}
fn default_data_bits() -> u8 {
    8
}
fn default_parity() -> Parity {
    Parity::None
}
fn default_stop_bits() -> u8 {
    1
}
fn default_flow() -> FlowControl {
    FlowControl::None
}
fn default_terminator() -> Terminator {
    Terminator::Cr
}
fn default_max_frame_len() -> usize {
    256
}
fn default_frame_timeout_ms() -> u64 {
    500
}
fn default_reconnect_max_backoff_ms() -> u64 {
    5_000
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ShelfSensor {
    pub id: String,
    /// The product on this shelf facing.
    pub gtin: String,
    /// Raw counts with an empty shelf.
    pub zero_offset: i64,
    /// Raw counts per gram (from two-point calibration), rounded to a whole
    /// number. Give this or `span`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub counts_per_gram: Option<i64>,
    /// The second point of the two-point calibration itself: the raw counts
    /// read with a known weight on the shelf. Exact where a whole
    /// `counts_per_gram` would round (a 5 kg cell at 97.4 counts per gram
    /// reads 4.1 kg as 4,117 g with 97). Give this or `counts_per_gram`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub span: Option<SpanPoint>,
    /// The weight of one item, in grams. Give this or
    /// `unit_weight_milligrams`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub unit_weight_grams: Option<u32>,
    /// The weight of one item, in milligrams, for light items a whole
    /// number of grams would miscount (100 sachets of 5.5 g read as 92 or
    /// 110 with 5 or 6). Give this or `unit_weight_grams`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub unit_weight_milligrams: Option<u32>,
    /// Raise low-stock when the count falls to this or below…
    pub low_stock_at: u32,
    /// …and restocked only when it climbs back to this or above (hysteresis).
    pub restocked_at: u32,
    /// Ignore weight changes smaller than this (grams) as jitter.
    #[serde(default = "default_deadband")]
    pub deadband_grams: u32,
    /// Report the sensor offline after this many seconds of silence.
    #[serde(default = "default_offline_after")]
    #[schemars(range(min = 1, max = 86_400))]
    pub offline_after_secs: u64,
    /// A stock alert is raised only after the count has stayed across its
    /// threshold this long (seconds); 0 raises it on the first reading.
    #[serde(default)]
    #[schemars(range(max = 86_400))]
    pub alert_dwell_secs: u64,
}

/// A known weight on a shelf and what the load cell read with it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SpanPoint {
    /// The known weight, in grams.
    #[schemars(range(min = 1))]
    pub grams: u32,
    /// Raw counts read with it on the shelf.
    pub raw: i64,
}

/// A sensor's counts per gram as an exact fraction: `counts` raw counts
/// above the zero offset for every `grams` grams.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Scale {
    pub counts: i128,
    pub grams: i128,
}

impl ShelfSensor {
    /// The calibration's scale, or `None` when the profile gives none, both,
    /// or one that is not positive (validation reports each of those).
    pub fn scale(&self) -> Option<Scale> {
        let scale = match (self.counts_per_gram, self.span) {
            (Some(cpg), None) => Scale {
                counts: i128::from(cpg),
                grams: 1,
            },
            (None, Some(span)) => Scale {
                counts: i128::from(span.raw) - i128::from(self.zero_offset),
                grams: i128::from(span.grams),
            },
            _ => return None,
        };
        (scale.counts > 0 && scale.grams > 0).then_some(scale)
    }

    /// One item's weight in milligrams, or `None` when the profile gives
    /// none, both, or 0 (validation reports each of those).
    pub fn unit_weight_mg(&self) -> Option<u64> {
        let mg = match (self.unit_weight_grams, self.unit_weight_milligrams) {
            (Some(g), None) => u64::from(g) * 1000,
            (None, Some(mg)) => u64::from(mg),
            _ => return None,
        };
        (mg > 0).then_some(mg)
    }
}

fn default_deadband() -> u32 {
    20
}
fn default_offline_after() -> u64 {
    120
}
