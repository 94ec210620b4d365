//! Sends the outbox to the cloud broker and deletes what the bridge receipts.
//!
//! Two tasks, as in rumqtt: the **connection task** only polls the MQTT
//! event loop (reconnecting with capped, jittered exponential backoff, reset
//! only by a connection that held) and turns what arrives into [`Link`]
//! messages; the **forwarder** owns all protocol state — the send cursor and
//! the window of batches awaiting a receipt — and never touches the socket.
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
//! * A receipt whose delete fails (a disk refusing writes) is not a reason
//!   to resend: the receipt proves Kafka has the events. The delete alone is
//!   retried, with a growing pause, and nothing new is sent until it holds.
//! * Each connection gets a client and event loop of its own. A batch the
//!   forwarder queued just as a connection dropped dies with it: sent on the
//!   next connection ahead of the rewind's resends, it would overtake older
//!   batches a broker that forgot the session had lost, and break order.

use std::collections::VecDeque;
use std::time::Duration;

use protocol::batch::encode_batch;
use protocol::receipt::{DeliveryOutcome, DeliveryReceipt};
use protocol::topics;
use rumqttc::{
    AsyncClient, Event, EventLoop, Incoming, MqttOptions, NetworkOptions, Outgoing, QoS,
};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::metrics::{OutcomeLabel, METRICS};
use crate::outbox::{Damage, OutboxHandle};
use crate::reconnect::Reconnect;

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
    /// A new connection and the client that publishes on it; the client of
    /// any earlier connection is dead.
    Connected {
        session_present: bool,
        client: AsyncClient,
    },
    Disconnected(String),
    Receipt(DeliveryReceipt),
    /// The broker acknowledged the next publish of this connection (PUBACK).
    PubAcked,
}

/// A batch sent and not yet receipted.
#[derive(Debug)]
struct InFlight {
    batch_id: uuid::Uuid,
    events: usize,
    sent_at: Instant,
    /// Its publish's number on the current connection (1 for the first).
    publish_no: u64,
    /// When the broker acknowledged it: the whole batch had crossed the
    /// uplink. The receipt timeout counts from here.
    pubacked_at: Option<Instant>,
}

/// How long a batch may go without the broker's PUBACK before it is sent
/// again. A broker acks a QoS 1 publish as soon as it has read it, so until
/// then the batch (or those ahead of it) is still crossing the uplink, which
/// on a slow link takes long and is no reason to send it twice; a dead link
/// is found by the keep-alive and the network timeout. This only bounds a
/// broker that reads but never acks.
const PUBACK_WAIT_MAX: Duration = Duration::from_secs(600);

/// The forwarder's protocol state, apart from any I/O (as rumqttc keeps
/// `MqttState` apart from its event loop): where sending resumes, and which
/// batches await a receipt. Time comes in as arguments, so the rules are
/// tested without a broker or a clock.
#[derive(Debug)]
struct SendWindow {
    /// The last `seq` handed out in this connection; 0 after a rewind, which
    /// makes the next read start at the first event still in the outbox.
    cursor: i64,
    in_flight: VecDeque<InFlight>,
    capacity: usize,
    receipt_timeout: Duration,
    /// Publishes and PUBACKs on the current connection. A broker acks one
    /// client's QoS 1 publishes in the order it received them, so the n-th
    /// PUBACK is the n-th publish's, also for batches a rewind dropped.
    published: u64,
    pubacked: u64,
    /// The last PUBACK on this connection: the batch after it started
    /// crossing then, not when it was queued.
    last_puback: Option<Instant>,
}

impl SendWindow {
    fn new(capacity: usize, receipt_timeout: Duration) -> SendWindow {
        SendWindow {
            cursor: 0,
            in_flight: VecDeque::new(),
            capacity,
            receipt_timeout,
            published: 0,
            pubacked: 0,
            last_puback: None,
        }
    }

    /// A new connection: its publishes are numbered from 1 again (the
    /// client of the last one, and whatever it had not sent, is gone).
    fn connected(&mut self) {
        self.published = 0;
        self.pubacked = 0;
        self.last_puback = None;
    }

    /// The broker acknowledged the next publish of this connection.
    fn pubacked(&mut self, now: Instant) {
        self.pubacked += 1;
        self.last_puback = Some(now);
        let n = self.pubacked;
        if let Some(b) = self.in_flight.iter_mut().find(|b| b.publish_no == n) {
            b.pubacked_at = Some(now);
        }
    }

