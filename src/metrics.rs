//! Metrics as CloudWatch Embedded Metric Format (EMF): one JSON object per
//! line, written straight to stdout, from which CloudWatch Logs extracts the
//! metrics (on Lambda, with no agent and no API call on the request path).
//!
//! Every metric name, unit and dimension is declared here, and every line is
//! made here: the request line ([`Metrics::record_request`]), the error-by-code
//! line, the per-load line of warms and preloads ([`Metrics::record_warm`]) and
//! the gauges ([`Metrics::record_gauges`]). docs/lambda.md lists them (a test
//! keeps that list in step with [`ALL`]).
//!
//! Dimensions are `FunctionName` on every metric, plus `Model` (`name/version`)
//! when the request reached a published model, plus `Code` on the error-by-code
//! line. Per-request metrics also roll up by `Team` (the team the model's cache
//! bytes count against) once the model is loaded, and `CacheBytesUsed` is
//! written per `Team` whenever a team's usage can have changed (a load, a warm). A model name a caller typed is only a dimension once the repository
//! knew it: otherwise every misspelt name would become a new CloudWatch metric
//! (each one billed), and a caller could create them at will.
//!
//! What `Model` holds is METRICS_MODEL_DIMENSION's choice ([`ModelDimension`]):
//! `name/version` (the default), the name alone, or nothing (CloudWatch bills
//! each distinct dimension set as a custom metric; docs/metrics.md has the cost).
//!
//! Recorded once, exported twice: each request's figures are computed here,
//! once, and go both to the EMF line and, when [`Metrics::with_prometheus`]
//! asked for it (`serve`), to the Prometheus families of [`prometheus`], which
//! the admin listener serves as `GET /metrics` ([`Metrics::prometheus_text`]).

mod prometheus;

use std::io::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};

use crate::cache::{CacheOutcome, CacheStatus};
use crate::config::{Config, MetricsMode, ModelDimension};
use crate::service::{LoadInfo, ModelService, WarmFailure};

/// A CloudWatch unit, as EMF spells it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Unit {
    Count,
    Milliseconds,
    Bytes,
}

/// One declared metric.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Metric {
    pub name: &'static str,
    pub unit: Unit,
}

const fn metric(name: &'static str, unit: Unit) -> Metric {
    Metric { name, unit }
}

/// 1 per request (HTTP requests only; admin events are not requests).
pub const REQUESTS: Metric = metric("Requests", Unit::Count);
/// 1 when the answer is not 2xx, else 0. By code on its own line.
pub const ERRORS: Metric = metric("Errors", Unit::Count);
/// 1 when a model file did not match its manifest's sha256 (a request, a warm
/// or a preload), else 0. An infrastructure alarm watches it.
pub const CHECKSUM_FAILURES: Metric = metric("ChecksumFailures", Unit::Count);
/// 1 when the model was in memory (only on requests that reached a model).
pub const CACHE_HIT: Metric = metric("CacheHit", Unit::Count);
/// 1 when it was not: this request loaded it, or waited for another's load.
pub const CACHE_MISS: Metric = metric("CacheMiss", Unit::Count);
/// Session creation by this request's load (misses that loaded only).
pub const MODEL_LOAD_MS: Metric = metric("ModelLoadMs", Unit::Milliseconds);
/// Copying and hashing into staging by this request's load (0 when the
/// verified staged copy was reused).
pub const STAGE_MS: Metric = metric("StageMs", Unit::Milliseconds);
/// Running the model.
pub const INFERENCE_MS: Metric = metric("InferenceMs", Unit::Milliseconds);
/// Bytes a model is charged in the cache, once per load (request, warm, preload).
pub const MODEL_BYTES: Metric = metric("ModelBytes", Unit::Bytes);
/// Gauge: bytes of loaded models still alive.
pub const CACHE_BYTES_USED: Metric = metric("CacheBytesUsed", Unit::Bytes);
/// Gauge: the cache budget.
pub const CACHE_BYTES_BUDGET: Metric = metric("CacheBytesBudget", Unit::Bytes);
/// Gauge: models in the cache.
pub const MODELS_CACHED: Metric = metric("ModelsCached", Unit::Count);
/// Evictions since the previous line of this process (a delta, so the Sum
/// over many Lambda instances is the total).
pub const EVICTIONS: Metric = metric("Evictions", Unit::Count);

