//! Semantic checks on a parsed profile. Each check adds a [`Problem`]; all
//! of them run, so one `config check` shows everything to fix.
//!
//! Messages are what an installer reads at a store at 6 a.m.: they name the
//! value that is wrong and the hint says what a right one looks like. The
//! tests in `tests/validation.rs` pin every message.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use crate::profile::{Parity, ShelfSensor, StoreProfile, Terminator};

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Severity {
    Error,
    Warning,
}

/// One problem in a profile, located by its key path (`scanners[1].port`)
/// and its line and column (1-based; filled in by [`crate::check`] from the
/// text, `None` only for problems found on a struct without its text).
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

    pub fn warning(path: impl Into<String>, message: impl Into<String>) -> Problem {
        Problem {
            severity: Severity::Warning,
            ..Problem::error(path, message)
        }
    }

    pub fn with_hint(mut self, hint: impl Into<String>) -> Problem {
        self.hint = Some(hint.into());
        self
    }

    pub fn is_error(&self) -> bool {
        self.severity == Severity::Error
    }

    pub(crate) fn at(mut self, text: &str, offset: usize) -> Problem {
        let (l, c) = line_col(text, offset);
        self.line = Some(l);
        self.column = Some(c);
        self
    }

    pub(crate) fn from_toml(text: &str, e: &toml::de::Error) -> Problem {
        let offset = e.span().map_or(0, |s| s.start);
        Problem::error("", e.message().trim_end().to_owned())
            .with_hint("see https://toml.io for the syntax")
            .at(text, offset)
    }
}

/// 1-based line and column (in characters) of a byte offset.
pub(crate) fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let mut offset = offset.min(text.len());
    while !text.is_char_boundary(offset) {
        offset -= 1;
    }
    let before = &text[..offset];
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |nl| nl + 1);
    let column = before[line_start..].chars().count() + 1;
    (line, column)
}

impl std::fmt::Display for Problem {
    /// `LINE:COL: error: PATH: message (hint: …)`; the caller prefixes the file.
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

/// What validation may look at besides the profile itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CheckOptions {
    /// Check that files the profile names exist and are readable, and that
    /// the cloud TLS files hold the PEM certificates and key wanted.
    /// Off only where the files cannot exist, e.g. linting fleet profiles in
    /// CI whose certificates are mounted from secrets at the store.
    pub check_files: bool,
}

impl Default for CheckOptions {
    fn default() -> Self {
        CheckOptions { check_files: true }
    }
}

/// Baud rates serial scanners and USB-serial adapters support.
pub const STANDARD_BAUD_RATES: [u32; 13] = [
    300, 600, 1200, 2400, 4800, 9600, 19200, 38400, 57600, 115200, 230400, 460800, 921600,
];

pub const MAX_FRAME_LEN_RANGE: std::ops::RangeInclusive<usize> = 16..=8192;
pub const RECONNECT_BACKOFF_RANGE_MS: std::ops::RangeInclusive<u64> = 100..=600_000;
pub const FRAME_TIMEOUT_RANGE_MS: std::ops::RangeInclusive<u64> = 100..=60_000;

const DAYS: [&str; 7] = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"];

impl StoreProfile {
    /// Every problem with the profile, errors and warnings, checking files.
    pub fn validate(&self) -> Vec<Problem> {
        self.validate_with(&CheckOptions::default())
    }

    pub fn validate_with(&self, opts: &CheckOptions) -> Vec<Problem> {
        let mut out = vec![];
        self.check_store(&mut out);
        self.check_agent(&mut out);
        self.check_cloud(opts, &mut out);
        self.check_outbox(&mut out);
        self.check_local_mqtt(&mut out);
        self.check_secret_files(opts, &mut out);
        self.check_device_ids(&mut out);
        self.check_scanners(&mut out);
        for (i, s) in self.shelf_sensors.iter().enumerate() {
            check_sensor(&format!("shelf_sensors[{i}]"), s, &mut out);
        }
        out
    }

    pub fn terminal_known(&self, id: &str) -> bool {
        self.terminals.iter().any(|t| t.id == id)
    }

