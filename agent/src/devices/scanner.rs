//! One task per serial barcode scanner: open the port, cut frames
//! ([`super::framing`]), decode them ([`super::gs1`]), submit scan events in
//! the order they were read.
//!
//! Port lifecycle, each change a `device_status` event:
//! * opened → `online` (also at start);
//! * cannot be opened, or a read fails / hits end of file (USB scanner
//!   unplugged, pseudo-terminal closed) → `offline` with the reason, once;
//! * reopened with exponential backoff and jitter, capped at
//!   `reconnect_max_backoff_ms` (starting over only after the port stayed
//!   open a while, [`crate::reconnect`]); back → `online`, and
//!   `scanner_reconnects_total` counts it.
//!
//! A partial frame when the port goes away is dropped: what arrives after a
//! reconnect starts a new read. Scanners cannot resend, so a refused event
//! (outbox full or failing) is counted and logged with the scanner id.

use std::time::Duration;

use chrono::Utc;
#[cfg(test)]
use firmware_config::EightDigitReads;
use firmware_config::{FlowControl, Parity, Scanner};
use protocol::device::{DeviceState, DeviceStatus, Scan};
use protocol::{EventBody, Source, SourceKind};
use tokio::io::AsyncReadExt;
use tokio_serial::SerialPortBuilderExt;
use tokio_util::sync::CancellationToken;

use super::framing::{Frame, Framer};
use super::gs1;
use super::Submitter;
use crate::reconnect::Reconnect;

/// The first wait before reopening a port; doubles up to the configured cap.
const INITIAL_BACKOFF: Duration = Duration::from_millis(100);

/// The scan event body for one frame.
pub fn scan_of(frame: &Frame, cfg: &Scanner) -> Scan {
    let d = if frame.truncated {
        gs1::decode_truncated(&frame.bytes, cfg.max_frame_len)
    } else if frame.incomplete {
        gs1::decode_incomplete(&frame.bytes, cfg.frame_timeout_ms)
    } else {
        gs1::decode_with(&frame.bytes, cfg.eight_digit_reads)
    };
    let lane = &cfg.lane;
    Scan {
        lane: lane.to_owned(),
        valid: d.error.is_none(),
        invalid_reason: d.error.as_ref().map(ToString::to_string),
        symbology: d.symbology,
        data: d.data,
        gtin: d.gtin,
        elements: d.elements,
        truncated: frame.truncated,
    }
}

/// Waits between attempts to reopen a port, capped by the profile.
fn reconnect_policy(cfg: &Scanner) -> Reconnect {
    Reconnect::new(
        INITIAL_BACKOFF,
        Duration::from_millis(cfg.reconnect_max_backoff_ms),
        0.3,
    )
}

fn open(cfg: &Scanner) -> Result<tokio_serial::SerialStream, tokio_serial::Error> {
    use tokio_serial::{DataBits, StopBits};
    let data_bits = match cfg.data_bits {
        5 => DataBits::Five,
        6 => DataBits::Six,
        7 => DataBits::Seven,
        _ => DataBits::Eight,
    };
    let parity = match cfg.parity {
        Parity::None => tokio_serial::Parity::None,
        Parity::Odd => tokio_serial::Parity::Odd,
        Parity::Even => tokio_serial::Parity::Even,
    };
    let stop_bits = if cfg.stop_bits == 2 {
        StopBits::Two
    } else {
        StopBits::One
    };
    let flow = match cfg.flow_control {
        FlowControl::None => tokio_serial::FlowControl::None,
        FlowControl::Software => tokio_serial::FlowControl::Software,
        FlowControl::Hardware => tokio_serial::FlowControl::Hardware,
    };
    tokio_serial::new(cfg.port.to_string_lossy(), cfg.baud_rate)
        .data_bits(data_bits)
        .parity(parity)
        .stop_bits(stop_bits)
        .flow_control(flow)
        .open_native_async()
}