    fn has_room(&self) -> bool {
        self.in_flight.len() < self.capacity
    }

    /// Events up to `last_seq` were read and need not be read again in this
    /// connection (sent, or quarantined as corrupt).
    fn advance(&mut self, last_seq: i64) {
        self.cursor = self.cursor.max(last_seq);
    }

    fn sent(&mut self, batch_id: uuid::Uuid, events: usize, now: Instant) {
        self.published += 1;
        self.in_flight.push_back(InFlight {
            batch_id,
            events,
            sent_at: now,
            publish_no: self.published,
            pubacked_at: None,
        });
    }

    /// Frees the receipted batch's slot; `false` for a batch sent before a
    /// rewind or a restart (its events are deleted all the same).
    fn receipted(&mut self, batch_id: uuid::Uuid) -> bool {
        let before = self.in_flight.len();
        self.in_flight.retain(|b| b.batch_id != batch_id);
        self.in_flight.len() != before
    }

    /// Whether the oldest batch has waited for its receipt longer than the
    /// receipt timeout since the broker acknowledged it (or for that
    /// acknowledgement longer than [`PUBACK_WAIT_MAX`] since it can have
    /// started crossing: its send, or the PUBACK of the one before it).
    fn overdue(&self, now: Instant) -> bool {
        self.in_flight.front().is_some_and(|b| match b.pubacked_at {
            Some(at) => now.saturating_duration_since(at) > self.receipt_timeout,
            None => {
                let crossing_since = self.last_puback.map_or(b.sent_at, |p| p.max(b.sent_at));
                now.saturating_duration_since(crossing_since) > PUBACK_WAIT_MAX
            }
        })
    }

    /// Go-back-N: forget the window and resend from the first unreceipted
    /// event. Returns how many batches were dropped from the window.
    fn rewind(&mut self) -> usize {
        let dropped = self.in_flight.len();
        self.in_flight.clear();
        self.cursor = 0;
        dropped
    }

    fn batches(&self) -> usize {
        self.in_flight.len()
    }

    fn events(&self) -> usize {
        self.in_flight.iter().map(|b| b.events).sum()
    }
}

/// Receipted events whose delete failed (the disk refused the write). The
/// receipt proves Kafka has them, so they are not resent: only the delete
/// is retried, after a pause that doubles up to the receipt timeout. Nothing
/// new is sent meanwhile: its receipt could not be applied either, and this
/// keeps the ids held here to one window's worth.
#[derive(Debug, Default)]
struct UndeletedReceipts {
    ids: Vec<protocol::EventId>,
    retry_at: Option<Instant>,
    pause: Duration,
}

impl UndeletedReceipts {
    const FIRST_PAUSE: Duration = Duration::from_secs(1);

    fn is_empty(&self) -> bool {
        self.ids.is_empty()
    }

    /// Deleting `ids` failed at `now`; the next try waits longer, up to `cap`.
    fn failed(&mut self, ids: Vec<protocol::EventId>, now: Instant, cap: Duration) {
        self.ids.extend(ids);
        self.pause = if self.pause.is_zero() {
            Self::FIRST_PAUSE
        } else {
            self.pause * 2
        }
        .min(cap.max(Self::FIRST_PAUSE));
        self.retry_at = Some(now + self.pause);
    }

    /// Every id to delete again, once the pause is over.
    fn due(&mut self, now: Instant) -> Option<Vec<protocol::EventId>> {
        match self.retry_at {
            Some(at) if now >= at && !self.ids.is_empty() => {
                self.retry_at = None;
                Some(std::mem::take(&mut self.ids))
            }
            _ => None,
        }
    }

    fn succeeded(&mut self) {
        self.pause = Duration::ZERO;
        self.retry_at = None;
    }
}

/// How to reach the cloud broker; a client and event loop are made from it
/// for every connection.
#[derive(Clone)]
pub struct CloudLink {
    pub options: MqttOptions,
    pub network: NetworkOptions,
    /// The request channel's capacity (rumqttc's `cap`).
    pub capacity: usize,
}

/// How one connection ended.
enum Ended {
    Lost(rumqttc::ConnectionError),
    Shutdown,
}

