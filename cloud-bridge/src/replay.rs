//! `cloud-bridge dead-letters replay`: dead letters through today's rules again.
//!
//! A dead letter is receipted like a delivery, so the store deletes the
//! event and its only copy is in `retail.dead-letters.v1`. Some reasons are
//! the bridge's own doing and can be cured: a bridge that could not yet read
//! a schema version (`unsupported_schema_version`, a rollback VERSIONING.md
//! rule 4 forbids but nothing prevents), a body rule since fixed, a topic
//! since given a larger `max.message.bytes` (`kafka_rejected`). Once the
//! cause is gone, replay reads the selected dead letters and routes each one
//! with [`crate::routing`], exactly as if its bytes had just arrived on the
//! MQTT topic they came from:
//! * what now routes to a domain topic is published there (same key and
//!   headers as the bridge gives it, plus [`headers::REPLAYED_FROM`]);
//! * what still fails stays where it is, counted by its reason now. The
//!   rules are the bridge's, so a store writing as another (`store_mismatch`)
//!   can never be replayed into a domain topic; and a `store_mismatch`
//!   dead letter is never replayed at all, since the batch header that named
//!   another store is not in it (only the event's bytes are).
//!
//! Progress is the consumer group's committed offset, committed only after
//! Kafka has every record published for the dead letters before it, so a
//! replay that is stopped or fails part-way resumes where it left off. A
//! crash between a delivery and its commit publishes those records again on
//! the next run: at-least-once, like the bridge, and the event id tells
//! consumers. The default group is named after the selection, so replaying
//! the same selection again reads only new dead letters, and a different
//! selection starts from the oldest dead letter Kafka still keeps. A
//! replayed event reaches its topic after later events of its stream.

use std::collections::BTreeMap;
use std::time::Duration;

use bytes::Bytes;
use protocol::topics::{self, headers, KafkaTopic};
use rdkafka::client::ClientContext;
use rdkafka::config::{ClientConfig, RDKafkaLogLevel};
use rdkafka::consumer::{CommitMode, Consumer, ConsumerContext, StreamConsumer};
use rdkafka::error::KafkaError;
use rdkafka::message::{Headers, Message};
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::{Offset, TopicPartitionList};
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::kafka_log::KafkaLog;
use crate::kafka_sink::{DeliveryReceiver, KafkaSink, OutRecord, SinkError};
use crate::metrics::Metrics;
use crate::pipeline::domain_record;
use crate::routing::{self, reason, Decision};

/// Which dead letters to replay.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Selection {
    /// Dead letters with one of these reasons (at least one).
    pub reasons: Vec<String>,
    /// Only those that came from this store's events topic.
    pub store: Option<String>,
}

impl Selection {
    /// The consumer group that keeps this selection's progress.
    pub fn default_group(&self) -> String {
        let mut reasons = self.reasons.clone();
        reasons.sort();
        reasons.dedup();
        let mut group = format!("storelink-dead-letter-replay.{}", reasons.join("+"));
        if let Some(store) = &self.store {
            group.push('.');
            group.push_str(store);
        }
        group
    }

    fn selects(&self, dl: &DeadLetter<'_>) -> bool {
        let reason_ok = dl
            .reason
            .is_some_and(|r| self.reasons.iter().any(|s| s == r));
        let store_ok = match &self.store {
            None => true,
            Some(want) => dl
                .source_topic
                .and_then(topics::store_id_from_events_topic)
                .is_some_and(|s| s == want),
        };
        reason_ok && store_ok
    }
}

/// One dead letter as read back from Kafka.
#[derive(Debug, Clone)]
pub struct DeadLetter<'a> {
    pub partition: i32,
    pub offset: i64,
    pub reason: Option<&'a str>,
    pub source_topic: Option<&'a str>,
    pub value: Bytes,
}

/// What replay does with one dead letter.
#[derive(Debug)]
pub enum Plan {
    NotSelected,
    Route {
        /// Records for the domain topics.
        publish: Vec<OutRecord>,
        /// Events (or a whole payload) that still fail, by today's reason.
        still_dead: Vec<&'static str>,
    },
}

