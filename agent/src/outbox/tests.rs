//! Outbox behaviour against real SQLite files in temp directories.

use std::collections::{HashMap, HashSet};
use std::time::Instant;

use chrono::Utc;
use proptest::prelude::*;
use protocol::device::ShelfReading;
use protocol::{Envelope, EventBody, EventKind, Source, SourceKind};

use super::writer::{shed_chunk, SHED_REPORT_EVERY, TELEMETRY_SHARE};
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

/// Appends the sales numbered `seqs` with their keys; returns their ids.
async fn append_sales(h: &OutboxHandle, seqs: std::ops::RangeInclusive<u64>) -> Vec<EventId> {
    let mut ids = vec![];
    for seq in seqs {
        let (env, key) = sale(seq);
        ids.push(env.id);
        h.append(env, key).await.expect("append");
    }
    ids
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

/// The shed notice obeys the cap like any event: an outbox full of sales
/// whose link is down does not grow by a notice every ten seconds; the
/// count waits (durably) and is reported once deliveries make room.
#[tokio::test]
async fn the_shed_report_waits_for_room_and_then_counts_everything() {
    let dir = tempfile::tempdir().expect("tmp");
    let outbox = open(dir.path(), 1 << 30, 10);
    let h = outbox.handle();
    let mut sales = Vec::new();
    for seq in 1..=10 {
        let (env, key) = sale(seq);
        sales.push(env.id);
        assert_eq!(
            h.append(env, key).await.expect("fits"),
            AppendOutcome::Stored
        );
    }
    for i in 0..5 {
        let outcome = h
            .append(reading("shelf-1", i), None)
            .await
            .expect("reading");
        assert_eq!(outcome, AppendOutcome::Shed);
    }
    h.housekeep().await.expect("housekeep");
    let events = all_events(&h).await;
    assert_eq!(events.len(), 10, "nothing beyond the cap: {events:?}");
    assert_eq!(h.stats().shed_total.load(Ordering::Relaxed), 5);

    // Receipts for three sales make room; that commit writes the report.
    assert_eq!(h.delete(sales[..3].to_vec()).await.expect("delete"), 3);
    let events = all_events(&h).await;
    let notices: Vec<serde_json::Value> = events
        .iter()
        .filter(|e| e.kind == EventKind::AgentNotice.schema_name())
        .map(|e| serde_json::from_slice(&e.payload).expect("json"))
        .collect();
    assert_eq!(notices.len(), 1, "{notices:?}");
    assert_eq!(notices[0]["body"]["code"], "telemetry_shed");
    assert_eq!(notices[0]["body"]["count"], 5);
    assert_eq!(events.len(), 8);
    outbox.close().await;
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
    // Sales still fit in the reserved share (the first 19 must) until the
    // outbox is really full; then they are refused, never dropped.
    let mut refused = 0;
    let mut stored_ids: Vec<_> = Vec::new();
    for seq in 1..=80 {
        let (env, key) = sale(seq);
        let id = env.id;
        match h.append(env, key).await {
            Ok(AppendOutcome::Stored) => stored_ids.push(id),
            Err(OutboxError::Full { .. }) if seq >= 20 => refused += 1,
            other => panic!("sale {seq}: unexpected {other:?}"),
        }
    }
    assert!(refused > 0, "a full outbox must refuse sales");
    let events = all_events(&h).await;
    // Refused, never dropped: every sale that was stored is still there.
    let sale_ids: Vec<_> = events
        .iter()
        .filter(|e| e.kind == EventKind::Sale.schema_name())
        .map(|e| e.id)
        .collect();
    assert_eq!(sale_ids, stored_ids, "the stored sales, in order");
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
    assert_eq!(outbox.report.reported, vec![aside.clone()]);
    let (env, key) = sale(1);
    assert_eq!(
        h.append(env, key).await.expect("keeps selling"),
        AppendOutcome::Stored
    );
}

/// The notices in the outbox about damaged databases set aside.
async fn recovery_notices(h: &OutboxHandle) -> Vec<String> {
    all_events(h)
        .await
        .into_iter()
        .map(|e| String::from_utf8_lossy(&e.payload).into_owned())
        .filter(|p| p.contains("outbox_recovered"))
        .collect()
}

#[tokio::test]
async fn a_set_aside_outbox_left_unreported_by_a_second_fault_is_reported_once_at_the_next_open() {
    let dir = tempfile::tempdir().expect("tmp");
    let path = dir.path().join("outbox.db");
    // What a start leaves when the disk fills up right after renaming a
    // damaged outbox aside: the set-aside files, and no outbox at all.
    let aside = dir.path().join("outbox.db.damaged-20261124T031500.123Z");
    std::fs::write(&aside, b"SQLite format 3\0 torn").expect("write aside");
    std::fs::write(
        dir.path()
            .join("outbox.db.damaged-20261124T031500.123Z-wal"),
        b"wal",
    )
    .expect("write aside wal");
    assert!(!path.exists());

    let outbox = open(dir.path(), 1 << 30, 1000);
    let h = outbox.handle();
    let notices = recovery_notices(&h).await;
    assert_eq!(
        notices.len(),
        1,
        "one notice per set-aside database: {notices:?}"
    );
    assert!(
        notices[0].contains("outbox.db.damaged-20261124T031500.123Z")
            && notices[0].contains("earlier start"),
        "{}",
        notices[0]
    );
    assert!(outbox.report.set_aside.is_none(), "nothing damaged now");
    assert_eq!(outbox.report.reported, vec![aside.clone()]);
    let mut set_aside: Vec<String> = std::fs::read_dir(dir.path())
        .expect("list")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("outbox.db.damaged-"))
        .collect();
    set_aside.sort();
    assert_eq!(
        set_aside,
        [
            "outbox.db.damaged-20261124T031500.123Z",
            "outbox.db.damaged-20261124T031500.123Z-wal"
        ],
        "reporting keeps the set-aside files as they were and adds none that look like them"
    );
    drop(h);
    outbox.close().await;

    let outbox = open(dir.path(), 1 << 30, 1000);
    assert!(outbox.report.reported.is_empty());
    assert_eq!(
        recovery_notices(&outbox.handle()).await.len(),
        1,
        "reported once, not at every start"
    );
}

