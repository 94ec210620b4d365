//! Device metrics, registered under the agent registry's `storelink_agent`
//! prefix (counters get `_total` from the encoder):
//!
//! * `storelink_agent_scanner_reads_total{scanner,result="valid|invalid"}`
//! * `storelink_agent_scanner_frames_truncated_total{scanner}`
//! * `storelink_agent_scanner_reconnects_total{scanner}`
//! * `storelink_agent_shelf_readings_total{sensor,result="emitted|deadband|dropped|shed|unknown_sensor|retained"}`
//! * `storelink_agent_shelf_unparseable_total{sensor}`
//! * `storelink_agent_stock_alerts_total{sensor,kind="low_stock|restocked"}`
//! * `storelink_agent_device_events_refused_total{device}` — the outbox
//!   refused an event (full or failing); the event is lost from this device.
//!
//! Label values are device ids from the profile, so cardinality is bounded
//! by the profile; messages from sensors the profile does not know are
//! counted under `sensor="unknown"`.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ScannerResult {
    pub scanner: String,
    pub result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ScannerLabel {
    pub scanner: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SensorResult {
    pub sensor: String,
    pub result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SensorLabel {
    pub sensor: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SensorKind {
    pub sensor: String,
    pub kind: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DeviceLabel {
    pub device: String,
}

/// Cheap to clone: every field is an `Arc` inside.
#[derive(Clone, Debug, Default)]
pub struct DeviceMetrics {
    pub scanner_reads: Family<ScannerResult, Counter>,
    pub scanner_frames_truncated: Family<ScannerLabel, Counter>,
    pub scanner_reconnects: Family<ScannerLabel, Counter>,
    pub shelf_readings: Family<SensorResult, Counter>,
    pub shelf_unparseable: Family<SensorLabel, Counter>,
    pub stock_alerts: Family<SensorKind, Counter>,
    pub device_events_refused: Family<DeviceLabel, Counter>,
}

impl DeviceMetrics {
    /// Registers every family into `registry` (whose prefix supplies `storelink_agent`).
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "scanner_reads",
            "Scanner reads by result",
            self.scanner_reads.clone(),
        );
        registry.register(
            "scanner_frames_truncated",
            "Scanner frames longer than max_frame_len, cut and marked truncated",
            self.scanner_frames_truncated.clone(),
        );
        registry.register(
            "scanner_reconnects",
            "Times a scanner's serial port was reopened after it went away",
            self.scanner_reconnects.clone(),
        );
        registry.register(
            "shelf_readings",
            "Shelf sensor readings by what became of them",
            self.shelf_readings.clone(),
        );
        registry.register(
            "shelf_unparseable",
            "Shelf sensor messages that were not a reading",
            self.shelf_unparseable.clone(),
        );
        registry.register(
            "stock_alerts",
            "Stock alerts raised, by kind",
            self.stock_alerts.clone(),
        );
        registry.register(
            "device_events_refused",
            "Device events the outbox refused (full or failing); lost for scanners, resent by sensors",
            self.device_events_refused.clone(),
        );
    }

    pub fn scanner_read(&self, scanner: &str, valid: bool) {
        self.scanner_reads
            .get_or_create(&ScannerResult {
                scanner: scanner.to_owned(),
                result: if valid { "valid" } else { "invalid" },
            })
            .inc();
    }

    pub fn truncated(&self, scanner: &str) {
        self.scanner_frames_truncated
            .get_or_create(&ScannerLabel {
                scanner: scanner.to_owned(),
            })
            .inc();
    }

    pub fn reconnected(&self, scanner: &str) {
        self.scanner_reconnects
            .get_or_create(&ScannerLabel {
                scanner: scanner.to_owned(),
            })
            .inc();
    }

    pub fn shelf_reading(&self, sensor: &str, result: &'static str) {
        self.shelf_readings
            .get_or_create(&SensorResult {
                sensor: sensor.to_owned(),
                result,
            })
            .inc();
    }

    pub fn unparseable(&self, sensor: &str) {
        self.shelf_unparseable
            .get_or_create(&SensorLabel {
                sensor: sensor.to_owned(),
            })
            .inc();
    }

    pub fn stock_alert(&self, sensor: &str, kind: &'static str) {
        self.stock_alerts
            .get_or_create(&SensorKind {
                sensor: sensor.to_owned(),
                kind,
            })
            .inc();
    }

    pub fn refused(&self, device: &str) {
        self.device_events_refused
            .get_or_create(&DeviceLabel {
                device: device.to_owned(),
            })
            .inc();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_the_agent_convention() {
        let m = DeviceMetrics::default();
        let mut r = Registry::with_prefix("storelink_agent");
        m.register(&mut r);
        m.scanner_read("scan-01", true);
        m.scanner_read("scan-01", false);
        m.truncated("scan-01");
        m.reconnected("scan-01");
        m.shelf_reading("shelf-a1", "emitted");
        m.unparseable("shelf-a1");
        m.stock_alert("shelf-a1", "low_stock");
        m.refused("scan-01");
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &r).expect("encode");
        for line in [
            r#"storelink_agent_scanner_reads_total{scanner="scan-01",result="valid"} 1"#,
            r#"storelink_agent_scanner_reads_total{scanner="scan-01",result="invalid"} 1"#,
            r#"storelink_agent_scanner_frames_truncated_total{scanner="scan-01"} 1"#,
            r#"storelink_agent_scanner_reconnects_total{scanner="scan-01"} 1"#,
            r#"storelink_agent_shelf_readings_total{sensor="shelf-a1",result="emitted"} 1"#,
            r#"storelink_agent_shelf_unparseable_total{sensor="shelf-a1"} 1"#,
            r#"storelink_agent_stock_alerts_total{sensor="shelf-a1",kind="low_stock"} 1"#,
            r#"storelink_agent_device_events_refused_total{device="scan-01"} 1"#,
        ] {
            assert!(text.contains(line), "missing {line} in\n{text}");
        }
    }
}
