//! Writes golden samples from `protocol::samples` into a new version's
//! directory, when a schema gains a version (VERSIONING.md rule 5):
//! `cargo run -p storelink-protocol --example write_golden -- v2`.
//! An existing directory is never written to: golden files are not edited.

use std::path::Path;
use std::process::ExitCode;

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
    let version = dir.file_name().and_then(|n| n.to_str()).unwrap_or_default();
    let (envelopes, names): (_, &[&str]) = match version {
        "v1" => (
            protocol::samples::envelopes("store-0042"),
            &[
                "sale",
                "sale_jpy",
                "return",
                "void",
                "scan",
                "shelf_reading",
                "stock_alert",
                "device_status",
                "agent_notice",
            ],
        ),
        "v2" => (
            protocol::samples::version_2_envelopes("store-0042"),
            &[
                "sale_cash_rounding",
                "sale_fully_discounted",
                "return_other_store",
            ],
        ),
        other => return Err(format!("no samples for version `{other}`").into()),
    };
    if envelopes.len() != names.len() {
        return Err("a sample without a file name".into());
    }
    std::fs::create_dir_all(dir)?;
    for (env, name) in envelopes.into_iter().zip(names) {
        let json = serde_json::to_string_pretty(&env)?;
        std::fs::write(dir.join(format!("{name}.json")), json + "\n")?;
    }
    Ok(())
}
