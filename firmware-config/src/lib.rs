//! Typed, validated profiles of a store and its devices.
//!
//! A profile is one TOML file per store (see `examples/`): the store's
//! identity, its cloud link, outbox limits, POS terminals, scanners with
//! their serial settings and shelf sensors with their calibration. Loading
//! is two-phase, as in ripgrep and linkerd: a strict parse (unknown keys are
//! errors) into [`StoreProfile`], then [`StoreProfile::validate`] which
//! reports every problem at once. The agent refuses to start on any error,
//! before it opens a port or a database.
//!
//! # Invariants
//! * Every [`Problem`] from [`check`], [`parse`] and [`load`] carries the
//!   line and column of the value at fault (or of the table it is missing
//!   from), and a key path such as `scanners[1].port`.
//! * Unknown keys are all reported in one run, together with the semantic
//!   problems of the rest of the profile; a type error (a string where a
//!   number belongs) stops the typed parse, so semantic checks wait for it.
//! * `store-profile.schema.json` is [`schema_json`] output; a test keeps it
//!   up to date, and the unknown-key check walks the same schema, so editor
//!   completion and the checker always agree on the keys.

mod pem;
mod profile;
mod spans;
pub mod tz;
mod validate;

pub use profile::*;
pub use validate::{
    grams_text, CheckOptions, ConfigError, Problem, Severity, FRAME_TIMEOUT_RANGE_MS,
    MAX_FRAME_LEN_RANGE, RECONNECT_BACKOFF_RANGE_MS, STANDARD_BAUD_RATES,
};

use std::path::Path;

/// The outcome of checking profile text: the profile when it could be
/// parsed, and every problem (errors and warnings), sorted by position.
#[derive(Debug)]
pub struct Report {
    pub profile: Option<StoreProfile>,
    pub problems: Vec<Problem>,
}

impl Report {
    pub fn has_errors(&self) -> bool {
        self.problems.iter().any(Problem::is_error)
    }
}

/// Parses and validates profile text, collecting every problem.
pub fn check(text: &str, opts: &CheckOptions) -> Report {
    let mut root = match toml::de::DeTable::parse(text) {
        Ok(root) => root,
        Err(e) => {
            return Report {
                profile: None,
                problems: vec![Problem::from_toml(text, &e)],
            }
        }
    };
    let index = spans::SpanIndex::build(&root);
    let schema = schema_value();
    let mut problems: Vec<Problem> = spans::take_unknown_keys(&schema, &mut root)
        .into_iter()
        .map(|u| {
            let hint = match spans::closest(&u.key, u.known.iter().map(String::as_str)) {
                Some(near) => format!("did you mean `{near}`?"),
                None => format!("known keys here: {}", u.known.join(", ")),
            };
            Problem::error(u.path, format!("unknown key `{}`", u.key))
                .with_hint(hint)
                .at(text, u.span.start)
        })
        .collect();

    let de = toml::de::Deserializer::from(root);
    let profile = match serde_path_to_error::deserialize::<_, StoreProfile>(de) {
        Ok(profile) => Some(profile),
        Err(e) => {
            let path = path_string(e.path());
            let inner = e.into_inner();
            // toml knows the span of a bad value; for a missing key it
            // points at the table, as does the index.
            let offset = inner
                .span()
                .map_or_else(|| index.locate(&path).start, |s| s.start);
            problems
                .push(Problem::error(path, inner.message().trim_end().to_owned()).at(text, offset));
            None
        }
    };
    if let Some(p) = &profile {
        problems.extend(p.validate_with(opts).into_iter().map(|pr| {
            let offset = index.locate(&pr.path).start;
            pr.at(text, offset)
        }));
    }
    problems.sort_by_key(|p| (p.line, p.column, p.severity));
    Report { profile, problems }
}

/// `scanners[1].baud_rate` from serde's path (dots between keys, brackets for indexes).
fn path_string(path: &serde_path_to_error::Path) -> String {
    use serde_path_to_error::Segment;
    let mut out = String::new();
    for seg in path.iter() {
        match seg {
            Segment::Seq { index } => out.push_str(&format!("[{index}]")),
            Segment::Map { key } => out = spans::join(&out, key),
            Segment::Enum { variant } => out = spans::join(&out, variant),
            Segment::Unknown => {}
        }
    }
    out
}

/// Parses and validates profile text (files checked); errors fail, warnings
/// are dropped — use [`check`] to see them.
pub fn parse(text: &str) -> Result<StoreProfile, Vec<Problem>> {
    let report = check(text, &CheckOptions::default());
    match report.profile {
        Some(profile) if !report.has_errors() => Ok(profile),
        _ => Err(report.problems),
    }
}

/// Reads, parses and validates a profile file.
pub fn load(path: &Path) -> Result<StoreProfile, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    parse(&text).map_err(|problems| ConfigError::Invalid {
        path: path.to_path_buf(),
        problems: problems.into_iter().filter(Problem::is_error).collect(),
    })
}

fn schema_value() -> serde_json::Value {
    schemars::schema_for!(StoreProfile).to_value()
}

/// The JSON Schema of a profile (draft 2020-12), as committed in
/// `store-profile.schema.json` for editors (Taplo / Even Better TOML).
pub fn schema_json() -> String {
    let mut s = serde_json::to_string_pretty(&schema_value()).unwrap_or_default();
    s.push('\n');
    s
}
