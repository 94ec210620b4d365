//! The MQTT side: a persistent session on the shared subscription, manual acks.
//!
//! * MQTT 5, a clean start of `false` and a client id that is stable per
//!   replica: Mosquitto keeps this session's unacknowledged QoS 1 messages
//!   while the replica is away and redelivers them when the *same client id*
//!   reconnects. Mosquitto 2.0 does not hand a dead member's messages to the
//!   rest of the share group, and keeps routing its round-robin share of new
//!   messages to the offline session, until the session expires
//!   (`mqtt.session_expiry_s`). So a replica that crashes and comes back with
//!   its id (a StatefulSet ordinal) within that time loses nothing and
//!   repeats nothing; one that never comes back (its node failed) strands a
//!   share of new messages only until its session expires. Mosquitto then
//!   discards the session and what it held: the agents send those events
//!   again after their receipt timeout, and the broker routes them, and
//!   everything new, to the replicas still there. MQTT 3.1.1 had no expiry
//!   (Mosquitto's `persistent_client_expiration` counts in hours at least),
//!   which is why the bridge speaks MQTT 5. With
//!   `mqtt.leave_share_group_on_shutdown` (for two or more replicas), a
//!   replica that leaves on purpose (SIGTERM) first leaves the share group
//!   ([`leave_share_group`]): it unsubscribes, takes what the broker had
//!   already routed to it, and only then drains and exits, so a scale-down
//!   strands no new messages in an offline session.
//! * Manual acks: a message is acknowledged by the pipeline only after Kafka
//!   has every event and the receipt is on its way; the event loop never
//!   acks, never blocks and never waits on Kafka.
//! * Bounded memory: the event loop hands publishes over a channel of
//!   [`RECEIVED_QUEUE`] messages and never waits on it. The broker's
//!   `max_inflight_messages` is the first bound, but not one to rely on: 0
//!   means unlimited, and Mosquitto 2.0.11 (Debian 12) breaks it, sending a
//!   client that acks in order its whole backlog (6,000 messages, 600 MB of
//!   bridge memory in `bench_bridge`; see `scripts/mosquitto.sh`). The
//!   bridge's own MQTT 5 Receive Maximum (`mqtt.receive_maximum`) is a
//!   second bound, but only as good as the broker that honours it. Nor can
//!   the loop simply stop reading: the broker's PUBACKs for our receipts
//!   queue behind that backlog, so receipts, then acks, then the whole
//!   pipeline would wait on reads that wait on the pipeline. So when the
//!   queue is full, or the payload bytes held reach
//!   `limits.max_bytes_in_flight` ([`crate::payload_budget`]), the loop
//!   *defers*: it leaves that message and every later one unacked and
//!   undelivered (later ones too, so each store's order holds), keeps
//!   reading, and once the queue has drained (and half the payload budget is
//!   back) it reconnects. The persistent session then redelivers every
//!   unacked message in order; copies of those still in the pipeline are
//!   settled by the de-duplication window.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use backoff::backoff::Backoff;
use backoff::ExponentialBackoff;
use rumqttc::v5::mqttbytes::v5::{Packet, PubAckReason, Publish, SubscribeReasonCode};
use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::{AsyncClient, Event, EventLoop, MqttOptions};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::config::MqttConfig;
use crate::log_limit::LogLimiter;
use crate::metrics::{Metrics, ReasonLabel};
use crate::payload_budget::{HeldPayload, PayloadBudget};

/// A message handed to the pipeline, with its bytes held in the budget
/// until it is dropped, and the connection it arrived on.
pub struct Received {
    pub publish: Publish,
    pub held: HeldPayload,
    pub connection: ConnectionId,
}

/// Which MQTT connection of this bridge a message arrived on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnectionId(u64);

