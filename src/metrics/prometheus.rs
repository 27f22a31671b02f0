//! The Prometheus exporter of the metrics [`super::Metrics`] records: the same
//! request records that become EMF lines are counted and observed here, and
//! the cache and staging gauges are read from the service at each scrape.
//! Served as `GET /metrics` by the admin listener (src/http/admin.rs), in the
//! Prometheus text format (OpenMetrics flavour, as `prometheus-client` writes it).

use std::fmt;
use std::sync::Arc;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use crate::cache::CacheStatus;
use crate::repository::StagingStats;

/// Labels of `model_router_requests_total`. `model` follows
/// METRICS_MODEL_DIMENSION (empty when off or when the model was not found);
/// `team` is empty when the model has none.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    model: String,
    team: String,
    status: String,
    code: String,
}

/// Labels of the phase histograms and the cache lookups.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ModelLabels {
    model: String,
    team: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct LookupLabels {
    model: String,
    team: String,
    outcome: String,
}

type Histograms = Family<ModelLabels, Histogram, fn() -> Histogram>;

/// Request latencies from 50 µs to ~26 s, doubling.
fn latency_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.000_05, 2.0, 20))
}

/// The long-lived families; clones share their values.
#[derive(Debug, Clone)]
pub(super) struct Prometheus {
    requests: Family<RequestLabels, Counter>,
    lookups: Family<LookupLabels, Counter>,
    queue: Histograms,
    load: Histograms,
    stage: Histograms,
    inference: Histograms,
}

/// One request, as [`super::Metrics::record_request`] saw it.
pub(super) struct Observation<'a> {
    pub model: Option<&'a str>,
    pub team: Option<&'a str>,
    pub status: u16,
    pub code: Option<&'a str>,
    /// `Some(outcome)` when the request reached a model: hit, miss, joined.
    pub cache: Option<&'a str>,
    /// Seconds spent loading and staging (this request's own load only).
    pub load_seconds: Option<(f64, f64)>,
    pub queue_seconds: Option<f64>,
    pub inference_seconds: Option<f64>,
}

impl Default for Prometheus {
    fn default() -> Prometheus {
        let histograms = || Histograms::new_with_constructor(latency_histogram);
        Prometheus {
            requests: Family::default(),
            lookups: Family::default(),
            queue: histograms(),
            load: histograms(),
            stage: histograms(),
            inference: histograms(),
        }
    }
}

impl Prometheus {
    pub(super) fn observe(&self, request: &Observation<'_>) {
        let model = request.model.unwrap_or_default().to_string();
        let team = request.team.unwrap_or_default().to_string();
        self.requests
            .get_or_create(&RequestLabels {
                model: model.clone(),
                team: team.clone(),
                status: request.status.to_string(),
                code: request.code.unwrap_or_default().to_string(),
            })
            .inc();
        let labels = ModelLabels { model, team };
        if let Some(outcome) = request.cache {
            self.lookups
                .get_or_create(&LookupLabels {
                    model: labels.model.clone(),
                    team: labels.team.clone(),
                    outcome: outcome.to_string(),
                })
                .inc();
        }
        if let Some((load, stage)) = request.load_seconds {
            self.load.get_or_create(&labels).observe(load);
            self.stage.get_or_create(&labels).observe(stage);
        }
        if let Some(queue) = request.queue_seconds {
            self.queue.get_or_create(&labels).observe(queue);
        }
        if let Some(inference) = request.inference_seconds {
            self.inference.get_or_create(&labels).observe(inference);
        }
    }

    /// The text exposition: the request families, then the cache and staging
    /// figures as they are now.
    pub(super) fn render(&self, cache: CacheStatus, staging: StagingStats) -> String {
        let mut registry = Registry::with_prefix("model_router");
        registry.register(
            "requests",
            "HTTP requests by model, team, status and error code",
            self.requests.clone(),
        );
        registry.register(
            "cache_lookups",
            "Requests that reached a model, by how the cache answered (hit, miss, joined a load)",
            self.lookups.clone(),
        );
        for (name, help, family) in [
            (
                "queue_seconds",
                "Time a request waited for a free session of its model",
                &self.queue,
            ),
            (
                "load_seconds",
                "Session creation by a request's own load",
                &self.load,
            ),
            (
                "stage_seconds",
                "Copying and hashing into staging by a request's own load",
                &self.stage,
            ),
            ("inference_seconds", "Running the model", &self.inference),
        ] {
            registry.register(name, help, family.clone());
        }
        registry.register_collector(Box::new(Snapshot(Arc::new((cache, staging)))));
        let mut text = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut text, &registry);
        text
    }
}

/// The cache's and staging's own counters and gauges, read at the scrape.
#[derive(Debug)]
struct Snapshot(Arc<(CacheStatus, StagingStats)>);

impl Collector for Snapshot {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), fmt::Error> {
        let (cache, staging) = &*self.0;
        let counters = [
            (
                "cache_hits",
                "Cache lookups answered from memory",
                cache.hits,
            ),
            (
                "cache_misses",
                "Cache lookups that loaded or joined a load",
                cache.misses,
            ),
            ("cache_loads", "Models loaded", cache.loads),
            (
                "cache_load_failures",
                "Loads that failed",
                cache.load_failures,
            ),
            ("cache_evictions", "Models evicted", cache.evictions),
        ];
        for (name, help, value) in counters {
            let counter = ConstCounter::new(value);
            counter.encode(encoder.encode_descriptor(
                name,
                help,
                None,
                counter.metric_type(),
            )?)?;
        }
        let gauges = [
            (
                "cache_bytes_used",
                "Bytes charged for loaded models still alive",
                cache.bytes_used,
            ),
            (
                "cache_bytes_budget",
                "The cache budget (MODEL_CACHE_BYTES)",
                cache.bytes_budget,
            ),
            (
                "models_cached",
                "Models in the cache",
                cache.entries.len() as u64,
            ),
            (
                "staging_bytes_used",
                "Bytes of verified copies in the staging directory",
                staging.bytes_used,
            ),
            (
                "staging_bytes_budget",
                "The staging budget (MODEL_STAGING_BYTES)",
                staging.bytes_budget,
            ),
        ];
        for (name, help, value) in gauges {
            let gauge = ConstGauge::new(i64::try_from(value).unwrap_or(i64::MAX));
            gauge.encode(encoder.encode_descriptor(name, help, None, gauge.metric_type())?)?;
        }
        Ok(())
    }
}
