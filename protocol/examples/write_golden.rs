//! Writes golden samples from `protocol::samples` into a new version's
//! directory, when a schema gains a version (VERSIONING.md rule 5):
//! `cargo run -p storelink-protocol --example write_golden -- v2`.
//! An existing directory is never written to: golden files are not edited.

use std::path::Path;
use std::process::ExitCode;

use protocol::EventKind;

fn main() -> ExitCode {
    let Some(version) = std::env::args().nth(1) else {
        eprintln!("usage: write_golden <version directory, e.g. v2>");
        return ExitCode::from(2);
    };
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("samples")
        .join(&version);
    if dir.exists() {
        eprintln!(
            "{} exists: golden samples are never rewritten",
            dir.display()
        );
        return ExitCode::from(1);
    }
    if let Err(e) = write(&dir) {
        eprintln!("writing {}: {e}", dir.display());
        return ExitCode::from(1);
    }
    println!("wrote {}", dir.display());
    ExitCode::SUCCESS
}

fn write(dir: &Path) -> Result<(), Box<dyn std::error::Error>> {
    std::fs::create_dir_all(dir)?;
    for (i, env) in protocol::samples::envelopes("store-0042")
        .into_iter()
        .enumerate()
    {
        let name = match (env.schema, i) {
            (EventKind::Sale, 1) => "sale_jpy".to_string(),
            (k, _) => k.schema_name().trim_start_matches("storelink.").to_string(),
        };
        let json = serde_json::to_string_pretty(&env)?;
        std::fs::write(dir.join(format!("{name}.json")), json + "\n")?;
    }
    Ok(())
}
