//! Recovering the intact events of a damaged outbox that was set aside.
//!
//! A file set aside at open (`recovery.rs`) may still hold thousands of
//! acknowledged sales on pages the damage never touched: a torn write on an
//! SD card spoils a page or two, a truncation the tail. Each of them was
//! promised to reach Kafka, so before the set-aside file is reported the
//! writer copies whatever can still be read into the fresh outbox:
//!
//! * The damaged file is opened **read-only**: its bytes stay as they were
//!   found, for whoever inspects it later.
//! * Tables are read in rowid order, and a region SQLite cannot read (a
//!   corrupt or missing page) is stepped over: the next readable rowid is
//!   searched one by one for a while (a few pages' rows, so a good page
//!   between two bad ones is not jumped), then by doubling and bisecting,
//!   so one bad page costs the rows on it, not the rest of the file.
//! * An event is copied only if its payload matches its stored checksum,
//!   under the id its payload carries; a row that does not match goes to
//!   `quarantine` with the reason, as a checksum failure at send time does.
//! * Events are appended in their old `seq` order with their original
//!   `created_ms`, in transactions of [`CHUNK`] rows, each recording in
//!   `salvage_progress` the next `seq` to read: a salvage cut short (a crash,
//!   a full disk) resumes there at the next start and copies nothing twice,
//!   not even what was delivered meanwhile. An event whose id is already in
//!   the outbox is not copied again either.
//! * Idempotency keys come along for the events in the outbox, so a
//!   terminal retrying a recovered sale gets its original id instead of
//!   storing a second sale. The key of an event not found is not kept: its
//!   sale may have been lost with its page, and a terminal replaying its
//!   journal must then store it again (a second copy of a sale delivered
//!   long ago is removed downstream by its natural key; a lost sale could
//!   not be brought back).
//! * A file that cannot be opened for the machine's sake (a lock, an I/O
//!   error, permissions) is left for the next start, like a disk without
//!   room for the copy; only a file SQLite cannot read at all is given up.
//!
//! Salvage runs at open, before the store takes traffic, so the recovered
//! events precede every new one. A file set aside by an earlier start
//! whose report was cut short is salvaged at the next open, after whatever
//! that start stored.

use std::path::Path;
use std::sync::atomic::Ordering;

use protocol::{EventId, EventKind};
use rusqlite::{params, Connection, OptionalExtension, Row, Statement};

use super::keys::{KeyEntry, KeyIndex};
use super::schema::with_read_only;
use super::{payload_id, priority_of, sidecars, OutboxError, OutboxStats};

/// Rows copied per transaction of the fresh outbox.
pub(crate) const CHUNK: usize = 1000;

/// What a salvage found and copied.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Salvage {
    /// Events copied into the outbox, to be delivered.
    pub recovered: u64,
    /// Intact events whose id the outbox already held (an earlier salvage).
    pub already_present: u64,
    /// Rows whose payload failed its checksum, kept in `quarantine`.
    pub quarantined: u64,
    /// Idempotency keys copied.
    pub keys: u64,
    /// Regions of the file SQLite could not read; their rows are lost.
    pub unreadable_regions: u64,
    /// Why the events could not be read at all, if they could not.
    pub unreadable: Option<String>,
    /// Why copying stopped before the end (the fresh outbox refused a write,
    /// or the disk lacks room for it); the next start tries again.
    pub interrupted: Option<String>,
}

impl Salvage {
    /// One sentence for the recovery notice and the log.
    pub fn summary(&self) -> String {
        if let Some(why) = &self.unreadable {
            return format!("no events could be read from it ({why})");
        }
        let mut s = format!(
            "{} recovered from it and queued for delivery",
            count(self.recovered, "event")
        );
        // Only what happened: a clause whose count is zero is left out.
        for (n, what, clause) in [
            (self.already_present, "event", "already in the outbox"),
            (
                self.quarantined,
                "event",
                "failed the checksum and quarantined",
            ),
            (
                self.unreadable_regions,
                "unreadable region",
                "skipped (events there are lost)",
            ),
            (self.keys, "idempotency key", "kept"),
        ] {
            if n > 0 {
                s += &format!(", {} {clause}", count(n, what));
            }
        }
        if let Some(why) = &self.interrupted {
            s += &format!("; recovery stopped early ({why}) and resumes at the next start");
        }
        s
    }

