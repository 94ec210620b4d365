//! Pure routing: one MQTT message in, one decision per event out.
//!
//! No I/O and no clock here, so every poison-message rule is unit-tested
//! without brokers. Decisions carry byte *ranges* into the MQTT payload, not
//! copies: the record value is the event's original bytes, exactly as the
//! store recorded them, and the pipeline slices the shared payload buffer.
//!
//! Rules, in order (first match wins):
//! * the MQTT topic is not a store events topic → the whole payload is
//!   dead-lettered (`unexpected_topic`);
//! * the payload is not a batch → the whole payload (`undecodable_batch`);
//! * the batch header names another store than the topic → every event is
//!   dead-lettered (`store_mismatch`): the topic is what the broker ACL
//!   authenticated, the payload is only a claim;
//! * per event: larger than `max_event_bytes` → `oversized`; not an envelope
//!   → `undecodable`; unknown schema, newer version, bad header →
//!   [`protocol::EnvelopeError::reason_code`]; envelope store differs from the
//!   topic's → `store_mismatch`; body does not decode as its schema →
//!   `undecodable_body`;
//! * otherwise the event is published to its domain topic with its partition key.

use std::ops::Range;

use chrono::{DateTime, Utc};
use protocol::batch::RawBatch;
use protocol::checked_envelope::{CheckedBatch, CheckedEnvelope};
use protocol::topics::{self, KafkaTopic};
use protocol::{EventBody, EventId, EventKind, RawEnvelope};
use serde::Deserialize;

/// Dead-letter reasons that are not envelope errors.
pub mod reason {
    pub const STORE_MISMATCH: &str = "store_mismatch";
    pub const OVERSIZED: &str = "oversized";
    pub const UNDECODABLE_BATCH: &str = "undecodable_batch";
    pub const UNEXPECTED_TOPIC: &str = "unexpected_topic";
    /// Kafka refused the record permanently (e.g. larger than the topic allows).
    pub const KAFKA_REJECTED: &str = "kafka_rejected";
    /// Not an envelope: [`protocol::EnvelopeError::Malformed`]'s code, for
    /// bytes that never reach the envelope parser (not UTF-8).
    pub const UNDECODABLE: &str = "undecodable";
    /// The reasons whose dead letter holds a whole MQTT payload (a batch, or
    /// what claimed to be one); every other reason's holds one event.
    pub const WHOLE_MESSAGE: [&str; 2] = [UNDECODABLE_BATCH, UNEXPECTED_TOPIC];
}

/// An event to publish to its domain topic.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PublishEvent {
    pub id: EventId,
    pub kind: EventKind,
    pub topic: KafkaTopic,
    pub key: String,
    /// The event's bytes within the MQTT payload.
    pub value: Range<usize>,
    pub schema_version: u16,
    pub recorded_at: DateTime<Utc>,
}

/// Bytes to write to the dead-letter topic.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeadLetterEvent {
    /// The event id, when it could be read: the receipt names it.
    pub id: Option<EventId>,
    pub reason: &'static str,
    pub detail: String,
    /// The offending bytes within the MQTT payload (the whole payload for
    /// batch-level problems).
    pub value: Range<usize>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    Publish(PublishEvent),
    DeadLetter(DeadLetterEvent),
}

/// Every decision for one MQTT message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RoutedMessage {
    /// Store of the MQTT topic (the authenticated one); `None` if the topic
    /// is not a store events topic, in which case no receipt can be sent.
    pub topic_store: Option<String>,
    /// The batch id, when the payload is a batch: receipts name it.
    pub batch_id: Option<uuid::Uuid>,
    pub decisions: Vec<Decision>,
}

impl RoutedMessage {
    pub fn event_count(&self) -> usize {
        self.decisions.len()
    }
}