/// Runs one scanner until `shutdown`.
pub async fn run(cfg: Scanner, submitter: Submitter, shutdown: CancellationToken) {
    let source = Source {
        kind: SourceKind::Scanner,
        device_id: cfg.id.clone(),
    };
    let mut framer = Framer::new(cfg.terminator, cfg.max_frame_len);
    let mut backoff = reconnect_policy(&cfg);
    // Whether the last status event sent was `offline` (one per outage).
    let mut offline = false;
    // A port that opens after failing to at start was never lost: its
    // first open is no reconnect.
    let mut was_open = false;
    let mut buf = vec![0u8; 4096];
    let mut frames = Vec::new();
    loop {
        match open(&cfg) {
            Ok(mut port) => {
                backoff.up(tokio::time::Instant::now());
                if offline && was_open {
                    submitter.metrics.reconnected(&cfg.id);
                }
                was_open = true;
                tracing::info!(port = %cfg.port.display(), "scanner port open");
                submitter.status(&source, DeviceState::Online, None).await;
                let frame_timeout = Duration::from_millis(cfg.frame_timeout_ms);
                let why = loop {
                    // Restarted after every read: the frame timeout counts
                    // from the last byte.
                    let idle = tokio::time::sleep(frame_timeout);
                    let n = tokio::select! {
                        // Bytes already waiting win over a timeout that
                        // expired while this task waited for a CPU.
                        biased;
                        _ = shutdown.cancelled() => return,
                        r = port.read(&mut buf) => r,
                        _ = idle, if framer.pending() > 0 => {
                            if let Some(frame) = framer.take_idle() {
                                handle_frame(&cfg, &source, &submitter, &frame).await;
                            }
                            continue;
                        }
                    };
                    match n {
                        Ok(0) => break "the port closed (end of file)".to_owned(),
                        Ok(n) => {
                            framer.push(&buf[..n], &mut frames);
                            for frame in frames.drain(..) {
                                handle_frame(&cfg, &source, &submitter, &frame).await;
                            }
                        }
                        Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                        Err(e) => break format!("read failed: {e}"),
                    }
                };
                let dropped = framer.reset();
                tracing::warn!(port = %cfg.port.display(), partial_bytes = dropped, "scanner went away: {why}");
                offline = true;
                submitter
                    .status(&source, DeviceState::Offline, Some(why))
                    .await;
            }
            Err(e) => {
                if !offline {
                    tracing::warn!(port = %cfg.port.display(), "cannot open scanner port: {e}");
                    offline = true;
                    submitter
                        .status(
                            &source,
                            DeviceState::Offline,
                            Some(format!("cannot open {}: {e}", cfg.port.display())),
                        )
                        .await;
                } else {
                    tracing::debug!(port = %cfg.port.display(), "still cannot open scanner port: {e}");
                }
            }
        }
        let wait = backoff.down(tokio::time::Instant::now());
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(wait) => {}
        }
    }
}

async fn handle_frame(cfg: &Scanner, source: &Source, submitter: &Submitter, frame: &Frame) {
    let scan = scan_of(frame, cfg);
    submitter.metrics.scanner_read(&cfg.id, scan.valid);
    if frame.truncated {
        submitter.metrics.truncated(&cfg.id);
    }
    match &scan.invalid_reason {
        Some(reason) => tracing::info!(data = %scan.data, "invalid scan: {reason}"),
        None => tracing::debug!(data = %scan.data, "scan"),
    }
    submitter
        .submit(source, Utc::now().fixed_offset(), EventBody::Scan(scan))
        .await;
}

/// The body of a status change event.
pub(crate) fn status_body(state: DeviceState, detail: Option<String>) -> EventBody {
    EventBody::DeviceStatus(DeviceStatus { state, detail })
}

#[cfg(test)]
mod tests {
    use super::*;
    use firmware_config::EightDigitReads;

    fn frame(bytes: &[u8], truncated: bool) -> Frame {
        Frame {
            bytes: bytes.to_vec(),
            truncated,
            incomplete: false,
        }
    }

    fn profile(max_frame_len: usize, eight_digit_reads: EightDigitReads) -> Scanner {
        Scanner {
            id: "s".into(),
            port: "/dev/null".into(),
            lane: "lane-1".into(),
            baud_rate: 9600,
            data_bits: 8,
            parity: Parity::None,
            stop_bits: 1,
            flow_control: FlowControl::None,
            terminator: firmware_config::Terminator::Cr,
            max_frame_len,
            frame_timeout_ms: 500,
            reconnect_max_backoff_ms: 400,
            eight_digit_reads,
        }
    }

