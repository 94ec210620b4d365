//! Every validation rule, with the exact line a user sees from
//! `store-agent config check` (minus the `FILE:` prefix).

use firmware_config::{check, CheckOptions, Severity};

const BASE: &str = r#"[store]
id = "store-0042"
region = "eu-west"
timezone = "Europe/Dublin"
currency = "EUR"
maintenance_window = { days = ["mon"], start = "02:00", end = "05:00" }

[agent]
data_dir = "/var/lib/storelink"

[cloud]
host = "mqtt.example.com"
port = 8883
client_id = "store-0042-agent"

[local_mqtt]
host = "store-mosquitto"
port = 1883

[[terminals]]
id = "pos-01"

[[scanners]]
id = "scan-01"
port = "/dev/ttyUSB0"
lane = "lane-1"

[[scanners]]
id = "scan-02"
port = "/dev/ttyUSB1"
lane = "lane-2"

[[shelf_sensors]]
id = "shelf-a1"
gtin = "05901234123457"
zero_offset = 8388608
counts_per_gram = 420
unit_weight_grams = 500
low_stock_at = 3
restocked_at = 6
"#;

/// BASE with each `(old, new)` replaced once (the old text must be there).
fn edit(edits: &[(&str, &str)]) -> String {
    let mut text = BASE.to_owned();
    for (old, new) in edits {
        assert!(text.contains(old), "BASE has no {old:?}");
        text = text.replacen(old, new, 1);
    }
    text
}

fn problems_of(text: &str) -> Vec<String> {
    check(text, &CheckOptions::default())
        .problems
        .iter()
        .map(ToString::to_string)
        .collect()
}

#[track_caller]
fn assert_problems(edits: &[(&str, &str)], expected: &[&str]) {
    assert_eq!(problems_of(&edit(edits)), expected);
}

#[test]
fn the_base_profile_is_clean() {
    let report = check(BASE, &CheckOptions::default());
    assert_eq!(report.problems, vec![]);
    let p = report.profile.expect("parsed");
    assert_eq!(p.scanners.len(), 2);
    assert_eq!(p.scanners[0].baud_rate, 9600);
    assert_eq!(p.scanners[0].reconnect_max_backoff_ms, 5000);
    assert_eq!(p.shelf_sensors[0].deadband_grams, 20);
    assert_eq!(p.shelf_sensors[0].alert_dwell_secs, 0);
}

#[test]
fn toml_syntax_errors_point_at_the_spot() {
    assert_problems(
        &[("region = \"eu-west\"", "region = \"eu-west")],
        &["3:18: error: invalid basic string, expected `\"` (hint: see https://toml.io for the syntax)"],
    );
}

#[test]
fn every_unknown_key_is_reported_with_a_suggestion() {
    assert_problems(
        &[
            ("currency = \"EUR\"", "currency = \"EUR\"\ncolour = \"blue\""),
            ("lane = \"lane-2\"", "lane = \"lane-2\"\nbaudrate = 9600"),
        ],
        &[
            "6:1: error: store.colour: unknown key `colour` (hint: known keys here: currency, id, maintenance_window, region, timezone)",
            "33:1: error: scanners[1].baudrate: unknown key `baudrate` (hint: did you mean `baud_rate`?)",
        ],
    );
}

#[test]
fn unknown_keys_do_not_hide_semantic_problems() {
    assert_problems(
        &[
            ("[agent]", "[agent]\nverbose = true"),
            ("restocked_at = 6", "restocked_at = 2"),
        ],
        &[
            "9:1: error: agent.verbose: unknown key `verbose` (hint: known keys here: data_dir, http_listen, shutdown_grace_secs, terminal_tokens_dir)",
            "41:16: error: shelf_sensors[0].restocked_at: must be greater than low_stock_at (3), not 2 (hint: the gap between the two is the hysteresis that stops alerts flapping)",
        ],
    );
}

#[test]
fn wrong_types_name_the_key_and_the_expected_type() {
    assert_problems(
        &[(
            "lane = \"lane-1\"",
            "lane = \"lane-1\"\nbaud_rate = \"fast\"",
        )],
        &["27:13: error: scanners[0].baud_rate: invalid type: string \"fast\", expected u32"],
    );
}

