//! Semantic checks on a parsed profile. Each check adds a [`Problem`]; all
//! of them run, so one `config check` shows everything to fix.

use std::collections::HashMap;
use std::path::PathBuf;

use crate::profile::StoreProfile;

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Severity {
    Error,
    Warning,
}

/// One problem in a profile, located by its key path (`scanners[1].port`)
/// and, where known, its line and column.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Problem {
    pub severity: Severity,
    pub path: String,
    pub line: Option<usize>,
    pub column: Option<usize>,
    pub message: String,
    pub hint: Option<String>,
}

impl Problem {
    pub fn error(path: impl Into<String>, message: impl Into<String>) -> Problem {
        Problem {
            severity: Severity::Error,
            path: path.into(),
            line: None,
            column: None,
            message: message.into(),
            hint: None,
        }
    }

    pub fn with_hint(mut self, hint: impl Into<String>) -> Problem {
        self.hint = Some(hint.into());
        self
    }

    pub(crate) fn from_toml(text: &str, e: &toml::de::Error) -> Problem {
        let (line, column) = e
            .span()
            .map(|s| line_col(text, s.start))
            .map_or((None, None), |(l, c)| (Some(l), Some(c)));
        Problem {
            severity: Severity::Error,
            path: String::new(),
            line,
            column,
            message: e.message().to_owned(),
            hint: None,
        }
    }
}

pub(crate) fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let column = before
        .rfind('\n')
        .map_or(before.len(), |nl| before.len() - nl - 1)
        + 1;
    (line, column)
}

impl std::fmt::Display for Problem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let sev = match self.severity {
            Severity::Error => "error",
            Severity::Warning => "warning",
        };
        match (self.line, self.column) {
            (Some(l), Some(c)) => write!(f, "{l}:{c}: {sev}")?,
            _ => write!(f, "{sev}")?,
        }
        if !self.path.is_empty() {
            write!(f, ": {}", self.path)?;
        }
        write!(f, ": {}", self.message)?;
        if let Some(h) = &self.hint {
            write!(f, " (hint: {h})")?;
        }
        Ok(())
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read profile {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("profile {} has {} problem(s):\n{}", path.display(), problems.len(), problems.iter().map(|p| format!("  {}:{p}", path.display())).collect::<Vec<_>>().join("\n"))]
    Invalid {
        path: PathBuf,
        problems: Vec<Problem>,
    },
}

impl StoreProfile {
    /// Every problem with the profile; errors and warnings.
    pub fn validate(&self) -> Vec<Problem> {
        let mut out = vec![];
        if let Err(e) = protocol::validate_store_id(&self.store.id) {
            out.push(Problem::error("store.id", e.message).with_hint("e.g. store-0042"));
        }
        if self.store.currency.parse::<protocol::Currency>().is_err() {
            out.push(
                Problem::error(
                    "store.currency",
                    format!("`{}` is not an ISO 4217 code", self.store.currency),
                )
                .with_hint("e.g. EUR, USD, JPY"),
            );
        }
        if self.cloud.host.is_empty() {
            out.push(Problem::error("cloud.host", "must not be empty"));
        }
        if self.cloud.batch_max_events == 0 || self.cloud.max_batches_in_flight == 0 {
            out.push(Problem::error(
                "cloud",
                "batch_max_events and max_batches_in_flight must be at least 1",
            ));
        }
        let mut seen: HashMap<String, String> = HashMap::new();
        let mut ids = |id: &str, path: String, out: &mut Vec<Problem>| {
            if let Err(e) = protocol::validate_device_id(&path, id) {
                out.push(Problem::error(path.clone(), e.message));
            }
            if let Some(first) = seen.insert(id.to_owned(), path.clone()) {
                out.push(
                    Problem::error(path, format!("device id `{id}` is already used by {first}"))
                        .with_hint("every terminal, scanner and sensor needs its own id"),
                );
            }
        };
        for (i, t) in self.terminals.iter().enumerate() {
            ids(&t.id, format!("terminals[{i}].id"), &mut out);
        }
        for (i, s) in self.scanners.iter().enumerate() {
            ids(&s.id, format!("scanners[{i}].id"), &mut out);
        }
        for (i, s) in self.shelf_sensors.iter().enumerate() {
            ids(&s.id, format!("shelf_sensors[{i}].id"), &mut out);
        }
        out
    }

    pub fn terminal_known(&self, id: &str) -> bool {
        self.terminals.iter().any(|t| t.id == id)
    }
}