/// Connects, reconnects and polls until `shutdown`, then disconnects
/// cleanly; never blocks on the forwarder for long (the link channel is
/// sized for the whole window).
pub async fn run_connection(
    cloud: CloudLink,
    store_id: String,
    link: mpsc::Sender<Link>,
    shutdown: CancellationToken,
) {
    let receipts = topics::store_receipts_topic(&store_id);
    let mut reconnect = reconnect_policy();
    loop {
        // A fresh client and event loop per connection: requests queued on
        // the last one (a publish racing the drop, rumqttc's retransmits)
        // are dropped with it. The forwarder resends from SQLite after
        // every reconnect, in order; a stale batch sent first would not be.
        let (client, mut eventloop) = AsyncClient::new(cloud.options.clone(), cloud.capacity);
        eventloop.set_network_options(cloud.network.clone());
        match serve(
            &mut eventloop,
            &client,
            &receipts,
            &link,
            &mut reconnect,
            &shutdown,
        )
        .await
        {
            Ended::Shutdown => return disconnect(&mut eventloop, &client).await,
            Ended::Lost(e) => {
                METRICS.mqtt_connected.set(0);
                // Gone before the forwarder hears of it, so a publish on the
                // dead client fails at once instead of filling the window
                // with batches nobody will send.
                drop((client, eventloop));
                let _ = link.send(Link::Disconnected(e.to_string())).await;
                let wait = reconnect.down(Instant::now());
                tracing::warn!(error = %e, retry_in_ms = wait.as_millis() as u64, "cloud broker connection lost");
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = tokio::time::sleep(wait) => {},
                }
            }
        }
    }
}

