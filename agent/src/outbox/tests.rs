//! Outbox behaviour against real SQLite files in temp directories.

use chrono::Utc;
use protocol::device::ShelfReading;
use protocol::{Envelope, EventBody, EventKind, Source, SourceKind};

use super::*;

fn store() -> StoreIdentity {
    StoreIdentity {
        store_id: "store-test".into(),
        region: "eu-west".into(),
    }
}

fn open(dir: &std::path::Path, max_bytes: u64, max_rows: u64) -> Outbox {
    Outbox::open(
        OutboxConfig::new(dir.join("outbox.db"), max_bytes, max_rows),
        store(),
    )
    .expect("outbox opens")
}

fn sale(seq: u64) -> (Envelope, Option<String>) {
    let body = EventBody::Sale(Box::new(protocol::samples::sale_numbered("pos-01", seq)));
    let env = Envelope::new(
        "store-test",
        "eu-west",
        Source {
            kind: SourceKind::PosTerminal,
            device_id: "pos-01".into(),
        },
        Utc::now().fixed_offset(),
        body,
    );
    (env, Some(format!("pos-01/2026-11-24/{seq}")))
}

fn reading(sensor: &str, grams: i64) -> Envelope {
    let body = EventBody::ShelfReading(ShelfReading {
        grams,
        ..protocol::samples::shelf_reading()
    });
    Envelope::new(
        "store-test",
        "eu-west",
        Source {
            kind: SourceKind::ShelfSensor,
            device_id: sensor.into(),
        },
        Utc::now().fixed_offset(),
        body,
    )
}

async fn all_events(h: &OutboxHandle) -> Vec<StoredEvent> {
    h.read_after(0, 1_000_000, usize::MAX).await.expect("read")
}

#[tokio::test]
async fn appended_events_survive_reopen_in_order_and_leave_only_by_receipt() {
    let dir = tempfile::tempdir().expect("tmp");
    let mut ids = vec![];
    {
        let outbox = open(dir.path(), 1 << 30, 1_000_000);
        let h = outbox.handle();
        let tasks: Vec<_> = (1..=200)
            .map(|seq| {
                let h = h.clone();
                tokio::spawn(async move {
                    let (env, key) = sale(seq);
                    let id = env.id;
                    assert_eq!(
                        h.append(env, key).await.expect("append"),
                        AppendOutcome::Stored
                    );
                    id
                })
            })
            .collect();
        for t in tasks {
            ids.push(t.await.expect("join"));
        }
        assert_eq!(h.stats().rows(), 200);
        assert_eq!(h.stats().pending_transactions(), 200);
        drop(h);
        outbox.close().await;
    }
    let outbox = open(dir.path(), 1 << 30, 1_000_000);
    let h = outbox.handle();
    let stored = all_events(&h).await;
    assert_eq!(stored.len(), 200);
    assert!(stored.windows(2).all(|w| w[0].seq < w[1].seq));
    assert!(stored.iter().all(StoredEvent::checksum_ok));
    assert_eq!(
        h.stats().pending_transactions(),
        200,
        "counters rebuilt from disk"
    );
    let deleted = h.delete(ids[..150].to_vec()).await.expect("delete");
    assert_eq!(deleted, 150);
    assert_eq!(all_events(&h).await.len(), 50);
    assert_eq!(h.stats().pending_transactions(), 50);
    // Receipts for unknown or already deleted ids change nothing.
    assert_eq!(h.delete(ids[..10].to_vec()).await.expect("delete"), 0);
}

#[tokio::test]
async fn a_transaction_posted_again_returns_its_original_id_even_after_delivery() {
    let dir = tempfile::tempdir().expect("tmp");
    let outbox = open(dir.path(), 1 << 30, 1_000_000);
    let h = outbox.handle();
    let (env, key) = sale(7);
    let original = env.id;
    h.append(env, key.clone()).await.expect("first");
    let (again, _) = sale(7);
    assert_eq!(
        h.append(again, key.clone()).await.expect("again"),
        AppendOutcome::Duplicate(original)
    );
    h.delete(vec![original]).await.expect("receipt");
    let (after, _) = sale(7);
    assert_eq!(
        h.append(after, key.clone()).await.expect("after delivery"),
        AppendOutcome::Duplicate(original)
    );
    // Same key, different body: a terminal reusing a sequence number.
    let (mut different, _) = sale(7);
    if let EventBody::Sale(s) = &mut different.body {
        s.operator_id = "op-other".into();
    }
    match h.append(different, key).await {
        Err(OutboxError::IdempotencyConflict { original: o, .. }) => assert_eq!(o, original),
        other => panic!("expected a conflict, got {other:?}"),
    }
    assert_eq!(all_events(&h).await.len(), 0);
}

