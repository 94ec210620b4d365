//! The durable outbox: every event the agent acknowledges lives here until
//! the bridge's delivery receipt says Kafka has it.
//!
//! # Invariants
//!
//! * **Durable before acknowledged.** [`OutboxHandle::append`] resolves only
//!   after the SQLite transaction holding the event has committed with
//!   `synchronous=FULL` in WAL mode, i.e. after `fsync`. A caller that got
//!   `Ok` may tell the terminal "accepted".
//! * **One writer.** A dedicated OS thread owns the write connection and
//!   group-commits whatever producers queued while the previous commit was
//!   running: one `fsync` answers many requests, so throughput grows with
//!   concurrency instead of collapsing.
//! * **Deleted only by receipt.** Rows leave the `events` table when a
//!   delivery receipt names them ([`OutboxHandle::delete`]), or when
//!   low-value telemetry is compacted/shed under the capacity policy — and
//!   every shed row is counted and reported as an `agent_notice` event. The
//!   count not yet reported is stored in the same transaction as the
//!   deletions it counts, so neither a crash nor the report throttle can
//!   turn a shed into a silent drop: it is reported at the next open, or at
//!   close.
//! * **Order.** `seq` is `AUTOINCREMENT`: it never goes backwards, even when
//!   the table empties, so "everything after seq N" is always well defined
//!   for the forwarder.
//! * **Transactions are never dropped.** When full, sales/returns/voids are
//!   refused ([`OutboxError::Full`]) and the terminal keeps its own journal.
//!   The agent's own notices (shed reports, recovery, quarantine) are never
//!   refused: a report of loss must not be lost to the cap, so they may
//!   take the outbox a few rows past it (shed reports come at most every
//!   10 s, and at open and close).
//! * **Damage costs only what it touched.** A file found damaged at open is
//!   set aside unchanged (`recovery.rs`), and every event still readable
//!   intact in it is copied into the fresh outbox before anything new
//!   (`salvage.rs`); the `outbox_recovered` notice says how many came back
//!   and how much was unreadable.
//! * **Idempotency.** `(terminal, business day, sequence number)` keys live in
//!   `idempotency_keys` for 7 days, longer than any event stays in `events`,
//!   so a re-post after delivery still answers with the original id. (After
//!   a damaged file is salvaged, only the keys of the events recovered from
//!   it come along: a key whose event is gone may belong to a sale lost
//!   with its page, which a re-post must be able to store again.)
//!
//! # On-disk format (schema version 4, `PRAGMA user_version`)
//!
//! ```sql
//! events(seq INTEGER PRIMARY KEY AUTOINCREMENT, id BLOB UNIQUE, kind TEXT,
//!        priority INTEGER, device_id TEXT, payload BLOB, crc32 INTEGER, created_ms INTEGER)
//! idempotency_keys(key TEXT, event_id BLOB, body_crc INTEGER, created_ms INTEGER)  -- append-only, see keys.rs
//! quarantine(seq, id, payload, reason, at_ms)   -- rows that failed their checksum
//! shed_unreported(only = 1, count)               -- readings shed, not yet reported
//! salvage_progress(source, next_seq)             -- see salvage.rs
//! ```
//! `payload` is the event's envelope JSON, byte for byte what goes to Kafka;
//! `crc32` covers it and is verified before sending, as is `id` against the
//! payload's own id (receipts delete by it: a damaged `id` would leave a row
//! no receipt removes, resent for ever).

mod keys;
mod recovery;
mod salvage;
mod schema;
mod writer;

#[cfg(test)]
mod tests;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use protocol::{Envelope, EventId, EventKind};
use tokio::sync::{mpsc, oneshot, Notify};

use crate::ingest::StoreIdentity;

pub use recovery::OpenReport;
pub use salvage::Salvage;

