//! The HTTP routes (DESIGN section 3), independent of the front door: every
//! front door turns its request into an `http::Request<Bytes>` and calls
//! [`handle`]. Admin actions are not here; no request to the front door can
//! reach them (`serve --admin-addr` serves them on a listener of its own, [`admin`]).

pub mod admin;
pub mod json;
pub mod parse;
mod simple;
pub(crate) mod v2;

use std::time::Instant;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode, header};
use serde_json::{Value, json};

use crate::error::{Error, RequestError};
use crate::metrics::{Metrics, RequestMetrics};
use crate::service::{LoadInfo, ModelService};

/// A request id a front door attaches (Lambda's, or one the server makes up),
/// logged with the request.
#[derive(Debug, Clone)]
pub struct RequestId(pub String);

/// Marks an inference answer (V2 infer, simple predict) as worth compressing
/// when the caller accepts gzip; the front door decides. Other answers are
/// never compressed: they are small, and tritonclient's asyncio client reads
/// its metadata answers without decompressing them, as Triton's are never
/// compressed.
#[derive(Debug, Clone, Copy)]
pub struct Compressible;

/// What one request did, for the one log line and the metrics, and the
/// request memory it holds.
#[derive(Debug, Default)]
pub struct RequestRecord {
    pub model: Option<String>,
    pub version: Option<String>,
    pub load: Option<LoadInfo>,
    pub inference_ms: Option<f64>,
    /// Waiting for a free session of the model (see `Prediction::queue_ms`).
    pub queue_ms: Option<f64>,
    /// The team the model's cache bytes count against, once it is loaded.
    pub team: Option<String>,
    /// The request memory reserved for parsing its body, grown to cover its
    /// input tensors before they are read, and by the prediction to cover
    /// its outputs and response (src/memory.rs).
    pub memory: Option<crate::memory::Reservation>,
}

impl RequestRecord {
    /// Notes the model a route got: how it got it, its concrete version, its team.
    pub fn loaded(&mut self, lease: &crate::cache::Lease<crate::service::Model>, load: LoadInfo) {
        self.load = Some(load);
        self.version = Some(lease.key().version().to_string());
        self.team = lease.value().team.clone();
    }

    /// Notes how long a prediction ran and waited for a session.
    pub fn predicted(&mut self, prediction: &crate::service::Prediction) {
        self.inference_ms = Some(prediction.inference_ms);
        self.queue_ms = Some(prediction.queue_ms);
    }
}

/// Routes one request and answers it. Never panics on input; every error
/// becomes its JSON body and status.
pub async fn handle(service: &ModelService, request: Request<Bytes>) -> Response<Bytes> {
    let started = Instant::now();
    let request_id = request
        .extensions()
        .get::<RequestId>()
        .map(|id| id.0.clone())
        .unwrap_or_default();
    let mut record = RequestRecord::default();
    // Parsing a body takes memory before any model is involved: what its
    // census bounds is reserved first, or the request is refused
    // (src/memory.rs, src/http/parse.rs). Of a V2 binary body, only the JSON
    // header is parsed.
    let json_bytes = request
        .headers()
        .get("inference-header-content-length")
        .and_then(|v| v.to_str().ok()?.trim().parse::<usize>().ok())
        .map_or(request.body().len(), |n| n.min(request.body().len()));
    let census = parse::Census::of(&request.body()[..json_bytes]);
    let result = match service
        .reserve_body(parse::bound_before_model(&census))
        .await
    {
        Ok(parsing) => {
            record.memory = Some(parsing);
            route(service, &request, &mut record).await
        }
        Err(error) => Err(error),
    };
    // The response is built: what the request held is given back.
    record.memory = None;
    let (mut response, code) = match result {
        Ok(response) => (response, None),
        Err(error) => (error_response(&error), Some(error.code())),
    };
    if record.inference_ms.is_some() && response.status() == StatusCode::OK {
        response.extensions_mut().insert(Compressible);
    }
    record_request(
        service,
        &request,
        &request_id,
        &record,
        response.status(),
        code,
        started,
    );
    response
}