/// Routes one MQTT message. `max_event_bytes` bounds a single event.
pub fn route(mqtt_topic: &str, payload: &[u8], max_event_bytes: usize) -> RoutedMessage {
    // The whole payload to the dead-letter topic, with no receipt possible
    // beyond the store (the batch id is unknown).
    let whole = |topic_store: Option<&str>, reason: &'static str, detail: String| RoutedMessage {
        topic_store: topic_store.map(str::to_owned),
        batch_id: None,
        decisions: vec![Decision::DeadLetter(DeadLetterEvent {
            id: None,
            reason,
            detail,
            value: 0..payload.len(),
        })],
    };
    let Some(topic_store) = topics::store_id_from_events_topic(mqtt_topic) else {
        return whole(
            None,
            reason::UNEXPECTED_TOPIC,
            format!("{mqtt_topic:?} is not a store events topic"),
        );
    };
    // One UTF-8 check for the whole payload; the events are then read as
    // text, so neither the batch nor any event is validated again.
    let text = match std::str::from_utf8(payload) {
        Ok(t) => t,
        Err(e) => {
            return whole(
                Some(topic_store),
                reason::UNDECODABLE_BATCH,
                format!("not a batch: not UTF-8 ({e})"),
            )
        }
    };
    // Fast path: a batch as agents encode it, every event publishable, read
    // in one pass. Anything else takes the split-then-decode path below,
    // which accepts the same batches and gives each reject its reason.
    if let Some(batch) = CheckedBatch::parse_fast(text) {
        let publishable = batch.store_id == topic_store
            && batch.events.len() <= protocol::batch::MAX_BATCH_EVENTS
            && batch
                .events
                .iter()
                .all(|(env, range)| env.store_id == topic_store && range.len() <= max_event_bytes);
        if publishable {
            return RoutedMessage {
                topic_store: Some(topic_store.to_owned()),
                batch_id: Some(batch.batch_id),
                decisions: batch
                    .events
                    .into_iter()
                    .map(|(env, range)| publish(&env, range))
                    .collect(),
            };
        }
    }
    let batch = match RawBatch::parse_str(text) {
        Ok(b) => b,
        Err(e) => {
            return whole(
                Some(topic_store),
                reason::UNDECODABLE_BATCH,
                format!("not a batch: {e}"),
            )
        }
    };
    let batch_store_ok = batch.store_id == topic_store;
    let decisions = batch
        .events
        .iter()
        .map(|raw| {
            let bytes = raw.get().as_bytes();
            let range = subrange(payload, bytes);
            if !batch_store_ok {
                return dead(
                    peek_id(bytes),
                    reason::STORE_MISMATCH,
                    format!(
                        "batch claims store {:?} on the topic of store {topic_store:?}",
                        batch.store_id
                    ),
                    range,
                );
            }
            route_event(topic_store, raw.get(), range, max_event_bytes)
        })
        .collect();
    RoutedMessage {
        topic_store: Some(topic_store.to_owned()),
        batch_id: Some(batch.batch_id),
        decisions,
    }
}

/// Routes the bytes of one event as if it had arrived alone on `mqtt_topic`,
/// by the same per-event rules as [`route`]. A dead letter of one event holds
/// only that event's bytes (not its batch), so this is how
/// [`crate::replay`] sends it through today's rules again.
pub fn route_one_event(mqtt_topic: &str, bytes: &[u8], max_event_bytes: usize) -> RoutedMessage {
    let whole = |topic_store: Option<&str>, decision: Decision| RoutedMessage {
        topic_store: topic_store.map(str::to_owned),
        batch_id: None,
        decisions: vec![decision],
    };
    let Some(topic_store) = topics::store_id_from_events_topic(mqtt_topic) else {
        return whole(
            None,
            dead(
                peek_id(bytes),
                reason::UNEXPECTED_TOPIC,
                format!("{mqtt_topic:?} is not a store events topic"),
                0..bytes.len(),
            ),
        );
    };
    let decision = match std::str::from_utf8(bytes) {
        Ok(text) => route_event(topic_store, text, 0..bytes.len(), max_event_bytes),
        Err(e) => dead(
            None,
            reason::UNDECODABLE,
            format!("not an envelope: not UTF-8 ({e})"),
            0..bytes.len(),
        ),
    };
    whole(Some(topic_store), decision)
}

