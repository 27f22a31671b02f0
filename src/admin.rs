//! Admin events (DESIGN section 4): warm, evict and status. On Lambda they
//! arrive only as non-HTTP invocations (direct invoke or an EventBridge rule)
//! or through `model-router invoke`; no HTTP route of the front door leads
//! here (the Lambda front door calls [`handle`] only for lambda_http's
//! pass-through events). `serve --admin-addr` has a listener of its own
//! (src/http/admin.rs) that calls these same functions: [`handle`], and
//! Triton's model repository extension ([`repository_index`], [`load`],
//! [`unload`]), which are warm and evict by model name.

use serde::Deserialize;
use serde_json::{Value, json};

use crate::cache::CacheOutcome;
use crate::engine::EngineError;
use crate::error::Error;
use crate::metrics::Metrics;
use crate::repository::{ModelKey, ModelName};
use crate::service::{ModelService, WarmFailure, Warmed};

#[derive(Debug, Deserialize)]
#[serde(tag = "action", rename_all = "lowercase", deny_unknown_fields)]
enum AdminEvent {
    Warm { models: Vec<String> },
    Evict { models: Vec<String> },
    Status {},
}

/// Top-level fields of the HTTP event shapes (API Gateway REST and HTTP API,
/// Function URL, ALB). An event carrying one is an HTTP event lambda_http
/// could not parse, never an admin event: it is refused, so that no HTTP
/// request can become an admin action even through a parser gap.
const HTTP_EVENT_FIELDS: [&str; 5] = [
    "requestContext",
    "httpMethod",
    "rawPath",
    "routeKey",
    "multiValueHeaders",
];

/// Answers one admin event. An EventBridge event carries the admin object in
/// its `detail`. Always answers a JSON object; malformed events get
/// `{"error", "code": "invalid_admin_event"}`.
///
/// A warm of many models reports each one's outcome (`warmed`, and `failed`
/// with each failure's code) and never stops at the first failure; a model
/// loaded and then pushed out by later models of the same warm is reported
/// as `did_not_fit`.
pub async fn handle(service: &ModelService, metrics: &Metrics, event: &Value) -> Value {
    if let Some(field) = HTTP_EVENT_FIELDS
        .iter()
        .find(|field| event.get(**field).is_some())
    {
        return json!({
            "error": format!("this looks like an HTTP event (it has \"{field}\") that could not be parsed as one; HTTP events never reach admin actions"),
            "code": "invalid_admin_event",
        });
    }
    let payload = match event.get("detail") {
        Some(detail) if event.get("action").is_none() => detail,
        _ => event,
    };
    let event: AdminEvent = match serde_json::from_value(payload.clone()) {
        Ok(event) => event,
        Err(e) => {
            return json!({
                "error": format!("not an admin event ({e}); expected {{\"action\": \"warm\"|\"evict\"|\"status\", \"models\": [\"name/version\", ...]}}, or an EventBridge event with that object as its detail"),
                "code": "invalid_admin_event",
            });
        }
    };
    match event {
        AdminEvent::Warm { models } => {
            let (warmed, failed) = warm(service, metrics, &models).await;
            json!({ "warmed": warmed, "failed": failed })
        }
        AdminEvent::Evict { models } => {
            let evicted = evict(service, metrics, &models);
            json!({ "evicted": evicted })
        }
        AdminEvent::Status {} => {
            metrics.record_gauges((&service.cache_status()).into());
            status(service)
        }
    }
}

/// The `warm` action: loads each `name/version`, records what it loaded, and
/// returns the models now cached and the failures (with `did_not_fit`).
async fn warm(
    service: &ModelService,
    metrics: &Metrics,
    models: &[String],
) -> (Vec<String>, Vec<WarmFailure>) {
    let (warmed, failed) = service.warm(models).await;
    let loaded = loaded_bytes(&warmed);
    let names = warmed.into_iter().map(|w| w.model).collect();
    let (warmed, failed) = report_what_did_not_fit(service, names, failed);
    metrics.record_warm(service, &loaded, &failed);
    (warmed, failed)
}

/// The `evict` action: the models that were cached, now evicted.
fn evict(service: &ModelService, metrics: &Metrics, models: &[String]) -> Vec<String> {
    let evicted = service.evict(models);
    metrics.record_gauges((&service.cache_status()).into());
    evicted
}

/// Triton's `POST /v2/repository/index`: every version in the repository,
/// `READY` when it is in memory, else `UNAVAILABLE` (reason `unloaded`);
/// with `ready_only`, the cached ones only.
pub async fn repository_index(
    service: &ModelService,
    ready_only: bool,
) -> Result<Vec<Value>, Error> {
    let repository = service.repository().clone();
    let listing = tokio::task::spawn_blocking(move || repository.list())
        .await
        .map_err(|e| Error::Engine(EngineError::Inference(e.to_string())))??;
    let mut index = Vec::new();
    for (name, versions) in listing {
        for version in versions {
            let ready = ModelKey::new(&name, &version).is_ok_and(|key| service.is_cached(&key));
            if ready {
                index.push(
                    json!({"name": name, "version": version, "state": "READY", "reason": ""}),
                );
            } else if !ready_only {
                index.push(json!({"name": name, "version": version, "state": "UNAVAILABLE", "reason": "unloaded"}));
            }
        }
    }
    Ok(index)
}

