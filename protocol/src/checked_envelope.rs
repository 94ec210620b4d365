//! One pass over an event: its header read and its body checked against its
//! schema together.
//!
//! The bridge must know both before it publishes an event: the header to
//! route it, the body to refuse what Kafka consumers could not read. Reading
//! a [`RawEnvelope`] and then decoding its body walks the body's bytes twice
//! (once to skip it as raw JSON, once to decode it); on the bridge this
//! second walk was a fifth of its routing time. Here the body is decoded in
//! place, with the kind already read from `schema` — which every encoder of
//! this protocol writes before `body`.
//!
//! This is a fast path only. Whenever it cannot decide — `body` before
//! `schema`, a string with escapes where it borrows, any error at all — it
//! returns `None` and the caller takes the two-step path, which accepts
//! exactly the same events and says precisely what is wrong with the rest.
//! It never accepts what the two-step path refuses: same field types, same
//! readers, same header checks, duplicate fields refused.

use std::fmt;

use chrono::{DateTime, FixedOffset, Utc};
use serde::de::{self, DeserializeSeed, Deserializer, IgnoredAny, MapAccess, Visitor};
use serde::Deserialize;

use crate::envelope::{check_header, BodySeed};
use crate::{EventId, EventKind, Source};

/// An event whose header was read and checked and whose body decodes as its
/// schema.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckedEnvelope<'a> {
    pub id: EventId,
    pub kind: EventKind,
    pub schema_version: u16,
    pub store_id: &'a str,
    pub source: Source,
    pub recorded_at: DateTime<Utc>,
}

impl<'a> CheckedEnvelope<'a> {
    /// `Some` only if [`crate::RawEnvelope::parse_str`], its `check_header`
    /// and [`crate::EventBody::from_json`] would all succeed on `text`.
    pub fn parse_fast(text: &'a str) -> Option<CheckedEnvelope<'a>> {
        let mut de = serde_json::Deserializer::from_str(text);
        let env = de.deserialize_map(EnvelopeVisitor).ok()?;
        de.end().ok()?;
        Some(env)
    }
}

enum Field {
    Id,
    Schema,
    SchemaVersion,
    StoreId,
    Region,
    Source,
    OccurredAt,
    RecordedAt,
    Body,
    Other,
}

impl<'de> Deserialize<'de> for Field {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Field, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = Field;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a field name")
            }
            fn visit_str<E: de::Error>(self, s: &str) -> Result<Field, E> {
                Ok(match s {
                    "id" => Field::Id,
                    "schema" => Field::Schema,
                    "schema_version" => Field::SchemaVersion,
                    "store_id" => Field::StoreId,
                    "region" => Field::Region,
                    "source" => Field::Source,
                    "occurred_at" => Field::OccurredAt,
                    "recorded_at" => Field::RecordedAt,
                    "body" => Field::Body,
                    _ => Field::Other,
                })
            }
        }
        d.deserialize_identifier(V)
    }
}