fn route_event(
    topic_store: &str,
    text: &str,
    range: Range<usize>,
    max_event_bytes: usize,
) -> Decision {
    let bytes = text.as_bytes();
    if bytes.len() > max_event_bytes {
        return dead(
            peek_id(bytes),
            reason::OVERSIZED,
            format!("{} bytes, limit {max_event_bytes}", bytes.len()),
            range,
        );
    }
    // Fast path: header and body in one pass. Whatever it cannot decide
    // goes through the steps below, which also say what is wrong.
    if let Some(env) = CheckedEnvelope::parse_fast(text) {
        if env.store_id == topic_store {
            return publish(&env, range);
        }
    }
    let env = match RawEnvelope::parse_str(text) {
        Ok(env) => env,
        Err(e) => return dead(peek_id(bytes), e.reason_code(), e.to_string(), range),
    };
    let kind = match env.check_header() {
        Ok(kind) => kind,
        Err(e) => return dead(Some(env.id), e.reason_code(), e.to_string(), range),
    };
    if env.store_id != topic_store {
        return dead(
            Some(env.id),
            reason::STORE_MISMATCH,
            format!(
                "event claims store {:?} on the topic of store {topic_store:?}",
                env.store_id
            ),
            range,
        );
    }
    // Full typed decode of the body: a body Kafka consumers cannot read is
    // dead-lettered here rather than poisoning every consumer downstream.
    match EventBody::from_json(kind, env.body.get()) {
        Err(e) => {
            let e = protocol::EnvelopeError::Body {
                schema: kind.schema_name(),
                source: e,
            };
            return dead(Some(env.id), e.reason_code(), e.to_string(), range);
        }
        Ok(body) => {
            if let Err(e) = protocol::envelope::check_body_version(env.version_u16(), &body) {
                return dead(Some(env.id), e.reason_code(), e.to_string(), range);
            }
        }
    }
    Decision::Publish(PublishEvent {
        id: env.id,
        kind,
        topic: KafkaTopic::for_kind(kind),
        key: topics::partition_key_of(kind, &env),
        value: range,
        schema_version: env.version_u16(),
        recorded_at: env.recorded_at,
    })
}

fn publish(env: &CheckedEnvelope<'_>, value: Range<usize>) -> Decision {
    Decision::Publish(PublishEvent {
        id: env.id,
        kind: env.kind,
        topic: KafkaTopic::for_kind(env.kind),
        key: topics::partition_key(env.kind, env.store_id, &env.source.device_id),
        value,
        schema_version: env.schema_version,
        recorded_at: env.recorded_at,
    })
}

fn dead(
    id: Option<EventId>,
    reason: &'static str,
    detail: String,
    value: Range<usize>,
) -> Decision {
    Decision::DeadLetter(DeadLetterEvent {
        id,
        reason,
        detail,
        value,
    })
}

/// Best-effort event id of bytes that are not a valid envelope, so the
/// receipt can still name the event and the agent stops resending it.
fn peek_id(bytes: &[u8]) -> Option<EventId> {
    #[derive(Deserialize)]
    struct IdOnly {
        id: EventId,
    }
    serde_json::from_slice::<IdOnly>(bytes).ok().map(|x| x.id)
}

