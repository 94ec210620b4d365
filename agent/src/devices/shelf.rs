//! Shelf load cells: payload parsing, calibration, deadband, stock-alert
//! hysteresis and silence detection. Pure state machines, no I/O: the MQTT
//! task ([`super::shelf_task`]) feeds them messages and clock ticks and
//! submits what they return.
//!
//! # Payload (topic `sensors/{sensor_id}/raw`)
//! Either a plain integer of raw ADC counts (`8850608`, surrounding
//! whitespace allowed) or JSON `{"raw": 8850608, "ts": "2026-11-24T10:15:02Z"}`
//! where `ts` (RFC 3339, optional) is when the sensor took the reading;
//! without it the reading is stamped when the agent received it. Other JSON
//! fields are ignored, so a firmware update that adds one (a battery level)
//! does not turn every reading of that sensor unparseable. Anything else is
//! unparseable: counted, logged with the sensor id, and otherwise ignored (it
//! still shows the sensor is alive).
//!
//! # Per reading
//! 1. grams = (raw − zero_offset) / counts_per_gram, integer maths on the
//!    calibration's exact fraction (`span`, or a whole `counts_per_gram`),
//!    rounded half away from zero; item_count = round(grams / unit_weight), never
//!    below 0.
//! 2. Deadband: a [`ShelfReading`] is emitted only when the weight moved at
//!    least `deadband_grams` (at least 1 g) from the last emitted reading
//!    (the first reading, and the first after an offline spell, always are).
//! 3. Stock level, judged on emitted readings only so alerts agree with
//!    what the cloud has seen: `Normal` → `Low` when item_count ≤
//!    low_stock_at (alert `low_stock`), `Low` → `Normal` when item_count ≥
//!    restocked_at (alert `restocked`). The gap between the two thresholds
//!    is the hysteresis: a count jittering around one threshold gives one
//!    alert, not a burst. With `alert_dwell_secs` > 0 the count must stay
//!    across the threshold that long before the alert fires. The level
//!    starts unknown: a first reading at or below low_stock_at alerts,
//!    anything above is taken as normal.
//! 4. Silence: no message for `offline_after_secs` → status `offline`; the
//!    next message → `online` (the first message after start is `online` too).

use std::time::Duration;

use chrono::{DateTime, FixedOffset};
use firmware_config::{Scale, ShelfSensor};
use protocol::device::{DeviceState, ShelfReading, StockAlert, StockAlertKind};
use protocol::Gtin;
use tokio::time::Instant;

/// A parsed payload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawReading {
    pub raw: i64,
    pub taken_at: Option<DateTime<FixedOffset>>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PayloadError {
    #[error("payload is not UTF-8")]
    NotUtf8,
    #[error("payload is empty")]
    Empty,
    #[error(
        "payload is neither an integer nor JSON {{\"raw\": <integer>, \"ts\": <RFC 3339>}}: {0}"
    )]
    Malformed(String),
}

#[derive(serde::Deserialize)]
struct JsonReading {
    raw: i64,
    #[serde(default)]
    ts: Option<String>,
}

/// Parses a sensor payload (see the module docs for the format).
pub fn parse_payload(payload: &[u8]) -> Result<RawReading, PayloadError> {
    let text = std::str::from_utf8(payload).map_err(|_| PayloadError::NotUtf8)?;
    let text = text.trim();
    if text.is_empty() {
        return Err(PayloadError::Empty);
    }
    if text.starts_with('{') {
        let j: JsonReading =
            serde_json::from_str(text).map_err(|e| PayloadError::Malformed(e.to_string()))?;
        let taken_at = match j.ts {
            Some(ts) => Some(
                DateTime::parse_from_rfc3339(&ts)
                    .map_err(|e| PayloadError::Malformed(format!("ts `{ts}`: {e}")))?,
            ),
            None => None,
        };
        return Ok(RawReading {
            raw: j.raw,
            taken_at,
        });
    }
    text.parse::<i64>()
        .map(|raw| RawReading {
            raw,
            taken_at: None,
        })
        .map_err(|e| PayloadError::Malformed(format!("`{}`: {e}", truncate(text, 40))))
}

fn truncate(s: &str, n: usize) -> &str {
    match s.char_indices().nth(n) {
        Some((i, _)) => &s[..i],
        None => s,
    }
}

