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

use std::sync::Arc;
use std::time::{Duration, Instant};

use backoff::backoff::Backoff;
use bytes::Bytes;
use rdkafka::config::ClientConfig;
use rdkafka::error::KafkaError;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{DeliveryFuture, FutureProducer, FutureRecord, Producer};
use rdkafka::types::RDKafkaErrorCode;
use tokio_util::sync::CancellationToken;

use crate::config::KafkaConfig;
use crate::metrics::Metrics;

/// A record ready to produce; cheap to clone (the value shares the MQTT payload).
#[derive(Debug, Clone)]
pub struct OutRecord {
    pub topic: &'static str,
    pub key: Option<String>,
    pub value: Bytes,
    pub headers: Vec<(&'static str, Vec<u8>)>,
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

pub struct KafkaSink {
    producer: FutureProducer,
    retry_max_backoff: Duration,
    metrics: Arc<Metrics>,
}

impl KafkaSink {
    pub fn new(cfg: &KafkaConfig, metrics: Arc<Metrics>) -> Result<KafkaSink, SinkError> {
        let mut cc = ClientConfig::new();
        cc.set("bootstrap.servers", &cfg.bootstrap);
        for (k, v) in &cfg.producer {
            cc.set(k, v);
        }
        let producer: FutureProducer = cc.create().map_err(SinkError::Create)?;
        Ok(KafkaSink {
            producer,
            retry_max_backoff: cfg.retry_max_backoff,
            metrics,
        })
    }

    pub fn producer(&self) -> &FutureProducer {
        &self.producer
    }

    /// Hands `rec` to librdkafka, waiting while its local queue is full.
    /// Returns the delivery future, or a permanent refusal.
    pub async fn enqueue(
        &self,
        rec: &OutRecord,
        cancel: &CancellationToken,
    ) -> Result<DeliveryFuture, SinkError> {
        let mut wait = Duration::from_millis(1);
        loop {
            let mut headers = OwnedHeaders::new_with_capacity(rec.headers.len());
            for (k, v) in &rec.headers {
                headers = headers.insert(Header {
                    key: k,
                    value: Some(v.as_slice()),
                });
            }
            let mut fr: FutureRecord<'_, str, [u8]> = FutureRecord::to(rec.topic)
                .payload(&rec.value[..])
                .headers(headers);
            if let Some(k) = &rec.key {
                fr = fr.key(k.as_str());
            }
            match self.producer.send_result(fr) {
                Ok(f) => return Ok(f),
                Err((e, _)) if is_permanent(&e) => return Err(SinkError::Rejected(e)),
                Err((e, _)) => {
                    if let Some((code, reason)) = self.producer.client().fatal_error() {
                        return Err(SinkError::Fatal(format!("{code}: {reason}")));
                    }
                    if !matches!(e.rdkafka_error_code(), Some(RDKafkaErrorCode::QueueFull)) {
                        tracing::warn!(error = %e, topic = rec.topic, "Kafka client refused a record; retrying");
                    }
                    tokio::select! {
                        _ = cancel.cancelled() => return Err(SinkError::Cancelled),
                        _ = tokio::time::sleep(wait) => {}
                    }
                    wait = (wait * 2).min(Duration::from_millis(100));
                }
            }
        }
    }

    /// Waits for `first`'s delivery report and re-produces `rec` until it is
    /// delivered (see the module doc). Observes the produce latency.
    pub async fn settle(
        &self,
        rec: &OutRecord,
        first: DeliveryFuture,
        started: Instant,
        cancel: &CancellationToken,
    ) -> Result<Delivered, SinkError> {
        let mut fut = first;
        let mut started = started;
        let mut backoff = backoff::ExponentialBackoff {
            initial_interval: Duration::from_millis(200),
            max_interval: self.retry_max_backoff,
            max_elapsed_time: None,
            ..Default::default()
        };
        loop {
            let outcome = tokio::select! {
                _ = cancel.cancelled() => return Err(SinkError::Cancelled),
                r = fut => r,
            };
            let err = match outcome {
                Ok(Ok(d)) => {
                    self.metrics
                        .produce_latency
                        .observe(started.elapsed().as_secs_f64());
                    return Ok(Delivered {
                        partition: d.partition,
                        offset: d.offset,
                    });
                }
                Ok(Err((e, _))) if is_permanent(&e) => return Err(SinkError::Rejected(e)),
                Ok(Err((e, _))) => e.to_string(),
                Err(_canceled) => "delivery report lost (producer closing)".to_owned(),
            };
            if let Some((code, reason)) = self.producer.client().fatal_error() {
                return Err(SinkError::Fatal(format!("{code}: {reason}")));
            }
            self.metrics.produce_retries.inc();
            let pause = backoff.next_backoff().unwrap_or(self.retry_max_backoff);
            tracing::warn!(error = %err, topic = rec.topic, retry_in_ms = pause.as_millis() as u64,
                "Kafka delivery failed; producing the record again");
            tokio::select! {
                _ = cancel.cancelled() => return Err(SinkError::Cancelled),
                _ = tokio::time::sleep(pause) => {}
            }
            started = Instant::now();
            fut = self.enqueue(rec, cancel).await?;
        }
    }

    /// Produces and settles in one call.
    pub async fn send(
        &self,
        rec: &OutRecord,
        cancel: &CancellationToken,
    ) -> Result<Delivered, SinkError> {
        let started = Instant::now();
        let f = self.enqueue(rec, cancel).await?;
        self.settle(rec, f, started, cancel).await
    }

    /// Waits up to `timeout` for librdkafka to deliver what it holds.
    pub fn flush(&self, timeout: Duration) {
        if let Err(e) = self.producer.flush(timeout) {
            tracing::warn!(error = %e, "Kafka producer did not flush everything before exit");
        }
    }
}

/// Errors that no retry can fix.
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