/// The bridge's current MQTT connection, for the ack rule below.
///
/// A packet id names a message only within its session, and this bridge
/// cannot tell in advance whether the broker kept the session. An ack
/// requested after the connection its message came on was lost would go out
/// on the next connection; if the broker forgot the session
/// (`session_present = false`), packet ids start over there, and the same id
/// names an unrelated new message, which the stale ack would settle before
/// Kafka has it. So a message is acked only on the connection it arrived on.
/// One whose connection was lost stays unacked: a kept session redelivers it
/// and the de-duplication window settles the copy without producing it
/// again; a forgotten session had dropped it anyway, and its store sends the
/// events again when no receipt comes.
///
/// rumqttc discards the acks still queued when a connection fails, and the
/// event loop moves to the next id as soon as `poll` reports the failure;
/// only an ack checked in the instant between the two can still slip
/// through. Not one that waited for room in a full request channel (rumqttc
/// would pull it in on the next connection): the configuration sizes the
/// channel for every unacked message's receipt and ack, so it is never full.
#[derive(Debug, Default)]
pub struct CurrentConnection(AtomicU64);

impl CurrentConnection {
    pub fn id(&self) -> ConnectionId {
        ConnectionId(self.0.load(Ordering::Acquire))
    }

    fn lost(&self) {
        self.0.fetch_add(1, Ordering::AcqRel);
    }
}

/// Where the event loop hands messages to the pipeline: the received queue,
/// and the payload budget its messages hold bytes of.
pub struct Handoff {
    pub queue: mpsc::Sender<Received>,
    pub budget: PayloadBudget,
}

/// Messages received and not yet taken by the pipeline. With the pipeline's
/// `limits.max_messages_in_flight`, this bounds the MQTT payloads the bridge
/// holds.
pub const RECEIVED_QUEUE: usize = 512;

/// How often a deferring loop checks whether the queue has drained.
const DRAIN_CHECK: Duration = Duration::from_millis(50);

/// Waits between attempts to reach the broker start near this and double …
const RECONNECT_FIRST: Duration = Duration::from_millis(200);
/// … up to this, with jitter, so replicas that lost the same broker do not
/// all come back in the same instant.
const RECONNECT_MAX: Duration = Duration::from_secs(5);
/// The waits start over only after a connection that held this long: one
/// the broker accepts and drops at once (an ACL, a refused packet) would
/// otherwise be retried every 200 ms for ever.
const RECONNECT_STABLE: Duration = Duration::from_secs(30);

/// How far each wait is spread either way.
const RECONNECT_JITTER: f64 = 0.3;

fn reconnect_backoff() -> ExponentialBackoff {
    ExponentialBackoff {
        // Both: the struct starts from `current_interval` (default 500 ms).
        current_interval: RECONNECT_FIRST,
        initial_interval: RECONNECT_FIRST,
        randomization_factor: RECONNECT_JITTER,
        multiplier: 2.0,
        // The crate randomizes after capping: capped at RECONNECT_MAX, half
        // the waits at the cap would be clipped to exactly it, in step.
        max_interval: RECONNECT_MAX.div_f64(1.0 + RECONNECT_JITTER),
        max_elapsed_time: None,
        ..ExponentialBackoff::default()
    }
}

/// How long a leaving bridge waits for the broker's UNSUBACK.
const UNSUBACK_WAIT: Duration = Duration::from_secs(3);
/// After the UNSUBACK, messages the broker had already routed to this
/// session keep arriving until its queue is empty; this long without one,
/// and with nothing in flight, counts as empty.
const LEAVE_QUIET: Duration = Duration::from_millis(300);
/// The longest a leaving bridge keeps taking messages before it drains.
const LEAVE_MAX: Duration = Duration::from_secs(5);

