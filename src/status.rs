//! What the service remembers about each model version it has loaded or run,
//! whether or not the version is still cached: its signature (so metadata and
//! Triton's model configuration answer without loading it again, and so
//! without pushing hot models out of the cache), whether its last load
//! failed (model readiness), and its inference statistics (Triton's
//! statistics extension).
//!
//! One entry per concrete version seen since the process started: a few
//! hundred bytes each, bounded by the repository's size, never by traffic.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::engine::Signature;
use crate::repository::ModelKey;

/// A count and the total time it took, as Triton's `StatisticDuration`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Timed {
    pub count: u64,
    pub ns: u64,
}

impl Timed {
    fn add(&mut self, elapsed: Duration) {
        self.count += 1;
        self.ns += u64::try_from(elapsed.as_nanos()).unwrap_or(u64::MAX);
    }
}

/// One version's inference statistics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct VersionStats {
    /// Milliseconds since the Unix epoch of the last inference; 0 if none.
    pub last_inference_ms: u64,
    /// Requests that ran (model-router runs each request as one execution).
    pub inference_count: u64,
    pub execution_count: u64,
    /// Requests that got their answer, and their time from the start of the
    /// call to its answer.
    pub success: Timed,
    /// Requests that failed once their model was known, and their time.
    pub fail: Timed,
    /// Of each success: waiting for the model (a load, or a hit).
    pub queue: Timed,
    /// Checking and converting the inputs into tensors.
    pub compute_input: Timed,
    /// ONNX Runtime's run.
    pub compute_infer: Timed,
    /// Converting the outputs.
    pub compute_output: Timed,
}

/// Where one successful request's time went (Triton's breakdown; perf_analyzer
/// needs every part counted once per success).
#[derive(Debug, Clone, Copy, Default)]
pub struct InferenceTimes {
    pub total: Duration,
    pub queue: Duration,
    pub compute_input: Duration,
    pub compute_infer: Duration,
    pub compute_output: Duration,
}

#[derive(Debug, Default, Clone)]
struct Entry {
    signature: Option<Signature>,
    /// Why the last load failed; cleared by the next successful load.
    load_failure: Option<String>,
    stats: VersionStats,
}

/// The per-version records; one lock, held only to copy or update an entry.
#[derive(Debug, Default)]
pub struct VersionRegistry {
    entries: Mutex<BTreeMap<ModelKey, Entry>>,
}

impl VersionRegistry {
    fn with<T>(&self, key: &ModelKey, f: impl FnOnce(&mut Entry) -> T) -> T {
        let mut entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        f(entries.entry(key.clone()).or_default())
    }

    /// A load of `key` succeeded: its signature is remembered, any earlier
    /// failure forgotten.
    pub fn loaded(&self, key: &ModelKey, signature: &Signature) {
        self.with(key, |entry| {
            entry.signature = Some(signature.clone());
            entry.load_failure = None;
        });
    }

    /// A load of `key` failed (a bad checksum, a file ONNX Runtime refuses):
    /// the model is not ready until a load succeeds.
    pub fn load_failed(&self, key: &ModelKey, why: &str) {
        self.with(key, |entry| entry.load_failure = Some(why.to_string()));
    }

    /// Why the last load of `key` failed, if it did.
    pub fn load_failure(&self, key: &ModelKey) -> Option<String> {
        let entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        entries.get(key).and_then(|e| e.load_failure.clone())
    }

    /// The signature `key` had when it was last loaded.
    pub fn signature(&self, key: &ModelKey) -> Option<Signature> {
        let entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        entries.get(key).and_then(|e| e.signature.clone())
    }

    /// Records one request that got its answer from `key`.
    pub fn record_success(&self, key: &ModelKey, times: &InferenceTimes) {
        let now_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
            .unwrap_or(0);
        self.with(key, |entry| {
            let stats = &mut entry.stats;
            stats.success.add(times.total);
            stats.queue.add(times.queue);
            stats.compute_input.add(times.compute_input);
            stats.compute_infer.add(times.compute_infer);
            stats.compute_output.add(times.compute_output);
            stats.inference_count += 1;
            stats.execution_count += 1;
            stats.last_inference_ms = now_ms;
        });
    }

    /// Records one request that failed once its model was known.
    pub fn record_failure(&self, key: &ModelKey, total: Duration) {
        self.with(key, |entry| entry.stats.fail.add(total));
    }

    /// The statistics of every version recorded, in key order, optionally only
    /// those of one model name.
    pub fn stats(&self, name: Option<&str>) -> Vec<(ModelKey, VersionStats)> {
        let entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        entries
            .iter()
            .filter(|(key, _)| name.is_none_or(|n| key.name().as_str() == n))
            .map(|(key, entry)| (key.clone(), entry.stats))
            .collect()
    }

    /// The statistics of one version (zeros when it never ran).
    pub fn version_stats(&self, key: &ModelKey) -> VersionStats {
        let entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        entries.get(key).map(|e| e.stats).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failed_load_is_remembered_until_a_load_succeeds() {
        let registry = VersionRegistry::default();
        let key = ModelKey::new("m", "1").unwrap();
        assert_eq!(registry.load_failure(&key), None);
        registry.load_failed(&key, "checksum mismatch");
        assert_eq!(
            registry.load_failure(&key).as_deref(),
            Some("checksum mismatch")
        );
        registry.loaded(&key, &Signature::default());
        assert_eq!(registry.load_failure(&key), None);
        assert_eq!(registry.signature(&key), Some(Signature::default()));
    }

    #[test]
    fn statistics_count_successes_and_failures_apart() {
        let registry = VersionRegistry::default();
        let key = ModelKey::new("m", "1").unwrap();
        let other = ModelKey::new("n", "1").unwrap();
        let ms = Duration::from_millis(1);
        let times = InferenceTimes {
            total: 2 * ms,
            compute_infer: ms,
            ..Default::default()
        };
        registry.record_success(&key, &times);
        registry.record_failure(&key, ms);
        registry.record_success(&other, &times);
        let stats = registry.version_stats(&key);
        assert_eq!(
            stats.success,
            Timed {
                count: 1,
                ns: 2_000_000
            }
        );
        assert_eq!(
            stats.fail,
            Timed {
                count: 1,
                ns: 1_000_000
            }
        );
        assert_eq!(
            stats.compute_infer,
            Timed {
                count: 1,
                ns: 1_000_000
            }
        );
        // Every part is counted once per success, as perf_analyzer requires.
        assert_eq!(stats.queue.count, 1);
        assert_eq!(stats.compute_input.count, 1);
        assert_eq!(stats.compute_output.count, 1);
        assert_eq!(stats.inference_count, 1);
        assert!(stats.last_inference_ms > 0);
        assert_eq!(registry.stats(Some("m")).len(), 1);
        assert_eq!(registry.stats(None).len(), 2);
    }
}
