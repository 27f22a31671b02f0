//! The Lambda front door: API Gateway REST (v1) and HTTP API (v2), Function
//! URLs and ALB events go through [`crate::http::handle`] and are answered in
//! their own response shape; anything else (a direct invoke, an EventBridge
//! event) is an admin event. `model-router invoke` sends one event through this
//! same path without AWS.
//!
//! lambda_http decides which is which: it tries the event as REST v1, then
//! HTTP API v2 (Function URLs send v2), then ALB, and only an event that is
//! none of them becomes a pass-through request (`POST /events` with
//! [`RequestContext::PassThrough`]). Admin actions are reached on that context
//! alone, never on a path, so an HTTP request to `/events` is just a 404.

use std::convert::Infallible;
use std::future::Future;
use std::io::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use bytes::Bytes;
use lambda_http::request::{LambdaRequest, RequestContext};
use lambda_http::tower::Service;
use lambda_http::{Adapter, Body, Context, LambdaEvent, RequestExt, service_fn};
use serde_json::{Value, json};

use crate::error::{Error, RequestError};
use crate::http::{RequestId, error_response, handle, json_response};
use crate::metrics::Metrics;
use crate::service::ModelService;

/// The function's shared state: built once at init, reused by every
/// invocation (cloning it is cheap: both halves are handles).
#[derive(Clone)]
pub struct Handler {
    service: ModelService,
    metrics: Metrics,
}

impl Handler {
    pub fn new(service: ModelService, metrics: Metrics) -> Handler {
        Handler { service, metrics }
    }

    /// A handler with the metrics the service's configuration asks for.
    pub fn from_config(service: ModelService) -> Handler {
        let metrics = Metrics::from_config(service.config());
        Handler::new(service, metrics)
    }

    pub fn service(&self) -> &ModelService {
        &self.service
    }

    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// Warms `PRELOAD_MODELS` (during init: before the first event). A model
    /// that fails is logged and reported by `status`; the function still starts.
    pub async fn preload(&self) {
        crate::admin::preload(&self.service, &self.metrics).await;
    }

    /// Sends one event (JSON text of any supported event source, or an admin
    /// event) through the handler and returns the Lambda-shaped response,
    /// exactly as the runtime would send it back. The event gets a request id
    /// `invoke-<n>`, as Lambda would give it one.
    pub async fn invoke(&self, event: &str) -> Result<Value, serde_json::Error> {
        static INVOCATIONS: AtomicU64 = AtomicU64::new(1);
        let mut request: LambdaRequest = serde_json::from_str(event)?;
        mark_undecodable_body(&mut request);
        let handler = self.clone();
        let mut adapter = Adapter::from(service_fn(move |request| {
            handle_event(handler.clone(), request)
        }));
        let mut context = Context::default();
        context.request_id = format!("invoke-{}", INVOCATIONS.fetch_add(1, Ordering::Relaxed));
        let response = match adapter.call(LambdaEvent::new(request, context)).await {
            Ok(response) => response,
            Err(never) => match never {},
        };
        serde_json::to_value(&response)
    }

    /// Writes the last gauges and flushes stdout and stderr: at shutdown,
    /// within Lambda's shutdown budget (this takes microseconds; every line
    /// is already written whole as it is made, this only makes sure).
    pub fn flush(&self) {
        self.metrics
            .record_gauges((&self.service.cache_status()).into());
        self.metrics.flush();
        let _ = std::io::stdout().lock().flush();
        let _ = std::io::stderr().lock().flush();
    }
}

