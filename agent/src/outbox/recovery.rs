//! Opening the database, and what to do when it is damaged.
//!
//! A store must keep selling even if its outbox file is garbage (a torn
//! write on a cheap SD card, a full disk during a checkpoint, a bad sector).
//! So a file that SQLite cannot open or whose `quick_check` fails is renamed
//! aside — never overwritten, never deleted — together with its WAL, an
//! ERROR line says where it went, a fresh outbox is created, and an
//! `agent_notice` in it tells the cloud. The agent therefore never
//! crash-loops on its own storage. Before the notice, every event that can
//! still be read intact from the set-aside file is copied into the fresh
//! outbox and delivered (`salvage.rs`); the file itself is kept as found,
//! for inspection.
//!
//! The notice is derived from the disk, not from what this start did: the
//! rename happens before the fresh outbox exists, so a second fault in
//! between (a full disk, a power cut) would otherwise leave a set-aside file
//! of unsent events that the next start, finding no outbox, never mentions.
//! Every open therefore reports each `<outbox>.damaged-<stamp>` database
//! (one notice with its `-wal` and `-shm`) that has no
//! `<outbox>.reported-damaged-<stamp>` marker, and creates the marker only
//! once the salvage is complete and the notice has committed: a crash in
//! between repeats the salvage (which copies nothing twice) and the notice,
//! it never loses them. The marker is a separate empty file, not a rename of the
//! set-aside one, so the database keeps the name the notice gave and stays
//! beside its `-wal`; and its name does not start like a set-aside file, so
//! whatever lists those (people, scripts) finds only databases.
//!
//! Only damage sets a file aside. A file that cannot be opened because of
//! the machine around it (a full disk: reopening after a clean stop must
//! recreate the `-shm` file; an I/O error; a lock) is not damaged, and
//! setting it aside would strand every acknowledged event in it: that is an
//! error returned as is, and the file is opened whole once the cause is gone.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use protocol::device::{AgentNotice, NoticeCode};
use rusqlite::Connection;

use super::writer::Writer;
use super::{schema, sidecars, OutboxError, Salvage};

/// What happened when the outbox was opened.
#[derive(Debug, Clone, Default)]
pub struct OpenReport {
    /// Where a damaged database was moved by this open, and why.
    pub set_aside: Option<(PathBuf, String)>,
    /// Set-aside databases reported to the cloud by this open (this one's
    /// and any an earlier start set aside without reporting).
    pub reported: Vec<PathBuf>,
    /// What was recovered from each of them.
    pub salvaged: Vec<(PathBuf, Salvage)>,
}

impl OpenReport {
    fn notice(&self, aside: &Path, salvage: &Salvage) -> AgentNotice {
        let found = match &self.set_aside {
            Some((path, why)) if path == aside => format!(
                "outbox database was damaged ({why}); set aside as {} and a fresh one opened",
                aside.display()
            ),
            _ => format!(
                "an earlier start found the outbox database damaged and set it aside as {}, \
                 but could not report it then",
                aside.display()
            ),
        };
        AgentNotice {
            code: NoticeCode::OutboxRecovered,
            message: format!("{found}; {}", salvage.summary()),
            count: salvage.recovered,
        }
    }
}

