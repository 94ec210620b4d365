//! The in-store MQTT side of the shelf sensors: subscribe to
//! `sensors/+/raw` (QoS 1) on the local broker, run each message through
//! its sensor's [`Shelf`] state machine, submit what comes out.
//!
//! Two tasks so the MQTT event loop is never blocked by the outbox: the
//! poller only moves publishes into a bounded queue (full queue → the
//! reading is dropped and counted; sensors publish again); the processor
//! owns the state machines and the clock (silence and dwell deadlines).
//! The session is clean: after an agent restart stale readings are not
//! replayed, the sensors' next readings are what counts. For the same
//! reason a retained message is skipped (and counted, `result="retained"`):
//! the broker hands it over at every subscribe, so a sensor that published
//! retained and has since gone dead would come back `online` with its last
//! weight stamped as new.

use std::collections::HashMap;
use std::time::Duration;

use chrono::Utc;
use firmware_config::{LocalMqtt, ShelfSensor};
use protocol::device::StockAlertKind;
use protocol::topics::{sensor_id_from_topic, ALL_SHELF_SENSORS};
use protocol::{EventBody, Source, SourceKind};
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use super::shelf::{parse_payload, Output, ReadingOutcome, Shelf};
use super::{Submitted, Submitter};
use crate::reconnect::Reconnect;

/// The largest MQTT packet the agent reads from the in-store broker. A
/// larger one drops the connection; if it is retained, every reconnect gets
/// it again and no reading arrives any more. So the store's broker must
/// refuse larger messages first: `message_size_limit` in
/// `k3s/base/mosquitto/mosquitto.conf` stays well under this (a test checks).
const MAX_PACKET_BYTES: usize = 64 * 1024;

/// Messages queued between the MQTT event loop and the processor.
const QUEUE: usize = 1024;
/// At most one "unparseable" warning per sensor per this long (the counter counts all).
const WARN_EVERY: Duration = Duration::from_secs(60);

struct Message {
    topic: String,
    payload: bytes::Bytes,
    at: Instant,
}

struct Sensor {
    shelf: Shelf,
    source: Source,
    last_warned: Option<Instant>,
}

/// MQTT client id on the in-store broker.
pub fn client_id(store_id: &str, local: &LocalMqtt) -> String {
    local
        .client_id
        .clone()
        .unwrap_or_else(|| format!("{store_id}-agent-devices"))
}

/// Starts the poller and the processor for `sensors` (non-empty).
pub fn spawn(
    store_id: &str,
    local: &LocalMqtt,
    sensors: &[ShelfSensor],
    submitter: Submitter,
    shutdown: CancellationToken,
) -> Vec<tokio::task::JoinHandle<()>> {
    let now = Instant::now();
    let mut states = HashMap::new();
    for cfg in sensors {
        // The profile was validated: an invalid GTIN cannot get here, but a
        // sensor without one is skipped rather than taking the agent down.
        let Ok(gtin) = cfg.gtin.parse() else {
            tracing::error!(sensor = %cfg.id, gtin = %cfg.gtin, "shelf sensor has an invalid GTIN; ignored");
            continue;
        };
        let (Some(scale), Some(unit_mg)) = (cfg.scale(), cfg.unit_weight_mg()) else {
            tracing::error!(sensor = %cfg.id, "shelf sensor has no usable calibration or item weight; ignored");
            continue;
        };
        states.insert(
            cfg.id.clone(),
            Sensor {
                shelf: Shelf::new(cfg, gtin, scale, unit_mg, now),
                source: Source {
                    kind: SourceKind::ShelfSensor,
                    device_id: cfg.id.clone(),
                },
                last_warned: None,
            },
        );
    }
    let mut opts = MqttOptions::new(client_id(store_id, local), local.host.clone(), local.port);
    opts.set_clean_session(true);
    opts.set_keep_alive(Duration::from_secs(30));
    opts.set_max_packet_size(MAX_PACKET_BYTES, MAX_PACKET_BYTES);
    if let Some(user) = &local.username {
        // Read at start: a rotated Secret takes effect on the next restart.
        let password = match &local.password_file {
            Some(f) => match std::fs::read_to_string(f) {
                Ok(p) => p.trim_end().to_owned(),
                Err(e) => {
                    tracing::error!(file = %f.display(), error = %e, "cannot read the in-store broker password; connecting without it");
                    String::new()
                }
            },
            None => String::new(),
        };
        opts.set_credentials(user.clone(), password);
    }
    let (client, eventloop) = AsyncClient::new(opts, 64);
    let (tx, rx) = mpsc::channel(QUEUE);
    let known: std::collections::HashSet<String> = states.keys().cloned().collect();
    let span = tracing::info_span!("shelf_sensors", store = %store_id, broker = %format!("{}:{}", local.host, local.port));
    vec![
        tokio::spawn(
            poll(
                client,
                eventloop,
                tx,
                known,
                submitter.clone(),
                shutdown.clone(),
            )
            .instrument(span.clone()),
        ),
        tokio::spawn(process(states, rx, submitter, shutdown).instrument(span)),
    ]
}

