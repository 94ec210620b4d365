//! `store-agent`: the StoreLink edge agent.
//!
//! * `store-agent run --profile /etc/storelink/store.toml` — serve the store.
//! * `store-agent config check PROFILE [--json]` — validate a profile (single-threaded).
//! * `store-agent config schema` — print the profile's JSON Schema.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use store_agent::forwarder::{self, Forwarder, ForwarderConfig};
use store_agent::http::{self, AppState};
use store_agent::ingest::{Ingest, StoreIdentity};
use store_agent::outbox::{Outbox, OutboxConfig};
use store_agent::{config, devices, metrics, shutdown};
use tokio_util::sync::CancellationToken;

// mimalloc as Rust's allocator and, with the `override` feature, as the
// process's malloc (SQLite's page cache and statements too). The outbox
// writer and the HTTP workers allocate per sale; against glibc malloc
// `bench_agent` measured about a tenth less CPU per sale and a tenth more
// ingest (binaries alternated round by round on the same machine).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(name = "store-agent", version, about = "StoreLink edge agent")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve the store: HTTP for terminals, scanners, shelf sensors, cloud forwarding.
    Run {
        #[arg(
            long,
            env = "STORELINK_PROFILE",
            default_value = "/etc/storelink/store.toml"
        )]
        profile: PathBuf,
    },
    /// Store profile tools.
    #[command(subcommand)]
    Config(ConfigCommand),
}