/// The one log line and the metrics of a request. Never logs the body: model
/// inputs stay out of the logs.
pub(crate) fn record_request(
    service: &ModelService,
    request: &Request<Bytes>,
    request_id: &str,
    record: &RequestRecord,
    status: StatusCode,
    code: Option<&'static str>,
    started: Instant,
) {
    tracing::info!(
        request_id,
        method = %request.method(),
        path = request.uri().path(),
        model = record.model.as_deref(),
        version = record.version.as_deref(),
        team = record.team.as_deref(),
        cache = record.load.map(|l| l.outcome.as_str()),
        staged_reused = record.load.map(|l| l.staged_reused),
        stage_ms = record.load.map(|l| l.stage_ms),
        load_ms = record.load.map(|l| l.load_ms),
        inference_ms = record.inference_ms,
        queue_ms = record.queue_ms,
        status = status.as_u16(),
        code,
        total_ms = started.elapsed().as_secs_f64() * 1e3,
        "request"
    );
    // The front door's metrics (Lambda attaches its own), else the process's.
    let metrics = request
        .extensions()
        .get::<Metrics>()
        .cloned()
        .unwrap_or_else(Metrics::global);
    metrics.record_request(
        service,
        &RequestMetrics {
            request_id,
            model: record.model.as_deref().zip(record.version.as_deref()),
            team: record.team.as_deref(),
            load: record.load,
            inference_ms: record.inference_ms,
            queue_ms: record.queue_ms,
            status: status.as_u16(),
            code,
        },
    );
}

/// The path split into percent-decoded segments. A segment that is not UTF-8
/// after decoding is an invalid name.
fn segments(path: &str) -> Result<Vec<String>, Error> {
    let trimmed = path.strip_prefix('/').unwrap_or(path);
    let trimmed = trimmed.strip_suffix('/').unwrap_or(trimmed);
    trimmed
        .split('/')
        .map(|segment| {
            percent_decode(segment).ok_or_else(|| {
                Error::Repository(crate::repository::RepositoryError::InvalidName {
                    what: "path segment",
                    value: segment.to_string(),
                    reason: "it is not valid percent-encoded UTF-8",
                })
            })
        })
        .collect()
}

fn percent_decode(segment: &str) -> Option<String> {
    let bytes = segment.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = segment.get(i + 1..i + 3)?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

async fn route(
    service: &ModelService,
    request: &Request<Bytes>,
    record: &mut RequestRecord,
) -> Result<Response<Bytes>, Error> {
    let parts = segments(request.uri().path())?;
    let parts: Vec<&str> = parts.iter().map(String::as_str).collect();
    let method = request.method();
    let body = request.body();
    let only = |allowed: Method, allowed_name: &'static str| -> Result<(), Error> {
        if *method == allowed || (allowed == Method::GET && *method == Method::HEAD) {
            Ok(())
        } else {
            Err(RequestError::MethodNotAllowed {
                method: method.to_string(),
                path: request.uri().path().to_string(),
                allowed: allowed_name,
            }
            .into())
        }
    };
    // Who may use which model is decided here, before any route reads the
    // repository or the cache.
    let caller = service.caller_of(request).await?;
    if let Some((name, version)) = model_of(&parts) {
        record.model = Some(name.to_string());
        record.version = Some(version.to_string());
        service.authorize(&caller, name, version).await?;
    }
    match parts.as_slice() {
        ["models"] => {
            only(Method::GET, "GET")?;
            list_models(service, &caller).await.map(json_ok)
        }
        ["models", name, version, "predict"] => {
            only(Method::POST, "POST")?;
            simple::predict(service, name, version, body, record).await
        }
        ["v2", rest @ ..] => v2::route(service, request, rest, record, &only, &caller).await,
        _ => Err(RequestError::RouteNotFound {
            method: method.to_string(),
            path: request.uri().path().to_string(),
        }
        .into()),
    }
}