async fn poll(
    client: AsyncClient,
    mut eventloop: rumqttc::EventLoop,
    tx: mpsc::Sender<Message>,
    known: std::collections::HashSet<String>,
    submitter: Submitter,
    shutdown: CancellationToken,
) {
    let mut reconnect = Reconnect::new(Duration::from_millis(200), Duration::from_secs(5), 0.3);
    let mut failing = false;
    loop {
        let event = tokio::select! {
            _ = shutdown.cancelled() => {
                let _ = client.try_disconnect();
                return;
            }
            ev = eventloop.poll() => ev,
        };
        match event {
            Ok(Event::Incoming(Packet::ConnAck(_))) => {
                tracing::info!("connected to the in-store broker");
                failing = false;
                reconnect.up(Instant::now());
                // Clean session: subscribe on every connection.
                if let Err(e) = client.try_subscribe(ALL_SHELF_SENSORS, QoS::AtLeastOnce) {
                    tracing::error!("cannot subscribe to {ALL_SHELF_SENSORS}: {e}");
                }
            }
            Ok(Event::Incoming(Packet::Publish(p))) if p.retain => {
                // A broker sets the flag only on the stored copy it sends a
                // new subscription; live readings arrive without it.
                let sensor = sensor_id_from_topic(&p.topic)
                    .filter(|id| known.contains(*id))
                    .unwrap_or("unknown");
                submitter.metrics.shelf_reading(sensor, "retained");
                tracing::debug!(
                    sensor,
                    "retained shelf reading skipped: it is not a new reading"
                );
            }
            Ok(Event::Incoming(Packet::Publish(p))) => {
                let msg = Message {
                    topic: p.topic,
                    payload: p.payload,
                    at: Instant::now(),
                };
                if let Err(mpsc::error::TrySendError::Full(m)) = tx.try_send(msg) {
                    // Label only sensors the profile knows: topics are client-chosen.
                    let sensor = sensor_id_from_topic(&m.topic)
                        .filter(|id| known.contains(*id))
                        .unwrap_or("unknown");
                    submitter.metrics.shelf_reading(sensor, "dropped");
                    tracing::warn!(sensor, "shelf reading dropped: processing queue full");
                }
            }
            Ok(_) => {}
            Err(e) => {
                if !failing {
                    tracing::warn!("in-store broker connection failed: {e}; retrying");
                } else {
                    tracing::debug!("in-store broker connection failed again: {e}");
                }
                failing = true;
                // rumqttc reconnects on the next poll; wait first so a broker
                // that is down does not turn this into a busy loop.
                let wait = reconnect.down(Instant::now());
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = tokio::time::sleep(wait) => {}
                }
            }
        }
    }
}

async fn process(
    mut states: HashMap<String, Sensor>,
    mut rx: mpsc::Receiver<Message>,
    submitter: Submitter,
    shutdown: CancellationToken,
) {
    let mut out = Vec::new();
    loop {
        let next = states
            .values()
            .filter_map(|s| s.shelf.next_deadline())
            .min();
        tokio::select! {
            _ = shutdown.cancelled() => return,
            msg = rx.recv() => match msg {
                Some(m) => handle(&mut states, m, &submitter, &mut out).await,
                None => return,
            },
            _ = sleep_until(next) => {
                let now = Instant::now();
                for (id, s) in states.iter_mut() {
                    s.shelf.tick(now, &mut out);
                    emit(id, &s.source, &mut s.shelf, None, &mut out, &submitter).await;
                }
            }
        }
    }
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}

