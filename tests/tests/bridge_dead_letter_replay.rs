//! `cloud-bridge dead-letters replay` after the cause of a dead letter is
//! gone: a sale dead-lettered `oversized` by a bridge whose event limit was
//! too small reaches its domain topic once the limit is raised, exactly once
//! across repeated replays; what today's rules still refuse (a store writing
//! as another, a schema version no bridge reads) stays dead.

mod bridge_support;

use std::collections::HashSet;
use std::path::Path;
use std::process::{Command, Output};
use std::time::Duration;

use anyhow::{Context, Result};
use bridge_support::*;
use harness::mosquitto::Mosquitto;
use harness::process::bin_path;
use protocol::receipt::DeliveryOutcome;
use protocol::topics::{self, headers, KafkaTopic};
use protocol::EventId;

const STORE: &str = "store-replay";
const SMALL_LIMIT: usize = 16 * 1024;

fn replay(config: &Path, extra: &[&str]) -> Result<Output> {
    Command::new(bin_path("cloud-bridge")?)
        .args(["dead-letters", "replay", "--config"])
        .arg(config)
        .args([
            "--reason",
            "oversized",
            "--reason",
            "store_mismatch",
            "--reason",
            "unsupported_schema_version",
            "--store",
            STORE,
        ])
        .args(extra)
        .env("RUST_LOG", "warn")
        .output()
        .context("running cloud-bridge dead-letters replay")
}