/// Connection state read by `/readyz`.
#[derive(Debug, Default)]
pub struct Health {
    pub mqtt_connected: AtomicBool,
    /// The broker confirmed the shared subscription on the current connection.
    pub subscribed: AtomicBool,
    /// Shutting down: the bridge has left (or is leaving) the share group
    /// and must not subscribe again when it reconnects.
    pub leaving: AtomicBool,
    /// Notified when the broker confirms the UNSUBSCRIBE.
    pub unsubscribed: tokio::sync::Notify,
    /// Which connection acks may go out on (see [`CurrentConnection`]).
    pub connection: CurrentConnection,
    pub kafka_connected: AtomicBool,
    /// The producer can write (its producer id is assigned, with idempotence).
    pub kafka_producer_ready: AtomicBool,
}

/// Builds the client from validated config (rumqttc's setters assert).
pub fn client(cfg: &MqttConfig) -> (AsyncClient, EventLoop) {
    let mut o = MqttOptions::new(&cfg.client_id, &cfg.host, cfg.port);
    // Validated: the packet limit is at most 256 MiB, the expiry a week.
    let max_packet = u32::try_from(cfg.max_packet_bytes).unwrap_or(u32::MAX);
    let expiry_s = u32::try_from(cfg.session_expiry.as_secs()).unwrap_or(u32::MAX);
    o.set_keep_alive(cfg.keep_alive)
        .set_clean_start(false)
        .set_session_expiry_interval(Some(expiry_s))
        .set_receive_maximum(Some(cfg.receive_maximum))
        .set_manual_acks(true)
        .set_max_packet_size(Some(max_packet))
        .set_outgoing_inflight_upper_limit(cfg.outgoing_inflight)
        .set_request_channel_capacity(cfg.request_channel_capacity);
    if let Some((u, p)) = &cfg.credentials {
        o.set_credentials(u, p);
    }
    if let Some(tls) = &cfg.tls {
        o.set_transport(rumqttc::Transport::Tls(rumqttc::TlsConfiguration::Simple {
            ca: tls.ca_pem.clone(),
            alpn: None,
            client_auth: tls.client_auth.clone(),
        }));
    }
    // Receipts and acks are small writes an agent waits on (one batch in
    // flight per store by default): Nagle plus delayed ACKs would add ~40 ms.
    let mut network = rumqttc::NetworkOptions::new();
    network.set_tcp_nodelay(true);
    o.set_network_options(network);
    AsyncClient::new(o, cfg.request_channel_capacity)
}

/// How long a stopping loop waits for the broker to close the connection
/// after the DISCONNECT queued before `stop`.
const STOP_GRACE: Duration = Duration::from_secs(2);

