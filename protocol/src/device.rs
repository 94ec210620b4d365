//! Bodies of events that devices and the agent itself produce: barcode scans,
//! shelf load-cell readings, stock alerts, device status changes and agent
//! notices (shed telemetry, storage recovered).

use serde::{Deserialize, Serialize};

use crate::gtin::Gtin;

/// One GS1 element: an Application Identifier and its value, e.g. `("17", "261231")`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Gs1Element {
    pub ai: String,
    pub value: String,
}

/// One read from a barcode scanner, decoded as far as it could be. Invalid
/// reads are events too: they tell the store a scanner or a label is bad.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Scan {
    /// Lane or register the scanner serves.
    pub lane: String,
    /// AIM symbology identifier as sent (`]E0`, `]C1`…), when the scanner prefixes one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub symbology: Option<String>,
    /// The read after the symbology identifier, with the GS (FNC1) byte shown as `\u001d`.
    pub data: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gtin: Option<Gtin>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub elements: Vec<Gs1Element>,
    pub valid: bool,
    /// Why the read was rejected; stable snake_case code followed by detail.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub invalid_reason: Option<String>,
    /// The frame was longer than the scanner's `max_frame_len` and was cut.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub truncated: bool,
}

/// A calibrated reading of a shelf load cell.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShelfReading {
    pub gtin: Gtin,
    pub raw_counts: i64,
    /// Net weight on the shelf after calibration, in grams.
    pub grams: i64,
    /// round(grams / unit weight).
    pub item_count: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StockAlertKind {
    LowStock,
    Restocked,
}

/// A shelf crossed its low-stock threshold, or came back above its restock level.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StockAlert {
    pub gtin: Gtin,
    pub kind: StockAlertKind,
    pub item_count: u32,
    pub threshold: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DeviceState {
    Online,
    Offline,
    Error,
}

/// A device came online, went offline or failed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceStatus {
    pub state: DeviceState,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NoticeCode {
    /// Telemetry was compacted or shed because the outbox was full.
    TelemetryShed,
    /// The outbox database was damaged and set aside; a fresh one was opened.
    OutboxRecovered,
    /// Stored events failed their checksum and were set aside.
    OutboxCorruptEvents,
}

/// Something the agent wants the cloud to know about itself.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AgentNotice {
    pub code: NoticeCode,
    pub message: String,
    /// How many events the notice is about (shed, quarantined…), when it counts.
    #[serde(default)]
    pub count: u64,
}
