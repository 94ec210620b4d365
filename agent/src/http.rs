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
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use prometheus_client::registry::Registry;
use protocol::transaction::{Return, Sale, TransactionRef, Void};
use protocol::{Currency, EventBody, FieldError, Problems, Source, SourceKind};
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
    /// Bearer token per terminal, when the profile sets `terminal_tokens_dir`.
    pub terminal_tokens: Option<std::collections::HashMap<String, String>>,
    /// The currency the store books in (`store.currency`): every amount of a
    /// transaction is in minor units of it, so one in another currency
    /// would be read with the wrong exponent downstream.
    pub currency: Currency,
    pub shutting_down: AtomicBool,
    pub registry: Registry,
    pub outbox_stats: Arc<OutboxStats>,
}

pub fn router(state: Arc<AppState>) -> Router {
    Router::new()
        .route(Sale::ROUTE, post(post_record::<Sale>))
        .route(Return::ROUTE, post(post_record::<Return>))
        .route(Void::ROUTE, post(post_record::<Void>))
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .route("/v1/maintenance/safe-to-restart", get(safe_to_restart))
        .route("/v1/outbox", get(outbox))
        // A terminal integrator gets a problem document for every mistake,
        // a wrong path or method included, not an empty body.
        .fallback(|| async {
            Problem::new(StatusCode::NOT_FOUND, "unknown_route", "no such endpoint")
        })
        .method_not_allowed_fallback(|| async {
            Problem::new(
                StatusCode::METHOD_NOT_ALLOWED,
                "method_not_allowed",
                "this endpoint does not take that method",
            )
        })
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
    // The fast path for the valid bodies that are nearly all traffic; the
    // path-tracking decoder runs again only to name the failing field.
    let first_error = match serde_json::from_slice(body) {
        Ok(value) => return Ok(value),
        Err(e) => e,
    };
    let de = &mut serde_json::Deserializer::from_slice(body);
    let e = match serde_path_to_error::deserialize::<_, T>(&mut *de) {
        Ok(_) => {
            // A value, then more (`{…}x`, two sales back to back): the path
            // decoder stops after the value; only the first error says so.
            return Err(Problem::new(
                StatusCode::BAD_REQUEST,
                "malformed_json",
                first_error.to_string(),
            ));
        }
        Err(e) => e,
    };
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
        Err(p)
    } else {
        Err(Problem::new(
            StatusCode::BAD_REQUEST,
            "malformed_json",
            inner.to_string(),
        ))
    }
}

/// A body that could not be read at all: over the size limit (413), or
/// cut off mid-request. axum's own answer would be plain text.
fn body_problem(rejection: BytesRejection) -> Problem {
    let status = rejection.status();
    let code = if status == StatusCode::PAYLOAD_TOO_LARGE {
        "body_too_large"
    } else {
        "unreadable_body"
    };
    let detail = if status == StatusCode::PAYLOAD_TOO_LARGE {
        format!("a request body may be at most {BODY_LIMIT} bytes")
    } else {
        rejection.body_text()
    };
    Problem::new(status, code, detail)
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

/// Compares without an early exit, so response timing does not reveal how
/// much of a guessed token was right.
fn same_token(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// The token of an `Authorization: Bearer <token>` value. The scheme is
/// case-insensitive (RFC 9110 §11.1): terminals send `bearer` too.
fn bearer_token(value: &str) -> Option<&str> {
    let (scheme, token) = value.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim_start_matches(' '))
}

fn authorize(state: &AppState, headers: &HeaderMap, terminal_id: &str) -> Result<(), Problem> {
    let Some(tokens) = &state.terminal_tokens else {
        return Ok(());
    };
    let presented = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(bearer_token);
    match (tokens.get(terminal_id), presented) {
        (Some(expected), Some(got)) if same_token(expected.as_bytes(), got.as_bytes()) => Ok(()),
        _ => Err(Problem::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            format!("terminal `{terminal_id}` must present its bearer token"),
        )),
    }
}

async fn submit(
    state: &AppState,
    headers: &HeaderMap,
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
    authorize(state, headers, terminal_id)?;
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
                    kind: kind.schema_name(),
                })
                .inc();
            Ok((StatusCode::CREATED, Json(Accepted::new(id, false))).into_response())
        }
        Ok(Submitted::Duplicate(id)) => {
            Ok((StatusCode::OK, Json(Accepted::new(id, true))).into_response())
        }
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
        Err(OutboxError::DiskFull) => {
            let mut p = Problem::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "disk_full",
                "the store box's disk is full while the cloud link catches up; keep the transaction in the terminal journal and retry",
            );
            p.retry_after = Some(5);
            Err(p)
        }
        Err(OutboxError::TooLarge { bytes, limit }) => Err(Problem::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "event_too_large",
            format!("the transaction makes an event of {bytes} bytes; the limit is {limit}"),
        )),
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