    #[test]
    fn frames_become_scan_bodies() {
        let p = profile(256, EightDigitReads::Ean8);
        let s = scan_of(&frame(b"]E04006381333931", false), &p);
        assert!(s.valid);
        assert_eq!(s.lane, "lane-1");
        assert_eq!(s.symbology.as_deref(), Some("]E0"));
        assert_eq!(
            s.gtin.map(|g| g.to_string()).as_deref(),
            Some("4006381333931")
        );
        let s = scan_of(&frame(b"]E04006381333932", false), &p);
        assert!(!s.valid);
        assert_eq!(
            s.invalid_reason.as_deref(),
            Some("bad_check_digit: 4006381333932: check digit is 2 but should be 1")
        );
        let s = scan_of(
            &frame(b"]E04006381333931", true),
            &profile(16, EightDigitReads::Ean8),
        );
        assert!(!s.valid && s.truncated && s.gtin.is_none());
        assert_eq!(
            s.invalid_reason.as_deref(),
            Some("truncated: read longer than 16 bytes was cut")
        );
        // The profile says how 8 unprefixed digits read.
        let upc_e = scan_of(
            &frame(b"04252614", false),
            &profile(256, EightDigitReads::UpcE),
        );
        assert!(upc_e.valid, "{upc_e:?}");
        assert_eq!(
            upc_e.gtin.map(|g| g.to_string()).as_deref(),
            Some("042100005264")
        );
        let ean8 = scan_of(&frame(b"04252614", false), &p);
        assert!(!ean8.valid && ean8.gtin.is_none(), "{ean8:?}");
    }

    #[test]
    fn backoff_is_capped_by_the_profile() {
        let mut cfg = profile(256, EightDigitReads::Ean8);
        let mut b = reconnect_policy(&cfg);
        let now = tokio::time::Instant::now();
        let waits: Vec<Duration> = (0..12).map(|_| b.down(now)).collect();
        assert!(
            waits.iter().all(|w| *w <= Duration::from_millis(400)),
            "{waits:?}"
        );
        assert!(waits[0] <= Duration::from_millis(130), "{waits:?}");
        assert_eq!(waits[11], Duration::from_millis(400).min(waits[11]));
        // A port that stayed open for a while starts the backoff over.
        b.up(now);
        assert!(b.down(now + Reconnect::STABLE) <= Duration::from_millis(130));
        cfg.reconnect_max_backoff_ms = 50;
        let mut b = reconnect_policy(&cfg);
        assert!(b.down(now) <= Duration::from_millis(50));
    }
}

/// The scanner task against a real pseudo-terminal (socat) and a real
/// outbox: what the e2e tests check through Kafka, checked here without it.
#[cfg(test)]
mod pty_tests {
    use std::io::Write;
    use std::path::{Path, PathBuf};
    use std::process::{Child, Command, Stdio};
    use std::time::Duration;

    use serde_json::Value;

    use super::*;
    use crate::devices::metrics::DeviceMetrics;
    use crate::ingest::{Ingest, StoreIdentity};
    use crate::outbox::{Outbox, OutboxConfig};

    struct Socat {
        child: Child,
    }

    impl Socat {
        /// A PTY pair: the scanner end (what the agent opens) and the feeder end (what the test writes).
        fn start(scanner: &Path, feeder: &Path) -> Socat {
            let _ = std::fs::remove_file(scanner);
            let _ = std::fs::remove_file(feeder);
            let child = Command::new("socat")
                .arg(format!("pty,raw,echo=0,link={}", scanner.display()))
                .arg(format!("pty,raw,echo=0,link={}", feeder.display()))
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("socat must be installed (apt-get install socat)");
            let deadline = std::time::Instant::now() + Duration::from_secs(10);
            while !(scanner.exists() && feeder.exists()) {
                assert!(
                    std::time::Instant::now() < deadline,
                    "socat did not create its links"
                );
                std::thread::sleep(Duration::from_millis(20));
            }
            Socat { child }
        }

        /// SIGTERM: socat closes the PTYs and removes the links, like an unplugged USB scanner.
        fn stop(mut self) {
            let _ = Command::new("kill")
                .arg(self.child.id().to_string())
                .status();
            let _ = self.child.wait();
        }
    }

    impl Drop for Socat {
        fn drop(&mut self) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }

    async fn events(outbox: &crate::outbox::OutboxHandle) -> Vec<Value> {
        outbox
            .read_after(0, 10_000, 64 << 20)
            .await
            .expect("read outbox")
            .into_iter()
            .map(|e| serde_json::from_slice(&e.payload).expect("envelope json"))
            .collect()
    }

