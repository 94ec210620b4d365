//! The agent's Prometheus metrics (`/metrics`), named `storelink_agent_*`.
//!
//! Metrics live in one process-wide [`AgentMetrics`] so the outbox writer
//! thread, HTTP handlers and the forwarder record without threading a handle
//! through every call; [`registry`] builds the registry `/metrics` encodes,
//! including gauges read live from the outbox.

use std::sync::atomic::AtomicU64;
use std::sync::{Arc, LazyLock};
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::{ConstGauge, Gauge};
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

use crate::outbox::OutboxStats;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindLabel {
    pub kind: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    pub route: &'static str,
    pub status: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabel {
    pub outcome: &'static str,
}

pub struct AgentMetrics {
    pub events_accepted: Family<KindLabel, Counter>,
    pub http_requests: Family<RequestLabels, Counter>,
    pub http_request_seconds: Histogram,
    pub commit_seconds: Histogram,
    pub commit_group_size: Histogram,
    pub batches_sent: Counter,
    pub events_sent: Counter,
    pub events_receipted: Family<OutcomeLabel, Counter>,
    pub resends: Counter,
    pub mqtt_connected: Gauge,
    pub batches_in_flight: Gauge,
}

pub static METRICS: LazyLock<AgentMetrics> = LazyLock::new(|| AgentMetrics {
    events_accepted: Family::default(),
    http_requests: Family::default(),
    http_request_seconds: Histogram::new(exponential_buckets(0.0005, 2.0, 14)),
    commit_seconds: Histogram::new(exponential_buckets(0.0002, 2.0, 14)),
    commit_group_size: Histogram::new(exponential_buckets(1.0, 2.0, 12)),
    batches_sent: Counter::default(),
    events_sent: Counter::default(),
    events_receipted: Family::default(),
    resends: Counter::default(),
    mqtt_connected: Gauge::default(),
    batches_in_flight: Gauge::default(),
});

pub(crate) fn observe_commit(elapsed: Duration, group: usize) {
    METRICS.commit_seconds.observe(elapsed.as_secs_f64());
    METRICS.commit_group_size.observe(group as f64);
}

/// A gauge whose value is read from the outbox's live counters at scrape time.
#[derive(Debug)]
struct LiveGauge {
    stats: Arc<OutboxStats>,
    read: fn(&OutboxStats) -> &AtomicU64,
}

impl prometheus_client::encoding::EncodeMetric for LiveGauge {
    fn encode(
        &self,
        encoder: prometheus_client::encoding::MetricEncoder,
    ) -> Result<(), std::fmt::Error> {
        let v = (self.read)(&self.stats).load(std::sync::atomic::Ordering::Relaxed) as i64;
        ConstGauge::new(v).encode(encoder)
    }

    fn metric_type(&self) -> prometheus_client::metrics::MetricType {
        prometheus_client::metrics::MetricType::Gauge
    }
}

#[derive(Debug)]
struct LiveCounter(LiveGauge);

impl prometheus_client::encoding::EncodeMetric for LiveCounter {
    fn encode(
        &self,
        encoder: prometheus_client::encoding::MetricEncoder,
    ) -> Result<(), std::fmt::Error> {
        let v = (self.0.read)(&self.0.stats).load(std::sync::atomic::Ordering::Relaxed);
        prometheus_client::metrics::counter::ConstCounter::new(v).encode(encoder)
    }

    fn metric_type(&self) -> prometheus_client::metrics::MetricType {
        prometheus_client::metrics::MetricType::Counter
    }
}

/// The registry behind `/metrics`. Devices register their own metrics into
/// it before the server starts.
pub fn registry(stats: Arc<OutboxStats>) -> Registry {
    let mut r = Registry::with_prefix("storelink_agent");
    let m = &*METRICS;
    r.register(
        "events_accepted",
        "Events durably accepted, by kind",
        m.events_accepted.clone(),
    );
    r.register(
        "http_requests",
        "HTTP requests by route and status",
        m.http_requests.clone(),
    );
    r.register(
        "http_request_duration_seconds",
        "HTTP request latency",
        m.http_request_seconds.clone(),
    );
    r.register(
        "outbox_commit_duration_seconds",
        "Outbox group-commit latency (fsync included)",
        m.commit_seconds.clone(),
    );
    r.register(
        "outbox_commit_group_size",
        "Requests folded into one outbox commit",
        m.commit_group_size.clone(),
    );
    r.register(
        "batches_sent",
        "MQTT batches published to the cloud",
        m.batches_sent.clone(),
    );
    r.register(
        "events_sent",
        "Events published to the cloud (resends included)",
        m.events_sent.clone(),
    );
    r.register(
        "events_receipted",
        "Events receipted by the bridge, by outcome",
        m.events_receipted.clone(),
    );
    r.register(
        "resends",
        "Times unreceipted events were sent again (timeout or reconnect)",
        m.resends.clone(),
    );
    r.register(
        "cloud_mqtt_connected",
        "1 when connected to the cloud broker",
        m.mqtt_connected.clone(),
    );
    r.register(
        "batches_in_flight",
        "Batches sent and awaiting a receipt",
        m.batches_in_flight.clone(),
    );
    let live = |read| LiveGauge {
        stats: stats.clone(),
        read,
    };
    r.register("outbox_events", "Events in the outbox", live(|s| &s.rows));
    r.register(
        "outbox_bytes",
        "Payload bytes in the outbox",
        live(|s| &s.bytes),
    );
    r.register(
        "outbox_pending_transactions",
        "Undelivered sales, returns and voids",
        live(|s| &s.pending_transactions),
    );
    r.register(
        "telemetry_shed",
        "Telemetry events shed because the outbox was full",
        LiveCounter(live(|s| &s.shed_total)),
    );
    r.register(
        "telemetry_compacted",
        "Telemetry events compacted to the latest per sensor",
        LiveCounter(live(|s| &s.compacted_total)),
    );
    r.register(
        "outbox_quarantined",
        "Stored events that failed their checksum",
        LiveCounter(live(|s| &s.quarantined_total)),
    );
    r.register(
        "outbox_salvaged",
        "Events recovered from damaged outbox files set aside at start",
        LiveCounter(live(|s| &s.salvaged_total)),
    );
    r.register(
        "outbox_ids_repaired",
        "Stored events whose damaged id column was rewritten from their intact payload",
        LiveCounter(live(|s| &s.ids_repaired_total)),
    );
    r
}