#[tokio::test]
async fn a_full_outbox_refuses_sales_and_sheds_telemetry_with_a_count() {
    let dir = tempfile::tempdir().expect("tmp");
    let outbox = open(dir.path(), 1 << 30, 100);
    let h = outbox.handle();
    // Telemetry may use 80 rows: 200 readings from 4 sensors force compaction and shedding.
    for i in 0..200 {
        let outcome = h
            .append(reading(&format!("shelf-{}", i % 4), i), None)
            .await
            .expect("reading");
        assert!(
            matches!(outcome, AppendOutcome::Stored | AppendOutcome::Shed),
            "{outcome:?}"
        );
    }
    let stats = h.stats();
    let shed =
        stats.shed_total.load(Ordering::Relaxed) + stats.compacted_total.load(Ordering::Relaxed);
    assert!(
        shed >= 120,
        "at least 120 readings compacted or shed, got {shed}"
    );
    assert!(
        stats.rows() <= 80,
        "telemetry stays within its share: {}",
        stats.rows()
    );
    // Sales still fit in the reserved share …
    for seq in 1..=19 {
        let (env, key) = sale(seq);
        assert_eq!(
            h.append(env, key).await.expect("sale fits"),
            AppendOutcome::Stored
        );
    }
    // … until the outbox is really full; then they are refused, never dropped.
    let mut refused = 0;
    for seq in 20..=80 {
        let (env, key) = sale(seq);
        match h.append(env, key).await {
            Ok(AppendOutcome::Stored) => {}
            Err(OutboxError::Full { .. }) => refused += 1,
            other => panic!("unexpected {other:?}"),
        }
    }
    assert!(refused > 0, "a full outbox must refuse sales");
    let events = all_events(&h).await;
    let kinds: Vec<_> = events.iter().map(|e| e.kind.as_str()).collect();
    assert!(
        kinds.contains(&EventKind::AgentNotice.schema_name()),
        "shedding is reported as an event"
    );
    assert!(events.iter().all(StoredEvent::checksum_ok));
}

#[tokio::test]
async fn a_garbage_database_file_is_set_aside_and_a_fresh_outbox_opens() {
    let dir = tempfile::tempdir().expect("tmp");
    let path = dir.path().join("outbox.db");
    std::fs::write(
        &path,
        b"this is not a sqlite database, it is a torn write\0\x01\x02",
    )
    .expect("write garbage");
    let outbox =
        Outbox::open(OutboxConfig::new(&path, 1 << 30, 1000), store()).expect("opens anyway");
    let (aside, _why) = outbox.report.set_aside.clone().expect("damage reported");
    assert!(aside.exists(), "the damaged file is kept");
    assert_eq!(std::fs::read(&aside).expect("read aside")[..7], *b"this is");
    let h = outbox.handle();
    let events = all_events(&h).await;
    assert_eq!(
        events.len(),
        1,
        "the fresh outbox starts with the recovery notice"
    );
    assert!(String::from_utf8_lossy(&events[0].payload).contains("outbox_recovered"));
    let (env, key) = sale(1);
    assert_eq!(
        h.append(env, key).await.expect("keeps selling"),
        AppendOutcome::Stored
    );
}