fn text(o: &Output) -> String {
    format!(
        "status {}\nstdout:\n{}\nstderr:\n{}",
        o.status,
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

#[test]
fn a_replay_publishes_what_routes_today_once_and_leaves_the_rest_dead() -> Result<()> {
    let kafka = harness::kafka::shared();
    let mosquitto = Mosquitto::start()?;
    let mut opts = BridgeOptions::replica("replay-0");
    opts.max_event_bytes = SMALL_LIMIT;
    let bridge = Bridge::start(mosquitto.port(), kafka.bootstrap(), opts)?;
    let store = FakeStore::connect(mosquitto.port(), STORE)?;

    let good = fresh_events(STORE, 3);
    // A sale over the bridge's limit: a field this bridge does not know
    // (VERSIONING rule 3) makes it 20 KB.
    let large = fresh_events(STORE, 1).remove(0);
    let large_bytes = String::from_utf8(large.to_json())?
        .replacen("{", &format!("{{\"note\":\"{}\",", "x".repeat(20_000)), 1)
        .into_bytes();
    assert!(large_bytes.len() > SMALL_LIMIT);
    let spoof = fresh_events("store-other", 1).remove(0);
    let newer = fresh_events(STORE, 1).remove(0);
    let newer_bytes = String::from_utf8(newer.to_json())?
        .replacen("\"schema_version\":1", "\"schema_version\":999", 1)
        .into_bytes();

    let mut batch: Vec<Vec<u8>> = good.iter().map(|e| e.to_json()).collect();
    batch.insert(1, large_bytes.clone());
    batch.insert(2, spoof.to_json());
    batch.push(newer_bytes);
    store.publish_raw_events(&batch)?;

    let good_ids: HashSet<EventId> = good.iter().map(|e| e.id).collect();
    let mut all: HashSet<EventId> = good_ids.clone();
    all.extend([large.id, spoof.id, newer.id]);
    store.wait_receipted(&all, Duration::from_secs(60))?;
    let outcomes = store.outcomes();
    for (id, reason) in [
        (large.id, "oversized"),
        (spoof.id, "store_mismatch"),
        (newer.id, "unsupported_schema_version"),
    ] {
        assert_eq!(
            outcomes[&id],
            (DeliveryOutcome::DeadLettered, Some(reason.to_owned())),
            "receipt of the {reason} event"
        );
    }

    // The operator raises the limit, then replays. The dead letters are in
    // Kafka: the bridge waits for their delivery before it receipts them.
    let config = std::fs::read_to_string(bridge.config_path())?;
    let raised = config.replace(
        &format!("max_event_bytes = {SMALL_LIMIT}"),
        "max_event_bytes = 262144",
    );
    assert_ne!(raised, config, "the test's config names the limit");
    let dir = tempfile::tempdir()?;
    let raised_path = dir.path().join("bridge-raised.toml");
    std::fs::write(&raised_path, raised)?;

    let sale_topic = KafkaTopic::for_kind(large.schema).name();
    let dry = replay(&raised_path, &["--dry-run"])?;
    let out = String::from_utf8_lossy(&dry.stdout);
    assert_eq!(dry.status.code(), Some(1), "{}", text(&dry));
    assert!(
        out.contains(&format!("would replay 1 to {sale_topic}")),
        "{}",
        text(&dry)
    );
    assert!(
        out.contains("still dead: 1 store_mismatch"),
        "{}",
        text(&dry)
    );
    assert!(
        out.contains("still dead: 1 unsupported_schema_version"),
        "{}",
        text(&dry)
    );
    assert!(out.contains("nothing published"), "{}", text(&dry));

    let first = replay(&raised_path, &[])?;
    let out = String::from_utf8_lossy(&first.stdout);
    println!("the first replay printed:\n{out}");
    assert_eq!(
        first.status.code(),
        Some(1),
        "two still fail: {}",
        text(&first)
    );
    assert!(
        out.contains(&format!("replayed 1 to {sale_topic}")),
        "{}",
        text(&first)
    );
    assert!(
        out.contains("still dead: 1 store_mismatch"),
        "{}",
        text(&first)
    );
    assert!(
        out.contains("read 3 dead letters"),
        "the dry run committed nothing, so this run reads all three: {}",
        text(&first)
    );

    // Again: the group's progress says all three were handled.
    let second = replay(&raised_path, &[])?;
    let out = String::from_utf8_lossy(&second.stdout);
    assert!(second.status.success(), "{}", text(&second));
    assert!(out.contains("read 0 dead letters"), "{}", text(&second));
    assert!(out.contains("replayed nothing"), "{}", text(&second));

    // The replays have exited, so everything they published is in Kafka.
    let mut want = good_ids.clone();
    want.insert(large.id);
    let recs = consume_ids(kafka.bootstrap(), &want, Duration::from_secs(60))?;
    assert_each_exactly(&recs, &want, 1);
    let replayed = recs
        .iter()
        .find(|r| record_id(r) == Some(large.id))
        .context("the replayed sale")?;
    assert_eq!(replayed.topic, sale_topic);
    assert_eq!(replayed.value, large_bytes, "the sale's original bytes");
    assert_eq!(
        replayed.key.as_deref(),
        Some(topics::partition_key(large.schema, STORE, &large.source.device_id).as_str())
    );
    assert_eq!(
        replayed.header_str(headers::STORE_ID).as_deref(),
        Some(STORE)
    );

    // It names the dead letter it came from.
    let dlq = harness::kafka::consume(
        kafka.bootstrap(),
        KafkaTopic::DeadLetters.name(),
        |recs| recs.iter().any(|r| record_id(r) == Some(large.id)),
        Duration::from_secs(30),
    )?;
    let letter = dlq
        .iter()
        .find(|r| record_id(r) == Some(large.id))
        .context("the oversized dead letter")?;
    assert_eq!(
        replayed.header_str(headers::REPLAYED_FROM),
        Some(format!(
            "{}/{}/{}",
            KafkaTopic::DeadLetters.name(),
            letter.partition,
            letter.offset
        ))
    );

    let dead: HashSet<EventId> = [spoof.id, newer.id].into();
    assert!(
        !recs
            .iter()
            .filter_map(record_id)
            .any(|id| dead.contains(&id)),
        "an event today's rules refuse reached a domain topic"
    );
    Ok(())
}