/// Connects `eventloop` and polls it until the connection fails or
/// `shutdown`.
async fn serve(
    eventloop: &mut EventLoop,
    client: &AsyncClient,
    receipts: &str,
    link: &mpsc::Sender<Link>,
    reconnect: &mut Reconnect,
    shutdown: &CancellationToken,
) -> Ended {
    loop {
        let event = tokio::select! {
            _ = shutdown.cancelled() => return Ended::Shutdown,
            ev = eventloop.poll() => ev,
        };
        match event {
            Ok(Event::Incoming(Incoming::ConnAck(ack))) => {
                reconnect.up(Instant::now());
                METRICS.mqtt_connected.set(1);
                tracing::info!(
                    session_present = ack.session_present,
                    "connected to cloud broker"
                );
                // Subscribing on every connect is idempotent and covers a
                // broker that lost the session.
                if let Err(e) = client.try_subscribe(receipts, QoS::AtLeastOnce) {
                    tracing::warn!(error = %e, "could not queue receipts subscription");
                }
                let _ = link
                    .send(Link::Connected {
                        session_present: ack.session_present,
                        client: client.clone(),
                    })
                    .await;
            }
            // The agent publishes only batches on this client.
            Ok(Event::Incoming(Incoming::PubAck(_))) => {
                let _ = link.send(Link::PubAcked).await;
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
            Err(e) => return Ended::Lost(e),
        }
    }
}

/// Sends DISCONNECT on a live connection, waiting a moment for it to leave;
/// the session stays at the broker either way.
async fn disconnect(eventloop: &mut EventLoop, client: &AsyncClient) {
    METRICS.mqtt_connected.set(0);
    if eventloop.network.is_none() || client.try_disconnect().is_err() {
        return;
    }
    let _ = tokio::time::timeout(Duration::from_secs(2), async {
        loop {
            match eventloop.poll().await {
                Ok(Event::Outgoing(Outgoing::Disconnect)) | Err(_) => return,
                Ok(_) => {}
            }
        }
    })
    .await;
}

/// The cloud link's reconnect waits: 200 ms doubling to 15 s, jittered.
fn reconnect_policy() -> Reconnect {
    Reconnect::new(Duration::from_millis(200), Duration::from_secs(15), 0.5)
}

pub struct Forwarder {
    config: ForwarderConfig,
    outbox: OutboxHandle,
    /// The current connection's client; `None` while disconnected.
    client: Option<AsyncClient>,
    topic: String,
    window: SendWindow,
    undeleted: UndeletedReceipts,
    /// Set when the outbox file turned out damaged while running: the
    /// forwarder stops, so the agent exits and its next start sets the file
    /// aside and salvages it (`outbox/salvage.rs`).
    damaged: Option<String>,
    /// The last integrity check a failed read prompted, and the wait before
    /// another may run.
    last_check: Option<(Instant, Duration)>,
}

/// How often a read failing as corrupt may run `quick_check` (it reads the
/// whole file): a minute, doubling while the check keeps passing, up to an
/// hour.
const DAMAGE_CHECK_EVERY: Duration = Duration::from_secs(60);
const DAMAGE_CHECK_AT_MOST_EVERY: Duration = Duration::from_secs(3600);

impl Forwarder {
    pub fn new(config: ForwarderConfig, outbox: OutboxHandle) -> Self {
        let topic = topics::store_events_topic(&config.store_id);
        let window = SendWindow::new(config.max_batches_in_flight, config.receipt_timeout);
        Forwarder {
            config,
            outbox,
            client: None,
            topic,
            window,
            undeleted: UndeletedReceipts::default(),
            damaged: None,
            last_check: None,
        }
    }

    fn rewind(&mut self, why: &str) {
        let had_sent = self.window.cursor != 0;
        let dropped = self.window.rewind();
        if dropped > 0 || had_sent {
            tracing::info!(
                why,
                in_flight = dropped,
                "rewinding to the first unreceipted event"
            );
        }
        if dropped > 0 {
            METRICS.resends.inc();
        }
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
                // Collected again only on this rare path, not cloned for
                // every receipt.
                let ids = r.events.iter().map(|e| e.id).collect();
                self.undeleted
                    .failed(ids, Instant::now(), self.config.receipt_timeout);
                tracing::error!(error = %e, retry_in_ms = self.undeleted.pause.as_millis() as u64,
                    "could not delete receipted events; retrying the delete, sending nothing new meanwhile");
            }
        }
        self.window.receipted(r.batch_id);
        METRICS.batches_in_flight.set(self.window.batches() as i64);
    }

    /// Deletes the receipted events whose delete failed, once their pause is over.
    async fn retry_undeleted(&mut self) {
        let now = Instant::now();
        let Some(ids) = self.undeleted.due(now) else {
            return;
        };
        match self.outbox.delete(ids.clone()).await {
            Ok(n) => {
                self.undeleted.succeeded();
                tracing::info!(
                    deleted = n,
                    "receipted events deleted after all; sending again"
                );
            }
            Err(e) => {
                self.undeleted.failed(ids, now, self.config.receipt_timeout);
                tracing::warn!(error = %e, retry_in_ms = self.undeleted.pause.as_millis() as u64,
                    "still cannot delete receipted events");
            }
        }
    }

    /// A read failed as corrupt: damage that `quick_check` confirms stops
    /// the forwarder (the same check the next open makes, so the restart
    /// sets the file aside instead of meeting it again); a read failing
    /// without it is retried, as any failed read is.
    async fn check_damage(&mut self) {
        let now = Instant::now();
        let wait = match self.last_check {
            Some((at, wait)) if now.duration_since(at) < wait => return,
            Some((_, wait)) => wait,
            None => DAMAGE_CHECK_EVERY,
        };
        self.last_check = Some((now, wait));
        match self.outbox.damage_found().await {
            Ok(Some(why)) => self.damaged = Some(why),
            Ok(None) => {
                let next = (wait * 2).min(DAMAGE_CHECK_AT_MOST_EVERY);
                self.last_check = Some((now, next));
                tracing::warn!(
                    next_check_s = next.as_secs(),
                    "the outbox read failed as corrupt but its integrity check passes; retrying"
                );
            }
            Err(e) => tracing::warn!(error = %e, "could not check the outbox's integrity"),
        }
    }

    /// Sends one batch if the window allows; returns whether it sent anything.
    async fn send_next(&mut self) -> bool {
        if self.client.is_none() || !self.window.has_room() || !self.undeleted.is_empty() {
            return false;
        }
        let budget = batch_budget(self.config.batch_max_bytes, &self.config.store_id);
        let events = match self
            .outbox
            .read_after(self.window.cursor, self.config.batch_max_events, budget)
            .await
        {
            Ok(ev) => ev,
            Err(e) => {
                tracing::error!(error = %e, "reading the outbox failed");
                if e.is_corruption() {
                    self.check_damage().await;
                }
                return false;
            }
        };
        let Some(last) = events.last() else {
            return false;
        };
        let last_seq = last.seq;
        let mut good = Vec::with_capacity(events.len());
        for mut ev in events {
            let damage = match ev.damage() {
                None => {
                    good.push(ev);
                    continue;
                }
                // An intact payload under a damaged id: the row gets its id
                // back and is sent, not set aside.
                Some(Damage::Id {
                    payload_id: Some(id),
                }) if matches!(self.outbox.repair_id(ev.seq, id).await, Ok(true)) => {
                    ev.id = id;
                    good.push(ev);
                    continue;
                }
                Some(damage) => damage,
            };
            if let Err(e) = self.outbox.quarantine(ev.seq, damage.reason().into()).await {
                tracing::error!(error = %e, seq = ev.seq, "could not quarantine a corrupt event");
            }
        }
        self.window.advance(last_seq);
        if good.is_empty() {
            return true;
        }
        let batch_id = uuid::Uuid::now_v7();
        let payload = encode_batch(
            batch_id,
            &self.config.store_id,
            good.iter().map(|e| e.payload.as_slice()),
        );
        let Some(client) = &self.client else {
            return false;
        };
        match client
            .publish(self.topic.clone(), QoS::AtLeastOnce, false, payload)
            .await
        {
            Ok(()) => {
                METRICS.batches_sent.inc();
                METRICS.events_sent.inc_by(good.len() as u64);
                self.window.sent(batch_id, good.len(), Instant::now());
                METRICS.batches_in_flight.set(self.window.batches() as i64);
                tracing::debug!(batch = %batch_id, events = good.len(), last_seq, "batch sent");
                true
            }
            Err(e) => {
                tracing::warn!(error = %e, "publish failed; will rewind on reconnect");
                self.client = None;
                false
            }
        }
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
            if let Some(why) = self.damaged.take() {
                // Everything unreceipted stays in the file, which the next
                // start sets aside and salvages; ending here (supervised)
                // stops the agent with a failure status so it is restarted.
                tracing::error!(damage = %why,
                    "the outbox database is damaged; stopping the agent so its next start sets the file aside and recovers its events");
                return;
            }
            tokio::select! {
                _ = shutdown.cancelled() => break,
                msg = link.recv() => match msg {
                    Some(Link::Connected { session_present, client }) => {
                        self.client = Some(client);
                        self.window.connected();
                        self.rewind(if session_present { "reconnected" } else { "reconnected without session" });
                    }
                    Some(Link::Disconnected(_)) => {
                        self.client = None;
                    }
                    Some(Link::Receipt(r)) => self.on_receipt(r).await,
                    Some(Link::PubAcked) => self.window.pubacked(Instant::now()),
                    None => break,
                },
                _ = self.outbox.appended() => {},
                _ = tick.tick() => {
                    self.retry_undeleted().await;
                    if self.window.overdue(Instant::now()) {
                        // Mosquitto's acl_file grants a subscription it will
                        // deliver nothing on, so a missing read permission on
                        // the receipts topic looks exactly like this too.
                        tracing::warn!(
                            timeout_s = self.config.receipt_timeout.as_secs(),
                            "no receipt in time: the bridge or Kafka may be down, or the cloud \
                             broker's ACL does not let this store read its receipts topic"
                        );
                        self.rewind("receipt timeout");
                    }
                },
            }
        }
        let deadline = Instant::now() + grace;
        tracing::info!(
            in_flight_batches = self.window.batches(),
            pending = self.window.events(),
            "forwarder draining receipts"
        );
        while self.window.batches() > 0 {
            tokio::select! {
                _ = tokio::time::sleep_until(deadline) => break,
                msg = link.recv() => match msg {
                    Some(Link::Receipt(r)) => self.on_receipt(r).await,
                    Some(_) => {}
                    None => break,
                },
            }
        }
        if !self.undeleted.is_empty() {
            // One last try; what is left is resent after a restart and
            // receipted `duplicate`.
            let ids = std::mem::take(&mut self.undeleted.ids);
            if let Err(e) = self.outbox.delete(ids).await {
                tracing::warn!(error = %e, "receipted events could not be deleted; they stay in the outbox");
            }
        }
        tracing::info!(
            unreceipted_batches = self.window.batches(),
            "forwarder stopped; unreceipted events stay in the outbox"
        );
    }
}

