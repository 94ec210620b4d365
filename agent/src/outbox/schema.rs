//! Connection settings, migrations and the read path.

use std::path::Path;

use rusqlite::{params, Connection, OpenFlags};

use super::{OutboxError, StoredEvent};
use protocol::EventId;

/// Migrations in order; `PRAGMA user_version` is the index of the last one applied.
pub(crate) const MIGRATIONS: &[&str] = &[
    // 1: initial schema.
    "CREATE TABLE events (
        seq INTEGER PRIMARY KEY AUTOINCREMENT,
        id BLOB NOT NULL UNIQUE,
        kind TEXT NOT NULL,
        priority INTEGER NOT NULL,
        device_id TEXT NOT NULL,
        payload BLOB NOT NULL,
        crc32 INTEGER NOT NULL,
        created_ms INTEGER NOT NULL
    );
    CREATE INDEX events_telemetry ON events(device_id, seq) WHERE priority = 2;
    CREATE TABLE transaction_keys (
        key TEXT PRIMARY KEY,
        event_id BLOB NOT NULL,
        body_crc INTEGER NOT NULL,
        created_ms INTEGER NOT NULL
    ) WITHOUT ROWID;
    CREATE INDEX transaction_keys_age ON transaction_keys(created_ms);
    CREATE TABLE quarantine (
        seq INTEGER,
        id BLOB,
        payload BLOB,
        reason TEXT NOT NULL,
        at_ms INTEGER NOT NULL
    );",
    // 2: idempotency keys append-only in time order (see keys.rs): the
    // key-ordered B-tree of v1 dirtied a page per terminal per commit.
    "CREATE TABLE idempotency_keys (
        key TEXT NOT NULL,
        event_id BLOB NOT NULL,
        body_crc INTEGER NOT NULL,
        created_ms INTEGER NOT NULL
    );
    INSERT INTO idempotency_keys (key, event_id, body_crc, created_ms)
        SELECT key, event_id, body_crc, created_ms FROM transaction_keys ORDER BY created_ms;
    DROP TABLE transaction_keys;",
    // 3: the count of readings shed but not yet reported, kept with the
    // deletions it counts, so a crash cannot turn a shed into a silent drop.
    "CREATE TABLE shed_unreported (
        only INTEGER PRIMARY KEY CHECK (only = 1),
        count INTEGER NOT NULL
    );
    INSERT INTO shed_unreported (only, count) VALUES (1, 0);",
    // 4: how far the salvage of each damaged outbox set aside got (see
    // salvage.rs), committed with the rows it copied, so a salvage cut
    // short resumes where it stopped instead of copying again what was
    // delivered since.
    "CREATE TABLE salvage_progress (
        source TEXT PRIMARY KEY,
        next_seq INTEGER NOT NULL
    );",
];

/// Opens the write connection with the durability settings the invariants need.
pub(crate) fn open_writer(path: &Path) -> Result<Connection, rusqlite::Error> {
    let conn = Connection::open(path)?;
    // auto_vacuum must be chosen before the first table exists; INCREMENTAL
    // lets housekeeping return space in small steps instead of one long VACUUM.
    conn.pragma_update(None, "auto_vacuum", "INCREMENTAL")?;
    conn.pragma_update(None, "journal_mode", "WAL")?;
    // FULL: the WAL is fsynced at every commit, so a committed append
    // survives power loss, not just a process crash.
    conn.pragma_update(None, "synchronous", "FULL")?;
    conn.pragma_update(None, "busy_timeout", 5000)?;
    conn.pragma_update(None, "cache_size", -8000)?;
    // A bounded WAL: checkpoint every ~4 MiB (SQLite's default; smaller
    // cost ~15 % ingest in the benchmark) and truncate it back to 4 MiB, so a
    // full disk is mostly database pages, which deletes free and new events
    // reuse, and the reserve file (writer.rs) covers what the WAL needs to
    // let receipts delete.
    conn.pragma_update(None, "wal_autocheckpoint", 1000)?;
    conn.pragma_update(None, "journal_size_limit", 4 * 1024 * 1024)?;
    migrate(&conn)?;
    Ok(conn)
}

