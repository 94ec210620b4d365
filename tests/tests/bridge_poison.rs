//! Poison messages of every kind land in the dead-letter topic with their
//! reason and original bytes; the good events around them are unaffected.

mod bridge_support;

use std::collections::HashSet;
use std::time::Duration;

use anyhow::Result;
use bridge_support::*;
use harness::mosquitto::Mosquitto;
use protocol::receipt::DeliveryOutcome;
use protocol::topics::{self, headers, KafkaTopic};
use protocol::EventId;

const STORE: &str = "store-poison";

/// A good event's JSON with one textual change and a fresh id.
fn mutate(change: impl Fn(String) -> String) -> (EventId, Vec<u8>) {
    let ev = fresh_events(STORE, 1).remove(0);
    let text = String::from_utf8(ev.to_json()).expect("utf8");
    (ev.id, change(text).into_bytes())
}

#[test]
fn poison_messages_are_dead_lettered_with_their_reason_and_good_events_pass() -> Result<()> {
    let kafka = harness::kafka::shared();
    let mosquitto = Mosquitto::start()?;
    let mut opts = BridgeOptions::replica("poison-0");
    opts.max_event_bytes = 16 * 1024;
    let bridge = Bridge::start(mosquitto.port(), kafka.bootstrap(), opts)?;
    let store = FakeStore::connect(mosquitto.port(), STORE)?;

    let good = fresh_events(STORE, 7);
    let good_ids: HashSet<EventId> = good.iter().map(|e| e.id).collect();

    let unknown = mutate(|t| t.replacen("\"storelink.sale\"", "\"storelink.teleport\"", 1));
    let newer = mutate(|t| t.replacen("\"schema_version\":1", "\"schema_version\":99", 1));
    let bad_body = mutate(|t| t.replacen("\"lines\":", "\"lines_renamed\":", 1));
    let not_envelope = {
        let id = EventId::new_v7();
        (
            id,
            format!(r#"{{"id":"{id}","schema":"storelink.sale"}}"#).into_bytes(),
        )
    };
    let oversized = mutate(|t| {
        t.replacen(
            "{",
            &format!("{{\"padding\":\"{}\",", "x".repeat(20_000)),
            1,
        )
    });
    let other_store = {
        let mut e = fresh_events("store-other", 1).remove(0);
        e.id = EventId::new_v7();
        (e.id, e.to_json())
    };
    let poison: Vec<(&str, (EventId, Vec<u8>))> = vec![
        ("unknown_schema", unknown),
        ("unsupported_schema_version", newer),
        ("undecodable_body", bad_body),
        ("undecodable", not_envelope),
        ("oversized", oversized),
        ("store_mismatch", other_store),
    ];

    // good, poison, good, poison, … good
    let mut batch = Vec::new();
    for (i, g) in good.iter().enumerate() {
        batch.push(g.to_json());
        if let Some((_, (_, bytes))) = poison.get(i) {
            batch.push(bytes.clone());
        }
    }
    store.publish_raw_events(&batch)?;
    let garbage = b"this is not a batch {".to_vec();
    store.publish_payload(&garbage)?;

    let mut receipted: HashSet<EventId> = good_ids.clone();
    receipted.extend(poison.iter().map(|(_, (id, _))| *id));
    store.wait_receipted(&receipted, Duration::from_secs(60))?;

    let outcomes = store.outcomes();
    for id in &good_ids {
        assert_eq!(
            outcomes[id].0,
            DeliveryOutcome::Delivered,
            "good event {id}"
        );
    }
    for (reason, (id, _)) in &poison {
        assert_eq!(
            outcomes[id],
            (DeliveryOutcome::DeadLettered, Some((*reason).to_owned())),
            "receipt of the {reason} event"
        );
    }

    // Dead letters: right reason, original bytes, where from, when.
    let source = topics::store_events_topic(STORE);
    let dlq = harness::kafka::consume(
        kafka.bootstrap(),
        KafkaTopic::DeadLetters.name(),
        |recs| {
            let mine: Vec<_> = recs
                .iter()
                .filter(|r| {
                    r.header_str(headers::DLQ_SOURCE_TOPIC).as_deref() == Some(source.as_str())
                })
                .collect();
            mine.len() > poison.len()
        },
        Duration::from_secs(60),
    )?;
    let mine: Vec<_> = dlq
        .iter()
        .filter(|r| r.header_str(headers::DLQ_SOURCE_TOPIC).as_deref() == Some(source.as_str()))
        .collect();
    for (reason, (id, bytes)) in &poison {
        let r = mine
            .iter()
            .find(|r| record_id(r) == Some(*id))
            .unwrap_or_else(|| {
                panic!("no dead letter for the {reason} event {id}; dead letters: {mine:?}")
            });
        assert_eq!(r.header_str(headers::DLQ_REASON).as_deref(), Some(*reason));
        assert_eq!(
            &r.value, bytes,
            "{reason}: dead letter must keep the original bytes"
        );
        assert!(
            r.header_str(headers::DLQ_AT).is_some(),
            "{reason}: no DLQ_AT"
        );
        assert!(r
            .header_str(headers::DLQ_DETAIL)
            .is_some_and(|d| !d.is_empty()));
    }
    let whole = mine
        .iter()
        .find(|r| r.header_str(headers::DLQ_REASON).as_deref() == Some("undecodable_batch"))
        .expect("the undecodable batch is dead-lettered");
    assert_eq!(whole.value, garbage);

    // Good events are in their domain topics exactly once; poison never is.
    let recs = consume_ids(kafka.bootstrap(), &good_ids, Duration::from_secs(60))?;
    assert_each_exactly(&recs, &good_ids, 1);
    let poison_ids: HashSet<EventId> = poison.iter().map(|(_, (id, _))| *id).collect();
    assert!(
        !recs
            .iter()
            .filter_map(record_id)
            .any(|id| poison_ids.contains(&id)),
        "a poison event reached a domain topic"
    );
    for r in recs
        .iter()
        .filter(|r| record_id(r).is_some_and(|id| good_ids.contains(&id)))
    {
        let original = good
            .iter()
            .find(|e| Some(e.id) == record_id(r))
            .expect("known event");
        assert_eq!(
            r.value,
            original.to_json(),
            "record value is the original bytes"
        );
        assert_eq!(r.header_str(headers::STORE_ID).as_deref(), Some(STORE));
    }

    let m = bridge.metrics()?;
    for (reason, _) in &poison {
        let v = metric_value(
            &m,
            &format!("storelink_bridge_dead_letters_total{{reason=\"{reason}\"}}"),
        );
        assert_eq!(v, 1.0, "dead_letters_total for {reason}:\n{m}");
    }
    assert_eq!(
        metric_value(
            &m,
            "storelink_bridge_dead_letters_total{reason=\"undecodable_batch\"}"
        ),
        1.0
    );
    Ok(())
}
