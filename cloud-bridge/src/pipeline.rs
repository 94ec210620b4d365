//! From an MQTT message to acknowledged Kafka records.
//!
//! Architecture invariant: **an MQTT message is acknowledged only after every
//! event in it is settled** — delivered to its domain topic, written to the
//! dead-letter topic, or found in the de-duplication window as published —
//! **and its receipt has been handed to the MQTT client** (QoS 1). Until then
//! the broker holds the message and redelivers it if this replica dies.
//!
//! The dispatcher takes messages one by one, in the order the broker sent
//! them: it routes (pure, [`crate::routing`]), checks the dedupe window and
//! hands every record to librdkafka before taking the next message, so the
//! order of events within a store's stream is the order of produce calls.
//! Waiting for delivery reports, receipts and acks happens in one task per
//! message, tracked so that shutdown can wait for them.
//!
//! Bounded work: a message needs one permit of `max_messages_in_flight` and
//! one permit per event of `max_events_in_flight` before it is dispatched.
//! When Kafka is slow or down, permits run out, the dispatcher stops taking
//! messages, acks stop, and Mosquitto stops sending (its
//! `max_inflight_messages`) and queues for us instead. When deliveries resume,
//! permits come back and so does the flow, without intervention.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::stream::{FuturesOrdered, StreamExt};
use protocol::topics::{self, headers};
use protocol::EventId;
use rumqttc::v5::mqttbytes::v5::Publish;
use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::AsyncClient;
use tokio::sync::{mpsc, Semaphore};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument;

use crate::config::Config;
use crate::dead_letter::{dead_letter_record, Why};
use crate::dedupe::{self, DedupeWindow, Seen, StoreKey};
use crate::kafka_sink::{
    Delivered, DeliveryReceiver, Failure, KafkaSink, MessageDeliveries, OutRecord, SinkError,
};
use crate::metrics::Metrics;
use crate::mqtt_source::{ConnectionId, Health, Received};
use crate::receipts::{self, Settled};
use crate::routing::{self, reason, Decision, PublishEvent, RoutedMessage};

/// Messages routed ahead of the one being dispatched.
const ROUTE_AHEAD: usize = 4;

/// The longest pause between checks of a resent event on its first copy.
const AWAIT_FIRST_COPY_MAX_PAUSE: Duration = Duration::from_millis(500);

pub struct Pipeline {
    cfg: Arc<Config>,
    sink: Arc<KafkaSink>,
    client: AsyncClient,
    /// Which MQTT connection acks may go out on.
    health: Arc<Health>,
    metrics: Arc<Metrics>,
    dedupe: Arc<Mutex<DedupeWindow>>,
    events: Arc<Semaphore>,
    messages: Arc<Semaphore>,
    tasks: TaskTracker,
    /// Cancelled when the shutdown grace runs out or the producer is dead:
    /// abandons retries, leaving the messages unacked for the broker.
    abort: CancellationToken,
    /// Set when the producer hit a fatal error; `run` then reports it.
    fatal: Mutex<Option<String>>,
}

/// A message's share of the in-flight bounds, held (for their `Drop`)
/// until it is settled.
struct Permits {
    _message: tokio::sync::OwnedSemaphorePermit,
    _events: tokio::sync::OwnedSemaphorePermit,
    _gauge: InFlightGauge,
}

/// Where a message came from, for the settlement of its events.
struct Origin {
    /// The MQTT topic, for dead-letter headers.
    topic: String,
    /// The sending store in the dedupe window.
    store: StoreKey,
}

impl Origin {
    fn key(&self, id: EventId) -> dedupe::Key {
        dedupe::Key {
            store: self.store,
            id,
        }
    }
}

/// What one event still needs after dispatch.
enum Job {
    /// Handed to librdkafka as record `idx` of the message's
    /// [`MessageDeliveries`].
    Produce {
        ev: PublishEvent,
        rec: OutRecord,
        idx: u32,
    },
    /// A first copy is in flight elsewhere; wait for its outcome.
    AwaitFirstCopy {
        ev: PublishEvent,
        rec: OutRecord,
    },
    Duplicate(EventId),
    DeadLetter {
        id: Option<EventId>,
        reason: &'static str,
        rec: OutRecord,
        fut: Option<DeliveryReceiver>,
    },
}

