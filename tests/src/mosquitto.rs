//! A real Mosquitto broker per test, on a free loopback port, with its own
//! config and persistence directory. The broker is Mosquitto 2.0.21, built by
//! `scripts/mosquitto.sh` (Debian 12's 2.0.11 does not keep its in-flight
//! limit); the fleet runs the same release, which a unit test below checks.
//!
//! Settings and why:
//! * `persistence true`: `stop()` + `start_again()` keeps persistent sessions
//!   and their queued messages, like a broker restart in production. Mosquitto
//!   writes its database on a clean shutdown (SIGTERM) and every
//!   `autosave_interval` seconds, never per message.
//! * `max_queued_messages` (default here 0 = unlimited, Mosquitto's own default
//!   is 1000): tests pre-load thousands of messages for an offline bridge
//!   session; with the default Mosquitto would drop everything past 1000.
//! * `max_inflight_messages` (default here 100): how many unacknowledged QoS 1
//!   messages Mosquitto sends one client at a time. This is the broker half of
//!   the bridge's backpressure: a bridge that stops acking stops receiving.
//! * `message_size_limit` 8 MiB: batches are far smaller; a generous limit keeps
//!   oversize checks in the bridge, where they are dead-lettered, not dropped.

use std::collections::BTreeSet;
use std::io::{Read, Seek, SeekFrom};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use crate::process::ChildProcess;

/// Broker settings a test may change.
#[derive(Debug, Clone)]
pub struct MosquittoOptions {
    /// `max_inflight_messages`: unacked QoS 1 messages sent to one client.
    pub max_inflight_messages: u32,
    /// `max_queued_messages`: per-client queue beyond in-flight; 0 = unlimited.
    pub max_queued_messages: u32,
    /// `autosave_interval` in seconds (database snapshot period).
    pub autosave_interval_s: u32,
    /// Serve TLS only, as the cloud broker is deployed.
    pub tls: Option<BrokerTls>,
    /// `log_type debug`: every packet in and out, acks included.
    pub log_packets: bool,
    /// The text of an `acl_file`, as a cloud broker restricts its clients
    /// (rules before any `user` line apply to anonymous clients).
    pub acl: Option<String>,
    /// `max_qos`: the highest QoS the listener grants (2 when `None`).
    pub max_qos: Option<u8>,
}

/// The broker's TLS listener: its certificate, and the CA its clients'
/// certificates must chain to (`require_certificate true`: mutual TLS).
#[derive(Debug, Clone)]
pub struct BrokerTls {
    pub ca_file: PathBuf,
    pub cert_file: PathBuf,
    pub key_file: PathBuf,
}

impl Default for MosquittoOptions {
    fn default() -> Self {
        MosquittoOptions {
            max_inflight_messages: 100,
            max_queued_messages: 0,
            autosave_interval_s: 30,
            tls: None,
            log_packets: false,
            acl: None,
            max_qos: None,
        }
    }
}

pub struct Mosquitto {
    port: u16,
    dir: tempfile::TempDir,
    process: Option<ChildProcess>,
}

impl Mosquitto {
    /// Starts a broker with [`MosquittoOptions::default`].
    pub fn start() -> Result<Mosquitto> {
        Self::start_with(MosquittoOptions::default())
    }

    pub fn start_with(opts: MosquittoOptions) -> Result<Mosquitto> {
        let bin = mosquitto_binary()?;
        let dir = tempfile::Builder::new()
            .prefix("storelink-mosquitto-")
            .tempdir()
            .context("creating a temp dir for Mosquitto")?;
        let mut m = Mosquitto {
            port: 0,
            dir,
            process: None,
        };
        // The port was free when the OS picked it, but another process may
        // bind it before Mosquitto does; a first start can move elsewhere.
        for _ in 0..5 {
            m.port = free_port()?;
            if let Some(acl) = &opts.acl {
                std::fs::write(m.dir.path().join("acl"), acl).context("writing the ACL file")?;
            }
            let conf = config_text(m.port, m.dir.path(), &opts);
            std::fs::write(m.dir.path().join("mosquitto.conf"), conf)
                .context("writing mosquitto.conf")?;
            match m.launch(&bin)? {
                Launch::Listening => return Ok(m),
                Launch::PortTaken => continue,
            }
        }
        bail!(
            "Mosquitto found every port it was given already taken; log tail:\n{}",
            m.log_tail(20)
        )
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn host(&self) -> &'static str {
        "127.0.0.1"
    }

