//! Opening the database, and what to do when it is damaged.
//!
//! A store must keep selling even if its outbox file is garbage (a torn
//! write on a cheap SD card, a full disk during a checkpoint, a bad sector).
//! So a file that SQLite cannot open or whose `quick_check` fails is renamed
//! aside — never overwritten, never deleted — together with its WAL, an
//! ERROR line says where it went, a fresh outbox is created, and the first
//! event in it is an `agent_notice` telling the cloud. The agent therefore
//! never crash-loops on its own storage; the set-aside file can be inspected
//! or salvaged later.
//!
//! Only damage sets a file aside. A file that cannot be opened because of
//! the machine around it (a full disk: reopening after a clean stop must
//! recreate the `-shm` file; an I/O error; a lock) is not damaged, and
//! setting it aside would strand every acknowledged event in it: that is an
//! error returned as is, and the file is opened whole once the cause is gone.

use std::path::{Path, PathBuf};

use protocol::device::{AgentNotice, NoticeCode};
use rusqlite::Connection;

use super::{schema, sidecars, OutboxError};

/// What happened when the outbox was opened.
#[derive(Debug, Clone, Default)]
pub struct OpenReport {
    /// Where a damaged database was moved, and why.
    pub set_aside: Option<(PathBuf, String)>,
}

impl OpenReport {
    pub(crate) fn notice(&self) -> Option<AgentNotice> {
        self.set_aside.as_ref().map(|(path, why)| AgentNotice {
            code: NoticeCode::OutboxRecovered,
            message: format!(
                "outbox database was damaged ({why}); set aside as {} and a fresh one opened",
                path.display()
            ),
            count: 0,
        })
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
fn is_environmental(e: &rusqlite::Error) -> bool {
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
    let conn = schema::open_writer(path)?;
    let result: String = conn.pragma_query_value(None, "quick_check", |r| r.get(0))?;
    if result != "ok" {
        return Err(OpenFailure::Damaged(result));
    }
    Ok(conn)
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
            move_aside(path, &aside)?;
            for (side, suffix) in sidecars(path).iter().zip(["-wal", "-shm"]) {
                let mut to = aside.as_os_str().to_owned();
                to.push(suffix);
                move_aside(side, Path::new(&to))?;
            }
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
                },
            ))
        }
    }
}
