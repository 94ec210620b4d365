//! Writes records to Kafka and does not give up on them.
//!
//! * librdkafka retries inside `message.timeout.ms` on its own; with
//!   `enable.idempotence=true` those retries neither duplicate nor reorder.
//! * A delivery that still fails (timeout, broker down for longer) is handed
//!   back to us: we produce it again after a capped exponential backoff,
//!   forever, until it is delivered or the bridge shuts down. Nothing is
//!   dropped, and the MQTT message is not acknowledged meanwhile, so a crash
//!   leaves it with the broker. A timed-out record may have been written
//!   anyway; the re-send may duplicate it, which the event id resolves
//!   downstream (at-least-once).
//! * `QueueFull` (librdkafka's local queue) is backpressure: wait and retry.
//! * Permanent refusals (record too large, invalid record) are returned as
//!   [`SinkError::Rejected`] so the caller can dead-letter instead of looping.
//!
//! Delivery reports are counted per MQTT message, not awaited per record: the
//! records of one message share a [`MessageDeliveries`]; librdkafka's
//! delivery-report thread (a [`ThreadedProducer`] with [`SinkContext`])
//! decrements its counter and notes every failed record, and the message's
//! task wakes once, when the last report is in. Failed records then go
//! again together, in the message's order ([`KafkaSink::redeliver_in_order`]:
//! each retried after its own randomized pause, a store's void could land
//! ahead of its sale). A report
//! that never comes (the producer is torn down) counts as a failure, never
//! as a delivery.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use backoff::backoff::Backoff;
use bytes::Bytes;
use rdkafka::client::ClientContext;
use rdkafka::config::{ClientConfig, RDKafkaLogLevel};
use rdkafka::error::KafkaError;
use rdkafka::message::{Header, Message, OwnedHeaders};
use rdkafka::producer::{BaseRecord, DeliveryResult, Producer, ProducerContext, ThreadedProducer};
use rdkafka::types::RDKafkaErrorCode;
use tokio::sync::{oneshot, Notify};
use tokio_util::sync::CancellationToken;

use crate::config::KafkaConfig;
use crate::kafka_log::KafkaLog;
use crate::metrics::Metrics;

/// A record ready to produce; cheap to clone (the value shares the MQTT payload).
#[derive(Debug, Clone)]
pub struct OutRecord {
    pub topic: &'static str,
    pub key: Option<String>,
    pub value: Bytes,
    pub headers: Vec<(&'static str, Bytes)>,
}

#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    #[error("creating the Kafka producer: {0}")]
    Create(#[source] KafkaError),
    #[error("Kafka refused the record permanently: {0}")]
    Rejected(#[source] KafkaError),
    #[error("shutting down before the record was delivered")]
    Cancelled,
    /// librdkafka raised a fatal error (e.g. an idempotence invariant broke):
    /// this producer instance can never deliver again. The process must
    /// restart; unacked MQTT messages are redelivered to the new one.
    #[error("the Kafka producer hit a fatal error: {0}")]
    Fatal(String),
}

/// Where a record landed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Delivered {
    pub partition: i32,
    pub offset: i64,
}

/// Why a record of a message was not delivered: the report's error, or
/// `None` when its report was lost (producer closing).
pub type Failure = Option<KafkaError>;

/// The delivery reports of one MQTT message's records.
pub struct MessageDeliveries {
    started: Instant,
    /// Records whose report is outstanding, plus one until [`Self::seal`].
    remaining: AtomicUsize,
    failed: Mutex<Vec<(u32, Failure)>>,
    done: Notify,
}

impl MessageDeliveries {
    pub fn new() -> Arc<MessageDeliveries> {
        Arc::new(MessageDeliveries {
            started: Instant::now(),
            remaining: AtomicUsize::new(1),
            failed: Mutex::new(Vec::new()),
            done: Notify::new(),
        })
    }

    fn settle_one(&self) {
        if self.remaining.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.done.notify_one();
        }
    }

    /// Every record of the message has been handed to librdkafka.
    pub fn seal(&self) {
        self.settle_one();
    }