/// The answer to an accepted POS record (typed: a `json!` map per sale was
/// a measurable share of the request's allocations).
#[derive(serde::Serialize)]
struct Accepted {
    event_id: protocol::EventId,
    status: &'static str,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    duplicate: bool,
}

impl Accepted {
    fn new(event_id: protocol::EventId, duplicate: bool) -> Accepted {
        Accepted {
            event_id,
            status: "accepted",
            duplicate,
        }
    }
}

fn record(route: &'static str, started: Instant, result: Result<Response, Problem>) -> Response {
    let resp = result.unwrap_or_else(IntoResponse::into_response);
    METRICS
        .http_requests
        .get_or_create(&RequestLabels {
            route,
            status: resp.status().as_u16(),
        })
        .inc();
    METRICS
        .http_request_seconds
        .observe(started.elapsed().as_secs_f64());
    resp
}

/// What the three POS endpoints have in common: a POSLog record from one
/// terminal with its idempotency key, validated before it is stored.
trait PosRecord: DeserializeOwned {
    const ROUTE: &'static str;
    /// Refuses a body of another kind that this type would decode, because
    /// decoding ignores unknown fields.
    fn refuse_other_kinds(_body: &[u8]) -> Result<(), Problem> {
        Ok(())
    }
    fn validate(&self) -> Result<(), Problems>;
    /// Leaves out what only repeats this store's own id, so the event keeps
    /// the lowest schema version that carries it.
    fn drop_own_store(&mut self, _store_id: &str) {}
    fn reference(&self) -> TransactionRef;
    fn occurred_at(&self) -> chrono::DateTime<chrono::FixedOffset>;
    /// The currency of the record's amounts, if it has any.
    fn currency(&self) -> Option<Currency>;
    fn into_body(self) -> EventBody;
}

impl PosRecord for Sale {
    const ROUTE: &'static str = "/v1/sales";
    /// A return is a sale's fields plus `reason_code` (required) and
    /// `original`: posted here, it would be booked as revenue, and its own
    /// route would then refuse it as an idempotency conflict.
    fn refuse_other_kinds(body: &[u8]) -> Result<(), Problem> {
        // Nearly every sale lacks the text; only one that has it (in a
        // description, say) pays for the second, exact look.
        if memchr::memmem::find(body, b"\"reason_code\"").is_none() {
            return Ok(());
        }
        #[derive(serde::Deserialize)]
        struct TopLevel {
            reason_code: Option<serde::de::IgnoredAny>,
        }
        match serde_json::from_slice::<TopLevel>(body) {
            Ok(TopLevel {
                reason_code: Some(_),
            }) => {
                let mut p = Problem::new(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    "wrong_route",
                    "a sale has no reason_code: post a return to /v1/returns, a void to /v1/voids",
                );
                p.errors.push(FieldError::new(
                    "reason_code",
                    "wrong_route",
                    "not a field of a sale; this body looks like a return",
                ));
                Err(p)
            }
            _ => Ok(()),
        }
    }
    fn validate(&self) -> Result<(), Problems> {
        Sale::validate(self)
    }
    fn reference(&self) -> TransactionRef {
        Sale::reference(self)
    }
    fn occurred_at(&self) -> chrono::DateTime<chrono::FixedOffset> {
        self.ended_at
    }
    fn currency(&self) -> Option<Currency> {
        Some(self.currency)
    }
    fn into_body(self) -> EventBody {
        EventBody::Sale(Box::new(self))
    }
}

impl PosRecord for Return {
    const ROUTE: &'static str = "/v1/returns";
    fn validate(&self) -> Result<(), Problems> {
        Return::validate(self)
    }
    fn drop_own_store(&mut self, store_id: &str) {
        if let Some(original) = &mut self.original {
            if original.store_id.as_deref() == Some(store_id) {
                original.store_id = None;
            }
        }
    }
    fn reference(&self) -> TransactionRef {
        self.transaction.reference()
    }
    fn occurred_at(&self) -> chrono::DateTime<chrono::FixedOffset> {
        self.transaction.ended_at
    }
    fn currency(&self) -> Option<Currency> {
        Some(self.transaction.currency)
    }
    fn into_body(self) -> EventBody {
        EventBody::Return(Box::new(self))
    }
}

