//! `/metrics`, `/healthz` and `/readyz`.
//!
//! * `/healthz` (liveness) answers 200 while the process serves HTTP, with the
//!   connection states in the body: a Kafka outage must not make Kubernetes
//!   restart replicas that hold unacked messages.
//! * `/readyz` answers 503 unless MQTT is connected with the shared
//!   subscription granted, Kafka answers metadata requests and the
//!   idempotent producer holds its producer id (a broker that has just
//!   started answers "coordinator load in progress" for a while, and no
//!   record is written until then).

use std::sync::atomic::Ordering;
use std::sync::Arc;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;

use crate::metrics::Metrics;
use crate::mqtt_source::Health;

#[derive(Clone)]
pub struct AppState {
    pub metrics: Arc<Metrics>,
    pub health: Arc<Health>,
}

pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .with_state(state)
}

async fn metrics(State(s): State<AppState>) -> impl IntoResponse {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        s.metrics.encode(),
    )
}

fn status_body(h: &Health) -> (bool, String) {
    let mqtt = h.mqtt_connected.load(Ordering::Relaxed);
    let subscribed = h.subscribed.load(Ordering::Relaxed);
    let kafka = h.kafka_connected.load(Ordering::Relaxed);
    let producer = h.kafka_producer_ready.load(Ordering::Relaxed);
    (
        mqtt && subscribed && kafka && producer,
        format!(
            "{{\"mqtt_connected\":{mqtt},\"subscribed\":{subscribed},\"kafka_connected\":{kafka},\"kafka_producer_ready\":{producer}}}\n"
        ),
    )
}

async fn healthz(State(s): State<AppState>) -> impl IntoResponse {
    let (_, body) = status_body(&s.health);
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, "application/json")],
        body,
    )
}

async fn readyz(State(s): State<AppState>) -> impl IntoResponse {
    let (ready, body) = status_body(&s.health);
    let code = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (code, [(header::CONTENT_TYPE, "application/json")], body)
}
