//! The delivery receipt: the bridge's word to a store that Kafka has its events.
//!
//! A broker's PUBACK proves nothing about disk, so the agent keeps every event
//! until a receipt names it. A receipt is sent only after Kafka's delivery
//! report (or after the event went to the dead-letter topic, which is also a
//! Kafka write): from then on Kafka, not the store, is the source of truth.

use serde::{Deserialize, Serialize};

use crate::envelope::EventId;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DeliveryOutcome {
    /// Written to its domain topic.
    Delivered,
    /// Written to the dead-letter topic (see the reason); the store must not resend it.
    DeadLettered,
    /// Already written within the bridge's de-duplication window.
    Duplicate,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EventReceipt {
    pub id: EventId,
    pub outcome: DeliveryOutcome,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeliveryReceipt {
    pub store_id: String,
    /// The agent's batch this receipt answers.
    pub batch_id: uuid::Uuid,
    pub events: Vec<EventReceipt>,
    /// Which bridge replica wrote it; for tracing only.
    pub bridge_id: String,
    pub receipted_at: chrono::DateTime<chrono::Utc>,
}