/// Triton's `POST /v2/repository/models/{name}/load`: warms the version
/// `latest` resolves to (Triton's default version policy, the latest one).
/// Returns that version; a failure is the load's own error.
pub async fn load(service: &ModelService, metrics: &Metrics, name: &str) -> Result<String, Error> {
    let model_name = ModelName::new(name)?;
    let repository = service.repository().clone();
    let resolved = tokio::task::spawn_blocking(move || repository.resolve(&model_name, "latest"))
        .await
        .map_err(|e| Error::Engine(EngineError::Inference(e.to_string())))??;
    let spec = resolved.key.to_string();
    match service.load_key(&resolved.key).await {
        Ok((_, info)) => {
            let loaded =
                (info.outcome != CacheOutcome::Hit).then(|| (spec.clone(), info.model_bytes));
            metrics.record_warm(service, loaded.as_slice(), &[]);
            Ok(spec)
        }
        Err(error) => {
            let failure = WarmFailure {
                model: spec,
                code: error.code(),
                error: error.to_string(),
            };
            metrics.record_warm(service, &[], &[failure]);
            Err(error)
        }
    }
}

/// Triton's `POST /v2/repository/models/{name}/unload`: evicts every cached
/// version of `name`; returns those it evicted (none is not an error).
pub fn unload(service: &ModelService, metrics: &Metrics, name: &str) -> Result<Vec<String>, Error> {
    ModelName::new(name)?;
    let prefix = format!("{name}/");
    let cached: Vec<String> = service
        .cache_status()
        .entries
        .into_iter()
        .map(|entry| entry.model)
        .filter(|model| model.starts_with(&prefix))
        .collect();
    Ok(evict(service, metrics, &cached))
}

/// Warming more than the budget holds evicts the earliest models again: those
/// move from `warmed` to `failed` as `did_not_fit`.
fn report_what_did_not_fit(
    service: &ModelService,
    warmed: Vec<String>,
    mut failed: Vec<WarmFailure>,
) -> (Vec<String>, Vec<WarmFailure>) {
    let budget = service.config().cache_bytes;
    let (kept, pushed_out): (Vec<String>, Vec<String>) = warmed.into_iter().partition(|spec| {
        ModelKey::parse(spec)
            .map(|key| service.is_cached(&key))
            .unwrap_or(false)
    });
    failed.extend(pushed_out.into_iter().map(|model| WarmFailure {
        model,
        code: "did_not_fit",
        error: format!(
            "loaded, then evicted to make room for later models of this warm; the cache budget is {budget} bytes"
        ),
    }));
    (kept, failed)
}

/// Warms `PRELOAD_MODELS` (during init, before the first event) and records
/// what it loaded and refused; failures are logged and kept for `status`.
pub async fn preload(service: &ModelService, metrics: &Metrics) {
    let warmed = service.preload().await;
    metrics.record_warm(service, &loaded_bytes(&warmed), &service.preload_failures());
}

/// The models a warm loaded itself (not those already cached), with their
/// bytes: what `ModelBytes` counts.
fn loaded_bytes(warmed: &[Warmed]) -> Vec<(String, u64)> {
    warmed
        .iter()
        .filter(|w| w.loaded)
        .map(|w| (w.model.clone(), w.bytes))
        .collect()
}

/// The `memory` object of `status`: how the limit is split (README,
/// "Memory"), what requests hold now, and the process's memory as the
/// allocator and the kernel see it.
pub fn memory_status(service: &ModelService) -> Value {
    let mut memory = serde_json::to_value(service.memory_split()).unwrap_or_default();
    memory["request_buffers_reserved_bytes"] = service.request_memory_reserved().into();
    memory["process"] = serde_json::to_value(crate::engine::process_memory()).unwrap_or_default();
    memory
}

/// The `status` answer: cache entries (with their team), bytes, counters, bytes
/// per team with each share, staging, failed preloads, and the access policy's
/// state (including why the file on disk is not in force, when it is not).
pub fn status(service: &ModelService) -> Value {
    let cache = service.cache_status();
    json!({
        "entries": cache.entries,
        "bytes_used": cache.bytes_used,
        "bytes_budget": cache.bytes_budget,
        "hits": cache.hits,
        "misses": cache.misses,
        "loads": cache.loads,
        "load_failures": cache.load_failures,
        "evictions": cache.evictions,
        "teams": cache.teams,
        "staging": service.staging_stats(),
        "preload_failures": service.preload_failures(),
        "policy": service.policy_status(),
        "memory": memory_status(service),
    })
}