    /// The file could not be read: given up if that is the file's fault,
    /// left for the next start if it is the machine's (a lock, an I/O
    /// error, permissions).
    fn set_unreadable(&mut self, e: rusqlite::Error) {
        if super::recovery::is_environmental(&e) {
            self.interrupted = Some(format!("cannot read it now: {e}"));
        } else {
            self.unreadable = Some(e.to_string());
        }
    }
}

fn count(n: u64, what: &str) -> String {
    if n == 1 {
        format!("1 {what}")
    } else {
        format!("{n} {what}s")
    }
}

/// Copies what can be read of the damaged database `aside` into `dest`.
/// `reserve_bytes` is the free space the outbox keeps for itself: a salvage
/// that would eat into it is not started (the store must keep selling).
pub(crate) fn salvage(
    aside: &Path,
    dest: &mut Connection,
    stats: &OutboxStats,
    keys: &mut KeyIndex,
    reserve_bytes: u64,
) -> Salvage {
    let mut out = Salvage::default();
    if let Err(why) = room_for(aside, reserve_bytes) {
        out.interrupted = Some(why);
        return out;
    }
    // The set-aside file's name: unique per damage (it carries the stamp).
    let source = aside
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    if let Err(e) = with_read_only(aside, |src| {
        copy_from(src, dest, stats, keys, &source, &mut out)
    }) {
        out.set_unreadable(e);
    }
    out
}

fn copy_from(
    src: &Connection,
    dest: &mut Connection,
    stats: &OutboxStats,
    keys: &mut KeyIndex,
    source: &str,
    out: &mut Salvage,
) {
    // Without it SQLite refuses a file shorter than its header says (a
    // truncation) as a whole; with it, the pages that are there are read,
    // and the missing ones fail as damaged regions. The connection is
    // read-only, so nothing can be written through it.
    if let Err(e) = src.pragma_update(None, "writable_schema", true) {
        tracing::warn!(error = %e, "salvage: cannot relax the schema checks; a truncated file may read as nothing");
    }
    let resume = match dest
        .query_row(
            "SELECT next_seq FROM salvage_progress WHERE source = ?1",
            [source],
            |r| r.get::<_, i64>(0),
        )
        .optional()
    {
        Ok(next) => next.unwrap_or(0),
        Err(e) => {
            out.interrupted = Some(e.to_string());
            return;
        }
    };
    let mut pending: Vec<SourceEvent> = Vec::with_capacity(CHUNK);
    // `i64::MAX` marks the events read to their end (a row at exactly that
    // rowid, in a hostile file, would otherwise be read again).
    let events = if resume == i64::MAX {
        Ok(Scanned::Read { skipped: 0 })
    } else {
        scan(
            src,
            resume,
            "SELECT seq, id, kind, device_id, payload, crc32, created_ms
         FROM events WHERE seq >= ?1 ORDER BY seq LIMIT ?2",
            &mut |visit| match visit {
                Visit::Row(row, next) => {
                    pending.push(SourceEvent::read(row));
                    if pending.len() >= CHUNK {
                        copy_events(dest, stats, &mut pending, source, next, out)?;
                    }
                    Ok(())
                }
                // Committed at once: a restart does not search the region again.
                Visit::Skipped { resume } => {
                    copy_events(dest, stats, &mut pending, source, resume, out)
                }
            },
        )
    };
    match events {
        Ok(Scanned::Read { skipped }) => {
            out.unreadable_regions = skipped;
            // The rest, and the progress past the end (`i64::MAX`): a
            // repeat of this salvage copies no event again.
            if let Err(e) = copy_events(dest, stats, &mut pending, source, i64::MAX, out) {
                out.interrupted = Some(e.to_string());
                return;
            }
        }
        Ok(Scanned::Stopped { at, error }) => {
            out.interrupted = Some(format!("cannot read it now: {error}"));
            if let Err(e) = copy_events(dest, stats, &mut pending, source, at, out) {
                tracing::warn!(error = %e, "salvage: could not keep what was read before it stopped");
            }
            return;
        }
        Ok(Scanned::Unreadable(e)) => {
            out.set_unreadable(e);
            return;
        }
        Err(e) => {
            out.interrupted = Some(e.to_string());
            return;
        }
    }
    let mut pending_keys: Vec<(Box<str>, KeyEntry, i64)> = Vec::with_capacity(CHUNK);
    let copied = scan(
        src,
        0,
        "SELECT rowid, key, event_id, body_crc, created_ms
         FROM idempotency_keys WHERE rowid >= ?1 ORDER BY rowid LIMIT ?2",
        &mut |visit| {
            if let Visit::Row(row, _) = visit {
                if let Some((key, entry, created_ms)) = read_key(row) {
                    if keys.get(&key).is_none() && in_outbox(dest, entry.event_id)? {
                        pending_keys.push((key, entry, created_ms));
                    }
                }
            }
            if pending_keys.len() >= CHUNK {
                out.keys += copy_keys(dest, keys, &mut pending_keys)?;
            }
            Ok(())
        },
    )
    .and_then(|scanned| {
        out.keys += copy_keys(dest, keys, &mut pending_keys)?;
        Ok(scanned)
    });
    match copied {
        // Lost keys cost at most a second copy of a retried sale, which
        // downstream removes by its natural key: not worth a notice line.
        Ok(Scanned::Read { skipped }) if skipped > 0 => {
            tracing::warn!(skipped, "salvage: some idempotency keys were unreadable")
        }
        Ok(Scanned::Read { .. }) => {}
        Ok(Scanned::Unreadable(e)) => {
            tracing::warn!(error = %e, "salvage: the idempotency keys were unreadable")
        }
        // The keys pass runs again at the next start (events are done).
        Ok(Scanned::Stopped { error, .. }) => {
            out.interrupted = Some(format!("cannot read its idempotency keys now: {error}"))
        }
        Err(e) => out.interrupted = Some(e.to_string()),
    }
}

