//! StoreLink cloud bridge: store events from MQTT to Kafka, receipts back.
//!
//! Codemap (pure logic apart from I/O):
//! * [`config`] — `bridge.toml` + `STORELINK_BRIDGE_*`, validated before anything connects.
//! * [`routing`] — pure: MQTT message → one decision per event (publish / dead-letter).
//! * [`dedupe`] — pure: the bounded window of recently published (store, event id) pairs.
//! * [`receipts`], [`dead_letter`] — pure: the receipt and dead-letter records.
//! * [`mqtt_source`] — the persistent MQTT session, event loop, manual acks.
//! * [`kafka_sink`] — idempotent producer, retries that never drop.
//! * [`pipeline`] — ties them together; **a message is acked only once every
//!   event in it is in Kafka (domain or dead-letter topic) and its receipt is
//!   queued**.
//! * [`topics_admin`] — `topics ensure`.
//! * [`replay`] — `dead-letters replay`: dead letters through today's routing again.
//! * [`metrics`], [`http`] — Prometheus, health and readiness.

pub mod config;
pub mod dead_letter;
pub mod dedupe;
pub mod http;
pub mod kafka_log;
pub mod kafka_sink;
pub mod log_limit;
pub mod metrics;
pub mod mqtt_source;
pub mod payload_budget;
pub mod pipeline;
pub mod receipts;
pub mod replay;
pub mod routing;
pub mod topics_admin;

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use rdkafka::producer::Producer;
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::kafka_sink::KafkaSink;
use crate::metrics::Metrics;
use crate::mqtt_source::Health;
use crate::pipeline::Pipeline;

#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error(transparent)]
    Sink(#[from] kafka_sink::SinkError),
    #[error("stopped: {0}")]
    KafkaFatal(String),
    #[error("binding the HTTP listener on {addr}: {source}")]
    Http {
        addr: std::net::SocketAddr,
        source: std::io::Error,
    },
}

/// Runs the bridge until `shutdown` is cancelled (SIGTERM in `main`), then
/// (with `mqtt.leave_share_group_on_shutdown`) leaves the MQTT share group
/// (`mqtt_source::leave_share_group`), stops taking messages, lets in-flight
/// ones settle within the grace period and disconnects. Returns the number
/// of messages left unacked to the broker.
pub async fn run(cfg: Config, shutdown: CancellationToken) -> Result<usize, RunError> {
    let cfg = Arc::new(cfg);
    let metrics = Arc::new(Metrics::new());
    let health = Arc::new(Health::default());

    let listener = tokio::net::TcpListener::bind(cfg.http_listen)
        .await
        .map_err(|source| RunError::Http {
            addr: cfg.http_listen,
            source,
        })?;
    let http_stop = CancellationToken::new();
    let app = http::router(http::AppState {
        metrics: Arc::clone(&metrics),
        health: Arc::clone(&health),
    });
    let hs = http_stop.clone();
    let http_task = tokio::spawn(async move {
        let r = axum::serve(listener, app)
            .with_graceful_shutdown(async move { hs.cancelled().await })
            .await;
        if let Err(e) = r {
            tracing::error!(error = %e, "HTTP server failed");
        }
    });

    let sink = Arc::new(KafkaSink::new(&cfg.kafka, Arc::clone(&metrics))?);
    let kafka_watch = tokio::spawn(watch_kafka(
        Arc::clone(&sink),
        Arc::clone(&health),
        shutdown.clone(),
    ));

    if cfg.kafka.ensure_topics_at_startup {
        ensure_topics_until_done(&cfg, &shutdown).await;
    }

    let (client, eventloop) = mqtt_source::client(&cfg.mqtt);
    let (tx, rx) = tokio::sync::mpsc::channel(mqtt_source::RECEIVED_QUEUE);
    let loop_stop = CancellationToken::new();
    let subscription = protocol::topics::bridge_shared_subscription(&cfg.mqtt.share_group);
    tracing::info!(bridge_id = %cfg.bridge_id, client_id = %cfg.mqtt.client_id, %subscription,
        mqtt = %format!("{}:{}", cfg.mqtt.host, cfg.mqtt.port), kafka = %cfg.kafka.bootstrap, "bridge starting");
    let (intake, leave_task) = if cfg.mqtt.leave_share_group_on_shutdown {
        let intake = CancellationToken::new();
        let task = tokio::spawn(mqtt_source::leave_share_group(
            client.clone(),
            subscription.clone(),
            Arc::clone(&health),
            Arc::clone(&metrics),
            shutdown.clone(),
            intake.clone(),
        ));
        (intake, Some(task))
    } else {
        // The session stays subscribed: the broker queues this replica's
        // share while it restarts (the only replica's: all of it).
        (shutdown.clone(), None)
    };
    let budget = payload_budget::PayloadBudget::new(
        cfg.limits.max_bytes_in_flight,
        metrics.mqtt_payload_held_bytes.clone(),
        metrics.mqtt_payload_held_peak_bytes.clone(),
    );
    let loop_task = tokio::spawn(mqtt_source::run_event_loop(
        eventloop,
        client.clone(),
        subscription,
        mqtt_source::Handoff { queue: tx, budget },
        Arc::clone(&health),
        Arc::clone(&metrics),
        loop_stop.clone(),
    ));

    let abort = CancellationToken::new();
    let pipeline = Arc::new(Pipeline::new(
        Arc::clone(&cfg),
        Arc::clone(&sink),
        client.clone(),
        Arc::clone(&health),
        Arc::clone(&metrics),
        abort,
    ));
    let left = Arc::clone(&pipeline).run(rx, intake).await;
    // The pipeline may have stopped on its own (a fatal producer error).
    if let Some(task) = leave_task {
        task.abort();
    }
    tracing::info!(
        unacked_left_to_broker = left,
        "pipeline stopped; disconnecting"
    );

    // Receipts and acks queued by the pipeline go out before the DISCONNECT.
    let _ = tokio::time::timeout(Duration::from_secs(2), client.disconnect()).await;
    loop_stop.cancel();
    let _ = tokio::time::timeout(Duration::from_secs(5), loop_task).await;
    http_stop.cancel();
    let _ = tokio::time::timeout(Duration::from_secs(2), http_task).await;
    kafka_watch.abort();
    match pipeline.fatal_error() {
        Some(e) => Err(RunError::KafkaFatal(e)),
        None => Ok(left),
    }
}