    /// Waits (after [`Self::seal`]) for every report; returns the failed
    /// records by index.
    pub async fn wait(&self, cancel: &CancellationToken) -> Result<Vec<(u32, Failure)>, SinkError> {
        tokio::select! {
            _ = cancel.cancelled() => return Err(SinkError::Cancelled),
            _ = self.done.notified() => {}
        }
        Ok(self
            .failed
            .lock()
            .map(|mut f| std::mem::take(&mut *f))
            .unwrap_or_default())
    }
}

/// One record of a message in librdkafka's hands. Dropping it counts the
/// record as reported; if no report was seen (and it was never accepted by
/// librdkafka's queue... which `unsent` says), it counts as lost.
pub struct BatchTicket {
    batch: Arc<MessageDeliveries>,
    idx: u32,
    reported: bool,
    unsent: bool,
}

impl Drop for BatchTicket {
    fn drop(&mut self) {
        if !self.reported && !self.unsent {
            if let Ok(mut f) = self.batch.failed.lock() {
                f.push((self.idx, None));
            }
        }
        self.batch.settle_one();
    }
}

type Report = Result<Delivered, KafkaError>;

/// What librdkafka hands back with a delivery report.
pub enum Ticket {
    /// A record of a message (see [`MessageDeliveries`]).
    Batch(BatchTicket),
    /// A record awaited on its own (retries, dead letters, second copies).
    Single {
        tx: oneshot::Sender<Report>,
        started: Instant,
    },
}

/// The producer's context: routes delivery reports to their waiters.
pub struct SinkContext {
    metrics: Arc<Metrics>,
    /// Whether the producer can write: with idempotence, only once it holds
    /// a producer id. A freshly started broker answers "coordinator load in
    /// progress" for a while, and until then every record waits.
    producer_ready: Arc<AtomicBool>,
    log: KafkaLog,
}

impl ClientContext for SinkContext {
    fn log(&self, level: RDKafkaLogLevel, facility: &str, message: &str) {
        self.log.log(level, facility, message);
    }

    fn error(&self, error: KafkaError, reason: &str) {
        self.log.error(&error, reason);
    }

    /// librdkafka's statistics (`statistics.interval.ms`), read for one
    /// field only, so a statistics layout this crate does not know cannot
    /// keep the bridge unready.
    fn stats_raw(&self, statistics: &[u8]) {
        #[derive(serde::Deserialize)]
        struct Stats {
            eos: Option<Eos>,
        }
        #[derive(serde::Deserialize)]
        struct Eos {
            idemp_state: String,
        }
        match serde_json::from_slice::<Stats>(statistics) {
            Ok(Stats { eos: Some(eos) }) => {
                let ready = eos.idemp_state == "Assigned";
                if self.producer_ready.swap(ready, Ordering::Relaxed) != ready {
                    tracing::info!(state = %eos.idemp_state, ready, "Kafka idempotent producer state");
                }
            }
            Ok(Stats { eos: None }) => {}
            Err(e) => tracing::debug!(error = %e, "unreadable librdkafka statistics"),
        }
    }
}

impl ProducerContext for SinkContext {
    type DeliveryOpaque = Box<Ticket>;

    fn delivery(&self, result: &DeliveryResult<'_>, ticket: Box<Ticket>) {
        let report = match result {
            Ok(m) => Ok(Delivered {
                partition: m.partition(),
                offset: m.offset(),
            }),
            Err((e, _)) => Err(e.clone()),
        };
        match *ticket {
            Ticket::Batch(mut t) => {
                t.reported = true;
                match report {
                    Ok(_) => self
                        .metrics
                        .produce_latency
                        .observe(t.batch.started.elapsed().as_secs_f64()),
                    Err(e) => {
                        if let Ok(mut f) = t.batch.failed.lock() {
                            f.push((t.idx, Some(e)));
                        }
                    }
                }
            }
            Ticket::Single { tx, started } => {
                if report.is_ok() {
                    self.metrics
                        .produce_latency
                        .observe(started.elapsed().as_secs_f64());
                }
                let _ = tx.send(report);
            }
        }
    }
}

pub type SinkProducer = ThreadedProducer<SinkContext>;

/// The delivery report of a record produced with [`KafkaSink::enqueue`].
pub type DeliveryReceiver = oneshot::Receiver<Report>;