/// Pure: the plan for `dl` under today's routing rules.
pub fn plan(dl: &DeadLetter<'_>, selection: &Selection, max_event_bytes: usize) -> Plan {
    if !selection.selects(dl) {
        return Plan::NotSelected;
    }
    if dl.reason == Some(reason::STORE_MISMATCH) {
        // The mismatch may have been the batch's header, which the dead
        // letter does not keep: the event alone could look like its topic's.
        return Plan::Route {
            publish: Vec::new(),
            still_dead: vec![reason::STORE_MISMATCH],
        };
    }
    let Some(source_topic) = dl.source_topic else {
        // Without its topic the store that sent it is unknown, and the
        // store is what routing checks the event against.
        return Plan::Route {
            publish: Vec::new(),
            still_dead: vec![reason::UNEXPECTED_TOPIC],
        };
    };
    let whole_message = dl
        .reason
        .is_some_and(|r| reason::WHOLE_MESSAGE.contains(&r));
    let routed = if whole_message {
        routing::route(source_topic, &dl.value, max_event_bytes)
    } else {
        routing::route_one_event(source_topic, &dl.value, max_event_bytes)
    };
    let store = Bytes::from(routed.topic_store.unwrap_or_default().into_bytes());
    let from = Bytes::from(format!(
        "{}/{}/{}",
        KafkaTopic::DeadLetters.name(),
        dl.partition,
        dl.offset
    ));
    let mut publish = Vec::new();
    let mut still_dead = Vec::new();
    for decision in routed.decisions {
        match decision {
            Decision::Publish(mut ev) => {
                let mut rec = domain_record(&mut ev, &dl.value, &store);
                rec.headers.push((headers::REPLAYED_FROM, from.clone()));
                publish.push(rec);
            }
            Decision::DeadLetter(d) => still_dead.push(d.reason),
        }
    }
    Plan::Route {
        publish,
        still_dead,
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ReplayError {
    #[error("creating the Kafka consumer: {0}")]
    Consumer(#[source] KafkaError),
    #[error("reading {topic} from Kafka: {source}")]
    Read {
        topic: &'static str,
        #[source]
        source: KafkaError,
    },
    #[error("topic {0} does not exist (run `cloud-bridge topics ensure`)")]
    NoTopic(&'static str),
    #[error(
        "no dead letter arrived for {0:?} although Kafka holds more; is the broker reachable?"
    )]
    Stalled(Duration),
    #[error(transparent)]
    Sink(#[from] SinkError),
    #[error("committing the replay's progress for group {group}: {source}")]
    Commit {
        group: String,
        #[source]
        source: KafkaError,
    },
}

/// What a replay did.
#[derive(Debug, Default)]
pub struct Report {
    pub group: String,
    /// Dead letters read (selected or not).
    pub read: u64,
    pub not_selected: u64,
    /// Records published (or, in a dry run, that would be), by topic.
    pub replayed: BTreeMap<&'static str, u64>,
    /// Events or payloads that still fail, by today's reason.
    pub still_dead: BTreeMap<&'static str, u64>,
    /// Next offset per partition, committed for the group (none in a dry run).
    pub committed: BTreeMap<i32, i64>,
}

/// How many records to hand to Kafka before waiting for their reports and
/// committing: bounds memory (a dead letter can be 1 MB) and the records a
/// crash would publish twice.
const CHUNK_RECORDS: usize = 256;
const CHUNK_BYTES: usize = 16 * 1024 * 1024;
/// How long a read may wait while Kafka still holds dead letters for us.
const STALL: Duration = Duration::from_secs(30);

struct ReplayContext(&'static KafkaLog);

static REPLAY_LOG: std::sync::LazyLock<KafkaLog> =
    std::sync::LazyLock::new(|| KafkaLog::new("replay"));

impl ClientContext for ReplayContext {
    fn log(&self, level: RDKafkaLogLevel, facility: &str, message: &str) {
        self.0.log(level, facility, message);
    }

    fn error(&self, error: KafkaError, reason: &str) {
        self.0.error(&error, reason);
    }
}

impl ConsumerContext for ReplayContext {}

/// Replays the dead letters `selection` picks, from the group's committed
/// offset (the oldest kept dead letter for a new group) to the end Kafka
/// had when the replay started. `dry_run` publishes and commits nothing.
pub async fn replay(
    cfg: &Config,
    selection: &Selection,
    group: &str,
    dry_run: bool,
    cancel: &CancellationToken,
) -> Result<Report, ReplayError> {
    let topic = KafkaTopic::DeadLetters.name();
    let mut cc = ClientConfig::new();
    cc.set("bootstrap.servers", &cfg.kafka.bootstrap);
    for (k, v) in &cfg.kafka.connection {
        cc.set(k, v);
    }
    cc.set("group.id", group)
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("auto.offset.reset", "earliest");
    let consumer: StreamConsumer<ReplayContext> = cc
        .create_with_context(ReplayContext(&REPLAY_LOG))
        .map_err(ReplayError::Consumer)?;
    let read = |source| ReplayError::Read { topic, source };

    // Where each partition starts (the group's offset) and ends (the end
    // Kafka has now: dead letters written during the replay wait for the
    // next one, so a bridge dead-lettering steadily cannot keep it running).
    let timeout = Duration::from_secs(30);
    let md = consumer
        .fetch_metadata(Some(topic), timeout)
        .map_err(read)?;
    let partitions: Vec<i32> = md
        .topics()
        .iter()
        .filter(|t| t.name() == topic && t.error().is_none())
        .flat_map(|t| t.partitions().iter().map(|p| p.id()))
        .collect();
    if partitions.is_empty() {
        return Err(ReplayError::NoTopic(topic));
    }
    let mut wanted = TopicPartitionList::new();
    for &p in &partitions {
        wanted.add_partition(topic, p);
    }
    let committed = with_coordinator(|| consumer.committed_offsets(wanted.clone(), timeout))
        .await
        .map_err(read)?;
    let mut next: BTreeMap<i32, i64> = BTreeMap::new();
    let mut end: BTreeMap<i32, i64> = BTreeMap::new();
    let mut assignment = TopicPartitionList::new();
    for &p in &partitions {
        let (low, high) = consumer.fetch_watermarks(topic, p, timeout).map_err(read)?;
        let elem = committed.find_partition(topic, p);
        // rdkafka returns a partition whose committed offset could not be
        // read inside an Ok list; starting it from its low watermark would
        // replay everything the group already replayed.
        if let Some(Err(e)) = elem.as_ref().map(|e| e.error()) {
            return Err(read(e));
        }
        let start = match elem.map(|e| e.offset()) {
            Some(Offset::Offset(o)) => o.max(low),
            _ => low,
        };
        next.insert(p, start);
        end.insert(p, high);
        assignment
            .add_partition_offset(topic, p, Offset::Offset(start))
            .map_err(read)?;
    }
    consumer.assign(&assignment).map_err(read)?;

    let sink = if dry_run {
        None
    } else {
        Some(KafkaSink::new(
            &cfg.kafka,
            std::sync::Arc::new(Metrics::new()),
        )?)
    };
    let mut report = Report {
        group: group.to_owned(),
        ..Report::default()
    };
    let mut pending: Vec<(OutRecord, DeliveryReceiver)> = Vec::new();
    let mut pending_bytes = 0usize;
    let unfinished =
        |next: &BTreeMap<i32, i64>| next.iter().any(|(p, n)| end.get(p).is_some_and(|e| n < e));

    while unfinished(&next) {
        let msg = tokio::select! {
            _ = cancel.cancelled() => return Err(SinkError::Cancelled.into()),
            r = tokio::time::timeout(STALL, consumer.recv()) => match r {
                Ok(r) => r.map_err(read)?,
                Err(_) => {
                    // Offsets that hold no record (a transaction marker, a
                    // record deleted meanwhile) move the position without a
                    // message: done if the position has reached the end.
                    let position = consumer.position().map_err(read)?;
                    for e in position.elements_for_topic(topic) {
                        if let Offset::Offset(o) = e.offset() {
                            // Never past this run's end: records beyond it
                            // were skipped, not replayed.
                            let o = end.get(&e.partition()).map_or(o, |end| o.min(*end));
                            let n = next.entry(e.partition()).or_insert(o);
                            *n = (*n).max(o);
                        }
                    }
                    if unfinished(&next) {
                        return Err(ReplayError::Stalled(STALL));
                    }
                    break;
                }
            },
        };
        let (p, offset) = (msg.partition(), msg.offset());
        if end.get(&p).is_none_or(|e| offset >= *e) {
            continue;
        }
        let mut reason_h = None;
        let mut source_h = None;
        if let Some(hs) = msg.headers() {
            for h in hs.iter() {
                let v = h.value.and_then(|v| std::str::from_utf8(v).ok());
                match h.key {
                    k if k == headers::DLQ_REASON => reason_h = v,
                    k if k == headers::DLQ_SOURCE_TOPIC => source_h = v,
                    _ => {}
                }
            }
        }
        let dl = DeadLetter {
            partition: p,
            offset,
            reason: reason_h,
            source_topic: source_h,
            value: Bytes::copy_from_slice(msg.payload().unwrap_or_default()),
        };
        report.read += 1;
        match plan(&dl, selection, cfg.limits.max_event_bytes) {
            Plan::NotSelected => report.not_selected += 1,
            Plan::Route {
                publish,
                still_dead,
            } => {
                for r in still_dead {
                    *report.still_dead.entry(r).or_default() += 1;
                }
                for rec in publish {
                    let Some(sink) = &sink else {
                        *report.replayed.entry(rec.topic).or_default() += 1;
                        continue;
                    };
                    match sink.enqueue(&rec, cancel).await {
                        Ok(rx) => {
                            pending_bytes += rec.value.len();
                            pending.push((rec, rx));
                        }
                        Err(SinkError::Rejected(e)) => rejected(&mut report, &rec, &e),
                        Err(e) => return Err(e.into()),
                    }
                }
            }
        }
        next.insert(p, offset + 1);
        if pending.len() >= CHUNK_RECORDS || pending_bytes >= CHUNK_BYTES {
            settle(sink.as_ref(), &mut pending, &mut report, cancel).await?;
            pending_bytes = 0;
            commit(&consumer, &next, &mut report, dry_run).await?;
        }
    }
    settle(sink.as_ref(), &mut pending, &mut report, cancel).await?;
    commit(&consumer, &next, &mut report, dry_run).await?;
    Ok(report)
}

/// Runs a group-offset request, again while the group's coordinator is
/// still being found or loaded: on a young cluster the first request of a
/// new group meets `NotCoordinator` while `__consumer_offsets` is created.
async fn with_coordinator<T>(
    mut request: impl FnMut() -> Result<T, KafkaError>,
) -> Result<T, KafkaError> {
    let deadline = tokio::time::Instant::now() + STALL;
    loop {
        match request() {
            Err(e)
                if matches!(
                    e.rdkafka_error_code(),
                    Some(
                        RDKafkaErrorCode::NotCoordinator
                            | RDKafkaErrorCode::CoordinatorNotAvailable
                            | RDKafkaErrorCode::CoordinatorLoadInProgress
                    )
                ) && tokio::time::Instant::now() < deadline =>
            {
                tracing::info!(error = %e, "waiting for the consumer group's coordinator");
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            r => return r,
        }
    }
}

/// Waits until Kafka has every pending record (the sink retries failures).
async fn settle(
    sink: Option<&KafkaSink>,
    pending: &mut Vec<(OutRecord, DeliveryReceiver)>,
    report: &mut Report,
    cancel: &CancellationToken,
) -> Result<(), ReplayError> {
    let Some(sink) = sink else {
        return Ok(());
    };
    for (rec, rx) in pending.drain(..) {
        match sink.settle(&rec, rx, cancel).await {
            Ok(_) => *report.replayed.entry(rec.topic).or_default() += 1,
            Err(SinkError::Rejected(e)) => rejected(report, &rec, &e),
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

/// Kafka refuses the record for good (still too large for its topic): it
/// stays a dead letter, as the bridge would have left it.
fn rejected(report: &mut Report, rec: &OutRecord, e: &KafkaError) {
    tracing::warn!(error = %e, topic = rec.topic, "Kafka refused a replayed record; it stays a dead letter");
    *report.still_dead.entry(reason::KAFKA_REJECTED).or_default() += 1;
}

async fn commit(
    consumer: &StreamConsumer<ReplayContext>,
    next: &BTreeMap<i32, i64>,
    report: &mut Report,
    dry_run: bool,
) -> Result<(), ReplayError> {
    if dry_run {
        return Ok(());
    }
    let topic = KafkaTopic::DeadLetters.name();
    let mut tpl = TopicPartitionList::new();
    for (&p, &n) in next {
        tpl.add_partition_offset(topic, p, Offset::Offset(n))
            .map_err(|source| ReplayError::Read { topic, source })?;
    }
    with_coordinator(|| consumer.commit(&tpl, CommitMode::Sync))
        .await
        .map_err(|source| ReplayError::Commit {
            group: report.group.clone(),
            source,
        })?;
    report.committed.clone_from(next);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use protocol::batch::encode_batch;
    use protocol::samples;

    const MAX: usize = 64 * 1024;

    fn selection(reasons: &[&str], store: Option<&str>) -> Selection {
        Selection {
            reasons: reasons.iter().map(|r| (*r).to_owned()).collect(),
            store: store.map(str::to_owned),
        }
    }

    fn letter<'a>(reason: &'a str, source: &'a str, value: Vec<u8>) -> DeadLetter<'a> {
        DeadLetter {
            partition: 2,
            offset: 41,
            reason: Some(reason),
            source_topic: Some(source),
            value: Bytes::from(value),
        }
    }

    /// The reasons of a plan that publishes nothing.
    fn only_dead(p: &Plan) -> Vec<&'static str> {
        let (publish, still_dead) = published(p);
        assert!(publish.is_empty(), "publishes {publish:?}");
        still_dead.to_vec()
    }

    fn published(p: &Plan) -> (&[OutRecord], &[&'static str]) {
        match p {
            Plan::Route {
                publish,
                still_dead,
            } => (publish, still_dead),
            Plan::NotSelected => panic!("not selected"),
        }
    }

    #[test]
    fn a_readable_event_is_published_with_the_bridges_key_and_headers_and_its_origin() {
        let env = samples::envelopes("store-7").remove(0);
        let bytes = env.to_json();
        let source = topics::store_events_topic("store-7");
        let dl = letter("unsupported_schema_version", &source, bytes.clone());
        let p = plan(&dl, &selection(&["unsupported_schema_version"], None), MAX);
        let (publish, still_dead) = published(&p);
        assert!(still_dead.is_empty());
        assert_eq!(publish.len(), 1);
        let rec = &publish[0];
        assert_eq!(rec.topic, KafkaTopic::for_kind(env.schema).name());
        assert_eq!(&rec.value[..], &bytes[..], "the event's bytes, unchanged");
        let key = topics::partition_key(env.schema, "store-7", &env.source.device_id);
        assert_eq!(rec.key.as_deref(), Some(key.as_str()));
        let header = |name: &str| {
            rec.headers
                .iter()
                .find(|(k, _)| *k == name)
                .map(|(_, v)| String::from_utf8_lossy(v).into_owned())
        };
        assert_eq!(header(headers::EVENT_ID), Some(env.id.to_string()));
        assert_eq!(header(headers::STORE_ID).as_deref(), Some("store-7"));
        assert_eq!(
            header(headers::REPLAYED_FROM).as_deref(),
            Some("retail.dead-letters.v1/2/41")
        );
    }

    #[test]
    fn a_store_writing_as_another_stays_dead_even_when_selected() {
        let bytes = samples::envelopes("store-b").remove(0).to_json();
        let source = topics::store_events_topic("store-a");
        let dl = letter("store_mismatch", &source, bytes);
        let p = plan(&dl, &selection(&["store_mismatch"], None), MAX);
        assert_eq!(only_dead(&p), ["store_mismatch"]);
    }

    /// A batch whose header named store B on store A's topic: each event is
    /// dead-lettered as `store_mismatch`, though the event itself says A.
    /// Replayed alone it would look fine: it stays dead.
    #[test]
    fn a_store_mismatch_of_the_batch_header_stays_dead_too() {
        let event = samples::envelopes("store-a").remove(0).to_json();
        let source = topics::store_events_topic("store-a");
        let live = crate::routing::route(
            &source,
            &protocol::batch::encode_batch(uuid::Uuid::now_v7(), "store-b", [event.as_slice()]),
            MAX,
        );
        assert!(live
            .decisions
            .iter()
            .all(|d| matches!(d, crate::routing::Decision::DeadLetter(dl) if dl.reason == "store_mismatch")));
        let dl = letter("store_mismatch", &source, event);
        let p = plan(&dl, &selection(&["store_mismatch"], None), MAX);
        assert_eq!(only_dead(&p), ["store_mismatch"]);
    }

    #[test]
    fn what_is_still_unreadable_stays_dead_with_todays_reason() {
        let env = samples::envelopes("store-7").remove(0);
        let newer = String::from_utf8(env.to_json()).expect("utf8").replacen(
            "\"schema_version\":1",
            "\"schema_version\":999",
            1,
        );
        let source = topics::store_events_topic("store-7");
        let sel = selection(&["unsupported_schema_version", "undecodable"], None);
        let p = plan(
            &letter("unsupported_schema_version", &source, newer.into_bytes()),
            &sel,
            MAX,
        );
        assert_eq!(only_dead(&p), ["unsupported_schema_version"]);
        let p = plan(&letter("undecodable", &source, vec![0xff, 0xfe]), &sel, MAX);
        assert_eq!(only_dead(&p), ["undecodable"]);
    }

    #[test]
    fn a_whole_payload_is_routed_as_the_batch_it_was() {
        let events: Vec<Vec<u8>> = samples::envelopes("store-7")
            .iter()
            .map(|e| e.to_json())
            .collect();
        let batch = encode_batch(
            uuid::Uuid::now_v7(),
            "store-7",
            events.iter().map(Vec::as_slice),
        );
        let source = topics::store_events_topic("store-7");
        let p = plan(
            &letter("undecodable_batch", &source, batch),
            &selection(&["undecodable_batch"], None),
            MAX,
        );
        let (publish, still_dead) = published(&p);
        assert!(still_dead.is_empty());
        let values: Vec<&[u8]> = publish.iter().map(|r| &r.value[..]).collect();
        let expected: Vec<&[u8]> = events.iter().map(Vec::as_slice).collect();
        assert_eq!(values, expected);
    }

    #[test]
    fn selection_is_by_reason_and_by_the_store_of_the_source_topic() {
        let bytes = samples::envelopes("store-7").remove(0).to_json();
        let source = topics::store_events_topic("store-7");
        let dl = letter("kafka_rejected", &source, bytes);
        for (sel, selected) in [
            (selection(&["kafka_rejected"], None), true),
            (selection(&["kafka_rejected"], Some("store-7")), true),
            (selection(&["kafka_rejected"], Some("store-8")), false),
            (selection(&["oversized"], None), false),
        ] {
            let p = plan(&dl, &sel, MAX);
            assert_eq!(!matches!(p, Plan::NotSelected), selected, "{sel:?}");
        }
        let no_reason = DeadLetter {
            reason: None,
            ..dl.clone()
        };
        assert!(matches!(
            plan(&no_reason, &selection(&["kafka_rejected"], None), MAX),
            Plan::NotSelected
        ));
        let no_topic = DeadLetter {
            source_topic: None,
            ..dl
        };
        let p = plan(&no_topic, &selection(&["kafka_rejected"], None), MAX);
        assert_eq!(only_dead(&p), ["unexpected_topic"]);
    }

    #[test]
    fn the_group_is_named_after_the_selection_in_any_order() {
        let a = selection(&["b", "a", "a"], Some("s1")).default_group();
        let b = selection(&["a", "b"], Some("s1")).default_group();
        assert_eq!(a, b);
        assert_eq!(a, "storelink-dead-letter-replay.a+b.s1");
        assert_ne!(a, selection(&["a", "b"], None).default_group());
    }

    #[test]
    fn undecodable_is_the_envelope_parsers_code() {
        let e = serde_json::from_str::<u8>("x").expect_err("not a number");
        assert_eq!(
            reason::UNDECODABLE,
            protocol::EnvelopeError::Malformed(e).reason_code()
        );
    }
}
