//! Timestamp and date fields, read faster.
//!
//! chrono's serde impls read through its general format parser, which was
//! the largest single cost of the bridge's body check after JSON scanning.
//! These readers try chrono's dedicated strict RFC 3339 parser (and a plain
//! `YYYY-MM-DD` reader for dates) first and fall back to exactly what chrono's
//! serde impls do, so every value accepted before is accepted now, with the
//! same result and the same errors.

use std::fmt;

use chrono::{DateTime, FixedOffset, NaiveDate, Utc};
use serde::de::{self, Deserializer, Visitor};

struct FixedVisitor;

impl Visitor<'_> for FixedVisitor {
    type Value = DateTime<FixedOffset>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an RFC 3339 date and time with a UTC offset")
    }

    fn visit_str<E: de::Error>(self, s: &str) -> Result<Self::Value, E> {
        DateTime::parse_from_rfc3339(s)
            .or_else(|_| s.parse::<DateTime<FixedOffset>>())
            .map_err(E::custom)
    }
}

/// `#[serde(deserialize_with)]` for `DateTime<FixedOffset>`.
pub fn fixed<'de, D: Deserializer<'de>>(d: D) -> Result<DateTime<FixedOffset>, D::Error> {
    d.deserialize_str(FixedVisitor)
}

/// `#[serde(deserialize_with)]` for `DateTime<Utc>`.
pub fn utc<'de, D: Deserializer<'de>>(d: D) -> Result<DateTime<Utc>, D::Error> {
    d.deserialize_str(FixedVisitor)
        .map(|t| t.with_timezone(&Utc))
}

struct DateVisitor;

impl Visitor<'_> for DateVisitor {
    type Value = NaiveDate;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a date as YYYY-MM-DD")
    }

    fn visit_str<E: de::Error>(self, s: &str) -> Result<Self::Value, E> {
        match plain_date(s) {
            Some(d) => Ok(d),
            None => s.parse::<NaiveDate>().map_err(E::custom),
        }
    }
}

/// `#[serde(deserialize_with)]` for `NaiveDate`.
pub fn date<'de, D: Deserializer<'de>>(d: D) -> Result<NaiveDate, D::Error> {
    d.deserialize_str(DateVisitor)
}

/// `YYYY-MM-DD` with four-digit year; `None` sends the caller to chrono.
fn plain_date(s: &str) -> Option<NaiveDate> {
    let b = s.as_bytes();
    if b.len() != 10 || b[4] != b'-' || b[7] != b'-' {
        return None;
    }
    let num = |r: std::ops::Range<usize>| -> Option<u32> {
        b[r].iter().try_fold(0u32, |n, &c| {
            c.is_ascii_digit().then(|| n * 10 + u32::from(c - b'0'))
        })
    };
    let year = i32::try_from(num(0..4)?).ok()?;
    NaiveDate::from_ymd_opt(year, num(5..7)?, num(8..10)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    #[derive(Deserialize)]
    struct T {
        #[serde(deserialize_with = "fixed")]
        at: DateTime<FixedOffset>,
        #[serde(deserialize_with = "utc")]
        utc: DateTime<Utc>,
        #[serde(deserialize_with = "date")]
        day: NaiveDate,
    }

    #[derive(Deserialize)]
    struct Chrono {
        at: DateTime<FixedOffset>,
        utc: DateTime<Utc>,
        day: NaiveDate,
    }

    /// Whatever chrono's own serde impls accept or refuse, these do too,
    /// with the same values.
    #[test]
    fn same_results_as_chrono() {
        let cases = [
            (
                "2026-11-24T10:15:02+01:00",
                "2026-11-24T09:15:02.123456789Z",
                "2026-11-24",
            ),
            (
                "2026-11-24 10:15:02+01:00",
                "2026-11-24T09:15:02z",
                "+2026-11-24",
            ),
            (
                "2026-11-24T10:15:02.5-05:30",
                "2026-11-24t09:15:02Z",
                "2026-02-30",
            ),
            (
                "2026-11-24T10:15:02",
                "2026-11-24T09:15:02+00:00",
                "2026-1-24",
            ),
            ("not a time", "", "2026-11-2x"),
            (
                "2026-11-24T25:15:02+01:00",
                "2026-11-24T09:15:60Z",
                "0000-01-01",
            ),
        ];
        for (at, utc, day) in cases {
            let json = serde_json::json!({ "at": at, "utc": utc, "day": day }).to_string();
            let ours = serde_json::from_str::<T>(&json);
            let theirs = serde_json::from_str::<Chrono>(&json);
            match (ours, theirs) {
                (Ok(o), Ok(t)) => {
                    assert_eq!((o.at, o.utc, o.day), (t.at, t.utc, t.day), "{json}");
                    assert_eq!(o.at.offset(), t.at.offset(), "{json}");
                }
                (Err(o), Err(t)) => assert_eq!(o.to_string(), t.to_string(), "{json}"),
                (o, t) => panic!("{json}: ours ok={}, chrono ok={}", o.is_ok(), t.is_ok()),
            }
        }
    }

    #[test]
    fn each_field_alone_matches_chrono() {
        for day in [
            "2026-11-24",
            "+2026-11-24",
            "2026-02-30",
            "2026-1-24",
            "0000-01-01",
            "9999-12-31",
            "2024-02-29",
            "2023-02-29",
        ] {
            let ours = plain_date(day);
            let theirs = day.parse::<NaiveDate>().ok();
            if ours.is_some() {
                assert_eq!(ours, theirs, "{day}");
            }
            let ours = serde_json::from_value::<NaiveDateField>(serde_json::json!({ "day": day }));
            let theirs = day.parse::<NaiveDate>();
            assert_eq!(
                ours.as_ref().ok().map(|d| d.day),
                theirs.as_ref().ok().copied(),
                "{day}"
            );
        }
        for at in [
            "2026-11-24T10:15:02+01:00",
            "2026-11-24 10:15:02+01:00",
            "2026-11-24T10:15:02.5-05:30",
            "2026-11-24T10:15:02",
            "2026-11-24T23:59:60Z",
        ] {
            let ours = FixedVisitor.visit_str::<serde_json::Error>(at).ok();
            let theirs = at.parse::<DateTime<FixedOffset>>().ok();
            assert_eq!(ours, theirs, "{at}");
        }
    }

    #[derive(Deserialize)]
    struct NaiveDateField {
        #[serde(deserialize_with = "date")]
        day: NaiveDate,
    }
}
