//! The writer thread: group commit, capacity policy, deletes by receipt.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::Utc;
use protocol::device::{AgentNotice, NoticeCode};
use protocol::{Envelope, EventBody, EventId, Source, SourceKind};
use rusqlite::{params, Connection, OptionalExtension, Transaction};
use tokio::sync::{mpsc, Notify};

use super::keys::{KeyEntry, KeyIndex};
use super::{
    priority_of, AppendOutcome, Command, OutboxConfig, OutboxError, OutboxStats, PreparedEvent,
};
use crate::ingest::StoreIdentity;

/// Shed counts are reported at most this often, aggregated.
pub(super) const SHED_REPORT_EVERY: Duration = Duration::from_secs(10);
/// Telemetry may use this share of the capacity; the rest is kept for events
/// that must not be shed, so a flood of shelf readings never refuses a sale.
pub(super) const TELEMETRY_SHARE: f64 = 0.80;
/// Scans, alerts and device status may use this share; transactions and
/// notices all of it.
const EVENT_SHARE: f64 = 0.95;
/// Shedding deletes the oldest readings in chunks, so that a full outbox
/// pays for one `DELETE` per chunk rather than per reading: at most this
/// many at a time …
const SHED_CHUNK_MAX: u64 = 256;
/// … and at most this fraction of the rows stored, so that a small outbox
/// loses no more of its readings than it must (with the default 5 million
/// rows the chunk is always `SHED_CHUNK_MAX`).
const SHED_CHUNK_DIVISOR: u64 = 64;

/// How many of the oldest readings to shed at once from an outbox holding
/// `rows` events: the whichever-limit-binds capacity, since it is full.
pub(super) fn shed_chunk(rows: u64) -> u64 {
    (rows / SHED_CHUNK_DIVISOR).clamp(1, SHED_CHUNK_MAX)
}

pub(crate) struct Writer {
    conn: Connection,
    config: OutboxConfig,
    store: StoreIdentity,
    stats: Arc<OutboxStats>,
    appended: Arc<Notify>,
    unreported_shed: u64,
    keys: KeyIndex,
    /// The disk filled up: the reserve was released and appends are refused
    /// until housekeeping can put the reserve back.
    disk_full: bool,
    /// None until the first report: the first shed is reported at once.
    last_shed_report: Option<Instant>,
}

fn now_ms() -> i64 {
    Utc::now().timestamp_millis()
}

impl Writer {
    pub(crate) fn new(
        conn: Connection,
        config: OutboxConfig,
        store: StoreIdentity,
        stats: Arc<OutboxStats>,
        appended: Arc<Notify>,
    ) -> Result<Writer, OutboxError> {
        let (rows, bytes, pending): (i64, i64, i64) = conn.query_row(
            "SELECT count(*), coalesce(sum(length(payload)), 0),
                    coalesce(sum(priority = 0 AND kind IN ('storelink.sale','storelink.return','storelink.void')), 0)
             FROM events",
            [],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
        )?;
        stats.rows.store(rows as u64, Ordering::Relaxed);
        stats.bytes.store(bytes as u64, Ordering::Relaxed);
        stats
            .pending_transactions
            .store(pending as u64, Ordering::Relaxed);
        let keys = KeyIndex::load(&conn)?;
        tracing::info!(keys = keys.len(), "idempotency keys loaded");
        // Read as any type: a flipped type bit in this one row (which
        // `quick_check` lets pass) must not stop every start.
        let stored: rusqlite::types::Value =
            conn.query_row("SELECT count FROM shed_unreported", [], |r| r.get(0))?;
        let unreported_shed = match stored {
            rusqlite::types::Value::Integer(n) => n,
            other => {
                tracing::error!(
                    stored = ?other,
                    "the stored count of shed readings not yet reported is damaged; \
                     those readings can no longer be counted, starting again from 0"
                );
                conn.execute("UPDATE shed_unreported SET count = 0", [])?;
                0
            }
        };
        let mut writer = Writer {
            keys,
            conn,
            config,
            store,
            stats,
            appended,
            unreported_shed: unreported_shed.max(0) as u64,
            last_shed_report: None,
            disk_full: false,
        };
        // Shedding counted before a crash is reported now. Failing that (a
        // full disk), the count stays stored: never a reason not to start.
        if let Err(e) = writer.report_shed() {
            tracing::warn!(error = %e, "could not report shed readings at start; kept for later");
        }
        if let Err(e) = writer.ensure_reserve() {
            // Starting on a full disk: run without the reserve; appends are
            // refused until delivered events free space.
            tracing::error!(error = %e, "cannot create the outbox disk reserve; disk full?");
            writer.disk_full = true;
        }
        Ok(writer)
    }