#[test]
fn missing_keys_point_at_their_table() {
    assert_problems(
        &[("port = \"/dev/ttyUSB1\"\n", "")],
        &["28:1: error: scanners[1]: missing field `port`"],
    );
}

#[test]
fn store_id_region_currency() {
    assert_problems(
        &[
            ("id = \"store-0042\"", "id = \"Store 42\""),
            ("region = \"eu-west\"", "region = \"EU West\""),
            ("currency = \"EUR\"", "currency = \"EURO\""),
        ],
        &[
            "2:6: error: store.id: must be 2-63 characters of a-z 0-9 and -, starting with a letter or digit (hint: e.g. store-0042)",
            "3:10: error: store.region: `EU West` is not a region name (hint: 1-63 characters of a-z 0-9 and -, e.g. eu-west)",
            "5:12: error: store.currency: `EURO` is not an ISO 4217 code (hint: e.g. EUR, USD, JPY)",
        ],
    );
}

#[test]
fn time_zones_must_be_iana_names() {
    assert_problems(
        &[("Europe/Dublin", "Europe/Dubln")],
        &["4:12: error: store.timezone: `Europe/Dubln` is not an IANA time zone (hint: did you mean `Europe/Dublin`?)"],
    );
    assert_problems(
        &[("Europe/Dublin", "Mars/Olympus_Mons")],
        &["4:12: error: store.timezone: `Mars/Olympus_Mons` is not an IANA time zone (hint: an IANA name such as Europe/Dublin, America/New_York or UTC)"],
    );
}