/// `n / d` rounded half away from zero; `d` must be positive.
pub fn div_round(n: i128, d: i128) -> i128 {
    debug_assert!(d > 0);
    let d = d.max(1);
    let (q, r) = (n / d, n % d);
    if 2 * r.abs() >= d {
        q + n.signum()
    } else {
        q
    }
}

/// The calibration of one sensor.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Calibration {
    pub zero_offset: i64,
    /// Counts per gram as a fraction, both parts positive.
    pub scale: Scale,
    /// One item's weight, positive.
    pub unit_weight_mg: u64,
}

impl Calibration {
    pub fn grams(&self, raw: i64) -> i64 {
        // (raw − zero) fits 65 bits and scale.grams 32, so the product
        // cannot overflow an i128.
        let g = div_round(
            (i128::from(raw) - i128::from(self.zero_offset)) * self.scale.grams.max(1),
            self.scale.counts.max(1),
        );
        i64::try_from(g).unwrap_or(if g < 0 { i64::MIN } else { i64::MAX })
    }

    /// Items on the shelf at `raw`: from the weight in milligrams, not the
    /// rounded grams, so items of a few grams are counted right.
    pub fn items(&self, raw: i64) -> u32 {
        // (raw − zero) fits 65 bits, × 1000 another 10, scale.grams 32.
        let mg = div_round(
            (i128::from(raw) - i128::from(self.zero_offset)) * 1000 * self.scale.grams.max(1),
            self.scale.counts.max(1),
        );
        if mg <= 0 {
            return 0;
        }
        let n = div_round(mg, i128::from(self.unit_weight_mg.max(1)));
        u32::try_from(n).unwrap_or(u32::MAX)
    }
}

/// What the state machine wants sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Output {
    Reading(ShelfReading),
    Alert(StockAlert),
    Status(DeviceState),
}

/// Why a reading produced no [`ShelfReading`]: for the readings metric.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReadingOutcome {
    Emitted,
    WithinDeadband,
}

