//! Where events travel: MQTT topics between store and cloud, Kafka topics per
//! bounded context, and the partition key of each event type.
//!
//! MQTT (cloud broker):
//! * `storelink/v1/stores/{store_id}/events` — agent → bridge, QoS 1, a
//!   [`crate::batch`] of events per message. One topic per store, so one
//!   agent's messages keep their order through the broker.
//! * `storelink/v1/stores/{store_id}/receipts` — bridge → agent, QoS 1,
//!   a [`crate::receipt::DeliveryReceipt`] per batch.
//! * The bridge subscribes through a shared subscription
//!   (`$share/{group}/storelink/v1/stores/+/events`) so replicas split the load.
//!   The broker ACL lets a store's certificate write only its own events
//!   topic and read only its own receipts; the bridge also checks that the
//!   envelope's store matches the topic's (a store cannot write as another).
//!
//! MQTT (in-store broker): shelf sensors publish to `sensors/{sensor_id}/raw`.
//!
//! Kafka: one topic per bounded context, see [`KafkaTopic`].

use crate::envelope::{EventKind, RawEnvelope};

pub const MQTT_ROOT: &str = "storelink/v1/stores";

pub fn store_events_topic(store_id: &str) -> String {
    format!("{MQTT_ROOT}/{store_id}/events")
}

pub fn store_receipts_topic(store_id: &str) -> String {
    format!("{MQTT_ROOT}/{store_id}/receipts")
}

/// Filter that matches every store's events topic.
pub const ALL_STORE_EVENTS: &str = "storelink/v1/stores/+/events";

/// The bridge's shared subscription: replicas in one group split the stores' messages.
pub fn bridge_shared_subscription(group: &str) -> String {
    format!("$share/{group}/{ALL_STORE_EVENTS}")
}

/// The store id in an events topic, or `None` if the topic is not one.
pub fn store_id_from_events_topic(topic: &str) -> Option<&str> {
    let rest = topic.strip_prefix(MQTT_ROOT)?.strip_prefix('/')?;
    let store = rest.strip_suffix("/events")?;
    (!store.is_empty() && !store.contains('/')).then_some(store)
}

/// In-store topic a shelf sensor publishes raw load-cell readings to.
pub fn shelf_sensor_topic(sensor_id: &str) -> String {
    format!("sensors/{sensor_id}/raw")
}

pub const ALL_SHELF_SENSORS: &str = "sensors/+/raw";

pub fn sensor_id_from_topic(topic: &str) -> Option<&str> {
    let id = topic.strip_prefix("sensors/")?.strip_suffix("/raw")?;
    (!id.is_empty() && !id.contains('/')).then_some(id)
}

/// Kafka topics, one per bounded context.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum KafkaTopic {
    /// Sales, returns, voids: what finance and the data warehouse reconcile.
    Transactions,
    /// Shelf readings and stock alerts: what replenishment acts on.
    Inventory,
    /// Scans at lanes: what customer analytics and loss prevention read.
    CustomerInteractions,
    /// Device status and agent notices: what store operations watch.
    Devices,
    /// What could not be published, with the reason in headers.
    DeadLetters,
}

impl KafkaTopic {
    pub const ALL: [KafkaTopic; 5] = [
        KafkaTopic::Transactions,
        KafkaTopic::Inventory,
        KafkaTopic::CustomerInteractions,
        KafkaTopic::Devices,
        KafkaTopic::DeadLetters,
    ];

    pub fn name(&self) -> &'static str {
        match self {
            KafkaTopic::Transactions => "retail.transactions.v1",
            KafkaTopic::Inventory => "retail.inventory.v1",
            KafkaTopic::CustomerInteractions => "retail.customer-interactions.v1",
            KafkaTopic::Devices => "retail.devices.v1",
            KafkaTopic::DeadLetters => "retail.dead-letters.v1",
        }
    }

    pub fn for_kind(kind: EventKind) -> KafkaTopic {
        match kind {
            EventKind::Sale | EventKind::Return | EventKind::Void => KafkaTopic::Transactions,
            EventKind::ShelfReading | EventKind::StockAlert => KafkaTopic::Inventory,
            EventKind::Scan => KafkaTopic::CustomerInteractions,
            EventKind::DeviceStatus | EventKind::AgentNotice => KafkaTopic::Devices,
        }
    }
}

/// The Kafka record key of an event, which decides its partition and hence
/// what stays in order:
///
/// * transactions → `{store_id}`: a store's sales, returns and voids in one
///   partition, in order, so a void is never read before the sale it voids
///   and a store's business day reconciles from one ordered stream. With
///   thousands of stores the hash still spreads load over partitions.
/// * scans → `{store_id}/{scanner}`: a lane's reads in order.
/// * shelf readings and stock alerts → `{store_id}/{sensor}`: one sensor
///   watches one product facing, so "low stock" and the later "restocked"
///   stay in order.
/// * device status and notices → `{store_id}/{device}`.
pub fn partition_key(kind: EventKind, store_id: &str, device_id: &str) -> String {
    match KafkaTopic::for_kind(kind) {
        KafkaTopic::Transactions => store_id.to_owned(),
        _ => format!("{store_id}/{device_id}"),
    }
}

/// [`partition_key`] of a raw envelope.
pub fn partition_key_of(kind: EventKind, env: &RawEnvelope<'_>) -> String {
    partition_key(kind, &env.store_id, &env.source.device_id)
}

/// Kafka record header names.
pub mod headers {
    pub const EVENT_ID: &str = "storelink.event_id";
    pub const SCHEMA: &str = "storelink.schema";
    pub const SCHEMA_VERSION: &str = "storelink.schema_version";
    pub const STORE_ID: &str = "storelink.store_id";
    /// Dead letters: why, from where, when (RFC 3339).
    pub const DLQ_REASON: &str = "storelink.dlq.reason";
    pub const DLQ_DETAIL: &str = "storelink.dlq.detail";
    pub const DLQ_SOURCE_TOPIC: &str = "storelink.dlq.source_topic";
    pub const DLQ_AT: &str = "storelink.dlq.at";
    /// On a record that `cloud-bridge dead-letters replay` published: the
    /// dead letter it came from, as `<topic>/<partition>/<offset>`.
    pub const REPLAYED_FROM: &str = "storelink.replayed_from";
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_topics_round_trip_the_store_id() {
        let t = store_events_topic("store-0042");
        assert_eq!(t, "storelink/v1/stores/store-0042/events");
        assert_eq!(store_id_from_events_topic(&t), Some("store-0042"));
        assert_eq!(
            store_id_from_events_topic("storelink/v1/stores//events"),
            None
        );
        assert_eq!(
            store_id_from_events_topic("storelink/v1/stores/a/b/events"),
            None
        );
        assert_eq!(store_id_from_events_topic("other/store/events"), None);
    }

    #[test]
    fn every_kind_has_a_domain_topic_and_transactions_key_by_store() {
        for kind in EventKind::ALL {
            assert_ne!(KafkaTopic::for_kind(kind), KafkaTopic::DeadLetters);
        }
        assert_eq!(partition_key(EventKind::Void, "s1", "pos-2"), "s1");
        assert_eq!(partition_key(EventKind::Scan, "s1", "scan-1"), "s1/scan-1");
    }

    #[test]
    fn sensor_topics_round_trip() {
        assert_eq!(
            sensor_id_from_topic(&shelf_sensor_topic("shelf-a1")),
            Some("shelf-a1")
        );
        assert_eq!(sensor_id_from_topic("sensors//raw"), None);
    }
}