    fn check_store(&self, out: &mut Vec<Problem>) {
        let s = &self.store;
        if let Err(e) = protocol::validate_store_id(&s.id) {
            out.push(Problem::error("store.id", e.message).with_hint("e.g. store-0042"));
        }
        let region_ok = (1..=63).contains(&s.region.len())
            && s.region
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
        if !region_ok {
            out.push(
                Problem::error(
                    "store.region",
                    format!("`{}` is not a region name", s.region),
                )
                .with_hint("1-63 characters of a-z 0-9 and -, e.g. eu-west"),
            );
        }
        if !crate::tz::is_known(&s.timezone) {
            let hint = match crate::tz::suggest(&s.timezone) {
                Some(near) => format!("did you mean `{near}`?"),
                None => "an IANA name such as Europe/Dublin, America/New_York or UTC".to_owned(),
            };
            out.push(
                Problem::error(
                    "store.timezone",
                    format!("`{}` is not an IANA time zone", s.timezone),
                )
                .with_hint(hint),
            );
        }
        if s.currency.parse::<protocol::Currency>().is_err() {
            out.push(
                Problem::error(
                    "store.currency",
                    format!("`{}` is not an ISO 4217 code", s.currency),
                )
                .with_hint("e.g. EUR, USD, JPY"),
            );
        }
        if let Some(w) = &s.maintenance_window {
            let base = "store.maintenance_window";
            if w.days.is_empty() {
                out.push(
                    Problem::error(format!("{base}.days"), "must name at least one day")
                        .with_hint("mon, tue, wed, thu, fri, sat, sun"),
                );
            }
            let mut seen = vec![];
            for (i, d) in w.days.iter().enumerate() {
                if !DAYS.contains(&d.as_str()) {
                    out.push(
                        Problem::error(format!("{base}.days[{i}]"), format!("`{d}` is not a day"))
                            .with_hint("use mon, tue, wed, thu, fri, sat or sun"),
                    );
                } else if seen.contains(d) {
                    out.push(Problem::error(
                        format!("{base}.days[{i}]"),
                        format!("`{d}` is listed twice"),
                    ));
                }
                seen.push(d.clone());
            }
            let start = parse_hhmm(&w.start);
            let end = parse_hhmm(&w.end);
            for (key, value, parsed) in [("start", &w.start, start), ("end", &w.end, end)] {
                if parsed.is_none() {
                    out.push(
                        Problem::error(
                            format!("{base}.{key}"),
                            format!("`{value}` is not a time of day"),
                        )
                        .with_hint("local time as HH:MM, 00:00 to 23:59"),
                    );
                }
            }
            if let (Some(a), Some(b)) = (start, end) {
                if a == b {
                    out.push(
                        Problem::error(
                            format!("{base}.end"),
                            "the window is empty: end equals start",
                        )
                        .with_hint("an end earlier than the start runs past midnight"),
                    );
                }
            }
        }
    }

    fn check_agent(&self, out: &mut Vec<Problem>) {
        let a = &self.agent;
        if !(1..=600).contains(&a.shutdown_grace_secs) {
            out.push(Problem::error(
                "agent.shutdown_grace_secs",
                format!(
                    "must be between 1 and 600 seconds, not {}",
                    a.shutdown_grace_secs
                ),
            ));
        }
        if a.data_dir.as_os_str().is_empty() {
            out.push(
                Problem::error("agent.data_dir", "must not be empty")
                    .with_hint("e.g. /var/lib/storelink"),
            );
        } else if a.data_dir.is_relative() {
            out.push(
                Problem::warning(
                    "agent.data_dir",
                    format!(
                        "`{}` is relative to the agent's working directory",
                        a.data_dir.display()
                    ),
                )
                .with_hint("use an absolute path such as /var/lib/storelink"),
            );
        }
    }

