//! Child processes that cannot outlive the test that started them.
//!
//! Every child runs in its own process group and is killed (group and all) on
//! drop, so a failing assertion never leaves a bridge, an agent or a broker
//! behind. Output goes to a log file, not to the test's pipes: a chatty child
//! cannot block on a full pipe, and a failure message can quote its log tail.

use std::collections::BTreeSet;
use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

/// Process groups of the children not yet known to have exited, for
/// [`stop_children_on_signal`]: a signal skips every `Drop`.
static LIVE_GROUPS: Mutex<BTreeSet<u32>> = Mutex::new(BTreeSet::new());

fn live_groups() -> MutexGuard<'static, BTreeSet<u32>> {
    LIVE_GROUPS.lock().unwrap_or_else(|e| e.into_inner())
}

/// Runs `f` on the first SIGINT, SIGTERM or SIGHUP (the terminal closed),
/// on a thread of its own (a tiny current-thread runtime waits for the
/// signal).
pub fn on_signal(f: impl FnOnce() + Send + 'static) -> Result<()> {
    use tokio::signal::unix::{signal, SignalKind};
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let mut term = rt.block_on(async { signal(SignalKind::terminate()) })?;
    let mut int = rt.block_on(async { signal(SignalKind::interrupt()) })?;
    let mut hup = rt.block_on(async { signal(SignalKind::hangup()) })?;
    std::thread::spawn(move || {
        rt.block_on(async {
            tokio::select! {
                _ = term.recv() => {},
                _ = int.recv() => {},
                _ = hup.recv() => {},
            }
        });
        f();
    });
    Ok(())
}

/// Kills every child process still running, group and all.
pub fn kill_all_children() {
    for pid in live_groups().iter() {
        let _ = kill_group(*pid, "KILL");
    }
}

/// For programs that run to completion (the benchmarks): on SIGINT or
/// SIGTERM, kill every child still running, group and all, and exit 130.
/// Each child has its own process group, so the terminal's Ctrl-C never
/// reaches it; without this an interrupted run leaves its Kafka broker,
/// Mosquitto and agent behind to skew the next one.
pub fn stop_children_on_signal() -> Result<()> {
    on_signal(|| {
        kill_all_children();
        eprintln!("interrupted: stopped every child process");
        std::process::exit(130);
    })
}