    fn reserve_path(&self) -> std::path::PathBuf {
        self.config.path.with_extension("reserve")
    }

    /// Writes the reserve file with real bytes (a sparse file would hold no space).
    fn ensure_reserve(&self) -> std::io::Result<()> {
        use std::io::Write;
        let want = self.config.disk_reserve_bytes;
        let path = self.reserve_path();
        if want == 0 || std::fs::metadata(&path).is_ok_and(|m| m.len() >= want) {
            return Ok(());
        }
        let result = (|| {
            let mut f = std::fs::File::create(&path)?;
            let chunk = vec![0u8; 64 * 1024];
            let mut left = want;
            while left > 0 {
                let n = left.min(chunk.len() as u64) as usize;
                f.write_all(&chunk[..n])?;
                left -= n as u64;
            }
            f.sync_all()
        })();
        if result.is_err() {
            let _ = std::fs::remove_file(&path);
        }
        result
    }

    fn on_disk_full(&mut self) {
        if !self.disk_full {
            self.disk_full = true;
            let freed = std::fs::remove_file(self.reserve_path()).is_ok();
            tracing::error!(
                reserve_released = freed,
                "disk holding the outbox is full; refusing new events until delivered ones free space"
            );
        }
    }

    /// Records an agent notice outside the normal request path (at open).
    pub(crate) fn record_notice(&mut self, notice: AgentNotice) -> Result<(), OutboxError> {
        let tx = self.conn.transaction()?;
        let ev = PreparedEvent::new(&notice_envelope(&self.store, notice));
        insert(&tx, &self.stats, &ev)?;
        tx.commit()?;
        Ok(())
    }

    /// Copies the intact events of the damaged database `aside` into the
    /// outbox (see `salvage.rs`), at open.
    pub(crate) fn salvage(&mut self, aside: &std::path::Path) -> super::Salvage {
        super::salvage::salvage(
            aside,
            &mut self.conn,
            &self.stats,
            &mut self.keys,
            self.config.disk_reserve_bytes,
        )
    }

    /// Reports the readings shed since the last report, if any, in a
    /// transaction of its own (at open and at close, outside the throttle).
    fn report_shed(&mut self) -> Result<(), OutboxError> {
        if self.unreported_shed == 0 {
            return Ok(());
        }
        let before = (self.stats.rows(), self.stats.bytes());
        let result = (|| -> Result<bool, OutboxError> {
            let tx = self.conn.transaction()?;
            let written = write_shed_report(
                &tx,
                &self.store,
                &self.stats,
                &self.config,
                self.unreported_shed,
            )?;
            tx.commit()?;
            Ok(written)
        })();
        match result {
            // No room: the count is already stored and waits.
            Ok(false) => Ok(()),
            Ok(true) => {
                self.unreported_shed = 0;
                self.last_shed_report = Some(Instant::now());
                Ok(())
            }
            Err(e) => {
                // Rolled back: the count stays stored for a later report.
                self.stats.rows.store(before.0, Ordering::Relaxed);
                self.stats.bytes.store(before.1, Ordering::Relaxed);
                Err(e)
            }
        }
    }

    pub(crate) fn run(mut self, mut rx: mpsc::Receiver<Command>) {
        let mut batch = Vec::with_capacity(self.config.group_commit_max);
        while let Some(first) = rx.blocking_recv() {
            batch.push(first);
            while batch.len() < self.config.group_commit_max {
                match rx.try_recv() {
                    Ok(cmd) => batch.push(cmd),
                    Err(_) => break,
                }
            }
            let shutdown = self.process(&mut batch);
            if let Some(reply) = shutdown {
                rx.close();
                // Finish whatever was queued before the close took effect.
                while let Ok(cmd) = rx.try_recv() {
                    batch.push(cmd);
                }
                let _ = self.process(&mut batch);
                // The throttle would hold this count until after the exit.
                if let Err(e) = self.report_shed() {
                    tracing::warn!(error = %e, "could not report shed readings at close; kept for the next start");
                }
                self.checkpoint("TRUNCATE");
                let _ = reply.send(());
                tracing::info!("outbox closed");
                return;
            }
        }
        self.checkpoint("TRUNCATE");
    }