    /// Process id of the running broker (for CPU accounting in benchmarks).
    pub fn pid(&self) -> Option<u32> {
        self.process.as_ref().map(ChildProcess::pid)
    }

    pub fn log_path(&self) -> PathBuf {
        self.dir.path().join("mosquitto.log")
    }

    pub fn log_tail(&self, n: usize) -> String {
        crate::process::log_tail(&self.log_path(), n)
    }

    /// Graceful stop (SIGTERM): Mosquitto saves its database and exits.
    pub fn stop(&mut self) -> Result<()> {
        if let Some(mut p) = self.process.take() {
            p.sigterm()?;
            p.wait_exit(Duration::from_secs(20))
                .context("Mosquitto did not stop on SIGTERM")?;
        }
        Ok(())
    }

    /// Crash (SIGKILL): whatever was not autosaved is lost, as in production.
    pub fn kill9(&mut self) -> Result<()> {
        if let Some(mut p) = self.process.take() {
            p.kill9()?;
        }
        Ok(())
    }

    /// Stops the broker and starts it again without its database: every
    /// persistent session and queued message is gone, as after a broker
    /// whose storage was lost. Clients reconnect to `session_present = false`.
    pub fn restart_forgetting_sessions(&mut self) -> Result<()> {
        self.stop()?;
        let db = self.dir.path().join("mosquitto.db");
        match std::fs::remove_file(&db) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e).with_context(|| format!("removing {}", db.display())),
        }
        self.start_again()
    }

    /// Starts the broker again on the same port with the same persistence.
    pub fn start_again(&mut self) -> Result<()> {
        if self.process.is_some() {
            bail!("Mosquitto on port {} is still running", self.port);
        }
        let bin = mosquitto_binary()?;
        match self.launch(&bin)? {
            Launch::Listening => Ok(()),
            Launch::PortTaken => bail!(
                "Mosquitto cannot listen on 127.0.0.1:{} again: another process took the port \
                 while the broker was down",
                self.port
            ),
        }
    }

    /// Starts the broker and waits until it says it is serving. Its own log
    /// is the proof, not a successful connect: a connect would also succeed
    /// against whatever else holds the port, while this broker exits with
    /// "Address already in use".
    fn launch(&mut self, bin: &Path) -> Result<Launch> {
        // The log is appended across restarts; only this run's lines count.
        let log_path = self.log_path();
        let log_start = std::fs::metadata(&log_path).map(|m| m.len()).unwrap_or(0);
        let mut cmd = Command::new(bin);
        cmd.arg("-c").arg(self.dir.path().join("mosquitto.conf"));
        let mut p = ChildProcess::spawn_logging_to("mosquitto", cmd, &log_path)?;
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let log = log_since(&log_path, log_start);
            if let Some(status) = p.try_exit_status()? {
                if log.contains("Address already in use") {
                    return Ok(Launch::PortTaken);
                }
                bail!(
                    "Mosquitto exited at startup ({status}) on port {}; log tail:\n{}",
                    self.port,
                    p.log_tail(20)
                );
            }
            if says_running(&log) && TcpStream::connect(("127.0.0.1", self.port)).is_ok() {
                break;
            }
            if Instant::now() >= deadline {
                bail!(
                    "Mosquitto did not listen on 127.0.0.1:{} within 10 s; log tail:\n{}",
                    self.port,
                    p.log_tail(20)
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        self.process = Some(p);
        Ok(Launch::Listening)
    }
}

/// How a broker start ended, when it did not fail outright.
enum Launch {
    Listening,
    /// Another process holds the port.
    PortTaken,
}

/// Mosquitto logs "… running" only once every listener is open.
fn says_running(log: &str) -> bool {
    log.lines()
        .any(|l| l.contains("mosquitto version") && l.ends_with(" running"))
}

/// What was appended to `path` after its first `from` bytes.
fn log_since(path: &Path, from: u64) -> String {
    let mut text = String::new();
    if let Ok(mut f) = std::fs::File::open(path) {
        if f.seek(SeekFrom::Start(from)).is_ok() {
            // A partial read leaves a partial text; the next poll rereads.
            let _ = f.read_to_string(&mut text);
        }
    }
    text
}

fn config_text(port: u16, dir: &Path, o: &MosquittoOptions) -> String {
    // As root Mosquitto drops privileges to the `mosquitto` user, which could
    // not write our temp dir; `user root` keeps it as the test's user.
    let user = if running_as_root() { "user root\n" } else { "" };
    let tls = o
        .tls
        .as_ref()
        .map(|t| {
            format!(
                "cafile {}\ncertfile {}\nkeyfile {}\nrequire_certificate true\n",
                t.ca_file.display(),
                t.cert_file.display(),
                t.key_file.display()
            )
        })
        .unwrap_or_default();
    let mut access = match o.acl {
        Some(_) => format!("acl_file {}/acl\n", dir.display()),
        None => String::new(),
    };
    if let Some(q) = o.max_qos {
        access += &format!("max_qos {q}\n");
    }
    format!(
        "{user}listener {port} 127.0.0.1\n\
         {tls}\
         allow_anonymous true\n\
         {access}\
         set_tcp_nodelay true\n\
         persistence true\n\
         persistence_location {dir}/\n\
         autosave_interval {autosave}\n\
         max_inflight_messages {inflight}\n\
         max_queued_messages {queued}\n\
         message_size_limit 8388608\n\
         log_dest stderr\n\
         log_type error\n\
         log_type warning\n\
         log_type notice\n\
         log_type information\n\
         {debug}\
         connection_messages true\n\
         log_timestamp_format %H:%M:%S\n",
        dir = dir.display(),
        autosave = o.autosave_interval_s,
        inflight = o.max_inflight_messages,
        queued = o.max_queued_messages,
        debug = if o.log_packets {
            "log_type debug\n"
        } else {
            ""
        },
    )
}

fn running_as_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .and_then(|l| l.split_whitespace().nth(2).map(|euid| euid == "0"))
        })
        .unwrap_or(false)
}

