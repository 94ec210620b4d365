//! Idempotency keys of transactions: `(terminal, business day, sequence
//! number)` → the event first stored under it.
//!
//! The table is append-only in time order (rowid = insertion order, no
//! index), so a commit touches only its last page; a B-tree keyed by the
//! terminal key would dirty one leaf per terminal per commit and multiply
//! the WAL written by the group commit. Lookups go to an in-memory map
//! rebuilt from the table at start. Keys are kept [`KEY_RETENTION`]; a store
//! records tens of thousands of transactions a day, so the map stays a few
//! megabytes.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use protocol::EventId;
use rusqlite::{params, Connection, Transaction};

/// Longer than any event stays undelivered in practice, and long enough that
/// a terminal replaying last week's journal is recognised.
pub(crate) const KEY_RETENTION: Duration = Duration::from_secs(7 * 24 * 3600);
/// At most this many keys are remembered (~40 MB); beyond it the oldest are
/// forgotten early. A store records far fewer in a week; the cap only keeps
/// a runaway terminal from growing the agent without bound. A re-post of a
/// forgotten key is stored again, and downstream de-duplicates on the
/// natural key (store, terminal, business day, sequence number).
pub(crate) const MAX_KEYS: usize = 500_000;
/// A difference between the wall clock's and the monotonic clock's progress
/// beyond this, between two housekeeping passes, is a step of the wall clock
/// (NTP correcting a box that booted with a wrong clock), not drift.
const CLOCK_STEP: Duration = Duration::from_secs(60);
/// The most keys one housekeeping pass forgets (some 100 ms of the writer's
/// time): more than the writer can store between two passes.
const MAX_PRUNE_STEP: usize = 200_000;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct KeyEntry {
    pub event_id: EventId,
    pub body_crc: u32,
}

/// foldhash, randomly seeded per process: the writer hashes every sale's key
/// (twice with the staging map), and SipHash showed in its profile. Keys
/// come from terminals, so the seed stays random.
type KeyMap = HashMap<Box<str>, KeyEntry, foldhash::fast::RandomState>;

/// Committed keys, plus the ones written by the group commit in progress
/// (visible to later requests of the same group, dropped if it fails).
#[derive(Default)]
pub(crate) struct KeyIndex {
    committed: KeyMap,
    staged: KeyMap,
    /// Rowids of the keys this run stored, first and newest: only they
    /// carry this run's wall clock. Keys loaded at start were stamped by
    /// another run's clock, right or wrong, and are never shifted.
    run_rowids: Option<(i64, i64)>,
    /// The last housekeeping pass: both clocks' readings and the newest key
    /// this run had stored by then.
    last_pass: Option<ClockMark>,
}

#[derive(Debug, Clone, Copy)]
struct ClockMark {
    wall_ms: i64,
    monotonic: Instant,
    newest_rowid: Option<i64>,
}

fn event_id(bytes: &[u8]) -> EventId {
    uuid::Uuid::from_slice(bytes)
        .map(EventId)
        .unwrap_or(EventId(uuid::Uuid::nil()))
}

impl KeyIndex {
    pub(crate) fn load(conn: &Connection) -> Result<KeyIndex, rusqlite::Error> {
        let mut index = KeyIndex::default();
        let mut stmt = conn.prepare("SELECT key, event_id, body_crc FROM idempotency_keys")?;
        let mut rows = stmt.query([])?;
        // A row damaged on disk in a way SQLite's own check lets pass (a
        // flipped bit turning the key's TEXT into a BLOB, or into invalid
        // UTF-8) is skipped, not a reason to refuse to start: the agent
        // must not crash-loop on its storage, and a lost key costs at most
        // a second copy of that one sale if its terminal retries.
        let mut skipped = 0u64;
        while let Some(row) = rows.next()? {
            let decoded = (|| {
                let key = std::str::from_utf8(row.get_ref(0).ok()?.as_bytes().ok()?).ok()?;
                let id = row.get_ref(1).ok()?.as_bytes().ok()?;
                let crc = row.get_ref(2).ok()?.as_i64().ok()?;
                Some((key.into(), event_id(id), crc))
            })();
            match decoded {
                Some((key, event_id, crc)) => {
                    index.committed.insert(
                        key,
                        KeyEntry {
                            event_id,
                            body_crc: crc as u32,
                        },
                    );
                }
                None => skipped += 1,
            }
        }
        if skipped > 0 {
            tracing::warn!(
                skipped,
                "idempotency keys damaged on disk were skipped; a retry of those sales may be stored twice"
            );
        }
        Ok(index)
    }

