//! Prometheus metrics of the bridge (prometheus-client; served by [`crate::http`]).
//!
//! Counter names get `_total` appended by the encoder, so
//! `storelink_bridge_mqtt_messages` is exposed as
//! `storelink_bridge_mqtt_messages_total`.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TopicLabel {
    pub topic: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabel {
    pub reason: String,
}

pub struct Metrics {
    pub registry: Registry,
    pub mqtt_messages: Counter,
    pub mqtt_messages_deferred: Counter,
    pub mqtt_acks_skipped: Counter,
    pub mqtt_payload_held_bytes: Gauge,
    pub mqtt_payload_held_peak_bytes: Gauge,
    pub events_published: Family<TopicLabel, Counter>,
    pub dead_letters: Family<ReasonLabel, Counter>,
    pub duplicates_dropped: Counter,
    pub events_in_flight: Gauge,
    pub produce_retries: Counter,
    pub kafka_records_refused: Counter,
    pub dead_letters_refused: Counter,
    pub receipts_published: Counter,
    pub receipts_refused: Family<ReasonLabel, Counter>,
    pub produce_latency: Histogram,
    pub end_to_end_latency: Histogram,
    /// `events_published{topic}` handles per Kafka topic, created once: the
    /// hot path increments an atomic instead of hashing a label per event.
    published_by_topic: Vec<(&'static str, Counter)>,
}

impl Metrics {
    pub fn new() -> Metrics {
        let mut registry = Registry::with_prefix("storelink_bridge");
        let mqtt_messages = Counter::default();
        let mqtt_messages_deferred = Counter::default();
        let mqtt_acks_skipped = Counter::default();
        let mqtt_payload_held_bytes = Gauge::default();
        let mqtt_payload_held_peak_bytes = Gauge::default();
        let events_published = Family::<TopicLabel, Counter>::default();
        let dead_letters = Family::<ReasonLabel, Counter>::default();
        let duplicates_dropped = Counter::default();
        let events_in_flight = Gauge::default();
        let produce_retries = Counter::default();
        let kafka_records_refused = Counter::default();
        let dead_letters_refused = Counter::default();
        let receipts_published = Counter::default();
        let receipts_refused = Family::<ReasonLabel, Counter>::default();
        // 0.5 ms .. ~33 s
        let produce_latency = Histogram::new(exponential_buckets(0.0005, 2.0, 17));
        // 1 ms .. ~18 h: events may wait in a store's outbox for a long outage.
        let end_to_end_latency = Histogram::new(exponential_buckets(0.001, 2.0, 26));
        registry.register(
            "mqtt_messages",
            "MQTT messages (batches) received from stores",
            mqtt_messages.clone(),
        );
        registry.register(
            "mqtt_messages_deferred",
            "MQTT messages left unacked because the received queue was full, the payload budget spent, the bridge was stopping, or they were read off a connection that was then lost; the broker redelivers them after a reconnect (or, without a session, the store resends)",
            mqtt_messages_deferred.clone(),
        );
        registry.register(
            "mqtt_acks_skipped",
            "MQTT acks not sent because the connection their message arrived on was lost; a session the broker kept redelivers the message",
            mqtt_acks_skipped.clone(),
        );
        registry.register(
            "mqtt_payload_held_bytes",
            "MQTT payload bytes received and not yet acked or given up (bounded by limits.max_bytes_in_flight)",
            mqtt_payload_held_bytes.clone(),
        );
        registry.register(
            "mqtt_payload_held_peak_bytes",
            "The highest mqtt_payload_held_bytes since start",
            mqtt_payload_held_peak_bytes.clone(),
        );
        registry.register(
            "events_published",
            "Events written to their domain topic",
            events_published.clone(),
        );
        registry.register(
            "dead_letters",
            "Events (or whole payloads) written to the dead-letter topic, by reason",
            dead_letters.clone(),
        );
        registry.register(
            "duplicates_dropped",
            "Events not published again because the de-duplication window had them",
            duplicates_dropped.clone(),
        );
        registry.register(
            "events_in_flight",
            "Events received and not yet settled (delivered, dead-lettered or duplicate)",
            events_in_flight.clone(),
        );
        registry.register(
            "produce_retries",
            "Kafka writes retried after a failed or timed-out delivery",
            produce_retries.clone(),
        );
        registry.register(
            "kafka_records_refused",
            "Times the Kafka client refused a record as it was handed over (a missing or forbidden topic, a producer error), not counting a full local queue; the record is offered again",
            kafka_records_refused.clone(),
        );
        registry.register(
            "dead_letters_refused",
            "Dead letters Kafka refused for good (the dead-letter topic's max.message.bytes below kafka.message_max_bytes, a revoked ACL): their MQTT message stays unacked, holding one of the broker's in-flight slots for this replica until it reconnects; fix the topic and restart the replica",
            dead_letters_refused.clone(),
        );
        registry.register(
            "receipts_published",
            "Delivery receipts handed to the MQTT broker for stores (refused ones included: see receipts_refused)",
            receipts_published.clone(),
        );
        registry.register(
            "receipts_refused",
            "Delivery receipts the MQTT broker refused (a failure reason in its PUBACK): \
             the store never hears that Kafka has its events, and resends them",
            receipts_refused.clone(),
        );
        registry.register(
            "produce_latency_seconds",
            "From the start of handing a record's MQTT message to the Kafka client (a record waits for those before it in its message) to its delivery report",
            produce_latency.clone(),
        );
        registry.register(
            "end_to_end_latency_seconds",
            "From the envelope's recorded_at (agent clock) to the Kafka delivery report",
            end_to_end_latency.clone(),
        );
        let published_by_topic = protocol::topics::KafkaTopic::ALL
            .iter()
            .map(|t| {
                let c = events_published
                    .get_or_create(&TopicLabel {
                        topic: t.name().to_owned(),
                    })
                    .clone();
                (t.name(), c)
            })
            .collect();
        Metrics {
            published_by_topic,
            registry,
            mqtt_messages,
            mqtt_messages_deferred,
            mqtt_acks_skipped,
            mqtt_payload_held_bytes,
            mqtt_payload_held_peak_bytes,
            events_published,
            dead_letters,
            duplicates_dropped,
            events_in_flight,
            produce_retries,
            kafka_records_refused,
            dead_letters_refused,
            receipts_published,
            receipts_refused,
            produce_latency,
            end_to_end_latency,
        }
    }