/// The Mosquitto version the harness runs; `scripts/mosquitto.sh` builds it
/// and says why not Debian 12's 2.0.11 (its in-flight limit does not hold).
pub const MOSQUITTO_VERSION: &str = "2.0.21";

/// The `mosquitto` executable: `$STORELINK_MOSQUITTO` if set, else the
/// broker `scripts/mosquitto.sh install` built in the cache. Never whatever
/// `mosquitto` is on the PATH: an older broker changes what the bridge tests
/// and benchmarks measure.
pub fn mosquitto_binary() -> Result<PathBuf> {
    if let Some(p) = std::env::var_os("STORELINK_MOSQUITTO") {
        let p = PathBuf::from(p);
        if !p.is_file() {
            bail!("STORELINK_MOSQUITTO={} is not a file", p.display());
        }
        return Ok(p);
    }
    let cache = match std::env::var_os("STORELINK_CACHE") {
        Some(c) => PathBuf::from(c),
        None => PathBuf::from(std::env::var_os("HOME").context("HOME is not set")?)
            .join(".cache/storelink"),
    };
    let bin = cache.join(format!("mosquitto-{MOSQUITTO_VERSION}/mosquitto"));
    if !bin.is_file() {
        bail!(
            "Mosquitto {MOSQUITTO_VERSION} is not built at {}: run `scripts/install-deps.sh` \
             (or `scripts/mosquitto.sh install`)",
            bin.display()
        );
    }
    Ok(bin)
}

