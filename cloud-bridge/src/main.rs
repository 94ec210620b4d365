//! The `cloud-bridge` command:
//! * `run --config bridge.toml` — the bridge, until SIGTERM/SIGINT;
//! * `check --config bridge.toml [--skip-files]` — validate the config only;
//! * `topics ensure --config bridge.toml [--check | --add-partitions]` —
//!   create or check the Kafka topics, report drift (exit 1);
//! * `dead-letters replay --config bridge.toml --reason R… [--store S]
//!   [--group G] [--dry-run]` — route dead letters again (exit 1 if some
//!   still fail).

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};
use tokio_util::sync::CancellationToken;

// Every MQTT payload (~100 KB) lands in a fresh buffer that lives until
// Kafka has its records. With glibc malloc the kernel zeroed a new page for
// almost every byte received: up to a quarter of the bridge's CPU under load
// (perf: `clear_page_erms` under `recv`). mimalloc reuses freed pages; its
// transparent-huge-page use is off (`no_thp`) because zeroing 2 MiB pages on
// first touch cost as much again. The `override` feature also makes it the
// process's `malloc`/`free` (exported, so libc's own calls resolve to it too):
// librdkafka allocates and frees per record, and glibc's malloc was a tenth
// of the bridge's samples during a drain; with it `bench_bridge` used 5.6
// instead of 6.2 µs of CPU per event.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(
    name = "cloud-bridge",
    version,
    about = "StoreLink MQTT → Kafka bridge"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Bridge store events from MQTT to Kafka until SIGTERM/SIGINT.
    Run {
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Validate a config file and report every problem; connects to nothing.
    Check {
        #[arg(long, short)]
        config: PathBuf,
        /// Name the TLS files but do not read them (linting a deployment's
        /// config away from the Secrets it mounts).
        #[arg(long)]
        skip_files: bool,
    },
    /// Manage the Kafka topics.
    Topics {
        #[command(subcommand)]
        cmd: TopicsCmd,
    },
    /// Work with the dead-letter topic.
    DeadLetters {
        #[command(subcommand)]
        cmd: DeadLettersCmd,
    },
}

#[derive(Subcommand)]
enum DeadLettersCmd {
    /// Route the selected dead letters again with today's rules: what now
    /// routes is published to its domain topic, what still fails stays
    /// (exit 1 if any selected dead letter still fails). Progress is kept
    /// in a Kafka consumer group, so a second run reads only newer ones.
    Replay {
        #[arg(long, short)]
        config: PathBuf,
        /// Dead-letter reason to replay (repeat for several), e.g.
        /// unsupported_schema_version, undecodable_body, kafka_rejected.
        #[arg(long = "reason", required = true)]
        reasons: Vec<String>,
        /// Only dead letters from this store's events topic.
        #[arg(long)]
        store: Option<String>,
        /// Consumer group that keeps the progress [default: named after the
        /// reasons and store].
        #[arg(long)]
        group: Option<String>,
        /// Say what would be replayed; publish and commit nothing.
        #[arg(long)]
        dry_run: bool,
    },
}

#[derive(Subcommand)]
enum TopicsCmd {
    /// Create missing topics, fix what can be fixed, report drift (exit 1 on unfixed drift).
    Ensure {
        #[arg(long, short)]
        config: PathBuf,
        /// Only compare; change nothing.
        #[arg(long)]
        check: bool,
        /// Add missing partitions. Keys then move to other partitions, so a
        /// store's later events can be read before its earlier ones: stop
        /// producers and let consumers catch up first.
        #[arg(long, conflicts_with = "check")]
        add_partitions: bool,
    },
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    match real_main() {
        Ok(code) => code,
        Err(e) => {
            eprintln!("cloud-bridge: {e:#}");
            ExitCode::from(2)
        }
    }
}