impl Pipeline {
    pub fn new(
        cfg: Arc<Config>,
        sink: Arc<KafkaSink>,
        client: AsyncClient,
        health: Arc<Health>,
        metrics: Arc<Metrics>,
        abort: CancellationToken,
    ) -> Pipeline {
        Pipeline {
            dedupe: Arc::new(Mutex::new(DedupeWindow::new(
                cfg.dedupe.max_entries,
                cfg.dedupe.max_age,
            ))),
            events: Arc::new(Semaphore::new(cfg.limits.max_events_in_flight)),
            messages: Arc::new(Semaphore::new(cfg.limits.max_messages_in_flight)),
            tasks: TaskTracker::new(),
            cfg,
            sink,
            client,
            health,
            metrics,
            abort,
            fatal: Mutex::new(None),
        }
    }

    /// The producer's fatal error, if one stopped the pipeline.
    pub fn fatal_error(&self) -> Option<String> {
        self.fatal.lock().ok().and_then(|f| f.clone())
    }

    /// A dead letter that could not be written leaves its message unacked
    /// (the store sends it again); said out loud, since with the size
    /// checks in configuration only a misconfigured topic refuses one.
    fn dead_letter_failed(&self, e: &SinkError) {
        self.on_sink_error(e);
        if !matches!(e, SinkError::Cancelled | SinkError::Fatal(_)) {
            self.metrics.dead_letters_refused.inc();
            tracing::error!(error = %e, "the dead-letter topic refused a record; leaving the message unacked");
        }
    }

    fn on_sink_error(&self, e: &SinkError) {
        if let SinkError::Fatal(msg) = e {
            tracing::error!(error = %msg, "Kafka producer is unusable; stopping so a restart can resume");
            if let Ok(mut f) = self.fatal.lock() {
                f.get_or_insert_with(|| msg.clone());
            }
            self.abort.cancel();
        }
    }

    /// Takes messages until `intake` is cancelled or the source closes, then
    /// waits up to the shutdown grace for in-flight messages to settle.
    /// Returns the number of messages abandoned unacked (the broker keeps them).
    pub async fn run(
        self: Arc<Self>,
        mut rx: mpsc::Receiver<Received>,
        intake: CancellationToken,
    ) -> usize {
        // Routing (JSON parsing, the CPU-heavy part: ~0.2 ms for a message
        // of 100 events) runs as tasks on the runtime's workers, a few
        // messages ahead; results are dispatched in arrival order, so produce
        // order still follows the broker's order. Not the blocking pool: a
        // thread hand-off per message cost more in wake-ups than it saved.
        let mut routing = FuturesOrdered::new();
        let mut source_open = true;
        loop {
            tokio::select! {
                biased;
                _ = intake.cancelled() => break,
                _ = self.abort.cancelled() => break,
                Some(done) = routing.next(), if !routing.is_empty() => {
                    let (received, topic, routed) = match done {
                        Ok(pr) => pr,
                        Err(e) => {
                            // A panic while routing: that message stays unacked.
                            tracing::error!(error = %e, "routing task failed");
                            continue;
                        }
                    };
                    // Stopping may interrupt the wait for permits, when
                    // nothing of the message is in Kafka yet, but not the
                    // produce calls: a message half produced and never
                    // acked would reach Kafka again after a restart.
                    let permits = tokio::select! {
                        biased;
                        _ = intake.cancelled() => break,
                        _ = self.abort.cancelled() => break,
                        p = self.permits(&routed) => p,
                    };
                    // … unless they never end: librdkafka refuses a record
                    // for as long as its topic is missing or forbidden, and
                    // a stop must not wait on that for ever. After the
                    // grace, the message is left unacked, as at the end.
                    let grace = self.cfg.limits.shutdown_grace;
                    let mut dispatching = std::pin::pin!(self.dispatch(received, topic, routed, permits));
                    tokio::select! {
                        biased;
                        () = &mut dispatching => {}
                        () = async { intake.cancelled().await; tokio::time::sleep(grace).await } => {
                            tracing::warn!(grace_s = grace.as_secs(),
                                "shutdown grace over while a message was still being handed to Kafka; leaving it unacked");
                            self.abort.cancel();
                            dispatching.await;
                            break;
                        }
                    }
                }
                m = rx.recv(), if source_open && routing.len() < ROUTE_AHEAD => match m {
                    Some(received) => {
                        let max = self.cfg.limits.max_event_bytes;
                        routing.push_back(tokio::spawn(async move {
                            // Brokers pass only UTF-8 topics; anything else
                            // fails the topic check and is dead-lettered.
                            let p = &received.publish;
                            let topic = String::from_utf8_lossy(&p.topic).into_owned();
                            let routed = routing::route(&topic, &p.payload, max);
                            (received, topic, routed)
                        }));
                    }
                    None => source_open = false,
                },
                else => break,
            }
        }
        // Messages received but not dispatched stay unacked: the broker
        // redelivers them to this session when it comes back.
        rx.close();
        let pending = rx.len();
        self.tasks.close();
        let grace = self.cfg.limits.shutdown_grace;
        let abandoned = if tokio::time::timeout(grace, self.tasks.wait())
            .await
            .is_err()
        {
            let n = self.tasks.len();
            tracing::warn!(
                in_flight = n,
                grace_s = grace.as_secs(),
                "shutdown grace over; leaving unacked messages to the broker"
            );
            self.abort.cancel();
            // Let the tasks observe the abort and release their reservations.
            let _ = tokio::time::timeout(Duration::from_secs(2), self.tasks.wait()).await;
            n
        } else {
            0
        };
        self.sink.flush(Duration::from_secs(5));
        pending + abandoned
    }