    fn check_cloud(&self, opts: &CheckOptions, out: &mut Vec<Problem>) {
        let c = &self.cloud;
        if c.host.trim().is_empty() {
            out.push(
                Problem::error("cloud.host", "must not be empty")
                    .with_hint("the cloud MQTT broker's host name"),
            );
        }
        if c.port == 0 {
            out.push(
                Problem::error("cloud.port", "must not be 0").with_hint("8883 for MQTT over TLS"),
            );
        }
        if c.client_id.is_empty() || c.client_id.chars().any(|ch| ch.is_whitespace()) {
            out.push(
                Problem::error(
                    "cloud.client_id",
                    format!("`{}` is not a usable MQTT client id", c.client_id),
                )
                .with_hint("non-empty, no spaces, e.g. store-0042-agent"),
            );
        }
        range(
            out,
            "cloud.batch_max_events",
            c.batch_max_events,
            1..=protocol::batch::MAX_BATCH_EVENTS,
            "",
        );
        // Up to the contract's largest batch, which every bridge accepts.
        range(
            out,
            "cloud.batch_max_bytes",
            c.batch_max_bytes,
            1024..=protocol::batch::MAX_BATCH_BYTES,
            " bytes",
        );
        range(
            out,
            "cloud.max_batches_in_flight",
            c.max_batches_in_flight,
            1..=1000,
            "",
        );
        range(
            out,
            "cloud.receipt_timeout_secs",
            c.receipt_timeout_secs,
            1..=3600,
            " seconds",
        );
        range(
            out,
            "cloud.keep_alive_secs",
            c.keep_alive_secs,
            5..=600,
            " seconds",
        );
        range(
            out,
            "cloud.network_timeout_secs",
            c.network_timeout_secs,
            5..=600,
            " seconds",
        );
        if let (Some(tls), true) = (&c.tls, opts.check_files) {
            use crate::pem::PemWant;
            for (key, file, want) in [
                ("ca_file", &tls.ca_file, PemWant::Certificate),
                ("cert_file", &tls.cert_file, PemWant::Certificate),
                ("key_file", &tls.key_file, PemWant::PrivateKey),
            ] {
                if let Some(why) = unreadable(file) {
                    out.push(
                        Problem::error(
                            format!("cloud.tls.{key}"),
                            format!("cannot read `{}`: {why}", file.display()),
                        )
                        .with_hint("TLS files must exist and be readable by the agent's user"),
                    );
                } else if let Some((message, hint)) = crate::pem::file_problem(file, want) {
                    out.push(
                        Problem::error(
                            format!("cloud.tls.{key}"),
                            format!("`{}`: {message}", file.display()),
                        )
                        .with_hint(hint),
                    );
                }
            }
        }
    }

    fn check_outbox(&self, out: &mut Vec<Problem>) {
        // Room for several of the largest events: a smaller outbox would
        // answer a large sale "full, retry later" for ever.
        let least = 4 * protocol::batch::MAX_EVENT_BYTES as u64;
        if self.outbox.max_bytes < least {
            out.push(
                Problem::error(
                    "outbox.max_bytes",
                    format!(
                        "must be at least {least} bytes, not {}",
                        self.outbox.max_bytes
                    ),
                )
                .with_hint("the disk the outbox may use, e.g. 1073741824 (1 GiB)"),
            );
        }
        // A reserve larger than the free disk can never be written, and the
        // outbox would refuse every event as if the disk were full.
        range(
            out,
            "outbox.disk_reserve_bytes",
            self.outbox.disk_reserve_bytes,
            0..=(1 << 30),
            " bytes",
        );
        if self.outbox.max_rows == 0 {
            out.push(
                Problem::error("outbox.max_rows", "must be greater than 0")
                    .with_hint("e.g. 5000000"),
            );
        }
    }