/// Handles one Lambda event already parsed by lambda_http.
pub async fn handle_event(
    handler: Handler,
    request: lambda_http::Request,
) -> Result<http::Response<Body>, Infallible> {
    let (mut parts, body) = request.into_parts();
    let body: Bytes = match body {
        Body::Empty => Bytes::new(),
        Body::Text(text) => Bytes::from(text),
        Body::Binary(bytes) => Bytes::from(bytes),
        _ => Bytes::new(),
    };
    let request_id = parts
        .extensions
        .get::<Context>()
        .map(|c| c.request_id.clone())
        .unwrap_or_default();
    // Only lambda_http's pass-through context, set for events that match no
    // HTTP event shape, reaches the admin actions. No path, header or body of
    // an HTTP event can produce it.
    if matches!(
        parts.extensions.get::<RequestContext>(),
        Some(RequestContext::PassThrough)
    ) {
        let answer = admin_event(&handler, &request_id, &body).await;
        return Ok(to_lambda(json_response(http::StatusCode::OK, &answer)));
    }
    if parts.headers.contains_key(UNDECODABLE_BODY) {
        let error = Error::Request(RequestError::InvalidInput(
            "the event says isBase64Encoded is true, but its body is not valid base64 (RFC 4648, with padding)".into(),
        ));
        tracing::info!(request_id, status = 400, code = error.code(), "request");
        return Ok(to_lambda(error_response(&error)));
    }
    let limit = handler.service.config().max_request_bytes;
    if body.len() > limit {
        let error = Error::Request(RequestError::PayloadTooLarge {
            size: body.len(),
            limit,
        });
        tracing::info!(request_id, status = 413, code = error.code(), "request");
        return Ok(to_lambda(error_response(&error)));
    }
    use_event_path(&mut parts);
    parts.extensions.insert(RequestId(request_id));
    parts.extensions.insert(handler.metrics.clone());
    let response = handle(&handler.service, http::Request::from_parts(parts, body)).await;
    Ok(to_lambda(response))
}

/// One admin event: the answer, and one log line saying what was asked and
/// what came of it.
async fn admin_event(handler: &Handler, request_id: &str, body: &[u8]) -> Value {
    let started = Instant::now();
    let event = serde_json::from_slice::<Value>(body);
    let answer = match &event {
        Ok(event) => crate::admin::handle(&handler.service, &handler.metrics, event).await,
        Err(e) => json!({"error": format!("the event is not JSON: {e}"), "code": "invalid_json"}),
    };
    let action = event.as_ref().ok().and_then(|event| {
        event
            .get("action")
            .or_else(|| event.get("detail").and_then(|d| d.get("action")))
            .and_then(Value::as_str)
    });
    let count = |field: &str| answer.get(field).and_then(Value::as_array).map(Vec::len);
    let code = answer.get("code").and_then(Value::as_str);
    tracing::info!(
        request_id,
        action,
        warmed = count("warmed"),
        evicted = count("evicted"),
        failed = count("failed"),
        code,
        total_ms = started.elapsed().as_secs_f64() * 1e3,
        "admin event"
    );
    answer
}

/// The header [`mark_undecodable_body`] sets on an HTTP event whose body is
/// marked base64 but is not; any the caller sent is removed first, so only the
/// front door can set it (and all it can cause is that 400).
const UNDECODABLE_BODY: &str = "x-model-router-undecodable-body";

/// lambda_http decodes a body marked `isBase64Encoded` with an `expect`: a
/// body that is not base64 would panic inside the event conversion (exit 101
/// from `invoke`; a failed invocation on Lambda) instead of answering 400.
/// Such a body is dropped here, before the conversion, and the event marked,
/// so that [`handle_event`] answers 400 in the event's own response shape.
fn mark_undecodable_body(request: &mut LambdaRequest) {
    use base64::Engine as _;
    let (headers, body, encoded) = match request {
        LambdaRequest::ApiGatewayV1(r) => {
            r.multi_value_headers.remove(UNDECODABLE_BODY);
            (&mut r.headers, &mut r.body, &mut r.is_base64_encoded)
        }
        LambdaRequest::ApiGatewayV2(r) => (&mut r.headers, &mut r.body, &mut r.is_base64_encoded),
        LambdaRequest::Alb(r) => {
            r.multi_value_headers.remove(UNDECODABLE_BODY);
            (&mut r.headers, &mut r.body, &mut r.is_base64_encoded)
        }
        // Pass-through events carry no HTTP body; the enum is non-exhaustive.
        _ => return,
    };
    headers.remove(UNDECODABLE_BODY);
    let undecodable = *encoded
        && body.as_deref().is_some_and(|text| {
            base64::engine::general_purpose::STANDARD
                .decode(text)
                .is_err()
        });
    if undecodable {
        *body = None;
        *encoded = false;
        headers.insert(UNDECODABLE_BODY, http::HeaderValue::from_static("1"));
    }
}