impl PosRecord for Void {
    const ROUTE: &'static str = "/v1/voids";
    fn validate(&self) -> Result<(), Problems> {
        Void::validate(self)
    }
    fn drop_own_store(&mut self, store_id: &str) {
        if self.voided.store_id.as_deref() == Some(store_id) {
            self.voided.store_id = None;
        }
    }
    fn reference(&self) -> TransactionRef {
        Void::reference(self)
    }
    fn occurred_at(&self) -> chrono::DateTime<chrono::FixedOffset> {
        self.voided_at
    }
    fn currency(&self) -> Option<Currency> {
        None
    }
    fn into_body(self) -> EventBody {
        EventBody::Void(self)
    }
}

async fn post_record<R: PosRecord>(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let started = Instant::now();
    let result = async {
        let body = body.map_err(body_problem)?;
        let mut record: R = decode(&body)?;
        R::refuse_other_kinds(&body)?;
        record.drop_own_store(&state.ingest.store().store_id);
        let mut problems = record.validate().err().unwrap_or_default();
        if let Some(currency) = record.currency().filter(|c| *c != state.currency) {
            problems.push(FieldError::new(
                "currency",
                "currency_mismatch",
                format!(
                    "this store books in {}; the transaction is in {}",
                    state.currency.code(),
                    currency.code()
                ),
            ));
        }
        problems.into_result().map_err(validation_problem)?;
        let (reference, at) = (record.reference(), record.occurred_at());
        let terminal = reference.terminal_id.clone();
        submit(
            &state,
            &headers,
            &terminal,
            reference,
            at,
            record.into_body(),
        )
        .await
    }
    .await;
    record(R::ROUTE, started, result)
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
        "ids_repaired_total": s.ids_repaired_total.load(Ordering::Relaxed),
        "salvaged_total": s.salvaged_total.load(Ordering::Relaxed),
    }))
    .into_response()
}

#[cfg(test)]
mod tests {
    //! Handler tests without a socket (`oneshot`), against a real outbox file.

    use axum::body::Body;
    use axum::http::Request;
    use tower::ServiceExt;

    use super::*;
    use crate::ingest::StoreIdentity;
    use crate::outbox::{Outbox, OutboxConfig};

    struct Fixture {
        app: Router,
        state: Arc<AppState>,
        _outbox: Outbox,
        _dir: tempfile::TempDir,
    }

    fn fixture(max_rows: u64, tokens: Option<&[(&str, &str)]>) -> Fixture {
        let dir = tempfile::tempdir().expect("tmp");
        let store = StoreIdentity {
            store_id: "store-test".into(),
            region: "eu-west".into(),
        };
        let outbox = Outbox::open(
            OutboxConfig::new(dir.path().join("outbox.db"), 1 << 30, max_rows),
            store.clone(),
        )
        .expect("outbox");
        let stats = outbox.handle().stats_arc();
        let state = Arc::new(AppState {
            ingest: Ingest::new(outbox.handle(), store),
            terminals: ["pos-01", "pos-02"].into_iter().map(String::from).collect(),
            terminal_tokens: tokens.map(|t| {
                t.iter()
                    .map(|(a, b)| (a.to_string(), b.to_string()))
                    .collect()
            }),
            currency: Currency::EUR,
            shutting_down: AtomicBool::new(false),
            registry: crate::metrics::registry(stats.clone()),
            outbox_stats: stats,
        });
        Fixture {
            app: router(state.clone()),
            state,
            _outbox: outbox,
            _dir: dir,
        }
    }

    async fn call(
        app: &Router,
        method: &str,
        uri: &str,
        body: Vec<u8>,
        auth: Option<&str>,
    ) -> (StatusCode, HeaderMap, serde_json::Value) {
        let mut req = Request::builder()
            .method(method)
            .uri(uri)
            .header("content-type", "application/json");
        if let Some(a) = auth {
            req = req.header("authorization", a);
        }
        let resp = app
            .clone()
            .oneshot(req.body(Body::from(body)).expect("request"))
            .await
            .expect("response");
        let (parts, body) = resp.into_parts();
        let bytes = axum::body::to_bytes(body, usize::MAX).await.expect("body");
        (
            parts.status,
            parts.headers,
            serde_json::from_slice(&bytes).unwrap_or(serde_json::Value::Null),
        )
    }