    /// Waits for the message's share of the in-flight bounds: `None` only
    /// if a semaphore was closed, which nothing does.
    async fn permits(&self, routed: &RoutedMessage) -> Option<Permits> {
        let n = routed
            .event_count()
            .clamp(1, self.cfg.limits.max_events_in_flight);
        let n = u32::try_from(n).unwrap_or(u32::MAX);
        let message = self.messages.clone().acquire_owned().await.ok()?;
        let events = self.events.clone().acquire_many_owned(n).await.ok()?;
        Some(Permits {
            _message: message,
            _events: events,
            // The events themselves, not the permits they took (an empty
            // message takes one; one over the limit takes them all).
            _gauge: InFlightGauge::new(
                &self.metrics,
                u32::try_from(routed.event_count()).unwrap_or(u32::MAX),
            ),
        })
    }

    /// Hands a routed message's records to Kafka, in order; spawns the task
    /// that waits for delivery, receipts and acks.
    async fn dispatch(
        self: &Arc<Self>,
        received: Received,
        topic: String,
        routed: RoutedMessage,
        permits: Option<Permits>,
    ) {
        let Received {
            publish,
            held,
            connection,
        } = received;
        let Some(permits) = permits else {
            return;
        };

        let payload: Bytes = publish.payload.clone();
        let store = routed.topic_store.clone();
        let store_header = Bytes::copy_from_slice(store.as_deref().unwrap_or_default().as_bytes());
        let now = Instant::now();
        let mut jobs = Vec::with_capacity(routed.decisions.len());
        let deliveries = MessageDeliveries::new();
        let mut produced: u32 = 0;
        // One lock for the whole message. Publishable events always come
        // from a store's topic (routing dead-letters the rest).
        let (seen, origin) = {
            let mut w = self.window();
            let origin = Origin {
                topic,
                store: w.store(store.as_deref().unwrap_or_default()),
            };
            let seen: Vec<Seen> = routed
                .decisions
                .iter()
                .map(|d| match d {
                    Decision::Publish(ev) => w.check_and_reserve(origin.key(ev.id), now),
                    Decision::DeadLetter(_) => Seen::New,
                })
                .collect();
            (seen, origin)
        };
        for (d, seen) in routed.decisions.into_iter().zip(seen) {
            match d {
                Decision::Publish(mut ev) => {
                    let rec = domain_record(&mut ev, &payload, &store_header);
                    match seen {
                        Seen::New => {
                            let idx = produced;
                            match self
                                .sink
                                .enqueue_in(&rec, &deliveries, idx, &self.abort)
                                .await
                            {
                                Ok(()) => {
                                    produced += 1;
                                    jobs.push(Job::Produce { ev, rec, idx });
                                }
                                Err(SinkError::Rejected(e)) => {
                                    self.release(&origin.key(ev.id));
                                    let dl = dead_letter_record(
                                        payload.slice(ev.value.clone()),
                                        Why {
                                            reason: reason::KAFKA_REJECTED,
                                            detail: &e.to_string(),
                                            source_topic: &origin.topic,
                                            store_id: store.as_deref(),
                                            event_id: Some(&ev.id),
                                        },
                                        self.dlq_max(),
                                        chrono::Utc::now(),
                                    );
                                    jobs.push(Job::DeadLetter {
                                        id: Some(ev.id),
                                        reason: reason::KAFKA_REJECTED,
                                        rec: dl,
                                        fut: None,
                                    });
                                }
                                Err(e) => {
                                    // A fatal producer must stop the bridge
                                    // here too, not only when a delivery
                                    // task happens to meet it: the restart
                                    // gets the unacked messages again.
                                    self.on_sink_error(&e);
                                    self.release(&origin.key(ev.id));
                                    return; // aborting: leave the message unacked
                                }
                            }
                        }
                        Seen::InFlight => jobs.push(Job::AwaitFirstCopy { ev, rec }),
                        Seen::Published => jobs.push(Job::Duplicate(ev.id)),
                    }
                }
                Decision::DeadLetter(dl) => {
                    let rec = dead_letter_record(
                        payload.slice(dl.value.clone()),
                        Why {
                            reason: dl.reason,
                            detail: &dl.detail,
                            source_topic: &origin.topic,
                            store_id: store.as_deref(),
                            event_id: dl.id.as_ref(),
                        },
                        self.dlq_max(),
                        chrono::Utc::now(),
                    );
                    tracing::warn!(reason = dl.reason, detail = %dl.detail, store_id = store.as_deref().unwrap_or("?"),
                        event_id = ?dl.id, "dead-lettering");
                    let fut = self.sink.enqueue(&rec, &self.abort).await.ok();
                    jobs.push(Job::DeadLetter {
                        id: dl.id,
                        reason: dl.reason,
                        rec,
                        fut,
                    });
                }
            }
        }

        // Every record is in librdkafka's hands: the last report now wakes the task.
        deliveries.seal();

        let this = Arc::clone(self);
        let span = tracing::info_span!("message", store_id = store.as_deref().unwrap_or("?"), batch_id = ?routed.batch_id, pkid = publish.pkid);
        self.tasks.spawn(
            async move {
                let settled = this
                    .settle_all(jobs, &deliveries, produced > 0, &origin)
                    .await;
                if let Some(settled) = settled {
                    this.finish(
                        &publish,
                        connection,
                        store.as_deref(),
                        routed.batch_id,
                        &settled,
                    )
                    .await;
                }
                drop(permits);
                drop(held);
            }
            .instrument(span),
        );
    }