/// Whether the outbox holds an event with this id.
fn in_outbox(dest: &Connection, id: EventId) -> Result<bool, OutboxError> {
    Ok(dest
        .prepare_cached("SELECT 1 FROM events WHERE id = ?1")?
        .exists([id.0.as_bytes().as_slice()])?)
}

/// The copy needs about the damaged file's size in free space, on top of
/// the reserve the outbox keeps for itself.
fn room_for(aside: &Path, reserve_bytes: u64) -> Result<(), String> {
    let [wal, _shm] = sidecars(aside);
    let size = |p: &Path| std::fs::metadata(p).map(|m| m.len()).unwrap_or(0);
    let needed = size(aside) + size(&wal) + reserve_bytes;
    let Some(available) = free_bytes(aside) else {
        // Not knowing is no reason to leave the events where they are: the
        // copy fails cleanly on a full disk anyway.
        return Ok(());
    };
    if available < needed {
        return Err(format!(
            "it needs about {} MB of free disk space, {} MB are free",
            needed.div_ceil(1 << 20),
            available >> 20
        ));
    }
    Ok(())
}

fn free_bytes(path: &Path) -> Option<u64> {
    #[cfg(test)]
    if let Some(pretend) = tests::FREE_BYTES.with(|f| f.get()) {
        return Some(pretend);
    }
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let fs = rustix::fs::statvfs(dir).ok()?;
    Some(fs.f_bavail.saturating_mul(fs.f_frsize))
}

/// How a table read ended.
enum Scanned {
    /// Read to its end, stepping over `skipped` unreadable regions.
    Read { skipped: u64 },
    /// Stopped at rowid `at` by the machine, not the file (a lock, memory,
    /// permissions): every row before `at` was handed on.
    Stopped { at: i64, error: rusqlite::Error },
    /// Not even the query could be prepared (the schema is unreadable).
    Unreadable(rusqlite::Error),
}