/// A loopback port that was free a moment ago (it could be bound) and that
/// this process has not handed out before. Tests run as threads of one
/// process: without the second rule, a port one test frees for a moment
/// (an agent between a kill and its restart, a broker during an outage) could
/// be handed to another test, and the first test's restart would then reach
/// the second test's server.
pub fn free_port() -> Result<u16> {
    static HANDED_OUT: Mutex<BTreeSet<u16>> = Mutex::new(BTreeSet::new());
    // Below the kernel's ephemeral range, which outgoing connections take
    // their local ports from: a broker stopped for a minute must find its
    // port free again, and a port in that range can meanwhile be some
    // client's (a Kafka restart once failed with "Address already in use").
    let ephemeral_low = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse::<u16>().ok())
        .filter(|low| *low > 12_000)
        .unwrap_or(60_000);
    let mut rng = rand::rng();
    for _ in 0..1000 {
        let candidate = rand::Rng::random_range(&mut rng, 10_000..ephemeral_low);
        let Ok(l) = std::net::TcpListener::bind(("127.0.0.1", candidate)) else {
            continue;
        };
        let port = l.local_addr().context("reading a bound address")?.port();
        if HANDED_OUT
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(port)
        {
            return Ok(port);
        }
    }
    bail!("the OS kept offering loopback ports this process already handed out")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The broker the tests run, the one the install script builds and the
    /// image the stores run are one release: behaviour the tests rely on
    /// (the in-flight limit above all) changed between releases before.
    #[test]
    fn tests_install_script_and_fleet_run_the_same_mosquitto_release() {
        let root = concat!(env!("CARGO_MANIFEST_DIR"), "/..");
        let script = std::fs::read_to_string(format!("{root}/scripts/mosquitto.sh"))
            .expect("scripts/mosquitto.sh");
        let built = script
            .lines()
            .find_map(|l| l.strip_prefix("VERSION="))
            .expect("VERSION= in scripts/mosquitto.sh");
        assert_eq!(built, MOSQUITTO_VERSION);
        let kustomization = std::fs::read_to_string(format!("{root}/k3s/base/kustomization.yaml"))
            .expect("k3s/base/kustomization.yaml");
        let fleet = kustomization
            .lines()
            .skip_while(|l| l.trim() != "- name: mosquitto")
            .find_map(|l| l.trim().strip_prefix("newTag:"))
            .map(str::trim)
            .expect("the mosquitto image's newTag in k3s/base/kustomization.yaml");
        assert_eq!(fleet, MOSQUITTO_VERSION);
    }

    /// A port someone else listens on answers connects, so only the broker's
    /// own log can say whether it is the one serving there.
    #[test]
    fn a_broker_whose_port_is_held_by_another_server_is_not_taken_as_started() {
        let squatter = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let mut m = Mosquitto {
            port: squatter.local_addr().expect("addr").port(),
            dir: tempfile::tempdir().expect("temp dir"),
            process: None,
        };
        let conf = config_text(m.port, m.dir.path(), &MosquittoOptions::default());
        std::fs::write(m.dir.path().join("mosquitto.conf"), conf).expect("conf");
        let bin = mosquitto_binary().unwrap_or_else(|e| panic!("{e:#}"));
        let launch = m.launch(&bin).unwrap_or_else(|e| panic!("{e:#}"));
        assert!(matches!(launch, Launch::PortTaken), "{}", m.log_tail(10));
        assert!(m.process.is_none());

        // With the port free, the same broker starts and says so.
        drop(squatter);
        assert!(matches!(m.launch(&bin).expect("launch"), Launch::Listening));
        assert!(m.pid().is_some());
    }

    #[test]
    fn a_port_is_never_handed_out_twice_in_one_process() {
        let ports: Vec<u16> = (0..200).map(|_| free_port().expect("port")).collect();
        let distinct: BTreeSet<u16> = ports.iter().copied().collect();
        assert_eq!(distinct.len(), ports.len());
    }
}
