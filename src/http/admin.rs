//! The admin listener of `serve --admin-addr` (off unless set): the control
//! plane and the metrics of a container deployment, on an address of its own.
//!
//! It is never to be exposed to tenants: it has no authentication, and
//! anyone who reaches it can load and unload any model and read every
//! model's and team's metrics. Bind it to loopback or to a network only
//! operators and the metrics scraper reach (README "Admin listener").
//! The front door's routes (src/http/mod.rs) never lead here, and on Lambda
//! there is no admin listener at all.
//!
//! | method and path | what |
//! |---|---|
//! | `POST /v2/repository/index` | Triton's model repository index: `[{name, version, state, reason}]`; body `{"ready": true}` lists only the loaded ones |
//! | `POST /v2/repository/models/{name}/load` | loads the version `latest` resolves to |
//! | `POST /v2/repository/models/{name}/unload` | evicts every cached version |
//! | `POST /admin/warm`, `POST /admin/evict` | body `{"models": ["name/version", ...]}`: the Lambda admin events' answers |
//! | `GET /admin/status` | the `status` admin event's answer |
//! | `GET /metrics` | Prometheus text exposition |
//!
//! Every action goes through [`crate::admin`], the one implementation behind
//! the Lambda admin events too.

use std::future::Future;

use axum::body::Body;
use axum::extract::{Path, State};
use axum::response::Response;
use axum::routing::{get, post};
use bytes::Bytes;
use http::{StatusCode, header};
use serde_json::{Value, json};
use tokio::net::TcpListener;

use crate::admin;
use crate::error::{Error, RequestError};
use crate::http::{error_response, json_response};
use crate::metrics::Metrics;
use crate::service::ModelService;

#[derive(Clone)]
struct AdminState {
    service: ModelService,
    metrics: Metrics,
}

/// Serves the admin routes on `listener` until `shutdown` resolves.
/// `metrics` is the handle requests record into (its Prometheus families are
/// what `GET /metrics` shows).
pub async fn serve_admin(
    listener: TcpListener,
    service: ModelService,
    metrics: Metrics,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let app = axum::Router::new()
        .route("/v2/repository/index", post(index))
        .route("/v2/repository/models/{name}/load", post(load))
        .route("/v2/repository/models/{name}/unload", post(unload))
        .route("/admin/warm", post(warm))
        .route("/admin/evict", post(evict))
        .route("/admin/status", get(status))
        .route("/metrics", get(prometheus))
        .fallback(not_found)
        .method_not_allowed_fallback(wrong_method)
        .with_state(AdminState { service, metrics });
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown)
        .await
}

fn to_axum(response: http::Response<Bytes>) -> Response {
    response.map(Body::from)
}

fn ok(body: &Value) -> Response {
    to_axum(json_response(StatusCode::OK, body))
}

fn failed(error: &Error) -> Response {
    to_axum(error_response(error))
}

/// The body as JSON; an empty body is `{}` (Triton's clients send none).
fn body_json(body: &Bytes) -> Result<Value, Error> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(json!({}));
    }
    serde_json::from_slice(body).map_err(|e| RequestError::InvalidJson(e.to_string()).into())
}

async fn index(State(state): State<AdminState>, body: Bytes) -> Response {
    let ready_only = match body_json(&body) {
        Ok(body) => body.get("ready").and_then(Value::as_bool).unwrap_or(false),
        Err(e) => return failed(&e),
    };
    match admin::repository_index(&state.service, ready_only).await {
        Ok(index) => ok(&Value::Array(index)),
        Err(e) => failed(&e),
    }
}

async fn load(State(state): State<AdminState>, Path(name): Path<String>) -> Response {
    match admin::load(&state.service, &state.metrics, &name).await {
        Ok(model) => ok(&json!({ "loaded": model })),
        Err(e) => failed(&e),
    }
}

async fn unload(State(state): State<AdminState>, Path(name): Path<String>) -> Response {
    match admin::unload(&state.service, &state.metrics, &name) {
        Ok(evicted) => ok(&json!({ "evicted": evicted })),
        Err(e) => failed(&e),
    }
}

async fn warm(state: State<AdminState>, body: Bytes) -> Response {
    action(state, "warm", body).await
}

async fn evict(state: State<AdminState>, body: Bytes) -> Response {
    action(state, "evict", body).await
}

async fn status(state: State<AdminState>) -> Response {
    action(state, "status", Bytes::new()).await
}

/// `body` (`{"models": [...]}`, or nothing) as the admin event `action`,
/// answered as Lambda answers it; a malformed event is 400.
async fn action(State(state): State<AdminState>, name: &str, body: Bytes) -> Response {
    let mut event = match body_json(&body) {
        Ok(event) => event,
        Err(e) => return failed(&e),
    };
    let Some(fields) = event.as_object_mut() else {
        return failed(&RequestError::InvalidJson("expected a JSON object".into()).into());
    };
    fields.insert("action".into(), json!(name));
    let answer = admin::handle(&state.service, &state.metrics, &event).await;
    let status = if answer.get("code").is_some() {
        StatusCode::BAD_REQUEST
    } else {
        StatusCode::OK
    };
    to_axum(json_response(status, &answer))
}

async fn prometheus(State(state): State<AdminState>) -> Response {
    let Some(text) = state.metrics.prometheus_text(&state.service) else {
        let error = RequestError::RouteNotFound {
            method: "GET".into(),
            path: "/metrics (this process records no Prometheus metrics)".into(),
        };
        return failed(&error.into());
    };
    let mut response = Response::new(Body::from(text));
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static(
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        ),
    );
    response
}

/// Every admin route takes one method: POST for actions, GET for reads.
async fn wrong_method(request: axum::extract::Request) -> Response {
    let path = request.uri().path().to_string();
    let allowed = if path == "/metrics" || path == "/admin/status" {
        "GET"
    } else {
        "POST"
    };
    let error = RequestError::MethodNotAllowed {
        method: request.method().to_string(),
        path,
        allowed,
    };
    failed(&error.into())
}

async fn not_found(request: axum::extract::Request) -> Response {
    let error = RequestError::RouteNotFound {
        method: request.method().to_string(),
        path: request.uri().path().to_string(),
    };
    failed(&error.into())
}