/// Drives the event loop until `stop` is cancelled and the broker has closed
/// the connection after the DISCONNECT queued before it (or `stop` plus
/// [`STOP_GRACE`] passes).
/// Reconnects with a capped backoff and subscribes again on every CONNACK.
///
/// A `poll()` in progress is never dropped, not for `stop` nor for the
/// deferral's drain checks: rumqttc takes a request off its channel before
/// it writes it, so a poll cancelled while the socket is full loses that
/// request, and a lost ack means a message redelivered although Kafka has it.
pub async fn run_event_loop(
    mut eventloop: EventLoop,
    client: AsyncClient,
    subscription: String,
    handoff: Handoff,
    health: Arc<Health>,
    metrics: Arc<Metrics>,
    stop: CancellationToken,
) {
    let Handoff { queue: tx, budget } = handoff;
    let mut reconnect = reconnect_backoff();
    let mut connected_at: Option<Instant> = None;
    let mut intake = Intake::Open;
    let refusals = LogLimiter::new(REFUSAL_LOG_EVERY);
    // From a lost connection to the next CONNACK. rumqttc keeps the packets
    // it read before the read that failed and hands them out only after it
    // has reconnected, ahead of the CONNACK: such a message came on the
    // lost connection, and its packet id names nothing (or another message)
    // on the new one.
    let mut between_connections = true;
    let mut left_to_broker = 0u64;
    // Set once `stop` is cancelled: the deadline for the DISCONNECT.
    let mut stopping: Option<tokio::time::Instant> = None;
    'run: loop {
        let polled = {
            let mut poll = std::pin::pin!(eventloop.poll());
            loop {
                if intake == Intake::Deferring && tx.is_closed() {
                    intake = Intake::Closed;
                }
                if intake == Intake::Deferring
                    && tx.capacity() == tx.max_capacity()
                    && budget.has_room()
                {
                    intake = Intake::Reconnecting;
                    tracing::info!("received queue and payload budget drained; reconnecting so the broker redelivers the deferred messages");
                    // Queued behind the receipts and acks already requested.
                    let c = client.clone();
                    tokio::spawn(async move {
                        if let Err(e) = c.disconnect().await {
                            tracing::warn!(error = %e, "could not queue the MQTT reconnect");
                        }
                    });
                }
                let deadline = stopping.unwrap_or_else(tokio::time::Instant::now);
                tokio::select! {
                    p = &mut poll => break p,
                    _ = stop.cancelled(), if stopping.is_none() => {
                        stopping = Some(tokio::time::Instant::now() + STOP_GRACE);
                    }
                    _ = tokio::time::sleep_until(deadline), if stopping.is_some() => {
                        tracing::warn!("the broker did not close the connection after the DISCONNECT in time; closing it");
                        break 'run;
                    }
                    _ = tokio::time::sleep(DRAIN_CHECK), if intake == Intake::Deferring => {}
                }
            }
        };
        if stopping.is_some() && polled.is_err() {
            // The broker closed the connection after our DISCONNECT (or it
            // was lost). Not at our own DISCONNECT already: closing a socket
            // with unread bytes (the broker's PUBACKs, messages it kept
            // sending) makes Linux reset the connection, and a reset can
            // discard what the broker had not yet read of our last receipts
            // and acks.
            break;
        }
        match polled {
            Ok(Event::Incoming(Packet::ConnAck(ack))) => {
                connected_at = Some(Instant::now());
                between_connections = false;
                if left_to_broker > 0 {
                    tracing::info!(
                        messages = std::mem::take(&mut left_to_broker),
                        "messages read off the lost connection were left unacked: the broker \
                         resends them with the session, or the stores after their receipt timeout"
                    );
                }
                // A new connection: the broker resends what is unacked, in order.
                if intake != Intake::Closed {
                    intake = Intake::Open;
                }
                health.mqtt_connected.store(true, Ordering::Relaxed);
                tracing::info!(session_present = ack.session_present, "connected to MQTT");
                if health.leaving.load(Ordering::Relaxed) {
                    // Shutting down: the session still delivers what was
                    // routed to it, but the share group is left for good.
                    continue;
                }
                // Subscribing from here would await the request channel the
                // event loop itself drains: hand it to a task.
                let c = client.clone();
                let s = subscription.clone();
                tokio::spawn(async move {
                    if let Err(e) = c.subscribe(&s, QoS::AtLeastOnce).await {
                        tracing::error!(error = %e, "could not queue the MQTT subscription");
                    }
                });
            }
            Ok(Event::Incoming(Packet::SubAck(ack))) => {
                tracing::info!(codes = ?ack.return_codes, subscription = %subscription, "subscribed");
                // QoS 0 would be a subscription without acks: nothing the
                // bridge defers or loses in a crash would be redelivered.
                let granted = ack.return_codes.iter().all(|c| {
                    matches!(
                        c,
                        SubscribeReasonCode::Success(QoS::AtLeastOnce | QoS::ExactlyOnce)
                    )
                });
                if !granted {
                    tracing::error!(codes = ?ack.return_codes, %subscription,
                        "the broker did not grant the subscription at QoS 1; not ready (check its ACL and max_qos)");
                }
                health.subscribed.store(granted, Ordering::Relaxed);
            }
            // The bridge publishes only receipts. rumqttc logs a refused
            // one at warn level without its topic and passes the PUBACK on.
            Ok(Event::Incoming(Packet::PubAck(ack)))
                if !matches!(
                    ack.reason,
                    PubAckReason::Success | PubAckReason::NoMatchingSubscribers
                ) =>
            {
                receipt_refused(ack.reason, &refusals, &metrics);
            }
            Ok(Event::Incoming(Packet::UnsubAck(_))) => {
                health.subscribed.store(false, Ordering::Relaxed);
                // A stored permit if the leaving task is not waiting yet.
                health.unsubscribed.notify_one();
            }
            Ok(Event::Incoming(Packet::Publish(_))) if between_connections => {
                // Not handed on: acked on the new connection, it could settle
                // a different message there before Kafka has it; and the
                // broker redelivers the deferred ones first, which this one
                // must not overtake.
                metrics.mqtt_messages.inc();
                metrics.mqtt_messages_deferred.inc();
                left_to_broker += 1;
            }
            Ok(Event::Incoming(Packet::Publish(p))) => {
                metrics.mqtt_messages.inc();
                if intake != Intake::Open {
                    metrics.mqtt_messages_deferred.inc();
                    continue;
                }
                let Some(held) = budget.try_take(p.payload.len()) else {
                    intake = Intake::Deferring;
                    metrics.mqtt_messages_deferred.inc();
                    tracing::warn!(
                        held_bytes = budget.held(),
                        "payload budget spent; deferring messages to the broker until it drains"
                    );
                    continue;
                };
                let connection = health.connection.id();
                match tx.try_send(Received {
                    publish: p,
                    held,
                    connection,
                }) {
                    Ok(()) => {}
                    Err(mpsc::error::TrySendError::Full(_)) => {
                        intake = Intake::Deferring;
                        metrics.mqtt_messages_deferred.inc();
                        tracing::warn!(
                            queue = RECEIVED_QUEUE,
                            "received queue full; deferring messages to the broker until it drains"
                        );
                    }
                    // Shutting down: this and later messages stay with the
                    // broker, unacked. Keep polling: messages still settling
                    // send their receipts and acks through this loop.
                    Err(mpsc::error::TrySendError::Closed(_)) => {
                        intake = Intake::Closed;
                        metrics.mqtt_messages_deferred.inc();
                        tracing::info!(
                            "the pipeline takes no more messages; later ones stay with the broker"
                        );
                    }
                }
            }
            Ok(_) => {}
            Err(e) if intake == Intake::Reconnecting => {
                // Our own DISCONNECT: reconnect at once, this once. Should
                // that attempt fail too (the broker restarting), the next
                // error takes the backoff below instead of spinning.
                intake = Intake::Open;
                between_connections = true;
                health.connection.lost();
                health.mqtt_connected.store(false, Ordering::Relaxed);
                health.subscribed.store(false, Ordering::Relaxed);
                tracing::info!(error = %e, "reconnecting for the deferred messages");
            }
            Err(e) => {
                between_connections = true;
                health.connection.lost();
                health.mqtt_connected.store(false, Ordering::Relaxed);
                health.subscribed.store(false, Ordering::Relaxed);
                if connected_at
                    .take()
                    .is_some_and(|at| at.elapsed() >= RECONNECT_STABLE)
                {
                    reconnect.reset();
                }
                let pause = reconnect
                    .next_backoff()
                    .unwrap_or(RECONNECT_MAX)
                    .min(RECONNECT_MAX);
                tracing::warn!(error = %e, retry_in_ms = pause.as_millis() as u64, "MQTT connection lost");
                tokio::select! {
                    _ = stop.cancelled() => break,
                    _ = tokio::time::sleep(pause) => {}
                }
            }
        }
    }
    health.mqtt_connected.store(false, Ordering::Relaxed);
}

