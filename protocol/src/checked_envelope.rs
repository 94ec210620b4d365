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
        serde_json::from_str::<Fast<'a>>(text).ok().map(|f| f.0)
    }
}

/// A batch read in one pass: each event decoded by [`CheckedEnvelope`]'s
/// reader straight from the batch text, with the byte range of its JSON.
///
/// Splitting a batch into raw events first ([`crate::batch::RawBatch`])
/// scans every byte once to find where each event ends and again to decode
/// it; on the bridge the split alone was a quarter of routing (0.58 of
/// 2.32 µs per event). This reads batches laid out exactly as
/// [`crate::batch::encode_batch`] writes them — `batch_id`, `store_id`,
/// `events` in that order, no whitespace, the store id without escapes —
/// and returns `None` for anything else, including any event
/// [`CheckedEnvelope::parse_fast`] would not accept: the caller then takes
/// the split-then-decode path, which accepts the same batches and says
/// what is wrong with the rest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckedBatch<'a> {
    pub batch_id: uuid::Uuid,
    pub store_id: &'a str,
    /// Every event with the range of its bytes in the batch text.
    pub events: Vec<(CheckedEnvelope<'a>, std::ops::Range<usize>)>,
}

impl<'a> CheckedBatch<'a> {
    pub fn parse_fast(text: &'a str) -> Option<CheckedBatch<'a>> {
        let rest = text.strip_prefix(r#"{"batch_id":""#)?;
        let batch_id = uuid::Uuid::try_parse(rest.get(..36)?).ok()?;
        let rest = rest.get(36..)?.strip_prefix(r#"","store_id":"#)?;
        let mut pos = text.len() - rest.len();
        let mut strings = serde_json::Deserializer::from_str(rest).into_iter::<&'a str>();
        let store_id = strings.next()?.ok()?;
        pos += strings.byte_offset();
        let rest = text.get(pos..)?.strip_prefix(r#","events":["#)?;
        pos = text.len() - rest.len();
        let bytes = text.as_bytes();
        let mut events = Vec::new();
        if bytes.get(pos) == Some(&b']') {
            pos += 1;
        } else {
            loop {
                // An event starts right here: whitespace would make its
                // range differ from the raw event's.
                if bytes.get(pos) != Some(&b'{') {
                    return None;
                }
                let mut stream =
                    serde_json::Deserializer::from_str(text.get(pos..)?).into_iter::<Fast<'a>>();
                let env = stream.next()?.ok()?.0;
                let end = pos + stream.byte_offset();
                events.push((env, pos..end));
                pos = end + 1;
                match bytes.get(end) {
                    Some(b',') => {}
                    Some(b']') => break,
                    _ => return None,
                }
            }
        }
        (text.get(pos..)? == "}").then_some(CheckedBatch {
            batch_id,
            store_id,
            events,
        })
    }
}

/// [`CheckedEnvelope`]'s reader as a `Deserialize`, for one event or a stream.
struct Fast<'a>(CheckedEnvelope<'a>);

impl<'de> Deserialize<'de> for Fast<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Fast<'de>, D::Error> {
        d.deserialize_map(EnvelopeVisitor).map(Fast)
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
        let mut body_version = 1;
        while let Some(field) = map.next_key::<Field>()? {
            match field {
                Field::Id => once(&mut id, map.next_value::<EventId>()?)?,
                Field::Schema => once(&mut schema, map.next_value()?)?,
                Field::SchemaVersion => once(&mut version, map.next_value::<u64>()?)?,
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
                    body_version = map.next_value_seed(Checked(BodySeed(kind)))?;
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
        // Labelled below what its body needs: the two-step path says why.
        if version < u64::from(body_version) {
            return Err(de::Error::custom("labelled below its body's version"));
        }
        Ok(CheckedEnvelope {
            id: id.ok_or_else(missing)?,
            kind,
            // Checked above: at most the readable version.
            schema_version: u16::try_from(version).unwrap_or(u16::MAX),
            store_id,
            source,
            recorded_at: recorded_at.ok_or_else(missing)?,
        })
    }
}

/// Decodes a body and drops it: only whether it decodes, and the version it
/// needs, matter here.
struct Checked(BodySeed);

impl<'de> DeserializeSeed<'de> for Checked {
    type Value = u16;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<u16, D::Error> {
        self.0.deserialize(d).map(|body| body.schema_version())
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
        let body = EventBody::from_json(kind, env.body.get()).ok()?;
        crate::envelope::check_body_version(env.version_u16(), &body).ok()?;
        Some((
            env.id,
            kind,
            env.version_u16(),
            env.store_id.into_owned(),
            env.source,
            env.recorded_at,
        ))
    }

    fn header(e: CheckedEnvelope<'_>) -> Header {
        (
            e.id,
            e.kind,
            e.schema_version,
            e.store_id.to_owned(),
            e.source,
            e.recorded_at,
        )
    }

    fn one_pass(text: &str) -> Option<Header> {
        CheckedEnvelope::parse_fast(text).map(header)
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

    /// Batch id, store id, and each event's header with its byte range.
    type BatchView = (uuid::Uuid, String, Vec<(Header, std::ops::Range<usize>)>);

    /// What the split-then-decode path makes of a batch when every event in
    /// it passes: batch id, store id, each event's header and byte range.
    fn split_then_decode(text: &str) -> Option<BatchView> {
        let batch = crate::batch::RawBatch::parse_str(text).ok()?;
        let mut events = Vec::new();
        for raw in &batch.events {
            let start = raw.get().as_ptr() as usize - text.as_ptr() as usize;
            events.push((one_pass(raw.get())?, start..start + raw.get().len()));
        }
        Some((batch.batch_id, batch.store_id.into_owned(), events))
    }

    fn batch_in_one_pass(text: &str) -> Option<BatchView> {
        let b = CheckedBatch::parse_fast(text)?;
        let events = b.events.into_iter().map(|(e, r)| (header(e), r)).collect();
        Some((b.batch_id, b.store_id.to_owned(), events))
    }

    /// The sample envelopes as agents encode them.
    fn sample_events() -> Vec<Vec<u8>> {
        crate::samples::envelopes("store-0042")
            .iter()
            .map(|e| e.to_json())
            .collect()
    }

    fn sample_batch(events: &[Vec<u8>]) -> String {
        let bytes = crate::batch::encode_batch(
            uuid::Uuid::now_v7(),
            "store-0042",
            events.iter().map(Vec::as_slice),
        );
        String::from_utf8(bytes).expect("utf-8")
    }

    #[test]
    fn encoded_batches_read_in_one_pass_as_split_then_decoded() {
        let events = sample_events();
        for n in [0, 1, events.len()] {
            let text = sample_batch(&events[..n]);
            let fast = batch_in_one_pass(&text).expect("an encoded batch reads in one pass");
            assert_eq!(Some(fast.clone()), split_then_decode(&text), "{text}");
            assert_eq!(fast.2.len(), n);
            for ((_, range), original) in fast.2.iter().zip(&events) {
                assert_eq!(text.as_bytes()[range.clone()], original[..]);
            }
        }
    }

    /// A small edit to JSON text: written characters come from JSON's own
    /// structure and the values the samples hold, so many mutants stay
    /// well-formed and reach the deeper checks instead of failing at once.
    #[derive(Debug, Clone)]
    enum Edit {
        Replace(usize, char),
        Insert(usize, char),
        Delete(usize),
        /// Copies `len` characters from one place to another (duplicate
        /// fields, doubled digits, repeated array items).
        Copy {
            from: usize,
            len: usize,
            to: usize,
        },
    }

    fn edits() -> impl proptest::strategy::Strategy<Value = Vec<Edit>> {
        use proptest::prelude::*;
        const ALPHABET: &[char] = &[
            '{', '}', '[', ']', ':', ',', '"', '\\', ' ', '0', '1', '5', '9', '-', '+', '.', 'e',
            'E', 'a', 'n', 't', 'u', 'l', 'Z', 'T', 'é', '\u{1}',
        ];
        let edit =
            prop_oneof![
                (any::<usize>(), proptest::sample::select(ALPHABET))
                    .prop_map(|(i, c)| Edit::Replace(i, c)),
                (any::<usize>(), proptest::sample::select(ALPHABET))
                    .prop_map(|(i, c)| Edit::Insert(i, c)),
                any::<usize>().prop_map(Edit::Delete),
                (any::<usize>(), 1usize..24, any::<usize>())
                    .prop_map(|(from, len, to)| Edit::Copy { from, len, to }),
            ];
        proptest::collection::vec(edit, 1..4)
    }

    fn mutate(text: &str, edits: &[Edit]) -> String {
        let mut chars: Vec<char> = text.chars().collect();
        for edit in edits {
            let n = chars.len().max(1);
            match *edit {
                Edit::Replace(i, c) if !chars.is_empty() => chars[i % n] = c,
                Edit::Insert(i, c) => chars.insert(i % (chars.len() + 1), c),
                Edit::Delete(i) if !chars.is_empty() => {
                    chars.remove(i % n);
                }
                Edit::Copy { from, len, to } if !chars.is_empty() => {
                    let from = from % n;
                    let piece: Vec<char> = chars[from..(from + len).min(chars.len())].to_vec();
                    let to = to % (chars.len() + 1);
                    chars.splice(to..to, piece);
                }
                _ => {}
            }
        }
        chars.into_iter().collect()
    }

    /// Runs `cases` random mutants of `texts` through both readers: whatever
    /// `fast` accepts, `slow` accepts with the same result. Also asserts
    /// that some mutants were accepted (edits inside strings and numbers
    /// keep the text valid); if none were, the property proved nothing.
    fn fast_agrees_with_slow<T: PartialEq + std::fmt::Debug>(
        texts: &[String],
        cases: u32,
        fast: impl Fn(&str) -> Option<T>,
        slow: impl Fn(&str) -> Option<T>,
    ) {
        use proptest::test_runner::{Config, TestRunner};
        let accepted = std::cell::Cell::new(0u32);
        let mut runner = TestRunner::new(Config {
            cases,
            failure_persistence: None,
            ..Config::default()
        });
        let result = runner.run(&(0..texts.len(), edits()), |(i, edits)| {
            let text = mutate(&texts[i], &edits);
            let read = fast(&text);
            if read.is_some() {
                proptest::prop_assert_eq!(&read, &slow(&text), "{}", text);
                accepted.set(accepted.get() + 1);
            }
            Ok(())
        });
        if let Err(e) = result {
            panic!("{e}");
        }
        let accepted = accepted.get();
        assert!(
            accepted > cases / 50,
            "only {accepted} of {cases} mutants were accepted"
        );
    }

    /// The one-pass reader is hand-written; the two-step path is serde's
    /// derive. Random edits probe the corners neither list of hand-picked
    /// variations above thought of.
    #[test]
    fn a_mutated_envelope_read_in_one_pass_is_one_the_two_step_path_accepts_alike() {
        let texts: Vec<String> = samples().iter().map(text_of).collect();
        fast_agrees_with_slow(&texts, 20_000, one_pass, two_step);
    }

    #[test]
    fn a_mutated_batch_read_in_one_pass_is_read_alike_when_split_then_decoded() {
        let texts = vec![sample_batch(&sample_events())];
        fast_agrees_with_slow(&texts, 10_000, batch_in_one_pass, split_then_decode);
    }

    #[test]
    fn anything_but_the_encoded_layout_is_left_to_the_split() {
        let events = sample_events();
        let text = sample_batch(&events);
        let id = &text[13..49];
        let variants = [
            // Whitespace between events, after the array, around the object.
            format!(
                r#"{{"batch_id":"{id}","store_id":"store-0042","events":[{}]}}"#,
                events
                    .iter()
                    .map(|e| String::from_utf8_lossy(e).into_owned())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
            format!("{}] }}", &text[..text.len() - 2]),
            format!("{text} "),
            // Fields in another order, an extra field, an escaped store id.
            text.replacen(
                &format!(r#"{{"batch_id":"{id}","store_id":"store-0042","#),
                &format!(r#"{{"store_id":"store-0042","batch_id":"{id}","#),
                1,
            ),
            format!(r#"{}],"x":1}}"#, &text[..text.len() - 2]),
            text.replacen(
                r#""store_id":"store-0042""#,
                r#""store_id":"store\u002d0042""#,
                1,
            ),
            // A batch id in another form, an event that does not decode.
            text.replacen(id, &id.replace('-', ""), 1),
            text.replacen(r#""schema_version":1"#, r#""schema_version":99"#, 1),
            // Not a batch at all.
            text[..text.len() - 1].to_owned(),
        ];
        for v in &variants {
            assert_ne!(v, &text, "the variant must differ");
            assert_eq!(CheckedBatch::parse_fast(v), None, "{v}");
        }
    }
}