/// Capacity limits and tuning.
#[derive(Debug, Clone)]
pub struct OutboxConfig {
    pub path: PathBuf,
    pub max_bytes: u64,
    pub max_rows: u64,
    /// Most requests folded into one commit.
    pub group_commit_max: usize,
    /// Bytes kept in `outbox.reserve` beside the database, released when the
    /// disk fills up (see `writer.rs`). 0 disables the reserve.
    pub disk_reserve_bytes: u64,
}

impl OutboxConfig {
    pub fn new(path: impl Into<PathBuf>, max_bytes: u64, max_rows: u64) -> Self {
        OutboxConfig {
            path: path.into(),
            max_bytes,
            max_rows,
            group_commit_max: 1024,
            disk_reserve_bytes: 8 * 1024 * 1024,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum OutboxError {
    #[error("outbox is full ({rows} events, {bytes} bytes); retry later")]
    Full { rows: u64, bytes: u64 },
    #[error("transaction {key} was already recorded with a different body as event {original}")]
    IdempotencyConflict { key: String, original: EventId },
    #[error(
        "the disk holding the outbox is full; refusing new events until delivered ones free space"
    )]
    DiskFull,
    #[error("outbox storage failed: {0}")]
    Storage(#[from] rusqlite::Error),
    #[error("the event is {bytes} bytes; an event may be at most {limit} bytes")]
    TooLarge { bytes: usize, limit: usize },
    #[error("outbox is closed")]
    Closed,
    /// SQLite rolled back a group's whole transaction (it does so on some
    /// I/O and full-disk errors); nothing of the group was stored.
    #[error("the outbox transaction was rolled back by SQLite; nothing of this group was stored")]
    TransactionLost,
    #[error("cannot open outbox {path}: {reason}")]
    Open { path: PathBuf, reason: String },
    /// A group's commit failed for another reason (the error, as text: each
    /// request of the group gets its own copy).
    #[error("the outbox commit failed: {0}")]
    CommitFailed(String),
}

/// Result of a successful append.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AppendOutcome {
    Stored,
    Duplicate(EventId),
    /// A telemetry reading dropped because the outbox is full (counted).
    Shed,
}

/// An event as stored, handed to the forwarder.
#[derive(Debug, Clone)]
pub struct StoredEvent {
    pub seq: i64,
    pub id: EventId,
    pub kind: String,
    pub payload: Vec<u8>,
    pub crc32: u32,
}

impl StoredEvent {
    pub fn checksum_ok(&self) -> bool {
        crc32fast::hash(&self.payload) == self.crc32
    }

    /// Whether the `id` column is the payload's envelope id. The checksum
    /// covers only the payload, and receipts name the payload's id.
    pub fn id_matches_payload(&self) -> bool {
        // `"id":"<hyphenated lowercase uuid>"`, as the envelope serializes it.
        let mut needle = [0u8; 43];
        needle[..6].copy_from_slice(b"\"id\":\"");
        self.id.0.hyphenated().encode_lower(&mut needle[6..42]);
        needle[42] = b'"';
        // The agent writes it first (`{"id":…`); a search covers any other layout.
        self.payload.get(1..44) == Some(&needle[..])
            || memchr::memmem::find(&self.payload, &needle).is_some()
    }

    /// What is wrong with this row as stored, if anything.
    pub fn damage(&self) -> Option<Damage> {
        if !self.checksum_ok() {
            Some(Damage::Checksum)
        } else if !self.id_matches_payload() {
            Some(Damage::Id {
                payload_id: payload_id(&self.payload),
            })
        } else {
            None
        }
    }
}

/// A stored row that cannot be sent as it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Damage {
    /// The payload fails its checksum: nothing in it can be trusted.
    Checksum,
    /// The payload is intact but the `id` column is not its id, so no
    /// receipt would ever delete the row. Repairable from the payload when
    /// its id can be read.
    Id { payload_id: Option<EventId> },
}

impl Damage {
    /// The reason a quarantine of the row records.
    pub fn reason(&self) -> &'static str {
        match self {
            Damage::Checksum => "crc32 mismatch before send",
            Damage::Id { .. } => "stored id differs from the payload's id",
        }
    }
}

