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

/// The median of each column of `(ceiling, system, ratio)` rows (the upper
/// one for an even count). `rows` must not be empty.
pub fn medians(rows: &[(f64, f64, f64)]) -> (f64, f64, f64) {
    let column = |f: fn(&(f64, f64, f64)) -> f64| {
        let mut v: Vec<f64> = rows.iter().map(f).collect();
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
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