/// The same readers as [`crate::RawEnvelope`]'s fields.
#[derive(Deserialize)]
struct OccurredAt(#[serde(deserialize_with = "crate::rfc3339::fixed")] DateTime<FixedOffset>);
#[derive(Deserialize)]
struct RecordedAt(#[serde(deserialize_with = "crate::rfc3339::utc")] DateTime<Utc>);

struct EnvelopeVisitor;

fn once<T, E: de::Error>(slot: &mut Option<T>, value: T) -> Result<(), E> {
    if slot.replace(value).is_some() {
        return Err(E::custom("duplicate field"));
    }
    Ok(())
}

impl<'de> Visitor<'de> for EnvelopeVisitor {
    type Value = CheckedEnvelope<'de>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an event envelope")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut id = None;
        let mut schema: Option<&'de str> = None;
        let mut version = None;
        let mut store_id: Option<&'de str> = None;
        let mut region: Option<&'de str> = None;
        let mut source: Option<Source> = None;
        let mut occurred_at = None;
        let mut recorded_at = None;
        let mut body_checked = false;
        while let Some(field) = map.next_key::<Field>()? {
            match field {
                Field::Id => once(&mut id, map.next_value::<EventId>()?)?,
                Field::Schema => once(&mut schema, map.next_value()?)?,
                Field::SchemaVersion => once(&mut version, map.next_value::<u16>()?)?,
                Field::StoreId => once(&mut store_id, map.next_value()?)?,
                Field::Region => once(&mut region, map.next_value()?)?,
                Field::Source => once(&mut source, map.next_value()?)?,
                Field::OccurredAt => once(&mut occurred_at, map.next_value::<OccurredAt>()?.0)?,
                Field::RecordedAt => once(&mut recorded_at, map.next_value::<RecordedAt>()?.0)?,
                Field::Body => {
                    let kind = schema
                        .and_then(EventKind::from_schema_name)
                        .ok_or_else(|| de::Error::custom("body before a known schema"))?;
                    if body_checked {
                        return Err(de::Error::custom("duplicate field"));
                    }
                    map.next_value_seed(Checked(BodySeed(kind)))?;
                    body_checked = true;
                }
                Field::Other => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        let missing = || de::Error::custom("missing field");
        let (schema, version, store_id, source) = (
            schema.ok_or_else(missing)?,
            version.ok_or_else(missing)?,
            store_id.ok_or_else(missing)?,
            source.ok_or_else(missing)?,
        );
        if region.is_none() || occurred_at.is_none() || !body_checked {
            return Err(missing());
        }
        let kind = check_header(schema, version, store_id, &source.device_id)
            .map_err(de::Error::custom)?;
        Ok(CheckedEnvelope {
            id: id.ok_or_else(missing)?,
            kind,
            schema_version: version,
            store_id,
            source,
            recorded_at: recorded_at.ok_or_else(missing)?,
        })
    }
}

/// Decodes a body and drops it: only whether it decodes matters here.
struct Checked(BodySeed);

impl<'de> DeserializeSeed<'de> for Checked {
    type Value = ();
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        self.0.deserialize(d).map(drop)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{EventBody, RawEnvelope};

    type Header = (EventId, EventKind, u16, String, Source, DateTime<Utc>);

    /// What the two-step path decides: the publishable header, or `None`.
    fn two_step(text: &str) -> Option<Header> {
        let env = RawEnvelope::parse_str(text).ok()?;
        let kind = env.check_header().ok()?;
        EventBody::from_json(kind, env.body.get()).ok()?;
        Some((
            env.id,
            kind,
            env.schema_version,
            env.store_id.into_owned(),
            env.source,
            env.recorded_at,
        ))
    }

    fn one_pass(text: &str) -> Option<Header> {
        CheckedEnvelope::parse_fast(text).map(|e| {
            (
                e.id,
                e.kind,
                e.schema_version,
                e.store_id.to_owned(),
                e.source,
                e.recorded_at,
            )
        })
    }

    /// JSON text with `body` last, as encoders write it (`serde_json::Value`
    /// alone would sort `body` first).
    fn text_of(v: &serde_json::Value) -> String {
        let Some(o) = v.as_object() else {
            return v.to_string();
        };
        let mut fields: Vec<String> = o
            .iter()
            .filter(|(k, _)| k.as_str() != "body")
            .map(|(k, v)| format!("{}:{v}", serde_json::Value::from(k.as_str())))
            .collect();
        if let Some(body) = o.get("body") {
            fields.push(format!("\"body\":{body}"));
        }
        format!("{{{}}}", fields.join(","))
    }

    fn samples() -> Vec<serde_json::Value> {
        crate::samples::envelopes("store-0042")
            .iter()
            .map(|e| serde_json::from_slice(&e.to_json()).expect("sample is JSON"))
            .collect()
    }

    #[test]
    fn every_sample_is_read_in_one_pass_with_the_same_header() {
        for v in samples() {
            let text = text_of(&v);
            let fast = one_pass(&text);
            assert!(fast.is_some(), "one pass refused a valid sample: {text}");
            assert_eq!(fast, two_step(&text), "{text}");
        }
    }

    /// Decides as the two-step path does; the variations cover each way an
    /// event can be bad, and some that are fine.
    #[test]
    fn accepts_nothing_the_two_step_path_refuses() {
        type Edit = Box<dyn Fn(&mut serde_json::Value)>;
        let edits: Vec<(&str, Edit)> = vec![
            ("unchanged", Box::new(|_| {})),
            (
                "unknown field",
                Box::new(|v| v["extra"] = serde_json::json!({"a": [1, 2]})),
            ),
            (
                "no body",
                Box::new(|v| {
                    v.as_object_mut().map(|o| o.remove("body"));
                }),
            ),
            (
                "no region",
                Box::new(|v| {
                    v.as_object_mut().map(|o| o.remove("region"));
                }),
            ),
            (
                "no id",
                Box::new(|v| {
                    v.as_object_mut().map(|o| o.remove("id"));
                }),
            ),
            (
                "no occurred_at",
                Box::new(|v| {
                    v.as_object_mut().map(|o| o.remove("occurred_at"));
                }),
            ),
            (
                "unknown schema",
                Box::new(|v| v["schema"] = "storelink.nope".into()),
            ),
            ("version 0", Box::new(|v| v["schema_version"] = 0.into())),
            (
                "future version",
                Box::new(|v| v["schema_version"] = 99.into()),
            ),
            (
                "bad store id",
                Box::new(|v| v["store_id"] = "Store 42!".into()),
            ),
            (
                "empty device",
                Box::new(|v| v["source"]["device_id"] = "".into()),
            ),
            (
                "bad time",
                Box::new(|v| v["recorded_at"] = "yesterday".into()),
            ),
            (
                "body wrong type",
                Box::new(|v| v["body"] = serde_json::json!([1, 2, 3])),
            ),
            (
                "body missing field",
                Box::new(|v| {
                    v["body"]
                        .as_object_mut()
                        .map(|o| o.remove("terminal_id").or_else(|| o.remove("device_id")));
                }),
            ),
            (
                "body field wrong type",
                Box::new(|v| v["body"]["currency"] = 978.into()),
            ),
        ];
        for v in samples() {
            for (name, edit) in &edits {
                let mut e = v.clone();
                edit(&mut e);
                let text = text_of(&e);
                // Fields in encoder order and no escapes: both paths decide,
                // and decide the same.
                let slow = two_step(&text);
                assert_eq!(one_pass(&text), slow, "{name}: {text}");
                if matches!(*name, "unchanged" | "unknown field") {
                    assert!(slow.is_some(), "{name}: {text}");
                }
            }
            // Body before schema: undecidable in one pass, decided by two.
            let text = text_of(&v);
            let moved = format!(
                "{{\"body\":{},{}",
                v["body"],
                text.trim_start_matches('{')
                    .replacen(&format!(",\"body\":{}", v["body"]), "", 1)
            );
            assert!(one_pass(&moved).is_none());
            assert!(two_step(&moved).is_some(), "{moved}");
            // A string with an escape cannot be borrowed: left to the two-step path.
            let escaped = text.replacen("\"store-0042\"", "\"store-004\\u0032\"", 1);
            assert_ne!(escaped, text);
            assert!(one_pass(&escaped).is_none());
            assert!(two_step(&escaped).is_some(), "{escaped}");
            // A duplicate field is refused by both.
            let dup = text.replacen('{', "{\"schema_version\":1,", 1);
            assert_eq!(one_pass(&dup), None);
            assert_eq!(two_step(&dup), None);
        }
    }
}