    /// Runs one group of commands: all writes in one transaction, replies
    /// after the commit. Returns the shutdown reply if one was requested.
    ///
    /// Each append and quarantine runs under a savepoint, so one that fails
    /// (a sale over the cap, disk full between an event and its key) leaves
    /// nothing behind and the rest of the group commits (a receipt's delete
    /// needs none; see there). Some errors make SQLite roll back
    /// the whole transaction instead (`SQLITE_FULL`, `SQLITE_IOERR`; see
    /// "Response To Errors Within A Transaction" in SQLite's documentation):
    /// then the group is over. The commands not yet run are failed rather
    /// than run in autocommit mode, where each would commit on its own while
    /// its requester is told the group failed (a sale stored, refused, and
    /// stored again when the terminal retries).
    pub(super) fn process(
        &mut self,
        batch: &mut Vec<Command>,
    ) -> Option<tokio::sync::oneshot::Sender<()>> {
        let mut shutdown = None;
        let mut replies: Vec<Reply> = Vec::new();
        let mut housekeep = false;
        let mut disk_full_seen = false;
        let snapshot = Counters::take(&self.stats, self.unreported_shed);
        let mut reported = false;
        let started = Instant::now();
        let mut commands = batch.drain(..);
        let result = (|| -> Result<(), OutboxError> {
            let tx = self.conn.transaction()?;
            for cmd in commands.by_ref() {
                let step = match cmd {
                    Command::Append { event, key, reply } => {
                        let step = if self.disk_full {
                            Ok(Err(OutboxError::DiskFull))
                        } else {
                            let (config, keys) = (&self.config, &mut self.keys);
                            // Shedding deletes through the telemetry index.
                            retry_after_rebuilding_indexes(&tx, || {
                                in_savepoint(&tx, &self.stats, &mut self.unreported_shed, |shed| {
                                    append(
                                        &tx,
                                        config,
                                        &self.stats,
                                        keys,
                                        &event,
                                        key.as_deref(),
                                        shed,
                                    )
                                })
                            })
                        };
                        if matches!(&step, Ok(Err(e)) if super::is_disk_full(e)) {
                            disk_full_seen = true;
                        }
                        queue_reply(&mut replies, reply, step, Reply::Append)
                    }
                    Command::Delete { ids, reply } => {
                        // No savepoint: it would copy every page the delete
                        // touches into the statement journal (a fifth of the
                        // drain rate), and a delete cut short is harmless:
                        // each row it removed was receipted, the counters
                        // follow row by row, and the forwarder resends the
                        // rest. Only a lost transaction ends the group.
                        // Rows already deleted return nothing the second time.
                        let step = retry_after_rebuilding_indexes(&tx, || {
                            let outcome = delete(&tx, &self.stats, &ids);
                            if tx.is_autocommit() {
                                Err(outcome.err().unwrap_or(OutboxError::TransactionLost))
                            } else {
                                Ok(outcome)
                            }
                        });
                        queue_reply(&mut replies, reply, step, Reply::Delete)
                    }
                    Command::Quarantine { seq, reason, reply } => {
                        let step = retry_after_rebuilding_indexes(&tx, || {
                            in_savepoint(&tx, &self.stats, &mut self.unreported_shed, |_| {
                                quarantine(&tx, &self.store, &self.stats, seq, &reason)
                            })
                        });
                        queue_reply(&mut replies, reply, step, Reply::Quarantine)
                    }
                    Command::RepairId { seq, id, reply } => {
                        let step = retry_after_rebuilding_indexes(&tx, || {
                            in_savepoint(&tx, &self.stats, &mut self.unreported_shed, |_| {
                                repair_id(&tx, &self.stats, seq, id)
                            })
                        });
                        queue_reply(&mut replies, reply, step, Reply::RepairId)
                    }
                    #[cfg(test)]
                    Command::RollbackForTest { reply } => {
                        let step =
                            in_savepoint(&tx, &self.stats, &mut self.unreported_shed, |_| {
                                Ok(tx.execute_batch("ROLLBACK")?)
                            });
                        queue_reply(&mut replies, reply, step, Reply::Test)
                    }
                    Command::Housekeep => {
                        housekeep = true;
                        Ok(())
                    }
                    Command::Shutdown { reply } => {
                        shutdown = Some(reply);
                        Ok(())
                    }
                };
                step?;
            }
            if self.unreported_shed > 0
                && self
                    .last_shed_report
                    .is_none_or(|t| t.elapsed() >= SHED_REPORT_EVERY)
                && write_shed_report(
                    &tx,
                    &self.store,
                    &self.stats,
                    &self.config,
                    self.unreported_shed,
                )?
            {
                reported = true;
            } else if self.unreported_shed != snapshot.unreported_shed {
                // Held back by the throttle: kept with the deletions it counts.
                set_shed_unreported(&tx, self.unreported_shed)?;
            }
            tx.commit()?;
            Ok(())
        })();
        // What the group did not get to, when its transaction was lost:
        // failed, never dropped (a dropped reply reads as a closed outbox,
        // and a dropped shutdown would leave `Outbox::close` waiting).
        if let Err(e) = &result {
            for cmd in commands {
                match cmd {
                    Command::Append { reply, .. } => {
                        replies.push(Reply::Append(Pending::failed(reply, e)))
                    }
                    Command::Delete { reply, .. } => {
                        replies.push(Reply::Delete(Pending::failed(reply, e)))
                    }
                    Command::Quarantine { reply, .. } => {
                        replies.push(Reply::Quarantine(Pending::failed(reply, e)))
                    }
                    Command::RepairId { reply, .. } => {
                        replies.push(Reply::RepairId(Pending::failed(reply, e)))
                    }
                    Command::Housekeep => housekeep = true,
                    Command::Shutdown { reply } => shutdown = Some(reply),
                    #[cfg(test)]
                    Command::RollbackForTest { reply } => {
                        replies.push(Reply::Test(Pending::failed(reply, e)))
                    }
                }
            }
        } else {
            drop(commands);
        }
        self.stats.commits_total.fetch_add(1, Ordering::Relaxed);
        let commit_err = result.err();
        if commit_err.is_some() {
            self.keys.discard();
        } else {
            self.keys.commit();
        }
        if disk_full_seen || commit_err.as_ref().is_some_and(super::is_disk_full) {
            self.on_disk_full();
        }
        if commit_err.is_none() && reported {
            self.unreported_shed = 0;
            self.last_shed_report = Some(Instant::now());
        }
        if let Some(e) = &commit_err {
            // Nothing of this group is durable: restore the counters and
            // fail every request in it.
            self.unreported_shed = snapshot.restore(&self.stats);
            tracing::error!(error = %e, "outbox commit failed; requests in this group are refused");
        } else {
            self.appended.notify_one();
        }
        crate::metrics::observe_commit(started.elapsed(), replies.len());
        for reply in replies {
            reply.finish(commit_err.as_ref());
        }
        if housekeep {
            self.housekeep();
        }
        shutdown
    }

