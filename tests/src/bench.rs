//! What the benchmark programs share: rounds and medians.
//!
//! Single runs swing by a fifth or more on a shared 2-core machine, so each
//! throughput benchmark alternates its ceiling and its system `rounds()`
//! times and reports the medians.

/// `BENCH_ROUNDS`, default 3, at least 1.
pub fn rounds() -> usize {
    std::env::var("BENCH_ROUNDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(3)
        .max(1)
}

/// The median of each column of `(ceiling, system, ratio)` rows (for an
/// even count, the mean of the middle two: taking either one would favour
/// a side). `rows` must not be empty.
pub fn medians(rows: &[(f64, f64, f64)]) -> (f64, f64, f64) {
    let column = |f: fn(&(f64, f64, f64)) -> f64| {
        let mut v: Vec<f64> = rows.iter().map(f).collect();
        v.sort_by(f64::total_cmp);
        let mid = v.len() / 2;
        if v.len() % 2 == 0 {
            (v[mid - 1] + v[mid]) / 2.0
        } else {
            v[mid]
        }
    };
    (column(|r| r.0), column(|r| r.1), column(|r| r.2))
}

/// CPU time (user + system) `pid` has used so far, in seconds, from
/// `/proc/PID/stat`; `None` if the process is gone. Tick resolution (10 ms
/// at the usual 100 Hz), so measure phases of seconds.
pub fn cpu_seconds(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the parenthesised command name, which may contain spaces.
    let rest = stat.get(stat.rfind(')')? + 2..)?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the whole line, 12 and 13 here.
    let ticks: u64 = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
    Some(ticks as f64 / clock_ticks_per_second())
}

fn clock_ticks_per_second() -> f64 {
    static TICKS: std::sync::OnceLock<f64> = std::sync::OnceLock::new();
    *TICKS.get_or_init(|| {
        std::process::Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|o| String::from_utf8(o.stdout).ok())
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(100.0)
    })
}

#[cfg(test)]
mod tests {
    use super::medians;

    #[test]
    fn medians_of_odd_and_even_counts() {
        let rows = [(1.0, 10.0, 0.5), (3.0, 30.0, 0.3), (2.0, 20.0, 0.4)];
        assert_eq!(medians(&rows), (2.0, 20.0, 0.4));
        let rows = [(1.0, 10.0, 0.56), (3.0, 30.0, 0.44)];
        assert_eq!(medians(&rows), (2.0, 20.0, 0.5));
    }
}