async fn handle(
    states: &mut HashMap<String, Sensor>,
    m: Message,
    submitter: &Submitter,
    out: &mut Vec<Output>,
) {
    let Some((id, s)) =
        sensor_id_from_topic(&m.topic).and_then(|id| states.get_mut(id).map(|s| (id, s)))
    else {
        submitter.metrics.shelf_reading("unknown", "unknown_sensor");
        tracing::debug!(topic = %m.topic, "message from a sensor the profile does not know");
        return;
    };
    s.shelf.heard(m.at, out);
    let mut taken_at = None;
    let mut outcome = None;
    match parse_payload(&m.payload) {
        Ok(r) => {
            taken_at = r.taken_at;
            outcome = Some(s.shelf.reading(r.raw, m.at, out));
        }
        Err(e) => {
            submitter.metrics.unparseable(id);
            if s.last_warned
                .is_none_or(|t| m.at.duration_since(t) >= WARN_EVERY)
            {
                s.last_warned = Some(m.at);
                tracing::warn!(sensor = id, "unparseable shelf reading: {e}");
            } else {
                tracing::debug!(sensor = id, "unparseable shelf reading: {e}");
            }
        }
    }
    if outcome == Some(ReadingOutcome::WithinDeadband) {
        submitter
            .metrics
            .shelf_reading(id, ReadingOutcome::WithinDeadband.label());
    }
    emit(id, &s.source, &mut s.shelf, taken_at, out, submitter).await;
}