/// The `max_bytes` to read a batch's events with, so that the whole
/// payload fits under `batch_max_bytes` (the broker's `message_size_limit`
/// drops a larger one, and the batch would be resent forever): what is left
/// after the batch's frame, for the events and their separators, which
/// [`OutboxHandle::read_after`] counts. A single event larger than that is
/// still sent alone.
pub(crate) fn batch_budget(batch_max_bytes: usize, store_id: &str) -> usize {
    batch_max_bytes.saturating_sub(protocol::batch::batch_frame_len(store_id))
}

#[cfg(test)]
mod tests {
    use super::*;

    const TIMEOUT: Duration = Duration::from_secs(30);

    fn batch() -> uuid::Uuid {
        uuid::Uuid::now_v7()
    }

    #[test]
    fn undeleted_receipts_are_retried_with_a_growing_pause_up_to_the_timeout() {
        let t0 = Instant::now();
        let ids = || vec![protocol::EventId::new_v7()];
        let mut u = UndeletedReceipts::default();
        assert!(u.is_empty());
        assert_eq!(u.due(t0), None);
        u.failed(ids(), t0, Duration::from_secs(5));
        assert!(!u.is_empty());
        assert_eq!(u.due(t0 + Duration::from_millis(999)), None);
        let again = u.due(t0 + Duration::from_secs(1)).expect("due after 1 s");
        assert_eq!(again.len(), 1);
        // It failed again, with another receipt's ids meanwhile: 2 s, 4 s,
        // then the cap.
        let t1 = t0 + Duration::from_secs(1);
        u.failed(again, t1, Duration::from_secs(5));
        u.failed(ids(), t1, Duration::from_secs(5));
        assert_eq!(u.due(t1 + Duration::from_millis(3_999)), None);
        let again = u.due(t1 + Duration::from_secs(4)).expect("due");
        assert_eq!(again.len(), 2, "every undeleted id is retried together");
        let t2 = t1 + Duration::from_secs(4);
        u.failed(again, t2, Duration::from_secs(5));
        assert_eq!(u.due(t2 + Duration::from_millis(4_999)), None);
        assert!(
            u.due(t2 + Duration::from_secs(5)).is_some(),
            "capped at 5 s"
        );
        u.succeeded();
        assert!(u.is_empty());
        u.failed(ids(), t2, Duration::from_secs(5));
        assert!(
            u.due(t2 + Duration::from_secs(1)).is_some(),
            "a success starts over"
        );
    }

