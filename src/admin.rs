//! Admin events (DESIGN section 4): warm, evict and status. They arrive only as
//! non-HTTP Lambda invocations (direct invoke or an EventBridge rule) or
//! through `model-router invoke`; no HTTP route leads here.

use serde::Deserialize;
use serde_json::{Value, json};

use crate::service::ModelService;

#[derive(Debug, Deserialize)]
#[serde(tag = "action", rename_all = "lowercase", deny_unknown_fields)]
enum AdminEvent {
    Warm { models: Vec<String> },
    Evict { models: Vec<String> },
    Status {},
}

/// Answers one admin event. An EventBridge event carries the admin object in
/// its `detail`. Always answers a JSON object; malformed events get
/// `{"error", "code": "invalid_admin_event"}`.
pub async fn handle(service: &ModelService, event: &Value) -> Value {
    let payload = match event.get("detail") {
        Some(detail) if event.get("action").is_none() => detail,
        _ => event,
    };
    let event: AdminEvent = match serde_json::from_value(payload.clone()) {
        Ok(event) => event,
        Err(e) => {
            return json!({
                "error": format!("not an admin event ({e}); expected {{\"action\": \"warm\"|\"evict\"|\"status\", \"models\": [\"name/version\", ...]}}"),
                "code": "invalid_admin_event",
            });
        }
    };
    match event {
        AdminEvent::Warm { models } => {
            let (warmed, mut failed) = service.warm(&models).await;
            // Warming more than the budget holds evicts the earliest ones again:
            // say which did not stay.
            let budget = service.config().cache_bytes;
            let (kept, pushed_out): (Vec<String>, Vec<String>) =
                warmed.into_iter().partition(|spec| {
                    crate::repository::ModelKey::parse(spec)
                        .map(|key| service.is_cached(&key))
                        .unwrap_or(false)
                });
            failed.extend(pushed_out.into_iter().map(|model| crate::service::WarmFailure {
                model,
                code: "did_not_fit",
                error: format!("loaded, then evicted to make room for later models of this warm; the cache budget is {budget} bytes"),
            }));
            json!({ "warmed": kept, "failed": failed })
        }
        AdminEvent::Evict { models } => json!({ "evicted": service.evict(&models) }),
        AdminEvent::Status {} => status(service),
    }
}

/// The `status` answer: cache entries, bytes, counters, staging, failed preloads.
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
        "staging": service.staging_stats(),
        "preload_failures": service.preload_failures(),
    })
}