    fn sale(seq: u64) -> Vec<u8> {
        serde_json::to_vec(&protocol::samples::sale_numbered("pos-01", seq)).expect("json")
    }

    /// POSTs `body` as JSON to the sales route, without a token.
    async fn post_sale_json(
        app: &Router,
        body: &impl serde::Serialize,
    ) -> (StatusCode, HeaderMap, serde_json::Value) {
        let bytes = serde_json::to_vec(body).expect("json");
        call(app, "POST", "/v1/sales", bytes, None).await
    }

    #[tokio::test]
    async fn a_sale_is_created_once_and_a_repost_returns_the_original_id() {
        let f = fixture(1000, None);
        let (status, _, first) = call(&f.app, "POST", "/v1/sales", sale(1), None).await;
        assert_eq!(status, StatusCode::CREATED, "{first}");
        let (status, _, again) = call(&f.app, "POST", "/v1/sales", sale(1), None).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(again["event_id"], first["event_id"]);
        assert_eq!(again["duplicate"], true);
        assert_eq!(f.state.outbox_stats.rows(), 1);
    }

    /// Version 2's records (cash rounding, nothing to pay, another store's
    /// sale returned) are stored as posted, at version 2; naming this
    /// store's own id keeps a return or a void at version 1; a void of
    /// another store's transaction is refused.
    #[tokio::test]
    async fn version_2_records_are_stored_at_version_2_and_only_those() {
        let f = fixture(1000, None);
        let mut own = protocol::samples::return_();
        if let Some(o) = &mut own.original {
            o.store_id = Some("store-test".into());
        }
        let mut own_void = protocol::samples::void();
        own_void.voided.store_id = Some("store-test".into());
        let mut other_void = protocol::samples::void();
        other_void.sequence_number += 1;
        other_void.voided.store_id = Some("store-0017".into());
        fn json(v: &impl serde::Serialize) -> Vec<u8> {
            serde_json::to_vec(v).expect("json")
        }
        let posts: [(&str, Vec<u8>, StatusCode); 6] = [
            (
                "/v1/sales",
                json(&protocol::samples::sale_with_cash_rounding()),
                StatusCode::CREATED,
            ),
            (
                "/v1/sales",
                json(&protocol::samples::fully_discounted_sale()),
                StatusCode::CREATED,
            ),
            (
                "/v1/returns",
                json(&protocol::samples::return_of_another_stores_sale()),
                StatusCode::CREATED,
            ),
            ("/v1/returns", json(&own), StatusCode::CREATED),
            ("/v1/voids", json(&own_void), StatusCode::CREATED),
            (
                "/v1/voids",
                json(&other_void),
                StatusCode::UNPROCESSABLE_ENTITY,
            ),
        ];
        let mut last = serde_json::Value::Null;
        for (route, body, expected) in posts {
            let (status, _, p) = call(&f.app, "POST", route, body, None).await;
            assert_eq!(status, expected, "{route}: {p}");
            last = p;
        }
        let p = last;
        assert_eq!(p["errors"][0]["field"], "voided.store_id", "{p}");
        assert_eq!(p["errors"][0]["code"], "not_allowed", "{p}");

        let stored: Vec<serde_json::Value> = f
            ._outbox
            .handle()
            .read_after(0, usize::MAX, usize::MAX)
            .await
            .expect("read")
            .iter()
            .map(|e| serde_json::from_slice(&e.payload).expect("json"))
            .collect();
        let versions: Vec<u64> = stored
            .iter()
            .map(|e| e["schema_version"].as_u64().unwrap_or(0))
            .collect();
        assert_eq!(versions, [2, 2, 2, 1, 1]);
        assert_eq!(stored[0]["body"]["totals"]["rounding"], -2);
        assert_eq!(stored[1]["body"]["tenders"], serde_json::json!([]));
        assert_eq!(stored[2]["body"]["original"]["store_id"], "store-0017");
        assert!(stored[3]["body"]["original"].get("store_id").is_none());
        assert!(stored[4]["body"]["voided"].get("store_id").is_none());
    }