pub struct KafkaSink {
    producer: SinkProducer,
    producer_ready: Arc<AtomicBool>,
    retry_max_backoff: Duration,
    metrics: Arc<Metrics>,
    /// A refusal repeats about ten times a second per record waiting.
    refusals: crate::log_limit::LogLimiter,
}

impl KafkaSink {
    pub fn new(cfg: &KafkaConfig, metrics: Arc<Metrics>) -> Result<KafkaSink, SinkError> {
        let mut cc = ClientConfig::new();
        cc.set("bootstrap.servers", &cfg.bootstrap);
        let idempotent = cfg
            .producer
            .get("enable.idempotence")
            .is_some_and(|v| v == "true");
        if idempotent {
            // How soon readiness sees the producer id (see SinkContext).
            cc.set("statistics.interval.ms", "500");
        }
        for (k, v) in &cfg.producer {
            cc.set(k, v);
        }
        let producer_ready = Arc::new(AtomicBool::new(!idempotent));
        let producer: SinkProducer = cc
            .create_with_context(SinkContext {
                metrics: Arc::clone(&metrics),
                producer_ready: Arc::clone(&producer_ready),
                log: KafkaLog::new("producer"),
            })
            .map_err(SinkError::Create)?;
        Ok(KafkaSink {
            producer,
            producer_ready,
            retry_max_backoff: cfg.retry_max_backoff,
            metrics,
            refusals: crate::log_limit::LogLimiter::new(Duration::from_secs(10)),
        })
    }

    pub fn producer(&self) -> &SinkProducer {
        &self.producer
    }

    /// Whether records can be written now: the idempotent producer holds its
    /// producer id (always true without idempotence).
    pub fn producer_ready(&self) -> bool {
        self.producer_ready.load(Ordering::Relaxed)
    }

    /// Hands `rec` to librdkafka with the ticket `make` builds, waiting while
    /// its local queue is full. `unsend` disarms a ticket librdkafka refused.
    async fn produce(
        &self,
        rec: &OutRecord,
        cancel: &CancellationToken,
        mut make: impl FnMut() -> Ticket,
    ) -> Result<(), SinkError> {
        let mut wait = Duration::from_millis(1);
        loop {
            let mut headers = OwnedHeaders::new_with_capacity(rec.headers.len());
            for (k, v) in &rec.headers {
                headers = headers.insert(Header {
                    key: k,
                    value: Some(&v[..]),
                });
            }
            let mut br: BaseRecord<'_, str, [u8], Box<Ticket>> =
                BaseRecord::with_opaque_to(rec.topic, Box::new(make()))
                    .payload(&rec.value[..])
                    .headers(headers);
            if let Some(k) = &rec.key {
                br = br.key(k.as_str());
            }
            let e = match self.producer.send(br) {
                Ok(()) => return Ok(()),
                Err((e, br)) => {
                    if let Ticket::Batch(mut t) = *br.delivery_opaque {
                        t.unsent = true;
                    }
                    e
                }
            };
            if is_permanent(&e) {
                return Err(SinkError::Rejected(e));
            }
            if let Some((code, reason)) = self.producer.client().fatal_error() {
                return Err(SinkError::Fatal(format!("{code}: {reason}")));
            }
            if !matches!(e.rdkafka_error_code(), Some(RDKafkaErrorCode::QueueFull)) {
                self.metrics.kafka_records_refused.inc();
                let cause = format!("{}/{e}", rec.topic);
                if let Some(held_back) = self.refusals.admit(&cause, Instant::now()) {
                    tracing::warn!(error = %e, topic = rec.topic, repeats_held_back = held_back,
                        "Kafka client refused a record; retrying");
                }
            }
            tokio::select! {
                _ = cancel.cancelled() => return Err(SinkError::Cancelled),
                _ = tokio::time::sleep(wait) => {}
            }
            wait = (wait * 2).min(Duration::from_millis(100));
        }
    }

    /// Hands `rec`, record `idx` of a message, to librdkafka; its report goes
    /// to `batch`. Waits while the local queue is full.
    pub async fn enqueue_in(
        &self,
        rec: &OutRecord,
        batch: &Arc<MessageDeliveries>,
        idx: u32,
        cancel: &CancellationToken,
    ) -> Result<(), SinkError> {
        self.produce(rec, cancel, || {
            batch.remaining.fetch_add(1, Ordering::AcqRel);
            Ticket::Batch(BatchTicket {
                batch: Arc::clone(batch),
                idx,
                reported: false,
                unsent: false,
            })
        })
        .await
    }