/// `kill -SIGNAL -- -PID`: the signal to a whole process group.
fn kill_group(pid: u32, signal: &str) -> Result<ExitStatus> {
    Command::new("kill")
        .arg(format!("-{signal}"))
        .arg("--")
        .arg(format!("-{pid}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .context("running kill(1)")
}

/// A running child process, killed with its process group on drop.
pub struct ChildProcess {
    name: String,
    child: Child,
    log_path: PathBuf,
    exited: Option<ExitStatus>,
    // Keeps the log directory alive when the caller did not give one.
    _log_dir: Option<tempfile::TempDir>,
}

impl ChildProcess {
    /// Spawns `cmd` with stdout and stderr appended to a log file in a new
    /// temporary directory.
    pub fn spawn(name: &str, cmd: Command) -> Result<ChildProcess> {
        let dir = tempfile::Builder::new()
            .prefix(&format!("storelink-{name}-"))
            .tempdir()
            .context("creating a temp dir for a child's log")?;
        let log = dir.path().join(format!("{name}.log"));
        let mut p = Self::spawn_logging_to(name, cmd, &log)?;
        p._log_dir = Some(dir);
        Ok(p)
    }

    /// Spawns `cmd` with stdout and stderr appended to `log_path` (which is
    /// kept across restarts of the same service, so one log tells the story).
    pub fn spawn_logging_to(name: &str, mut cmd: Command, log_path: &Path) -> Result<ChildProcess> {
        use std::os::unix::process::CommandExt;
        let out = File::options()
            .create(true)
            .append(true)
            .open(log_path)
            .with_context(|| format!("opening log file {}", log_path.display()))?;
        let err = out.try_clone().context("cloning a log file handle")?;
        cmd.stdin(Stdio::null())
            .stdout(Stdio::from(out))
            .stderr(Stdio::from(err))
            // Own process group: signals reach the child and whatever it forks.
            .process_group(0);
        let child = cmd
            .spawn()
            .with_context(|| format!("starting {name} ({:?})", cmd.get_program()))?;
        live_groups().insert(child.id());
        Ok(ChildProcess {
            name: name.to_owned(),
            child,
            log_path: log_path.to_owned(),
            exited: None,
            _log_dir: None,
        })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn log_path(&self) -> &Path {
        &self.log_path
    }

    /// Sends `signal` (e.g. "KILL", "TERM") to the child's whole process group.
    fn signal_group(&self, signal: &str) -> Result<()> {
        let status = kill_group(self.child.id(), signal)?;
        // kill(1) fails when the group is gone already (the child exited on
        // its own and was reaped): that is not an error for a stop request.
        let still_there = Path::new(&format!("/proc/{}", self.child.id())).exists();
        if !status.success() && still_there {
            bail!(
                "kill -{signal} of {} (pid {}) failed",
                self.name,
                self.pid()
            );
        }
        Ok(())
    }

    /// SIGKILL to the process group, then reaps the child: a crash.
    pub fn kill9(&mut self) -> Result<()> {
        if self.exited.is_some() {
            return Ok(());
        }
        self.signal_group("KILL")?;
        let status = self.child.wait().context("waiting for a killed child")?;
        self.record_exit(Some(status));
        Ok(())
    }

    /// SIGTERM to the process group: a polite stop request (does not wait).
    pub fn sigterm(&self) -> Result<()> {
        if self.exited.is_some() {
            return Ok(());
        }
        self.signal_group("TERM")
    }

    /// Once reaped, the pid may be reused: forget it as a group to kill.
    fn record_exit(&mut self, status: Option<ExitStatus>) {
        if status.is_some() {
            live_groups().remove(&self.child.id());
        }
        self.exited = status;
    }

    /// The exit status if the child has exited, without waiting.
    pub fn try_exit_status(&mut self) -> Result<Option<ExitStatus>> {
        if self.exited.is_none() {
            let status = self.child.try_wait().context("polling a child")?;
            self.record_exit(status);
        }
        Ok(self.exited)
    }

    /// Waits up to `timeout` for the child to exit.
    pub fn wait_exit(&mut self, timeout: Duration) -> Result<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(s) = self.try_exit_status()? {
                return Ok(s);
            }
            if Instant::now() >= deadline {
                bail!(
                    "{} (pid {}) did not exit within {:?}; log tail:\n{}",
                    self.name,
                    self.pid(),
                    timeout,
                    self.log_tail(30)
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The last `n` lines of the child's log (at most the last 256 KiB are read).
    pub fn log_tail(&self, n: usize) -> String {
        log_tail(&self.log_path, n)
    }
}

impl Drop for ChildProcess {
    fn drop(&mut self) {
        if self.exited.is_none() {
            let _ = self.signal_group("KILL");
            let _ = self.child.wait();
        }
        live_groups().remove(&self.child.id());
    }
}

/// The last `n` lines of a text file, or a note saying why there are none.
pub fn log_tail(path: &Path, n: usize) -> String {
    let mut f = match File::open(path) {
        Ok(f) => f,
        Err(e) => return format!("(no log at {}: {e})", path.display()),
    };
    let len = f.metadata().map(|m| m.len()).unwrap_or(0);
    let start = len.saturating_sub(256 * 1024);
    let mut buf = Vec::new();
    if f.seek(SeekFrom::Start(start)).is_err() || f.read_to_end(&mut buf).is_err() {
        return format!("(cannot read {})", path.display());
    }
    let text = String::from_utf8_lossy(&buf);
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// Path of a workspace binary (`cloud-bridge`, `store-agent`, …) built by the
/// same `cargo` invocation profile as the running test or benchmark.
///
/// Test executables live in `target/<profile>/deps/`, binaries of `[[bin]]`
/// targets in `target/<profile>/`; `CARGO_TARGET_DIR` moves `target/`.
pub fn bin_path(name: &str) -> Result<PathBuf> {
    let exe = std::env::current_exe().context("locating the test executable")?;
    let mut candidates = Vec::new();
    if let Some(mut dir) = exe.parent().map(Path::to_path_buf) {
        if dir.file_name().is_some_and(|n| n == "deps") {
            dir.pop();
        }
        let profile = dir.file_name().map(|p| p.to_os_string());
        candidates.push(dir.join(name));
        if let (Ok(target), Some(profile)) = (std::env::var("CARGO_TARGET_DIR"), profile) {
            candidates.push(PathBuf::from(target).join(profile).join(name));
        }
    }
    if let Ok(target) = std::env::var("CARGO_TARGET_DIR") {
        candidates.push(PathBuf::from(target).join("debug").join(name));
    }
    for c in &candidates {
        if c.is_file() {
            return Ok(c.clone());
        }
    }
    bail!(
        "binary `{name}` not found (looked in {candidates:?}): run `cargo build --workspace --bins` first \
         (with `--release` for release benchmarks)"
    )
}
