//! The event envelope every StoreLink event travels in.
//!
//! ```json
//! { "id": "019a…", "schema": "storelink.sale", "schema_version": 1,
//!   "store_id": "store-0042", "region": "eu-west",
//!   "source": { "kind": "pos_terminal", "device_id": "pos-01" },
//!   "occurred_at": "2026-11-24T10:15:02+01:00",
//!   "recorded_at": "2026-11-24T09:15:02.123456Z",
//!   "body": { … } }
//! ```
//!
//! Two views of the same bytes:
//! * [`Envelope`]: typed, body decoded per schema. The agent builds these.
//! * [`RawEnvelope`]: header typed, body left as raw JSON. The bridge routes
//!   on the header and forwards the original bytes untouched, so Kafka gets
//!   exactly what the store recorded.

use std::borrow::Cow;
use std::fmt;
use std::str::FromStr;

use chrono::{DateTime, FixedOffset, Utc};
use serde::de::{DeserializeSeed, Deserializer};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use crate::device::{AgentNotice, DeviceStatus, Scan, ShelfReading, StockAlert};
use crate::transaction::{Return, Sale, Void};
use crate::validation::{FieldError, Problems};

/// Time-ordered unique event id (UUIDv7): sorts by creation time, so ids
/// double as a cheap ordering hint in logs and de-duplication windows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct EventId(pub uuid::Uuid);

impl EventId {
    pub fn new_v7() -> Self {
        EventId(uuid::Uuid::now_v7())
    }
}

impl fmt::Display for EventId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl FromStr for EventId {
    type Err = uuid::Error;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        uuid::Uuid::parse_str(s).map(EventId)
    }
}

/// What kind of thing produced an event.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SourceKind {
    PosTerminal,
    Scanner,
    ShelfSensor,
    Agent,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Source {
    pub kind: SourceKind,
    pub device_id: String,
}

/// The event types of this protocol. The schema name is stable forever;
/// the version grows by additive changes only (see `VERSIONING.md`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum EventKind {
    Sale,
    Return,
    Void,
    Scan,
    ShelfReading,
    StockAlert,
    DeviceStatus,
    AgentNotice,
}

impl EventKind {
    pub const ALL: [EventKind; 8] = [
        EventKind::Sale,
        EventKind::Return,
        EventKind::Void,
        EventKind::Scan,
        EventKind::ShelfReading,
        EventKind::StockAlert,
        EventKind::DeviceStatus,
        EventKind::AgentNotice,
    ];

    pub fn schema_name(&self) -> &'static str {
        match self {
            EventKind::Sale => "storelink.sale",
            EventKind::Return => "storelink.return",
            EventKind::Void => "storelink.void",
            EventKind::Scan => "storelink.scan",
            EventKind::ShelfReading => "storelink.shelf_reading",
            EventKind::StockAlert => "storelink.stock_alert",
            EventKind::DeviceStatus => "storelink.device_status",
            EventKind::AgentNotice => "storelink.agent_notice",
        }
    }

    pub fn from_schema_name(name: &str) -> Option<EventKind> {
        EventKind::ALL.into_iter().find(|k| k.schema_name() == name)
    }

    /// The newest version of this schema that this build can read. Readers
    /// accept every version up to it; a newer one goes to the dead-letter
    /// topic until the reader is upgraded.
    pub fn readable_version(&self) -> u16 {
        match self {
            // v2: cash rounding, a zero total without tenders, a return of
            // another store's sale (VERSIONING.md, "Versions so far").
            EventKind::Sale | EventKind::Return => 2,
            _ => 1,
        }
    }

    /// The newest version this build writes. It trails
    /// [`Self::readable_version`] by a release when a schema gains a
    /// version: bridges that can read it must be everywhere before agents
    /// write it (VERSIONING.md, rule 4), or a store's events would be
    /// dead-lettered and, receipted as such, leave its outbox. Each event
    /// is written at the lowest version that carries it
    /// ([`EventBody::schema_version`]), so only events that need the newest
    /// one are written at it.
    pub fn written_version(&self) -> u16 {
        self.readable_version()
    }

    /// Transactions are what the business is paid on: never shed, refused
    /// with backpressure instead when the outbox is full.
    pub fn is_transaction(&self) -> bool {
        matches!(self, EventKind::Sale | EventKind::Return | EventKind::Void)
    }

    /// Telemetry that may be compacted (latest per device) and shed when the
    /// store's disk is full. Alerts, scans and status changes are not: each
    /// one is a distinct fact.
    pub fn is_sheddable(&self) -> bool {
        matches!(self, EventKind::ShelfReading)
    }
}