    /// Settles every job; `None` if the bridge is aborting (message stays unacked).
    ///
    /// The message's records are waited for together (one wake-up when the
    /// last delivery report is in); only records whose delivery failed, and
    /// the rare other jobs, are settled one by one.
    async fn settle_all(
        &self,
        jobs: Vec<Job>,
        deliveries: &MessageDeliveries,
        any_produced: bool,
        origin: &Origin,
    ) -> Option<Vec<Settled>> {
        let mut failures: Vec<(u32, Failure)> = Vec::new();
        if any_produced {
            match deliveries.wait(&self.abort).await {
                Ok(f) => failures = f,
                Err(_) => {
                    // Aborting: release the reservations, leave the message unacked.
                    let mut w = self.window();
                    for job in &jobs {
                        if let Job::Produce { ev, .. } = job {
                            w.release(&origin.key(ev.id));
                        }
                    }
                    return None;
                }
            }
        }
        failures.sort_unstable_by_key(|(i, _)| *i);
        // Delivered records: one dedupe lock and one clock read for the message.
        let delivered: Vec<&PublishEvent> = jobs
            .iter()
            .filter_map(|j| match j {
                Job::Produce { ev, idx, .. }
                    if failures.binary_search_by_key(idx, |(i, _)| *i).is_err() =>
                {
                    Some(ev)
                }
                _ => None,
            })
            .collect();
        self.delivered_all(&delivered, origin);
        drop(delivered);

        let mut out: Vec<Option<Settled>> = Vec::with_capacity(jobs.len());
        let mut failed = Vec::new();
        let mut rest = Vec::new();
        for (pos, job) in jobs.into_iter().enumerate() {
            match job {
                Job::Produce { ev, rec, idx } => {
                    match failures.binary_search_by_key(&idx, |(i, _)| *i) {
                        Err(_) => out.push(Some(Settled::Delivered(ev.id))),
                        Ok(at) => {
                            out.push(None);
                            failed.push((pos, ev, rec, failures[at].1.take()));
                        }
                    }
                }
                other => {
                    out.push(None);
                    rest.push((pos, Box::pin(self.settle(other, origin))));
                }
            }
        }
        // The failed records go again together, in the message's order
        // (`KafkaSink::redeliver_in_order`), beside the other settlements.
        let (positions, futs): (Vec<usize>, Vec<_>) = rest.into_iter().unzip();
        let (redelivered, settled) = futures::future::join(
            self.redeliver_in_order(failed, origin),
            futures::future::join_all(futs),
        )
        .await;
        for (pos, r) in redelivered
            .into_iter()
            .chain(positions.into_iter().zip(settled))
        {
            out[pos] = Some(r?);
        }
        out.into_iter().collect()
    }

