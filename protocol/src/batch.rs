//! The MQTT payload from agent to bridge: several events in one message.
//!
//! ```json
//! { "batch_id": "019a…", "store_id": "store-0042", "events": [ {envelope}, … ] }
//! ```
//!
//! The agent stores each event's JSON once and splices the stored bytes into
//! the batch ([`encode_batch`]); the bridge reads events as raw JSON
//! ([`RawBatch`]), so an event's bytes are the same on the POS, in SQLite and
//! in Kafka. One bad event in a batch is dead-lettered alone.

use serde::Deserialize;
use serde_json::value::RawValue;

#[derive(Debug, Deserialize)]
pub struct RawBatch<'a> {
    pub batch_id: uuid::Uuid,
    #[serde(borrow)]
    pub store_id: std::borrow::Cow<'a, str>,
    #[serde(borrow, deserialize_with = "at_most_max_batch_events")]
    pub events: Vec<&'a RawValue>,
}

/// The most events one batch may hold. A real event is a few hundred bytes,
/// so even a full [`MAX_BATCH_BYTES`] batch holds well under this; more is a
/// malformed or hostile payload (4 MiB of `0,` is two million "events"),
/// which the bridge dead-letters whole instead of element by element.
pub const MAX_BATCH_EVENTS: usize = 20_000;

/// Reads `events`, refusing more than [`MAX_BATCH_EVENTS`] before holding them.
fn at_most_max_batch_events<'de, D>(d: D) -> Result<Vec<&'de RawValue>, D::Error>
where
    D: serde::Deserializer<'de>,
{
    struct Events;
    impl<'de> serde::de::Visitor<'de> for Events {
        type Value = Vec<&'de RawValue>;
        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            write!(f, "an array of at most {MAX_BATCH_EVENTS} events")
        }
        fn visit_seq<A: serde::de::SeqAccess<'de>>(
            self,
            mut seq: A,
        ) -> Result<Self::Value, A::Error> {
            let mut events = Vec::new();
            while let Some(e) = seq.next_element::<&'de RawValue>()? {
                if events.len() == MAX_BATCH_EVENTS {
                    return Err(serde::de::Error::custom(format_args!(
                        "more than {MAX_BATCH_EVENTS} events in one batch"
                    )));
                }
                events.push(e);
            }
            Ok(events)
        }
    }
    d.deserialize_seq(Events)
}

impl<'a> RawBatch<'a> {
    pub fn parse(bytes: &'a [u8]) -> Result<RawBatch<'a>, serde_json::Error> {
        serde_json::from_slice(bytes)
    }

    /// As [`RawBatch::parse`], for text already checked to be UTF-8: the
    /// events' raw JSON is then not validated again, event by event.
    pub fn parse_str(text: &'a str) -> Result<RawBatch<'a>, serde_json::Error> {
        serde_json::from_str(text)
    }
}

// The batch's frame, written by `encode_batch` and measured by
// `batch_frame_len` from the same pieces, so the two cannot disagree.
const FRAME_OPEN: &[u8] = b"{\"batch_id\":\"";
const FRAME_STORE: &[u8] = b"\",\"store_id\":";
const FRAME_EVENTS: &[u8] = b",\"events\":[";
const FRAME_CLOSE: &[u8] = b"]}";
/// A hyphenated UUID.
const BATCH_ID_LEN: usize = 36;

/// The store id as a JSON string: serde_json escapes whatever the id holds,
/// so a bad id cannot break the frame.
fn store_id_json(store_id: &str) -> Vec<u8> {
    serde_json::to_vec(store_id).unwrap_or_else(|_| b"\"\"".to_vec())
}

/// Builds a batch payload from events already serialized as JSON objects.
/// `store_id` must be a valid store id (no characters needing escapes).
pub fn encode_batch<'e>(
    batch_id: uuid::Uuid,
    store_id: &str,
    events: impl IntoIterator<Item = &'e [u8]>,
) -> Vec<u8> {
    let mut out = Vec::with_capacity(4096);
    out.extend_from_slice(FRAME_OPEN);
    out.extend_from_slice(batch_id.hyphenated().to_string().as_bytes());
    out.extend_from_slice(FRAME_STORE);
    out.extend_from_slice(&store_id_json(store_id));
    out.extend_from_slice(FRAME_EVENTS);
    for (i, ev) in events.into_iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        out.extend_from_slice(ev);
    }
    out.extend_from_slice(FRAME_CLOSE);
    out
}

/// The length of the payload [`encode_batch`] builds for `store_id` and
/// events of these lengths, to the byte: what a batch must fit under a
/// broker's `message_size_limit` is the whole payload, the batch's frame and
/// the commas between events included.
pub fn encoded_batch_len(store_id: &str, event_lens: impl IntoIterator<Item = usize>) -> usize {
    let (events, bytes) = event_lens
        .into_iter()
        .fold((0usize, 0usize), |(n, sum), len| (n + 1, sum + len));
    batch_frame_len(store_id) + bytes + events.saturating_sub(1) * EVENT_SEPARATOR_BYTES
}

