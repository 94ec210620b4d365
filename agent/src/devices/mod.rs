//! Device sources: serial barcode scanners and shelf load cells on the
//! in-store MQTT broker. Each turns what a device sent into events and
//! submits them through [`Ingest`] like any other source.
//!
//! Codemap:
//! * [`framing`] — bytes → frames (terminators, over-long frames). Pure.
//! * [`gs1`] — frame → AIM symbology, GTIN, GS1 elements or a reason it is
//!   invalid. Pure.
//! * [`scanner`] — one task per scanner: serial port, reconnects, status events.
//! * [`shelf`] — payload → calibrated reading, deadband, stock-alert
//!   hysteresis, silence. Pure.
//! * [`shelf_task`] — the MQTT subscription and the clock around [`shelf`].
//! * [`metrics`] — the `storelink_agent_scanner_*`, `_shelf_*`, … counters.
//!
//! Invariants:
//! * Nothing a device sends can panic the agent or stop a task: a bad read
//!   is an invalid scan event, a bad payload a counter and a log line.
//! * A device's events are submitted in the order the device produced them
//!   (one task per scanner; one processor for all sensors).
//! * Every task ends promptly when the shutdown token is cancelled.
//! * An event the outbox refuses is counted in
//!   `device_events_refused_total{device}` and logged with the device id.

pub mod framing;
pub mod gs1;
pub mod metrics;
pub mod scanner;
pub mod shelf;
pub mod shelf_task;

use chrono::{DateTime, FixedOffset, Utc};
use firmware_config::StoreProfile;
use prometheus_client::registry::Registry;
use protocol::device::DeviceState;
use protocol::{EventBody, Source};
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::ingest::Ingest;
pub use crate::ingest::Submitted;
use metrics::DeviceMetrics;

/// Starts one task per scanner and, when the profile has shelf sensors and
/// an in-store broker, the shelf-sensor tasks. Registers the device metrics.
pub fn spawn(
    profile: &StoreProfile,
    ingest: Ingest,
    registry: &mut Registry,
    shutdown: CancellationToken,
) -> Vec<tokio::task::JoinHandle<()>> {
    let metrics = DeviceMetrics::default();
    metrics.register(registry);
    spawn_with(profile, ingest, metrics, shutdown)
}

/// [`spawn`] with metrics the caller registered (tests read them directly).
pub fn spawn_with(
    profile: &StoreProfile,
    ingest: Ingest,
    metrics: DeviceMetrics,
    shutdown: CancellationToken,
) -> Vec<tokio::task::JoinHandle<()>> {
    let submitter = Submitter { ingest, metrics };
    let store = profile.store.id.as_str();
    let mut tasks = Vec::new();
    for s in &profile.scanners {
        let span = tracing::info_span!("scanner", store = %store, device = %s.id, lane = %s.lane);
        tasks.push(tokio::spawn(
            scanner::run(s.clone(), submitter.clone(), shutdown.clone()).instrument(span),
        ));
    }
    match &profile.local_mqtt {
        Some(local) if !profile.shelf_sensors.is_empty() => {
            tasks.extend(shelf_task::spawn(
                store,
                local,
                &profile.shelf_sensors,
                submitter,
                shutdown,
            ));
        }
        _ => {}
    }
    tasks
}

/// Submits device events, counting and logging refusals.
#[derive(Clone)]
pub struct Submitter {
    pub ingest: Ingest,
    pub metrics: DeviceMetrics,
}

impl Submitter {
    /// `None` when the outbox refused the event (counted and logged here).
    pub async fn submit(
        &self,
        source: &Source,
        occurred_at: DateTime<FixedOffset>,
        body: EventBody,
    ) -> Option<Submitted> {
        let kind = body.kind();
        match self
            .ingest
            .submit(source.clone(), occurred_at, body, None)
            .await
        {
            Ok(s) => Some(s),
            Err(e) => {
                self.metrics.refused(&source.device_id);
                tracing::error!(device = %source.device_id, %kind, "device event refused by the outbox: {e}");
                None
            }
        }
    }

    pub async fn status(&self, source: &Source, state: DeviceState, detail: Option<String>) {
        self.submit(
            source,
            Utc::now().fixed_offset(),
            scanner::status_body(state, detail),
        )
        .await;
    }
}