    /// The records of the message whose delivery failed: produced again
    /// until delivered (or dead-lettered if Kafka refuses one for good).
    async fn redeliver_in_order(
        &self,
        failed: Vec<(usize, PublishEvent, OutRecord, Failure)>,
        origin: &Origin,
    ) -> Vec<(usize, Option<Settled>)> {
        if failed.is_empty() {
            return Vec::new();
        }
        let mut failures = Vec::with_capacity(failed.len());
        let mut kept = Vec::with_capacity(failed.len());
        for (pos, ev, rec, failure) in failed {
            failures.push(failure);
            kept.push((pos, ev, rec));
        }
        let recs: Vec<&OutRecord> = kept.iter().map(|(_, _, rec)| rec).collect();
        let results = self
            .sink
            .redeliver_in_order(&recs, failures, &self.abort)
            .await;
        drop(recs);
        let mut out = Vec::with_capacity(kept.len());
        for ((pos, ev, rec), result) in kept.into_iter().zip(results) {
            out.push((pos, self.settle_delivery(ev, &rec, origin, result).await));
        }
        out
    }

    /// What one record's delivery attempt means for its event: delivered,
    /// dead-lettered because Kafka refused it for good, or unsettled (the
    /// reservation is released and the MQTT message stays unacked).
    async fn settle_delivery(
        &self,
        ev: PublishEvent,
        rec: &OutRecord,
        origin: &Origin,
        result: Result<Delivered, SinkError>,
    ) -> Option<Settled> {
        match result {
            Ok(d) => {
                self.delivered(&ev, origin, d.partition, d.offset);
                Some(Settled::Delivered(ev.id))
            }
            Err(SinkError::Rejected(e)) => {
                self.release(&origin.key(ev.id));
                self.dead_letter_rejected(&ev, rec, &origin.topic, &e.to_string())
                    .await
            }
            Err(e) => {
                self.on_sink_error(&e);
                self.release(&origin.key(ev.id));
                None
            }
        }
    }