/// For each damaged database set aside beside `path` and not reported yet
/// (see the module docs): copies its intact events into the outbox
/// (`salvage.rs`), records one `OutboxRecovered` notice saying what was
/// found, then marks it reported. A salvage that stopped early (no room,
/// a failed write) is reported but not marked, so the next start resumes
/// it; what it already copied is not copied twice.
///
/// A notice that cannot be recorded is an error, as a failed open is: the
/// set-aside file stays unreported for the next start. A marker that cannot
/// be written only repeats the salvage and the notice at the next start.
pub(crate) fn report_set_aside(
    path: &Path,
    report: &mut OpenReport,
    writer: &mut Writer,
) -> Result<(), OutboxError> {
    let unreported = unreported_set_aside(path).map_err(|e| OutboxError::Open {
        path: path.to_path_buf(),
        reason: format!("cannot look for damaged outboxes set aside beside it: {e}"),
    })?;
    for aside in unreported {
        if report
            .set_aside
            .as_ref()
            .is_none_or(|(p, _)| *p != aside.db)
        {
            tracing::error!(
                path = %path.display(),
                set_aside = %aside.db.display(),
                "a damaged outbox set aside by an earlier start was never reported; reporting it now"
            );
        }
        let salvage = writer.salvage(&aside.db);
        tracing::warn!(
            set_aside = %aside.db.display(),
            recovered = salvage.recovered,
            quarantined = salvage.quarantined,
            unreadable_regions = salvage.unreadable_regions,
            "damaged outbox salvaged: {}",
            salvage.summary()
        );
        writer.record_notice(report.notice(&aside.db, &salvage))?;
        if salvage.interrupted.is_none() {
            if let Err(e) = mark_reported(&aside.marker) {
                tracing::warn!(set_aside = %aside.db.display(), error = %e,
                    "outbox damage reported but not marked as reported; the next start repeats the notice");
            }
        }
        report.reported.push(aside.db.clone());
        report.salvaged.push((aside.db, salvage));
    }
    Ok(())
}

/// `<outbox><SET_ASIDE><stamp>` is a damaged database moved away …
const SET_ASIDE: &str = ".damaged-";
/// … and `<outbox><REPORTED><stamp>` says its notice has committed.
const REPORTED: &str = ".reported-damaged-";

/// `path` with `suffix` appended to its file name.
fn with_suffix(path: &Path, suffix: &str) -> PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(suffix);
    PathBuf::from(s)
}

struct SetAside {
    db: PathBuf,
    marker: PathBuf,
}

/// The set-aside databases beside `path` without a marker, oldest first.
fn unreported_set_aside(path: &Path) -> std::io::Result<Vec<SetAside>> {
    // Set-aside names are the outbox's name and an ASCII stamp: a name that
    // is not UTF-8 was never made by `open_or_recover`.
    let Some(name) = path.file_name().and_then(|n| n.to_str()) else {
        return Ok(Vec::new());
    };
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let prefix = format!("{name}{SET_ASIDE}");
    // The WAL and shared memory travel with their database: one notice per
    // stamp. Counting a sidecar alone still reports a set whose database
    // was missing or whose move was cut short.
    let mut stamps = BTreeSet::new();
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let Ok(entry_name) = entry.file_name().into_string() else {
            continue;
        };
        let Some(stamp) = entry_name.strip_prefix(&prefix) else {
            continue;
        };
        if entry.path().is_file() {
            let stamp = stamp
                .strip_suffix("-wal")
                .or_else(|| stamp.strip_suffix("-shm"))
                .unwrap_or(stamp);
            stamps.insert(stamp.to_owned());
        }
    }
    Ok(stamps
        .into_iter()
        .map(|stamp| SetAside {
            // Built from `path` as `open_or_recover` builds it, so the
            // notice names the file exactly as the ERROR line did.
            db: with_suffix(path, &format!("{SET_ASIDE}{stamp}")),
            marker: with_suffix(path, &format!("{REPORTED}{stamp}")),
        })
        .filter(|aside| !aside.marker.exists())
        .collect())
}

/// Creates the marker and makes its name durable: a marker lost to a power
/// cut only repeats a notice, but one that survives saves a repeat per start.
fn mark_reported(marker: &Path) -> std::io::Result<()> {
    std::fs::File::create(marker)?.sync_all()?;
    match marker.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => std::fs::File::open(dir)?.sync_all(),
        _ => Ok(()),
    }
}

/// Why a file did not open.
enum OpenFailure {
    /// The file itself is bad: set it aside.
    Damaged(String),
    /// The machine around it is (full disk, I/O error, lock): leave it be.
    Unavailable(rusqlite::Error),
}

