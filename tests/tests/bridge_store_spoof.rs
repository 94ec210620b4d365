//! A store cannot write as another: events claiming another store than the
//! MQTT topic they arrive on are dead-lettered (`store_mismatch`), never published.

mod bridge_support;

use std::collections::HashSet;
use std::time::Duration;

use anyhow::Result;
use bridge_support::*;
use harness::mosquitto::Mosquitto;
use protocol::receipt::DeliveryOutcome;
use protocol::topics::{self, headers, KafkaTopic};
use protocol::{Envelope, EventId};

#[test]
fn a_message_on_store_a_topic_claiming_store_b_is_dead_lettered_never_published() -> Result<()> {
    let kafka = harness::kafka::shared();
    let mosquitto = Mosquitto::start()?;
    let _bridge = Bridge::start(
        mosquitto.port(),
        kafka.bootstrap(),
        BridgeOptions::replica("spoof-0"),
    )?;
    let store_a = FakeStore::connect(mosquitto.port(), "store-a")?;

    // 1. The whole batch claims store B (batch header and envelopes).
    let as_b = fresh_events("store-b", 5);
    let jsons: Vec<Vec<u8>> = as_b.iter().map(Envelope::to_json).collect();
    let payload = protocol::batch::encode_batch(
        uuid::Uuid::now_v7(),
        "store-b",
        jsons.iter().map(|j| j.as_slice()),
    );
    store_a.publish_payload(&payload)?;

    // 2. A batch of store A with one envelope of store B hidden in it.
    let mut mixed = fresh_events("store-a", 4);
    let hidden = fresh_events("store-b", 1).remove(0);
    mixed.insert(2, hidden.clone());
    store_a.publish_events(&mixed)?;

    let spoofed: HashSet<EventId> = as_b.iter().map(|e| e.id).chain([hidden.id]).collect();
    let honest: HashSet<EventId> = mixed
        .iter()
        .filter(|e| e.id != hidden.id)
        .map(|e| e.id)
        .collect();
    let all: HashSet<EventId> = spoofed.union(&honest).copied().collect();
    store_a.wait_receipted(&all, Duration::from_secs(60))?;
    let outcomes = store_a.outcomes();
    for id in &spoofed {
        assert_eq!(
            outcomes[id],
            (
                DeliveryOutcome::DeadLettered,
                Some("store_mismatch".to_owned())
            )
        );
    }
    for id in &honest {
        assert_eq!(outcomes[id].0, DeliveryOutcome::Delivered);
    }

    // Receipts come after the Kafka writes, so everything is in Kafka now.
    let recs = consume_ids(kafka.bootstrap(), &honest, Duration::from_secs(60))?;
    assert_each_exactly(&recs, &honest, 1);
    let leaked: Vec<_> = recs
        .iter()
        .filter(|r| record_id(r).is_some_and(|id| spoofed.contains(&id)))
        .collect();
    assert!(
        leaked.is_empty(),
        "spoofed events reached domain topics: {leaked:?}"
    );
    assert!(
        recs.iter()
            .all(|r| r.header_str(headers::STORE_ID).as_deref() != Some("store-b")),
        "a record was published under store-b"
    );

    let source = topics::store_events_topic("store-a");
    let dlq = harness::kafka::consume(
        kafka.bootstrap(),
        KafkaTopic::DeadLetters.name(),
        |recs| {
            let got: HashSet<EventId> = recs.iter().filter_map(record_id).collect();
            spoofed.is_subset(&got)
        },
        Duration::from_secs(60),
    )?;
    for id in &spoofed {
        let r = dlq
            .iter()
            .find(|r| record_id(r) == Some(*id))
            .unwrap_or_else(|| panic!("spoofed event {id} is not in the dead-letter topic"));
        assert_eq!(
            r.header_str(headers::DLQ_REASON).as_deref(),
            Some("store_mismatch")
        );
        assert_eq!(
            r.header_str(headers::DLQ_SOURCE_TOPIC),
            Some(source.clone())
        );
        // Attributed to the store that sent it, not to the one it claimed.
        assert_eq!(r.header_str(headers::STORE_ID).as_deref(), Some("store-a"));
    }
    Ok(())
}