impl ReadingOutcome {
    pub fn label(&self) -> &'static str {
        match self {
            ReadingOutcome::Emitted => "emitted",
            ReadingOutcome::WithinDeadband => "deadband",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Level {
    Unknown,
    Normal,
    Low,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Presence {
    /// Nothing heard since start.
    Unknown,
    Online,
    Offline,
}

/// One sensor's state.
#[derive(Debug, Clone)]
pub struct Shelf {
    gtin: Gtin,
    cal: Calibration,
    low_stock_at: u32,
    restocked_at: u32,
    deadband_grams: u32,
    offline_after: Duration,
    dwell: Duration,
    last_emitted: Option<ShelfReading>,
    /// False when the outbox did not store `last_emitted` (shed or
    /// refused): it is no baseline for the deadband, but alerts are still
    /// evaluated on it (the shelf's weight is real either way).
    baseline_stored: bool,
    level: Level,
    /// The alert waiting out its dwell time, and since when.
    pending: Option<(StockAlertKind, Instant)>,
    presence: Presence,
    /// Last message, or the start: silence is measured from here.
    last_heard: Instant,
}

impl Shelf {
    /// A state machine for `cfg`, whose silence is measured from `now`.
    /// `gtin`, `scale` and `unit_weight_mg` come from `cfg` (the profile
    /// validation guarantees they are valid).
    pub fn new(
        cfg: &ShelfSensor,
        gtin: Gtin,
        scale: Scale,
        unit_weight_mg: u64,
        now: Instant,
    ) -> Shelf {
        Shelf {
            gtin,
            cal: Calibration {
                zero_offset: cfg.zero_offset,
                scale,
                unit_weight_mg,
            },
            low_stock_at: cfg.low_stock_at,
            restocked_at: cfg.restocked_at,
            deadband_grams: cfg.deadband_grams,
            offline_after: Duration::from_secs(cfg.offline_after_secs.max(1)),
            dwell: Duration::from_secs(cfg.alert_dwell_secs),
            last_emitted: None,
            baseline_stored: false,
            level: Level::Unknown,
            pending: None,
            presence: Presence::Unknown,
            last_heard: now,
        }
    }

    /// Any message from the sensor, parseable or not: it is alive.
    pub fn heard(&mut self, now: Instant, out: &mut Vec<Output>) {
        self.last_heard = now;
        if self.presence != Presence::Online {
            self.presence = Presence::Online;
            out.push(Output::Status(DeviceState::Online));
        }
    }

    /// A parsed reading (call [`Shelf::heard`] first).
    pub fn reading(&mut self, raw: i64, now: Instant, out: &mut Vec<Output>) -> ReadingOutcome {
        let grams = self.cal.grams(raw);
        let moved = !self.baseline_stored
            || match &self.last_emitted {
                None => true,
                Some(last) => grams.abs_diff(last.grams) >= u64::from(self.deadband_grams.max(1)),
            };
        if !moved {
            self.evaluate(now, out);
            return ReadingOutcome::WithinDeadband;
        }
        let reading = ShelfReading {
            gtin: self.gtin.clone(),
            raw_counts: raw,
            grams,
            item_count: self.cal.items(raw),
        };
        self.last_emitted = Some(reading.clone());
        self.baseline_stored = true;
        out.push(Output::Reading(reading));
        self.evaluate(now, out);
        ReadingOutcome::Emitted
    }

    /// The outbox did not store the last emitted reading (shed or refused):
    /// it is no baseline, so the sensor's next reading is sent even if the
    /// weight has not moved. Otherwise the cloud would keep an older weight
    /// until the shelf changed by a deadband. The reading still counts for
    /// alerts: a low-stock dwell it started runs on (and its deadline is
    /// met, not re-armed in a loop).
    pub fn reading_not_stored(&mut self) {
        self.baseline_stored = false;
    }

    /// The outbox did not store an alert of `kind`: back to the level
    /// before it, so a later evaluation (a reading or the silence tick)
    /// raises it again once the condition has held for the dwell again.
    /// Otherwise a refused low-stock alert would not come again until
    /// after a restock.
    pub fn alert_not_stored(&mut self, kind: StockAlertKind) {
        self.level = match kind {
            StockAlertKind::LowStock => Level::Normal,
            StockAlertKind::Restocked => Level::Low,
        };
        self.pending = None;
    }

    /// The clock moved: silence and dwell deadlines.
    pub fn tick(&mut self, now: Instant, out: &mut Vec<Output>) {
        if self.presence != Presence::Offline
            && now.duration_since(self.last_heard) >= self.offline_after
        {
            self.presence = Presence::Offline;
            // A fresh baseline when it returns: its first reading is always sent.
            self.last_emitted = None;
            self.pending = None;
            out.push(Output::Status(DeviceState::Offline));
        }
        if self.presence != Presence::Offline {
            self.evaluate(now, out);
        }
    }

    /// When [`Shelf::tick`] next has something to do.
    pub fn next_deadline(&self) -> Option<Instant> {
        let silence =
            (self.presence != Presence::Offline).then(|| self.last_heard + self.offline_after);
        let dwell = self.pending.map(|(_, since)| since + self.dwell);
        match (silence, dwell) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Hysteresis and dwell on the last emitted count.
    fn evaluate(&mut self, now: Instant, out: &mut Vec<Output>) {
        let Some(count) = self.last_emitted.as_ref().map(|r| r.item_count) else {
            return;
        };
        let want = match self.level {
            Level::Unknown | Level::Normal if count <= self.low_stock_at => {
                Some(StockAlertKind::LowStock)
            }
            Level::Low if count >= self.restocked_at => Some(StockAlertKind::Restocked),
            _ => None,
        };
        let Some(kind) = want else {
            self.pending = None;
            if self.level == Level::Unknown {
                self.level = Level::Normal;
            }
            return;
        };
        let since = match self.pending {
            Some((k, since)) if k == kind => since,
            _ => {
                self.pending = Some((kind, now));
                now
            }
        };
        if now.duration_since(since) < self.dwell {
            return;
        }
        self.pending = None;
        let threshold = match kind {
            StockAlertKind::LowStock => {
                self.level = Level::Low;
                self.low_stock_at
            }
            StockAlertKind::Restocked => {
                self.level = Level::Normal;
                self.restocked_at
            }
        };
        out.push(Output::Alert(StockAlert {
            gtin: self.gtin.clone(),
            kind,
            item_count: count,
            threshold,
        }));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn cfg() -> ShelfSensor {
        ShelfSensor {
            id: "shelf-a1".into(),
            gtin: "05901234123457".into(),
            zero_offset: 8_388_608,
            counts_per_gram: Some(420),
            span: None,
            unit_weight_grams: Some(500),
            unit_weight_milligrams: None,
            low_stock_at: 3,
            restocked_at: 6,
            deadband_grams: 20,
            offline_after_secs: 10,
            alert_dwell_secs: 0,
        }
    }

    fn shelf(c: &ShelfSensor, now: Instant) -> Shelf {
        Shelf::new(
            c,
            c.gtin.parse().expect("valid"),
            c.scale().expect("calibrated"),
            c.unit_weight_mg().expect("weighed"),
            now,
        )
    }

    /// Raw counts for a weight in grams under `cfg()`.
    fn raw(grams: i64) -> i64 {
        8_388_608 + grams * 420
    }

    fn feed(s: &mut Shelf, r: i64, now: Instant) -> Vec<Output> {
        let mut out = vec![];
        s.heard(now, &mut out);
        s.reading(r, now, &mut out);
        out
    }

    fn alerts(out: &[Output]) -> Vec<(StockAlertKind, u32)> {
        out.iter()
            .filter_map(|o| match o {
                Output::Alert(a) => Some((a.kind, a.item_count)),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn what_the_outbox_did_not_store_is_sent_again() {
        let c = cfg();
        let t0 = Instant::now();
        let mut s = shelf(&c, t0);
        let readings = |out: &[Output]| {
            out.iter()
                .filter(|o| matches!(o, Output::Reading(_)))
                .count()
        };
        // 10 items, then the same weight again: within the deadband.
        assert_eq!(readings(&feed(&mut s, raw(5000), t0)), 1);
        assert_eq!(readings(&feed(&mut s, raw(5000), t0)), 0);
        // Shed or refused: not a baseline; the same weight goes out again.
        s.reading_not_stored();
        assert_eq!(readings(&feed(&mut s, raw(5000), t0)), 1);

        // Down to 2 items: low stock (no dwell in cfg()).
        let out = feed(&mut s, raw(1000), t0);
        assert_eq!(alerts(&out), [(StockAlertKind::LowStock, 2)]);
        // Refused: the next reading, though within the deadband, raises it again…
        s.alert_not_stored(StockAlertKind::LowStock);
        let out = feed(&mut s, raw(1005), t0);
        assert_eq!(readings(&out), 0);
        assert_eq!(alerts(&out), [(StockAlertKind::LowStock, 2)]);
        // …and once stored, not again.
        assert_eq!(alerts(&feed(&mut s, raw(1005), t0)), []);
        // A refused restock alert likewise.
        assert_eq!(
            alerts(&feed(&mut s, raw(4000), t0)),
            [(StockAlertKind::Restocked, 8)]
        );
        s.alert_not_stored(StockAlertKind::Restocked);
        assert_eq!(
            alerts(&feed(&mut s, raw(4000), t0)),
            [(StockAlertKind::Restocked, 8)]
        );
    }

    /// A reading the outbox shed or refused started a low-stock dwell: the
    /// dwell runs out at its deadline and raises the alert, and the next
    /// deadline is then later than now (before, it stayed in the past and the
    /// sensor task woke in a loop until the sensor spoke again).
    #[test]
    fn a_dwell_started_by_a_reading_not_stored_ends_at_its_deadline() {
        let mut c = cfg();
        c.alert_dwell_secs = 5;
        let t0 = Instant::now();
        let mut s = shelf(&c, t0);
        feed(&mut s, raw(5000), t0);
        // Down to 2 items; the reading is shed.
        assert_eq!(alerts(&feed(&mut s, raw(1000), t0)), []);
        s.reading_not_stored();
        let due = t0 + Duration::from_secs(5);
        assert_eq!(s.next_deadline(), Some(due));
        let mut out = vec![];
        s.tick(due, &mut out);
        assert_eq!(alerts(&out), [(StockAlertKind::LowStock, 2)]);
        let next = s.next_deadline().expect("the silence deadline");
        assert!(next > due, "next deadline {next:?} is not after {due:?}");
        // The same weight again is still sent (the shed reading was no baseline).
        let readings = feed(&mut s, raw(1000), due)
            .iter()
            .filter(|o| matches!(o, Output::Reading(_)))
            .count();
        assert_eq!(readings, 1);
    }

    #[test]
    fn payloads_plain_and_json() {
        assert_eq!(
            parse_payload(b" 8850608\n"),
            Ok(RawReading {
                raw: 8_850_608,
                taken_at: None
            })
        );
        assert_eq!(parse_payload(b"-12").map(|r| r.raw), Ok(-12));
        let j =
            parse_payload(br#"{"raw": 8850608, "ts": "2026-11-24T10:15:02+01:00"}"#).expect("json");
        assert_eq!(j.raw, 8_850_608);
        assert_eq!(
            j.taken_at.map(|t| t.to_rfc3339()).as_deref(),
            Some("2026-11-24T10:15:02+01:00")
        );
        assert_eq!(parse_payload(br#"{"raw": 5}"#).map(|r| r.raw), Ok(5));
        // Fields a newer firmware adds are not the reading's business.
        assert_eq!(
            parse_payload(br#"{"raw": 5, "battery_pct": 87, "fw": "2.1"}"#).map(|r| r.raw),
            Ok(5)
        );
        assert_eq!(parse_payload(b""), Err(PayloadError::Empty));
        assert_eq!(parse_payload(b"\xff\xfe"), Err(PayloadError::NotUtf8));
        for bad in [
            &b"12.5"[..],
            b"heavy",
            br#"{"raw": 1.5}"#,
            br#"{"raw": 1, "ts": "yesterday"}"#,
            br#"{"weight": 1}"#,
            b"99999999999999999999",
        ] {
            assert!(
                matches!(parse_payload(bad), Err(PayloadError::Malformed(_))),
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    #[test]
    fn calibration_rounds_half_away_from_zero() {
        let c = Calibration {
            zero_offset: 1000,
            scale: Scale {
                counts: 4,
                grams: 1,
            },
            unit_weight_mg: 250_000,
        };
        assert_eq!(c.grams(1000), 0);
        assert_eq!(c.grams(1002), 1); // 0.5 → 1
        assert_eq!(c.grams(1001), 0); // 0.25 → 0
        assert_eq!(c.grams(998), -1); // -0.5 → -1
        assert_eq!(c.grams(999), 0); // -0.25 → 0
        assert_eq!(c.grams(1000 + 4 * 1250), 1250);
        assert_eq!(c.items(1000 + 4 * 1250), 5);
        assert_eq!(c.items(1000 + 4 * 125), 1); // 0.5 → 1
        assert_eq!(c.items(1000 + 4 * 124), 0);
        assert_eq!(c.items(1000 - 4 * 400), 0);
        let extreme = Calibration {
            zero_offset: i64::MIN,
            scale: Scale {
                counts: 1,
                grams: 1,
            },
            unit_weight_mg: 1,
        };
        assert_eq!(extreme.grams(i64::MAX), i64::MAX);
        assert_eq!(extreme.items(i64::MAX), u32::MAX);
        let widest = Calibration {
            zero_offset: i64::MIN,
            scale: Scale {
                counts: 1,
                grams: i128::from(u32::MAX),
            },
            unit_weight_mg: 1,
        };
        assert_eq!(widest.grams(i64::MAX), i64::MAX);
        assert_eq!(widest.grams(i64::MIN), 0);
        assert_eq!(widest.items(i64::MAX), u32::MAX);
    }

    /// 100 sachets of 5.5 g: counted as 100 from their weight in
    /// milligrams. A whole unit_weight_grams of 5 or 6 counts 110 or 92,
    /// and counting from the rounded grams would be off too.
    #[test]
    fn light_items_are_counted_from_milligrams() {
        let cal = |unit_weight_mg| Calibration {
            zero_offset: 0,
            scale: Scale {
                counts: 420,
                grams: 1,
            },
            unit_weight_mg,
        };
        let raw = |mg: i64| mg * 420 / 1000;
        assert_eq!(cal(5_500).items(raw(550_000)), 100);
        assert_eq!(cal(5_000).items(raw(550_000)), 110);
        assert_eq!(cal(6_000).items(raw(550_000)), 92);
        // Three 1.4 g items weigh 4.2 g, which reads as 4 g: still three.
        assert_eq!(cal(1_400).items(raw(4_200)), 3);
        assert_eq!(cal(1_400).grams(raw(4_200)), 4);
        let sachets = ShelfSensor {
            unit_weight_grams: None,
            unit_weight_milligrams: Some(5_500),
            ..cfg()
        };
        assert_eq!(sachets.unit_weight_mg(), Some(5_500));
        let both = ShelfSensor {
            unit_weight_milligrams: Some(5_500),
            ..cfg()
        };
        assert_eq!(both.unit_weight_mg(), None);
    }

    /// A 5 kg cell reads 97.4 counts per gram: calibrated by its span point,
    /// 4,100 g on the shelf reads 4,100 g. A whole counts_per_gram of 97
    /// reads 4,117 g, an error that grows with the load.
    #[test]
    fn a_span_calibration_keeps_the_fraction_a_whole_counts_per_gram_rounds_away() {
        let zero = 8_388_100;
        let span = ShelfSensor {
            zero_offset: zero,
            counts_per_gram: None,
            span: Some(firmware_config::SpanPoint {
                grams: 5000,
                raw: zero + 487_000,
            }),
            ..cfg()
        };
        let exact = Calibration {
            zero_offset: zero,
            scale: span.scale().expect("calibrated"),
            unit_weight_mg: 1_560_000,
        };
        let raw_4100 = zero + 4100 * 974 / 10;
        assert_eq!(exact.grams(raw_4100), 4100);
        assert_eq!(exact.grams(zero + 487_000), 5000);
        assert_eq!(exact.grams(zero + 48), 0); // 0.49 g
        assert_eq!(exact.grams(zero + 49), 1); // 0.503 g
        let whole = Calibration {
            scale: ShelfSensor {
                counts_per_gram: Some(97),
                ..cfg()
            }
            .scale()
            .expect("calibrated"),
            ..exact.clone()
        };
        assert_eq!(whole.grams(raw_4100), 4117);
    }

    #[test]
    fn first_reading_is_sent_then_only_moves_beyond_the_deadband() {
        let t0 = Instant::now();
        let c = cfg();
        let mut s = shelf(&c, t0);
        let out = feed(&mut s, raw(5000), t0);
        assert_eq!(out[0], Output::Status(DeviceState::Online));
        assert!(
            matches!(&out[1], Output::Reading(r) if r.grams == 5000 && r.item_count == 10 && r.raw_counts == raw(5000))
        );
        let mut o = vec![];
        assert_eq!(
            s.reading(raw(5019), t0, &mut o),
            ReadingOutcome::WithinDeadband
        );
        assert_eq!(
            s.reading(raw(4981), t0, &mut o),
            ReadingOutcome::WithinDeadband
        );
        assert!(o.is_empty());
        assert_eq!(s.reading(raw(5020), t0, &mut o), ReadingOutcome::Emitted);
        // The deadband is measured from the last *emitted* reading (5020).
        assert_eq!(
            s.reading(raw(5001), t0, &mut o),
            ReadingOutcome::WithinDeadband
        );
        assert_eq!(s.reading(raw(5000), t0, &mut o), ReadingOutcome::Emitted);
    }

    #[test]
    fn noise_around_the_low_threshold_gives_one_alert() {
        let t0 = Instant::now();
        let c = cfg();
        let mut s = shelf(&c, t0);
        let mut all = feed(&mut s, raw(5000), t0); // 10 items
                                                   // Items taken one by one down to 3, then the signal jitters between 3 and 4 items.
        for g in [
            4000, 3000, 2000, 1500, 2000, 1500, 2010, 1480, 1990, 1520, 2000,
        ] {
            all.extend(feed(&mut s, raw(g), t0));
        }
        assert_eq!(alerts(&all), vec![(StockAlertKind::LowStock, 3)]);
        // Restocking to 5 is not enough; 6 is.
        all.clear();
        all.extend(feed(&mut s, raw(2500), t0));
        assert_eq!(alerts(&all), vec![]);
        all.extend(feed(&mut s, raw(3000), t0));
        all.extend(feed(&mut s, raw(2750), t0)); // jitters back to 5.5 → 6 items
        all.extend(feed(&mut s, raw(3000), t0));
        assert_eq!(alerts(&all), vec![(StockAlertKind::Restocked, 6)]);
    }

    #[test]
    fn a_shelf_that_starts_low_alerts_once_and_one_that_starts_between_does_not() {
        let t0 = Instant::now();
        let c = cfg();
        let mut s = shelf(&c, t0);
        assert_eq!(
            alerts(&feed(&mut s, raw(1000), t0)),
            vec![(StockAlertKind::LowStock, 2)]
        );
        assert_eq!(alerts(&feed(&mut s, raw(1500), t0)), vec![]);
        let mut s = shelf(&c, t0);
        assert_eq!(alerts(&feed(&mut s, raw(2000), t0)), vec![]); // 4 items: above low, below restocked
        assert_eq!(
            alerts(&feed(&mut s, raw(1500), t0)),
            vec![(StockAlertKind::LowStock, 3)]
        );
    }

    #[test]
    fn dwell_waits_and_a_brief_dip_raises_nothing() {
        let t0 = Instant::now();
        let mut c = cfg();
        c.alert_dwell_secs = 5;
        let mut s = shelf(&c, t0);
        feed(&mut s, raw(5000), t0);
        // A 3 s dip to 3 items (a hand resting on the shelf) then back.
        assert_eq!(
            alerts(&feed(&mut s, raw(1500), t0 + Duration::from_secs(1))),
            vec![]
        );
        assert_eq!(s.next_deadline(), Some(t0 + Duration::from_secs(6)));
        assert_eq!(
            alerts(&feed(&mut s, raw(4000), t0 + Duration::from_secs(4))),
            vec![]
        );
        let mut out = vec![];
        s.tick(t0 + Duration::from_secs(7), &mut out);
        assert_eq!(alerts(&out), vec![]);
        // A real drop: the alert fires once the dwell has passed, on a tick.
        assert_eq!(
            alerts(&feed(&mut s, raw(1000), t0 + Duration::from_secs(8))),
            vec![]
        );
        let mut out = vec![];
        s.tick(t0 + Duration::from_secs(12), &mut out);
        assert_eq!(alerts(&out), vec![]);
        s.tick(t0 + Duration::from_secs(13), &mut out);
        assert_eq!(alerts(&out), vec![(StockAlertKind::LowStock, 2)]);
        s.tick(t0 + Duration::from_secs(14), &mut out);
        assert_eq!(alerts(&out).len(), 1);
    }

    #[test]
    fn silence_means_offline_and_the_next_message_online() {
        let t0 = Instant::now();
        let c = cfg();
        let mut s = shelf(&c, t0);
        assert_eq!(s.next_deadline(), Some(t0 + Duration::from_secs(10)));
        let mut out = vec![];
        s.tick(t0 + Duration::from_secs(9), &mut out);
        assert!(out.is_empty());
        // Never heard from since start: offline after the timeout too.
        s.tick(t0 + Duration::from_secs(10), &mut out);
        assert_eq!(out, vec![Output::Status(DeviceState::Offline)]);
        assert_eq!(s.next_deadline(), None);
        s.tick(t0 + Duration::from_secs(30), &mut out);
        assert_eq!(out.len(), 1, "one offline event, not one per tick");
        let out = feed(&mut s, raw(5000), t0 + Duration::from_secs(31));
        assert_eq!(out[0], Output::Status(DeviceState::Online));
        assert!(matches!(out[1], Output::Reading(_)));
        // The first reading after coming back is always sent, even inside the deadband.
        let mut out = vec![];
        s.tick(t0 + Duration::from_secs(41), &mut out);
        assert_eq!(out, vec![Output::Status(DeviceState::Offline)]);
        let out = feed(&mut s, raw(5000), t0 + Duration::from_secs(42));
        assert!(matches!(out[1], Output::Reading(_)));
    }

    #[test]
    fn unparseable_messages_keep_the_sensor_online() {
        let t0 = Instant::now();
        let c = cfg();
        let mut s = shelf(&c, t0);
        let mut out = vec![];
        s.heard(t0 + Duration::from_secs(8), &mut out);
        s.tick(t0 + Duration::from_secs(12), &mut out);
        assert_eq!(out, vec![Output::Status(DeviceState::Online)]);
    }

    proptest! {
        #[test]
        fn div_round_matches_float_rounding(n in -1_000_000_000i128..1_000_000_000, d in 1i128..100_000) {
            let want = (n as f64 / d as f64).round() as i128; // f64::round is half away from zero
            prop_assert_eq!(div_round(n, d), want);
        }

        #[test]
        fn alerts_alternate_whatever_the_signal(grams in proptest::collection::vec(-500i64..8000, 1..200)) {
            let t0 = Instant::now();
            let c = cfg();
            let mut s = shelf(&c, t0);
            let mut out = vec![];
            for g in grams {
                s.heard(t0, &mut out);
                s.reading(raw(g), t0, &mut out);
            }
            let kinds: Vec<StockAlertKind> = alerts(&out).into_iter().map(|(k, _)| k).collect();
            for pair in kinds.windows(2) {
                prop_assert_ne!(pair[0], pair[1], "two alerts of the same kind in a row");
            }
            if let Some(first) = kinds.first() {
                prop_assert_eq!(*first, StockAlertKind::LowStock);
            }
        }
    }
}