    /// Credentials the store box mounts from Secrets.
    fn check_secret_files(&self, opts: &CheckOptions, out: &mut Vec<Problem>) {
        if let Some(m) = &self.local_mqtt {
            if m.password_file.is_some() && m.username.is_none() {
                out.push(
                    Problem::error(
                        "local_mqtt.password_file",
                        "is set but local_mqtt.username is not",
                    )
                    .with_hint("the broker needs both, e.g. username = \"store-agent\""),
                );
            }
            if let (Some(file), true) = (&m.password_file, opts.check_files) {
                if let Some(why) = unreadable(file) {
                    out.push(
                        Problem::error(
                            "local_mqtt.password_file",
                            format!("cannot read `{}`: {why}", file.display()),
                        )
                        .with_hint("mount the store-agent-local-mqtt Secret there"),
                    );
                }
            }
        }
        if self.agent.terminal_tokens_dir.is_some() && self.terminals.is_empty() {
            // No terminals listed means "any well-formed id" without tokens;
            // with tokens there would be none to accept: every sale a 401.
            out.push(
                Problem::error(
                    "agent.terminal_tokens_dir",
                    "tokens are on but no [[terminals]] are listed: every POS request would \
                     be refused as unauthorized",
                )
                .with_hint("list each terminal as [[terminals]] id = \"pos-01\", or remove terminal_tokens_dir"),
            );
        }
        if let (Some(dir), true) = (&self.agent.terminal_tokens_dir, opts.check_files) {
            if !dir.is_dir() {
                out.push(
                    Problem::error(
                        "agent.terminal_tokens_dir",
                        format!("`{}` is not a readable directory", dir.display()),
                    )
                    .with_hint(
                        "mount the store-agent-terminals Secret there: one file per terminal id",
                    ),
                );
            } else {
                for t in &self.terminals {
                    if let Some(why) = unreadable_token(&dir.join(&t.id)) {
                        out.push(
                            Problem::error(
                                "agent.terminal_tokens_dir",
                                format!("no token for terminal `{}`: {why}", t.id),
                            )
                            .with_hint("add a file named after the terminal id holding its token"),
                        );
                    }
                }
            }
        }
    }

    fn check_local_mqtt(&self, out: &mut Vec<Problem>) {
        match &self.local_mqtt {
            Some(m) => {
                if m.host.trim().is_empty() {
                    out.push(
                        Problem::error("local_mqtt.host", "must not be empty")
                            .with_hint("the in-store broker, e.g. store-mosquitto"),
                    );
                }
                if m.port == 0 {
                    out.push(
                        Problem::error("local_mqtt.port", "must not be 0")
                            .with_hint("usually 1883"),
                    );
                }
                if let Some(id) = &m.client_id {
                    if id.is_empty() || id.chars().any(|ch| ch.is_whitespace()) {
                        out.push(
                            Problem::error(
                                "local_mqtt.client_id",
                                format!("`{id}` is not a usable MQTT client id"),
                            )
                            .with_hint(
                                "non-empty, no spaces; leave it out for `{store id}-devices`",
                            ),
                        );
                    }
                }
            }
            None if !self.shelf_sensors.is_empty() => out.push(
                Problem::error(
                    "shelf_sensors",
                    "shelf sensors publish to the in-store broker, but there is no [local_mqtt]",
                )
                .with_hint("add [local_mqtt] with the in-store broker's host and port"),
            ),
            None => {}
        }
    }

    fn check_device_ids(&self, out: &mut Vec<Problem>) {
        let mut seen: HashMap<&str, String> = HashMap::new();
        let all = self
            .terminals
            .iter()
            .enumerate()
            .map(|(i, t)| (t.id.as_str(), format!("terminals[{i}].id")))
            .chain(
                self.scanners
                    .iter()
                    .enumerate()
                    .map(|(i, s)| (s.id.as_str(), format!("scanners[{i}].id"))),
            )
            .chain(
                self.shelf_sensors
                    .iter()
                    .enumerate()
                    .map(|(i, s)| (s.id.as_str(), format!("shelf_sensors[{i}].id"))),
            );
        for (id, path) in all {
            if protocol::validate_device_id(&path, id).is_err() {
                out.push(
                    Problem::error(path.clone(), format!("`{id}` is not a device id"))
                        .with_hint("1-64 characters of A-Z a-z 0-9 - _ ."),
                );
            }
            if let Some(first) = seen.get(id) {
                out.push(
                    Problem::error(path, format!("device id `{id}` is already used by {first}"))
                        .with_hint("every terminal, scanner and sensor needs its own id"),
                );
            } else {
                seen.insert(id, path);
            }
        }
    }