/// Every metric, in the order docs/lambda.md lists them.
pub const ALL: [Metric; 13] = [
    REQUESTS,
    ERRORS,
    CHECKSUM_FAILURES,
    CACHE_HIT,
    CACHE_MISS,
    MODEL_LOAD_MS,
    STAGE_MS,
    INFERENCE_MS,
    MODEL_BYTES,
    CACHE_BYTES_USED,
    CACHE_BYTES_BUDGET,
    MODELS_CACHED,
    EVICTIONS,
];

/// The dimension names.
pub const FUNCTION_NAME: &str = "FunctionName";
pub const MODEL: &str = "Model";
pub const CODE: &str = "Code";
pub const TEAM: &str = "Team";

/// `FunctionName` outside Lambda (AWS_LAMBDA_FUNCTION_NAME unset).
pub const LOCAL_FUNCTION_NAME: &str = "model-router";

/// Error codes that are only given once the repository resolved the model's
/// name and version: the `Model` dimension of a failed request is set for
/// these only (see the module doc). A model the request loaded is always known.
const CODES_OF_KNOWN_MODELS: [&str; 5] = [
    "checksum_mismatch",
    "model_load_failed",
    "model_too_large",
    "inference_failed",
    "cache_busy",
];

/// Where EMF lines go. A line is written whole, in one call, so lines from
/// concurrent requests never interleave.
pub trait Sink: Send + Sync {
    fn write_line(&self, line: &str);
    /// Pushes out anything buffered (at shutdown).
    fn flush(&self) {}
}

/// Standard output: what Lambda sends to CloudWatch Logs, one event per line.
/// Each line is flushed as it is written, so a line is never lost in a
/// buffer when the process is stopped.
#[derive(Debug, Default)]
pub struct Stdout;

impl Sink for Stdout {
    fn write_line(&self, line: &str) {
        let mut out = std::io::stdout().lock();
        let mut bytes = Vec::with_capacity(line.len() + 1);
        bytes.extend_from_slice(line.as_bytes());
        bytes.push(b'\n');
        // A metrics line that cannot be written (stdout closed) is dropped:
        // metrics must never fail a request.
        let _ = out.write_all(&bytes).and_then(|()| out.flush());
    }

    fn flush(&self) {
        let _ = std::io::stdout().lock().flush();
    }
}

/// Keeps lines in memory: for tests, and for embedding.
#[derive(Debug, Default, Clone)]
pub struct Capture(Arc<Mutex<Vec<String>>>);

