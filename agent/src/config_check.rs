//! `store-agent config check` and `config schema` (placeholder; the devices work replaces it).

use std::path::Path;
use std::process::ExitCode;

pub fn run_check(path: &Path, _json: bool) -> ExitCode {
    match firmware_config::load(path) {
        Ok(p) => {
            println!("{}: ok (store {})", path.display(), p.store.id);
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("{e}");
            ExitCode::FAILURE
        }
    }
}

pub fn schema_json() -> String {
    serde_json::to_string_pretty(&schemars::schema_for!(firmware_config::StoreProfile))
        .unwrap_or_default()
}