    fn checkpoint(&self, mode: &str) {
        if let Err(e) = self
            .conn
            .query_row(&format!("PRAGMA wal_checkpoint({mode})"), [], |_| Ok(()))
        {
            tracing::warn!(error = %e, mode, "WAL checkpoint failed");
        }
    }

    /// Small, bounded steps so a commit never waits long behind housekeeping.
    fn housekeep(&mut self) {
        if self.disk_full {
            self.checkpoint("TRUNCATE");
            match self.ensure_reserve() {
                Ok(()) => {
                    self.disk_full = false;
                    tracing::info!("disk space recovered; the outbox takes new events again");
                }
                Err(e) => tracing::warn!(error = %e, "disk still full"),
            }
        }
        match self.keys.housekeep(&self.conn, now_ms(), Instant::now()) {
            Ok(0) => {}
            Ok(n) => tracing::debug!(pruned = n, "old idempotency keys forgotten"),
            Err(e) => tracing::warn!(error = %e, "pruning old idempotency keys failed"),
        }
        // Return up to 4 MiB of free pages to the file system per pass.
        if let Err(e) = self.conn.execute_batch("PRAGMA incremental_vacuum(1024);") {
            tracing::warn!(error = %e, "incremental vacuum failed");
        }
        let mode = if self.stats.rows() == 0 {
            "TRUNCATE"
        } else {
            "PASSIVE"
        };
        self.checkpoint(mode);
    }
}