    #[test]
    fn the_window_holds_at_most_its_capacity_and_a_receipt_frees_a_slot() {
        let t0 = Instant::now();
        let mut w = SendWindow::new(2, TIMEOUT);
        let (a, b) = (batch(), batch());
        assert!(w.has_room());
        w.sent(a, 100, t0);
        w.advance(100);
        assert!(w.has_room());
        w.sent(b, 50, t0);
        w.advance(150);
        assert!(!w.has_room(), "two batches fill a window of two");
        assert_eq!((w.batches(), w.events()), (2, 150));

        // Receipts may come back in any order.
        assert!(w.receipted(b));
        assert!(w.has_room());
        assert_eq!((w.batches(), w.events()), (1, 100));
        assert_eq!(w.cursor, 150, "a receipt never moves the send cursor back");
    }

    #[test]
    fn a_receipt_for_a_batch_from_before_a_rewind_frees_nothing_in_the_new_window() {
        let t0 = Instant::now();
        let mut w = SendWindow::new(1, TIMEOUT);
        let old = batch();
        w.sent(old, 10, t0);
        w.advance(10);
        assert_eq!(w.rewind(), 1);
        let resent = batch();
        w.sent(resent, 10, t0);
        w.advance(10);

        assert!(
            !w.receipted(old),
            "the old batch is no longer in the window"
        );
        assert!(!w.has_room(), "the resent batch still holds its slot");
        assert!(w.receipted(resent));
        assert!(
            !w.receipted(resent),
            "a second receipt of the same batch is a no-op"
        );
    }

    #[test]
    fn a_rewind_restarts_from_the_first_unreceipted_event() {
        let t0 = Instant::now();
        let mut w = SendWindow::new(4, TIMEOUT);
        for last_seq in [100, 200, 300] {
            w.sent(batch(), 100, t0);
            w.advance(last_seq);
        }
        assert_eq!(w.cursor, 300);
        assert_eq!(w.rewind(), 3);
        assert_eq!(
            w.cursor, 0,
            "the next read starts at the oldest event still stored"
        );
        assert_eq!((w.batches(), w.events()), (0, 0));
        assert!(w.has_room());
        assert_eq!(w.rewind(), 0, "rewinding an empty window drops nothing");
    }