impl fmt::Display for EventKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.schema_name())
    }
}

impl Serialize for EventKind {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.schema_name())
    }
}

/// Domain body of an event. Serialized without a tag: the envelope's
/// `schema` field says which one it is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(untagged)]
pub enum EventBody {
    Sale(Box<Sale>),
    Return(Box<Return>),
    Void(Void),
    Scan(Scan),
    ShelfReading(ShelfReading),
    StockAlert(StockAlert),
    DeviceStatus(DeviceStatus),
    AgentNotice(AgentNotice),
}

impl EventBody {
    pub fn kind(&self) -> EventKind {
        match self {
            EventBody::Sale(_) => EventKind::Sale,
            EventBody::Return(_) => EventKind::Return,
            EventBody::Void(_) => EventKind::Void,
            EventBody::Scan(_) => EventKind::Scan,
            EventBody::ShelfReading(_) => EventKind::ShelfReading,
            EventBody::StockAlert(_) => EventKind::StockAlert,
            EventBody::DeviceStatus(_) => EventKind::DeviceStatus,
            EventBody::AgentNotice(_) => EventKind::AgentNotice,
        }
    }

    /// The lowest version of its schema that carries this body (at most
    /// [`EventKind::written_version`]).
    pub fn schema_version(&self) -> u16 {
        match self {
            EventBody::Sale(s) => s.schema_version(),
            EventBody::Return(r) => r.schema_version(),
            _ => 1,
        }
    }

    /// Decodes a body of the given kind. Unknown fields are ignored (additive evolution).
    pub fn from_json(kind: EventKind, json: &str) -> Result<EventBody, serde_json::Error> {
        let mut de = serde_json::Deserializer::from_str(json);
        let body = BodySeed(kind).deserialize(&mut de)?;
        de.end()?;
        Ok(body)
    }
}

/// Reads a body whose kind is already known (from the envelope's `schema`).
pub(crate) struct BodySeed(pub EventKind);

impl<'de> DeserializeSeed<'de> for BodySeed {
    type Value = EventBody;

    /// A body is a JSON object: serde's derived readers would also take a
    /// struct's fields by position from an array, which a consumer reading
    /// by name could not read.
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<EventBody, D::Error> {
        struct ObjectOnly(EventKind);
        impl<'de> serde::de::Visitor<'de> for ObjectOnly {
            type Value = EventBody;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "a {} body as a JSON object", self.0.schema_name())
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                map: A,
            ) -> Result<EventBody, A::Error> {
                BodySeed(self.0).fields(serde::de::value::MapAccessDeserializer::new(map))
            }
        }
        d.deserialize_map(ObjectOnly(self.0))
    }
}

impl BodySeed {
    fn fields<'de, D: Deserializer<'de>>(self, d: D) -> Result<EventBody, D::Error> {
        Ok(match self.0 {
            EventKind::Sale => EventBody::Sale(Box::new(Sale::deserialize(d)?)),
            EventKind::Return => EventBody::Return(Box::new(Return::deserialize(d)?)),
            EventKind::Void => EventBody::Void(Void::deserialize(d)?),
            EventKind::Scan => EventBody::Scan(Scan::deserialize(d)?),
            EventKind::ShelfReading => EventBody::ShelfReading(ShelfReading::deserialize(d)?),
            EventKind::StockAlert => EventBody::StockAlert(StockAlert::deserialize(d)?),
            EventKind::DeviceStatus => EventBody::DeviceStatus(DeviceStatus::deserialize(d)?),
            EventKind::AgentNotice => EventBody::AgentNotice(AgentNotice::deserialize(d)?),
        })
    }
}

/// A typed event, as the agent creates it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Envelope {
    pub id: EventId,
    pub schema: EventKind,
    pub schema_version: u16,
    pub store_id: String,
    pub region: String,
    pub source: Source,
    /// Device clock, with the device's UTC offset.
    pub occurred_at: DateTime<FixedOffset>,
    /// Agent clock when the event was accepted.
    pub recorded_at: DateTime<Utc>,
    pub body: EventBody,
}