/// A request answered after its group's commit: the request's own outcome,
/// unless the commit failed, in which case nothing of it is durable.
struct Pending<T> {
    reply: tokio::sync::oneshot::Sender<Result<T, OutboxError>>,
    outcome: Result<T, OutboxError>,
}

impl<T> Pending<T> {
    /// A request its group could not run: answered with the group's error.
    fn failed(
        reply: tokio::sync::oneshot::Sender<Result<T, OutboxError>>,
        e: &OutboxError,
    ) -> Self {
        Pending {
            reply,
            outcome: Err(clone_err(e)),
        }
    }

    fn finish(self, commit_err: Option<&OutboxError>) {
        let result = match (commit_err, self.outcome) {
            (Some(e), Ok(_)) => Err(clone_err(e)),
            (_, r) => r,
        };
        // The requester may have given up (timeout, shutdown); nothing to do then.
        let _ = self.reply.send(result);
    }
}

enum Reply {
    Append(Pending<AppendOutcome>),
    Delete(Pending<u64>),
    Quarantine(Pending<()>),
    RepairId(Pending<bool>),
    #[cfg(test)]
    Test(Pending<()>),
}

impl Reply {
    fn finish(self, commit_err: Option<&OutboxError>) {
        match self {
            Reply::Append(p) => p.finish(commit_err),
            Reply::Delete(p) => p.finish(commit_err),
            Reply::Quarantine(p) => p.finish(commit_err),
            Reply::RepairId(p) => p.finish(commit_err),
            #[cfg(test)]
            Reply::Test(p) => p.finish(commit_err),
        }
    }
}

fn clone_err(e: &OutboxError) -> OutboxError {
    match e {
        OutboxError::Full { rows, bytes } => OutboxError::Full {
            rows: *rows,
            bytes: *bytes,
        },
        OutboxError::Closed => OutboxError::Closed,
        OutboxError::DiskFull => OutboxError::DiskFull,
        // The commit that found the disk full: each request of its group is
        // refused as `disk_full`, like every request after it, not as a
        // generic storage failure.
        other if super::is_disk_full(other) => OutboxError::DiskFull,
        OutboxError::TransactionLost => OutboxError::TransactionLost,
        other => OutboxError::CommitFailed(other.to_string()),
    }
}

fn notice_envelope(store: &StoreIdentity, notice: AgentNotice) -> Envelope {
    Envelope::new(
        store.store_id.clone(),
        store.region.clone(),
        Source {
            kind: SourceKind::Agent,
            device_id: "store-agent".into(),
        },
        Utc::now().fixed_offset(),
        EventBody::AgentNotice(notice),
    )
}

/// The event reporting `count` shed readings.
pub(super) fn shed_notice(store: &StoreIdentity, count: u64) -> Envelope {
    let notice = AgentNotice {
        code: NoticeCode::TelemetryShed,
        message: format!("outbox full: {count} shelf readings compacted or shed"),
        count,
    };
    notice_envelope(store, notice)
}

/// The `telemetry_shed` notice for `count` readings, and the durable count
/// back to zero, in the caller's transaction. `false` (nothing written) while
/// the outbox has no room for the notice itself: the notice obeys the cap
/// like every event (else a full outbox whose link is down grew by a notice
/// every [`SHED_REPORT_EVERY`] for as long as readings kept coming), and the
/// count waits, durable in `shed_unreported`, for the room that deliveries
/// make.
fn write_shed_report(
    tx: &Transaction<'_>,
    store: &StoreIdentity,
    stats: &OutboxStats,
    config: &OutboxConfig,
    count: u64,
) -> Result<bool, OutboxError> {
    let ev = PreparedEvent::new(&shed_notice(store, count));
    if over(stats, config, 1.0, ev.payload.len() as u64) {
        return Ok(false);
    }
    insert(tx, stats, &ev)?;
    set_shed_unreported(tx, 0)?;
    tracing::warn!(
        shed = count,
        "telemetry shed while the outbox is full; reported"
    );
    Ok(true)
}

fn set_shed_unreported(tx: &Transaction<'_>, count: u64) -> Result<(), OutboxError> {
    tx.prepare_cached("UPDATE shed_unreported SET count = ?1")?
        .execute([count as i64])?;
    Ok(())
}