impl Capture {
    /// The lines written so far.
    pub fn lines(&self) -> Vec<String> {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

impl Sink for Capture {
    fn write_line(&self, line: &str) {
        self.0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(line.to_string());
    }
}

/// The metrics handle: cheap to clone; disabled, it records nothing and costs
/// nothing.
///
/// ```
/// use model_router::metrics::{Capture, Gauges, Metrics};
/// let capture = Capture::default();
/// let metrics = Metrics::new("ModelRouter", "my-function", capture.clone());
/// metrics.record_gauges(Gauges { bytes_used: 0, bytes_budget: 1 << 30, models_cached: 0, evictions: 0 });
/// let line: serde_json::Value = serde_json::from_str(&capture.lines()[0]).unwrap();
/// assert_eq!(line["FunctionName"], "my-function");
/// assert_eq!(line["_aws"]["CloudWatchMetrics"][0]["Namespace"], "ModelRouter");
/// ```
#[derive(Clone, Default)]
pub struct Metrics {
    emitter: Option<Arc<Emitter>>,
    /// The Prometheus families, when this process serves `/metrics`.
    prometheus: Option<Arc<prometheus::Prometheus>>,
    /// What the per-model dimension (EMF) and label (Prometheus) hold.
    model_dimension: ModelDimension,
}

struct Emitter {
    namespace: String,
    function_name: String,
    sink: Box<dyn Sink>,
    /// The cache's eviction count at the previous line, to emit deltas.
    /// Atomic: requests on different threads record concurrently.
    evictions_seen: AtomicU64,
}

static GLOBAL: OnceLock<Metrics> = OnceLock::new();

impl Metrics {
    /// Metrics that record nothing.
    pub fn disabled() -> Metrics {
        Metrics::default()
    }

    /// Metrics to `sink`, in `namespace`, with dimension `FunctionName = function_name`.
    pub fn new(namespace: &str, function_name: &str, sink: impl Sink + 'static) -> Metrics {
        Metrics {
            emitter: Some(Arc::new(Emitter {
                namespace: namespace.to_string(),
                function_name: function_name.to_string(),
                sink: Box::new(sink),
                evictions_seen: AtomicU64::new(0),
            })),
            prometheus: None,
            model_dimension: ModelDimension::default(),
        }
    }

    /// These metrics, also counted for Prometheus (see [`Metrics::prometheus_text`]).
    pub fn with_prometheus(mut self) -> Metrics {
        self.prometheus = Some(Arc::default());
        self
    }

    /// These metrics, with `Model` holding what `by` says.
    pub fn with_model_dimension(mut self, by: ModelDimension) -> Metrics {
        self.model_dimension = by;
        self
    }

    /// The Prometheus text exposition of everything recorded so far, with the
    /// service's cache and staging figures as they are now; `None` unless
    /// [`Metrics::with_prometheus`] turned it on (tests/admin.rs scrapes it
    /// from a real server).
    pub fn prometheus_text(&self, service: &ModelService) -> Option<String> {
        let prometheus = self.prometheus.as_ref()?;
        Some(prometheus.render(service.cache_status(), service.staging_stats()))
    }

    /// What the configuration asks for: EMF on stdout (METRICS=emf), or
    /// nothing; `Model` as METRICS_MODEL_DIMENSION says.
    pub fn from_config(config: &Config) -> Metrics {
        let metrics = match config.metrics {
            MetricsMode::Emf => Metrics::with_sink(config, Stdout),
            MetricsMode::Off => Metrics::disabled(),
        };
        metrics.with_model_dimension(config.metrics_model_dimension)
    }

    /// EMF lines to `sink`, with the configuration's namespace and function name.
    pub fn with_sink(config: &Config, sink: impl Sink + 'static) -> Metrics {
        Metrics::new(
            &config.metrics_namespace,
            config
                .function_name
                .as_deref()
                .unwrap_or(LOCAL_FUNCTION_NAME),
            sink,
        )
    }

    /// Makes `metrics` the process's default, used by front doors that attach
    /// none to their requests (the local server). The first call wins.
    pub fn install(metrics: Metrics) {
        let _ = GLOBAL.set(metrics);
    }

    /// The process's default (disabled unless [`Metrics::install`] was called).
    pub fn global() -> Metrics {
        GLOBAL.get().cloned().unwrap_or_default()
    }

    /// Whether EMF lines are written.
    pub fn is_enabled(&self) -> bool {
        self.emitter.is_some()
    }

    /// Records one HTTP request: its metrics and the gauges on one line, and,
    /// when it failed, one more line counting `Errors` by `Code`.
    pub fn record_request(&self, service: &ModelService, request: &RequestMetrics<'_>) {
        let model = request.model_dimension(self.model_dimension);
        let load = request.load;
        let own_load = load.filter(|l| l.outcome == CacheOutcome::Miss);
        if let Some(prometheus) = &self.prometheus {
            prometheus.observe(&prometheus::Observation {
                model: model.as_deref(),
                team: request.team,
                status: request.status,
                code: request.code,
                cache: load.map(|l| l.outcome.as_str()),
                load_seconds: own_load.map(|l| (l.load_ms / 1e3, l.stage_ms / 1e3)),
                queue_seconds: request.queue_ms.map(|ms| ms / 1e3),
                inference_seconds: request.inference_ms.map(|ms| ms / 1e3),
            });
        }
        let Some(emitter) = &self.emitter else {
            return;
        };
        let mut values = vec![
            (REQUESTS, 1.0),
            (ERRORS, flag(request.code.is_some())),
            (
                CHECKSUM_FAILURES,
                flag(request.code == Some("checksum_mismatch")),
            ),
        ];
        if let Some(load) = load {
            values.push((CACHE_HIT, flag(load.outcome == CacheOutcome::Hit)));
            values.push((CACHE_MISS, flag(load.outcome != CacheOutcome::Hit)));
            if own_load.is_some() {
                values.push((MODEL_LOAD_MS, load.load_ms));
                values.push((STAGE_MS, load.stage_ms));
                values.push((MODEL_BYTES, load.model_bytes as f64));
            }
        }
        if let Some(ms) = request.inference_ms {
            values.push((INFERENCE_MS, ms));
        }
        let mut line = emitter.line(model.as_deref());
        let team = request.team.filter(|_| model.is_some());
        if let Some(team) = team {
            line.property(TEAM, json!(team));
        }
        line.property("RequestId", json!(request.request_id));
        line.property("Status", json!(request.status));
        if let Some(code) = request.code {
            line.property(CODE, json!(code));
        }
        if let Some(load) = load {
            line.property("Cache", json!(load.outcome.as_str()));
        }
        let mut dimensions = model_dimensions(model.is_some());
        if team.is_some() {
            dimensions.push(&[FUNCTION_NAME, TEAM]);
        }
        line.directive(&dimensions, &values);
        let cache = service.cache_status();
        line.directive(&[&[FUNCTION_NAME]], &emitter.gauges((&cache).into()));
        emitter.write(line);
        if load.is_some_and(|l| l.outcome == CacheOutcome::Miss) {
            emitter.team_usage(&cache);
        }

        if let Some(code) = request.code {
            let mut line = emitter.line(model.as_deref());
            line.property(CODE, json!(code));
            line.property("RequestId", json!(request.request_id));
            let dimensions: &[&[&str]] = if model.is_some() {
                &[&[FUNCTION_NAME, CODE], &[FUNCTION_NAME, MODEL, CODE]]
            } else {
                &[&[FUNCTION_NAME, CODE]]
            };
            line.directive(dimensions, &[(ERRORS, 1.0)]);
            emitter.write(line);
        }
    }

    /// Records a warm or a preload: `ModelBytes` for each model it loaded, and
    /// `ChecksumFailures` for each model refused for its checksum, then the
    /// gauges.
    pub fn record_warm(
        &self,
        service: &ModelService,
        loaded: &[(String, u64)],
        failed: &[WarmFailure],
    ) {
        let Some(emitter) = &self.emitter else {
            return;
        };
        for (model, bytes) in loaded {
            let model = self.model_dimension.of(model);
            let mut line = emitter.line(model.as_deref());
            line.directive(
                &model_dimensions(model.is_some()),
                &[(MODEL_BYTES, *bytes as f64)],
            );
            emitter.write(line);
        }
        for failure in failed.iter().filter(|f| f.code == "checksum_mismatch") {
            // The model was found (its file did not match): a bounded dimension.
            let model = self.model_dimension.of(&failure.model);
            let mut line = emitter.line(model.as_deref());
            line.directive(
                &model_dimensions(model.is_some()),
                &[(CHECKSUM_FAILURES, 1.0)],
            );
            emitter.write(line);
        }
        let cache = service.cache_status();
        self.record_gauges((&cache).into());
        emitter.team_usage(&cache);
    }

    /// Records the cache gauges (after admin events, at init and at shutdown;
    /// requests carry them on their own line).
    pub fn record_gauges(&self, cache: Gauges) {
        let Some(emitter) = &self.emitter else {
            return;
        };
        let mut line = emitter.line(None);
        line.directive(&[&[FUNCTION_NAME]], &emitter.gauges(cache));
        emitter.write(line);
    }

    /// Pushes out anything the sink buffers.
    pub fn flush(&self) {
        if let Some(emitter) = &self.emitter {
            emitter.sink.flush();
        }
    }
}

/// The cache gauges.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Gauges {
    pub bytes_used: u64,
    pub bytes_budget: u64,
    pub models_cached: usize,
    /// Evictions since start-up (emitted as the delta since the previous line).
    pub evictions: u64,
}

impl From<&CacheStatus> for Gauges {
    fn from(cache: &CacheStatus) -> Gauges {
        Gauges {
            bytes_used: cache.bytes_used,
            bytes_budget: cache.bytes_budget,
            models_cached: cache.entries.len(),
            evictions: cache.evictions,
        }
    }
}

/// What [`Metrics::record_request`] needs of one request.
#[derive(Debug, Clone, Copy)]
pub struct RequestMetrics<'a> {
    pub request_id: &'a str,
    /// The model name and version as the route named them (or, after a load,
    /// the concrete version).
    pub model: Option<(&'a str, &'a str)>,
    /// The loaded model's team (from the access policy or its manifest).
    pub team: Option<&'a str>,
    pub load: Option<LoadInfo>,
    pub inference_ms: Option<f64>,
    /// Waiting for a free session of the model.
    pub queue_ms: Option<f64>,
    pub status: u16,
    /// The error code when the answer is an error.
    pub code: Option<&'static str>,
}