/// Routes see the path the caller sent, as the local server does. lambda_http
/// builds its URI from a REST API (v1) path prefixed with the stage
/// (`/prod/models/...`) and normalised; the event's own path has neither. An
/// HTTP API (v2) named stage is part of the event's `rawPath` itself, and is
/// removed here. The query string is kept.
fn use_event_path(parts: &mut http::request::Parts) {
    let raw = parts.extensions.raw_http_path();
    if raw.is_empty() {
        return;
    }
    let path = match parts.extensions.get::<RequestContext>() {
        Some(RequestContext::ApiGatewayV2(context)) => match context.stage.as_deref() {
            Some(stage) if stage != "$default" => raw
                .strip_prefix('/')
                .and_then(|rest| rest.strip_prefix(stage))
                .filter(|rest| rest.starts_with('/'))
                .unwrap_or(raw),
            _ => raw,
        },
        _ => raw,
    };
    let uri = match parts.uri.query() {
        Some(query) => format!("{path}?{query}"),
        None => path.to_string(),
    };
    // A path that is not a valid URI keeps lambda_http's (normalised) one.
    if let Ok(uri) = uri.parse() {
        parts.uri = uri;
    }
}

fn to_lambda(response: http::Response<Bytes>) -> http::Response<Body> {
    response.map(|bytes| match String::from_utf8(bytes.to_vec()) {
        Ok(text) => Body::Text(text),
        Err(e) => Body::Binary(e.into_bytes()),
    })
}

/// Sends one event through a handler with the metrics `service`'s
/// configuration asks for; see [`Handler::invoke`].
pub async fn invoke(service: &ModelService, event: &str) -> Result<Value, serde_json::Error> {
    Handler::from_config(service.clone()).invoke(event).await
}

/// Checks the variables Lambda sets for every runtime. lambda_runtime panics
/// when one is missing; outside Lambda (started by hand, or a broken emulator)
/// this says which one instead.
pub fn check_lambda_environment() -> Result<(), String> {
    for name in [
        "AWS_LAMBDA_RUNTIME_API",
        "AWS_LAMBDA_FUNCTION_NAME",
        "AWS_LAMBDA_FUNCTION_VERSION",
        "AWS_LAMBDA_FUNCTION_MEMORY_SIZE",
    ] {
        let value = std::env::var(name).unwrap_or_default();
        let usable = match name {
            "AWS_LAMBDA_FUNCTION_MEMORY_SIZE" => value.parse::<i32>().is_ok(),
            _ => !value.is_empty(),
        };
        if !usable {
            return Err(format!(
                "{name} is not set: the Lambda runtime sets it (to try events locally, use `model-router invoke` or `cargo lambda watch`)"
            ));
        }
    }
    Ok(())
}

/// Runs the Lambda runtime loop. When `shutdown` completes (SIGTERM: Lambda
/// sends it before ending an instance that has an extension registered),
/// writes the last metrics, flushes, and exits the process.
pub async fn run(
    handler: Handler,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), lambda_http::Error> {
    check_lambda_environment()?;
    // The pid lets an operator (and scripts/lambda-e2e.sh) signal this process.
    tracing::info!(pid = std::process::id(), "lambda runtime loop starting");
    let on_shutdown = handler.clone();
    tokio::spawn(async move {
        shutdown.await;
        on_shutdown.flush();
        // The runtime loop never returns on its own; exiting is how it ends.
        std::process::exit(0);
    });
    // lambda_http::run, with the events' bodies checked before lambda_http
    // converts them (see mark_undecodable_body).
    let mut adapter = Adapter::from(service_fn(move |request| {
        handle_event(handler.clone(), request)
    }));
    lambda_runtime::run(service_fn(move |mut event: LambdaEvent<LambdaRequest>| {
        mark_undecodable_body(&mut event.payload);
        adapter.call(event)
    }))
    .await
}