    fn check_scanners(&self, out: &mut Vec<Problem>) {
        let mut ports: HashMap<&Path, usize> = HashMap::new();
        for (i, s) in self.scanners.iter().enumerate() {
            let p = format!("scanners[{i}]");
            if s.port.as_os_str().is_empty() {
                out.push(
                    Problem::error(format!("{p}.port"), "must not be empty")
                        .with_hint("e.g. /dev/ttyUSB0"),
                );
            } else if s.port.is_relative() {
                out.push(
                    Problem::error(
                        format!("{p}.port"),
                        format!("`{}` is not an absolute device path", s.port.display()),
                    )
                    .with_hint("e.g. /dev/ttyUSB0 or a stable /dev/serial/by-id/… link"),
                );
            } else if let Some(first) = ports.get(s.port.as_path()) {
                out.push(
                    Problem::error(
                        format!("{p}.port"),
                        format!(
                            "port `{}` is already used by scanners[{first}]",
                            s.port.display()
                        ),
                    )
                    .with_hint("each scanner needs its own serial port"),
                );
            } else {
                ports.insert(&s.port, i);
            }
            if s.lane.trim().is_empty() {
                out.push(
                    Problem::error(format!("{p}.lane"), "must not be empty")
                        .with_hint("the lane or register the scanner serves, e.g. lane-1"),
                );
            }
            if !STANDARD_BAUD_RATES.contains(&s.baud_rate) {
                let list: Vec<String> = STANDARD_BAUD_RATES.iter().map(u32::to_string).collect();
                out.push(
                    Problem::error(
                        format!("{p}.baud_rate"),
                        format!("{} is not a standard baud rate", s.baud_rate),
                    )
                    .with_hint(format!("use one of {}", list.join(", "))),
                );
            }
            if !(5..=8).contains(&s.data_bits) {
                out.push(Problem::error(
                    format!("{p}.data_bits"),
                    format!("must be 5, 6, 7 or 8, not {}", s.data_bits),
                ));
            }
            if !(1..=2).contains(&s.stop_bits) {
                out.push(Problem::error(
                    format!("{p}.stop_bits"),
                    format!("must be 1 or 2, not {}", s.stop_bits),
                ));
            }
            range(
                out,
                &format!("{p}.max_frame_len"),
                s.max_frame_len,
                MAX_FRAME_LEN_RANGE,
                " bytes",
            );
            range(
                out,
                &format!("{p}.frame_timeout_ms"),
                s.frame_timeout_ms,
                FRAME_TIMEOUT_RANGE_MS,
                " ms",
            );
            // The timeout counts from the last byte: it must outlast the
            // gaps of a slow line, or every read is cut between bytes. Ten
            // characters' time leaves room for an adapter that delivers in
            // chunks (a USB-serial latency timer holds up to 16 ms).
            let bits = 1
                + u64::from(s.data_bits)
                + u64::from(s.parity != Parity::None)
                + u64::from(s.stop_bits);
            let ten_chars_ms = (10 * bits * 1000).div_ceil(u64::from(s.baud_rate.max(1)));
            if s.frame_timeout_ms < ten_chars_ms
                && FRAME_TIMEOUT_RANGE_MS.contains(&s.frame_timeout_ms)
            {
                out.push(Problem::error(
                    format!("{p}.frame_timeout_ms"),
                    format!(
                        "{} ms is less than 10 characters at {} baud ({ten_chars_ms} ms): reads would be cut between bytes",
                        s.frame_timeout_ms, s.baud_rate
                    ),
                ));
            }
            range(
                out,
                &format!("{p}.reconnect_max_backoff_ms"),
                s.reconnect_max_backoff_ms,
                RECONNECT_BACKOFF_RANGE_MS,
                " ms",
            );
            if let Terminator::Byte(b) = s.terminator {
                const CONTROL_BYTE: &str =
                    "use a control byte the scanner sends only at the end, e.g. 3 (ETX) or 4 (EOT)";
                let why = match b {
                    0x1D => Some((
                        "is GS, the GS1 FNC1 separator inside element strings".to_owned(),
                        CONTROL_BYTE,
                    )),
                    // As a byte, the other half of a CR LF ending would
                    // start every next read as noise; the named endings
                    // accept either.
                    0x0D | 0x0A => Some((
                        format!(
                            "is {}: as a byte terminator, the other half of a CR LF ending would begin every next read",
                            if b == 0x0D { "CR" } else { "LF" }
                        ),
                        "use `cr`, `lf` or `crlf`, which accept either line ending",
                    )),
                    0x20..=0x7E => Some((
                        format!("(`{}`) can appear in barcode data", char::from(b)),
                        CONTROL_BYTE,
                    )),
                    _ => None,
                };
                if let Some((why, hint)) = why {
                    out.push(
                        Problem::error(format!("{p}.terminator"), format!("byte 0x{b:02X} {why}"))
                            .with_hint(hint),
                    );
                }
            }
        }
    }
}