impl RequestMetrics<'_> {
    /// The `Model` dimension, as `by` says, when it is safe as a dimension
    /// (see the module doc).
    fn model_dimension(&self, by: ModelDimension) -> Option<String> {
        let (name, version) = self.model?;
        let known = self.load.is_some()
            || self
                .code
                .is_some_and(|code| CODES_OF_KNOWN_MODELS.contains(&code));
        known.then(|| by.of(&format!("{name}/{version}"))).flatten()
    }
}

fn flag(on: bool) -> f64 {
    if on { 1.0 } else { 0.0 }
}

/// The dimension sets of per-model metrics: by model, and rolled up by
/// function (alarms and dashboards read the roll-up).
fn model_dimensions(with_model: bool) -> Vec<&'static [&'static str]> {
    if with_model {
        vec![&[FUNCTION_NAME, MODEL], &[FUNCTION_NAME]]
    } else {
        vec![&[FUNCTION_NAME]]
    }
}

impl Emitter {
    fn line(&self, model: Option<&str>) -> Line {
        let mut root = Map::new();
        root.insert(FUNCTION_NAME.into(), json!(self.function_name));
        if let Some(model) = model {
            root.insert(MODEL.into(), json!(model));
        }
        Line {
            namespace: self.namespace.clone(),
            directives: Vec::new(),
            root,
        }
    }