    #[tokio::test]
    async fn returns_and_voids_are_accepted_on_their_own_routes() {
        let f = fixture(1000, None);
        let ret = serde_json::to_vec(&protocol::samples::return_()).expect("json");
        let (status, _, p) = call(&f.app, "POST", "/v1/returns", ret, None).await;
        assert_eq!(status, StatusCode::CREATED, "{p}");
        let void = serde_json::to_vec(&protocol::samples::void()).expect("json");
        let (status, _, p) = call(&f.app, "POST", "/v1/voids", void, None).await;
        assert_eq!(status, StatusCode::CREATED, "{p}");
        // A sale body on the voids route is not a void.
        let (status, _, p) = call(&f.app, "POST", "/v1/voids", sale(9), None).await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{p}");
        // Nor is a return (a sale's fields and more) a sale: booked as one,
        // the refund would count as revenue.
        let mut other = protocol::samples::return_();
        other.transaction.sequence_number += 100;
        let ret = serde_json::to_vec(&other).expect("json");
        let (status, _, p) = call(&f.app, "POST", "/v1/sales", ret.clone(), None).await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{p}");
        assert_eq!(p["code"], "wrong_route", "{p}");
        assert_eq!(p["errors"][0]["field"], "reason_code", "{p}");
        assert_eq!(f.state.outbox_stats.pending_transactions(), 2);
        // …and its own route still takes it.
        let (status, _, p) = call(&f.app, "POST", "/v1/returns", ret, None).await;
        assert_eq!(status, StatusCode::CREATED, "{p}");
        // A sale that merely mentions the word is a sale.
        let mut mentions = protocol::samples::sale_numbered("pos-01", 77);
        mentions.lines[0].description = Some("reason_code".into());
        let body = serde_json::to_vec(&mentions).expect("json");
        let (status, _, p) = call(&f.app, "POST", "/v1/sales", body, None).await;
        assert_eq!(status, StatusCode::CREATED, "{p}");
        assert_eq!(f.state.outbox_stats.pending_transactions(), 4);
    }

    #[tokio::test]
    async fn bad_input_gets_a_problem_naming_the_field() {
        let f = fixture(1000, None);
        let (status, headers, p) =
            call(&f.app, "POST", "/v1/sales", b"{not json".to_vec(), None).await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
        assert_eq!(
            headers.get("content-type").and_then(|v| v.to_str().ok()),
            Some("application/problem+json")
        );
        assert_eq!(p["code"], "malformed_json");

        // A whole sale followed by more: refused, not stored as its first part.
        let one = serde_json::to_vec(&protocol::samples::sale_numbered("pos-01", 5)).expect("json");
        let two = serde_json::to_vec(&protocol::samples::sale_numbered("pos-01", 6)).expect("json");
        for (what, body) in [
            ("trailing bytes", [one.as_slice(), b"x"].concat()),
            (
                "two sales back to back",
                [one.as_slice(), two.as_slice()].concat(),
            ),
        ] {
            let (status, _, p) = call(&f.app, "POST", "/v1/sales", body, None).await;
            assert_eq!(status, StatusCode::BAD_REQUEST, "{what}: {p}");
            assert_eq!(p["code"], "malformed_json", "{what}: {p}");
            assert!(
                p["detail"].as_str().is_some_and(|d| d.contains("trailing")),
                "{what}: {p}"
            );
        }

        let mut v =
            serde_json::to_value(protocol::samples::sale_numbered("pos-01", 2)).expect("json");
        v["lines"][0]["quantity"] = serde_json::json!({"units": -3});
        let (status, _, p) = post_sale_json(&f.app, &v).await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
        assert_eq!(p["errors"][0]["field"], "lines[0].quantity.units", "{p}");

        let mut s = protocol::samples::sale_numbered("pos-01", 3);
        s.lines[1].extended_amount = 1;
        let (status, _, p) = post_sale_json(&f.app, &s).await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
        assert_eq!(p["code"], "validation_failed");
        assert!(
            p["errors"]
                .as_array()
                .expect("errors")
                .iter()
                .any(|e| e["field"] == "lines[1].extended_amount"),
            "{p}"
        );

        let s = protocol::samples::sale_numbered("pos-99", 4);
        let (status, _, p) = post_sale_json(&f.app, &s).await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
        assert_eq!(p["code"], "unknown_terminal");
        assert_eq!(f.state.outbox_stats.rows(), 0, "nothing invalid was stored");
    }

