//! Sends the outbox to the cloud broker and deletes what the bridge receipts.
//!
//! Two tasks, as in rumqtt: the **connection task** only polls the MQTT
//! event loop (reconnecting with capped, jittered exponential backoff) and
//! turns what arrives into [`Link`] messages; the **forwarder** owns all
//! protocol state — the send cursor and the window of batches awaiting a
//! receipt — and never touches the socket.
//!
//! Delivery rule: an event leaves the outbox only when a delivery receipt
//! names it. Everything else is recoverable from SQLite alone:
//!
//! * The cursor is the last `seq` sent in this connection. On every
//!   (re)connect, on a broker that forgot the session, and when the oldest
//!   batch waited longer than `receipt_timeout`, the forwarder *rewinds*: the
//!   window is cleared and sending restarts from the first unreceipted event
//!   (go-back-N). Resends are duplicates the bridge drops; nothing depends on
//!   rumqttc's in-memory queue.
//! * Events are sent in `seq` order over one MQTT topic per store, which the
//!   broker delivers in order; after a rewind, events are re-sent in the same
//!   order, so per-stream order by first delivery is preserved.

use std::collections::VecDeque;
use std::time::Duration;

use protocol::batch::encode_batch;
use protocol::receipt::{DeliveryOutcome, DeliveryReceipt};
use protocol::topics;
use rumqttc::{AsyncClient, Event, EventLoop, Incoming, QoS};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::metrics::{OutcomeLabel, METRICS};
use crate::outbox::OutboxHandle;

#[derive(Debug, Clone)]
pub struct ForwarderConfig {
    pub store_id: String,
    pub batch_max_events: usize,
    pub batch_max_bytes: usize,
    pub max_batches_in_flight: usize,
    pub receipt_timeout: Duration,
}

/// What the connection task tells the forwarder.
#[derive(Debug)]
pub enum Link {
    Connected { session_present: bool },
    Disconnected(String),
    Receipt(DeliveryReceipt),
}

struct InFlight {
    batch_id: uuid::Uuid,
    events: usize,
    sent_at: Instant,
}

/// Polls the MQTT event loop until `shutdown`; never blocks on the forwarder
/// for long (the link channel is sized for the whole window).
pub async fn run_connection(
    mut eventloop: EventLoop,
    client: AsyncClient,
    store_id: String,
    link: mpsc::Sender<Link>,
    shutdown: CancellationToken,
) {
    let receipts = topics::store_receipts_topic(&store_id);
    let mut backoff = reconnect_backoff();
    loop {
        let event = tokio::select! {
            _ = shutdown.cancelled() => return,
            ev = eventloop.poll() => ev,
        };
        match event {
            Ok(Event::Incoming(Incoming::ConnAck(ack))) => {
                backoff::backoff::Backoff::reset(&mut backoff);
                METRICS.mqtt_connected.set(1);
                tracing::info!(
                    session_present = ack.session_present,
                    "connected to cloud broker"
                );
                // Subscribing on every connect is idempotent and covers a
                // broker that lost the session.
                if let Err(e) = client.try_subscribe(&receipts, QoS::AtLeastOnce) {
                    tracing::warn!(error = %e, "could not queue receipts subscription");
                }
                let _ = link
                    .send(Link::Connected {
                        session_present: ack.session_present,
                    })
                    .await;
            }
            Ok(Event::Incoming(Incoming::Publish(p))) if p.topic == receipts => {
                match serde_json::from_slice::<DeliveryReceipt>(&p.payload) {
                    Ok(r) => {
                        let _ = link.send(Link::Receipt(r)).await;
                    }
                    Err(e) => tracing::warn!(error = %e, "unreadable delivery receipt ignored"),
                }
            }
            Ok(_) => {}
            Err(e) => {
                METRICS.mqtt_connected.set(0);
                let _ = link.send(Link::Disconnected(e.to_string())).await;
                let wait = backoff::backoff::Backoff::next_backoff(&mut backoff)
                    .unwrap_or(Duration::from_secs(10));
                tracing::warn!(error = %e, retry_in_ms = wait.as_millis() as u64, "cloud broker connection lost");
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = tokio::time::sleep(wait) => {},
                }
            }
        }
    }
}

fn reconnect_backoff() -> backoff::ExponentialBackoff {
    backoff::ExponentialBackoffBuilder::new()
        .with_initial_interval(Duration::from_millis(200))
        .with_multiplier(2.0)
        .with_randomization_factor(0.5)
        .with_max_interval(Duration::from_secs(15))
        .with_max_elapsed_time(None)
        .build()
}

pub struct Forwarder {
    config: ForwarderConfig,
    outbox: OutboxHandle,
    client: AsyncClient,
    topic: String,
    connected: bool,
    cursor: i64,
    window: VecDeque<InFlight>,
}

impl Forwarder {
    pub fn new(config: ForwarderConfig, outbox: OutboxHandle, client: AsyncClient) -> Self {
        let topic = topics::store_events_topic(&config.store_id);
        Forwarder {
            config,
            outbox,
            client,
            topic,
            connected: false,
            cursor: 0,
            window: VecDeque::new(),
        }
    }

    fn rewind(&mut self, why: &str) {
        if !self.window.is_empty() || self.cursor != 0 {
            tracing::info!(
                why,
                in_flight = self.window.len(),
                "rewinding to the first unreceipted event"
            );
            if !self.window.is_empty() {
                METRICS.resends.inc();
            }
        }
        self.window.clear();
        self.cursor = 0;
        METRICS.batches_in_flight.set(0);
    }

