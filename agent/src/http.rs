//! The POS-facing HTTP API and the agent's health endpoints.
//!
//! * `POST /v1/sales`, `/v1/returns`, `/v1/voids` — JSON bodies from
//!   [`protocol::transaction`]. `201 {"event_id"}` only after the outbox
//!   commit is durable; `200 {"event_id","duplicate":true}` for a re-post of
//!   the same (terminal, business day, sequence number); errors are RFC 9457
//!   problem documents with a stable `code` and the failing `field`s.
//! * `GET /healthz` (alive), `/readyz` (taking events), `/metrics`,
//!   `/v1/maintenance/safe-to-restart` (200 when no sale, return or void
//!   awaits delivery, else 409 — the rollout's gate), `/v1/outbox`.

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use prometheus_client::registry::Registry;
use protocol::transaction::{Return, Sale, TransactionRef, Void};
use protocol::{EventBody, FieldError, Problems, Source, SourceKind};
use serde::de::DeserializeOwned;
use serde_json::json;

use crate::ingest::{Ingest, Submitted};
use crate::metrics::{KindLabel, RequestLabels, METRICS};
use crate::outbox::{OutboxError, OutboxStats};

/// Largest request body accepted; a POSLog sale with 2,000 lines fits.
const BODY_LIMIT: usize = 1024 * 1024;

pub struct AppState {
    pub ingest: Ingest,
    /// Terminals in the store profile; empty means any well-formed id.
    pub terminals: HashSet<String>,
    pub shutting_down: AtomicBool,
    pub registry: Registry,
    pub outbox_stats: Arc<OutboxStats>,
}

pub fn router(state: Arc<AppState>) -> Router {
    Router::new()
        .route("/v1/sales", post(post_sale))
        .route("/v1/returns", post(post_return))
        .route("/v1/voids", post(post_void))
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .route("/v1/maintenance/safe-to-restart", get(safe_to_restart))
        .route("/v1/outbox", get(outbox))
        .layer(DefaultBodyLimit::max(BODY_LIMIT))
        .with_state(state)
}

/// An RFC 9457 problem document.
struct Problem {
    status: StatusCode,
    code: &'static str,
    detail: String,
    errors: Vec<FieldError>,
    retry_after: Option<u32>,
}

impl Problem {
    fn new(status: StatusCode, code: &'static str, detail: impl Into<String>) -> Problem {
        Problem {
            status,
            code,
            detail: detail.into(),
            errors: vec![],
            retry_after: None,
        }
    }
}

impl IntoResponse for Problem {
    fn into_response(self) -> Response {
        let body = json!({
            "type": format!("https://storelink.invalid/problems/{}", self.code),
            "title": self.status.canonical_reason().unwrap_or("error"),
            "status": self.status.as_u16(),
            "code": self.code,
            "detail": self.detail,
            "errors": self.errors,
        });
        let mut resp = (self.status, Json(body)).into_response();
        resp.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/problem+json"),
        );
        if let Some(secs) = self.retry_after {
            resp.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        resp
    }
}

/// Decodes JSON, naming the failing field: syntax errors are 400,
/// well-formed JSON of the wrong shape is 422.
fn decode<T: DeserializeOwned>(body: &[u8]) -> Result<T, Problem> {
    let de = &mut serde_json::Deserializer::from_slice(body);
    serde_path_to_error::deserialize(de).map_err(|e| {
        let field = e.path().to_string();
        let inner = e.into_inner();
        if inner.is_data() {
            let mut p = Problem::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "invalid_field",
                format!("{field}: {inner}"),
            );
            p.errors
                .push(FieldError::new(field, "invalid_field", inner.to_string()));
            p
        } else {
            Problem::new(StatusCode::BAD_REQUEST, "malformed_json", inner.to_string())
        }
    })
}

fn validation_problem(problems: Problems) -> Problem {
    let mut p = Problem::new(
        StatusCode::UNPROCESSABLE_ENTITY,
        "validation_failed",
        format!("{} problem(s): {problems}", problems.len()),
    );
    p.errors = problems.iter().cloned().collect();
    p
}

fn idempotency_key(r: &TransactionRef) -> String {
    format!("{}/{}/{}", r.terminal_id, r.business_day, r.sequence_number)
}