    #[tokio::test]
    async fn a_transaction_in_another_currency_than_the_stores_is_refused() {
        // The fixture's store books in EUR.
        let f = fixture(1000, None);
        let mut sale = protocol::samples::sale_jpy();
        sale.terminal_id = "pos-01".into();
        assert_eq!(sale.validate(), Ok(()), "a valid sale, only in yen");
        let (status, _, p) = post_sale_json(&f.app, &sale).await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{p}");
        assert_eq!(p["code"], "validation_failed");
        assert_eq!(p["errors"][0]["field"], "currency", "{p}");
        assert_eq!(p["errors"][0]["code"], "currency_mismatch", "{p}");

        let mut ret = protocol::samples::return_();
        ret.transaction.currency = protocol::Currency::USD;
        let (status, _, p) = call(
            &f.app,
            "POST",
            "/v1/returns",
            serde_json::to_vec(&ret).expect("json"),
            None,
        )
        .await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{p}");
        assert!(
            p["errors"]
                .as_array()
                .expect("errors")
                .iter()
                .any(|e| e["code"] == "currency_mismatch"),
            "{p}"
        );
        assert_eq!(f.state.outbox_stats.rows(), 0, "nothing was stored");
    }

    #[tokio::test]
    async fn an_oversized_body_gets_a_413_problem_and_stores_nothing() {
        let f = fixture(1000, None);
        let mut v =
            serde_json::to_value(protocol::samples::sale_numbered("pos-01", 7)).expect("json");
        v["lines"][0]["description"] = "x".repeat(BODY_LIMIT).into();
        let (status, headers, p) = post_sale_json(&f.app, &v).await;
        assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
        assert_eq!(
            headers.get("content-type").and_then(|v| v.to_str().ok()),
            Some("application/problem+json")
        );
        assert_eq!(p["code"], "body_too_large", "{p}");
        assert_eq!(f.state.outbox_stats.rows(), 0);
    }

    /// A body under the HTTP limit can still make an event over the
    /// contract's (the envelope wraps the body): refused before it is
    /// stored, since stored it could not be dead-lettered whole.
    #[tokio::test]
    async fn a_body_whose_event_would_exceed_the_contract_gets_a_413_and_stores_nothing() {
        let f = fixture(1000, None);
        let mut v =
            serde_json::to_value(protocol::samples::sale_numbered("pos-01", 8)).expect("json");
        v["lines"][0]["description"] = "x".repeat(protocol::batch::MAX_EVENT_BYTES).into();
        let body = serde_json::to_vec(&v).expect("json");
        assert!(
            body.len() < BODY_LIMIT,
            "the body itself is within the limit"
        );
        let (status, _, p) = call(&f.app, "POST", "/v1/sales", body, None).await;
        assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
        assert_eq!(p["code"], "event_too_large", "{p}");
        assert_eq!(f.state.outbox_stats.rows(), 0);

        // The same sale with a shorter description is stored.
        v["lines"][0]["description"] = "x".repeat(protocol::batch::MAX_EVENT_BYTES - 4096).into();
        let (status, _, p) = post_sale_json(&f.app, &v).await;
        assert_eq!(status, StatusCode::CREATED, "{p}");
        assert_eq!(f.state.outbox_stats.rows(), 1);
    }