/// What [`scan`] hands on.
enum Visit<'r, 's> {
    /// A row, with the rowid the scan reads from next.
    Row(&'r Row<'s>, i64),
    /// An unreadable region was stepped over; reading resumes at `resume`
    /// (`i64::MAX`: nothing after it reads).
    Skipped { resume: i64 },
}

type Each<'a> = dyn FnMut(Visit<'_, '_>) -> Result<(), OutboxError> + 'a;

enum ScanError {
    /// The file failed a read.
    Source(rusqlite::Error),
    /// The fresh outbox refused a write: stop.
    Destination(OutboxError),
}

/// A failed read says the file is damaged, unless the machine is the
/// cause. An I/O error counts as damage (a bad sector stays bad) once it
/// repeats, so a salvage is never held up for ever by one sector.
fn is_machine(e: &rusqlite::Error) -> bool {
    super::recovery::is_environmental(e)
        && e.sqlite_error_code() != Some(rusqlite::ErrorCode::SystemIoFailure)
}

/// Reads every row of `sql` (which selects rowid first, takes `rowid >= ?1`
/// and `LIMIT ?2`) from rowid `from` on, in rowid order, handing each to
/// `each`, and steps over regions that fail to read. `each` failing stops
/// the scan with its error.
///
/// `>=`, not `>`: SQLite seeks `rowid > p` by first landing on `p`, so a
/// probe past the last row of a damaged page would still read that page,
/// and the first good row after it would be skipped.
fn scan(
    src: &Connection,
    from: i64,
    sql: &str,
    each: &mut Each<'_>,
) -> Result<Scanned, OutboxError> {
    let mut stmt = match src.prepare(sql) {
        Ok(s) => s,
        Err(e) if is_machine(&e) => return Ok(Scanned::Stopped { at: from, error: e }),
        Err(e) => return Ok(Scanned::Unreadable(e)),
    };
    let mut from = Some(from);
    let mut skipped = 0u64;
    let mut retried_at = None;
    while let Some(start) = from {
        match read_chunk(&mut stmt, start, each) {
            Ok(next) => from = next,
            Err((_, ScanError::Destination(e))) => return Err(e),
            Err((at, ScanError::Source(error))) if is_machine(&error) => {
                return Ok(Scanned::Stopped { at, error });
            }
            Err((at, ScanError::Source(e)))
                if e.sqlite_error_code() == Some(rusqlite::ErrorCode::SystemIoFailure)
                    && retried_at != Some(at) =>
            {
                tracing::warn!(rowid = at, error = %e, "salvage: an I/O error; reading again once");
                retried_at = Some(at);
                // From where it failed: the rows before were handed on.
                from = Some(at);
                std::thread::sleep(std::time::Duration::from_millis(200));
            }
            Err((failed_at, ScanError::Source(e))) => {
                skipped += 1;
                let resume = match next_readable(&mut stmt, failed_at) {
                    Ok(resume) => resume,
                    Err(error) => {
                        return Ok(Scanned::Stopped {
                            at: failed_at,
                            error,
                        })
                    }
                };
                tracing::warn!(from_rowid = failed_at, ?resume, error = %e,
                    "salvage: an unreadable region of the damaged outbox is skipped");
                each(Visit::Skipped {
                    resume: resume.unwrap_or(i64::MAX),
                })?;
                from = resume;
            }
        }
    }
    Ok(Scanned::Read { skipped })
}

