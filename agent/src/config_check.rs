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
//!
//! With the file checks on, `firmware_config::check` also parses the cloud
//! TLS files as PEM, the way the MQTT client will read them.

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
            "  {} lane {} on {}: {} {}{}{}, {flow}, ends with {term} within {} ms, frames up to {} bytes",
            sc.id,
            sc.lane,
            sc.port.display(),
            sc.baud_rate,
            sc.data_bits,
            parity,
            sc.stop_bits,
            sc.frame_timeout_ms,
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
            "  {} GTIN {}: {} per item, low stock at {} / restocked at {}, deadband {} g, offline after {} s",
            se.id,
            se.gtin,
            se.unit_weight_mg()
                .map(firmware_config::grams_text)
                .unwrap_or_else(|| "no weight".into()),
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
            s.contains("  scan-desk lane desk on /dev/ttyS0: 9600 7E1, RTS/CTS, ends with CR within 1500 ms, frames up to 512 bytes"),
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

    /// A throwaway self-signed P-256 certificate and its key (`openssl req
    /// -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 1
    /// -subj /CN=t`), used for nothing but these tests.
    const TEST_CERT: &str = include_str!("../../firmware-config/testdata/test-cert.pem");
    const TEST_KEY: &str = include_str!("../../firmware-config/testdata/test-key.pem");

    /// The small example store with its TLS files in `dir`, written with
    /// the given contents; returns the profile's path and text.
    fn store_with_tls(dir: &Path, ca: &str, cert: &str, key: &str) -> (std::path::PathBuf, String) {
        let mut text =
            std::fs::read_to_string(example("small-store.toml")).expect("example profile");
        for (name, contents) in [("ca.crt", ca), ("tls.crt", cert), ("tls.key", key)] {
            let file = dir.join(name);
            std::fs::write(&file, contents).expect("write TLS file");
            text = text.replace(
                &format!("/etc/storelink/tls/{name}"),
                &file.display().to_string(),
            );
        }
        let profile = dir.join("store.toml");
        std::fs::write(&profile, &text).expect("write profile");
        (profile, text)
    }

    fn tls_problems(text: &str) -> Vec<String> {
        let report = firmware_config::check(text, &CheckOptions { check_files: true });
        assert!(report.profile.is_some(), "the profile itself is valid");
        report
            .problems
            .iter()
            .filter(|p| p.path.starts_with("cloud.tls."))
            .map(|p| render(Path::new("store.toml"), p))
            .collect()
    }

    #[test]
    fn a_self_signed_certificate_and_its_key_pass_the_pem_check() {
        let dir = tempfile::tempdir().expect("tmp");
        let (profile, text) = store_with_tls(dir.path(), TEST_CERT, TEST_CERT, TEST_KEY);
        assert_eq!(tls_problems(&text), Vec::<String>::new());
        assert_eq!(
            run_check_with(&profile, true, &CheckOptions { check_files: true }),
            ExitCode::SUCCESS
        );
    }

    #[test]
    fn tls_files_that_are_not_the_pem_wanted_are_reported_by_file_and_cause() {
        let dir = tempfile::tempdir().expect("tmp");
        let garbage = "this is not PEM at all\n\u{1}\u{2}\u{3}\n";
        // The CA file is garbage and the key file is the certificate again.
        let (profile, text) = store_with_tls(dir.path(), garbage, TEST_CERT, TEST_CERT);
        let ca = dir.path().join("ca.crt").display().to_string();
        let key = dir.path().join("tls.key").display().to_string();
        let line = text
            .lines()
            .position(|l| l.starts_with("tls = {"))
            .expect("tls line")
            + 1;
        let ca_col = "tls = { ca_file = ".len() + 1;
        let key_col = text
            .lines()
            .nth(line - 1)
            .and_then(|l| l.find("key_file = "))
            .expect("key_file")
            + "key_file = ".len()
            + 1;
        assert_eq!(
            tls_problems(&text),
            vec![
                format!("store.toml:{line}:{ca_col}: error: cloud.tls.ca_file: `{ca}`: no PEM certificate found (hint: expected `-----BEGIN CERTIFICATE-----` blocks; convert a DER file with `openssl x509 -inform der -in FILE -out FILE.pem`)"),
                format!("store.toml:{line}:{key_col}: error: cloud.tls.key_file: `{key}`: no PEM private key found, only a certificate (hint: is this the certificate file? key_file holds the agent's private key)"),
            ]
        );
        assert_eq!(
            run_check_with(&profile, true, &CheckOptions { check_files: true }),
            ExitCode::FAILURE
        );
        // Away from the store the files are not looked at, PEM or not.
        assert_eq!(
            run_check_with(&profile, true, &CheckOptions { check_files: false }),
            ExitCode::SUCCESS
        );
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