/// The position of `inner` (a slice borrowed from `outer`) within `outer`.
fn subrange(outer: &[u8], inner: &[u8]) -> Range<usize> {
    let start = (inner.as_ptr() as usize).saturating_sub(outer.as_ptr() as usize);
    let start = start.min(outer.len());
    let end = (start + inner.len()).min(outer.len());
    start..end
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use proptest::test_runner::TestCaseError;
    use protocol::batch::encode_batch;
    use protocol::samples;

    const MAX: usize = 64 * 1024;

    fn batch_of(store: &str, events: &[Vec<u8>]) -> Vec<u8> {
        encode_batch(
            uuid::Uuid::now_v7(),
            store,
            events.iter().map(|e| e.as_slice()),
        )
    }

    /// One event of every kind, and the version-2 ones too.
    fn sample_json(store: &str) -> Vec<Vec<u8>> {
        samples::envelopes(store)
            .iter()
            .chain(&samples::version_2_envelopes(store))
            .map(|e| e.to_json())
            .collect()
    }

    fn reasons(r: &RoutedMessage) -> Vec<&'static str> {
        r.decisions
            .iter()
            .map(|d| match d {
                Decision::Publish(_) => "publish",
                Decision::DeadLetter(dl) => dl.reason,
            })
            .collect()
    }

    #[test]
    fn the_one_pass_and_the_split_path_publish_alike() {
        let events = sample_json("store-1");
        let encoded = batch_of("store-1", &events);
        // The same batch with a space between events takes the split path.
        let spaced = format!(
            r#"{{"batch_id":"{}","store_id":"store-1","events":[{}]}}"#,
            uuid::Uuid::now_v7(),
            events
                .iter()
                .map(|e| String::from_utf8_lossy(e).into_owned())
                .collect::<Vec<_>>()
                .join(", ")
        );
        let topic = topics::store_events_topic("store-1");
        let published = |payload: &[u8]| -> Vec<String> {
            route(&topic, payload, MAX)
                .decisions
                .iter()
                .map(|d| match d {
                    Decision::Publish(p) => format!(
                        "{} {:?} {:?} {} {} {} {}",
                        p.id,
                        p.kind,
                        p.topic,
                        p.key,
                        p.schema_version,
                        p.recorded_at,
                        String::from_utf8_lossy(&payload[p.value.clone()])
                    ),
                    Decision::DeadLetter(dl) => format!("dead {}", dl.reason),
                })
                .collect()
        };
        assert!(CheckedBatch::parse_fast(std::str::from_utf8(&encoded).expect("utf-8")).is_some());
        assert!(CheckedBatch::parse_fast(&spaced).is_none());
        assert_eq!(published(&encoded), published(spaced.as_bytes()));
        assert_eq!(published(&encoded).len(), events.len());
    }

    #[test]
    fn an_event_labelled_below_its_bodys_version_is_dead_lettered() {
        let events: Vec<Vec<u8>> = samples::version_2_envelopes("s1")
            .iter()
            .map(|e| {
                String::from_utf8(e.to_json())
                    .expect("utf-8")
                    .replacen("\"schema_version\":2", "\"schema_version\":1", 1)
                    .into_bytes()
            })
            .collect();
        let r = route(
            &topics::store_events_topic("s1"),
            &batch_of("s1", &events),
            MAX,
        );
        assert_eq!(reasons(&r), ["invalid_envelope"; 3]);
    }

    #[test]
    fn every_sample_is_published_with_its_original_bytes_topic_and_key() {
        let events = sample_json("store-1");
        let payload = batch_of("store-1", &events);
        let r = route(&topics::store_events_topic("store-1"), &payload, MAX);
        assert_eq!(r.topic_store.as_deref(), Some("store-1"));
        assert_eq!(r.decisions.len(), events.len());
        for (d, original) in r.decisions.iter().zip(&events) {
            let Decision::Publish(p) = d else {
                panic!("expected publish, got {d:?}")
            };
            assert_eq!(&payload[p.value.clone()], original.as_slice());
            assert_eq!(p.topic, KafkaTopic::for_kind(p.kind));
            assert!(p.key.starts_with("store-1"));
        }
    }

    #[test]
    fn a_batch_that_does_not_parse_is_dead_lettered_whole() {
        let r = route(&topics::store_events_topic("s1"), b"{not json", MAX);
        assert_eq!(reasons(&r), ["undecodable_batch"]);
        assert_eq!(r.batch_id, None);
    }

    #[test]
    fn a_batch_that_is_not_utf8_is_dead_lettered_whole_with_its_bytes() {
        let mut payload = batch_of("s1", &sample_json("s1"));
        // A byte that cannot appear in UTF-8, inside one event's string.
        let at = payload.len() / 2;
        payload[at] = 0xff;
        let r = route(&topics::store_events_topic("s1"), &payload, MAX);
        assert_eq!(reasons(&r), ["undecodable_batch"]);
        assert_eq!(r.topic_store.as_deref(), Some("s1"));
        let Decision::DeadLetter(dl) = &r.decisions[0] else {
            panic!("expected a dead letter")
        };
        assert_eq!(dl.value, 0..payload.len());
        assert!(dl.detail.contains("UTF-8"), "{}", dl.detail);
    }

    #[test]
    fn an_event_or_body_in_positional_array_form_is_dead_lettered_not_published() {
        let void_body = r#"["pos-01","op-117","2026-11-24",1043,"2026-11-24T10:16:10+01:00",["pos-01","2026-11-24",1042],"CUSTOMER_CANCELLED"]"#;
        let whole = format!(
            r#"["01a20000-0000-7000-8000-000000000001","storelink.void",1,"s1","eu-west",["pos_terminal","pos-01"],"2026-11-24T10:16:10+01:00","2026-11-24T09:16:10Z",{void_body}]"#
        );
        let body_only = format!(
            r#"{{"id":"01a20000-0000-7000-8000-000000000002","schema":"storelink.void","schema_version":1,"store_id":"s1","region":"eu-west","source":{{"kind":"pos_terminal","device_id":"pos-01"}},"occurred_at":"2026-11-24T10:16:10+01:00","recorded_at":"2026-11-24T09:16:10Z","body":{void_body}}}"#
        );
        let mut events = sample_json("s1");
        events.insert(1, whole.into_bytes());
        events.insert(2, body_only.into_bytes());
        let payload = batch_of("s1", &events);
        let r = route(&topics::store_events_topic("s1"), &payload, MAX);
        let got = reasons(&r);
        assert_eq!(got[1], "undecodable", "{got:?}");
        assert_eq!(got[2], "undecodable_body", "{got:?}");
        assert_eq!(
            got.iter().filter(|r| **r == "publish").count(),
            events.len() - 2
        );
    }

    #[test]
    fn a_batch_of_more_events_than_any_real_one_is_dead_lettered_whole() {
        // 4 MiB of `0,`: two million "events", each of which would have
        // been a dead letter of its own (hundreds of MB per message).
        let elements = 2 * 1024 * 1024 - 64;
        let mut payload =
            br#"{"batch_id":"019a0000-0000-7000-8000-000000000000","store_id":"s1","events":["#
                .to_vec();
        payload.extend(std::iter::repeat_n(&b"0,"[..], elements).flatten());
        payload.extend_from_slice(b"0]}");
        let r = route(&topics::store_events_topic("s1"), &payload, MAX);
        assert_eq!(reasons(&r), ["undecodable_batch"]);
        let Decision::DeadLetter(dl) = &r.decisions[0] else {
            panic!("expected a dead letter")
        };
        assert_eq!(dl.value, 0..payload.len(), "the whole payload, once");
        assert!(
            dl.detail.contains("more than 20000 events"),
            "{}",
            dl.detail
        );
        // At the limit, each element is still judged on its own.
        let mut payload =
            br#"{"batch_id":"019a0000-0000-7000-8000-000000000000","store_id":"s1","events":["#
                .to_vec();
        payload.extend(
            std::iter::repeat_n(&b"0,"[..], protocol::batch::MAX_BATCH_EVENTS - 1).flatten(),
        );
        payload.extend_from_slice(b"0]}");
        let r = route(&topics::store_events_topic("s1"), &payload, MAX);
        assert_eq!(r.decisions.len(), protocol::batch::MAX_BATCH_EVENTS);
    }

    #[test]
    fn an_envelope_of_another_store_is_dead_lettered_and_its_neighbours_published() {
        let mut events = sample_json("store-a");
        events.insert(1, sample_json("store-b").remove(0));
        let payload = batch_of("store-a", &events);
        let r = route(&topics::store_events_topic("store-a"), &payload, MAX);
        let rs = reasons(&r);
        assert_eq!(rs.len(), events.len(), "one decision per event");
        assert_eq!(rs[1], "store_mismatch");
        assert!(rs
            .iter()
            .enumerate()
            .all(|(i, r)| i == 1 || *r == "publish"));
    }

    #[test]
    fn a_batch_claiming_another_store_is_dead_lettered_entirely() {
        let events = sample_json("store-b");
        let payload = batch_of("store-b", &events);
        let r = route(&topics::store_events_topic("store-a"), &payload, MAX);
        assert_eq!(r.decisions.len(), events.len(), "one decision per event");
        assert!(reasons(&r).iter().all(|r| *r == "store_mismatch"));
        assert!(r
            .decisions
            .iter()
            .all(|d| matches!(d, Decision::DeadLetter(DeadLetterEvent { id: Some(_), .. }))));
    }

    #[test]
    fn poison_events_get_their_reason_codes() {
        let good = sample_json("s1").remove(0);
        let text = String::from_utf8(good.clone()).expect("utf8");
        let unknown = text.replace("storelink.sale", "storelink.teleport");
        let newer = text.replace("\"schema_version\":1", "\"schema_version\":99");
        // Past any u16: still a version from the future, not undecodable.
        let far_newer = text.replace("\"schema_version\":1", "\"schema_version\":70000");
        let bad_body = text.replace("\"lines\":", "\"lines_renamed\":");
        let oversized = {
            let mut v: serde_json::Value = serde_json::from_slice(&good).expect("json");
            v["padding"] = serde_json::Value::String("x".repeat(MAX));
            serde_json::to_vec(&v).expect("json")
        };
        let events = vec![
            good.clone(),
            unknown.into_bytes(),
            newer.into_bytes(),
            far_newer.into_bytes(),
            bad_body.into_bytes(),
            oversized,
            br#"{"id":"not-a-uuid"}"#.to_vec(),
            good,
        ];
        let payload = batch_of("s1", &events);
        let r = route(&topics::store_events_topic("s1"), &payload, MAX);
        assert_eq!(
            reasons(&r),
            [
                "publish",
                "unknown_schema",
                "unsupported_schema_version",
                "unsupported_schema_version",
                "undecodable_body",
                "oversized",
                "undecodable",
                "publish"
            ]
        );
        match &r.decisions[3] {
            Decision::DeadLetter(dl) => assert!(
                dl.detail.contains("version 70000 is newer"),
                "the detail names the version as written: {}",
                dl.detail
            ),
            other => panic!("version 70000 was not dead-lettered: {other:?}"),
        }
        // Dead letters keep the offending event's bytes.
        for (d, original) in r.decisions.iter().zip(&events) {
            if let Decision::DeadLetter(dl) = d {
                assert_eq!(&payload[dl.value.clone()], original.as_slice());
            }
        }
    }

    /// What must hold for any payload on a store's topic: every event of a
    /// readable batch gets exactly one decision, every range lies in the
    /// payload, and whatever is published decodes in full as its schema and
    /// belongs to the topic's store.
    fn check_routing_of(store: &str, payload: &[u8]) -> Result<(), TestCaseError> {
        let r = route(&topics::store_events_topic(store), payload, MAX);
        prop_assert_eq!(r.topic_store.as_deref(), Some(store));
        let events_in_batch = std::str::from_utf8(payload)
            .ok()
            .and_then(|t| RawBatch::parse_str(t).ok())
            .map(|b| b.events.len());
        match events_in_batch {
            Some(n) => prop_assert_eq!(r.decisions.len(), n),
            None => prop_assert_eq!(reasons(&r), ["undecodable_batch"]),
        }
        for d in &r.decisions {
            match d {
                Decision::Publish(p) => {
                    prop_assert!(p.value.end <= payload.len());
                    let env = protocol::Envelope::from_json(&payload[p.value.clone()]);
                    prop_assert!(
                        env.is_ok(),
                        "published an event that does not decode: {:?}",
                        env
                    );
                    let env = env.map_err(|e| TestCaseError::fail(e.to_string()))?;
                    prop_assert_eq!(env.store_id.as_str(), store);
                    prop_assert_eq!(env.id, p.id);
                    prop_assert_eq!(env.body.kind(), p.kind);
                    prop_assert_eq!(p.topic, KafkaTopic::for_kind(p.kind));
                }
                Decision::DeadLetter(dl) => {
                    prop_assert!(dl.value.end <= payload.len());
                    prop_assert!(!dl.reason.is_empty());
                }
            }
        }
        Ok(())
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

        #[test]
        fn any_bytes_on_any_topic_are_routed_without_panicking(
            topic in "[a-z/$+#]{0,12}(/events)?",
            payload in proptest::collection::vec(any::<u8>(), 0..300),
        ) {
            let r = route(&topic, &payload, MAX);
            let in_payload = r.decisions.iter().all(|d| match d {
                Decision::Publish(p) => p.value.end <= payload.len(),
                Decision::DeadLetter(dl) => dl.value.end <= payload.len(),
            });
            prop_assert!(in_payload);
        }

        /// Byte edits of a real batch from store-a, some of them turning
        /// "store-a" into "store-b": the bridge never publishes an event that
        /// claims another store or fails its schema, and drops none silently.
        #[test]
        fn a_corrupted_batch_publishes_only_whole_events_of_its_own_store(
            edits in proptest::collection::vec(
                // Mostly printable bytes, so many edits leave the batch readable.
                (any::<prop::sample::Index>(), prop_oneof![9 => 0x20u8..0x7f, 1 => any::<u8>()], 0u8..4),
                1..5,
            ),
        ) {
            let mut events = sample_json("store-a");
            events.extend(sample_json("store-b").into_iter().take(1));
            let mut payload = batch_of("store-a", &events);
            for (at, byte, op) in edits {
                let i = at.index(payload.len());
                match op {
                    0 => payload[i] = byte,
                    1 => payload.insert(i, byte),
                    2 => { payload.remove(i); }
                    // A store id rewritten, the edit a forger would make.
                    _ => if let Some(pos) = find(&payload[i..], b"store-a") {
                        payload[i + pos + 6] = b'b';
                    },
                }
            }
            check_routing_of("store-a", &payload)?;
        }
    }

    fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
        haystack.windows(needle.len()).position(|w| w == needle)
    }

    #[test]
    fn a_message_on_a_non_events_topic_is_dead_lettered() {
        let r = route("storelink/v1/stores/s1/receipts", b"{}", MAX);
        assert_eq!(reasons(&r), ["unexpected_topic"]);
        assert_eq!(r.topic_store, None);
    }
}
