//! Typed, validated profiles of a store and its devices.
//!
//! A profile is one TOML file per store (see `examples/`): the store's
//! identity, its cloud link, outbox limits, POS terminals, scanners with
//! their serial settings and shelf sensors with their calibration. Loading
//! is two-phase, as in ripgrep and linkerd: a strict parse (unknown keys are
//! errors) into [`StoreProfile`], then [`StoreProfile::validate`] which
//! reports every problem at once. The agent refuses to start on any error,
//! before it opens a port or a database.

mod profile;
mod validate;

pub use profile::*;
pub use validate::{ConfigError, Problem, Severity};

use std::path::Path;

/// Reads, parses and validates a profile file.
pub fn load(path: &Path) -> Result<StoreProfile, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    let profile = parse(&text).map_err(|problems| ConfigError::Invalid {
        path: path.to_path_buf(),
        problems,
    })?;
    Ok(profile)
}

/// Parses and validates profile text.
pub fn parse(text: &str) -> Result<StoreProfile, Vec<Problem>> {
    let profile: StoreProfile =
        toml::from_str(text).map_err(|e| vec![Problem::from_toml(text, &e)])?;
    let problems = profile.validate();
    if problems.iter().any(|p| p.severity == Severity::Error) {
        return Err(problems);
    }
    Ok(profile)
}