/// Reads up to [`CHUNK`] rows from rowid `from` on, handing each on. Ok:
/// where the next chunk starts, `None` at the end. Err: the rowid reading
/// failed at (every row before it was handed on), and why.
fn read_chunk(
    stmt: &mut Statement<'_>,
    mut from: i64,
    each: &mut Each<'_>,
) -> Result<Option<i64>, (i64, ScanError)> {
    let mut rows = stmt
        .query(params![from, CHUNK as i64])
        .map_err(|e| (from, ScanError::Source(e)))?;
    let mut n = 0;
    while let Some(row) = rows.next().map_err(|e| (from, ScanError::Source(e)))? {
        let rowid: i64 = row.get(0).map_err(|e| (from, ScanError::Source(e)))?;
        // A damaged interior page can point backwards; never loop on it.
        if rowid < from {
            let e = rusqlite::Error::SqliteFailure(
                rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_CORRUPT),
                Some(format!("rowid {rowid} read when seeking {from}")),
            );
            return Err((from, ScanError::Source(e)));
        }
        let next = rowid.checked_add(1);
        each(Visit::Row(row, next.unwrap_or(i64::MAX)))
            .map_err(|e| (from, ScanError::Destination(e)))?;
        n += 1;
        match next {
            Some(next) => from = next,
            None => return Ok(None),
        }
    }
    Ok((n == CHUNK).then_some(from))
}

/// Rowids probed one by one after a failure before the search doubles: a
/// few pages' worth, so a readable page between two damaged ones is found…
const PROBE_ONE_BY_ONE: i64 = 4096;
/// … unless the probes are slow (a failing card answering each read with
/// an I/O error after a long retry): then the search doubles sooner.
const PROBE_ONE_BY_ONE_FOR: std::time::Duration = std::time::Duration::from_secs(2);

/// The smallest rowid `p > failed` from which reading works again (the
/// first row at or after `p` reads, or there is none): probed one by one
/// (see [`PROBE_ONE_BY_ONE`]), then by doubling the step (up to `i64::MAX`)
/// and bisecting; `None` if nothing after `failed` reads. A probe refused
/// by the machine rather than the file ends the search with its error.
///
/// A search that met I/O errors is made again after a pause and the
/// nearer answer kept: a card reader resetting for a moment must not make
/// the search jump over readable rows, or give the rest of the file up.
fn next_readable(stmt: &mut Statement<'_>, failed: i64) -> Result<Option<i64>, rusqlite::Error> {
    let (first, met_io_errors) = search_readable(stmt, failed)?;
    if !met_io_errors {
        return Ok(first);
    }
    std::thread::sleep(std::time::Duration::from_secs(1));
    let (second, _) = search_readable(stmt, failed)?;
    Ok(match (first, second) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    })
}

/// One search of [`next_readable`]; also says whether a probe failed with
/// an I/O error.
fn search_readable(
    stmt: &mut Statement<'_>,
    failed: i64,
) -> Result<(Option<i64>, bool), rusqlite::Error> {
    let mut met_io_errors = false;
    let mut reads_from = |p: i64| match stmt
        .query(params![p, 1])
        .and_then(|mut rows| rows.next().map(|_| ()))
    {
        Ok(()) => Ok(true),
        Err(e) if is_machine(&e) => Err(e),
        Err(e) => {
            met_io_errors |= e.sqlite_error_code() == Some(rusqlite::ErrorCode::SystemIoFailure);
            Ok(false)
        }
    };
    let started = std::time::Instant::now();
    let mut failing = failed;
    let mut found = None;
    for _ in 0..PROBE_ONE_BY_ONE {
        let Some(p) = failing.checked_add(1) else {
            break;
        };
        if reads_from(p)? {
            found = Some(p);
            break;
        }
        failing = p;
        if started.elapsed() > PROBE_ONE_BY_ONE_FOR {
            break;
        }
    }
    if found.is_none() && failing < i64::MAX {
        let mut step = 2i64;
        loop {
            let p = failing.saturating_add(step);
            if reads_from(p)? {
                let mut working = p;
                while working - failing > 1 {
                    let mid = failing + (working - failing) / 2;
                    if reads_from(mid)? {
                        working = mid;
                    } else {
                        failing = mid;
                    }
                }
                found = Some(working);
                break;
            }
            if p == i64::MAX {
                break;
            }
            failing = p;
            step = step.saturating_mul(2);
        }
    }
    Ok((found, met_io_errors))
}

/// An `events` row of the damaged file, as far as it could be read.
struct SourceEvent {
    seq: i64,
    id: Option<EventId>,
    kind: Option<EventKind>,
    device_id: String,
    payload: Option<Vec<u8>>,
    crc_ok: bool,
    created_ms: i64,
}

