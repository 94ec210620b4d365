//! `store-agent config check PROFILE [--json]` and `store-agent config schema`.
//!
//! Deliberately synchronous and single-threaded: no runtime, no thread
//! pool. It runs under qemu-user in the ARM smoke test, where a second
//! thread hangs.
//!
//! Text output: every problem as `FILE:LINE:COL: error: PATH: message
//! (hint: …)` on stderr, then either a summary of the store on stdout (no
//! errors; warnings allowed) or a count of the problems. `--json` prints one
//! JSON document on stdout instead: `{file, ok, errors, warnings, problems,
//! profile}`.
//!
//! Exit codes: 0 valid (possibly with warnings), 1 problems, 2 unreadable file.
//!
//! `STORELINK_CONFIG_CHECK_FILES=0` skips the checks that the files a
//! profile names (TLS) exist: for linting fleet profiles away from the
//! store, where certificates come from secrets mounted at run time.

use std::fmt::Write as _;
use std::path::Path;
use std::process::ExitCode;

use firmware_config::{CheckOptions, FlowControl, Parity, Problem, StoreProfile, Terminator};

/// Environment variable that turns the file checks off when set to `0`.
pub const CHECK_FILES_ENV: &str = "STORELINK_CONFIG_CHECK_FILES";

/// Options from the environment (see the module docs).
pub fn options_from_env() -> CheckOptions {
    let off =
        std::env::var(CHECK_FILES_ENV).is_ok_and(|v| matches!(v.trim(), "0" | "false" | "no"));
    CheckOptions { check_files: !off }
}

pub fn run_check(path: &Path, json: bool) -> ExitCode {
    run_check_with(path, json, &options_from_env())
}

pub fn run_check_with(path: &Path, json: bool, opts: &CheckOptions) -> ExitCode {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) => {
            if json {
                let doc = serde_json::json!({
                    "file": path.display().to_string(),
                    "ok": false,
                    "error": format!("cannot read: {e}"),
                });
                println!("{doc}");
            } else {
                eprintln!("{}: error: cannot read: {e}", path.display());
            }
            return ExitCode::from(2);
        }
    };
    let report = firmware_config::check(&text, opts);
    let errors = report.problems.iter().filter(|p| p.is_error()).count();
    let warnings = report.problems.len() - errors;
    if json {
        let doc = serde_json::json!({
            "file": path.display().to_string(),
            "ok": errors == 0,
            "errors": errors,
            "warnings": warnings,
            "problems": report.problems,
            "profile": report.profile.as_ref().filter(|_| errors == 0),
        });
        println!("{}", serde_json::to_string_pretty(&doc).unwrap_or_default());
    } else {
        for p in &report.problems {
            eprintln!("{}", render(path, p));
        }
        match (&report.profile, errors) {
            (Some(profile), 0) => print!("{}", summary(path, profile, warnings)),
            _ => eprintln!(
                "{}: {errors} error(s), {warnings} warning(s); the agent will not start with this profile",
                path.display()
            ),
        }
    }
    if errors == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

/// `FILE:LINE:COL: error: PATH: message (hint: …)`.
pub fn render(path: &Path, p: &Problem) -> String {
    format!("{}:{p}", path.display())
}