    async fn on_receipt(&mut self, r: DeliveryReceipt) {
        let ids: Vec<_> = r.events.iter().map(|e| e.id).collect();
        for e in &r.events {
            let outcome = match e.outcome {
                DeliveryOutcome::Delivered => "delivered",
                DeliveryOutcome::DeadLettered => "dead_lettered",
                DeliveryOutcome::Duplicate => "duplicate",
            };
            if e.outcome == DeliveryOutcome::DeadLettered {
                tracing::error!(event = %e.id, reason = e.reason.as_deref().unwrap_or(""), "bridge dead-lettered an event");
            }
            METRICS
                .events_receipted
                .get_or_create(&OutcomeLabel { outcome })
                .inc();
        }
        // Receipts of batches from before a rewind or a restart still mean
        // Kafka has those events: delete them all the same.
        match self.outbox.delete(ids).await {
            Ok(n) => tracing::debug!(batch = %r.batch_id, deleted = n, "receipt applied"),
            Err(e) => {
                tracing::error!(error = %e, "could not delete receipted events; they will be resent")
            }
        }
        self.window.retain(|b| b.batch_id != r.batch_id);
        METRICS.batches_in_flight.set(self.window.len() as i64);
    }

    /// Sends one batch if the window allows; returns whether it sent anything.
    async fn send_next(&mut self) -> bool {
        if !self.connected || self.window.len() >= self.config.max_batches_in_flight {
            return false;
        }
        let budget = self
            .config
            .batch_max_bytes
            .saturating_sub(protocol::batch::BATCH_OVERHEAD_BYTES);
        let events = match self
            .outbox
            .read_after(self.cursor, self.config.batch_max_events, budget)
            .await
        {
            Ok(ev) => ev,
            Err(e) => {
                tracing::error!(error = %e, "reading the outbox failed");
                return false;
            }
        };
        let Some(last) = events.last() else {
            return false;
        };
        let last_seq = last.seq;
        let mut good = Vec::with_capacity(events.len());
        for ev in events {
            if ev.checksum_ok() {
                good.push(ev);
            } else if let Err(e) = self
                .outbox
                .quarantine(ev.seq, "crc32 mismatch before send".into())
                .await
            {
                tracing::error!(error = %e, seq = ev.seq, "could not quarantine a corrupt event");
            }
        }
        self.cursor = last_seq;
        if good.is_empty() {
            return true;
        }
        let batch_id = uuid::Uuid::now_v7();
        let payload = encode_batch(
            batch_id,
            &self.config.store_id,
            good.iter().map(|e| e.payload.as_slice()),
        );
        match self
            .client
            .publish(self.topic.clone(), QoS::AtLeastOnce, false, payload)
            .await
        {
            Ok(()) => {
                METRICS.batches_sent.inc();
                METRICS.events_sent.inc_by(good.len() as u64);
                self.window.push_back(InFlight {
                    batch_id,
                    events: good.len(),
                    sent_at: Instant::now(),
                });
                METRICS.batches_in_flight.set(self.window.len() as i64);
                tracing::debug!(batch = %batch_id, events = good.len(), last_seq, "batch sent");
                true
            }
            Err(e) => {
                tracing::warn!(error = %e, "publish failed; will rewind on reconnect");
                self.connected = false;
                false
            }
        }
    }

    fn oldest_overdue(&self) -> bool {
        self.window
            .front()
            .is_some_and(|b| b.sent_at.elapsed() > self.config.receipt_timeout)
    }

    /// Runs until `shutdown`, then keeps taking receipts for up to `grace`
    /// so in-flight batches can still be deleted.
    pub async fn run(
        mut self,
        mut link: mpsc::Receiver<Link>,
        shutdown: CancellationToken,
        grace: Duration,
    ) {
        let mut tick = tokio::time::interval(Duration::from_millis(500));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            // Fill the window as far as the outbox and the window allow.
            while !shutdown.is_cancelled() && self.send_next().await {}
            tokio::select! {
                _ = shutdown.cancelled() => break,
                msg = link.recv() => match msg {
                    Some(Link::Connected { session_present }) => {
                        self.connected = true;
                        self.rewind(if session_present { "reconnected" } else { "reconnected without session" });
                    }
                    Some(Link::Disconnected(_)) => {
                        self.connected = false;
                    }
                    Some(Link::Receipt(r)) => self.on_receipt(r).await,
                    None => break,
                },
                _ = self.outbox.appended() => {},
                _ = tick.tick() => {
                    if self.oldest_overdue() {
                        tracing::warn!(timeout_s = self.config.receipt_timeout.as_secs(), "no receipt in time");
                        self.rewind("receipt timeout");
                    }
                },
            }
        }
        let deadline = Instant::now() + grace;
        let pending: usize = self.window.iter().map(|b| b.events).sum();
        tracing::info!(
            in_flight_batches = self.window.len(),
            pending,
            "forwarder draining receipts"
        );
        while !self.window.is_empty() {
            tokio::select! {
                _ = tokio::time::sleep_until(deadline) => break,
                msg = link.recv() => match msg {
                    Some(Link::Receipt(r)) => self.on_receipt(r).await,
                    Some(_) => {}
                    None => break,
                },
            }
        }
        tracing::info!(
            unreceipted_batches = self.window.len(),
            "forwarder stopped; unreceipted events stay in the outbox"
        );
    }
}