/// Why bytes are not a readable event of this protocol version.
#[derive(Debug, thiserror::Error)]
pub enum EnvelopeError {
    #[error("not an event envelope: {0}")]
    Malformed(#[from] serde_json::Error),
    #[error("unknown schema `{0}`")]
    UnknownSchema(String),
    #[error("schema `{schema}` version {version} is newer than this reader's {supported}")]
    UnsupportedVersion {
        schema: String,
        /// As written: any JSON unsigned integer, so a version past 65535 is
        /// named for what it is, not called undecodable.
        version: u64,
        supported: u16,
    },
    #[error("invalid envelope: {0}")]
    Invalid(Problems),
    #[error("body of `{schema}` does not decode: {source}")]
    Body {
        schema: &'static str,
        source: serde_json::Error,
    },
}

impl EnvelopeError {
    /// Stable snake_case reason, used for dead-letter headers and metrics labels.
    pub fn reason_code(&self) -> &'static str {
        match self {
            EnvelopeError::Malformed(_) => "undecodable",
            EnvelopeError::UnknownSchema(_) => "unknown_schema",
            EnvelopeError::UnsupportedVersion { .. } => "unsupported_schema_version",
            EnvelopeError::Invalid(_) => "invalid_envelope",
            EnvelopeError::Body { .. } => "undecodable_body",
        }
    }
}

impl Envelope {
    /// A new event with a fresh UUIDv7, at the lowest schema version that
    /// carries its body.
    pub fn new(
        store_id: impl Into<String>,
        region: impl Into<String>,
        source: Source,
        occurred_at: DateTime<FixedOffset>,
        body: EventBody,
    ) -> Envelope {
        let schema = body.kind();
        Envelope {
            id: EventId::new_v7(),
            schema,
            schema_version: body.schema_version(),
            store_id: store_id.into(),
            region: region.into(),
            source,
            occurred_at,
            recorded_at: Utc::now(),
            body,
        }
    }

    pub fn to_json(&self) -> Vec<u8> {
        self.to_json_with_body_range().0
    }

    /// The envelope's JSON and where its body sits in it, so a caller can
    /// checksum the body without serializing it a second time. Same bytes as
    /// `serde_json::to_vec(self)`.
    pub fn to_json_with_body_range(&self) -> (Vec<u8>, std::ops::Range<usize>) {
        #[derive(Serialize)]
        struct Header<'a> {
            id: &'a EventId,
            schema: EventKind,
            schema_version: u16,
            store_id: &'a str,
            region: &'a str,
            source: &'a Source,
            occurred_at: &'a DateTime<FixedOffset>,
            recorded_at: &'a DateTime<Utc>,
        }
        let header = Header {
            id: &self.id,
            schema: self.schema,
            schema_version: self.schema_version,
            store_id: &self.store_id,
            region: &self.region,
            source: &self.source,
            occurred_at: &self.occurred_at,
            recorded_at: &self.recorded_at,
        };
        // Serializing owned, well-formed data to a Vec cannot fail: no maps
        // with non-string keys, no I/O.
        let mut out = Vec::with_capacity(1024);
        let _ = serde_json::to_writer(&mut out, &header);
        out.pop(); // the header's closing brace
        out.extend_from_slice(b",\"body\":");
        let start = out.len();
        let _ = serde_json::to_writer(&mut out, &self.body);
        let end = out.len();
        out.push(b'}');
        (out, start..end)
    }

    /// Decodes and checks a whole event: header, schema version and body.
    pub fn from_json(bytes: &[u8]) -> Result<Envelope, EnvelopeError> {
        RawEnvelope::parse(bytes)?.into_typed()
    }
}

/// Refuses an envelope or body written as a JSON array. serde's derived
/// readers accept a struct's fields by position too; a consumer reading by
/// name could not read such an event, and positional fields cannot evolve
/// additively (VERSIONING.md). Only the envelope and the body themselves
/// are checked (here and in [`BodySeed`]): a struct nested in them (the
/// source, a line item) written as an array is still read by position.
fn refuse_positional(json: impl AsRef<[u8]>) -> Result<(), serde_json::Error> {
    let first = json
        .as_ref()
        .iter()
        .find(|b| !matches!(b, b' ' | b'\t' | b'\n' | b'\r'));
    if first == Some(&b'[') {
        return Err(serde::de::Error::custom(
            "a JSON array where an object belongs (fields are named, never positional)",
        ));
    }
    Ok(())
}