    async fn settle(&self, job: Job, origin: &Origin) -> Option<Settled> {
        match job {
            // Settled together in `settle_all`.
            Job::Produce { .. } => None,
            Job::AwaitFirstCopy { ev, rec } => {
                // The first copy may wait on a slow or absent Kafka for
                // minutes, with thousands of resent copies waiting on their
                // own first copies: the checks back off, so the waiters do
                // not take the lock from the dispatcher.
                let mut pause = Duration::from_millis(20);
                loop {
                    let state = self
                        .dedupe
                        .lock()
                        .ok()
                        .and_then(|w| w.peek(&origin.key(ev.id)));
                    match state {
                        Some(Seen::Published) => {
                            self.metrics.duplicates_dropped.inc();
                            return Some(Settled::Duplicate(ev.id));
                        }
                        Some(Seen::InFlight) => {
                            tokio::select! {
                                _ = self.abort.cancelled() => return None,
                                _ = tokio::time::sleep(pause) => {}
                            }
                            pause = (pause * 2).min(AWAIT_FIRST_COPY_MAX_PAUSE);
                        }
                        // The first copy was abandoned or dead-lettered: try ourselves.
                        Some(Seen::New) | None => {
                            let reserved = self
                                .window()
                                .check_and_reserve(origin.key(ev.id), Instant::now());
                            if reserved != Seen::New {
                                continue;
                            }
                            let result = self.sink.send(&rec, &self.abort).await;
                            return self.settle_delivery(ev, &rec, origin, result).await;
                        }
                    }
                }
            }
            Job::Duplicate(id) => {
                tracing::debug!(event_id = %id, "duplicate dropped");
                self.metrics.duplicates_dropped.inc();
                Some(Settled::Duplicate(id))
            }
            Job::DeadLetter {
                id,
                reason,
                rec,
                fut,
            } => {
                let res = match fut {
                    Some(f) => self.sink.settle(&rec, f, &self.abort).await,
                    None => self.sink.send(&rec, &self.abort).await,
                };
                match res {
                    Ok(_) => {
                        self.metrics.dead_lettered(reason);
                        Some(Settled::DeadLettered(id, reason))
                    }
                    Err(e) => {
                        self.dead_letter_failed(&e);
                        None
                    }
                }
            }
        }
    }

    async fn dead_letter_rejected(
        &self,
        ev: &PublishEvent,
        rec: &OutRecord,
        source_topic: &str,
        detail: &str,
    ) -> Option<Settled> {
        let store = rec
            .headers
            .iter()
            .find(|(k, _)| *k == headers::STORE_ID)
            .map(|(_, v)| String::from_utf8_lossy(v).into_owned());
        let dl = dead_letter_record(
            rec.value.clone(),
            Why {
                reason: reason::KAFKA_REJECTED,
                detail,
                source_topic,
                store_id: store.as_deref(),
                event_id: Some(&ev.id),
            },
            self.dlq_max(),
            chrono::Utc::now(),
        );
        match self.sink.send(&dl, &self.abort).await {
            Ok(_) => {
                self.metrics.dead_lettered(reason::KAFKA_REJECTED);
                Some(Settled::DeadLettered(Some(ev.id), reason::KAFKA_REJECTED))
            }
            Err(e) => {
                self.dead_letter_failed(&e);
                None
            }
        }
    }

    fn delivered(&self, ev: &PublishEvent, origin: &Origin, partition: i32, offset: i64) {
        self.window()
            .mark_published(origin.key(ev.id), Instant::now());
        self.metrics.published(ev.topic.name());
        let e2e = chrono::Utc::now().signed_duration_since(ev.recorded_at);
        if let Ok(std) = e2e.to_std() {
            self.metrics.end_to_end_latency.observe(std.as_secs_f64());
        }
        tracing::trace!(event_id = %ev.id, partition, offset, "delivered");
    }

    /// [`Self::delivered`] for every event of a message, with one lock.
    fn delivered_all(&self, evs: &[&PublishEvent], origin: &Origin) {
        if evs.is_empty() {
            return;
        }
        let now = Instant::now();
        let mut w = self.window();
        for ev in evs {
            w.mark_published(origin.key(ev.id), now);
        }
        drop(w);
        let wall = chrono::Utc::now();
        for ev in evs {
            self.metrics.published(ev.topic.name());
            if let Ok(std) = wall.signed_duration_since(ev.recorded_at).to_std() {
                self.metrics.end_to_end_latency.observe(std.as_secs_f64());
            }
            tracing::trace!(event_id = %ev.id, "delivered");
        }
    }

    /// The de-duplication window. It is a cache: one poisoned by a panic
    /// elsewhere is still used, or reservations made before the panic would
    /// never be published or released (reservations do not age out).
    fn window(&self) -> std::sync::MutexGuard<'_, DedupeWindow> {
        self.dedupe
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn release(&self, id: &dedupe::Key) {
        self.window().release(id);
    }