fn check_sensor(p: &str, s: &ShelfSensor, out: &mut Vec<Problem>) {
    if let Err(e) = s.gtin.parse::<protocol::Gtin>() {
        out.push(
            Problem::error(
                format!("{p}.gtin"),
                format!("`{}` is not a valid GTIN: {e}", s.gtin),
            )
            .with_hint("8, 12, 13 or 14 digits ending in the GS1 mod-10 check digit"),
        );
    }
    check_calibration(p, s, out);
    match (s.unit_weight_grams, s.unit_weight_milligrams) {
        (None, None) => out.push(
            Problem::error(
                p.to_owned(),
                "has no item weight: give unit_weight_grams or unit_weight_milligrams",
            )
            .with_hint("the weight of one item on this shelf"),
        ),
        (Some(_), Some(_)) => out.push(
            Problem::error(
                format!("{p}.unit_weight_milligrams"),
                "give unit_weight_grams or unit_weight_milligrams, not both",
            )
            .with_hint(
                "milligrams for items lighter than a few grams, or not a whole number of them",
            ),
        ),
        (Some(0), None) => out.push(
            Problem::error(format!("{p}.unit_weight_grams"), "must be greater than 0")
                .with_hint("the weight of one item on this shelf, in grams"),
        ),
        (None, Some(0)) => out.push(
            Problem::error(
                format!("{p}.unit_weight_milligrams"),
                "must be greater than 0",
            )
            .with_hint("the weight of one item on this shelf, in milligrams"),
        ),
        _ => {}
    }
    if s.restocked_at <= s.low_stock_at {
        out.push(
            Problem::error(
                format!("{p}.restocked_at"),
                format!(
                    "must be greater than low_stock_at ({}), not {}",
                    s.low_stock_at, s.restocked_at
                ),
            )
            .with_hint("the gap between the two is the hysteresis that stops alerts flapping"),
        );
    }
    if let Some(unit_mg) = s.unit_weight_mg() {
        if u64::from(s.deadband_grams) * 1000 >= unit_mg {
            out.push(
                Problem::warning(
                    format!("{p}.deadband_grams"),
                    format!(
                        "a deadband of {} g hides single items of {}",
                        s.deadband_grams,
                        grams_text(unit_mg)
                    ),
                )
                .with_hint("keep deadband_grams below the item's weight"),
            );
        }
    }
    range(
        out,
        &format!("{p}.offline_after_secs"),
        s.offline_after_secs,
        1..=86_400,
        " seconds",
    );
    range(
        out,
        &format!("{p}.alert_dwell_secs"),
        s.alert_dwell_secs,
        0..=86_400,
        " seconds",
    );
}

/// Milligrams as grams for people: `5500` → "5.5 g", `500000` → "500 g".
pub fn grams_text(mg: u64) -> String {
    let (g, rest) = (mg / 1000, mg % 1000);
    if rest == 0 {
        format!("{g} g")
    } else {
        let frac = format!("{rest:03}");
        format!("{g}.{} g", frac.trim_end_matches('0'))
    }
}

