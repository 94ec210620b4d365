//! Dead-letter records: the original bytes plus headers saying why, from
//! where and when (`storelink.dlq.*`, see [`protocol::topics::headers`]).

use protocol::topics::{headers, KafkaTopic};

use crate::kafka_sink::OutRecord;

/// Kafka rejects records above the broker's / topic's `message.max.bytes`
/// (1 MB by default). A dead letter larger than the limit is truncated —
/// and says so in its detail — rather than retried forever.
/// Why and from where a dead letter comes.
#[derive(Debug, Clone, Copy)]
pub struct Why<'a> {
    pub reason: &'a str,
    pub detail: &'a str,
    /// The MQTT topic the bytes arrived on.
    pub source_topic: &'a str,
    pub store_id: Option<&'a str>,
    pub event_id: Option<&'a protocol::EventId>,
}

pub fn dead_letter_record(
    value: bytes::Bytes,
    why: Why<'_>,
    max_value_bytes: usize,
    now: chrono::DateTime<chrono::Utc>,
) -> OutRecord {
    let Why {
        reason,
        detail,
        source_topic,
        store_id,
        event_id,
    } = why;
    let (value, detail) = if value.len() > max_value_bytes {
        let original = value.len();
        (
            value.slice(0..max_value_bytes),
            format!("{detail} [value truncated from {original} to {max_value_bytes} bytes]"),
        )
    } else {
        (value, detail.to_owned())
    };
    // Details come from parser messages; keep headers small.
    let detail: String = detail.chars().take(1024).collect();
    let mut hs = vec![
        (
            headers::DLQ_REASON,
            bytes::Bytes::copy_from_slice(reason.as_bytes()),
        ),
        (headers::DLQ_DETAIL, detail.into_bytes().into()),
        (
            headers::DLQ_SOURCE_TOPIC,
            bytes::Bytes::copy_from_slice(source_topic.as_bytes()),
        ),
        (headers::DLQ_AT, now.to_rfc3339().into_bytes().into()),
    ];
    if let Some(store) = store_id {
        hs.push((
            headers::STORE_ID,
            bytes::Bytes::copy_from_slice(store.as_bytes()),
        ));
    }
    if let Some(id) = event_id {
        hs.push((headers::EVENT_ID, id.to_string().into_bytes().into()));
    }
    OutRecord {
        topic: KafkaTopic::DeadLetters.name(),
        // Keyed by store so one store's poison stays together and in order.
        key: store_id.map(str::to_owned),
        value,
        headers: hs,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn oversized_dead_letters_are_truncated_and_say_so() {
        let r = dead_letter_record(
            bytes::Bytes::from(vec![b'x'; 5000]),
            Why {
                reason: "oversized",
                detail: "too big",
                source_topic: "storelink/v1/stores/s1/events",
                store_id: Some("s1"),
                event_id: None,
            },
            1000,
            chrono::Utc::now(),
        );
        assert_eq!(r.value.len(), 1000);
        let detail = r
            .headers
            .iter()
            .find(|(k, _)| *k == headers::DLQ_DETAIL)
            .map(|(_, v)| String::from_utf8_lossy(v).into_owned())
            .expect("detail header");
        assert!(detail.contains("truncated from 5000"), "{detail}");
        assert_eq!(r.topic, "retail.dead-letters.v1");
    }
}