/// The model and version a route addresses, if it addresses one.
fn model_of<'a>(parts: &[&'a str]) -> Option<(&'a str, &'a str)> {
    match parts {
        ["models", name, version, "predict"] => Some((name, version)),
        // Triton's statistics of every model, not a model named "stats".
        ["v2", "models", "stats"] => None,
        ["v2", "models", name, "versions", version, ..] => Some((name, version)),
        ["v2", "models", name, ..] => Some((name, "latest")),
        _ => None,
    }
}

/// `GET /models`: the models and versions the caller may use, and which are in memory.
async fn list_models(
    service: &ModelService,
    caller: &crate::identity::Caller,
) -> Result<(StatusCode, Value), Error> {
    let listing = service
        .repository_call("listing the repository".into(), |repository| {
            repository.list().map(|models| {
                models
                    .into_iter()
                    .map(|(name, versions)| {
                        let aliases = crate::repository::ModelName::new(&name)
                            .ok()
                            .and_then(|n| repository.aliases(&n).ok())
                            .unwrap_or_default();
                        (name, versions, aliases)
                    })
                    .collect::<Vec<_>>()
            })
        })
        .await?;
    let mut visible = Vec::with_capacity(listing.len());
    for (name, versions, aliases) in listing {
        let mut allowed = Vec::with_capacity(versions.len());
        for version in versions {
            match service.authorize(caller, &name, &version).await {
                Ok(()) => allowed.push(version),
                Err(Error::Request(RequestError::Forbidden(_))) => {}
                Err(e) => return Err(e),
            }
        }
        if !allowed.is_empty() {
            visible.push((name, allowed, aliases));
        }
    }
    let models: Vec<Value> = visible
        .into_iter()
        .map(|(name, versions, aliases)| {
            let versions: Vec<Value> = versions
                .iter()
                .map(|version| {
                    let cached = crate::repository::ModelKey::new(&name, version).map(|k| service.is_cached(&k)).unwrap_or(false);
                    json!({ "version": version, "cached": cached })
                })
                .collect();
            json!({ "name": name, "versions": versions, "latest": versions.last().map(|v| v["version"].clone()), "aliases": aliases })
        })
        .collect();
    let cache = service.cache_status();
    Ok((
        StatusCode::OK,
        json!({ "models": models, "cache": { "bytes_used": cache.bytes_used, "bytes_budget": cache.bytes_budget, "models_cached": cache.entries.len() } }),
    ))
}

fn json_ok((status, body): (StatusCode, Value)) -> Response<Bytes> {
    json_response(status, &body)
}

/// A JSON response, serialised straight from `body`.
pub fn json_response(
    status: StatusCode,
    body: &(impl serde::Serialize + ?Sized),
) -> Response<Bytes> {
    let bytes = serde_json::to_vec(body).unwrap_or_else(|_| b"{}".to_vec());
    let mut response = Response::new(Bytes::from(bytes));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("application/json"),
    );
    response
}

/// An error's JSON body and status; a 405 says in `Allow` what is allowed.
pub fn error_response(error: &Error) -> Response<Bytes> {
    let mut response = json_response(error.status(), &error.body());
    if let Error::Request(RequestError::MethodNotAllowed { allowed, .. }) = error {
        response.headers_mut().insert(
            header::ALLOW,
            header::HeaderValue::from_static(match *allowed {
                // GET routes answer HEAD too.
                "GET" => "GET, HEAD",
                other => other,
            }),
        );
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_segments_and_rejects_bad_escapes() {
        assert_eq!(
            segments("/models/a%2Eb/1/predict").unwrap(),
            ["models", "a.b", "1", "predict"]
        );
        assert_eq!(segments("/models/%2e%2e/1/predict").unwrap()[1], "..");
        assert_eq!(segments("/models/a%2Fb/1/predict").unwrap()[1], "a/b");
        assert_eq!(
            segments("/v2/health/live/").unwrap(),
            ["v2", "health", "live"]
        );
        assert!(segments("/models/%zz/1/predict").is_err());
        assert!(segments("/models/%ff/1/predict").is_err());
        assert!(segments("/models/%2/1").is_err());
    }
}