#[tokio::test]
async fn a_truncated_database_file_is_set_aside_and_the_sales_before_the_cut_come_back() {
    let dir = tempfile::tempdir().expect("tmp");
    let path = dir.path().join("outbox.db");
    let ids = {
        let outbox = open(dir.path(), 1 << 30, 1_000_000);
        let ids = append_sales(&outbox.handle(), 1..=500).await;
        outbox.close().await;
        ids
    };
    let len = std::fs::metadata(&path).expect("meta").len();
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(&path)
        .expect("open");
    f.set_len(len / 3).expect("truncate");
    drop(f);
    let outbox = open(dir.path(), 1 << 30, 1_000_000);
    let (aside, _why) = outbox
        .report
        .set_aside
        .clone()
        .expect("truncation detected");
    assert_ne!(aside, path, "the damaged file is moved, not reopened");
    assert_eq!(
        std::fs::metadata(&aside)
            .expect("the damaged file is kept")
            .len(),
        len / 3,
        "kept as it was found"
    );
    // Rows are appended to new pages at the end of the file, so what the
    // cut leaves is the oldest sales, in order (and a row cut in half,
    // which fails its checksum).
    let salvage = outbox.report.salvaged[0].1.clone();
    let h = outbox.handle();
    let back = sale_ids(&all_events(&h).await);
    assert!(
        (100..400).contains(&back.len()) && back[..] == ids[..back.len()],
        "{} sales back; {salvage:?}",
        back.len()
    );
    assert_eq!(salvage.recovered, back.len() as u64);
    let (env, key) = sale(501);
    assert_eq!(
        h.append(env, key).await.expect("append"),
        AppendOutcome::Stored
    );
    assert_eq!(
        all_events(&h).await.len(),
        back.len() + 2,
        "the recovered sales, the recovery notice and the new sale"
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

// ---------------------------------------------------------------------------
// Model tests: random operations against a real file, checked after each
// step against what the outbox promises (the invariants in mod.rs, the
// capacity policy in writer.rs).

#[derive(Debug, Clone)]
enum Op {
    /// A sale under idempotency key `n`; `other` changes its body, as a
    /// terminal reusing a sequence number for another transaction would.
    Sale {
        n: u64,
        other: bool,
    },
    Reading {
        sensor: u8,
        grams: i64,
    },
    /// A receipt naming ids picked (modulo) from the stored events followed
    /// by every id ever stored, so some are already gone or named twice.
    Receipt(Vec<usize>),
    Housekeep,
    Restart,
    Crash,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (0u64..20, prop::bool::weighted(0.15)).prop_map(|(n, other)| Op::Sale { n, other }),
        3 => (0u8..3, -500i64..5000).prop_map(|(sensor, grams)| Op::Reading { sensor, grams }),
        2 => prop::collection::vec(any::<usize>(), 1..5).prop_map(Op::Receipt),
        1 => Just(Op::Housekeep),
        1 => Just(Op::Restart),
        1 => Just(Op::Crash),
    ]
}

fn sale_variant(n: u64, other: bool) -> (Envelope, Option<String>) {
    let (mut env, key) = sale(n);
    if let (true, EventBody::Sale(s)) = (other, &mut env.body) {
        s.operator_id = "op-other".into();
    }
    (env, key)
}

/// An append's answer, comparable.
#[derive(Debug, PartialEq)]
enum Answer {
    Stored,
    Duplicate(EventId),
    Shed,
    Conflict(EventId),
    Full { rows: u64, bytes: u64 },
}

fn answer(r: Result<AppendOutcome, OutboxError>) -> Answer {
    match r {
        Ok(AppendOutcome::Stored) => Answer::Stored,
        Ok(AppendOutcome::Duplicate(id)) => Answer::Duplicate(id),
        Ok(AppendOutcome::Shed) => Answer::Shed,
        Err(OutboxError::IdempotencyConflict { original, .. }) => Answer::Conflict(original),
        Err(OutboxError::Full { rows, bytes }) => Answer::Full { rows, bytes },
        Err(e) => panic!("append failed: {e}"),
    }
}

struct Acked {
    id: EventId,
    kind: &'static str,
    device: String,
    payload: Vec<u8>,
}

const READING: &str = "storelink.shelf_reading";

struct Model {
    max_rows: u64,
    max_bytes: u64,
    /// Acknowledged and not yet receipted (nor shed), in acknowledgement order.
    live: Vec<Acked>,
    /// Every id ever stored: what receipts pick from.
    ever: Vec<EventId>,
    /// Idempotency key → (original id, body variant). Never forgotten here:
    /// keys outlive their events by design.
    keys: HashMap<u64, (EventId, bool)>,
    /// The seq each event had when first read: it must never change.
    seqs: HashMap<EventId, i64>,
    /// Highest seq ever observed, across receipts and restarts.
    max_seq: i64,
    /// Readings compacted or shed and not yet reported by a notice.
    unreported: u64,
    /// The request during which the last notice was written; None since open.
    last_report: Option<(Instant, Instant)>,
    /// The outbox's counters since open.
    compacted: u64,
    shed: u64,
}

impl Model {
    fn new(max_rows: u64, max_bytes: u64) -> Model {
        Model {
            max_rows,
            max_bytes,
            live: vec![],
            ever: vec![],
            keys: HashMap::new(),
            seqs: HashMap::new(),
            max_seq: 0,
            unreported: 0,
            last_report: None,
            compacted: 0,
            shed: 0,
        }
    }

    fn rows(&self) -> u64 {
        self.live.len() as u64
    }

    fn bytes(&self) -> u64 {
        self.live.iter().map(|e| e.payload.len() as u64).sum()
    }

    /// writer.rs `over`: one more event of `size` bytes exceeds `share` of the capacity.
    fn over(&self, share: f64, size: u64) -> bool {
        self.rows() + 1 > (self.max_rows as f64 * share) as u64
            || self.bytes() + size > (self.max_bytes as f64 * share) as u64
    }

    /// Drops up to `n` readings, oldest first; returns how many.
    fn drop_oldest_readings(&mut self, n: u64) -> u64 {
        let mut left = n;
        let before = self.live.len();
        self.live.retain(|e| {
            if left > 0 && e.kind == READING {
                left -= 1;
                false
            } else {
                true
            }
        });
        (before - self.live.len()) as u64
    }

    /// Drops the readings `which` selects; returns how many.
    fn drop_readings(&mut self, which: impl Fn(&Acked) -> bool) -> u64 {
        let before = self.live.len();
        self.live.retain(|e| !(e.kind == READING && which(e)));
        (before - self.live.len()) as u64
    }

    fn acked(&mut self, env: &Envelope) {
        self.ever.push(env.id);
        self.live.push(Acked {
            id: env.id,
            kind: env.schema.schema_name(),
            device: env.source.device_id.clone(),
            payload: env.to_json(),
        });
    }

    async fn apply(&mut self, h: &OutboxHandle, op: &Op) -> Result<(), TestCaseError> {
        match *op {
            Op::Sale { n, other } => {
                let (env, key) = sale_variant(n, other);
                let size = env.to_json().len() as u64;
                let want = match self.keys.get(&n) {
                    Some(&(id, same)) if same == other => Answer::Duplicate(id),
                    Some(&(id, _)) => Answer::Conflict(id),
                    // Transactions may use all of the capacity, and are
                    // refused beyond it: never shed.
                    None if self.over(1.0, size) => Answer::Full {
                        rows: self.rows(),
                        bytes: self.bytes(),
                    },
                    None => Answer::Stored,
                };
                prop_assert_eq!(&answer(h.append(env.clone(), key).await), &want);
                if want == Answer::Stored {
                    self.keys.insert(n, (env.id, other));
                    self.acked(&env);
                }
            }
            Op::Reading { sensor, grams } => {
                let env = reading(&format!("shelf-{sensor}"), grams);
                let size = env.to_json().len() as u64;
                let mut want = Answer::Stored;
                if self.over(TELEMETRY_SHARE, size) {
                    // The new reading supersedes its sensor's older ones …
                    let compacted = self.drop_readings(|e| e.device == env.source.device_id);
                    self.compacted += compacted;
                    self.unreported += compacted;
                    // … then the oldest go, a chunk at a time, until it fits
                    // or no reading is left (then the new one is shed).
                    while self.over(TELEMETRY_SHARE, size) {
                        let shed = self.drop_oldest_readings(shed_chunk(self.rows()));
                        self.shed += shed;
                        self.unreported += shed;
                        if shed == 0 {
                            want = Answer::Shed;
                            self.shed += 1;
                            self.unreported += 1;
                            break;
                        }
                    }
                }
                prop_assert_eq!(&answer(h.append(env.clone(), None).await), &want);
                if want == Answer::Stored {
                    self.acked(&env);
                }
            }
            Op::Receipt(ref picks) => {
                let pool: Vec<EventId> = self
                    .live
                    .iter()
                    .map(|e| e.id)
                    .chain(self.ever.iter().copied())
                    .collect();
                let ids: Vec<EventId> = if pool.is_empty() {
                    vec![EventId::new_v7()]
                } else {
                    picks.iter().map(|i| pool[i % pool.len()]).collect()
                };
                let named: HashSet<EventId> = ids.iter().copied().collect();
                let before = self.live.len();
                self.live.retain(|e| !named.contains(&e.id));
                let removed = h.delete(ids).await.expect("delete");
                prop_assert_eq!(removed, (before - self.live.len()) as u64);
            }
            Op::Housekeep => h.housekeep().await.expect("housekeep"),
            // The caller owns the outbox and handles these.
            Op::Restart | Op::Crash => {}
        }
        Ok(())
    }

    /// Compares the outbox with the model after a request sent at `sent`
    /// and answered at `done`.
    async fn check(
        &mut self,
        h: &OutboxHandle,
        (sent, done): (Instant, Instant),
    ) -> Result<(), TestCaseError> {
        let stored = all_events(h).await;
        // Shedding is reported at the end of the group commit that sees it,
        // then at most every SHED_REPORT_EVERY; the writer's clock is only
        // known to lie within each request, so some timings allow both.
        let elapsed = |now: Instant, then: Instant| now >= then + SHED_REPORT_EVERY;
        let (must, may) = match self.last_report {
            _ if self.unreported == 0 => (false, false),
            None => (true, true),
            Some((lo, hi)) => (elapsed(sent, hi), elapsed(done, lo)),
        };
        // The notice obeys the cap: it is written only when it fits. Its
        // size is known but for the two timestamps' fractions (0–9 digits
        // and a dot each).
        let notice = super::writer::shed_notice(&store(), self.unreported)
            .to_json()
            .len() as u64;
        let must = must && !self.over(1.0, notice + 20);
        let may = may && !self.over(1.0, notice.saturating_sub(20));
        if stored.len() > self.live.len() {
            let e = stored.last().expect("one more");
            let v: serde_json::Value = serde_json::from_slice(&e.payload).expect("json");
            prop_assert!(may, "unexpected event {v}");
            prop_assert_eq!(&v["body"]["code"], "telemetry_shed");
            prop_assert_eq!(v["body"]["count"].as_u64(), Some(self.unreported));
            self.live.push(Acked {
                id: e.id,
                kind: EventKind::AgentNotice.schema_name(),
                device: "store-agent".into(),
                payload: e.payload.clone(),
            });
            self.unreported = 0;
            self.last_report = Some((sent, done));
        } else {
            prop_assert!(!must, "{} shed readings not reported", self.unreported);
        }
        let got: Vec<EventId> = stored.iter().map(|e| e.id).collect();
        let want: Vec<EventId> = self.live.iter().map(|e| e.id).collect();
        prop_assert_eq!(got, want);
        prop_assert!(stored.windows(2).all(|w| w[0].seq < w[1].seq));
        for (e, m) in stored.iter().zip(&self.live) {
            prop_assert!(e.payload == m.payload, "payload of {} changed", e.id);
            prop_assert_eq!(e.kind.as_str(), m.kind);
            prop_assert!(e.checksum_ok());
            if let Some(&seq) = self.seqs.get(&e.id) {
                prop_assert_eq!(e.seq, seq, "seq of {} changed", e.id);
            } else {
                // AUTOINCREMENT: above every seq ever handed out, even
                // after receipts emptied the table and the outbox restarted.
                prop_assert!(e.seq > self.max_seq, "{} reused seq {}", e.id, e.seq);
                self.seqs.insert(e.id, e.seq);
                self.max_seq = e.seq;
            }
        }
        // The forwarder's way of reading: a cursor, at least one event per page.
        let mut cursor = 0;
        let mut paged = vec![];
        while let Some(e) = h.read_after(cursor, 2, 1).await.expect("page").pop() {
            cursor = e.seq;
            paged.push(e.id);
        }
        prop_assert_eq!(paged, stored.iter().map(|e| e.id).collect::<Vec<_>>());
        let s = h.stats();
        prop_assert_eq!(s.rows(), self.rows());
        prop_assert_eq!(s.bytes(), self.bytes());
        let sales = self
            .live
            .iter()
            .filter(|e| e.kind == "storelink.sale")
            .count();
        prop_assert_eq!(s.pending_transactions(), sales as u64);
        prop_assert_eq!(s.compacted_total.load(Ordering::Relaxed), self.compacted);
        prop_assert_eq!(s.shed_total.load(Ordering::Relaxed), self.shed);
        Ok(())
    }
}

/// Reopens the outbox from what a process crash would leave on disk: the
/// database and WAL exactly as they are between two requests, without the
/// checkpoint a clean close does.
async fn crash_and_reopen(
    dir: &std::path::Path,
    outbox: Outbox,
    max_bytes: u64,
    max_rows: u64,
) -> Outbox {
    let h = outbox.handle();
    // Housekeeping runs after its group's replies; two more round trips
    // through the writer make sure it is not writing while we copy.
    for _ in 0..2 {
        assert_eq!(h.delete(vec![EventId::new_v7()]).await.expect("sync"), 0);
    }
    drop(h);
    let db = dir.join("outbox.db");
    let [wal, shm] = sidecars(&db);
    let image = std::fs::read(&db).expect("db");
    let wal_image = std::fs::read(&wal).ok();
    outbox.close().await;
    std::fs::write(&db, image).expect("restore db");
    match wal_image {
        Some(bytes) => std::fs::write(&wal, bytes).expect("restore wal"),
        None => drop(std::fs::remove_file(&wal)),
    }
    // A stale index would describe the WAL the clean close left; without
    // one SQLite rebuilds it from the WAL, as after a crash.
    let _ = std::fs::remove_file(&shm);
    open(dir, max_bytes, max_rows)
}

async fn run_model(max_rows: u64, max_bytes: u64, ops: Vec<Op>) -> Result<(), TestCaseError> {
    let dir = tempfile::tempdir().expect("tmp");
    let mut outbox = open(dir.path(), max_bytes, max_rows);
    let mut model = Model::new(max_rows, max_bytes);
    for op in &ops {
        let sent = Instant::now();
        match op {
            Op::Restart => {
                outbox.close().await;
                outbox = open(dir.path(), max_bytes, max_rows);
            }
            Op::Crash => outbox = crash_and_reopen(dir.path(), outbox, max_bytes, max_rows).await,
            _ => model.apply(&outbox.handle(), op).await?,
        }
        if matches!(op, Op::Restart | Op::Crash) {
            // A new process: fresh counters, no report yet, so readings shed
            // before the close or the crash and not yet reported must be
            // reported now (the count is durable, like the deletions).
            (model.compacted, model.shed, model.last_report) = (0, 0, None);
        }
        model
            .check(&outbox.handle(), (sent, Instant::now()))
            .await?;
        if matches!(op, Op::Restart) {
            // That report was the old process's last act at close (a crash
            // leaves it to the new one at open): the new writer's throttle
            // has not started.
            model.last_report = None;
        }
    }
    outbox.close().await;
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    #[test]
    fn random_appends_receipts_and_restarts_keep_exactly_the_acknowledged_events_in_order(
        ops in prop::collection::vec(op(), 1..60)
    ) {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
        rt.block_on(run_model(1_000_000, 1 << 30, ops))?;
    }

    #[test]
    fn a_small_outbox_refuses_sales_and_sheds_telemetry_exactly_as_its_policy_says(
        max_rows in 3u64..30,
        max_bytes in 1_500u64..15_000,
        ops in prop::collection::vec(op(), 1..60),
    ) {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
        rt.block_on(run_model(max_rows, max_bytes, ops))?;
    }
}

#[test]
fn shedding_takes_a_sixty_fourth_of_a_full_outbox_at_a_time_between_one_and_256() {
    assert_eq!(shed_chunk(0), 1);
    assert_eq!(
        shed_chunk(30),
        1,
        "a tiny outbox sheds one reading at a time"
    );
    assert_eq!(shed_chunk(800), 12);
    assert_eq!(shed_chunk(16_384), 256);
    assert_eq!(
        shed_chunk(4_000_000),
        256,
        "the default capacity: chunks of 256"
    );
}

#[tokio::test]
async fn a_full_outbox_sheds_only_a_chunk_of_its_oldest_readings_not_all_of_them() {
    let dir = tempfile::tempdir().expect("tmp");
    // Telemetry may use 800 rows; each reading below is from its own sensor,
    // so compaction frees nothing and only shedding makes room.
    let outbox = open(dir.path(), 1 << 30, 1000);
    let h = outbox.handle();
    for i in 0..800 {
        let outcome = h
            .append(reading(&format!("s-{i}"), i), None)
            .await
            .expect("reading");
        assert_eq!(outcome, AppendOutcome::Stored, "reading {i} fits");
    }
    assert_eq!(h.stats().rows(), 800);

    let outcome = h.append(reading("s-new", 1), None).await.expect("reading");
    assert_eq!(outcome, AppendOutcome::Stored);
    let chunk = shed_chunk(800);
    assert_eq!(chunk, 12);
    assert_eq!(h.stats().shed_total.load(Ordering::Relaxed), chunk);

    let sensors: Vec<String> = all_events(&h)
        .await
        .iter()
        .filter(|e| e.kind == EventKind::ShelfReading.schema_name())
        .map(|e| {
            let v: serde_json::Value = serde_json::from_slice(&e.payload).expect("json");
            v["source"]["device_id"]
                .as_str()
                .unwrap_or_default()
                .to_owned()
        })
        .collect();
    let mut want: Vec<String> = (chunk..800).map(|i| format!("s-{i}")).collect();
    want.push("s-new".into());
    assert_eq!(
        sensors, want,
        "exactly the {chunk} oldest readings were shed, in order"
    );
    outbox.close().await;
}

#[tokio::test]
async fn a_page_read_under_the_batch_budget_encodes_to_at_most_the_batch_limit() {
    let dir = tempfile::tempdir().expect("tmp");
    let outbox = open(dir.path(), 1 << 30, 1_000_000);
    let h = outbox.handle();
    // Readings of different sizes (sensor ids of 1 to 40 characters).
    for i in 0..400 {
        let sensor = format!("s{}", "x".repeat(i % 40));
        h.append(reading(&sensor, i as i64), None)
            .await
            .expect("append");
    }
    let all = all_events(&h).await;
    let store_id = store().store_id;
    for limit in [1_000, 4_096, 10_000, 65_536] {
        let mut cursor = 0;
        let mut pages = 0;
        loop {
            let budget = crate::forwarder::batch_budget(limit, &store_id);
            let page = h.read_after(cursor, 500, budget).await.expect("page");
            let Some(last) = page.last() else { break };
            let encoded = protocol::batch::encode_batch(
                uuid::Uuid::now_v7(),
                &store_id,
                page.iter().map(|e| e.payload.as_slice()),
            );
            assert!(
                encoded.len() <= limit,
                "a batch of {} events is {} bytes, over the limit of {limit}",
                page.len(),
                encoded.len()
            );
            // And the page is as full as the limit allows.
            if let Some(next) = all.iter().find(|e| e.seq > last.seq) {
                let with_next = protocol::batch::encoded_batch_len(
                    &store_id,
                    page.iter().chain([next]).map(|e| e.payload.len()),
                );
                assert!(with_next > limit, "the next event would still have fit");
            }
            cursor = last.seq;
            pages += 1;
        }
        assert!(pages > 1, "limit {limit}: every event fit in one batch");
    }
    outbox.close().await;
}

/// An event larger than the contract allows could never be sent; it is
/// refused when recorded, and the events around it are stored as usual.
#[tokio::test]
async fn an_event_larger_than_the_contract_allows_is_refused_and_nothing_else_is() {
    let dir = tempfile::tempdir().expect("tmp");
    let outbox = open(dir.path(), 1 << 30, 1_000_000);
    let h = outbox.handle();
    let (before, key) = sale(1);
    h.append(before, key).await.expect("append");

    let (mut large, key) = sale(2);
    if let EventBody::Sale(s) = &mut large.body {
        s.lines[0].description = Some("x".repeat(protocol::batch::MAX_EVENT_BYTES));
    }
    match h.append(large, key).await {
        Err(OutboxError::TooLarge { bytes, limit }) => {
            assert_eq!(limit, protocol::batch::MAX_EVENT_BYTES);
            assert!(bytes > limit, "{bytes}");
        }
        other => panic!("expected TooLarge, got {other:?}"),
    }

    // Just under the limit is stored, and so is what follows.
    let (mut near, key) = sale(3);
    if let EventBody::Sale(s) = &mut near.body {
        s.lines[0].description = Some("x".repeat(protocol::batch::MAX_EVENT_BYTES - 4096));
    }
    h.append(near, key).await.expect("an event under the limit");
    let (after, key) = sale(4);
    h.append(after, key).await.expect("append");

    let stored = all_events(&h).await;
    assert_eq!(stored.len(), 3);
    assert!(stored
        .iter()
        .all(|e| e.payload.len() <= protocol::batch::MAX_EVENT_BYTES));
    outbox.close().await;
}

/// A group of requests run straight through the writer, as one batch.
fn append_command(
    env: &Envelope,
    key: Option<String>,
) -> (
    Command,
    tokio::sync::oneshot::Receiver<Result<AppendOutcome, OutboxError>>,
) {
    let (reply, rx) = tokio::sync::oneshot::channel();
    let cmd = Command::Append {
        event: PreparedEvent::new(env),
        key,
        reply,
    };
    (cmd, rx)
}

#[test]
fn a_group_whose_transaction_sqlite_rolled_back_fails_as_a_whole_and_stores_nothing() {
    let dir = tempfile::tempdir().expect("tmp");
    let config = OutboxConfig::new(dir.path().join("outbox.db"), 1 << 30, 1_000_000);
    let conn = schema::open_writer(&config.path).expect("open");
    let stats = Arc::new(OutboxStats::default());
    let mut writer = writer::Writer::new(
        conn,
        config.clone(),
        store(),
        stats.clone(),
        Arc::new(tokio::sync::Notify::new()),
    )
    .expect("writer");
    let (a, a_key) = sale(1);
    let (b, b_key) = sale(2);

    // Sale A, then SQLite rolls the transaction back under the writer, then
    // sale B, then a shutdown: B must not run in autocommit mode (stored
    // while its terminal is told it failed), and the shutdown must be kept.
    let (cmd_a, mut reply_a) = append_command(&a, a_key.clone());
    let (rollback, mut reply_rollback) = tokio::sync::oneshot::channel();
    let (cmd_b, mut reply_b) = append_command(&b, b_key.clone());
    let (shutdown, _) = tokio::sync::oneshot::channel();
    let mut group = vec![
        cmd_a,
        Command::RollbackForTest { reply: rollback },
        cmd_b,
        Command::Shutdown { reply: shutdown },
    ];
    let kept = writer.process(&mut group);
    assert!(kept.is_some(), "the shutdown request was dropped");
    assert!(
        reply_a.try_recv().expect("A answered").is_err(),
        "A was rolled back with the group but told it was stored"
    );
    assert!(reply_rollback.try_recv().expect("answered").is_err());
    assert!(
        matches!(
            reply_b.try_recv().expect("B answered"),
            Err(OutboxError::TransactionLost)
        ),
        "B must fail with the group, not run on its own"
    );
    let stored = |writer_db: &std::path::Path| -> i64 {
        rusqlite::Connection::open(writer_db)
            .expect("open")
            .query_row("SELECT count(*) FROM events", [], |r| r.get(0))
            .expect("count")
    };
    assert_eq!(
        stored(&config.path),
        0,
        "something of the failed group was stored"
    );
    assert_eq!(stats.rows(), 0);
    assert_eq!(stats.pending_transactions(), 0);

    // The terminals retry: each sale is stored once, not answered as a
    // duplicate of something that was never stored.
    let (cmd_a, mut reply_a) = append_command(&a, a_key);
    let (cmd_b, mut reply_b) = append_command(&b, b_key);
    let mut retry = vec![cmd_a, cmd_b];
    assert!(writer.process(&mut retry).is_none());
    assert!(matches!(
        reply_a.try_recv().expect("A"),
        Ok(AppendOutcome::Stored)
    ));
    assert!(matches!(
        reply_b.try_recv().expect("B"),
        Ok(AppendOutcome::Stored)
    ));
    assert_eq!(stored(&config.path), 2);
    assert_eq!(stats.rows(), 2);
    assert_eq!(stats.pending_transactions(), 2);
}

#[tokio::test]
async fn an_event_whose_stored_id_was_damaged_gets_it_back_from_its_payload() {
    let dir = tempfile::tempdir().expect("tmp");
    let outbox = open(dir.path(), 1 << 30, 1000);
    let h = outbox.handle();
    let ids = append_sales(&h, 1..=2).await;
    {
        // One flipped bit in the first row's id column; its payload and the
        // payload's checksum are intact.
        let mut flipped = *ids[0].0.as_bytes();
        flipped[15] ^= 1;
        let conn = rusqlite::Connection::open(dir.path().join("outbox.db")).expect("open");
        conn.execute(
            "UPDATE events SET id = ?1 WHERE id = ?2",
            rusqlite::params![flipped.as_slice(), ids[0].0.as_bytes().as_slice()],
        )
        .expect("damage");
    }
    let events = all_events(&h).await;
    assert!(events[0].checksum_ok(), "the payload itself is intact");
    assert!(!events[0].id_matches_payload());
    assert_eq!(
        events[0].damage(),
        Some(Damage::Id {
            payload_id: Some(ids[0])
        })
    );
    assert_eq!(events[1].damage(), None);
    // Why it cannot simply be sent: the bridge's receipt names the payload's
    // id, which no longer matches any row; the sale would be resent for ever.
    assert_eq!(h.delete(vec![ids[0]]).await.expect("delete"), 0);

    assert!(h.repair_id(events[0].seq, ids[0]).await.expect("repair"));
    let events = all_events(&h).await;
    assert_eq!(events.len(), 2);
    assert_eq!(events[0].id, ids[0]);
    assert!(events.iter().all(|e| e.damage().is_none()));
    assert_eq!(
        h.delete(vec![ids[0]]).await.expect("delete"),
        1,
        "its receipt deletes it"
    );
    assert_eq!(h.stats().pending_transactions(), 1);
    assert_eq!(h.stats().quarantined_total.load(Ordering::Relaxed), 0);
    assert_eq!(h.stats().ids_repaired_total.load(Ordering::Relaxed), 1);
}

#[test]
fn a_payload_whose_id_cannot_be_read_is_not_repaired() {
    let (env, _) = sale(1);
    let prepared = PreparedEvent::new(&env);
    let stored = |payload: Vec<u8>| StoredEvent {
        seq: 1,
        id: EventId::new_v7(),
        kind: "storelink.sale".into(),
        crc32: crc32fast::hash(&payload),
        payload,
    };
    assert_eq!(
        stored(prepared.payload.clone()).damage(),
        Some(Damage::Id {
            payload_id: Some(env.id)
        })
    );
    let reordered = String::from_utf8(prepared.payload)
        .expect("utf-8")
        .replacen("{\"id\":", "{\"x\":1,\"id\":", 1);
    assert_eq!(
        stored(reordered.into_bytes()).damage(),
        Some(Damage::Id { payload_id: None }),
        "only the agent's own layout is trusted for a repair; anything else is quarantined"
    );
}

#[tokio::test]
async fn columns_damaged_past_sqlites_check_are_quarantined_or_skipped_never_a_stall_or_a_failed_start(
) {
    let dir = tempfile::tempdir().expect("tmp");
    let db = dir.path().join("outbox.db");
    {
        let outbox = open(dir.path(), 1 << 30, 1000);
        let h = outbox.handle();
        for seq in 1..=3 {
            let (env, key) = sale(seq);
            h.append(env, key).await.expect("append");
        }
        outbox.close().await;
    }
    {
        // What one flipped bit can do that `quick_check` lets pass: a BLOB
        // read back as TEXT (here also not UTF-8), a TEXT column holding
        // invalid UTF-8, an idempotency key no longer a string.
        let conn = rusqlite::Connection::open(&db).expect("open");
        conn.execute_batch(
            "UPDATE events SET payload = CAST(x'ff' || payload AS TEXT) WHERE seq = 1;
             UPDATE events SET kind = CAST(x'73ff' AS TEXT) WHERE seq = 2;
             UPDATE idempotency_keys SET key = x'ff' WHERE rowid = (SELECT min(rowid) FROM idempotency_keys);",
        )
        .expect("damage");
    }
    // The agent starts: a damaged key is skipped, not a reason to exit.
    let outbox = open(dir.path(), 1 << 30, 1000);
    let h = outbox.handle();
    // Every row reads: the damaged payload fails its checksum and is
    // quarantined; the damaged kind does not stop its intact event.
    let events = all_events(&h).await;
    assert_eq!(events.len(), 3);
    assert!(!events[0].checksum_ok());
    assert!(events[1].checksum_ok() && events[2].checksum_ok());
    h.quarantine(events[0].seq, "crc32 mismatch before send".into())
        .await
        .expect("quarantine");
    let after: Vec<i64> = all_events(&h).await.iter().map(|e| e.seq).collect();
    assert_eq!(&after[..2], &[events[1].seq, events[2].seq]);
    // The sales whose keys survived are still answered as duplicates.
    let (env, key) = sale(3);
    assert!(matches!(
        h.append(env, key).await.expect("append"),
        AppendOutcome::Duplicate(_)
    ));
}

/// Flips the first occurrence of `find` (changing its last byte) inside a
/// table leaf page of the closed database at `path`, not in an index page:
/// the table row then disagrees with its index entries, which `quick_check`
/// at open does not compare.
fn flip_in_table_row(path: &std::path::Path, find: &[u8]) {
    let mut file = std::fs::read(path).expect("read db");
    let page_size = match u16::from_be_bytes([file[16], file[17]]) {
        1 => 65_536,
        n => usize::from(n),
    };
    let at = (0..file.len() / page_size)
        .filter(|&p| file[p * page_size + if p == 0 { 100 } else { 0 }] == 0x0D)
        .find_map(|p| {
            let page = &file[p * page_size..(p + 1) * page_size];
            memchr::memmem::find(page, find).map(|i| p * page_size + i)
        })
        .expect("the bytes are in a table leaf page");
    file[at + find.len() - 1] ^= 0x01;
    std::fs::write(path, file).expect("write db");
}

/// Two sales and a shelf reading, then (closed) one flipped bit in sale 1's
/// id column and one in the reading's device_id column, which the telemetry
/// index holds: both only in the table row. Returns the reopened outbox
/// and the three ids.
async fn outbox_with_rows_out_of_step_with_their_indexes(
    dir: &std::path::Path,
) -> (Outbox, Vec<EventId>) {
    let outbox = open(dir, 1 << 30, 1000);
    let h = outbox.handle();
    let mut ids = append_sales(&h, 1..=2).await;
    let r = reading("shelf-a1", 1500);
    ids.push(r.id);
    h.append(r, None).await.expect("append");
    outbox.close().await;
    let path = dir.join("outbox.db");
    flip_in_table_row(&path, ids[0].0.as_bytes());
    flip_in_table_row(&path, b"shelf-a1");
    {
        let conn = rusqlite::Connection::open(&path).expect("open");
        let quick: String = conn
            .pragma_query_value(None, "quick_check", |r| r.get(0))
            .expect("quick_check");
        assert_eq!(quick, "ok", "damage that quick_check lets pass");
    }
    let outbox = open(dir, 1 << 30, 1000);
    let events = all_events(&outbox.handle()).await;
    assert_eq!(events.len(), 3, "the damaged file was kept, not set aside");
    assert_eq!(
        events[0].damage(),
        Some(Damage::Id {
            payload_id: Some(ids[0])
        })
    );
    (outbox, ids)
}

#[tokio::test]
async fn a_row_whose_indexed_column_flipped_on_disk_is_still_repaired_receipted_and_deleted() {
    let dir = tempfile::tempdir().expect("tmp");
    let (outbox, ids) = outbox_with_rows_out_of_step_with_their_indexes(dir.path()).await;
    let h = outbox.handle();
    let seq = all_events(&h).await[0].seq;
    // The repair meets the id index first (and its retry rebuilds both).
    assert!(
        h.repair_id(seq, ids[0]).await.expect("repair"),
        "the row gets its id back"
    );
    assert_eq!(
        h.delete(ids.clone()).await.expect("the receipt's delete"),
        3,
        "every receipted row is deleted, the damaged ones included"
    );
    assert_eq!(h.stats().rows(), 0);
    assert_eq!(h.stats().pending_transactions(), 0);
    outbox.close().await;
}

#[tokio::test]
async fn a_receipt_meeting_an_index_out_of_step_first_still_deletes_its_rows() {
    let dir = tempfile::tempdir().expect("tmp");
    let (outbox, ids) = outbox_with_rows_out_of_step_with_their_indexes(dir.path()).await;
    let h = outbox.handle();
    // The reading's receipt first: its delete meets the telemetry index.
    assert_eq!(
        h.delete(vec![ids[2], ids[1]])
            .await
            .expect("the receipt's delete"),
        2
    );
    let seq = all_events(&h).await[0].seq;
    assert!(h.repair_id(seq, ids[0]).await.expect("repair"));
    assert_eq!(h.delete(vec![ids[0]]).await.expect("delete"), 1);
    assert_eq!(h.stats().rows(), 0);
    outbox.close().await;
}

#[tokio::test]
async fn a_damaged_count_of_unreported_shed_readings_does_not_stop_the_start() {
    let dir = tempfile::tempdir().expect("tmp");
    open(dir.path(), 1 << 30, 1000).close().await;
    {
        // What a flipped type bit does to the integer: an empty BLOB.
        let conn = rusqlite::Connection::open(dir.path().join("outbox.db")).expect("open");
        conn.execute("UPDATE shed_unreported SET count = x''", [])
            .expect("damage");
    }
    let outbox = open(dir.path(), 1 << 30, 1000);
    let h = outbox.handle();
    let (env, key) = sale(1);
    h.append(env, key)
        .await
        .expect("the agent takes sales again");
    outbox.close().await;
    let conn = rusqlite::Connection::open(dir.path().join("outbox.db")).expect("open");
    let count: i64 = conn
        .query_row("SELECT count FROM shed_unreported", [], |r| r.get(0))
        .expect("an integer again");
    assert_eq!(count, 0);
}

/// The sales among `events`, as the ids they carry, in outbox order.
fn sale_ids(events: &[StoredEvent]) -> Vec<EventId> {
    events
        .iter()
        .filter(|e| e.kind == EventKind::Sale.schema_name())
        .map(|e| e.id)
        .collect()
}

/// The leaf pages of the `events` table in key order, as SQLite's own
/// `dbstat` table lists them, each with the seqs of its rows (0-based page
/// numbers; `stored` is every row, in seq order).
fn events_leaves(path: &std::path::Path, stored: &[StoredEvent]) -> Vec<(usize, Vec<i64>)> {
    let conn = rusqlite::Connection::open(path).expect("open");
    let mut stmt = conn
        .prepare("SELECT pageno, ncell FROM dbstat WHERE name = 'events' AND pagetype = 'leaf' ORDER BY path")
        .expect("dbstat");
    let leaves: Vec<(usize, usize)> = stmt
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
        .expect("query")
        .collect::<Result<_, _>>()
        .expect("rows");
    let mut seqs = stored.iter().map(|e| e.seq);
    leaves
        .into_iter()
        .map(|(pageno, cells)| (pageno - 1, seqs.by_ref().take(cells).collect()))
        .collect()
}

#[tokio::test]
async fn a_damaged_outbox_gives_back_every_event_it_can_still_read() {
    let dir = tempfile::tempdir().expect("tmp");
    let path = dir.path().join("outbox.db");
    let (ids, stored) = {
        let outbox = open(dir.path(), 1 << 30, 1_000_000);
        let h = outbox.handle();
        let ids = append_sales(&h, 1..=600).await;
        let stored = all_events(&h).await;
        drop(h);
        outbox.close().await;
        (ids, stored)
    };
    // Leaf pages of the events table turn to garbage (torn writes): the
    // first one, where every read starts; then six in a row in the middle
    // (more rowids than the search's first doubling steps), one good page,
    // and one more torn. One payload elsewhere loses a bit (a row SQLite's
    // own check cannot see).
    let all_leaves = events_leaves(&path, &stored);
    let mut file = std::fs::read(&path).expect("read db");
    let leaf_of = |seq: i64| {
        all_leaves
            .iter()
            .position(|(_, seqs)| seqs.contains(&seq))
            .expect("a leaf holds it")
    };
    let first_torn_run = leaf_of(stored[300].seq);
    let mut leaves: Vec<(usize, Vec<i64>)> = std::iter::once(0)
        .chain(first_torn_run..first_torn_run + 8)
        .map(|i| all_leaves[i].clone())
        .collect();
    let island = leaves.remove(7);
    let torn_seqs: Vec<i64> = leaves.iter().flat_map(|(_, seqs)| seqs.clone()).collect();
    let on_torn: HashSet<EventId> = stored
        .iter()
        .filter(|e| torn_seqs.contains(&e.seq))
        .map(|e| e.id)
        .collect();
    let middle: usize = leaves[1..7].iter().map(|(_, seqs)| seqs.len()).sum();
    assert!(
        on_torn.len() == torn_seqs.len() && middle > 16 && !island.1.is_empty(),
        "{torn_seqs:?}, island {:?}",
        island.1
    );
    for (page, _) in &leaves {
        file[page * 4096..(page + 1) * 4096].fill(0xA5);
    }
    let flipped = ids[500];
    let needle = format!("\"id\":\"{}\"", flipped.0.hyphenated());
    let at = memchr::memmem::find(&file, needle.as_bytes()).expect("payload");
    file[at + needle.len() + 40] ^= 0x01;
    std::fs::write(&path, &file).expect("write db");

    let outbox = open(dir.path(), 1 << 30, 1_000_000);
    let (aside, _why) = outbox.report.set_aside.clone().expect("damage found");
    let kept = std::fs::read(&aside).expect("set-aside file");
    let differ: Vec<usize> = (0..kept.len().max(file.len()))
        .filter(|&i| kept.get(i) != file.get(i))
        .collect();
    assert!(
        differ.is_empty(),
        "salvage reads the damaged file without changing a byte: {} of {} bytes differ, first {:?}, lengths {} / {}",
        differ.len(), file.len(), &differ[..differ.len().min(10)], kept.len(), file.len()
    );
    let expected: Vec<EventId> = ids
        .iter()
        .copied()
        .filter(|id| !on_torn.contains(id) && *id != flipped)
        .collect();
    let salvage = &outbox.report.salvaged[0].1;
    assert_eq!(
        (
            salvage.recovered,
            salvage.quarantined,
            salvage.unreadable_regions
        ),
        (expected.len() as u64, 1, 3),
        "the first leaf, the six in a row and the last one are three regions: {salvage:?}"
    );
    let h = outbox.handle();
    let events = all_events(&h).await;
    assert_eq!(
        sale_ids(&events),
        expected,
        "every readable intact sale is back, in its order, and only those"
    );
    assert!(events.iter().all(|e| e.damage().is_none()));
    let notice = events
        .iter()
        .map(|e| String::from_utf8_lossy(&e.payload).into_owned())
        .find(|p| p.contains("outbox_recovered"))
        .expect("recovery notice");
    assert!(
        notice.contains(&format!(
            "{} events recovered from it and queued for delivery",
            expected.len()
        )) && notice.contains("1 event failed the checksum")
            && notice.contains("3 unreadable regions skipped"),
        "{notice}"
    );
    assert_eq!(h.stats().quarantined_total.load(Ordering::Relaxed), 1);
    assert_eq!(
        h.stats().salvaged_total.load(Ordering::Relaxed),
        expected.len() as u64
    );
    assert_eq!(h.stats().pending_transactions(), expected.len() as u64);

    // A terminal retrying a recovered sale gets its original id; one
    // retrying a sale lost with its page stores it again, not a key
    // pointing at nothing.
    let (env, key) = sale(11);
    assert_eq!(
        h.append(env, key).await.expect("append"),
        AppendOutcome::Duplicate(ids[10])
    );
    let lost = ids
        .iter()
        .position(|id| on_torn.contains(id))
        .expect("lost") as u64
        + 1;
    for n in [lost, 501] {
        let (env, key) = sale(n);
        assert_eq!(
            h.append(env, key).await.expect("append"),
            AppendOutcome::Stored,
            "sale {n}"
        );
    }
    drop(h);
    outbox.close().await;

    let outbox = open(dir.path(), 1 << 30, 1_000_000);
    assert!(
        outbox.report.salvaged.is_empty(),
        "salvaged and reported once"
    );
    assert_eq!(
        sale_ids(&all_events(&outbox.handle()).await).len(),
        expected.len() + 2
    );
}

#[tokio::test]
async fn a_salvage_reads_the_events_a_power_cut_left_only_in_the_wal() {
    let live = tempfile::tempdir().expect("tmp");
    let outbox = open(live.path(), 1 << 30, 1_000_000);
    let h = outbox.handle();
    let ids = append_sales(&h, 1..=150).await;
    // The files as a power cut leaves them: the outbox still open, its
    // last commits in the WAL only.
    let dir = tempfile::tempdir().expect("tmp");
    let stamp = "outbox.db.damaged-20261207T101500.000Z";
    for suffix in ["", "-wal", "-shm"] {
        std::fs::copy(
            live.path().join(format!("outbox.db{suffix}")),
            dir.path().join(format!("{stamp}{suffix}")),
        )
        .expect("copy");
    }
    assert!(
        std::fs::metadata(dir.path().join(format!("{stamp}-wal")))
            .expect("wal")
            .len()
            > 0
    );
    drop(h);
    outbox.close().await;
    let before: Vec<Vec<u8>> = ["", "-wal"]
        .iter()
        .map(|s| std::fs::read(dir.path().join(format!("{stamp}{s}"))).expect("read"))
        .collect();

    let outbox = open(dir.path(), 1 << 30, 1_000_000);
    assert_eq!(sale_ids(&all_events(&outbox.handle()).await), ids);
    assert_eq!(outbox.report.salvaged[0].1.recovered, 150);
    let after: Vec<Vec<u8>> = ["", "-wal"]
        .iter()
        .map(|s| std::fs::read(dir.path().join(format!("{stamp}{s}"))).expect("read"))
        .collect();
    assert!(
        before == after,
        "the set-aside database and WAL are kept as found"
    );
}

#[tokio::test]
async fn a_salvage_without_room_on_the_disk_is_left_for_the_next_start_and_the_store_keeps_selling()
{
    let live = tempfile::tempdir().expect("tmp");
    let outbox = open(live.path(), 1 << 30, 1_000_000);
    let ids = append_sales(&outbox.handle(), 1..=20).await;
    outbox.close().await;
    let dir = tempfile::tempdir().expect("tmp");
    let stamp = "outbox.db.damaged-20261207T101500.000Z";
    std::fs::copy(live.path().join("outbox.db"), dir.path().join(stamp)).expect("copy");

    // A disk with less room than the copy needs: the salvage must not start.
    super::salvage::tests::FREE_BYTES.with(|f| f.set(Some(1 << 20)));
    let outbox = open(dir.path(), 1 << 30, 1_000_000);
    super::salvage::tests::FREE_BYTES.with(|f| f.set(None));
    let salvage = &outbox.report.salvaged[0].1;
    assert!(
        salvage.recovered == 0
            && salvage
                .interrupted
                .as_deref()
                .is_some_and(|w| w.contains("free disk space")),
        "{salvage:?}"
    );
    let h = outbox.handle();
    let notices = recovery_notices(&h).await;
    assert!(
        notices.len() == 1 && notices[0].contains("resumes at the next start"),
        "{notices:?}"
    );
    let (env, key) = sale(1_000);
    assert_eq!(
        h.append(env, key).await.expect("sells"),
        AppendOutcome::Stored
    );
    drop(h);
    outbox.close().await;

    // Room again: the next start copies the events and reports again.
    let outbox = open(dir.path(), 1 << 30, 1_000_000);
    assert_eq!(outbox.report.salvaged[0].1.recovered, 20);
    let events = all_events(&outbox.handle()).await;
    assert_eq!(sale_ids(&events)[1..], ids[..]);
    assert_eq!(recovery_notices(&outbox.handle()).await.len(), 2);
    outbox.close().await;
    let outbox = open(dir.path(), 1 << 30, 1_000_000);
    assert!(outbox.report.salvaged.is_empty(), "then marked reported");
}

#[tokio::test]
async fn a_salvage_cut_short_resumes_where_it_stopped_and_never_brings_back_what_was_delivered() {
    let live = tempfile::tempdir().expect("tmp");
    let outbox = open(live.path(), 1 << 30, 1_000_000);
    let ids = append_sales(&outbox.handle(), 1..=2_500).await;
    outbox.close().await;
    let dir = tempfile::tempdir().expect("tmp");
    std::fs::copy(
        live.path().join("outbox.db"),
        dir.path().join("outbox.db.damaged-20261207T101500.000Z"),
    )
    .expect("copy");

    // The copy fails after its first transaction (a full disk, say).
    super::salvage::tests::FAIL_COPIES_AFTER.with(|f| f.set(Some(1_000)));
    let outbox = open(dir.path(), 1 << 30, 1_000_000);
    super::salvage::tests::FAIL_COPIES_AFTER.with(|f| f.set(None));
    let salvage = outbox.report.salvaged[0].1.clone();
    assert!(
        salvage.recovered == 1_000 && salvage.interrupted.is_some(),
        "{salvage:?}"
    );
    // The store runs on and delivers what came back.
    let h = outbox.handle();
    let back = sale_ids(&all_events(&h).await);
    assert_eq!(back, ids[..1_000]);
    assert_eq!(h.delete(back).await.expect("receipt"), 1_000);
    drop(h);
    outbox.close().await;

    let outbox = open(dir.path(), 1 << 30, 1_000_000);
    assert_eq!(outbox.report.salvaged[0].1.recovered, 1_500);
    assert_eq!(
        sale_ids(&all_events(&outbox.handle()).await),
        ids[1_000..],
        "the rest, in order, and none of the delivered ones again"
    );
    outbox.close().await;
    let outbox = open(dir.path(), 1 << 30, 1_000_000);
    assert!(
        outbox.report.salvaged.is_empty(),
        "complete, so reported for good"
    );
}

/// A set-aside copy of an outbox of `n` sales: its directory, the sales'
/// ids, and the events table's leaves (see [`events_leaves`]) with every
/// stored event.
async fn set_aside_copy_of(
    n: u64,
) -> (
    tempfile::TempDir,
    Vec<EventId>,
    Vec<(usize, Vec<i64>)>,
    Vec<StoredEvent>,
) {
    let live = tempfile::tempdir().expect("tmp");
    let outbox = open(live.path(), 1 << 30, 1_000_000);
    let h = outbox.handle();
    let ids = append_sales(&h, 1..=n).await;
    let stored = all_events(&h).await;
    drop(h);
    outbox.close().await;
    let leaves = events_leaves(&live.path().join("outbox.db"), &stored);
    let dir = tempfile::tempdir().expect("tmp");
    std::fs::copy(
        live.path().join("outbox.db"),
        dir.path().join("outbox.db.damaged-20261207T101500.000Z"),
    )
    .expect("copy");
    (dir, ids, leaves, stored)
}

/// A card whose read fails once and then works: the salvage reads the
/// page again instead of writing its rows off.
#[tokio::test]
async fn a_salvage_reads_again_a_page_whose_read_failed_once_and_loses_nothing() {
    let (dir, ids, leaves, stored) = set_aside_copy_of(2_500).await;
    let (page, _) = leaves
        .iter()
        .find(|(_, seqs)| seqs.contains(&stored[1_200].seq))
        .expect("a leaf holds it");
    let faults = faulty_vfs::arm(faulty_vfs::ReadFaults {
        path_contains: "damaged-".into(),
        page_size: 4096,
        pages: HashMap::from([(*page as u64, 1)]),
        burst: None,
    });
    let outbox = open(dir.path(), 1 << 30, 1_000_000);
    let failed = faults.counts();
    drop(faults);
    let salvage = outbox.report.salvaged[0].1.clone();
    assert_eq!(failed.listed, 1, "the page's read failed once");
    assert!(
        salvage.recovered == 2_500 && salvage.keys == 2_500 && salvage.unreadable_regions == 0,
        "{salvage:?}"
    );
    assert_eq!(sale_ids(&all_events(&outbox.handle()).await), ids);
    outbox.close().await;
}

/// A sector that never reads costs the rows on its page, and no more: not
/// when the card reader also resets while the salvage searches for where
/// reading works again (every read fails for a while), which would make a
/// single search jump past the rest of the file.
#[tokio::test]
async fn a_page_that_never_reads_costs_only_its_rows_even_if_the_reader_resets_meanwhile() {
    let (dir, ids, leaves, stored) = set_aside_copy_of(2_500).await;
    let (page, on_page) = leaves
        .iter()
        .find(|(_, seqs)| seqs.contains(&stored[1_200].seq))
        .expect("a leaf holds it")
        .clone();
    let lost: HashSet<EventId> = stored
        .iter()
        .filter(|e| on_page.contains(&e.seq))
        .map(|e| e.id)
        .collect();
    assert!(!lost.is_empty());
    let faults = faulty_vfs::arm(faulty_vfs::ReadFaults {
        path_contains: "damaged-".into(),
        page_size: 4096,
        pages: HashMap::from([(page as u64, faulty_vfs::ALWAYS)]),
        // The first read and the read again fail; then the reader resets.
        burst: Some(faulty_vfs::Burst {
            after_failures: 2,
            lasting: std::time::Duration::from_millis(600),
        }),
    });
    let outbox = open(dir.path(), 1 << 30, 1_000_000);
    let failed = faults.counts();
    drop(faults);
    let expected: Vec<EventId> = ids
        .iter()
        .copied()
        .filter(|id| !lost.contains(id))
        .collect();
    let salvage = outbox.report.salvaged[0].1.clone();
    assert!(
        failed.listed >= 2 && failed.in_burst > 0,
        "the page failed and the reader reset: {failed:?}"
    );
    assert!(
        salvage.recovered == expected.len() as u64
            && salvage.keys == expected.len() as u64
            && salvage.unreadable_regions == 1,
        "{} rows on the bad page, {salvage:?}, {failed:?}",
        lost.len()
    );
    assert_eq!(sale_ids(&all_events(&outbox.handle()).await), expected);
    outbox.close().await;
}