/// Waits for `shutdown`, then leaves the share group before `intake` stops.
///
/// Mosquitto keeps routing a share of new messages to a member's offline
/// persistent session, where they wait until the same client id connects
/// again; a replica retired by a scale-down never does. So the bridge first
/// unsubscribes (the broker then routes every new message to the other
/// members), keeps taking the messages already routed to its session until
/// they stop coming ([`LEAVE_QUIET`], at most [`LEAVE_MAX`] in all), and
/// only then cancels `intake`: the pipeline drains within its grace period
/// and the bridge exits. A replica that crashes cannot do this: until it
/// comes back under its client id (the StatefulSet's ordinal) or its
/// session expires, the agents' receipt timeout sends its share again.
pub async fn leave_share_group(
    client: AsyncClient,
    subscription: String,
    health: Arc<Health>,
    metrics: Arc<Metrics>,
    shutdown: CancellationToken,
    intake: CancellationToken,
) {
    shutdown.cancelled().await;
    let started = Instant::now();
    health.leaving.store(true, Ordering::Relaxed);
    tracing::info!(%subscription, "leaving the share group: unsubscribing so the other replicas take new messages");
    let unsubscribe = async {
        match client.unsubscribe(&subscription).await {
            Ok(()) => {
                health.unsubscribed.notified().await;
                true
            }
            Err(e) => {
                tracing::warn!(error = %e, "could not queue the MQTT unsubscribe");
                false
            }
        }
    };
    match tokio::time::timeout(UNSUBACK_WAIT, unsubscribe).await {
        Ok(true) => tracing::info!(
            elapsed_ms = started.elapsed().as_millis() as u64,
            "unsubscribed; taking the messages already routed to this replica"
        ),
        Ok(false) => {}
        Err(_) => tracing::warn!(
            wait_s = UNSUBACK_WAIT.as_secs(),
            "no UNSUBACK; the broker may route new messages to this session until it expires"
        ),
    }
    // The broker sends the next queued message only when an in-flight one
    // is acked, so quiet counts only while nothing is in flight here.
    let mut seen = metrics.mqtt_messages.get();
    let mut last_change = Instant::now();
    while started.elapsed() < LEAVE_MAX && last_change.elapsed() < LEAVE_QUIET {
        tokio::time::sleep(Duration::from_millis(50)).await;
        let now = metrics.mqtt_messages.get();
        if now != seen || metrics.events_in_flight.get() > 0 {
            seen = now;
            last_change = Instant::now();
        }
    }
    if last_change.elapsed() < LEAVE_QUIET {
        tracing::warn!(
            max_s = LEAVE_MAX.as_secs(),
            "messages kept arriving while leaving; the rest stay in this session"
        );
    }
    intake.cancel();
}