    /// Hands `rec` to librdkafka, waiting while its local queue is full.
    /// Returns its delivery report, or a permanent refusal.
    pub async fn enqueue(
        &self,
        rec: &OutRecord,
        cancel: &CancellationToken,
    ) -> Result<DeliveryReceiver, SinkError> {
        let mut rx = None;
        self.produce(rec, cancel, || {
            let (tx, r) = oneshot::channel();
            rx = Some(r);
            Ticket::Single {
                tx,
                started: Instant::now(),
            }
        })
        .await?;
        rx.ok_or(SinkError::Cancelled)
    }

    async fn report(
        rx: DeliveryReceiver,
        cancel: &CancellationToken,
    ) -> Result<Result<Delivered, Failure>, SinkError> {
        tokio::select! {
            _ = cancel.cancelled() => Err(SinkError::Cancelled),
            r = rx => Ok(match r {
                Ok(Ok(d)) => Ok(d),
                Ok(Err(e)) => Err(Some(e)),
                Err(_lost) => Err(None),
            }),
        }
    }

    /// Waits for `first`'s delivery report and re-produces `rec` until it is
    /// delivered (see the module doc).
    pub async fn settle(
        &self,
        rec: &OutRecord,
        first: DeliveryReceiver,
        cancel: &CancellationToken,
    ) -> Result<Delivered, SinkError> {
        match Self::report(first, cancel).await? {
            Ok(d) => Ok(d),
            Err(failure) => self
                .redeliver_in_order(&[rec], vec![failure], cancel)
                .await
                .pop()
                .unwrap_or(Err(SinkError::Cancelled)),
        }
    }

    /// Re-produces failed records until each is delivered or refused for
    /// good, in rounds that keep their order: after one pause, every record
    /// still failing is produced again in the order given, and only then
    /// are their reports awaited. librdkafka's idempotent producer keeps
    /// that order within a partition, so a void in the same message as its
    /// sale cannot land ahead of it, as it could when each record was
    /// retried after a randomized pause of its own. Across messages, order
    /// rests on the agent: by default it sends a store's next batch only
    /// once the previous one is receipted (ARCHITECTURE.md, invariant 5).
    pub async fn redeliver_in_order(
        &self,
        recs: &[&OutRecord],
        failures: Vec<Failure>,
        cancel: &CancellationToken,
    ) -> Vec<Result<Delivered, SinkError>> {
        let mut settled: Vec<Option<Result<Delivered, SinkError>>> =
            recs.iter().map(|_| None).collect();
        let mut failed: Vec<(usize, Failure)> = failures.into_iter().enumerate().collect();
        let first_pause = Duration::from_millis(200).min(self.retry_max_backoff);
        let mut backoff = backoff::ExponentialBackoff {
            // Both: the struct starts from `current_interval` (default 500 ms).
            current_interval: first_pause,
            initial_interval: first_pause,
            max_interval: self.retry_max_backoff,
            max_elapsed_time: None,
            // No jitter: messages that failed together (a store's earlier
            // batches, with a larger agent window) retry on the same beat.
            randomization_factor: 0.0,
            ..Default::default()
        };
        loop {
            let mut pending = Vec::with_capacity(failed.len());
            for (i, f) in failed.drain(..) {
                match f {
                    // Refused for good: the caller dead-letters it.
                    Some(e) if is_permanent(&e) => settled[i] = Some(Err(SinkError::Rejected(e))),
                    f => pending.push((i, f)),
                }
            }
            let Some((first, why)) = pending.first() else {
                return settle_rest(settled, &SinkError::Cancelled);
            };
            if let Some((code, reason)) = self.producer.client().fatal_error() {
                return settle_rest(settled, &SinkError::Fatal(format!("{code}: {reason}")));
            }
            self.metrics.produce_retries.inc_by(pending.len() as u64);
            let pause = backoff.next_backoff().unwrap_or(self.retry_max_backoff);
            let error = why.as_ref().map_or_else(
                || "delivery report lost (producer closing)".to_owned(),
                |e| e.to_string(),
            );
            tracing::warn!(%error, records = pending.len(), topic = recs[*first].topic,
                retry_in_ms = pause.as_millis() as u64,
                "Kafka delivery failed; producing the records again, in order");
            tokio::select! {
                _ = cancel.cancelled() => return settle_rest(settled, &SinkError::Cancelled),
                _ = tokio::time::sleep(pause) => {}
            }
            let mut sent = Vec::with_capacity(pending.len());
            for (i, _) in pending {
                match self.enqueue(recs[i], cancel).await {
                    Ok(rx) => sent.push((i, rx)),
                    Err(SinkError::Rejected(e)) => settled[i] = Some(Err(SinkError::Rejected(e))),
                    // Cancelled or fatal: the rest stay unsettled.
                    Err(e) => return settle_rest(settled, &e),
                }
            }
            for (i, rx) in sent {
                match Self::report(rx, cancel).await {
                    Ok(Ok(d)) => settled[i] = Some(Ok(d)),
                    Ok(Err(f)) => failed.push((i, f)),
                    Err(e) => return settle_rest(settled, &e),
                }
            }
        }
    }