/// Submits what a state machine produced, in order, and tells it what the
/// outbox did not store.
async fn emit(
    sensor: &str,
    source: &Source,
    shelf: &mut Shelf,
    taken_at: Option<chrono::DateTime<chrono::FixedOffset>>,
    out: &mut Vec<Output>,
    submitter: &Submitter,
) {
    for o in out.drain(..) {
        match o {
            Output::Reading(r) => {
                let at = taken_at.unwrap_or_else(|| Utc::now().fixed_offset());
                match submitter
                    .submit(source, at, EventBody::ShelfReading(r))
                    .await
                {
                    Some(Submitted::Shed) => {
                        submitter.metrics.shelf_reading(sensor, "shed");
                        shelf.reading_not_stored();
                    }
                    Some(_) => submitter
                        .metrics
                        .shelf_reading(sensor, ReadingOutcome::Emitted.label()),
                    None => shelf.reading_not_stored(),
                }
            }
            Output::Alert(a) => {
                let kind = match a.kind {
                    StockAlertKind::LowStock => "low_stock",
                    StockAlertKind::Restocked => "restocked",
                };
                tracing::info!(sensor, kind, items = a.item_count, "stock alert");
                let alert_kind = a.kind;
                let stored = submitter
                    .submit(source, Utc::now().fixed_offset(), EventBody::StockAlert(a))
                    .await;
                match stored {
                    Some(Submitted::Stored(_) | Submitted::Duplicate(_)) => {
                        submitter.metrics.stock_alert(sensor, kind);
                    }
                    Some(Submitted::Shed) | None => {
                        tracing::warn!(
                            sensor,
                            kind,
                            "stock alert not stored; raised again if it still holds"
                        );
                        shelf.alert_not_stored(alert_kind);
                    }
                }
            }
            Output::Status(state) => {
                tracing::info!(sensor, ?state, "shelf sensor status");
                submitter.status(source, state, None).await;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::devices::DeviceMetrics;
    use crate::ingest::{Ingest, StoreIdentity};
    use crate::outbox::{Outbox, OutboxConfig};

    fn sensor_cfg() -> ShelfSensor {
        ShelfSensor {
            id: "shelf-a1".into(),
            gtin: "05901234123457".into(),
            zero_offset: 0,
            counts_per_gram: Some(1),
            span: None,
            unit_weight_grams: Some(500),
            unit_weight_milligrams: None,
            low_stock_at: 3,
            restocked_at: 6,
            deadband_grams: 20,
            offline_after_secs: 600,
            alert_dwell_secs: 0,
        }
    }

    async fn kinds_stored(outbox: &crate::outbox::OutboxHandle) -> Vec<String> {
        outbox
            .read_after(0, 1000, 1 << 20)
            .await
            .expect("read")
            .into_iter()
            .map(|e| {
                let v: serde_json::Value = serde_json::from_slice(&e.payload).expect("json");
                v["schema"].as_str().unwrap_or_default().to_owned()
            })
            .collect()
    }

    /// The same reading twice, the first time into an outbox that is gone:
    /// the second is stored, and so is the low-stock alert the first raised.
    #[tokio::test]
    async fn a_reading_and_alert_the_outbox_refused_are_stored_on_the_next_reading() {
        let dir = tempfile::tempdir().expect("tmp");
        let store = StoreIdentity {
            store_id: "store-shelf".into(),
            region: "eu-west".into(),
        };
        let cfg = sensor_cfg();
        let mut states = HashMap::from([(
            cfg.id.clone(),
            Sensor {
                shelf: Shelf::new(
                    &cfg,
                    cfg.gtin.parse().expect("gtin"),
                    cfg.scale().expect("calibrated"),
                    cfg.unit_weight_mg().expect("weighed"),
                    Instant::now(),
                ),
                source: Source {
                    kind: SourceKind::ShelfSensor,
                    device_id: cfg.id.clone(),
                },
                last_warned: None,
            },
        )]);
        let message = || Message {
            topic: protocol::topics::shelf_sensor_topic(&cfg.id),
            // 1000 g: 2 items, at or below low_stock_at.
            payload: bytes::Bytes::from_static(b"1000"),
            at: Instant::now(),
        };
        let mut out = Vec::new();

        let gone = Outbox::open(
            OutboxConfig::new(dir.path().join("gone.db"), 1 << 30, 1_000_000),
            store.clone(),
        )
        .expect("outbox");
        let gone_handle = gone.handle();
        gone.close().await;
        let refusing = Submitter {
            ingest: Ingest::new(gone_handle, store.clone()),
            metrics: DeviceMetrics::default(),
        };
        handle(&mut states, message(), &refusing, &mut out).await;

        let outbox = Outbox::open(
            OutboxConfig::new(dir.path().join("outbox.db"), 1 << 30, 1_000_000),
            store.clone(),
        )
        .expect("outbox");
        let working = Submitter {
            ingest: Ingest::new(outbox.handle(), store),
            metrics: DeviceMetrics::default(),
        };
        handle(&mut states, message(), &working, &mut out).await;
        assert_eq!(
            kinds_stored(&outbox.handle()).await,
            ["storelink.shelf_reading", "storelink.stock_alert"],
            "the same weight again is sent, and the alert raised again"
        );
        // Stored now: the same weight once more is within the deadband.
        handle(&mut states, message(), &working, &mut out).await;
        assert_eq!(kinds_stored(&outbox.handle()).await.len(), 2);
        outbox.close().await;
    }

    use super::MAX_PACKET_BYTES;

    /// The store's broker refuses a message before it could be one the
    /// agent cannot read: payload limit plus the longest topic fits.
    #[test]
    fn the_store_broker_refuses_what_the_agent_could_not_read() {
        let conf = include_str!("../../../k3s/base/mosquitto/mosquitto.conf");
        let limit: usize = conf
            .lines()
            .find_map(|l| l.trim().strip_prefix("message_size_limit "))
            .expect("message_size_limit in k3s/base/mosquitto/mosquitto.conf")
            .trim()
            .parse()
            .expect("a number");
        assert!(limit > 0, "0 means no limit");
        // Fixed header, topic (sensors/<64-char id>/raw) and packet id.
        let topic = protocol::topics::shelf_sensor_topic(&"s".repeat(64));
        assert!(limit + 5 + 2 + topic.len() + 2 <= MAX_PACKET_BYTES);
    }
}
