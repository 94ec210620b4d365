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

fn check(conn: &Connection) -> Result<(), String> {
    let result: String = conn
        .pragma_query_value(None, "quick_check", |r| r.get(0))
        .map_err(|e| e.to_string())?;
    if result == "ok" {
        Ok(())
    } else {
        Err(result)
    }
}

fn try_open(path: &Path) -> Result<Connection, String> {
    let conn = schema::open_writer(path).map_err(|e| e.to_string())?;
    check(&conn)?;
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
        Err(why) => {
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