fn real_main() -> anyhow::Result<ExitCode> {
    let cli = Cli::parse();
    // rumqttc is built without a default crypto provider (aws-lc would need
    // cmake and clang on every build host): `[mqtt.tls]` uses ring's.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    match cli.cmd {
        Cmd::Run { config } => {
            let cfg = cloud_bridge::config::load(&config)?;
            rt.block_on(async {
                let shutdown = CancellationToken::new();
                let s = shutdown.clone();
                tokio::spawn(async move {
                    wait_for_signal().await;
                    tracing::info!("stop requested: no new messages, finishing in-flight ones");
                    s.cancel();
                });
                cloud_bridge::run(cfg, shutdown).await
            })?;
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Check { config, skip_files } => {
            let files = if skip_files {
                cloud_bridge::config::Files::Skip
            } else {
                cloud_bridge::config::Files::Read
            };
            let cfg = cloud_bridge::config::check(&config, files)?;
            println!(
                "{}: valid (bridge {}, MQTT {}:{}{}, Kafka {}{})",
                config.display(),
                cfg.bridge_id,
                cfg.mqtt.host,
                cfg.mqtt.port,
                if cfg.mqtt.tls.is_some() {
                    " over TLS"
                } else {
                    ""
                },
                cfg.kafka.bootstrap,
                cfg.kafka
                    .connection
                    .get("security.protocol")
                    .map(|p| format!(" ({p})"))
                    .unwrap_or_default(),
            );
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Topics {
            cmd:
                TopicsCmd::Ensure {
                    config,
                    check,
                    add_partitions,
                },
        } => {
            let cfg = cloud_bridge::config::load(&config)?;
            let report = rt.block_on(cloud_bridge::topics_admin::ensure(
                &cfg.kafka.bootstrap,
                &cfg.kafka.connection,
                &cfg.topics,
                !check,
                add_partitions,
            ))?;
            for l in &report.lines {
                println!("{l}");
            }
            for l in &report.unfixed {
                println!("DRIFT {l}");
            }
            Ok(if report.unfixed.is_empty() {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            })
        }
        Cmd::DeadLetters {
            cmd:
                DeadLettersCmd::Replay {
                    config,
                    reasons,
                    store,
                    group,
                    dry_run,
                },
        } => {
            let cfg = cloud_bridge::config::load(&config)?;
            let selection = cloud_bridge::replay::Selection { reasons, store };
            let group = group.unwrap_or_else(|| selection.default_group());
            let report = rt.block_on(async {
                let cancel = CancellationToken::new();
                let c = cancel.clone();
                tokio::spawn(async move {
                    wait_for_signal().await;
                    c.cancel();
                });
                cloud_bridge::replay::replay(&cfg, &selection, &group, dry_run, &cancel).await
            })?;
            print_replay(&report, dry_run);
            Ok(if report.still_dead.is_empty() {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            })
        }
    }
}

fn print_replay(r: &cloud_bridge::replay::Report, dry_run: bool) {
    let topic = protocol::topics::KafkaTopic::DeadLetters.name();
    println!(
        "read {} dead letters of {topic} for group {}; {} not selected",
        r.read, r.group, r.not_selected
    );
    let verb = if dry_run { "would replay" } else { "replayed" };
    if r.replayed.is_empty() {
        println!("{verb} nothing");
    }
    for (t, n) in &r.replayed {
        println!("{verb} {n} to {t}");
    }
    for (reason, n) in &r.still_dead {
        println!("still dead: {n} {reason} (left in {topic})");
    }
    if !r.still_dead.is_empty() && !dry_run {
        // Progress moves past them: the same group will not read them again.
        println!(
            "the group's progress moved past those: once their cause is fixed, replay them \
             with a fresh --group and the same selection, which reads the selection from the \
             start again and publishes what was replayed before a second time (consumers drop \
             the copies by event id); --dry-run first shows what it would take"
        );
    }
    if dry_run {
        println!("dry run: nothing published, progress not committed");
    } else {
        let at: Vec<String> = r
            .committed
            .iter()
            .map(|(p, o)| format!("{p}:{o}"))
            .collect();
        println!("committed partition:offset {}", at.join(" "));
    }
}

async fn wait_for_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    match signal(SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = term.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
        }
        Err(e) => {
            tracing::warn!(error = %e, "no SIGTERM handler; only Ctrl-C stops the bridge");
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}