#[derive(Subcommand)]
enum ConfigCommand {
    /// Validate a profile and print every problem, or a summary of the store.
    Check {
        profile: PathBuf,
        #[arg(long)]
        json: bool,
    },
    /// Print the JSON Schema of store profiles (for editors).
    Schema,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        // Deliberately no runtime and no threads: this runs under qemu-user
        // in the ARM smoke test, where a second thread hangs.
        Command::Config(ConfigCommand::Check { profile, json }) => {
            store_agent::config_check::run_check(&profile, json)
        }
        Command::Config(ConfigCommand::Schema) => {
            println!("{}", store_agent::config_check::schema_json());
            ExitCode::SUCCESS
        }
        Command::Run { profile } => {
            init_tracing();
            let runtime = match tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .thread_name("store-agent")
                .build()
            {
                Ok(rt) => rt,
                Err(e) => {
                    eprintln!("store-agent: cannot start the runtime: {e}");
                    return ExitCode::FAILURE;
                }
            };
            match runtime.block_on(run(&profile)) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    tracing::error!("store-agent failed: {e:#}");
                    eprintln!("store-agent: {e:#}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}

fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if std::env::var("STORELINK_LOG_FORMAT").as_deref() == Ok("json") {
        builder.json().init();
    } else {
        builder.init();
    }
}

async fn run(profile_path: &Path) -> Result<()> {
    // Everything that can be wrong with the configuration fails here, before
    // a port or a database is opened.
    let profile = config::load(profile_path)?;
    let mqtt_options = config::cloud_mqtt_options(&profile)?;
    let terminal_tokens = load_terminal_tokens(&profile)?;
    let _ = rustls::crypto::ring::default_provider().install_default();

    let store = StoreIdentity {
        store_id: profile.store.id.clone(),
        region: profile.store.region.clone(),
    };
    let span = tracing::info_span!("agent", store = %store.store_id);
    let _guard = span.enter();

    let mut outbox_config = OutboxConfig::new(
        profile.agent.data_dir.join("outbox.db"),
        profile.outbox.max_bytes,
        profile.outbox.max_rows,
    );
    outbox_config.disk_reserve_bytes = profile.outbox.disk_reserve_bytes;
    let outbox = Outbox::open(outbox_config, store.clone()).context("opening the outbox")?;
    let handle = outbox.handle();
    let stats = handle.stats_arc();
    let ingest = Ingest::new(handle.clone(), store.clone());
    let shutdown = CancellationToken::new();
    tokio::spawn(shutdown::on_signal(shutdown.clone()));

    let mut registry = metrics::registry(stats.clone());
    let device_tasks = devices::spawn(
        &profile,
        ingest.clone(),
        &mut registry,
        shutdown.child_token(),
    );

    // Cloud link: the connection task outlives the forwarder so receipts
    // can still arrive during the drain.
    // Batches are latency-bound round trips (publish → receipt): without
    // TCP_NODELAY, Nagle and delayed ACKs add ~40 ms to each.
    let mut network = rumqttc::NetworkOptions::new();
    network.set_tcp_nodelay(true);
    // rumqttc's 5 s default also bounds the write of each message: a large
    // batch on a slow uplink would drop the connection every time it was
    // sent, and nothing behind it would ever leave the store.
    network.set_connection_timeout(profile.cloud.network_timeout_secs.clamp(5, 600));
    let cloud = forwarder::CloudLink {
        options: mqtt_options,
        network,
        capacity: profile.cloud.max_batches_in_flight * 2 + 16,
    };
    let link_shutdown = CancellationToken::new();
    let (link_tx, link_rx) =
        tokio::sync::mpsc::channel(profile.cloud.max_batches_in_flight * 4 + 64);
    // The cloud link must run as long as the agent does (see `supervise`).
    let link_failed = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let connection = tokio::spawn(shutdown::supervise(
        "the cloud connection task",
        tokio::spawn(forwarder::run_connection(
            cloud,
            store.store_id.clone(),
            link_tx,
            link_shutdown.clone(),
        )),
        shutdown.clone(),
        link_failed.clone(),
    ));
    let forwarder = Forwarder::new(
        ForwarderConfig {
            store_id: store.store_id.clone(),
            batch_max_events: profile.cloud.batch_max_events,
            batch_max_bytes: profile.cloud.batch_max_bytes,
            max_batches_in_flight: profile.cloud.max_batches_in_flight,
            receipt_timeout: Duration::from_secs(profile.cloud.receipt_timeout_secs),
        },
        handle.clone(),
    );
    let grace = Duration::from_secs(profile.agent.shutdown_grace_secs);
    let forwarder_task = tokio::spawn(shutdown::supervise(
        "the forwarder",
        tokio::spawn(forwarder.run(link_rx, shutdown.clone(), grace / 2)),
        shutdown.clone(),
        link_failed.clone(),
    ));

    let housekeeping = {
        let handle = handle.clone();
        let shutdown = shutdown.clone();
        tokio::spawn(async move {
            let mut every = tokio::time::interval(Duration::from_secs(5));
            loop {
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    // Fails only when the writer is gone (the agent is
                    // stopping); the writer logs and retries its own steps.
                    _ = every.tick() => if handle.housekeep().await.is_err() { return },
                }
            }
        })
    };

    let state = Arc::new(AppState {
        ingest,
        terminal_tokens,
        terminals: profile
            .terminals
            .iter()
            .map(|t| t.id.clone())
            .collect::<HashSet<_>>(),
        currency: profile
            .store
            .currency
            .parse()
            .context("store.currency (validated with the profile)")?,
        shutting_down: Default::default(),
        registry,
        outbox_stats: stats,
    });
    let listener = tokio::net::TcpListener::bind(profile.agent.http_listen)
        .await
        .with_context(|| format!("binding {}", profile.agent.http_listen))?;
    tracing::info!(
        listen = %listener.local_addr().map(|a| a.to_string()).unwrap_or_default(),
        outbox_events = handle.stats().rows(),
        "store agent ready"
    );
    let server = {
        let state = state.clone();
        let shutdown = shutdown.clone();
        axum::serve(listener, http::router(state.clone())).with_graceful_shutdown(async move {
            shutdown.cancelled().await;
            // Requests on open connections get 503 for a moment instead of a reset.
            state.shutting_down.store(true, Ordering::Relaxed);
            tokio::time::sleep(Duration::from_millis(300)).await;
        })
    };
    // Graceful shutdown waits for every open connection, and axum sets hyper
    // no header or body timeout: a terminal that lost power mid-request (a
    // half-open connection) would hold the drain until SIGKILL, so the
    // outbox would never close. In-flight requests need a commit, not
    // seconds: after the bound, the rest are left behind.
    let http_drain = (grace / 4).max(Duration::from_secs(1));
    let served = tokio::select! {
        served = std::future::IntoFuture::into_future(server) => served,
        () = async {
            shutdown.cancelled().await;
            tokio::time::sleep(http_drain).await;
        } => {
            tracing::warn!(
                waited_ms = http_drain.as_millis() as u64,
                "HTTP connections still open after the drain; closing without them"
            );
            Ok(())
        }
    };

    // Drain: in-flight HTTP requests finished above; devices stop; the
    // forwarder waits a bounded time for receipts; then the outbox closes.
    shutdown.cancel();
    for t in device_tasks {
        let _ = tokio::time::timeout(grace / 4, t).await;
    }
    let _ = tokio::time::timeout(grace, forwarder_task).await;
    // The connection task sends DISCONNECT itself, on whichever connection is live.
    link_shutdown.cancel();
    let _ = tokio::time::timeout(Duration::from_secs(3), connection).await;
    let _ = housekeeping.await;
    drop(state);
    drop(handle);
    outbox.close().await;
    served.context("HTTP server failed")?;
    if link_failed.load(Ordering::Relaxed) {
        anyhow::bail!("the cloud link stopped while the agent was running (see above); the outbox is closed, and the next start resumes from it");
    }
    tracing::info!("store agent stopped cleanly");
    Ok(())
}

/// Reads one token file per profile terminal from `terminal_tokens_dir`.
fn load_terminal_tokens(
    profile: &firmware_config::StoreProfile,
) -> Result<Option<std::collections::HashMap<String, String>>> {
    let Some(dir) = &profile.agent.terminal_tokens_dir else {
        return Ok(None);
    };
    let mut tokens = std::collections::HashMap::new();
    for t in &profile.terminals {
        let path = dir.join(&t.id);
        let token = std::fs::read_to_string(&path).with_context(|| {
            format!(
                "reading the token of terminal {} from {}",
                t.id,
                path.display()
            )
        })?;
        let token = token.trim().to_owned();
        if token.is_empty() {
            anyhow::bail!("the token file {} is empty", path.display());
        }
        tokens.insert(t.id.clone(), token);
    }
    Ok(Some(tokens))
}