    pub(crate) fn get(&self, key: &str) -> Option<KeyEntry> {
        self.staged
            .get(key)
            .or_else(|| self.committed.get(key))
            .copied()
    }

    /// Writes a key in the open transaction and stages it.
    pub(crate) fn insert(
        &mut self,
        tx: &Transaction<'_>,
        key: &str,
        entry: KeyEntry,
        now_ms: i64,
    ) -> Result<(), rusqlite::Error> {
        tx.prepare_cached(
            "INSERT INTO idempotency_keys (key, event_id, body_crc, created_ms) VALUES (?1, ?2, ?3, ?4)",
        )?
        .execute(params![
            key,
            entry.event_id.0.as_bytes().as_slice(),
            i64::from(entry.body_crc),
            now_ms
        ])?;
        let rowid = tx.last_insert_rowid();
        let first = self.run_rowids.map_or(rowid, |(first, _)| first.min(rowid));
        self.run_rowids = Some((first, rowid));
        self.staged.insert(key.into(), entry);
        Ok(())
    }

    /// A key copied from a damaged outbox and committed (`salvage.rs`):
    /// remembered as if it had been loaded at start.
    pub(crate) fn adopt(&mut self, key: Box<str>, entry: KeyEntry) {
        self.committed.insert(key, entry);
    }

    /// The group committed: staged keys become permanent.
    pub(crate) fn commit(&mut self) {
        self.committed.extend(self.staged.drain());
    }

    /// The group failed: nothing it staged exists on disk.
    pub(crate) fn discard(&mut self) {
        self.staged.clear();
    }

    pub(crate) fn len(&self) -> usize {
        self.committed.len()
    }

    /// A housekeeping pass: keeps key ages true across a wall-clock step,
    /// then forgets the keys past [`KEY_RETENTION`] (see [`Self::prune`]).
    ///
    /// Keys are stamped with the wall clock, and a step forward of a week
    /// (a box that booted with a stale clock, then met NTP) would otherwise
    /// forget every key at once, so a terminal's retry of a sale made
    /// minutes ago would be stored a second time. A step found here (the
    /// wall clock moved more than [`CLOCK_STEP`] further than the monotonic
    /// one since the last pass) moves the stamps of the keys this run stored
    /// before the last pass by the same amount. Keys stored since then may
    /// predate the step or not, and are left as they are; so are keys from
    /// earlier runs, and a step while the agent was not running cannot be
    /// seen.
    pub(crate) fn housekeep(
        &mut self,
        conn: &Connection,
        wall_ms: i64,
        monotonic: Instant,
    ) -> Result<usize, rusqlite::Error> {
        if let Some(last) = self.last_pass {
            let wall = wall_ms.saturating_sub(last.wall_ms);
            let elapsed = i64::try_from(
                monotonic
                    .saturating_duration_since(last.monotonic)
                    .as_millis(),
            )
            .unwrap_or(i64::MAX);
            let step = wall.saturating_sub(elapsed);
            if let (true, Some((first, _)), Some(newest)) = (
                step.unsigned_abs() > CLOCK_STEP.as_millis() as u64,
                self.run_rowids,
                last.newest_rowid,
            ) {
                let moved = conn
                    .prepare_cached(
                        "UPDATE idempotency_keys SET created_ms = created_ms + ?1
                         WHERE rowid BETWEEN ?2 AND ?3",
                    )?
                    .execute(params![step, first, newest])?;
                tracing::warn!(
                    step_ms = step,
                    keys = moved,
                    "the wall clock stepped; idempotency keys keep their true age"
                );
            }
        }
        // Marked before pruning: a failed prune must not shift twice.
        self.last_pass = Some(ClockMark {
            wall_ms,
            monotonic,
            newest_rowid: self.run_rowids.map(|(_, newest)| newest),
        });
        let pruned = self.prune(
            conn,
            wall_ms.saturating_sub(KEY_RETENTION.as_millis() as i64),
        )?;
        if self.committed.is_empty() && self.staged.is_empty() {
            // Every key is gone, this run's too; SQLite may hand their
            // rowids out again, to keys of a later clock.
            self.run_rowids = None;
            self.last_pass = None;
        }
        Ok(pruned)
    }