async fn submit(
    state: &AppState,
    terminal_id: &str,
    reference: TransactionRef,
    occurred_at: chrono::DateTime<chrono::FixedOffset>,
    body: EventBody,
) -> Result<Response, Problem> {
    if state.shutting_down.load(Ordering::Relaxed) {
        let mut p = Problem::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "shutting_down",
            "the agent is restarting; retry shortly",
        );
        p.retry_after = Some(2);
        return Err(p);
    }
    if !state.terminals.is_empty() && !state.terminals.contains(terminal_id) {
        let mut p = Problem::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "unknown_terminal",
            format!("terminal `{terminal_id}` is not in this store's profile"),
        );
        p.errors.push(FieldError::new(
            "terminal_id",
            "unknown_terminal",
            "not in the store profile",
        ));
        return Err(p);
    }
    let kind = body.kind();
    let source = Source {
        kind: SourceKind::PosTerminal,
        device_id: terminal_id.to_owned(),
    };
    let key = idempotency_key(&reference);
    match state
        .ingest
        .submit(source, occurred_at, body, Some(key))
        .await
    {
        Ok(Submitted::Stored(id)) => {
            METRICS
                .events_accepted
                .get_or_create(&KindLabel {
                    kind: kind.schema_name().into(),
                })
                .inc();
            Ok((
                StatusCode::CREATED,
                Json(json!({ "event_id": id, "status": "accepted" })),
            )
                .into_response())
        }
        Ok(Submitted::Duplicate(id)) => Ok((
            StatusCode::OK,
            Json(json!({ "event_id": id, "status": "accepted", "duplicate": true })),
        )
            .into_response()),
        Ok(Submitted::Shed) => Err(Problem::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            "a transaction was classed as telemetry",
        )),
        Err(OutboxError::Full { rows, bytes }) => {
            let mut p = Problem::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "outbox_full",
                format!("the store's outbox is full ({rows} events, {bytes} bytes) while the cloud link catches up; keep the transaction in the terminal journal and retry"),
            );
            p.retry_after = Some(5);
            Err(p)
        }
        Err(OutboxError::IdempotencyConflict { key, original }) => {
            let mut p = Problem::new(
                StatusCode::CONFLICT,
                "idempotency_conflict",
                format!("transaction {key} was already recorded as event {original} with a different body"),
            );
            p.errors.push(FieldError::new(
                "sequence_number",
                "idempotency_conflict",
                "already used for a different transaction",
            ));
            Err(p)
        }
        Err(e) => {
            tracing::error!(error = %e, "outbox refused an event");
            let mut p = Problem::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "outbox_unavailable",
                "the store's outbox cannot store events right now; retry",
            );
            p.retry_after = Some(5);
            Err(p)
        }
    }
}

fn record(route: &str, started: Instant, result: Result<Response, Problem>) -> Response {
    let resp = result.unwrap_or_else(IntoResponse::into_response);
    METRICS
        .http_requests
        .get_or_create(&RequestLabels {
            route: route.into(),
            status: resp.status().as_u16(),
        })
        .inc();
    METRICS
        .http_request_seconds
        .observe(started.elapsed().as_secs_f64());
    resp
}

async fn post_sale(State(state): State<Arc<AppState>>, body: Bytes) -> Response {
    let started = Instant::now();
    let result = async {
        let sale: Sale = decode(&body)?;
        sale.validate().map_err(validation_problem)?;
        let (terminal, reference, at) = (sale.terminal_id.clone(), sale.reference(), sale.ended_at);
        submit(
            &state,
            &terminal,
            reference,
            at,
            EventBody::Sale(Box::new(sale)),
        )
        .await
    }
    .await;
    record("/v1/sales", started, result)
}

async fn post_return(State(state): State<Arc<AppState>>, body: Bytes) -> Response {
    let started = Instant::now();
    let result = async {
        let ret: Return = decode(&body)?;
        ret.validate().map_err(validation_problem)?;
        let t = &ret.transaction;
        let (terminal, reference, at) = (t.terminal_id.clone(), t.reference(), t.ended_at);
        submit(
            &state,
            &terminal,
            reference,
            at,
            EventBody::Return(Box::new(ret)),
        )
        .await
    }
    .await;
    record("/v1/returns", started, result)
}

async fn post_void(State(state): State<Arc<AppState>>, body: Bytes) -> Response {
    let started = Instant::now();
    let result = async {
        let void: Void = decode(&body)?;
        void.validate().map_err(validation_problem)?;
        let (terminal, reference, at) =
            (void.terminal_id.clone(), void.reference(), void.voided_at);
        submit(&state, &terminal, reference, at, EventBody::Void(void)).await
    }
    .await;
    record("/v1/voids", started, result)
}

async fn readyz(State(state): State<Arc<AppState>>) -> Response {
    if state.shutting_down.load(Ordering::Relaxed) {
        (StatusCode::SERVICE_UNAVAILABLE, "shutting down").into_response()
    } else {
        (StatusCode::OK, "ready").into_response()
    }
}

async fn metrics(State(state): State<Arc<AppState>>) -> Response {
    let mut out = String::new();
    match prometheus_client::encoding::text::encode(&mut out, &state.registry) {
        Ok(()) => (
            [(
                header::CONTENT_TYPE,
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
            )],
            out,
        )
            .into_response(),
        Err(_) => StatusCode::INTERNAL_SERVER_ERROR.into_response(),
    }
}

async fn safe_to_restart(State(state): State<Arc<AppState>>) -> Response {
    let pending = state.outbox_stats.pending_transactions();
    let body = Json(json!({
        "safe": pending == 0,
        "pending_transactions": pending,
        "outbox_events": state.outbox_stats.rows(),
    }));
    let status = if pending == 0 {
        StatusCode::OK
    } else {
        StatusCode::CONFLICT
    };
    (status, body).into_response()
}

async fn outbox(State(state): State<Arc<AppState>>) -> Response {
    let s = &state.outbox_stats;
    Json(json!({
        "events": s.rows(),
        "bytes": s.bytes(),
        "pending_transactions": s.pending_transactions(),
        "shed_total": s.shed_total.load(Ordering::Relaxed),
        "compacted_total": s.compacted_total.load(Ordering::Relaxed),
        "quarantined_total": s.quarantined_total.load(Ordering::Relaxed),
    }))
    .into_response()
}
