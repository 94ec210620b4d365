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