    fn gauges(&self, cache: Gauges) -> Vec<(Metric, f64)> {
        let previous = self
            .evictions_seen
            .fetch_max(cache.evictions, Ordering::Relaxed);
        vec![
            (CACHE_BYTES_USED, cache.bytes_used as f64),
            (CACHE_BYTES_BUDGET, cache.bytes_budget as f64),
            (MODELS_CACHED, cache.models_cached as f64),
            (EVICTIONS, cache.evictions.saturating_sub(previous) as f64),
        ]
    }

    fn write(&self, line: Line) {
        self.sink.write_line(&line.finish());
    }

    /// One line per team: the bytes its cached models use, dimensioned by
    /// `Team`, with its guaranteed share as a property.
    fn team_usage(&self, cache: &CacheStatus) {
        for (team, usage) in &cache.teams {
            let mut line = self.line(None);
            line.property(TEAM, json!(team));
            line.property("ShareBytes", json!(usage.share_bytes));
            line.directive(
                &[&[FUNCTION_NAME, TEAM]],
                &[(CACHE_BYTES_USED, usage.bytes_used as f64)],
            );
            self.write(line);
        }
    }
}

/// One EMF document under construction.
struct Line {
    namespace: String,
    directives: Vec<Value>,
    root: Map<String, Value>,
}

impl Line {
    /// A value that is not a metric: searchable in CloudWatch Logs Insights.
    fn property(&mut self, key: &str, value: Value) {
        self.root.insert(key.to_string(), value);
    }

    /// Declares `values` as metrics over `dimensions` and sets their values.
    fn directive(&mut self, dimensions: &[&[&str]], values: &[(Metric, f64)]) {
        let metrics: Vec<Value> = values
            .iter()
            .map(|(metric, _)| json!({"Name": metric.name, "Unit": metric.unit}))
            .collect();
        for (metric, value) in values {
            self.root.insert(metric.name.to_string(), number(*value));
        }
        self.directives.push(json!({
            "Namespace": self.namespace,
            "Dimensions": dimensions,
            "Metrics": metrics,
        }));
    }

    fn finish(self) -> String {
        let mut document = Map::new();
        document.insert(
            "_aws".into(),
            json!({"Timestamp": now_ms(), "CloudWatchMetrics": self.directives}),
        );
        document.extend(self.root);
        Value::Object(document).to_string()
    }
}