    /// Dead letters must fit the producer's `message.max.bytes` with room
    /// for headers. Configuration keeps this at least
    /// `protocol::batch::MAX_EVENT_BYTES`, so only bytes no agent sends
    /// (a whole undecodable payload, an event over the contract) are cut.
    fn dlq_max(&self) -> usize {
        self.cfg
            .kafka
            .message_max_bytes
            .saturating_sub(protocol::batch::DEAD_LETTER_HEADROOM_BYTES)
    }

    /// Publishes the receipt (QoS 1), then acknowledges the MQTT message
    /// if the connection it arrived on is still the current one.
    async fn finish(
        &self,
        publish: &Publish,
        connection: ConnectionId,
        store: Option<&str>,
        batch_id: Option<uuid::Uuid>,
        settled: &[Settled],
    ) {
        if let (Some(store), Some(batch_id)) = (store, batch_id) {
            let receipt = receipts::build(
                store,
                batch_id,
                settled,
                &self.cfg.bridge_id,
                chrono::Utc::now(),
            );
            match serde_json::to_vec(&receipt) {
                Ok(bytes) => {
                    if let Err(e) = self
                        .client
                        .publish(
                            topics::store_receipts_topic(store),
                            QoS::AtLeastOnce,
                            false,
                            bytes,
                        )
                        .await
                    {
                        // The client is gone (shutdown): without a receipt the
                        // message must stay unacked, so the agent's resend or
                        // the broker's redelivery produces one later.
                        tracing::warn!(error = %e, "could not queue a receipt; message left unacked");
                        return;
                    }
                    self.metrics.receipts_published.inc();
                }
                Err(e) => tracing::error!(error = %e, "could not encode a receipt"),
            }
        }
        // The receipt still goes out: Kafka has the events whichever
        // connection carries the news.
        if self.health.connection.id() != connection {
            self.metrics.mqtt_acks_skipped.inc();
            tracing::debug!(
                pkid = publish.pkid,
                "not acking: the connection this message arrived on was lost"
            );
            return;
        }
        if let Err(e) = self.client.ack(publish).await {
            tracing::warn!(error = %e, "could not queue an MQTT ack; the broker will redeliver");
        }
    }
}

/// Counts events in `storelink_bridge_events_in_flight` for as long as it lives.
struct InFlightGauge {
    metrics: Arc<Metrics>,
    n: i64,
}

impl InFlightGauge {
    fn new(metrics: &Arc<Metrics>, n: u32) -> InFlightGauge {
        let n = i64::from(n);
        metrics.events_in_flight.inc_by(n);
        InFlightGauge {
            metrics: Arc::clone(metrics),
            n,
        }
    }
}

impl Drop for InFlightGauge {
    fn drop(&mut self) {
        self.metrics.events_in_flight.dec_by(self.n);
    }
}

/// The domain-topic record of an event: original bytes, partition key, headers.
/// The key moves into the record (the event keeps its other fields).
pub(crate) fn domain_record(ev: &mut PublishEvent, payload: &Bytes, store_id: &Bytes) -> OutRecord {
    let mut id = [0u8; uuid::fmt::Hyphenated::LENGTH];
    let id = ev.id.0.hyphenated().encode_lower(&mut id);
    OutRecord {
        topic: ev.topic.name(),
        key: Some(std::mem::take(&mut ev.key)),
        value: payload.slice(ev.value.clone()),
        headers: vec![
            (headers::EVENT_ID, Bytes::copy_from_slice(id.as_bytes())),
            (
                headers::SCHEMA,
                Bytes::from_static(ev.kind.schema_name().as_bytes()),
            ),
            (
                headers::SCHEMA_VERSION,
                schema_version_header(ev.schema_version),
            ),
            (headers::STORE_ID, store_id.clone()),
        ],
    }
}

/// The schema-version header value; small versions need no allocation.
fn schema_version_header(v: u16) -> Bytes {
    const SMALL: [&str; 10] = ["0", "1", "2", "3", "4", "5", "6", "7", "8", "9"];
    match SMALL.get(usize::from(v)) {
        Some(s) => Bytes::from_static(s.as_bytes()),
        None => Bytes::from(v.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schema_version_headers_are_decimal() {
        for v in [0u16, 1, 9, 10, 42, u16::MAX] {
            assert_eq!(&schema_version_header(v)[..], v.to_string().as_bytes());
        }
    }
}