/// What the event loop does with a received publish.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Intake {
    /// Hand it to the pipeline.
    Open,
    /// The queue was full: leave this and every later publish unacked until
    /// the queue has drained.
    Deferring,
    /// Drained; a DISCONNECT is on its way. Leave everything to the next
    /// connection, on which the broker resends it all in order.
    Reconnecting,
    /// The pipeline takes nothing more (shutting down). Publishes stay
    /// unacked for the session's next connection, but the loop keeps
    /// running until `stop`: the receipts and acks of the messages still
    /// settling go out through it, and so does the final DISCONNECT.
    Closed,
}

/// How often a refused receipt is logged at most, per reason.
const REFUSAL_LOG_EVERY: Duration = Duration::from_secs(10);

/// A receipt the broker refused: counted by reason, logged at error level at
/// most once per [`REFUSAL_LOG_EVERY`] with how many were held back. A
/// broker ACL without write on the receipts topics refuses every receipt,
/// and the stores resend for ever.
fn receipt_refused(reason: PubAckReason, limiter: &LogLimiter, metrics: &Metrics) {
    let label = refusal_label(reason);
    metrics
        .receipts_refused
        .get_or_create(&ReasonLabel {
            reason: label.to_owned(),
        })
        .inc();
    if let Some(held_back) = limiter.admit(label, Instant::now()) {
        tracing::error!(
            reason = label,
            held_back,
            topics = %protocol::topics::store_receipts_topic("+"),
            "the MQTT broker refused a delivery receipt: the store will not hear that Kafka \
             has its events and will send them again; the bridge needs publish (write) \
             access to the receipts topics"
        );
    }
}