impl SourceEvent {
    fn read(row: &Row<'_>) -> SourceEvent {
        let bytes = |i: usize| row.get_ref(i).ok().and_then(|v| v.as_bytes().ok());
        let payload = bytes(4).map(<[u8]>::to_vec);
        let crc = row.get_ref(5).ok().and_then(|v| v.as_i64().ok());
        let crc_ok =
            matches!((&payload, crc), (Some(p), Some(c)) if i64::from(crc32fast::hash(p)) == c);
        // An intact payload names its own id; the column is the fallback.
        let id = payload.as_deref().and_then(payload_id).or_else(|| {
            bytes(1)
                .and_then(|b| uuid::Uuid::from_slice(b).ok())
                .map(EventId)
        });
        SourceEvent {
            seq: row.get(0).unwrap_or_default(),
            id,
            kind: bytes(2)
                .and_then(|b| std::str::from_utf8(b).ok())
                .and_then(EventKind::from_schema_name),
            device_id: bytes(3)
                .map(|b| String::from_utf8_lossy(b).into_owned())
                .unwrap_or_default(),
            payload,
            crc_ok,
            created_ms: row
                .get_ref(6)
                .ok()
                .and_then(|v| v.as_i64().ok())
                .unwrap_or_else(|| chrono::Utc::now().timestamp_millis()),
        }
    }

    /// Why this row cannot be delivered, if it cannot.
    fn damage(&self) -> Option<&'static str> {
        if self.payload.is_none() || !self.crc_ok {
            Some("crc32 mismatch in a damaged outbox set aside")
        } else if self.id.is_none() {
            Some("unreadable id in a damaged outbox set aside")
        } else if self.kind.is_none() {
            Some("unreadable kind in a damaged outbox set aside")
        } else {
            None
        }
    }
}

/// Appends `pending` in one transaction, with the progress `next_seq`;
/// counts only once it committed.
fn copy_events(
    dest: &mut Connection,
    stats: &OutboxStats,
    pending: &mut Vec<SourceEvent>,
    source: &str,
    next_seq: i64,
    out: &mut Salvage,
) -> Result<(), OutboxError> {
    #[cfg(test)]
    if tests::FAIL_COPIES_AFTER.with(|f| f.get()) == Some(out.recovered) {
        return Err(OutboxError::CommitFailed(
            "a failure injected by a test".into(),
        ));
    }
    let now_ms = chrono::Utc::now().timestamp_millis();
    let tx = dest.transaction()?;
    let (mut recovered, mut present, mut quarantined) = (Vec::new(), 0u64, 0u64);
    for ev in pending.iter() {
        let (Some(id), Some(kind), Some(payload), None) =
            (ev.id, ev.kind, &ev.payload, ev.damage())
        else {
            tx.prepare_cached(
                "INSERT INTO quarantine (seq, id, payload, reason, at_ms) VALUES (?1, ?2, ?3, ?4, ?5)",
            )?
            .execute(params![
                ev.seq,
                ev.id.map(|id| id.0.as_bytes().to_vec()),
                ev.payload,
                ev.damage().unwrap_or("damaged"),
                now_ms
            ])?;
            quarantined += 1;
            continue;
        };
        let inserted = tx
            .prepare_cached(
                "INSERT OR IGNORE INTO events (id, kind, priority, device_id, payload, crc32, created_ms)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
            )?
            .execute(params![
                id.0.as_bytes().as_slice(),
                kind.schema_name(),
                priority_of(kind),
                ev.device_id,
                payload,
                i64::from(crc32fast::hash(payload)),
                ev.created_ms,
            ])?;
        if inserted == 1 {
            recovered.push((kind, payload.len() as u64));
        } else {
            present += 1;
        }
    }
    tx.prepare_cached(
        "INSERT INTO salvage_progress (source, next_seq) VALUES (?1, ?2)
         ON CONFLICT (source) DO UPDATE SET next_seq = excluded.next_seq",
    )?
    .execute(params![source, next_seq])?;
    tx.commit()?;
    for (kind, len) in &recovered {
        stats.count_added(*kind, *len);
    }
    stats
        .quarantined_total
        .fetch_add(quarantined, Ordering::Relaxed);
    stats
        .salvaged_total
        .fetch_add(recovered.len() as u64, Ordering::Relaxed);
    out.recovered += recovered.len() as u64;
    out.already_present += present;
    out.quarantined += quarantined;
    pending.clear();
    Ok(())
}