/// The envelope id at the head of a payload the agent wrote (`{"id":"…"`).
fn payload_id(payload: &[u8]) -> Option<EventId> {
    let rest = payload.strip_prefix(b"{\"id\":\"")?;
    let text = std::str::from_utf8(rest.get(..36)?).ok()?;
    (rest.get(36) == Some(&b'"'))
        .then(|| uuid::Uuid::parse_str(text).ok().map(EventId))
        .flatten()
}

/// Live counters, readable without touching the database.
#[derive(Debug, Default)]
pub struct OutboxStats {
    pub rows: AtomicU64,
    pub bytes: AtomicU64,
    /// Undelivered sales, returns and voids: a store is safe to restart only at zero.
    pub pending_transactions: AtomicU64,
    pub shed_total: AtomicU64,
    pub compacted_total: AtomicU64,
    pub commits_total: AtomicU64,
    pub quarantined_total: AtomicU64,
    /// Events recovered from damaged outboxes set aside at start.
    pub salvaged_total: AtomicU64,
    /// Stored events whose id column was damaged and rewritten from their
    /// intact payload (then sent, not quarantined).
    pub ids_repaired_total: AtomicU64,
}

impl OutboxStats {
    /// An event of `kind` with `bytes` of payload was committed.
    pub(crate) fn count_added(&self, kind: EventKind, bytes: u64) {
        self.rows.fetch_add(1, Ordering::Relaxed);
        self.bytes.fetch_add(bytes, Ordering::Relaxed);
        if kind.is_transaction() {
            self.pending_transactions.fetch_add(1, Ordering::Relaxed);
        }
    }

    pub fn rows(&self) -> u64 {
        self.rows.load(Ordering::Relaxed)
    }
    pub fn bytes(&self) -> u64 {
        self.bytes.load(Ordering::Relaxed)
    }
    pub fn pending_transactions(&self) -> u64 {
        self.pending_transactions.load(Ordering::Relaxed)
    }
}

/// An event serialized and checksummed by the caller's task, so the single
/// writer thread spends its time only on SQLite.
pub(crate) struct PreparedEvent {
    pub id: EventId,
    pub kind: EventKind,
    pub device_id: String,
    pub payload: Vec<u8>,
    pub crc32: u32,
    /// Crc of the body alone: tells an honest retry (same body) from a
    /// terminal reusing a sequence number for another transaction.
    pub body_crc: u32,
}

impl PreparedEvent {
    pub(crate) fn new(env: &Envelope) -> PreparedEvent {
        let (payload, body) = env.to_json_with_body_range();
        PreparedEvent {
            id: env.id,
            kind: env.schema,
            device_id: env.source.device_id.clone(),
            crc32: crc32fast::hash(&payload),
            body_crc: crc32fast::hash(&payload[body]),
            payload,
        }
    }
}

pub(crate) enum Command {
    Append {
        event: PreparedEvent,
        key: Option<String>,
        reply: oneshot::Sender<Result<AppendOutcome, OutboxError>>,
    },
    Delete {
        ids: Vec<EventId>,
        reply: oneshot::Sender<Result<u64, OutboxError>>,
    },
    Quarantine {
        seq: i64,
        reason: String,
        reply: oneshot::Sender<Result<(), OutboxError>>,
    },
    RepairId {
        seq: i64,
        id: EventId,
        reply: oneshot::Sender<Result<bool, OutboxError>>,
    },
    Housekeep,
    Shutdown {
        reply: oneshot::Sender<()>,
    },
    /// Tests only: the group's transaction is rolled back under the writer,
    /// as SQLite does on some I/O and full-disk errors.
    #[cfg(test)]
    RollbackForTest {
        reply: oneshot::Sender<Result<(), OutboxError>>,
    },
}