/// Creates/checks topics at startup, retrying while Kafka is unreachable.
/// Drift that cannot be fixed is logged, not fatal: traffic still flows.
async fn ensure_topics_until_done(cfg: &Config, shutdown: &CancellationToken) {
    let mut pause = Duration::from_millis(500);
    loop {
        match topics_admin::ensure(
            &cfg.kafka.bootstrap,
            &cfg.kafka.connection,
            &cfg.topics,
            true,
            // Never on its own: see topics_admin.
            false,
        )
        .await
        {
            Ok(report) => {
                for l in &report.lines {
                    tracing::info!("topic {l}");
                }
                for l in &report.unfixed {
                    tracing::error!("topic drift: {l}");
                }
                return;
            }
            Err(e) => {
                tracing::warn!(error = %e, retry_in_ms = pause.as_millis() as u64, "cannot ensure Kafka topics yet");
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = tokio::time::sleep(pause) => {}
                }
                pause = (pause * 2).min(Duration::from_secs(10));
            }
        }
    }
}

/// Keeps `health.kafka_connected` (a metadata request every few seconds)
/// and `health.kafka_producer_ready` current; looks more often while either
/// is false, so readiness follows a starting or returning broker closely.
async fn watch_kafka(sink: Arc<KafkaSink>, health: Arc<Health>, stop: CancellationToken) {
    loop {
        let p = sink.producer().clone();
        let ok = tokio::task::spawn_blocking(move || {
            p.client()
                .fetch_metadata(None, Duration::from_secs(3))
                .map(|md| !md.brokers().is_empty())
                .unwrap_or(false)
        })
        .await
        .unwrap_or(false);
        let producer_ready = sink.producer_ready();
        health.kafka_connected.store(ok, Ordering::Relaxed);
        health
            .kafka_producer_ready
            .store(producer_ready, Ordering::Relaxed);
        let pause = if ok && producer_ready {
            Duration::from_secs(5)
        } else {
            Duration::from_millis(250)
        };
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(pause) => {}
        }
    }
}