/// A sensor's scale comes from exactly one of `counts_per_gram` and `span`.
fn check_calibration(p: &str, s: &ShelfSensor, out: &mut Vec<Problem>) {
    const HINT: &str =
        "two-point calibration: zero_offset is the raw counts with the shelf empty; \
         span = { grams = <a known weight>, raw = <the raw counts with it on the shelf> }";
    match (s.counts_per_gram, s.span) {
        (None, None) => out.push(
            Problem::error(
                p.to_owned(),
                "has no calibration: give counts_per_gram or span",
            )
            .with_hint(HINT),
        ),
        (Some(_), Some(_)) => out.push(
            Problem::error(
                format!("{p}.span"),
                "give counts_per_gram or span, not both: they can disagree",
            )
            .with_hint("span is exact; counts_per_gram is rounded to a whole number"),
        ),
        (Some(cpg), None) if cpg <= 0 => out.push(
            Problem::error(
                format!("{p}.counts_per_gram"),
                format!("must be greater than 0, not {cpg}"),
            )
            .with_hint(
                "from two-point calibration: (raw with a known weight - zero_offset) / grams",
            ),
        ),
        (Some(_), None) => {}
        (None, Some(span)) => {
            if span.grams == 0 {
                out.push(
                    Problem::error(format!("{p}.span.grams"), "must be greater than 0")
                        .with_hint(HINT),
                );
            }
            if span.raw <= s.zero_offset {
                out.push(
                    Problem::error(
                        format!("{p}.span.raw"),
                        format!(
                            "must be greater than zero_offset ({}), not {}",
                            s.zero_offset, span.raw
                        ),
                    )
                    .with_hint(
                        "the raw counts with the known weight on the shelf; a cell whose \
                         counts fall under load is wired the other way round",
                    ),
                );
            }
        }
    }
}

fn range<T: PartialOrd + std::fmt::Display>(
    out: &mut Vec<Problem>,
    path: &str,
    value: T,
    allowed: std::ops::RangeInclusive<T>,
    unit: &str,
) {
    if !allowed.contains(&value) {
        out.push(Problem::error(
            path,
            format!(
                "must be between {} and {}{unit}, not {value}",
                allowed.start(),
                allowed.end()
            ),
        ));
    }
}

/// `HH:MM` as minutes after midnight.
fn parse_hhmm(s: &str) -> Option<u16> {
    let (h, m) = s.split_once(':')?;
    if h.len() != 2 || m.len() != 2 || !h.bytes().chain(m.bytes()).all(|b| b.is_ascii_digit()) {
        return None;
    }
    let (h, m): (u16, u16) = (h.parse().ok()?, m.parse().ok()?);
    (h < 24 && m < 60).then_some(h * 60 + m)
}

/// Why `path` cannot be read as a file, if it cannot.
fn unreadable(path: &Path) -> Option<String> {
    match std::fs::File::open(path) {
        Ok(f) => match f.metadata() {
            Ok(m) if m.is_dir() => Some("it is a directory".to_owned()),
            Ok(_) => None,
            Err(e) => Some(e.to_string()),
        },
        Err(e) => Some(e.to_string()),
    }
}

/// As [`unreadable`], and the agent refuses to start on a token file that
/// holds only whitespace too.
fn unreadable_token(path: &Path) -> Option<String> {
    if let Some(why) = unreadable(path) {
        return Some(why);
    }
    match std::fs::read_to_string(path) {
        Ok(t) if t.trim().is_empty() => Some("the file is empty".to_owned()),
        Ok(_) => None,
        Err(e) => Some(e.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hhmm_accepts_only_real_times() {
        assert_eq!(parse_hhmm("00:00"), Some(0));
        assert_eq!(parse_hhmm("23:59"), Some(23 * 60 + 59));
        for bad in ["24:00", "2:00", "02:60", "0200", "ab:cd", "", "+1:00"] {
            assert_eq!(parse_hhmm(bad), None, "{bad}");
        }
    }

    #[test]
    fn line_col_counts_characters_from_one() {
        let text = "a = 1\nbé = \"x\"\n";
        assert_eq!(line_col(text, 0), (1, 1));
        assert_eq!(line_col(text, 6), (2, 1));
        // `=` after the two-byte `é` is the 4th character of line 2.
        assert_eq!(line_col(text, 10), (2, 4));
        assert_eq!(line_col(text, 999), (3, 1));
    }
}