/// Cheap, cloneable access to the outbox from async code.
#[derive(Clone)]
pub struct OutboxHandle {
    tx: mpsc::Sender<Command>,
    reader: Arc<Mutex<rusqlite::Connection>>,
    stats: Arc<OutboxStats>,
    appended: Arc<Notify>,
}

/// Owns the writer thread; dropping the last handle and calling
/// [`Outbox::close`] flushes and closes the database.
pub struct Outbox {
    handle: OutboxHandle,
    writer: Option<std::thread::JoinHandle<()>>,
    pub report: OpenReport,
}

impl Outbox {
    /// Opens (or creates, or recovers) the outbox and starts its writer thread.
    pub fn open(config: OutboxConfig, store: StoreIdentity) -> Result<Outbox, OutboxError> {
        let (conn, mut report) = recovery::open_or_recover(&config.path)?;
        let reader = schema::open_reader(&config.path)?;
        let path = config.path.clone();
        let stats = Arc::new(OutboxStats::default());
        let appended = Arc::new(Notify::new());
        let (tx, rx) = mpsc::channel(8192);
        let mut writer = writer::Writer::new(conn, config, store, stats.clone(), appended.clone())?;
        recovery::report_set_aside(&path, &mut report, &mut writer)?;
        let thread = std::thread::Builder::new()
            .name("outbox-writer".into())
            .spawn(move || writer.run(rx))
            .map_err(|e| OutboxError::Open {
                path: PathBuf::from("outbox-writer thread"),
                reason: e.to_string(),
            })?;
        Ok(Outbox {
            handle: OutboxHandle {
                tx,
                reader: Arc::new(Mutex::new(reader)),
                stats,
                appended,
            },
            writer: Some(thread),
            report,
        })
    }

    pub fn handle(&self) -> OutboxHandle {
        self.handle.clone()
    }

    /// Completes every command queued so far, checkpoints and closes the
    /// database. Later calls on any handle fail with [`OutboxError::Closed`].
    pub async fn close(mut self) {
        let (reply, done) = oneshot::channel();
        if self
            .handle
            .tx
            .send(Command::Shutdown { reply })
            .await
            .is_ok()
        {
            let _ = done.await;
        }
        if let Some(t) = self.writer.take() {
            if tokio::task::spawn_blocking(move || t.join())
                .await
                .map(|r| r.is_err())
                .unwrap_or(true)
            {
                tracing::error!("outbox writer thread ended abnormally during close");
            }
        }
    }
}