/// Errors that say nothing about the file's contents.
pub(super) fn is_environmental(e: &rusqlite::Error) -> bool {
    use rusqlite::ErrorCode::*;
    matches!(
        e.sqlite_error_code(),
        Some(
            DiskFull
                | SystemIoFailure
                | CannotOpen
                | DatabaseBusy
                | DatabaseLocked
                | OutOfMemory
                | PermissionDenied
                | ReadOnly
                | FileLockingProtocolFailed
        )
    )
}

impl From<rusqlite::Error> for OpenFailure {
    fn from(e: rusqlite::Error) -> OpenFailure {
        if is_environmental(&e) {
            OpenFailure::Unavailable(e)
        } else {
            OpenFailure::Damaged(e.to_string())
        }
    }
}

fn try_open(path: &Path) -> Result<Connection, OpenFailure> {
    // Checked read-only first, so a damaged file is set aside exactly as it
    // was found: the write connection's settings, migrations and closing
    // checkpoint would rewrite at least its header. Should the read-only
    // check itself be refused by the machine, the write connection checks.
    let checked = path.exists()
        && match quick_check_read_only(path) {
            Ok(()) => true,
            Err(OpenFailure::Damaged(why)) => return Err(OpenFailure::Damaged(why)),
            Err(OpenFailure::Unavailable(e)) => {
                tracing::debug!(error = %e, "read-only check of the outbox refused; checking on open");
                false
            }
        };
    let conn = schema::open_writer(path)?;
    if !checked {
        quick_check(&conn)?;
    }
    Ok(conn)
}

fn quick_check_read_only(path: &Path) -> Result<(), OpenFailure> {
    schema::with_read_only(path, quick_check)?
}

fn quick_check(conn: &Connection) -> Result<(), OpenFailure> {
    match schema::quick_check(conn)? {
        None => Ok(()),
        Some(problem) => Err(OpenFailure::Damaged(problem)),
    }
}

pub(crate) fn open_or_recover(path: &Path) -> Result<(Connection, OpenReport), OutboxError> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(|e| OutboxError::Open {
            path: path.to_path_buf(),
            reason: e.to_string(),
        })?;
    }
    match try_open(path) {
        Ok(conn) => Ok((conn, OpenReport::default())),
        Err(OpenFailure::Unavailable(e)) => {
            tracing::error!(path = %path.display(), error = %e,
                "outbox cannot be opened; it is not damaged and stays where it is");
            Err(OutboxError::Open {
                path: path.to_path_buf(),
                reason: format!(
                    "{e} (the file is kept as it is: free disk space or fix the cause, then start again)"
                ),
            })
        }
        Err(OpenFailure::Damaged(why)) => {
            let stamp = chrono::Utc::now().format("%Y%m%dT%H%M%S%.3fZ");
            let mut aside = path.as_os_str().to_owned();
            aside.push(format!(".damaged-{stamp}"));
            let aside = PathBuf::from(aside);
            let move_aside = |from: &Path, to: &Path| -> Result<(), OutboxError> {
                if from.exists() {
                    std::fs::rename(from, to).map_err(|e| OutboxError::Open {
                        path: from.to_path_buf(),
                        reason: format!("damaged ({why}) and could not be set aside: {e}"),
                    })?;
                }
                Ok(())
            };
            // The WAL first: if a later move fails, the damaged database is
            // still in place (and set aside again at the next start), while a
            // WAL left behind would be replayed into the fresh database.
            for (side, suffix) in sidecars(path).iter().zip(["-wal", "-shm"]) {
                let mut to = aside.as_os_str().to_owned();
                to.push(suffix);
                move_aside(side, Path::new(&to))?;
            }
            move_aside(path, &aside)?;
            tracing::error!(
                path = %path.display(),
                set_aside = %aside.display(),
                reason = %why,
                "outbox database damaged; set aside and starting a fresh outbox"
            );
            let conn = schema::open_writer(path).map_err(|e| OutboxError::Open {
                path: path.to_path_buf(),
                reason: e.to_string(),
            })?;
            Ok((
                conn,
                OpenReport {
                    set_aside: Some((aside, why)),
                    ..OpenReport::default()
                },
            ))
        }
    }
}