fn refusal_label(reason: PubAckReason) -> &'static str {
    match reason {
        PubAckReason::Success => "success",
        PubAckReason::NoMatchingSubscribers => "no_matching_subscribers",
        PubAckReason::UnspecifiedError => "unspecified_error",
        PubAckReason::ImplementationSpecificError => "implementation_specific_error",
        PubAckReason::NotAuthorized => "not_authorized",
        PubAckReason::TopicNameInvalid => "topic_name_invalid",
        PubAckReason::PacketIdentifierInUse => "packet_identifier_in_use",
        PubAckReason::QuotaExceeded => "quota_exceeded",
        PubAckReason::PayloadFormatInvalid => "payload_format_invalid",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    mod lost_connection {
        use bytes::BytesMut;
        use rumqttc::v5::mqttbytes::v5::{
            ConnAck, ConnectReturnCode, Disconnect, DisconnectReasonCode, Packet, Publish, SubAck,
            SubscribeReasonCode,
        };
        use rumqttc::v5::mqttbytes::QoS;
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        use tokio::net::{TcpListener, TcpStream};

        use super::*;

        /// One connection of a scripted MQTT 5 broker.
        struct Peer {
            sock: TcpStream,
            buf: BytesMut,
        }

        impl Peer {
            async fn accept(listener: &TcpListener) -> Peer {
                let (sock, _) = listener.accept().await.expect("accept");
                Peer {
                    sock,
                    buf: BytesMut::new(),
                }
            }

            /// The next packet, or `None` once the client closed.
            async fn next(&mut self) -> Option<Packet> {
                loop {
                    match Packet::read(&mut self.buf, None) {
                        Ok(p) => return Some(p),
                        Err(rumqttc::v5::mqttbytes::Error::InsufficientBytes(_)) => {}
                        Err(e) => panic!("client sent garbage: {e:?}"),
                    }
                    if self.sock.read_buf(&mut self.buf).await.ok()? == 0 {
                        return None;
                    }
                }
            }

            async fn send(&mut self, packets: &[Packet]) {
                let mut out = BytesMut::new();
                for p in packets {
                    p.write(&mut out, None).expect("encode");
                }
                // One write: the client reads them all in one go.
                self.sock.write_all(&out).await.expect("write");
            }

            /// CONNECT → CONNACK (no session), SUBSCRIBE → SUBACK.
            async fn handshake(&mut self) {
                assert!(matches!(self.next().await, Some(Packet::Connect(..))));
                self.send(&[Packet::ConnAck(ConnAck {
                    session_present: false,
                    code: ConnectReturnCode::Success,
                    properties: None,
                })])
                .await;
                let Some(Packet::Subscribe(sub)) = self.next().await else {
                    panic!("expected SUBSCRIBE");
                };
                self.send(&[Packet::SubAck(SubAck {
                    pkid: sub.pkid,
                    return_codes: vec![SubscribeReasonCode::Success(QoS::AtLeastOnce)],
                    properties: None,
                })])
                .await;
            }
        }

        /// The broker sends a message and, in the same read, goes away
        /// (DISCONNECT "server shutting down"); it comes back without the
        /// session. rumqttc hands that message out only after reconnecting:
        /// before, it reached the pipeline as the new connection's, and its
        /// ack went out there, where packet id 7 may name another store's
        /// message that Kafka does not have.
        #[tokio::test]
        async fn a_message_read_off_a_lost_connection_is_never_acked_on_the_next() {
            let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
            let port = listener.local_addr().expect("addr").port();
            let broker = tokio::spawn(async move {
                let mut first = Peer::accept(&listener).await;
                first.handshake().await;
                let mut publish = Publish::new(
                    protocol::topics::store_events_topic("store-a"),
                    QoS::AtLeastOnce,
                    b"{}".to_vec(),
                    None,
                );
                publish.pkid = 7;
                first
                    .send(&[
                        Packet::Publish(publish),
                        Packet::Disconnect(Disconnect {
                            reason_code: DisconnectReasonCode::ServerShuttingDown,
                            properties: None,
                        }),
                    ])
                    .await;
                drop(first);
                let mut second = Peer::accept(&listener).await;
                second.handshake().await;
                let mut seen = Vec::new();
                let until = tokio::time::Instant::now() + Duration::from_millis(1500);
                while let Ok(Some(p)) = tokio::time::timeout_at(until, second.next()).await {
                    seen.push(format!("{p:?}"));
                }
                seen
            });

            let raw = crate::config::RawConfig::from_toml(
                &format!(
                    "[mqtt]\nhost = \"127.0.0.1\"\nport = {port}\n[kafka]\nbootstrap = \"k:1\"\n"
                ),
                "test",
            )
            .expect("toml");
            let cfg = raw.validate(vec![]).expect("config");
            let (client, eventloop) = super::client(&cfg.mqtt);
            let (tx, mut rx) = mpsc::channel(RECEIVED_QUEUE);
            let budget = PayloadBudget::new(1 << 20, Default::default(), Default::default());
            let health = Arc::new(Health::default());
            let stop = CancellationToken::new();
            let looping = tokio::spawn(run_event_loop(
                eventloop,
                client.clone(),
                protocol::topics::bridge_shared_subscription("test"),
                Handoff { queue: tx, budget },
                health.clone(),
                Arc::new(Metrics::new()),
                stop.clone(),
            ));
            // The pipeline's rule: ack only on the connection a message came on.
            let mut handed_on = Vec::new();
            let acking = async {
                while let Some(r) = rx.recv().await {
                    handed_on.push((r.publish.pkid, r.connection));
                    if r.connection == health.connection.id() {
                        let _ = client.ack(&r.publish).await;
                    }
                }
            };
            let seen = tokio::select! {
                seen = broker => seen.expect("broker"),
                _ = acking => unreachable!("the queue stays open"),
            };
            stop.cancel();
            let _ = client.disconnect().await;
            let _ = tokio::time::timeout(Duration::from_secs(5), looping).await;
            assert!(
                !seen.iter().any(|p| p.starts_with("PubAck")),
                "an ack went out on the new connection for a message of the lost one: {seen:?}; handed on: {handed_on:?}"
            );
        }
    }

    #[test]
    fn reconnect_waits_start_small_grow_with_jitter_and_stay_capped() {
        let mut b = reconnect_backoff();
        // The crate's own values, not clamped here: the cap must come from
        // how the backoff is built (`max_interval` below the cap by the jitter).
        let waits: Vec<Duration> = (0..20).filter_map(|_| b.next_backoff()).collect();
        assert_eq!(waits.len(), 20, "the waits never run out");
        assert!(
            waits[0] >= Duration::from_millis(140) && waits[0] <= Duration::from_millis(260),
            "the first wait is near 200 ms: {waits:?}"
        );
        assert!(waits.iter().all(|w| *w <= RECONNECT_MAX), "{waits:?}");
        assert!(
            waits[10..]
                .iter()
                .all(|w| *w >= Duration::from_millis(2_600)),
            "later waits sit in the top half below the cap: {waits:?}"
        );
        assert!(
            waits[10..].iter().filter(|w| **w >= RECONNECT_MAX).count() <= 1,
            "later waits are spread, not clipped to the cap in step: {waits:?}"
        );
        // A connection that came up starts the waits over.
        b.reset();
        assert!(b
            .next_backoff()
            .is_some_and(|w| w <= Duration::from_millis(260)));
    }

    #[test]
    fn a_lost_connection_gets_a_new_id() {
        let current = CurrentConnection::default();
        let first = current.id();
        assert_eq!(current.id(), first);
        current.lost();
        assert_ne!(
            current.id(),
            first,
            "acks of the lost connection are told apart"
        );
    }
}