fn insert(
    tx: &Transaction<'_>,
    stats: &OutboxStats,
    ev: &PreparedEvent,
) -> Result<(), OutboxError> {
    let priority = priority_of(ev.kind);
    tx.prepare_cached(
        "INSERT INTO events (id, kind, priority, device_id, payload, crc32, created_ms)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
    )?
    .execute(params![
        ev.id.0.as_bytes().as_slice(),
        ev.kind.schema_name(),
        priority,
        ev.device_id,
        ev.payload,
        i64::from(ev.crc32),
        now_ms(),
    ])?;
    stats.count_added(ev.kind, ev.payload.len() as u64);
    Ok(())
}

fn over(stats: &OutboxStats, config: &OutboxConfig, share: f64, extra_bytes: u64) -> bool {
    let max_rows = (config.max_rows as f64 * share) as u64;
    let max_bytes = (config.max_bytes as f64 * share) as u64;
    stats.rows() + 1 > max_rows || stats.bytes() + extra_bytes > max_bytes
}

/// Queues a request's reply with its outcome; a lost transaction fails the
/// request and is passed on, to end the group.
fn queue_reply<T>(
    replies: &mut Vec<Reply>,
    reply: tokio::sync::oneshot::Sender<Result<T, OutboxError>>,
    step: Result<Result<T, OutboxError>, OutboxError>,
    wrap: fn(Pending<T>) -> Reply,
) -> Result<(), OutboxError> {
    match step {
        Ok(outcome) => {
            replies.push(wrap(Pending { reply, outcome }));
            Ok(())
        }
        Err(e) => {
            replies.push(wrap(Pending::failed(reply, &e)));
            Err(e)
        }
    }
}

/// The counters a rolled-back write must give back.
#[derive(Clone, Copy)]
struct Counters {
    rows: u64,
    bytes: u64,
    pending_transactions: u64,
    shed_total: u64,
    compacted_total: u64,
    quarantined_total: u64,
    ids_repaired_total: u64,
    unreported_shed: u64,
}

impl Counters {
    fn take(stats: &OutboxStats, unreported_shed: u64) -> Counters {
        Counters {
            rows: stats.rows(),
            bytes: stats.bytes(),
            pending_transactions: stats.pending_transactions(),
            shed_total: stats.shed_total.load(Ordering::Relaxed),
            compacted_total: stats.compacted_total.load(Ordering::Relaxed),
            quarantined_total: stats.quarantined_total.load(Ordering::Relaxed),
            ids_repaired_total: stats.ids_repaired_total.load(Ordering::Relaxed),
            unreported_shed,
        }
    }

    /// Puts the counters back; returns the unreported shed count to keep.
    fn restore(&self, stats: &OutboxStats) -> u64 {
        stats.rows.store(self.rows, Ordering::Relaxed);
        stats.bytes.store(self.bytes, Ordering::Relaxed);
        stats
            .pending_transactions
            .store(self.pending_transactions, Ordering::Relaxed);
        stats.shed_total.store(self.shed_total, Ordering::Relaxed);
        stats
            .compacted_total
            .store(self.compacted_total, Ordering::Relaxed);
        stats
            .quarantined_total
            .store(self.quarantined_total, Ordering::Relaxed);
        stats
            .ids_repaired_total
            .store(self.ids_repaired_total, Ordering::Relaxed);
        self.unreported_shed
    }
}

/// Runs one request's writes under a savepoint. The inner result is the
/// request's own outcome: on an error its writes and counter changes are
/// undone and the group goes on. The outer error means the transaction
/// itself is gone (SQLite rolled all of it back, or the savepoint could not
/// be used): the group must fail as a whole.
fn in_savepoint<T>(
    tx: &Transaction<'_>,
    stats: &OutboxStats,
    unreported_shed: &mut u64,
    write: impl FnOnce(&mut u64) -> Result<T, OutboxError>,
) -> Result<Result<T, OutboxError>, OutboxError> {
    let before = Counters::take(stats, *unreported_shed);
    run_cached(tx, "SAVEPOINT request")?;
    let outcome = write(unreported_shed);
    if tx.is_autocommit() {
        // Counters are restored by the group's failure path.
        return Err(match outcome {
            Err(e) => e,
            Ok(_) => OutboxError::TransactionLost,
        });
    }
    if outcome.is_err() {
        run_cached(tx, "ROLLBACK TO request")?;
        *unreported_shed = before.restore(stats);
    }
    run_cached(tx, "RELEASE request")?;
    Ok(outcome)
}