#[test]
fn maintenance_windows_need_real_days_and_times() {
    assert_problems(
        &[(
            r#"{ days = ["mon"], start = "02:00", end = "05:00" }"#,
            r#"{ days = ["mon", "funday", "mon"], start = "25:00", end = "5pm" }"#,
        )],
        &[
            "6:39: error: store.maintenance_window.days[1]: `funday` is not a day (hint: use mon, tue, wed, thu, fri, sat or sun)",
            "6:49: error: store.maintenance_window.days[2]: `mon` is listed twice",
            "6:65: error: store.maintenance_window.start: `25:00` is not a time of day (hint: local time as HH:MM, 00:00 to 23:59)",
            "6:80: error: store.maintenance_window.end: `5pm` is not a time of day (hint: local time as HH:MM, 00:00 to 23:59)",
        ],
    );
    assert_problems(
        &[(r#"days = ["mon"], start = "02:00", end = "05:00""#, r#"days = [], start = "02:00", end = "02:00""#)],
        &[
            "6:31: error: store.maintenance_window.days: must name at least one day (hint: mon, tue, wed, thu, fri, sat, sun)",
            "6:58: error: store.maintenance_window.end: the window is empty: end equals start (hint: an end earlier than the start runs past midnight)",
        ],
    );
    // Past midnight is fine.
    assert_problems(
        &[(
            r#"start = "02:00", end = "05:00""#,
            r#"start = "23:00", end = "01:00""#,
        )],
        &[],
    );
}

#[test]
fn agent_settings() {
    assert_problems(
        &[("data_dir = \"/var/lib/storelink\"", "data_dir = \"data\"\nshutdown_grace_secs = 0")],
        &[
            "9:12: warning: agent.data_dir: `data` is relative to the agent's working directory (hint: use an absolute path such as /var/lib/storelink)",
            "10:23: error: agent.shutdown_grace_secs: must be between 1 and 600 seconds, not 0",
        ],
    );
}

#[test]
fn cloud_link_settings() {
    assert_problems(
        &[
            ("host = \"mqtt.example.com\"", "host = \"\""),
            ("port = 8883", "port = 0"),
            ("client_id = \"store-0042-agent\"", "client_id = \"store 42\"\nbatch_max_events = 0\nbatch_max_bytes = 100\nmax_batches_in_flight = 5000\nreceipt_timeout_secs = 0\nkeep_alive_secs = 1"),
        ],
        &[
            "12:8: error: cloud.host: must not be empty (hint: the cloud MQTT broker's host name)",
            "13:8: error: cloud.port: must not be 0 (hint: 8883 for MQTT over TLS)",
            "14:13: error: cloud.client_id: `store 42` is not a usable MQTT client id (hint: non-empty, no spaces, e.g. store-0042-agent)",
            "15:20: error: cloud.batch_max_events: must be between 1 and 20000, not 0",
            "16:19: error: cloud.batch_max_bytes: must be between 1024 and 4194304 bytes, not 100",
            "17:25: error: cloud.max_batches_in_flight: must be between 1 and 1000, not 5000",
            "18:24: error: cloud.receipt_timeout_secs: must be between 1 and 3600 seconds, not 0",
            "19:19: error: cloud.keep_alive_secs: must be between 5 and 600 seconds, not 1",
        ],
    );
}

#[test]
fn tls_files_must_exist_and_be_readable() {
    let dir = tempfile::tempdir().expect("temp dir");
    let ca = dir.path().join("ca.crt");
    // Readable and a real certificate: only the other two files are wrong.
    std::fs::write(&ca, include_str!("../testdata/test-cert.pem")).expect("write");
    let tls = format!(
        "client_id = \"store-0042-agent\"\ntls = {{ ca_file = \"{}\", cert_file = \"{}\", key_file = \"{}\" }}",
        ca.display(),
        dir.path().display(),
        dir.path().join("missing.key").display()
    );
    let text = edit(&[("client_id = \"store-0042-agent\"", &tls)]);
    let problems = problems_of(&text);
    let cert_col = 19 + ca.display().to_string().len() + 2 + 14;
    assert_eq!(
        problems,
        vec![
            format!("15:{cert_col}: error: cloud.tls.cert_file: cannot read `{}`: it is a directory (hint: TLS files must exist and be readable by the agent's user)", dir.path().display()),
            format!("15:{}: error: cloud.tls.key_file: cannot read `{}`: No such file or directory (os error 2) (hint: TLS files must exist and be readable by the agent's user)",
                cert_col + dir.path().display().to_string().len() + 2 + 13,
                dir.path().join("missing.key").display()),
        ]
    );
    // Linting elsewhere (CI) can skip the file checks.
    let report = check(&text, &CheckOptions { check_files: false });
    assert_eq!(report.problems, vec![]);
}

#[test]
fn local_mqtt_settings_and_sensors_without_a_broker() {
    assert_problems(
        &[("host = \"store-mosquitto\"\nport = 1883", "host = \" \"\nport = 0\nclient_id = \"\"")],
        &[
            "17:8: error: local_mqtt.host: must not be empty (hint: the in-store broker, e.g. store-mosquitto)",
            "18:8: error: local_mqtt.port: must not be 0 (hint: usually 1883)",
            "19:13: error: local_mqtt.client_id: `` is not a usable MQTT client id (hint: non-empty, no spaces; leave it out for `{store id}-devices`)",
        ],
    );
    assert_problems(
        &[("[local_mqtt]\nhost = \"store-mosquitto\"\nport = 1883\n", "")],
        &["30:1: error: shelf_sensors: shelf sensors publish to the in-store broker, but there is no [local_mqtt] (hint: add [local_mqtt] with the in-store broker's host and port)"],
    );
}

#[test]
fn device_ids_are_valid_and_unique_across_kinds() {
    assert_problems(
        &[("id = \"scan-01\"", "id = \"pos-01\""), ("id = \"shelf-a1\"", "id = \"shelf a1\"")],
        &[
            "24:6: error: scanners[0].id: device id `pos-01` is already used by terminals[0].id (hint: every terminal, scanner and sensor needs its own id)",
            "34:6: error: shelf_sensors[0].id: `shelf a1` is not a device id (hint: 1-64 characters of A-Z a-z 0-9 - _ .)",
        ],
    );
}

#[test]
fn two_scanners_cannot_share_a_port() {
    assert_problems(
        &[("port = \"/dev/ttyUSB1\"", "port = \"/dev/ttyUSB0\"")],
        &["30:8: error: scanners[1].port: port `/dev/ttyUSB0` is already used by scanners[0] (hint: each scanner needs its own serial port)"],
    );
}

#[test]
fn scanner_ports_and_lanes() {
    assert_problems(
        &[("port = \"/dev/ttyUSB0\"", "port = \"ttyUSB0\""), ("lane = \"lane-2\"", "lane = \"\"")],
        &[
            "25:8: error: scanners[0].port: `ttyUSB0` is not an absolute device path (hint: e.g. /dev/ttyUSB0 or a stable /dev/serial/by-id/… link)",
            "31:8: error: scanners[1].lane: must not be empty (hint: the lane or register the scanner serves, e.g. lane-1)",
        ],
    );
}

#[test]
fn serial_settings_are_in_range() {
    assert_problems(
        &[(
            "lane = \"lane-1\"",
            "lane = \"lane-1\"\nbaud_rate = 9601\ndata_bits = 9\nstop_bits = 3\nmax_frame_len = 8\nreconnect_max_backoff_ms = 5\nframe_timeout_ms = 5",
        )],
        &[
            "27:13: error: scanners[0].baud_rate: 9601 is not a standard baud rate (hint: use one of 300, 600, 1200, 2400, 4800, 9600, 19200, 38400, 57600, 115200, 230400, 460800, 921600)",
            "28:13: error: scanners[0].data_bits: must be 5, 6, 7 or 8, not 9",
            "29:13: error: scanners[0].stop_bits: must be 1 or 2, not 3",
            "30:17: error: scanners[0].max_frame_len: must be between 16 and 8192 bytes, not 8",
            "31:28: error: scanners[0].reconnect_max_backoff_ms: must be between 100 and 600000 ms, not 5",
            "32:20: error: scanners[0].frame_timeout_ms: must be between 100 and 60000 ms, not 5",
        ],
    );
    // 300 baud, 7E1: 10 bits a character, 10 characters take 334 ms.
    assert_problems(
        &[(
            "lane = \"lane-1\"",
            "lane = \"lane-1\"\nbaud_rate = 300\ndata_bits = 7\nparity = \"even\"\nframe_timeout_ms = 300",
        )],
        &["30:20: error: scanners[0].frame_timeout_ms: 300 ms is less than 10 characters at 300 baud (334 ms): reads would be cut between bytes"],
    );
    assert_problems(
        &[("lane = \"lane-1\"", "lane = \"lane-1\"\ndata_bits = 4\nstop_bits = 0\nparity = \"mark\"")],
        &["29:10: error: scanners[0].parity: unknown variant `mark`, expected one of `none`, `odd`, `even`"],
    );
}

#[test]
fn terminators_are_named_or_a_control_byte() {
    for (value, ok) in [
        ("\"cr\"", true),
        ("\"lf\"", true),
        ("\"crlf\"", true),
        ("3", true),
        ("{ byte = 4 }", true),
    ] {
        let text = edit(&[(
            "lane = \"lane-1\"",
            &format!("lane = \"lane-1\"\nterminator = {value}"),
        )]);
        assert_eq!(problems_of(&text).is_empty(), ok, "{value}");
    }
    assert_problems(
        &[("lane = \"lane-1\"", "lane = \"lane-1\"\nterminator = 29")],
        &["27:14: error: scanners[0].terminator: byte 0x1D is GS, the GS1 FNC1 separator inside element strings (hint: use a control byte the scanner sends only at the end, e.g. 3 (ETX) or 4 (EOT))"],
    );
    assert_problems(
        &[("lane = \"lane-1\"", "lane = \"lane-1\"\nterminator = 13")],
        &["27:14: error: scanners[0].terminator: byte 0x0D is CR: as a byte terminator, the other half of a CR LF ending would begin every next read (hint: use `cr`, `lf` or `crlf`, which accept either line ending)"],
    );
    assert_problems(
        &[("lane = \"lane-2\"", "lane = \"lane-2\"\nterminator = 65")],
        &["32:14: error: scanners[1].terminator: byte 0x41 (`A`) can appear in barcode data (hint: use a control byte the scanner sends only at the end, e.g. 3 (ETX) or 4 (EOT))"],
    );
    assert_problems(
        &[("lane = \"lane-1\"", "lane = \"lane-1\"\nterminator = \"nl\"")],
        &["27:14: error: scanners[0].terminator: unknown terminator `nl`, expected `cr`, `lf`, `crlf` or a byte value 0-255"],
    );
    assert_problems(
        &[("lane = \"lane-1\"", "lane = \"lane-1\"\nterminator = 300")],
        &["27:14: error: scanners[0].terminator: terminator byte 300 is out of range, expected 0-255"],
    );
}

#[test]
fn sensor_gtins_must_validate() {
    assert_problems(
        &[("gtin = \"05901234123457\"", "gtin = \"4006381333932\"")],
        &["35:8: error: shelf_sensors[0].gtin: `4006381333932` is not a valid GTIN: check digit is 2 but should be 1 (hint: 8, 12, 13 or 14 digits ending in the GS1 mod-10 check digit)"],
    );
    assert_problems(
        &[("gtin = \"05901234123457\"", "gtin = \"12345\"")],
        &["35:8: error: shelf_sensors[0].gtin: `12345` is not a valid GTIN: a GTIN has 8, 12, 13 or 14 digits, not 5 (hint: 8, 12, 13 or 14 digits ending in the GS1 mod-10 check digit)"],
    );
}

/// A sensor's scale comes from exactly one of `counts_per_gram` and `span`,
/// and a span point must be above the empty shelf.
#[test]
fn sensor_calibration_from_a_span_point_or_a_whole_counts_per_gram() {
    assert_problems(
        &[(
            "counts_per_gram = 420",
            "span = { grams = 5000, raw = 10488608 }",
        )],
        &[],
    );
    assert_problems(
        &[("counts_per_gram = 420\n", "")],
        &["33:1: error: shelf_sensors[0]: has no calibration: give counts_per_gram or span (hint: two-point calibration: zero_offset is the raw counts with the shelf empty; span = { grams = <a known weight>, raw = <the raw counts with it on the shelf> })"],
    );
    assert_problems(
        &[(
            "counts_per_gram = 420",
            "counts_per_gram = 420\nspan = { grams = 5000, raw = 10488608 }",
        )],
        &["38:8: error: shelf_sensors[0].span: give counts_per_gram or span, not both: they can disagree (hint: span is exact; counts_per_gram is rounded to a whole number)"],
    );
    assert_problems(
        &[(
            "counts_per_gram = 420",
            "span = { grams = 0, raw = 8388608 }",
        )],
        &[
            "37:18: error: shelf_sensors[0].span.grams: must be greater than 0 (hint: two-point calibration: zero_offset is the raw counts with the shelf empty; span = { grams = <a known weight>, raw = <the raw counts with it on the shelf> })",
            "37:27: error: shelf_sensors[0].span.raw: must be greater than zero_offset (8388608), not 8388608 (hint: the raw counts with the known weight on the shelf; a cell whose counts fall under load is wired the other way round)",
        ],
    );
}

/// An item's weight is given in grams or milligrams, once.
#[test]
fn an_items_weight_in_grams_or_milligrams_once() {
    assert_problems(
        &[(
            "unit_weight_grams = 500",
            "unit_weight_milligrams = 5500\ndeadband_grams = 5",
        )],
        &[],
    );
    assert_problems(
        &[("unit_weight_grams = 500", "unit_weight_milligrams = 5500")],
        &["33:1: warning: shelf_sensors[0].deadband_grams: a deadband of 20 g hides single items of 5.5 g (hint: keep deadband_grams below the item's weight)"],
    );
    assert_problems(
        &[("unit_weight_grams = 500\n", "")],
        &["33:1: error: shelf_sensors[0]: has no item weight: give unit_weight_grams or unit_weight_milligrams (hint: the weight of one item on this shelf)"],
    );
    assert_problems(
        &[(
            "unit_weight_grams = 500",
            "unit_weight_grams = 500\nunit_weight_milligrams = 500000",
        )],
        &["39:26: error: shelf_sensors[0].unit_weight_milligrams: give unit_weight_grams or unit_weight_milligrams, not both (hint: milligrams for items lighter than a few grams, or not a whole number of them)"],
    );
}

#[test]
fn sensor_calibration_and_thresholds() {
    assert_problems(
        &[
            ("counts_per_gram = 420", "counts_per_gram = -3"),
            ("unit_weight_grams = 500", "unit_weight_grams = 0"),
            ("restocked_at = 6", "restocked_at = 3\noffline_after_secs = 0\nalert_dwell_secs = 100000"),
        ],
        &[
            "37:19: error: shelf_sensors[0].counts_per_gram: must be greater than 0, not -3 (hint: from two-point calibration: (raw with a known weight - zero_offset) / grams)",
            "38:21: error: shelf_sensors[0].unit_weight_grams: must be greater than 0 (hint: the weight of one item on this shelf, in grams)",
            "40:16: error: shelf_sensors[0].restocked_at: must be greater than low_stock_at (3), not 3 (hint: the gap between the two is the hysteresis that stops alerts flapping)",
            "41:22: error: shelf_sensors[0].offline_after_secs: must be between 1 and 86400 seconds, not 0",
            "42:20: error: shelf_sensors[0].alert_dwell_secs: must be between 0 and 86400 seconds, not 100000",
        ],
    );
}

#[test]
fn a_deadband_wider_than_an_item_is_a_warning() {
    let text = edit(&[("restocked_at = 6", "restocked_at = 6\ndeadband_grams = 500")]);
    let report = check(&text, &CheckOptions::default());
    assert!(report.profile.is_some());
    assert!(!report.has_errors());
    assert_eq!(report.problems.len(), 1);
    assert_eq!(report.problems[0].severity, Severity::Warning);
    assert_eq!(
        report.problems[0].to_string(),
        "41:18: warning: shelf_sensors[0].deadband_grams: a deadband of 500 g hides single items of 500 g (hint: keep deadband_grams below the item's weight)"
    );
    // Warnings do not stop `parse`.
    assert!(firmware_config::parse(&text).is_ok());
}

#[test]
fn every_problem_has_a_line_and_column() {
    let text = edit(&[
        ("id = \"store-0042\"", "id = \"\""),
        ("port = \"/dev/ttyUSB1\"", "port = \"/dev/ttyUSB0\""),
        ("low_stock_at = 3", "low_stock_at = 9"),
    ]);
    let report = check(&text, &CheckOptions::default());
    assert_eq!(report.problems.len(), 3);
    for p in report.problems {
        assert!(p.line.is_some() && p.column.is_some(), "{p:?}");
    }
}

#[test]
fn load_reports_the_file_in_every_line() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("store.toml");
    std::fs::write(&path, edit(&[("port = 8883", "port = 0")])).expect("write");
    let err = firmware_config::load(&path).expect_err("invalid");
    assert_eq!(
        err.to_string(),
        format!(
            "profile {0} has 1 problem(s):\n  {0}:13:8: error: cloud.port: must not be 0 (hint: 8883 for MQTT over TLS)",
            path.display()
        )
    );
}

#[test]
fn outbox_limits_that_could_refuse_events_for_ever() {
    assert_problems(
        &[(
            "data_dir = \"/var/lib/storelink\"",
            "data_dir = \"/var/lib/storelink\"\n\n[outbox]\nmax_bytes = 1000000\nmax_rows = 0\ndisk_reserve_bytes = 8589934592",
        )],
        &[
            "12:13: error: outbox.max_bytes: must be at least 3932160 bytes, not 1000000 (hint: the disk the outbox may use, e.g. 1073741824 (1 GiB))",
            "13:12: error: outbox.max_rows: must be greater than 0 (hint: e.g. 5000000)",
            "14:22: error: outbox.disk_reserve_bytes: must be between 0 and 1073741824 bytes, not 8589934592",
        ],
    );
}

#[test]
fn terminal_tokens_need_listed_terminals_and_non_empty_files() {
    let dir = tempfile::tempdir().expect("temp dir");
    std::fs::write(dir.path().join("pos-01"), " \n").expect("write");
    let tokens = format!(
        "data_dir = \"/var/lib/storelink\"\nterminal_tokens_dir = \"{}\"",
        dir.path().display()
    );
    // The agent refuses to start on a blank token file: so does the check.
    let text = edit(&[("data_dir = \"/var/lib/storelink\"", &tokens)]);
    let problems = problems_of(&text);
    assert_eq!(problems.len(), 1, "{problems:?}");
    assert!(
        problems[0].contains(
            "error: agent.terminal_tokens_dir: no token for terminal `pos-01`: the file is empty"
        ),
        "{problems:?}"
    );
    std::fs::write(dir.path().join("pos-01"), "s3cret\n").expect("write");
    assert_eq!(problems_of(&text), Vec::<String>::new());
    // No terminals listed: with tokens on, every sale would be refused.
    let text = edit(&[
        ("data_dir = \"/var/lib/storelink\"", &tokens),
        ("[[terminals]]\nid = \"pos-01\"\n", ""),
    ]);
    let problems = problems_of(&text);
    assert_eq!(problems.len(), 1, "{problems:?}");
    assert!(
        problems[0].contains(
            "error: agent.terminal_tokens_dir: tokens are on but no [[terminals]] are listed"
        ),
        "{problems:?}"
    );
}