/// Bytes [`encode_batch`] puts around the events: the batch id, the store
/// id (as JSON) and the brackets.
pub fn batch_frame_len(store_id: &str) -> usize {
    FRAME_OPEN.len()
        + BATCH_ID_LEN
        + FRAME_STORE.len()
        + store_id_json(store_id).len()
        + FRAME_EVENTS.len()
        + FRAME_CLOSE.len()
}

/// The comma [`encode_batch`] puts between two events.
pub const EVENT_SEPARATOR_BYTES: usize = 1;

// Sizes every agent and every bridge agree on. Without them an agent could
// accept an event it can never send: its MQTT client, or the broker on the
// bridge's behalf, refuses the message, the agent sends it again after the
// reconnect or the receipt timeout, and no later event of that store leaves.

/// The largest event, as envelope JSON, that an agent stores; it refuses a
/// larger one when it is recorded (a POS gets a 4xx), never after. A bridge
/// must be able to write it whole to Kafka, as a dead letter if need be
/// (with [`DEAD_LETTER_HEADROOM_BYTES`] for headers): 960 KiB fits Kafka's
/// default record limit of about 1 MB.
pub const MAX_EVENT_BYTES: usize = 960 * 1024;

/// Room a dead-letter record needs beyond the event's bytes, for its
/// headers (reason, detail, source topic, time, ids).
pub const DEAD_LETTER_HEADROOM_BYTES: usize = 16 * 1024;

/// The largest batch payload an agent sends. A store's
/// `cloud.batch_max_bytes` may not exceed it; a batch of one event over that
/// setting (sent alone) stays under it too, since an event is at most
/// [`MAX_EVENT_BYTES`] and a batch's frame is a few hundred bytes.
pub const MAX_BATCH_BYTES: usize = 4 * 1024 * 1024;

/// The largest MQTT PUBLISH packet a batch makes: [`MAX_BATCH_BYTES`] of
/// payload plus the fixed header, topic, packet id and properties, with room
/// to spare. Agents send packets up to this size; a bridge must accept
/// packets at least this large (`mqtt.max_packet_bytes`), and the cloud
/// broker's `message_size_limit` must allow them.
pub const MAX_PUBLISH_PACKET_BYTES: usize = MAX_BATCH_BYTES + 64 * 1024;

const _: () = assert!(MAX_EVENT_BYTES + 64 * 1024 <= MAX_BATCH_BYTES);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encoded_batches_parse_back_with_the_same_event_bytes() {
        let id = uuid::Uuid::now_v7();
        let a = br#"{"x":1}"#.as_slice();
        let b = br#"{"y":[2, 3]}"#.as_slice();
        let bytes = encode_batch(id, "store-1", [a, b]);
        let batch = RawBatch::parse(&bytes).expect("valid batch");
        assert_eq!(batch.batch_id, id);
        assert_eq!(batch.store_id, "store-1");
        assert_eq!(batch.events.len(), 2);
        assert_eq!(batch.events[1].get().as_bytes(), b);
        assert_eq!(
            bytes.len(),
            encoded_batch_len("store-1", [a.len(), b.len()])
        );
    }

    #[test]
    fn the_encoded_length_is_exact_for_any_store_id_and_event_count() {
        let events: Vec<Vec<u8>> = (0..50)
            .map(|i| format!(r#"{{"n":{}}}"#, "9".repeat(i)).into_bytes())
            .collect();
        for store in [
            "s",
            "store-0042",
            "store-with-a-rather-long-identifier-0001",
            "q\"uote",
        ] {
            for n in 0..events.len() {
                let evs = &events[..n];
                let bytes =
                    encode_batch(uuid::Uuid::now_v7(), store, evs.iter().map(Vec::as_slice));
                assert_eq!(
                    bytes.len(),
                    encoded_batch_len(store, evs.iter().map(Vec::len)),
                    "store {store:?}, {n} events"
                );
            }
        }
    }

    /// The sizes chain: the largest event a store may record, alone in a
    /// batch from the longest store id, fits the largest batch, and the
    /// largest batch with MQTT's framing fits the largest packet.
    #[test]
    fn the_largest_event_fits_a_batch_and_the_largest_batch_fits_a_packet() {
        let store = "s".repeat(63);
        crate::validate_store_id(&store).expect("the longest valid store id");
        assert!(encoded_batch_len(&store, [MAX_EVENT_BYTES]) <= MAX_BATCH_BYTES);
        let topic = crate::topics::store_events_topic(&store);
        // Fixed header (at most 5 bytes), topic (2 + length), packet id (2),
        // MQTT 5 properties (generously, 1 KiB).
        let publish = 5 + 2 + topic.len() + 2 + 1024 + MAX_BATCH_BYTES;
        assert!(publish <= MAX_PUBLISH_PACKET_BYTES, "{publish}");
    }
}