fn migrate(conn: &Connection) -> Result<(), rusqlite::Error> {
    let current: usize = conn.pragma_query_value(None, "user_version", |r| r.get(0))?;
    for (i, sql) in MIGRATIONS.iter().enumerate().skip(current) {
        let tx = conn.unchecked_transaction()?;
        tx.execute_batch(sql)?;
        tx.pragma_update(None, "user_version", i + 1)?;
        tx.commit()?;
        tracing::info!(version = i + 1, "outbox schema migrated");
    }
    Ok(())
}

/// SQLite's `quick_check`: `None` if the database is sound, else the first
/// problem it names.
pub(crate) fn quick_check(conn: &Connection) -> Result<Option<String>, rusqlite::Error> {
    let result: String = conn.pragma_query_value(None, "quick_check", |r| r.get(0))?;
    Ok((result != "ok").then_some(result))
}

/// Runs `f` on a read-only connection to `path`, which nothing can write
/// through. Such a connection to a WAL database creates the `-wal` and
/// `-shm` files if they are missing and, unlike the last writer, leaves
/// them at close: those it created (with nothing in them) are removed, so
/// the files beside `path` are left as they were found.
pub(crate) fn with_read_only<T>(
    path: &Path,
    f: impl FnOnce(&Connection) -> T,
) -> Result<T, rusqlite::Error> {
    let [wal, shm] = super::sidecars(path);
    let existed = [wal.exists(), shm.exists()];
    let result = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .map(|conn| f(&conn));
    if !existed[0] && std::fs::metadata(&wal).is_ok_and(|m| m.len() == 0) {
        let _ = std::fs::remove_file(&wal);
    }
    if !existed[1] {
        let _ = std::fs::remove_file(&shm);
    }
    result
}

pub(crate) fn open_reader(path: &Path) -> Result<Connection, OutboxError> {
    let conn = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )?;
    conn.pragma_update(None, "busy_timeout", 5000)?;
    Ok(conn)
}

pub(crate) fn read_after(
    conn: &Connection,
    after_seq: i64,
    max_events: usize,
    max_bytes: usize,
) -> Result<Vec<StoredEvent>, OutboxError> {
    let mut stmt = conn.prepare_cached(
        "SELECT seq, id, kind, payload, crc32 FROM events WHERE seq > ?1 ORDER BY seq LIMIT ?2",
    )?;
    let mut rows = stmt.query(params![after_seq, max_events as i64])?;
    let mut out = Vec::new();
    let mut bytes = 0usize;
    while let Some(row) = rows.next()? {
        // Columns are read as whatever bytes they hold: a value damaged on
        // disk in a way SQLite's check lets pass (a BLOB whose type bit
        // flipped to TEXT, invalid UTF-8) must reach the checksum and be
        // quarantined, not fail every read at this row and stall forwarding.
        let payload = any_bytes(row, 3).to_vec();
        // The separator joining this event to the previous one in a batch.
        let separator = if out.is_empty() {
            0
        } else {
            protocol::batch::EVENT_SEPARATOR_BYTES
        };
        if !out.is_empty() && bytes + separator + payload.len() > max_bytes {
            break;
        }
        bytes += separator + payload.len();
        let crc32 = match row.get_ref(4)?.as_i64() {
            Ok(c) => c as u32,
            // Not an integer any more: a checksum no payload matches.
            Err(_) => !crc32fast::hash(&payload),
        };
        let id = uuid::Uuid::from_slice(any_bytes(row, 1))
            .map(EventId)
            .unwrap_or(EventId(uuid::Uuid::nil()));
        out.push(StoredEvent {
            seq: row.get(0)?,
            id,
            kind: String::from_utf8_lossy(any_bytes(row, 2)).into_owned(),
            payload,
            crc32,
        });
    }
    Ok(out)
}

/// A column's bytes whether stored as BLOB or TEXT; empty for any other type.
fn any_bytes<'r>(row: &'r rusqlite::Row<'_>, i: usize) -> &'r [u8] {
    row.get_ref(i)
        .ok()
        .and_then(|v| v.as_bytes().ok())
        .unwrap_or_default()
}