/// SQLite found an index that disagrees with its table row
/// (`SQLITE_CORRUPT_INDEX`). A flipped bit in an indexed column of a row on
/// disk (its id, its device) does that, and the `quick_check` at open does
/// not compare tables with their indexes; the receipt's delete, the id
/// repair and the quarantine of that row would fail for ever.
fn index_out_of_step(e: &OutboxError) -> bool {
    matches!(e, OutboxError::Storage(rusqlite::Error::SqliteFailure(f, _))
        if f.extended_code == rusqlite::ffi::SQLITE_CORRUPT_INDEX)
}

/// Rebuilds every index from its table, inside the group's transaction.
fn rebuild_indexes(tx: &Transaction<'_>) -> Result<(), OutboxError> {
    tracing::error!(
        "an outbox index disagrees with its table (a row damaged on disk); rebuilding the indexes"
    );
    tx.execute_batch("REINDEX")?;
    Ok(())
}

/// Runs a step (its own result inside, the group's failure outside); if it
/// failed on an index out of step with its table, rebuilds the indexes and
/// runs it once more.
fn retry_after_rebuilding_indexes<T>(
    tx: &Transaction<'_>,
    mut step: impl FnMut() -> Result<Result<T, OutboxError>, OutboxError>,
) -> Result<Result<T, OutboxError>, OutboxError> {
    match step() {
        Ok(Err(e)) if index_out_of_step(&e) => match rebuild_indexes(tx) {
            Ok(()) => step(),
            // SQLite dropped the whole transaction (a full disk): the group
            // is over, as `process` requires.
            Err(rebuild) if tx.is_autocommit() => Err(rebuild),
            Err(rebuild) => Ok(Err(rebuild)),
        },
        other => other,
    }
}

/// Runs a statement without results from the connection's statement cache:
/// the savepoint around every append was parsed afresh each time
/// (`execute_batch`), which showed in the writer's profile.
fn run_cached(tx: &rusqlite::Transaction<'_>, sql: &str) -> Result<(), rusqlite::Error> {
    tx.prepare_cached(sql)?.execute([])?;
    Ok(())
}

fn append(
    tx: &Transaction<'_>,
    config: &OutboxConfig,
    stats: &OutboxStats,
    keys: &mut KeyIndex,
    ev: &PreparedEvent,
    key: Option<&str>,
    unreported_shed: &mut u64,
) -> Result<AppendOutcome, OutboxError> {
    if let Some(existing) = key.and_then(|k| keys.get(k)) {
        return if existing.body_crc == ev.body_crc {
            Ok(AppendOutcome::Duplicate(existing.event_id))
        } else {
            Err(OutboxError::IdempotencyConflict {
                key: key.unwrap_or_default().to_owned(),
                original: existing.event_id,
            })
        };
    }
    let size_hint = ev.payload.len() as u64;
    match priority_of(ev.kind) {
        0 => {
            if over(stats, config, 1.0, size_hint) {
                return Err(OutboxError::Full {
                    rows: stats.rows(),
                    bytes: stats.bytes(),
                });
            }
        }
        1 => {
            if over(stats, config, EVENT_SHARE, size_hint) {
                return Err(OutboxError::Full {
                    rows: stats.rows(),
                    bytes: stats.bytes(),
                });
            }
        }
        _ => {
            if over(stats, config, TELEMETRY_SHARE, size_hint) {
                // First compact: the new reading supersedes this sensor's older ones.
                let compacted = delete_telemetry(
                    tx,
                    stats,
                    "SELECT seq FROM events WHERE priority = 2 AND device_id = ?1",
                    params![ev.device_id],
                )?;
                stats
                    .compacted_total
                    .fetch_add(compacted, Ordering::Relaxed);
                *unreported_shed += compacted;
                // Then shed the oldest readings of any sensor.
                while over(stats, config, TELEMETRY_SHARE, size_hint) {
                    let shed = delete_telemetry(
                        tx,
                        stats,
                        "SELECT seq FROM events WHERE priority = 2 ORDER BY seq LIMIT ?1",
                        params![shed_chunk(stats.rows())],
                    )?;
                    stats.shed_total.fetch_add(shed, Ordering::Relaxed);
                    *unreported_shed += shed;
                    if shed == 0 {
                        // Nothing left to shed: this reading is the one shed.
                        stats.shed_total.fetch_add(1, Ordering::Relaxed);
                        *unreported_shed += 1;
                        return Ok(AppendOutcome::Shed);
                    }
                }
            }
        }
    }
    insert(tx, stats, ev)?;
    if let Some(key) = key {
        let entry = KeyEntry {
            event_id: ev.id,
            body_crc: ev.body_crc,
        };
        keys.insert(tx, key, entry, now_ms())?;
    }
    Ok(AppendOutcome::Stored)
}