impl OutboxHandle {
    async fn call<T>(
        &self,
        make: impl FnOnce(oneshot::Sender<Result<T, OutboxError>>) -> Command,
    ) -> Result<T, OutboxError> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(make(reply))
            .await
            .map_err(|_| OutboxError::Closed)?;
        rx.await.map_err(|_| OutboxError::Closed)?
    }

    /// Commits one event durably. See the module invariants.
    pub async fn append(
        &self,
        envelope: Envelope,
        key: Option<String>,
    ) -> Result<AppendOutcome, OutboxError> {
        let event = PreparedEvent::new(&envelope);
        // Refused here, while the producer can still be told: stored, it
        // could never be sent (see protocol::batch::MAX_EVENT_BYTES).
        if event.payload.len() > protocol::batch::MAX_EVENT_BYTES {
            return Err(OutboxError::TooLarge {
                bytes: event.payload.len(),
                limit: protocol::batch::MAX_EVENT_BYTES,
            });
        }
        self.call(|reply| Command::Append { event, key, reply })
            .await
    }

    /// Removes receipted events; returns how many rows were removed.
    pub async fn delete(&self, ids: Vec<EventId>) -> Result<u64, OutboxError> {
        if ids.is_empty() {
            return Ok(0);
        }
        self.call(|reply| Command::Delete { ids, reply }).await
    }

    /// Moves a row that failed its integrity check out of the send path,
    /// reporting it.
    pub async fn quarantine(&self, seq: i64, reason: String) -> Result<(), OutboxError> {
        self.call(|reply| Command::Quarantine { seq, reason, reply })
            .await
    }

    /// Rewrites the `id` column of row `seq` to `id`, the id its intact
    /// payload carries; `false` if no such row is left.
    pub async fn repair_id(&self, seq: i64, id: EventId) -> Result<bool, OutboxError> {
        self.call(|reply| Command::RepairId { seq, id, reply })
            .await
    }

    /// Asks the writer to checkpoint the WAL, prune old keys and reclaim space.
    pub async fn housekeep(&self) -> Result<(), OutboxError> {
        self.tx
            .send(Command::Housekeep)
            .await
            .map_err(|_| OutboxError::Closed)
    }

    /// Events after `after_seq` in order, up to `max_events` and `max_bytes`
    /// of payloads joined as a batch joins them (one separator byte between
    /// two events, [`protocol::batch::encode_batch`]); always at least one
    /// event if any is there, however large.
    pub async fn read_after(
        &self,
        after_seq: i64,
        max_events: usize,
        max_bytes: usize,
    ) -> Result<Vec<StoredEvent>, OutboxError> {
        let reader = self.reader.clone();
        tokio::task::spawn_blocking(move || {
            let conn = reader.lock().map_err(|_| OutboxError::Closed)?;
            schema::read_after(&conn, after_seq, max_events, max_bytes)
        })
        .await
        .map_err(|_| OutboxError::Closed)?
    }

    /// SQLite's `quick_check` of the database as it is now: `None` if it
    /// is sound, else what is wrong (the check failing as corrupt counts).
    pub async fn damage_found(&self) -> Result<Option<String>, OutboxError> {
        let reader = self.reader.clone();
        tokio::task::spawn_blocking(move || {
            let conn = reader.lock().map_err(|_| OutboxError::Closed)?;
            match schema::quick_check(&conn) {
                Ok(found) => Ok(found),
                Err(e) => {
                    let e = OutboxError::from(e);
                    if e.is_corruption() {
                        Ok(Some(e.to_string()))
                    } else {
                        Err(e)
                    }
                }
            }
        })
        .await
        .map_err(|_| OutboxError::Closed)?
    }

    pub fn stats(&self) -> &OutboxStats {
        &self.stats
    }

    pub fn stats_arc(&self) -> Arc<OutboxStats> {
        self.stats.clone()
    }

    /// Resolves when something was appended since the last call.
    pub async fn appended(&self) {
        self.appended.notified().await
    }
}

/// Whether a kind may be compacted and shed, and its capacity tier.
pub(crate) fn priority_of(kind: EventKind) -> i64 {
    if kind.is_transaction() || kind == EventKind::AgentNotice {
        0
    } else if kind.is_sheddable() {
        2
    } else {
        1
    }
}

impl OutboxError {
    /// SQLite found the database file damaged (`SQLITE_CORRUPT`,
    /// `SQLITE_NOTADB`).
    pub fn is_corruption(&self) -> bool {
        matches!(
            self,
            OutboxError::Storage(rusqlite::Error::SqliteFailure(f, _))
                if matches!(f.code, rusqlite::ErrorCode::DatabaseCorrupt | rusqlite::ErrorCode::NotADatabase)
        )
    }
}

/// Whether a storage error means the file system is out of space.
pub(crate) fn is_disk_full(e: &OutboxError) -> bool {
    matches!(
        e,
        OutboxError::Storage(rusqlite::Error::SqliteFailure(f, _))
            if f.code == rusqlite::ErrorCode::DiskFull
    )
}

/// Path helpers for the database and the files SQLite keeps beside it.
pub(crate) fn sidecars(path: &Path) -> [PathBuf; 2] {
    let mut wal = path.as_os_str().to_owned();
    wal.push("-wal");
    let mut shm = path.as_os_str().to_owned();
    shm.push("-shm");
    [PathBuf::from(wal), PathBuf::from(shm)]
}