    /// Produces and settles in one call.
    pub async fn send(
        &self,
        rec: &OutRecord,
        cancel: &CancellationToken,
    ) -> Result<Delivered, SinkError> {
        let f = self.enqueue(rec, cancel).await?;
        self.settle(rec, f, cancel).await
    }

    /// Waits up to `timeout` for librdkafka to deliver what it holds.
    pub fn flush(&self, timeout: Duration) {
        if let Err(e) = self.producer.flush(timeout) {
            tracing::warn!(error = %e, "Kafka producer did not flush everything before exit");
        }
    }
}

/// Errors that no retry can fix.
/// Records not yet settled end with `stop` (cancelled, or a fatal error:
/// unsettled, so their message stays unacked).
fn settle_rest(
    settled: Vec<Option<Result<Delivered, SinkError>>>,
    stop: &SinkError,
) -> Vec<Result<Delivered, SinkError>> {
    settled
        .into_iter()
        .map(|s| {
            s.unwrap_or_else(|| {
                Err(match stop {
                    SinkError::Fatal(m) => SinkError::Fatal(m.clone()),
                    _ => SinkError::Cancelled,
                })
            })
        })
        .collect()
}

fn is_permanent(e: &KafkaError) -> bool {
    matches!(
        e.rdkafka_error_code(),
        Some(
            RDKafkaErrorCode::MessageSizeTooLarge
                | RDKafkaErrorCode::InvalidMessageSize
                | RDKafkaErrorCode::InvalidRecord
        )
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ticket(batch: &Arc<MessageDeliveries>, idx: u32) -> BatchTicket {
        batch.remaining.fetch_add(1, Ordering::AcqRel);
        BatchTicket {
            batch: Arc::clone(batch),
            idx,
            reported: false,
            unsent: false,
        }
    }

    #[tokio::test]
    async fn a_message_settles_when_its_last_report_is_in_and_lost_reports_are_failures() {
        let cancel = CancellationToken::new();
        let batch = MessageDeliveries::new();
        let mut delivered = ticket(&batch, 0);
        let lost = ticket(&batch, 1);
        let mut refused = ticket(&batch, 2);
        refused.unsent = true; // librdkafka refused it: no report expected
        drop(refused);
        batch.seal();
        delivered.reported = true;
        drop(delivered);
        assert_eq!(batch.remaining.load(Ordering::Acquire), 1);
        drop(lost);
        let failed = tokio::time::timeout(Duration::from_secs(1), batch.wait(&cancel))
            .await
            .expect("settled")
            .expect("not cancelled");
        assert_eq!(failed.len(), 1);
        assert_eq!(failed[0].0, 1);
        assert!(failed[0].1.is_none(), "a lost report is a failure");
    }

    #[tokio::test]
    async fn a_message_without_records_settles_on_seal() {
        let batch = MessageDeliveries::new();
        batch.seal();
        let failed = batch.wait(&CancellationToken::new()).await.expect("ok");
        assert!(failed.is_empty());
    }
}