/// A metric value: whole numbers as integers (easier to read and to match on).
fn number(value: f64) -> Value {
    if value.fract() == 0.0 && value.abs() < 9e15 {
        json!(value as i64)
    } else {
        json!(value)
    }
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(line: &str) -> Value {
        serde_json::from_str(line).unwrap()
    }

    /// Checks one EMF document against the specification's rules that
    /// CloudWatch enforces, and returns its metric names.
    pub(crate) fn check_emf(line: &Value, namespace: &str) -> Vec<String> {
        let aws = &line["_aws"];
        assert!(aws["Timestamp"].as_u64().unwrap() > 1_600_000_000_000);
        let mut names = Vec::new();
        for directive in aws["CloudWatchMetrics"].as_array().unwrap() {
            assert_eq!(directive["Namespace"], namespace);
            for set in directive["Dimensions"].as_array().unwrap() {
                for key in set.as_array().unwrap() {
                    let key = key.as_str().unwrap();
                    assert!(line[key].is_string(), "dimension {key} missing: {line}");
                }
            }
            for metric in directive["Metrics"].as_array().unwrap() {
                let name = metric["Name"].as_str().unwrap();
                assert!(line[name].is_number(), "metric {name} has no value: {line}");
                assert!(
                    ["Count", "Milliseconds", "Bytes"].contains(&metric["Unit"].as_str().unwrap())
                );
                names.push(name.to_string());
            }
        }
        names
    }

    fn cache(evictions: u64) -> Gauges {
        Gauges {
            bytes_used: 4096,
            bytes_budget: 1 << 20,
            models_cached: 1,
            evictions,
        }
    }

    #[test]
    fn gauges_carry_the_declared_metrics_and_evictions_as_deltas() {
        let capture = Capture::default();
        let metrics = Metrics::new("NS", "fn", capture.clone());
        metrics.record_gauges(cache(3));
        metrics.record_gauges(cache(3));
        metrics.record_gauges(cache(5));
        let lines: Vec<Value> = capture.lines().iter().map(|l| parse(l)).collect();
        assert_eq!(lines.len(), 3);
        assert_eq!(
            check_emf(&lines[0], "NS"),
            [
                "CacheBytesUsed",
                "CacheBytesBudget",
                "ModelsCached",
                "Evictions"
            ]
        );
        assert_eq!(
            lines[0]["_aws"]["CloudWatchMetrics"][0]["Dimensions"],
            json!([["FunctionName"]])
        );
        assert_eq!(
            (&lines[0]["CacheBytesUsed"], &lines[0]["ModelsCached"]),
            (&json!(4096), &json!(1))
        );
        let evictions: Vec<&Value> = lines.iter().map(|l| &l["Evictions"]).collect();
        assert_eq!(evictions, [&json!(3), &json!(0), &json!(2)]);
    }

    #[test]
    fn a_model_name_is_a_dimension_only_once_the_repository_knew_it() {
        let typed = RequestMetrics {
            request_id: "r",
            model: Some(("no-such-model", "1")),
            team: None,
            load: None,
            inference_ms: None,
            queue_ms: None,
            status: 404,
            code: Some("model_not_found"),
        };
        assert_eq!(typed.model_dimension(ModelDimension::Version), None);
        let invalid_before_load = RequestMetrics {
            code: Some("invalid_json"),
            status: 400,
            ..typed
        };
        assert_eq!(
            invalid_before_load.model_dimension(ModelDimension::Version),
            None
        );
        let corrupted = RequestMetrics {
            code: Some("checksum_mismatch"),
            status: 500,
            ..typed
        };
        assert_eq!(
            corrupted
                .model_dimension(ModelDimension::Version)
                .as_deref(),
            Some("no-such-model/1")
        );
        let by_name = corrupted.model_dimension(ModelDimension::Name);
        assert_eq!(by_name.as_deref(), Some("no-such-model"));
        assert_eq!(corrupted.model_dimension(ModelDimension::Off), None);
    }

    #[test]
    fn disabled_metrics_write_nothing() {
        let metrics = Metrics::disabled();
        assert!(!metrics.is_enabled());
        metrics.record_gauges(cache(1));
        metrics.flush();
    }

    #[test]
    fn whole_values_are_integers_and_fractions_stay() {
        assert_eq!(number(3.0), json!(3));
        assert_eq!(number(0.25), json!(0.25));
    }

    #[test]
    fn the_lambda_docs_list_every_metric_and_dimension() {
        let docs = std::fs::read_to_string(
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/lambda.md"),
        )
        .unwrap();
        for metric in ALL {
            let unit = format!("{:?}", metric.unit);
            assert!(
                docs.lines()
                    .any(|l| l.contains(&format!("`{}`", metric.name)) && l.contains(&unit)),
                "docs/lambda.md has no table row for {} ({unit})",
                metric.name
            );
        }
        for dimension in [FUNCTION_NAME, MODEL, CODE] {
            assert!(docs.contains(&format!("`{dimension}`")));
        }
    }
}