    #[tokio::test]
    async fn a_wrong_path_or_method_gets_a_problem_code() {
        let f = fixture(1000, None);
        let (status, _, p) = call(&f.app, "POST", "/v1/sale", sale(1), None).await;
        assert_eq!(status, StatusCode::NOT_FOUND);
        assert_eq!(p["code"], "unknown_route", "{p}");
        let (status, _, p) = call(&f.app, "GET", "/v1/sales", vec![], None).await;
        assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED);
        assert_eq!(p["code"], "method_not_allowed", "{p}");
    }

    #[tokio::test]
    async fn a_reused_sequence_number_with_another_body_is_a_conflict() {
        let f = fixture(1000, None);
        call(&f.app, "POST", "/v1/sales", sale(5), None).await;
        let mut other = protocol::samples::sale_numbered("pos-01", 5);
        other.operator_id = "op-9".into();
        let (status, _, p) = post_sale_json(&f.app, &other).await;
        assert_eq!(status, StatusCode::CONFLICT);
        assert_eq!(p["code"], "idempotency_conflict");
    }

    #[tokio::test]
    async fn terminals_must_present_their_own_token_when_tokens_are_configured() {
        let f = fixture(
            1000,
            Some(&[("pos-01", "s3cret-1"), ("pos-02", "s3cret-2")]),
        );
        let (status, _, p) = call(&f.app, "POST", "/v1/sales", sale(1), None).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED);
        assert_eq!(p["code"], "unauthorized");
        let (status, _, _) = call(
            &f.app,
            "POST",
            "/v1/sales",
            sale(1),
            Some("Bearer s3cret-2"),
        )
        .await;
        assert_eq!(
            status,
            StatusCode::UNAUTHORIZED,
            "another terminal's token is refused"
        );
        let (status, _, _) = call(
            &f.app,
            "POST",
            "/v1/sales",
            sale(1),
            Some("Bearer s3cret-1"),
        )
        .await;
        assert_eq!(status, StatusCode::CREATED);
        // The scheme is case-insensitive; the token is not.
        for ((header, want), n) in [
            ("bearer s3cret-1", StatusCode::CREATED),
            ("BEARER s3cret-1", StatusCode::CREATED),
            ("Bearer S3CRET-1", StatusCode::UNAUTHORIZED),
            ("Basic s3cret-1", StatusCode::UNAUTHORIZED),
            ("Bearers3cret-1", StatusCode::UNAUTHORIZED),
        ]
        .into_iter()
        .zip(2..)
        {
            let (status, _, _) = call(&f.app, "POST", "/v1/sales", sale(n), Some(header)).await;
            assert_eq!(status, want, "{header}");
        }
    }

    #[tokio::test]
    async fn a_full_outbox_answers_503_with_retry_after_and_the_gate_says_unsafe() {
        let f = fixture(3, None);
        let (status, _, _) = call(
            &f.app,
            "GET",
            "/v1/maintenance/safe-to-restart",
            vec![],
            None,
        )
        .await;
        assert_eq!(status, StatusCode::OK);
        for seq in 1..=3 {
            let (status, _, p) = call(&f.app, "POST", "/v1/sales", sale(seq), None).await;
            assert_eq!(status, StatusCode::CREATED, "{p}");
        }
        let (status, headers, p) = call(&f.app, "POST", "/v1/sales", sale(4), None).await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(p["code"], "outbox_full");
        assert!(headers.get("retry-after").is_some());
        let (status, _, gate) = call(
            &f.app,
            "GET",
            "/v1/maintenance/safe-to-restart",
            vec![],
            None,
        )
        .await;
        assert_eq!(status, StatusCode::CONFLICT);
        assert_eq!(gate["pending_transactions"], 3);
    }

    /// Every node of a JSON value, as JSON pointers.
    fn pointers(v: &serde_json::Value, at: String, out: &mut Vec<String>) {
        match v {
            serde_json::Value::Object(o) => {
                for (k, child) in o {
                    pointers(child, format!("{at}/{k}"), out);
                }
            }
            serde_json::Value::Array(a) => {
                for (i, child) in a.iter().enumerate() {
                    pointers(child, format!("{at}/{i}"), out);
                }
            }
            _ => {}
        }
        out.push(at);
    }

    /// Replaces (or with `None`, removes) the node at `pointer`.
    fn edit(v: &mut serde_json::Value, pointer: &str, new: Option<serde_json::Value>) {
        match new {
            Some(new) => {
                if let Some(node) = v.pointer_mut(pointer) {
                    *node = new;
                }
            }
            None => {
                let Some((parent, last)) = pointer.rsplit_once('/') else {
                    return;
                };
                match v.pointer_mut(parent) {
                    Some(serde_json::Value::Object(o)) => {
                        o.remove(last);
                    }
                    Some(serde_json::Value::Array(a)) => {
                        if let Ok(i) = last.parse::<usize>() {
                            if i < a.len() {
                                a.remove(i);
                            }
                        }
                    }
                    _ => {}
                }
            }
        }
    }

    /// What a buggy or hostile terminal might put in a field: floats where
    /// money goes, negatives, huge numbers, wrong types, odd strings.
    fn replacement() -> impl proptest::strategy::Strategy<Value = Option<serde_json::Value>> {
        use proptest::prelude::*;
        use serde_json::json;
        prop_oneof![
            Just(None),
            Just(Some(json!(null))),
            any::<bool>().prop_map(|b| Some(json!(b))),
            any::<i64>().prop_map(|n| Some(json!(n))),
            (-5i64..1000).prop_map(|n| Some(json!(n))),
            (-1.0e6f64..1.0e6).prop_map(|x| Some(json!(x))),
            "[ -~]{0,16}".prop_map(|s| Some(json!(s))),
            "(EUR|USD|JPY|eur|XXX|EU|EURO)".prop_map(|s| Some(json!(s))),
            Just(Some(json!([]))),
            Just(Some(json!({}))),
        ]
    }

    /// Sales, returns and voids with random fields replaced or removed:
    /// every answer is either an acceptance that stored the record once, or
    /// a 4xx problem with a machine-readable code that stored nothing; never
    /// a 5xx. Whatever was accepted decodes as a typed envelope, so the
    /// bridge will not dead-letter what the store was told is safe.
    #[test]
    fn mutated_sales_returns_and_voids_are_stored_once_or_refused_with_a_problem_code() {
        let sale = serde_json::to_value(protocol::samples::sale_numbered("pos-01", 1));
        let ret = serde_json::to_value(protocol::samples::return_());
        let void = serde_json::to_value(protocol::samples::void());
        for (uri, base, cases) in [
            ("/v1/sales", sale, 2000),
            ("/v1/returns", ret, 2000),
            ("/v1/voids", void, 2000),
        ] {
            mutants_are_stored_once_or_refused(uri, base.expect("json"), cases);
        }
    }

    fn mutants_are_stored_once_or_refused(uri: &str, base: serde_json::Value, cases: u32) {
        use proptest::test_runner::{Config, TestCaseError, TestRunner};
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        let f = rt.block_on(async { fixture(1_000_000, None) });
        let mut paths = Vec::new();
        pointers(&base, String::new(), &mut paths);
        let (created, refused) = (std::cell::Cell::new(0u64), std::cell::Cell::new(0u64));
        let mut runner = TestRunner::new(Config {
            cases,
            failure_persistence: None,
            ..Config::default()
        });
        let edits = proptest::collection::vec(
            (proptest::sample::select(paths.clone()), replacement()),
            1..3,
        );
        let result = runner.run(&(0u64..200, edits), |(seq, edits)| {
            let mut body = base.clone();
            body["sequence_number"] = seq.into();
            for (pointer, new) in edits {
                edit(&mut body, &pointer, new);
            }
            let before = f.state.outbox_stats.rows();
            let (status, headers, p) = rt.block_on(call(
                &f.app,
                "POST",
                uri,
                serde_json::to_vec(&body).expect("json"),
                None,
            ));
            let stored = f.state.outbox_stats.rows() - before;
            let context = || format!("{uri}: {status} {p} for {body}");
            proptest::prop_assert!(!status.is_server_error(), "{}", context());
            if status == StatusCode::CREATED {
                proptest::prop_assert_eq!(stored, 1, "{}", context());
                created.set(created.get() + 1);
            } else {
                proptest::prop_assert_eq!(stored, 0, "{}", context());
            }
            if status.is_client_error() {
                refused.set(refused.get() + 1);
                let is_problem = headers.get("content-type").and_then(|v| v.to_str().ok())
                    == Some("application/problem+json");
                proptest::prop_assert!(is_problem, "{}", context());
                let has_code = p["code"].as_str().is_some_and(|c| !c.is_empty());
                proptest::prop_assert!(has_code, "{}", context());
            }
            Ok::<(), TestCaseError>(())
        });
        if let Err(e) = result {
            panic!("{e}");
        }
        // Not vacuous: some mutants were still sound sales (a new
        // description, an optional field removed), most were not.
        assert!(
            created.get() > 10 && refused.get() > 100,
            "{uri}: created {}, refused {}",
            created.get(),
            refused.get()
        );
        let stored = rt
            .block_on(f._outbox.handle().read_after(0, usize::MAX, usize::MAX))
            .expect("read");
        assert_eq!(stored.len() as u64, created.get());
        for ev in stored {
            assert!(ev.checksum_ok());
            if let Err(e) = protocol::Envelope::from_json(&ev.payload) {
                panic!(
                    "the agent stored an event that does not decode ({e}): {}",
                    String::from_utf8_lossy(&ev.payload)
                );
            }
        }
    }

    #[tokio::test]
    async fn while_shutting_down_sales_are_refused_and_readiness_fails() {
        let f = fixture(1000, None);
        f.state.shutting_down.store(true, Ordering::Relaxed);
        let (status, headers, p) = call(&f.app, "POST", "/v1/sales", sale(1), None).await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(p["code"], "shutting_down");
        assert!(headers.get("retry-after").is_some());
        let (status, _, _) = call(&f.app, "GET", "/readyz", vec![], None).await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    }
}