    /// Forgets keys older than the retention, or the oldest beyond
    /// [`MAX_KEYS`], oldest first, in bounded steps.
    pub(crate) fn prune(
        &mut self,
        conn: &Connection,
        cutoff_ms: i64,
    ) -> Result<usize, rusqlite::Error> {
        self.prune_to(conn, cutoff_ms, MAX_KEYS)
    }

    /// A step takes 10,000 expired keys, or everything over the cap (up to
    /// [`MAX_PRUNE_STEP`]): housekeeping runs every few seconds, and a
    /// terminal posting new sales faster than a fixed step forgets would
    /// grow the map without bound.
    fn prune_to(
        &mut self,
        conn: &Connection,
        cutoff_ms: i64,
        max_keys: usize,
    ) -> Result<usize, rusqlite::Error> {
        let over = self.committed.len().saturating_sub(max_keys);
        if over > 0 {
            tracing::warn!(
                over,
                "more idempotency keys than the agent keeps; forgetting the oldest early"
            );
        }
        let mut stmt = conn.prepare_cached(
            "DELETE FROM idempotency_keys WHERE rowid IN
               (SELECT rowid FROM idempotency_keys WHERE created_ms < ?1 OR rowid <=
                  (SELECT min(rowid) + ?2 - 1 FROM idempotency_keys)
                ORDER BY rowid LIMIT ?3)
             RETURNING key",
        )?;
        let step = (over + 10_000).min(MAX_PRUNE_STEP);
        let mut rows = stmt.query(params![cutoff_ms, over as i64, step as i64])?;
        let mut n = 0;
        while let Some(row) = rows.next()? {
            let key: String = row.get(0)?;
            self.committed.remove(key.as_str());
            n += 1;
        }
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expired_keys_are_forgotten_in_insertion_order() {
        let mut conn = Connection::open_in_memory().expect("db");
        for sql in crate::outbox::schema::MIGRATIONS {
            conn.execute_batch(sql).expect("schema");
        }
        let mut keys = KeyIndex::default();
        let tx = conn.transaction().expect("tx");
        for (i, k) in ["a", "b", "c"].iter().enumerate() {
            let entry = KeyEntry {
                event_id: EventId::new_v7(),
                body_crc: 1,
            };
            keys.insert(&tx, k, entry, 1000 + i as i64).expect("insert");
        }
        tx.commit().expect("commit");
        keys.commit();
        assert_eq!(keys.prune(&conn, 1002).expect("prune"), 2);
        assert!(keys.get("a").is_none() && keys.get("b").is_none());
        assert!(keys.get("c").is_some());
        assert_eq!(KeyIndex::load(&conn).expect("load").len(), 1);
    }

    #[test]
    fn one_pass_brings_the_keys_back_under_the_cap() {
        let mut conn = Connection::open_in_memory().expect("db");
        for sql in crate::outbox::schema::MIGRATIONS {
            conn.execute_batch(sql).expect("schema");
        }
        let mut keys = KeyIndex::default();
        let tx = conn.transaction().expect("tx");
        for i in 0..30_000i64 {
            let entry = KeyEntry {
                event_id: EventId::new_v7(),
                body_crc: 1,
            };
            keys.insert(&tx, &format!("pos-01/2026-11-25/{i}"), entry, 1_000 + i)
                .expect("insert");
        }
        tx.commit().expect("commit");
        keys.commit();
        // Nothing expired; 29,000 over a cap of 1,000.
        assert_eq!(keys.prune_to(&conn, 0, 1_000).expect("prune"), 29_000);
        assert_eq!(keys.len(), 1_000);
        assert!(keys.get("pos-01/2026-11-25/28999").is_none());
        assert!(
            keys.get("pos-01/2026-11-25/29000").is_some(),
            "the newest are kept"
        );
        assert_eq!(KeyIndex::load(&conn).expect("load").len(), 1_000);
    }

    #[test]
    fn a_wall_clock_step_neither_forgets_fresh_keys_nor_keeps_old_ones_longer() {
        const DAY: i64 = 24 * 3600 * 1000;
        const HOUR: i64 = 3600 * 1000;
        let mut conn = Connection::open_in_memory().expect("db");
        for sql in crate::outbox::schema::MIGRATIONS {
            conn.execute_batch(sql).expect("schema");
        }
        let store = |keys: &mut KeyIndex, conn: &mut Connection, key: &str, at_ms: i64| {
            let tx = conn.transaction().expect("tx");
            let entry = KeyEntry {
                event_id: EventId::new_v7(),
                body_crc: 1,
            };
            keys.insert(&tx, key, entry, at_ms).expect("insert");
            tx.commit().expect("commit");
            keys.commit();
        };
        let stamp = |conn: &Connection, key: &str| -> i64 {
            conn.query_row(
                "SELECT created_ms FROM idempotency_keys WHERE key = ?1",
                [key],
                |r| r.get(0),
            )
            .expect("stamp")
        };
        // The true time of the step is T. The last run, with a right clock,
        // stored a key an hour before it.
        let t = 1_000 * DAY;
        store(
            &mut KeyIndex::default(),
            &mut conn,
            "previous-run",
            t - HOUR,
        );
        // This run booted with its clock 30 days behind.
        let mut keys = KeyIndex::load(&conn).expect("load");
        let (t0, m0) = (t - 30 * DAY - 5_000, Instant::now());
        store(&mut keys, &mut conn, "before-step", t0);
        assert_eq!(keys.housekeep(&conn, t0, m0).expect("pass"), 0);

        // 5 s later NTP moves the wall clock 30 days ahead: the key is 5 s
        // old, not 30 days; the last run's key keeps its right stamp.
        let (t1, m1) = (t, m0 + Duration::from_secs(5));
        assert_eq!(keys.housekeep(&conn, t1, m1).expect("pass"), 0);
        assert!(keys.get("before-step").is_some(), "a fresh key survives");
        assert_eq!(stamp(&conn, "before-step"), t1 - 5_000);
        assert_eq!(stamp(&conn, "previous-run"), t - HOUR);
        store(&mut keys, &mut conn, "after-step", t1);

        // Each is forgotten a week after it was truly stored.
        let at = |ms: i64| m1 + Duration::from_millis(ms as u64);
        let pass = |keys: &mut KeyIndex, after: i64| {
            keys.housekeep(&conn, t1 + after, at(after)).expect("pass")
        };
        assert_eq!(pass(&mut keys, 6 * DAY), 0);
        assert_eq!(pass(&mut keys, 7 * DAY - HOUR / 2), 1);
        assert!(keys.get("previous-run").is_none());
        assert_eq!(pass(&mut keys, 7 * DAY + HOUR / 2), 2);
        assert_eq!(keys.len(), 0);

        // A step back (a clock that ran ahead, corrected) keeps a week's
        // retention from becoming five weeks.
        let (t2, m2) = (t1 + 8 * DAY, at(8 * DAY));
        store(&mut keys, &mut conn, "ahead", t2);
        assert_eq!(keys.housekeep(&conn, t2, m2).expect("pass"), 0);
        let (t3, m3) = (t2 - 28 * DAY, m2 + Duration::from_secs(5));
        assert_eq!(keys.housekeep(&conn, t3, m3).expect("pass"), 0);
        let eight = Duration::from_secs(8 * 24 * 3600);
        assert_eq!(
            keys.housekeep(&conn, t3 + 8 * DAY, m3 + eight)
                .expect("pass"),
            1
        );
    }

    #[test]
    fn staged_keys_are_visible_until_discarded() {
        let mut conn = Connection::open_in_memory().expect("db");
        for sql in crate::outbox::schema::MIGRATIONS {
            conn.execute_batch(sql).expect("schema");
        }
        let mut keys = KeyIndex::default();
        let tx = conn.transaction().expect("tx");
        keys.insert(
            &tx,
            "k",
            KeyEntry {
                event_id: EventId::new_v7(),
                body_crc: 7,
            },
            1,
        )
        .expect("insert");
        assert!(
            keys.get("k").is_some(),
            "later requests of the same group see it"
        );
        drop(tx);
        keys.discard();
        assert!(
            keys.get("k").is_none(),
            "a failed group leaves no key behind"
        );
    }
}
