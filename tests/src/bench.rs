//! What the benchmark programs share: rounds and medians.
//!
//! Single runs swing by a fifth or more on a shared 2-core machine, so each
//! throughput benchmark alternates its ceiling and its system `rounds()`
//! times and reports the medians.

/// `BENCH_ROUNDS`, default 3, at least 1.
pub fn rounds() -> usize {
    env_number("BENCH_ROUNDS").unwrap_or(3).max(1)
}

/// A number from the environment variable `name`; `None` if unset or not
/// a number of that type.
pub fn env_number<T: std::str::FromStr>(name: &str) -> Option<T> {
    std::env::var(name).ok().and_then(|s| s.parse().ok())
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
    // utime and stime are fields 14 and 15 of the whole line.
    stat_seconds(&format!("/proc/{pid}/stat"), 11)
}

/// CPU time (user + system) of this process's children that have exited
/// and been waited for, in seconds (`cutime` and `cstime`): what a tool
/// run with `Command::output` cost, as the difference across the run.
pub fn children_cpu_seconds() -> Option<f64> {
    // cutime and cstime are fields 16 and 17 of the whole line.
    stat_seconds("/proc/self/stat", 13)
}

/// The sum of the tick counts at `at` and `at + 1` (counted from the field
/// after the command name) of a `stat` file, in seconds.
fn stat_seconds(path: &str, at: usize) -> Option<f64> {
    let stat = std::fs::read_to_string(path).ok()?;
    // Fields after the parenthesised command name, which may contain spaces.
    let rest = stat.get(stat.rfind(')')? + 2..)?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks: u64 =
        fields.get(at)?.parse::<u64>().ok()? + fields.get(at + 1)?.parse::<u64>().ok()?;
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
    use super::{children_cpu_seconds, cpu_seconds, medians};

    #[test]
    fn a_waited_child_counts_as_children_cpu_not_as_our_own() {
        let (children0, own0) = (
            children_cpu_seconds().expect("readable"),
            cpu_seconds(std::process::id()).expect("readable"),
        );
        // The child spins while this process only waits for it.
        let status = std::process::Command::new("sh")
            .args(["-c", "i=0; while [ $i -lt 400000 ]; do i=$((i+1)); done"])
            .status()
            .expect("sh runs");
        assert!(status.success());
        let children = children_cpu_seconds().expect("readable") - children0;
        let own = cpu_seconds(std::process::id()).expect("readable") - own0;
        assert!(
            children >= 0.1,
            "the child's CPU was not counted: {children} s"
        );
        assert!(own < children, "own {own} s, children {children} s");
    }

    #[test]
    fn medians_of_odd_and_even_counts() {
        let rows = [(1.0, 10.0, 0.5), (3.0, 30.0, 0.3), (2.0, 20.0, 0.4)];
        assert_eq!(medians(&rows), (2.0, 20.0, 0.4));
        let rows = [(1.0, 10.0, 0.56), (3.0, 30.0, 0.44)];
        assert_eq!(medians(&rows), (2.0, 20.0, 0.5));
    }
}