    pub fn published(&self, topic: &str) {
        if let Some((_, c)) = self.published_by_topic.iter().find(|(t, _)| *t == topic) {
            c.inc();
            return;
        }
        self.events_published
            .get_or_create(&TopicLabel {
                topic: topic.to_owned(),
            })
            .inc();
    }

    pub fn dead_lettered(&self, reason: &str) {
        self.dead_letters
            .get_or_create(&ReasonLabel {
                reason: reason.to_owned(),
            })
            .inc();
    }

    /// The text exposition format.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_documented_names_are_exposed() {
        let m = Metrics::new();
        m.mqtt_messages.inc();
        m.published("retail.transactions.v1");
        m.dead_lettered("store_mismatch");
        m.duplicates_dropped.inc();
        m.produce_latency.observe(0.01);
        m.end_to_end_latency.observe(0.2);
        let text = m.encode();
        for name in [
            "storelink_bridge_mqtt_messages_total",
            "storelink_bridge_events_published_total{topic=\"retail.transactions.v1\"}",
            "storelink_bridge_dead_letters_total{reason=\"store_mismatch\"}",
            "storelink_bridge_duplicates_dropped_total",
            "storelink_bridge_events_in_flight",
            "storelink_bridge_produce_latency_seconds_bucket",
            "storelink_bridge_end_to_end_latency_seconds_bucket",
        ] {
            assert!(text.contains(name), "{name} missing in:\n{text}");
        }
    }
}