/// What the store has, for the installer to compare with what is on site.
pub fn summary(path: &Path, p: &StoreProfile, warnings: usize) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "{}: OK{}",
        path.display(),
        if warnings > 0 {
            format!(" ({warnings} warning(s) above)")
        } else {
            String::new()
        }
    );
    let st = &p.store;
    let _ = writeln!(
        s,
        "store      {} in {} ({}, {})",
        st.id, st.region, st.timezone, st.currency
    );
    if let Some(w) = &st.maintenance_window {
        let _ = writeln!(s, "maintenance {} {}-{}", w.days.join(","), w.start, w.end);
    }
    let _ = writeln!(
        s,
        "cloud      {}:{} as {}{}",
        p.cloud.host,
        p.cloud.port,
        p.cloud.client_id,
        if p.cloud.tls.is_some() {
            " (TLS)"
        } else {
            " (plain TCP)"
        }
    );
    let _ = writeln!(
        s,
        "outbox     {} at most {} bytes, {} events",
        p.agent.data_dir.join("outbox.db").display(),
        p.outbox.max_bytes,
        p.outbox.max_rows
    );
    let ids: Vec<&str> = p.terminals.iter().map(|t| t.id.as_str()).collect();
    let _ = writeln!(s, "terminals  {}: {}", ids.len(), ids.join(", "));
    let _ = writeln!(s, "scanners   {}", p.scanners.len());
    for sc in &p.scanners {
        let parity = match sc.parity {
            Parity::None => 'N',
            Parity::Odd => 'O',
            Parity::Even => 'E',
        };
        let flow = match sc.flow_control {
            FlowControl::None => "no flow control",
            FlowControl::Software => "XON/XOFF",
            FlowControl::Hardware => "RTS/CTS",
        };
        let term = match sc.terminator {
            Terminator::Cr => "CR".to_owned(),
            Terminator::Lf => "LF".to_owned(),
            Terminator::Crlf => "CRLF".to_owned(),
            Terminator::Byte(b) => format!("byte 0x{b:02X}"),
        };
        let _ = writeln!(
            s,
            "  {} lane {} on {}: {} {}{}{}, {flow}, ends with {term}, frames up to {} bytes",
            sc.id,
            sc.lane,
            sc.port.display(),
            sc.baud_rate,
            sc.data_bits,
            parity,
            sc.stop_bits,
            sc.max_frame_len
        );
    }
    match &p.local_mqtt {
        Some(m) => {
            let _ = writeln!(
                s,
                "shelf      {} sensor(s) on {}:{}",
                p.shelf_sensors.len(),
                m.host,
                m.port
            );
        }
        None => {
            let _ = writeln!(
                s,
                "shelf      {} sensor(s), no in-store broker",
                p.shelf_sensors.len()
            );
        }
    }
    for se in &p.shelf_sensors {
        let _ = writeln!(
            s,
            "  {} GTIN {}: {} g per item, low stock at {} / restocked at {}, deadband {} g, offline after {} s",
            se.id,
            se.gtin,
            se.unit_weight_grams,
            se.low_stock_at,
            se.restocked_at,
            se.deadband_grams,
            se.offline_after_secs
        );
    }
    s
}

/// The profile's JSON Schema (`firmware-config/store-profile.schema.json`).
pub fn schema_json() -> String {
    firmware_config::schema_json()
}

#[cfg(test)]
mod tests {
    use super::*;
    use firmware_config::Severity;

    fn example(name: &str) -> std::path::PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../firmware-config/examples")
            .join(name)
    }

    #[test]
    fn summary_lists_what_the_store_has() {
        let path = example("large-store.toml");
        let text = std::fs::read_to_string(&path).expect("example");
        let report = firmware_config::check(&text, &CheckOptions { check_files: false });
        let profile = report.profile.expect("valid");
        let s = summary(&path, &profile, 0);
        assert!(
            s.contains("store      store-0520 in us-east (America/New_York, USD)"),
            "{s}"
        );
        assert!(
            s.contains("terminals  7: pos-01, pos-02, pos-03, pos-04, sco-01, sco-02, desk-01"),
            "{s}"
        );
        assert!(
            s.contains("  scan-desk lane desk on /dev/ttyS0: 9600 7E1, RTS/CTS, ends with CR, frames up to 512 bytes"),
            "{s}"
        );
        assert!(s.contains("ends with byte 0x03"), "{s}");
        assert!(
            s.contains("shelf      4 sensor(s) on store-mosquitto:1883"),
            "{s}"
        );
    }

    #[test]
    fn exit_codes() {
        let opts = CheckOptions { check_files: false };
        assert_eq!(
            run_check_with(&example("small-store.toml"), false, &opts),
            ExitCode::SUCCESS
        );
        assert_eq!(
            run_check_with(Path::new("/nonexistent/store.toml"), true, &opts),
            ExitCode::from(2)
        );
        let dir = tempfile::tempdir().expect("tmp");
        let bad = dir.path().join("bad.toml");
        std::fs::write(&bad, "[store]\nid = 1\n").expect("write");
        assert_eq!(run_check_with(&bad, false, &opts), ExitCode::FAILURE);
    }

    #[test]
    fn problems_render_with_file_line_and_column() {
        let p = Problem {
            severity: Severity::Error,
            path: "scanners[1].port".into(),
            line: Some(30),
            column: Some(8),
            message: "port `/dev/ttyUSB0` is already used by scanners[0]".into(),
            hint: Some("each scanner needs its own serial port".into()),
        };
        assert_eq!(
            render(Path::new("store.toml"), &p),
            "store.toml:30:8: error: scanners[1].port: port `/dev/ttyUSB0` is already used by scanners[0] (hint: each scanner needs its own serial port)"
        );
    }

    #[test]
    fn schema_is_the_committed_one() {
        let committed = std::fs::read_to_string(
            Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("../firmware-config/store-profile.schema.json"),
        )
        .expect("committed schema");
        assert_eq!(schema_json(), committed);
    }
}