#[tokio::test]
async fn a_truncated_database_file_is_set_aside() {
    let dir = tempfile::tempdir().expect("tmp");
    let path = dir.path().join("outbox.db");
    {
        let outbox = open(dir.path(), 1 << 30, 1_000_000);
        let h = outbox.handle();
        for seq in 1..=500 {
            let (env, key) = sale(seq);
            h.append(env, key).await.expect("append");
        }
        drop(h);
        outbox.close().await;
    }
    let len = std::fs::metadata(&path).expect("meta").len();
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(&path)
        .expect("open");
    f.set_len(len / 3).expect("truncate");
    drop(f);
    let outbox = open(dir.path(), 1 << 30, 1_000_000);
    assert!(outbox.report.set_aside.is_some(), "truncation detected");
    let (env, key) = sale(501);
    assert_eq!(
        outbox.handle().append(env, key).await.expect("append"),
        AppendOutcome::Stored
    );
}

#[tokio::test]
async fn an_event_failing_its_checksum_is_quarantined_and_reported() {
    let dir = tempfile::tempdir().expect("tmp");
    let outbox = open(dir.path(), 1 << 30, 1000);
    let h = outbox.handle();
    let (env, key) = sale(1);
    h.append(env, key).await.expect("append");
    {
        let conn = rusqlite::Connection::open(dir.path().join("outbox.db")).expect("open");
        conn.execute(
            "UPDATE events SET payload = CAST(replace(payload, 'op-117', 'op-666') AS BLOB)",
            [],
        )
        .expect("corrupt");
    }
    let events = all_events(&h).await;
    assert!(!events[0].checksum_ok());
    h.quarantine(events[0].seq, "crc32 mismatch before send".into())
        .await
        .expect("quarantine");
    let events = all_events(&h).await;
    assert_eq!(events.len(), 1);
    assert!(String::from_utf8_lossy(&events[0].payload).contains("outbox_corrupt_events"));
    assert_eq!(h.stats().quarantined_total.load(Ordering::Relaxed), 1);
    assert_eq!(h.stats().pending_transactions(), 0);
}

#[tokio::test]
async fn a_version_1_outbox_is_migrated_and_keeps_its_idempotency_keys() {
    let dir = tempfile::tempdir().expect("tmp");
    let path = dir.path().join("outbox.db");
    let (env, key) = sale(42);
    let original = env.id;
    {
        let conn = rusqlite::Connection::open(&path).expect("open");
        conn.execute_batch(super::schema::MIGRATIONS[0])
            .expect("v1 schema");
        conn.pragma_update(None, "user_version", 1)
            .expect("version");
        let body = super::PreparedEvent::new(&env).body_crc;
        conn.execute(
            "INSERT INTO transaction_keys (key, event_id, body_crc, created_ms) VALUES (?1, ?2, ?3, ?4)",
            rusqlite::params![key.as_deref(), original.0.as_bytes().as_slice(), i64::from(body), Utc::now().timestamp_millis()],
        )
        .expect("v1 key");
    }
    let outbox = open(dir.path(), 1 << 30, 1000);
    let (again, _) = sale(42);
    assert_eq!(
        outbox.handle().append(again, key).await.expect("append"),
        AppendOutcome::Duplicate(original)
    );
    let conn = rusqlite::Connection::open(&path).expect("open");
    let version: i64 = conn
        .pragma_query_value(None, "user_version", |r| r.get(0))
        .expect("version");
    assert_eq!(version as usize, super::schema::MIGRATIONS.len());
}

#[tokio::test]
async fn idempotency_keys_survive_a_restart() {
    // The in-memory key index is rebuilt from disk: after a reopen a stored
    // key is still a duplicate, and a fresh key is stored.
    let dir = tempfile::tempdir().expect("tmp");
    let (env, key) = sale(1);
    let id = env.id;
    {
        let outbox = open(dir.path(), 1 << 30, 1000);
        outbox
            .handle()
            .append(env, key.clone())
            .await
            .expect("append");
        outbox.close().await;
    }
    let outbox = open(dir.path(), 1 << 30, 1000);
    let h = outbox.handle();
    let (again, _) = sale(1);
    assert_eq!(
        h.append(again, key).await.expect("dup"),
        AppendOutcome::Duplicate(id)
    );
    let (fresh, fresh_key) = sale(2);
    assert_eq!(
        h.append(fresh, fresh_key).await.expect("fresh"),
        AppendOutcome::Stored
    );
}
