//! Issue 4 acceptance, scanners: reads written into real pseudo-terminals
//! (socat `pty,raw,echo=0,link=…` pairs) at the configured serial settings
//! come out of Kafka as scan events, in order: valid and invalid
//! symbologies, noise bytes, mixed terminators, a frame split across many
//! writes, an over-long frame, a byte-terminated scanner, and a port that
//! disappears and comes back (socat killed and started again on the same
//! link path) with its status events.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use harness::agent::{metric_value, StoreStack};
use harness::kafka::Record;
use protocol::topics::KafkaTopic;
use serde_json::Value;

/// A socat PTY pair: `port` is what the agent opens as the scanner's serial
/// device, `feeder` is where the test writes what the scanner "sends".
/// `stty -a` of a port: the line settings its open file description has.
fn stty(port: &Path) -> String {
    let out = Command::new("stty")
        .arg("-F")
        .arg(port)
        .arg("-a")
        .output()
        .expect("stty (coreutils) runs");
    assert!(
        out.status.success(),
        "stty -F {} -a: {}",
        port.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

struct Pty {
    port: PathBuf,
    feeder: PathBuf,
    child: Option<Child>,
}

impl Pty {
    fn new(dir: &Path, name: &str) -> Pty {
        let mut p = Pty {
            port: dir.join(format!("{name}-port")),
            feeder: dir.join(format!("{name}-feeder")),
            child: None,
        };
        p.start();
        p
    }

    fn start(&mut self) {
        let _ = std::fs::remove_file(&self.port);
        let _ = std::fs::remove_file(&self.feeder);
        let child = Command::new("socat")
            .arg(format!("pty,raw,echo=0,link={}", self.port.display()))
            .arg(format!("pty,raw,echo=0,link={}", self.feeder.display()))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("socat must be installed (apt-get install socat)");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while !(self.port.exists() && self.feeder.exists()) {
            assert!(
                Instant::now() < deadline,
                "socat did not create {}",
                self.port.display()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGTERM: socat closes both PTYs and removes the links — to the agent
    /// this is a USB scanner being unplugged.
    fn unplug(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = Command::new("kill").arg(c.id().to_string()).status();
            let _ = c.wait();
        }
        let deadline = Instant::now() + Duration::from_secs(5);
        while self.port.exists() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn send(&self, bytes: &[u8]) {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .open(&self.feeder)
            .expect("open the feeder end");
        f.write_all(bytes).expect("write to the PTY");
        f.flush().expect("flush");
    }
}

impl Drop for Pty {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn envelope(r: &Record) -> Value {
    serde_json::from_slice(&r.value).expect("envelope JSON")
}

fn from_device(records: &[Record], device: &str) -> Vec<Value> {
    records
        .iter()
        .map(envelope)
        .filter(|e| e["source"]["device_id"] == device)
        .collect()
}

fn scans(stack: &StoreStack, device: &str, at_least: usize) -> Vec<Value> {
    let topic = KafkaTopic::CustomerInteractions.name();
    let records = stack.consume(
        topic,
        |rs| from_device(rs, device).len() >= at_least,
        Duration::from_secs(60),
    );
    from_device(&records, device)
        .into_iter()
        .map(|e| {
            assert_eq!(e["schema"], "storelink.scan");
            assert_eq!(e["source"]["kind"], "scanner");
            e["body"].clone()
        })
        .collect()
}

fn states(stack: &StoreStack, device: &str, want: &[&str]) -> Vec<String> {
    let topic = KafkaTopic::Devices.name();
    let pick = |rs: &[Record]| -> Vec<String> {
        from_device(rs, device)
            .iter()
            .map(|e| e["body"]["state"].as_str().unwrap_or_default().to_owned())
            .collect()
    };
    let records = stack.consume(
        topic,
        |rs| pick(rs).len() >= want.len(),
        Duration::from_secs(60),
    );
    pick(&records)
}

/// (valid, reason code, truncated) of each scan, to compare in one assertion.
fn outline(scans: &[Value]) -> Vec<(bool, String, bool)> {
    scans
        .iter()
        .map(|s| {
            (
                s["valid"].as_bool().expect("valid"),
                s["invalid_reason"]
                    .as_str()
                    .map(|r| r.split(':').next().unwrap_or_default().to_owned())
                    .unwrap_or_default(),
                s["truncated"].as_bool().unwrap_or(false),
            )
        })
        .collect()
}

#[test]
fn scanner_reads_reach_kafka_in_order_and_an_unplugged_scanner_comes_back() {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut lane = Pty::new(dir.path(), "lane-1");
    let sco = Pty::new(dir.path(), "sco-1");
    let extra = format!(
        r#"
[[scanners]]
id = "scan-lane-1"
port = "{lane}"
lane = "lane-1"
baud_rate = 19200
data_bits = 7
parity = "even"
stop_bits = 2
flow_control = "none"
terminator = "cr"
max_frame_len = 48
reconnect_max_backoff_ms = 500

[[scanners]]
id = "scan-sco-1"
port = "{sco}"
lane = "sco-1"
baud_rate = 115200
terminator = 3
"#,
        lane = lane.port.display(),
        sco = sco.port.display(),
    );
    let stack = StoreStack::start(&extra).expect("store stack");
    // The port is open once the agent says the scanner is online; bytes
    // written before that would race the open.
    assert_eq!(states(&stack, "scan-lane-1", &["online"]), ["online"]);
    assert_eq!(states(&stack, "scan-sco-1", &["online"]), ["online"]);
    // A pseudo-terminal keeps the line settings the agent applied, as far
    // as Linux lets it: its pty driver forces 8 data bits without a parity
    // bit, and a speed set the way serialport does (BOTHER) reads back as 0
    // through stty. What remains shows the profile was applied: 2 stop bits
    // and, for even parity, parity checking of input.
    let settings = stty(&lane.port);
    for want in ["cstopb", "inpck"] {
        assert!(
            settings.split_whitespace().any(|w| w == want),
            "the lane scanner's port is not set to `{want}`: {settings}"
        );
    }
    let settings = stty(&sco.port);
    for want in ["-cstopb", "-inpck"] {
        assert!(
            settings.split_whitespace().any(|w| w == want),
            "the self-checkout scanner's port is not set to `{want}`: {settings}"
        );
    }

    // What a lane scanner sends on a busy morning.
    lane.send(b"]E04006381333931\r"); // EAN-13
    lane.send(b"]E00036000291452\r\n"); // UPC-A padded to 13, CRLF: the LF must not become a read
    lane.send(b"]E04006381333932\r"); // bad check digit
    lane.send(b"\x00\x13\xff\xfe\r"); // line noise
    lane.send(b"]C10104006381333931172612001010A1B2C3\x1d21SER-99\n"); // GS1-128, LF-terminated
    lane.send(b"]C121SER-ONLY\r"); // (21) without (01)
    lane.send(b"]d2\x1d01040063813339313103001250\r"); // GS1 DataMatrix with a net weight
    lane.send(b"]C10104006381333931\x1d7777\r"); // unknown AI
    for b in b"]E496385074\r" {
        // EAN-8, one byte per write
        lane.send(&[*b]);
        std::thread::sleep(Duration::from_millis(3));
    }
    lane.send(&[b'5'; 60]); // over-long (max 48), terminator in a later write
    lane.send(b"\r");
    lane.send(b"]Q1https://example.com/p/1\r"); // plain QR
    lane.send(b"]A0CODE39-1\r\r\n\n"); // Code 39, then stray terminators
    lane.send(b"]E04006381333931\r"); // a good read after all of that
    sco.send(b"]E496385074\x03\x03]e00104006381333931\x03");

    let expected = vec![
        (true, String::new(), false),
        (true, String::new(), false),
        (false, "bad_check_digit".to_owned(), false),
        (false, "noise".to_owned(), false),
        (true, String::new(), false),
        (false, "missing_ai".to_owned(), false),
        (true, String::new(), false),
        (false, "unknown_ai".to_owned(), false),
        (true, String::new(), false),
        (false, "truncated".to_owned(), true),
        (true, String::new(), false),
        (true, String::new(), false),
        (true, String::new(), false),
    ];
    let got = scans(&stack, "scan-lane-1", expected.len());
    assert_eq!(outline(&got), expected, "{got:#?}");
    assert!(got.iter().all(|s| s["lane"] == "lane-1"));
    assert_eq!(got[0]["symbology"], "]E0");
    assert_eq!(got[0]["gtin"], "4006381333931");
    assert_eq!(got[1]["gtin"], "0036000291452");
    assert_eq!(
        got[2]["invalid_reason"],
        "bad_check_digit: 4006381333932: check digit is 2 but should be 1"
    );
    assert_eq!(
        got[3]["invalid_reason"],
        "noise: unexpected byte 0x00 at offset 0"
    );
    assert_eq!(got[3]["data"], "\\x00\\x13\\xFF\\xFE");
    assert_eq!(got[4]["gtin"], "04006381333931");
    assert_eq!(
        got[4]["elements"],
        serde_json::json!([
            {"ai": "01", "value": "04006381333931"},
            {"ai": "17", "value": "261200"},
            {"ai": "10", "value": "10A1B2C3"},
            {"ai": "21", "value": "SER-99"}
        ])
    );
    assert_eq!(
        got[4]["data"],
        "0104006381333931172612001010A1B2C3\u{1d}21SER-99"
    );
    assert_eq!(got[5]["invalid_reason"], "missing_ai: (21) requires (01)");
    assert_eq!(got[6]["symbology"], "]d2");
    assert_eq!(
        got[6]["elements"][1],
        serde_json::json!({"ai": "3103", "value": "001250"})
    );
    assert_eq!(
        got[7]["invalid_reason"],
        "unknown_ai: no AI starts with `7777` at offset 17"
    );
    assert_eq!(got[8]["symbology"], "]E4");
    assert_eq!(got[8]["gtin"], "96385074");
    assert_eq!(got[9]["data"], "5".repeat(48));
    assert!(got[9].get("gtin").is_none());
    assert_eq!(got[10]["symbology"], "]Q1");
    assert_eq!(got[10]["data"], "https://example.com/p/1");
    assert_eq!(got[11]["data"], "CODE39-1");
    assert_eq!(got[12]["gtin"], "4006381333931");

    let sco_scans = scans(&stack, "scan-sco-1", 2);
    assert_eq!(
        outline(&sco_scans),
        vec![(true, String::new(), false); 2],
        "{sco_scans:#?}"
    );
    assert_eq!(sco_scans[1]["symbology"], "]e0");
    assert_eq!(sco_scans[1]["gtin"], "04006381333931");

    // Unplug the lane scanner, plug it back in on the same path.
    lane.unplug();
    assert_eq!(
        states(&stack, "scan-lane-1", &["online", "offline"]),
        ["online", "offline"]
    );
    std::thread::sleep(Duration::from_millis(700)); // a few failed reopen attempts
    lane.start();
    assert_eq!(
        states(&stack, "scan-lane-1", &["online", "offline", "online"]),
        ["online", "offline", "online"]
    );
    lane.send(b"]E496385074\r");
    let after = scans(&stack, "scan-lane-1", expected.len() + 1);
    assert_eq!(after.len(), expected.len() + 1, "{after:#?}");
    assert_eq!(
        after.last().map(|s| s["gtin"].clone()),
        Some(Value::from("96385074"))
    );

    let m = stack.agent_metrics();
    let get =
        |name: &str| metric_value(&m, name).unwrap_or_else(|| panic!("{name} missing in\n{m}"));
    assert_eq!(
        get(r#"storelink_agent_scanner_reads_total{scanner="scan-lane-1",result="valid"}"#),
        9.0
    );
    assert_eq!(
        get(r#"storelink_agent_scanner_reads_total{scanner="scan-lane-1",result="invalid"}"#),
        5.0
    );
    assert_eq!(
        get(r#"storelink_agent_scanner_frames_truncated_total{scanner="scan-lane-1"}"#),
        1.0
    );
    assert_eq!(
        get(r#"storelink_agent_scanner_reconnects_total{scanner="scan-lane-1"}"#),
        1.0
    );
    assert_eq!(
        get(r#"storelink_agent_scanner_reads_total{scanner="scan-sco-1",result="valid"}"#),
        2.0
    );
}