fn read_key(row: &Row<'_>) -> Option<(Box<str>, KeyEntry, i64)> {
    let key = std::str::from_utf8(row.get_ref(1).ok()?.as_bytes().ok()?).ok()?;
    let id = uuid::Uuid::from_slice(row.get_ref(2).ok()?.as_bytes().ok()?).ok()?;
    let crc = row.get_ref(3).ok()?.as_i64().ok()?;
    let created_ms = row.get_ref(4).ok()?.as_i64().ok()?;
    Some((
        key.into(),
        KeyEntry {
            event_id: EventId(id),
            body_crc: crc as u32,
        },
        created_ms,
    ))
}

/// Appends `pending` keys in one transaction, then remembers them.
fn copy_keys(
    dest: &mut Connection,
    keys: &mut KeyIndex,
    pending: &mut Vec<(Box<str>, KeyEntry, i64)>,
) -> Result<u64, OutboxError> {
    if pending.is_empty() {
        return Ok(0);
    }
    let tx = dest.transaction()?;
    for (key, entry, created_ms) in pending.iter() {
        tx.prepare_cached(
            "INSERT INTO idempotency_keys (key, event_id, body_crc, created_ms) VALUES (?1, ?2, ?3, ?4)",
        )?
        .execute(params![
            &**key,
            entry.event_id.0.as_bytes().as_slice(),
            i64::from(entry.body_crc),
            created_ms
        ])?;
    }
    tx.commit()?;
    let n = pending.len() as u64;
    for (key, entry, _) in pending.drain(..) {
        keys.adopt(key, entry);
    }
    Ok(n)
}

#[cfg(test)]
pub(crate) mod tests {
    use std::cell::Cell;

    use super::*;

    thread_local! {
        /// Free space a test pretends the disk has (salvage runs in
        /// `Outbox::open`, on the test's own thread).
        pub(crate) static FREE_BYTES: Cell<Option<u64>> = const { Cell::new(None) };
        /// A copy fails once this many events were recovered.
        pub(crate) static FAIL_COPIES_AFTER: Cell<Option<u64>> = const { Cell::new(None) };
    }

    #[test]
    fn a_scan_reads_every_row_across_chunks_in_rowid_order() {
        let conn = Connection::open_in_memory().expect("db");
        conn.execute_batch("CREATE TABLE t (v INTEGER)")
            .expect("table");
        let rows = 2 * CHUNK as i64 + 17;
        for v in 0..rows {
            conn.execute("INSERT INTO t (rowid, v) VALUES (?1, ?1)", [v * 3 - 5])
                .expect("insert");
        }
        let mut seen = Vec::new();
        let scanned = scan(
            &conn,
            i64::MIN,
            "SELECT rowid, v FROM t WHERE rowid >= ?1 ORDER BY rowid LIMIT ?2",
            &mut |visit| {
                if let Visit::Row(row, _) = visit {
                    seen.push(row.get::<_, i64>(1).expect("v"));
                }
                Ok(())
            },
        )
        .expect("scan");
        assert!(matches!(scanned, Scanned::Read { skipped: 0 }));
        assert_eq!(seen, (0..rows).map(|v| v * 3 - 5).collect::<Vec<_>>());
    }

    #[test]
    fn a_copy_larger_than_the_free_space_is_not_started() {
        let dir = tempfile::tempdir().expect("tmp");
        let aside = dir.path().join("outbox.db.damaged-x");
        std::fs::write(&aside, b"SQLite format 3\0").expect("write");
        let why = room_for(&aside, u64::MAX / 4).expect_err("no disk is that large");
        assert!(why.contains("MB of free disk space"), "{why}");
        room_for(&aside, 0).expect("a few bytes fit");
    }
}