    async fn wait_for(
        outbox: &crate::outbox::OutboxHandle,
        what: &str,
        pred: impl Fn(&[Value]) -> bool,
    ) -> Vec<Value> {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        loop {
            let evs = events(outbox).await;
            if pred(&evs) {
                return evs;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "timed out waiting for {what}; have {evs:#?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    fn statuses(evs: &[Value]) -> Vec<String> {
        evs.iter()
            .filter(|e| e["schema"] == "storelink.device_status")
            .map(|e| e["body"]["state"].as_str().unwrap_or_default().to_owned())
            .collect()
    }

    fn scans(evs: &[Value]) -> Vec<Value> {
        evs.iter()
            .filter(|e| e["schema"] == "storelink.scan")
            .map(|e| e["body"].clone())
            .collect()
    }

    fn write(feeder: &PathBuf, bytes: &[u8]) {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .open(feeder)
            .expect("open feeder");
        f.write_all(bytes).expect("write feeder");
        f.flush().expect("flush");
    }

    /// The scanner of these tests: 19200 baud 7E2 on `port`, frames of at
    /// most 24 bytes, a 200 ms frame timeout.
    fn pty_scanner(id: &str, port: &Path) -> Scanner {
        Scanner {
            id: id.into(),
            port: port.to_path_buf(),
            lane: "lane-9".into(),
            baud_rate: 19200,
            data_bits: 7,
            parity: Parity::Even,
            stop_bits: 2,
            flow_control: FlowControl::None,
            terminator: firmware_config::Terminator::Cr,
            max_frame_len: 24,
            frame_timeout_ms: 200,
            reconnect_max_backoff_ms: 300,
            eight_digit_reads: EightDigitReads::UpcE,
        }
    }

    /// A scanner task running against an outbox in `dir`.
    struct Running {
        outbox: Outbox,
        handle: crate::outbox::OutboxHandle,
        metrics: DeviceMetrics,
        shutdown: CancellationToken,
        task: tokio::task::JoinHandle<()>,
    }

    impl Running {
        fn start(dir: &Path, cfg: Scanner) -> Running {
            let store = StoreIdentity {
                store_id: "store-pty".into(),
                region: "eu-west".into(),
            };
            let outbox = Outbox::open(
                OutboxConfig::new(dir.join("outbox.db"), 1 << 30, 1_000_000),
                store.clone(),
            )
            .expect("outbox");
            let handle = outbox.handle();
            let metrics = DeviceMetrics::default();
            let shutdown = CancellationToken::new();
            let task = tokio::spawn(run(
                cfg,
                Submitter {
                    ingest: Ingest::new(handle.clone(), store),
                    metrics: metrics.clone(),
                },
                shutdown.clone(),
            ));
            Running {
                outbox,
                handle,
                metrics,
                shutdown,
                task,
            }
        }
    }

    /// The device metrics as Prometheus text.
    fn metrics_text(metrics: &DeviceMetrics) -> String {
        let mut text = String::new();
        let mut reg = prometheus_client::registry::Registry::with_prefix("storelink_agent");
        metrics.register(&mut reg);
        prometheus_client::encoding::text::encode(&mut text, &reg).expect("encode");
        text
    }

    /// A scanner unplugged when the agent starts and plugged in later goes
    /// offline then online, but was never lost: no reconnect is counted.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_scanner_plugged_in_after_the_start_is_not_a_reconnect() {
        let dir = tempfile::tempdir().expect("tmp");
        let port = dir.path().join("scanner");
        let feeder = dir.path().join("feeder");
        let r = Running::start(dir.path(), pty_scanner("scan-late", &port));
        wait_for(&r.handle, "offline", |e| statuses(e) == ["offline"]).await;
        let socat = Socat::start(&port, &feeder);
        wait_for(&r.handle, "online", |e| {
            statuses(e) == ["offline", "online"]
        })
        .await;

        let text = metrics_text(&r.metrics);
        assert!(
            !text.contains(r#"storelink_agent_scanner_reconnects_total{scanner="scan-late"} 1"#),
            "{text}"
        );
        r.shutdown.cancel();
        let _ = tokio::time::timeout(Duration::from_secs(2), r.task).await;
        drop(socat);
        r.outbox.close().await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn scanner_reads_a_pty_and_survives_it_vanishing() {
        let dir = tempfile::tempdir().expect("tmp");
        let port = dir.path().join("scanner");
        let feeder = dir.path().join("feeder");
        let socat = Socat::start(&port, &feeder);
        let Running {
            outbox,
            handle,
            metrics,
            shutdown,
            task,
        } = Running::start(dir.path(), pty_scanner("scan-pty", &port));
        wait_for(&handle, "online", |e| statuses(e) == ["online"]).await;

        write(
            &feeder,
            b"]E04006381333931\r]E00036000291452\r\n]E04006381333932\r\x00\x13\xff\r",
        );
        write(&feeder, b"]C10104006381333931\x1d21AB\n");
        for b in b"]E496385074\r" {
            write(&feeder, &[*b]);
        }
        // 60 bytes at a 24-byte limit: the read is cut, and the next 24
        // bytes still without a terminator are a second truncated read
        // (framing.rs: never more than a frame's length discarded unseen).
        write(&feeder, &[b'7'; 60]);
        write(&feeder, b"\r]E04006381333931\r");
        let evs = wait_for(&handle, "9 scans", |e| scans(e).len() >= 9).await;
        let s = scans(&evs);
        let summary: Vec<(bool, Option<&str>, bool)> = s
            .iter()
            .map(|b| {
                (
                    b["valid"].as_bool().unwrap_or_default(),
                    b["invalid_reason"]
                        .as_str()
                        .map(|r| r.split(':').next().unwrap_or_default()),
                    b["truncated"].as_bool().unwrap_or(false),
                )
            })
            .collect();
        assert_eq!(
            summary,
            vec![
                (true, None, false),
                (true, None, false),
                (false, Some("bad_check_digit"), false),
                (false, Some("noise"), false),
                (true, None, false),
                (true, None, false),
                (false, Some("truncated"), true),
                (false, Some("truncated"), true),
                (true, None, false),
            ],
            "{s:#?}"
        );
        assert_eq!(s[1]["gtin"], "0036000291452");
        assert_eq!(s[4]["elements"][1]["value"], "AB");
        assert_eq!(s[5]["gtin"], "96385074");
        assert_eq!(s[6]["data"], "7".repeat(24));
        assert_eq!(s[7]["data"], "7".repeat(24));

        socat.stop();
        wait_for(&handle, "offline", |e| statuses(e) == ["online", "offline"]).await;
        let socat = Socat::start(&port, &feeder);
        wait_for(&handle, "online again", |e| {
            statuses(e) == ["online", "offline", "online"]
        })
        .await;
        // Then a UPC-E without identifier, as this profile says it sends.
        write(&feeder, b"]E496385074\r04252614\r");
        let evs = wait_for(&handle, "scans after the reconnect", |e| {
            scans(e).len() >= 11
        })
        .await;
        assert_eq!(scans(&evs)[9]["gtin"], "96385074");
        assert_eq!(scans(&evs)[10]["gtin"], "042100005264");
        assert_eq!(scans(&evs)[10]["data"], "04252614");

        // A stray byte (a scanner powering up on a fixed port) and no
        // terminator: after the frame timeout it is an invalid read of its
        // own, and the scan that follows is read whole.
        write(&feeder, b"\x00");
        tokio::time::sleep(Duration::from_millis(600)).await;
        write(&feeder, b"]E04006381333931\r");
        let evs = wait_for(&handle, "the stray byte and the scan after it", |e| {
            scans(e).len() >= 13
        })
        .await;
        let s = scans(&evs);
        assert_eq!(s[11]["valid"], false);
        assert_eq!(s[11]["data"], "\\x00");
        assert!(
            s[11]["invalid_reason"]
                .as_str()
                .is_some_and(|r| r.starts_with("incomplete: no terminator within 200 ms")),
            "{:#?}",
            s[11]
        );
        assert_eq!(s[12]["valid"], true, "{:#?}", s[12]);
        assert_eq!(s[12]["gtin"], "4006381333931");

        let text = metrics_text(&metrics);
        assert!(
            text.contains(
                r#"storelink_agent_scanner_reads_total{scanner="scan-pty",result="valid"} 8"#
            ),
            "{text}"
        );
        assert!(
            text.contains(
                r#"storelink_agent_scanner_reads_total{scanner="scan-pty",result="invalid"} 5"#
            ),
            "{text}"
        );
        assert!(
            text.contains(
                r#"storelink_agent_scanner_frames_truncated_total{scanner="scan-pty"} 2"#
            ),
            "{text}"
        );
        assert!(
            text.contains(r#"storelink_agent_scanner_reconnects_total{scanner="scan-pty"} 1"#),
            "{text}"
        );

        shutdown.cancel();
        tokio::time::timeout(Duration::from_secs(2), task)
            .await
            .expect("scanner task ends promptly on shutdown")
            .expect("no panic");
        drop(socat);
        outbox.close().await;
    }
}