/// An event's label must be at least the version its body needs
/// ([`EventBody::schema_version`]): a reader of the labelled version would
/// read the rest wrongly (another store's sale returned as this store's,
/// totals that do not add up without the cash rounding).
pub fn check_body_version(schema_version: u16, body: &EventBody) -> Result<(), EnvelopeError> {
    let needed = body.schema_version();
    if schema_version >= needed {
        return Ok(());
    }
    let mut problems = Problems::default();
    problems.push(crate::FieldError::new(
        "schema_version",
        "below_body_version",
        format!("is {schema_version}, but the body uses fields of version {needed}"),
    ));
    Err(EnvelopeError::Invalid(problems))
}

/// The header rules routing depends on (see [`RawEnvelope::check_header`]).
pub(crate) fn check_header(
    schema: &str,
    schema_version: u64,
    store_id: &str,
    device_id: &str,
) -> Result<EventKind, EnvelopeError> {
    let kind = EventKind::from_schema_name(schema)
        .ok_or_else(|| EnvelopeError::UnknownSchema(schema.to_owned()))?;
    if schema_version == 0 || schema_version > u64::from(kind.readable_version()) {
        return Err(EnvelopeError::UnsupportedVersion {
            schema: schema.to_owned(),
            version: schema_version,
            supported: kind.readable_version(),
        });
    }
    let mut problems = Problems::default();
    if let Err(e) = crate::validate_store_id(store_id) {
        problems.push(e);
    }
    if device_id.is_empty() {
        problems.push(FieldError::new(
            "source.device_id",
            "required",
            "must not be empty",
        ));
    }
    problems.into_result().map_err(EnvelopeError::Invalid)?;
    Ok(kind)
}

/// An envelope whose body is kept as the raw JSON it arrived as.
#[derive(Debug, Deserialize, Serialize)]
pub struct RawEnvelope<'a> {
    pub id: EventId,
    #[serde(borrow)]
    pub schema: Cow<'a, str>,
    /// As written (see [`EnvelopeError::UnsupportedVersion`]);
    /// [`RawEnvelope::check_header`] bounds it to a readable `u16`.
    pub schema_version: u64,
    #[serde(borrow)]
    pub store_id: Cow<'a, str>,
    #[serde(borrow)]
    pub region: Cow<'a, str>,
    pub source: Source,
    #[serde(deserialize_with = "crate::rfc3339::fixed")]
    pub occurred_at: DateTime<FixedOffset>,
    #[serde(deserialize_with = "crate::rfc3339::utc")]
    pub recorded_at: DateTime<Utc>,
    #[serde(borrow)]
    pub body: &'a RawValue,
}

impl<'a> RawEnvelope<'a> {
    pub fn parse(bytes: &'a [u8]) -> Result<RawEnvelope<'a>, EnvelopeError> {
        refuse_positional(bytes)?;
        Ok(serde_json::from_slice(bytes)?)
    }

    /// As [`RawEnvelope::parse`], for text already known to be UTF-8.
    pub fn parse_str(text: &'a str) -> Result<RawEnvelope<'a>, EnvelopeError> {
        refuse_positional(text)?;
        Ok(serde_json::from_str(text)?)
    }

    /// Checks what routing depends on: a known schema at a readable version
    /// and a well-formed store id. Returns the kind.
    pub fn check_header(&self) -> Result<EventKind, EnvelopeError> {
        check_header(
            &self.schema,
            self.schema_version,
            &self.store_id,
            &self.source.device_id,
        )
    }

    /// The version as the `u16` every reader uses; exact once
    /// [`RawEnvelope::check_header`] passed (at most the readable version).
    pub fn version_u16(&self) -> u16 {
        u16::try_from(self.schema_version).unwrap_or(u16::MAX)
    }

    pub fn into_typed(self) -> Result<Envelope, EnvelopeError> {
        let kind = self.check_header()?;
        let schema_version = self.version_u16();
        let body =
            EventBody::from_json(kind, self.body.get()).map_err(|source| EnvelopeError::Body {
                schema: kind.schema_name(),
                source,
            })?;
        check_body_version(schema_version, &body)?;
        Ok(Envelope {
            id: self.id,
            schema: kind,
            schema_version,
            store_id: self.store_id.into_owned(),
            region: self.region.into_owned(),
            source: self.source,
            occurred_at: self.occurred_at,
            recorded_at: self.recorded_at,
            body,
        })
    }
}