    #[test]
    fn only_the_oldest_batch_waiting_past_the_timeout_makes_the_window_overdue() {
        let t0 = Instant::now();
        let mut w = SendWindow::new(4, TIMEOUT);
        assert!(
            !w.overdue(t0 + TIMEOUT * 10),
            "an empty window is never overdue"
        );

        let (first, second) = (batch(), batch());
        w.sent(first, 1, t0);
        w.sent(second, 1, t0 + Duration::from_secs(20));
        w.pubacked(t0);
        w.pubacked(t0 + Duration::from_secs(20));
        assert!(
            !w.overdue(t0 + TIMEOUT),
            "exactly the timeout is not past it"
        );
        assert!(w.overdue(t0 + TIMEOUT + Duration::from_millis(1)));

        // Once the oldest is receipted, the next one's own age counts.
        assert!(w.receipted(first));
        assert!(!w.overdue(t0 + TIMEOUT + Duration::from_secs(1)));
        assert!(w.overdue(t0 + Duration::from_secs(20) + TIMEOUT + Duration::from_millis(1)));
        // A clock reading before the send (never expected) is not overdue.
        assert!(!w.overdue(t0));
    }

    /// On a slow uplink a batch takes a while to cross: the receipt
    /// timeout counts from the broker's PUBACK, so a slow batch is not sent
    /// twice. PUBACKs are matched to publishes by their order on the
    /// connection, also across a rewind that dropped the earlier batches.
    #[test]
    fn the_receipt_timeout_counts_from_the_pubacks_of_this_connection() {
        let t0 = Instant::now();
        let s = Duration::from_secs;
        let mut w = SendWindow::new(4, TIMEOUT);
        let (a, b) = (batch(), batch());
        w.sent(a, 1, t0);
        w.sent(b, 1, t0);
        // Still crossing the link after 100 s: not overdue.
        assert!(!w.overdue(t0 + s(100)));
        w.pubacked(t0 + s(100));
        assert!(!w.overdue(t0 + s(100) + TIMEOUT));
        assert!(w.overdue(t0 + s(101) + TIMEOUT));
        // A broker that never acks is given up on, eventually.
        let mut stuck = SendWindow::new(1, TIMEOUT);
        stuck.sent(batch(), 1, t0);
        assert!(!stuck.overdue(t0 + PUBACK_WAIT_MAX));
        assert!(stuck.overdue(t0 + PUBACK_WAIT_MAX + s(1)));

        // A rewind drops a and b; their PUBACKs still come first on this
        // connection, and must not start the clock of the batch sent anew.
        w.rewind();
        let c = batch();
        w.sent(c, 1, t0 + s(200));
        w.pubacked(t0 + s(200)); // b's
        assert!(
            !w.overdue(t0 + s(200) + PUBACK_WAIT_MAX),
            "c is not acknowledged yet"
        );
        w.pubacked(t0 + s(300)); // c's
        assert!(!w.overdue(t0 + s(300) + TIMEOUT));
        assert!(w.overdue(t0 + s(301) + TIMEOUT));

        // Batches queued together cross one after another: the second's
        // wait counts from the first one's PUBACK.
        let mut queued = SendWindow::new(2, TIMEOUT);
        let (e, f) = (batch(), batch());
        queued.sent(e, 1, t0);
        queued.sent(f, 1, t0);
        queued.pubacked(t0 + s(590));
        assert!(queued.receipted(e));
        assert!(!queued.overdue(t0 + s(601)), "f has been crossing for 11 s");
        assert!(queued.overdue(t0 + s(591) + PUBACK_WAIT_MAX));

        // A new connection numbers its publishes from 1 again.
        w.rewind();
        w.connected();
        let d = batch();
        w.sent(d, 1, t0 + s(400));
        w.pubacked(t0 + s(401));
        assert!(w.overdue(t0 + s(402) + TIMEOUT));
        assert!(w.receipted(d));
    }

    #[test]
    fn a_read_of_only_corrupt_events_still_moves_the_cursor_past_them() {
        let mut w = SendWindow::new(1, TIMEOUT);
        w.advance(42);
        assert_eq!(w.cursor, 42);
        assert!(w.has_room(), "nothing was sent, so no slot is taken");
        w.advance(7);
        assert_eq!(
            w.cursor, 42,
            "the cursor never goes back within a connection"
        );
    }
}