/// Deletes the telemetry rows selected by `select_seqs` (bound to `args`).
fn delete_telemetry(
    tx: &Transaction<'_>,
    stats: &OutboxStats,
    select_seqs: &str,
    args: impl rusqlite::Params,
) -> Result<u64, OutboxError> {
    let sql = format!("DELETE FROM events WHERE seq IN ({select_seqs}) RETURNING length(payload)");
    let mut stmt = tx.prepare_cached(&sql)?;
    let mut rows = stmt.query(args)?;
    let mut n = 0u64;
    while let Some(row) = rows.next()? {
        let len: i64 = row.get(0)?;
        n += 1;
        stats.rows.fetch_sub(1, Ordering::Relaxed);
        stats.bytes.fetch_sub(len as u64, Ordering::Relaxed);
    }
    Ok(n)
}

fn delete(tx: &Transaction<'_>, stats: &OutboxStats, ids: &[EventId]) -> Result<u64, OutboxError> {
    let mut stmt = tx.prepare_cached(
        "DELETE FROM events WHERE id = ?1 RETURNING length(payload), kind IN ('storelink.sale','storelink.return','storelink.void')",
    )?;
    let mut n = 0u64;
    for id in ids {
        let mut rows = stmt.query(params![id.0.as_bytes().as_slice()])?;
        while let Some(row) = rows.next()? {
            let len: i64 = row.get(0)?;
            let is_tx: bool = row.get(1)?;
            n += 1;
            stats.rows.fetch_sub(1, Ordering::Relaxed);
            stats.bytes.fetch_sub(len as u64, Ordering::Relaxed);
            if is_tx {
                stats.pending_transactions.fetch_sub(1, Ordering::Relaxed);
            }
        }
    }
    Ok(n)
}

/// Gives row `seq` back the id its intact payload carries, so the receipt
/// naming that id deletes it.
fn repair_id(
    tx: &Transaction<'_>,
    stats: &OutboxStats,
    seq: i64,
    id: EventId,
) -> Result<bool, OutboxError> {
    let changed = tx.execute(
        "UPDATE events SET id = ?1 WHERE seq = ?2",
        params![id.0.as_bytes().as_slice(), seq],
    )?;
    if changed > 0 {
        stats.ids_repaired_total.fetch_add(1, Ordering::Relaxed);
        tracing::error!(seq, event = %id, "a stored event's id column was damaged; rewritten from its payload");
    }
    Ok(changed > 0)
}

fn quarantine(
    tx: &Transaction<'_>,
    store: &StoreIdentity,
    stats: &OutboxStats,
    seq: i64,
    reason: &str,
) -> Result<(), OutboxError> {
    let moved = tx.execute(
        "INSERT INTO quarantine (seq, id, payload, reason, at_ms)
         SELECT seq, id, payload, ?2, ?3 FROM events WHERE seq = ?1",
        params![seq, reason, now_ms()],
    )?;
    let removed: Option<(i64, bool)> = tx
        .query_row(
            "DELETE FROM events WHERE seq = ?1 RETURNING length(payload), kind IN ('storelink.sale','storelink.return','storelink.void')",
            params![seq],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .optional()?;
    if let Some((len, is_tx)) = removed {
        stats.rows.fetch_sub(1, Ordering::Relaxed);
        stats.bytes.fetch_sub(len as u64, Ordering::Relaxed);
        if is_tx {
            stats.pending_transactions.fetch_sub(1, Ordering::Relaxed);
        }
    }
    if moved > 0 {
        stats.quarantined_total.fetch_add(1, Ordering::Relaxed);
        tracing::error!(
            seq,
            reason,
            "stored event failed its integrity check; quarantined"
        );
        let notice = AgentNotice {
            code: NoticeCode::OutboxCorruptEvents,
            message: format!(
                "event at outbox seq {seq} failed its integrity check ({reason}) and was quarantined"
            ),
            count: 1,
        };
        insert(
            tx,
            stats,
            &PreparedEvent::new(&notice_envelope(store, notice)),
        )?;
    }
    Ok(())
}
