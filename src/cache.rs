//! The model cache: a least-recently-used map of loaded models bounded by bytes.
//!
//! Guarantees, each tested below:
//! - **Bounded.** The bytes of every loaded model still alive (in the cache, or
//!   evicted but still held by a request) never exceed the budget when a model
//!   is admitted. Admission evicts least recently used models first, idle ones
//!   before ones in use, and waits (bounded) for requests to finish when only
//!   in-use models are left.
//! - **Single flight.** Concurrent misses on one key run one load; the others
//!   wait for it and share its outcome, success or error. A failed load is not
//!   cached: the next request tries again.
//! - **In-use models are never freed under a request.** A request holds a
//!   [`Lease`]; an evicted model is freed when its last lease drops, and its
//!   bytes stay counted until then.
//! - **Fair shares.** A team may be guaranteed a share of the budget. When room
//!   is needed, the least recently used model of a team *over* its share goes
//!   first (models of no team count as over); a team within its share keeps its
//!   models while others flood the cache.

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, RwLock};
use std::time::Duration;

use lru::LruCache;
use serde::Serialize;
use tokio::sync::{Notify, OnceCell};

use crate::error::Error;
use crate::repository::ModelKey;

/// Errors of the cache itself (a loader's own errors pass through unchanged).
#[derive(Debug, Clone, thiserror::Error)]
pub enum CacheError {
    #[error(
        "model {key} needs {bytes} bytes, more than the whole cache budget of {budget} bytes (MODEL_CACHE_BYTES); nothing was evicted"
    )]
    TooLarge {
        key: String,
        bytes: u64,
        budget: u64,
    },
    #[error("model {key} needs {bytes} bytes and every cached model is in use; retry shortly")]
    Busy { key: String, bytes: u64 },
}

/// A loaded model held by the cache and by the requests using it.
pub type Lease<V> = Arc<Cached<V>>;

/// What the cache needs to know of a value beyond its bytes.
pub trait CacheValue: Send + Sync + 'static {
    /// The team whose share this value's bytes count against.
    fn team(&self) -> Option<&str> {
        None
    }
}

/// A value in the cache, charged `bytes` from the moment it is admitted until it
/// is dropped (evicted *and* released by every request).
#[derive(Debug)]
pub struct Cached<V> {
    key: ModelKey,
    bytes: u64,
    value: V,
    accounting: Arc<Accounting>,
}

impl<V> Cached<V> {
    pub fn key(&self) -> &ModelKey {
        &self.key
    }
    pub fn bytes(&self) -> u64 {
        self.bytes
    }
    pub fn value(&self) -> &V {
        &self.value
    }
}

impl<V> Drop for Cached<V> {
    fn drop(&mut self) {
        self.accounting.used.fetch_sub(self.bytes, Ordering::AcqRel);
        self.accounting.released.notify_waiters();
    }
}

/// Bytes in use, outside the state lock: a lease may be dropped anywhere,
/// including while the state lock is held (an eviction drops the cache's own
/// handle), so the count must not need that lock.
#[derive(Debug, Default)]
struct Accounting {
    used: AtomicU64,
    /// Woken whenever a model is freed, for admissions waiting for room.
    released: Notify,
}

/// How a request got its model.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum CacheOutcome {
    /// It was in the cache.
    Hit,
    /// This request loaded it.
    Miss,
    /// Another request was loading it; this one waited and shared the result.
    Joined,
}

impl CacheOutcome {
    pub fn as_str(self) -> &'static str {
        match self {
            CacheOutcome::Hit => "hit",
            CacheOutcome::Miss => "miss",
            CacheOutcome::Joined => "joined",
        }
    }
}

/// One cached model in [`CacheStatus`].
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct EntryStatus {
    pub model: String,
    pub bytes: u64,
    pub team: Option<String>,
    /// Requests using it right now.
    pub in_use: usize,
}

/// A snapshot of the cache, for the `status` admin event and `GET /models`.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct CacheStatus {
    /// Most recently used first.
    pub entries: Vec<EntryStatus>,
    pub bytes_used: u64,
    pub bytes_budget: u64,
    pub hits: u64,
    pub misses: u64,
    pub loads: u64,
    pub load_failures: u64,
    pub evictions: u64,
    /// Bytes of cached models per team, with each team's guaranteed share.
    pub teams: BTreeMap<String, TeamUsage>,
}

/// One team's part of the cache.
#[derive(Debug, Clone, Serialize, PartialEq, Eq, Default)]
pub struct TeamUsage {
    pub bytes_used: u64,
    /// The bytes guaranteed to the team (its share of the budget); 0 without a share.
    pub share_bytes: u64,
}

type LoadCell<V> = Arc<OnceCell<Result<Lease<V>, Error>>>;

struct State<V> {
    lru: LruCache<ModelKey, Lease<V>>,
    /// Loads under way, so concurrent misses join them.
    inflight: HashMap<ModelKey, LoadCell<V>>,
}

struct Inner<V> {
    budget: u64,
    /// How long an admission waits for in-use models to be released.
    wait: Duration,
    /// The LRU and the in-flight loads. A std Mutex: it is never held across
    /// an await or any I/O, only for map updates.
    state: Mutex<State<V>>,
    accounting: Arc<Accounting>,
    hits: AtomicU64,
    misses: AtomicU64,
    loads: AtomicU64,
    load_failures: AtomicU64,
    evictions: AtomicU64,
    /// Guaranteed bytes per team. Read on every eviction, replaced when the
    /// access policy changes.
    shares: RwLock<BTreeMap<String, u64>>,
}

/// The cache handle: cheap to clone, shared by every request.
pub struct ModelCache<V> {
    inner: Arc<Inner<V>>,
}

impl<V> Clone for ModelCache<V> {
    fn clone(&self) -> Self {
        ModelCache {
            inner: self.inner.clone(),
        }
    }
}

impl<V: CacheValue> ModelCache<V> {
    /// A cache holding at most `budget` bytes of models.
    pub fn new(budget: u64) -> ModelCache<V> {
        ModelCache::with_wait(budget, Duration::from_secs(10))
    }

    /// As [`ModelCache::new`], waiting at most `wait` for in-use models to be
    /// released when nothing idle is left to evict.
    pub fn with_wait(budget: u64, wait: Duration) -> ModelCache<V> {
        ModelCache {
            inner: Arc::new(Inner {
                budget,
                wait,
                state: Mutex::new(State {
                    lru: LruCache::unbounded(),
                    inflight: HashMap::new(),
                }),
                accounting: Arc::default(),
                hits: AtomicU64::new(0),
                misses: AtomicU64::new(0),
                loads: AtomicU64::new(0),
                load_failures: AtomicU64::new(0),
                evictions: AtomicU64::new(0),
                shares: RwLock::default(),
            }),
        }
    }

    pub fn budget(&self) -> u64 {
        self.inner.budget
    }

    /// Bytes of every loaded model still alive.
    pub fn bytes_used(&self) -> u64 {
        self.inner.accounting.used.load(Ordering::Acquire)
    }

    /// The cached model for `key` without loading it; marks it recently used
    /// and counts a hit. (A `None` counts nothing: the caller's
    /// [`ModelCache::get_or_load`] counts the miss.)
    pub fn get(&self, key: &ModelKey) -> Option<Lease<V>> {
        let lease = self.lock().lru.get(key).cloned();
        if lease.is_some() {
            self.inner.hits.fetch_add(1, Ordering::Relaxed);
        }
        lease
    }

    /// Whether `key` is cached, without touching its recency.
    pub fn contains(&self, key: &ModelKey) -> bool {
        self.lock().lru.contains(key)
    }

    /// Returns the cached model for `key`, or runs `load` to make it. `load`
    /// returns the value and the bytes it costs. Concurrent calls for one key run
    /// one `load` and share its outcome; if the loading request goes away, a
    /// waiting one takes the load over.
    ///
    /// ```
    /// # tokio::runtime::Runtime::new().unwrap().block_on(async {
    /// use model_router::cache::{CacheOutcome, ModelCache};
    /// use model_router::repository::ModelKey;
    /// struct Session(&'static str);
    /// impl model_router::cache::CacheValue for Session {}
    /// let cache = ModelCache::<Session>::new(100);
    /// let key = ModelKey::new("m", "1").unwrap();
    /// let (model, outcome) = cache.get_or_load(&key, || async { Ok((Session("s"), 40)) }).await.unwrap();
    /// assert_eq!((model.value().0, outcome), ("s", CacheOutcome::Miss));
    /// let (_, outcome) = cache.get_or_load(&key, || async { unreachable!() }).await.unwrap();
    /// assert_eq!(outcome, CacheOutcome::Hit);
    /// assert_eq!(cache.bytes_used(), 40);
    /// # });
    /// ```
    pub async fn get_or_load<F, Fut>(
        &self,
        key: &ModelKey,
        load: F,
    ) -> Result<(Lease<V>, CacheOutcome), Error>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<(V, u64), Error>>,
    {
        let cell = {
            let mut state = self.lock();
            if let Some(lease) = state.lru.get(key) {
                self.inner.hits.fetch_add(1, Ordering::Relaxed);
                return Ok((lease.clone(), CacheOutcome::Hit));
            }
            self.inner.misses.fetch_add(1, Ordering::Relaxed);
            state
                .inflight
                .entry(key.clone())
                .or_insert_with(|| Arc::new(OnceCell::new()))
                .clone()
        };
        let mut ran = false;
        let result = cell
            .get_or_init(|| {
                ran = true;
                self.load_and_admit(key, &cell, load)
            })
            .await
            .clone();
        let outcome = if ran {
            CacheOutcome::Miss
        } else {
            CacheOutcome::Joined
        };
        result.map(|lease| (lease, outcome))
    }

    async fn load_and_admit<F, Fut>(
        &self,
        key: &ModelKey,
        cell: &LoadCell<V>,
        load: F,
    ) -> Result<Lease<V>, Error>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<(V, u64), Error>>,
    {
        let result = self.load_then_admit(key, load).await;
        // A finished load must not be joined again: success is found in the
        // LRU from now on, failure is retried afresh. (A load abandoned half-way
        // leaves its cell empty in place; the next request to join it runs it.)
        let mut state = self.lock();
        if state
            .inflight
            .get(key)
            .is_some_and(|c| Arc::ptr_eq(c, cell))
        {
            state.inflight.remove(key);
        }
        result
    }

    async fn load_then_admit<F, Fut>(&self, key: &ModelKey, load: F) -> Result<Lease<V>, Error>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<(V, u64), Error>>,
    {
        self.inner.loads.fetch_add(1, Ordering::Relaxed);
        let (value, bytes) = match load().await {
            Ok(loaded) => loaded,
            Err(e) => {
                self.inner.load_failures.fetch_add(1, Ordering::Relaxed);
                return Err(e);
            }
        };
        let admitted = self.admit(key, value, bytes).await;
        if admitted.is_err() {
            self.inner.load_failures.fetch_add(1, Ordering::Relaxed);
        }
        admitted
    }

    /// Makes room for `bytes` more by evicting least recently used models, ahead
    /// of an expensive load, so memory stays near the budget while it runs.
    /// Best effort: admission checks again. Errors only when `bytes` alone
    /// exceeds the budget, in which case nothing is evicted.
    pub fn make_room(&self, key: &ModelKey, bytes: u64) -> Result<(), CacheError> {
        self.check_fits(key, bytes)?;
        let mut state = self.lock();
        while self.bytes_used() + bytes > self.inner.budget {
            if !self.evict_one(&mut state) {
                break;
            }
        }
        Ok(())
    }

    async fn admit(&self, key: &ModelKey, value: V, bytes: u64) -> Result<Lease<V>, Error> {
        self.check_fits(key, bytes)?;
        let deadline = tokio::time::Instant::now() + self.inner.wait;
        loop {
            let released = self.inner.accounting.released.notified();
            tokio::pin!(released);
            released.as_mut().enable();
            {
                let mut state = self.lock();
                while self.bytes_used() + bytes > self.inner.budget && self.evict_one(&mut state) {}
                if self.bytes_used() + bytes <= self.inner.budget {
                    // Charged under the lock, so two admissions cannot both fit
                    // into the same room. Releases only lower the count.
                    self.inner
                        .accounting
                        .used
                        .fetch_add(bytes, Ordering::AcqRel);
                    let lease = Arc::new(Cached {
                        key: key.clone(),
                        bytes,
                        value,
                        accounting: self.inner.accounting.clone(),
                    });
                    state.lru.put(key.clone(), lease.clone());
                    return Ok(lease);
                }
            }
            // Everything left is in use: wait for a request to finish with one.
            if tokio::time::timeout_at(deadline, released).await.is_err() {
                return Err(CacheError::Busy {
                    key: key.to_string(),
                    bytes,
                }
                .into());
            }
        }
    }

    fn check_fits(&self, key: &ModelKey, bytes: u64) -> Result<(), CacheError> {
        if bytes > self.inner.budget {
            return Err(CacheError::TooLarge {
                key: key.to_string(),
                bytes,
                budget: self.inner.budget,
            });
        }
        Ok(())
    }

    /// Sets each team's guaranteed share of the budget, as fractions.
    pub fn set_shares(&self, fractions: &BTreeMap<String, f64>) {
        let budget = self.inner.budget as f64;
        let bytes = fractions
            .iter()
            .map(|(team, f)| (team.clone(), (budget * f.clamp(0.0, 1.0)) as u64))
            .collect();
        *self.inner.shares.write().unwrap_or_else(|p| p.into_inner()) = bytes;
    }

    /// Evicts one model and returns whether there was one. The victim is the
    /// least recently used model, taken in this order of preference: idle and
    /// of a team over its share; in use and over its share (freed when its
    /// requests end); idle; in use.
    fn evict_one(&self, state: &mut State<V>) -> bool {
        let shares = self.inner.shares.read().unwrap_or_else(|p| p.into_inner());
        let mut usage: HashMap<&str, u64> = HashMap::new();
        for (_, lease) in state.lru.iter() {
            if let Some(team) = lease.value.team() {
                *usage.entry(team).or_default() += lease.bytes;
            }
        }
        let over_share = |lease: &Lease<V>| match lease.value.team() {
            Some(team) => {
                usage.get(team).copied().unwrap_or(0) > shares.get(team).copied().unwrap_or(0)
            }
            None => true,
        };
        let idle = |lease: &Lease<V>| Arc::strong_count(lease) == 1;
        // Lower ranks go first: over its team's share before within it, then
        // idle before in use. Among equals, the least recently used (the
        // iteration starts there and `min_by_key` keeps the first minimum).
        let rank = |lease: &Lease<V>| (u8::from(!over_share(lease)) << 1) | u8::from(!idle(lease));
        let victim = state
            .lru
            .iter()
            .rev()
            .min_by_key(|(_, lease)| rank(lease))
            .map(|(key, _)| key.clone());
        drop(shares);
        match victim {
            Some(key) => {
                state.lru.pop(&key);
                self.inner.evictions.fetch_add(1, Ordering::Relaxed);
                tracing::info!(model = %key, "evicted from the model cache");
                true
            }
            None => false,
        }
    }

    /// Removes `key` from the cache. Its memory is freed once no request uses
    /// it. Returns whether it was cached.
    pub fn evict(&self, key: &ModelKey) -> bool {
        let removed = self.lock().lru.pop(key).is_some();
        if removed {
            self.inner.evictions.fetch_add(1, Ordering::Relaxed);
        }
        removed
    }

    /// The cached keys, most recently used first.
    pub fn keys(&self) -> Vec<ModelKey> {
        self.lock().lru.iter().map(|(key, _)| key.clone()).collect()
    }

    pub fn status(&self) -> CacheStatus {
        let state = self.lock();
        let shares = self
            .inner
            .shares
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        let mut teams: BTreeMap<String, TeamUsage> = shares
            .iter()
            .map(|(team, share)| {
                (
                    team.clone(),
                    TeamUsage {
                        bytes_used: 0,
                        share_bytes: *share,
                    },
                )
            })
            .collect();
        let entries = state
            .lru
            .iter()
            .map(|(key, lease)| {
                let team = lease.value.team().map(str::to_string);
                if let Some(team) = &team {
                    teams.entry(team.clone()).or_default().bytes_used += lease.bytes;
                }
                EntryStatus {
                    model: key.to_string(),
                    bytes: lease.bytes,
                    team,
                    in_use: Arc::strong_count(lease) - 1,
                }
            })
            .collect();
        let count = |c: &AtomicU64| c.load(Ordering::Relaxed);
        CacheStatus {
            entries,
            bytes_used: self.bytes_used(),
            bytes_budget: self.inner.budget,
            hits: count(&self.inner.hits),
            misses: count(&self.inner.misses),
            loads: count(&self.inner.loads),
            load_failures: count(&self.inner.load_failures),
            evictions: count(&self.inner.evictions),
            teams,
        }
    }

    fn lock(&self) -> MutexGuard<'_, State<V>> {
        // Held only for map updates that cannot panic half-way; recover rather
        // than take every later request down with a poisoned lock.
        self.inner
            .state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::EngineError;
    use std::sync::atomic::AtomicUsize;

    impl CacheValue for usize {}

    fn key(n: usize) -> ModelKey {
        ModelKey::new(&format!("m{n}"), "1").unwrap()
    }

    async fn load(
        cache: &ModelCache<usize>,
        n: usize,
        bytes: u64,
    ) -> Result<(Lease<usize>, CacheOutcome), Error> {
        cache
            .get_or_load(&key(n), || async move { Ok((n, bytes)) })
            .await
    }

    #[tokio::test]
    async fn evicts_least_recently_used_and_stays_in_budget() {
        let cache = ModelCache::new(100);
        for round in 0..3 {
            for n in 0..5 {
                let (lease, outcome) = load(&cache, n, 40).await.unwrap();
                assert_eq!(*lease.value(), n);
                assert!(
                    cache.bytes_used() <= 100,
                    "round {round} model {n}: {}",
                    cache.bytes_used()
                );
                assert_eq!(
                    outcome,
                    CacheOutcome::Miss,
                    "two of 40 fit, cycling five always misses"
                );
            }
        }
        let status = cache.status();
        assert_eq!(
            status
                .entries
                .iter()
                .map(|e| e.model.as_str())
                .collect::<Vec<_>>(),
            ["m4/1", "m3/1"]
        );
        assert_eq!(status.bytes_used, 80);
        assert_eq!((status.loads, status.evictions), (15, 13));
    }

    #[tokio::test]
    async fn hits_refresh_recency() {
        let cache = ModelCache::new(100);
        load(&cache, 0, 40).await.unwrap();
        load(&cache, 1, 40).await.unwrap();
        assert_eq!(load(&cache, 0, 40).await.unwrap().1, CacheOutcome::Hit);
        load(&cache, 2, 40).await.unwrap();
        assert!(cache.contains(&key(0)) && !cache.contains(&key(1)));
    }

    #[tokio::test]
    async fn concurrent_misses_run_one_load() {
        let cache = ModelCache::<usize>::new(100);
        let loads = Arc::new(AtomicUsize::new(0));
        let tasks: Vec<_> = (0..8)
            .map(|_| {
                let (cache, loads) = (cache.clone(), loads.clone());
                tokio::spawn(async move {
                    cache
                        .get_or_load(&key(0), || async move {
                            loads.fetch_add(1, Ordering::SeqCst);
                            tokio::time::sleep(Duration::from_millis(50)).await;
                            Ok((7, 10))
                        })
                        .await
                })
            })
            .collect();
        let mut outcomes = Vec::new();
        for task in tasks {
            let (lease, outcome) = task.await.unwrap().unwrap();
            assert_eq!(*lease.value(), 7);
            outcomes.push(outcome);
        }
        assert_eq!(loads.load(Ordering::SeqCst), 1);
        assert_eq!(
            outcomes
                .iter()
                .filter(|o| **o == CacheOutcome::Miss)
                .count(),
            1
        );
        assert_eq!(cache.status().loads, 1);
    }

    #[tokio::test]
    async fn failures_are_shared_then_retried_and_never_cached() {
        let cache = ModelCache::<usize>::new(100);
        let err = cache
            .get_or_load(&key(0), || async {
                Err(EngineError::Load("corrupt".into()).into())
            })
            .await
            .unwrap_err();
        assert_eq!(err.code(), "model_load_failed");
        assert!(!cache.contains(&key(0)));
        assert_eq!(cache.bytes_used(), 0);
        // The next request loads afresh.
        assert_eq!(load(&cache, 0, 10).await.unwrap().1, CacheOutcome::Miss);
    }

    #[tokio::test]
    async fn a_model_larger_than_the_budget_evicts_nothing() {
        let cache = ModelCache::new(100);
        load(&cache, 0, 60).await.unwrap();
        let err = load(&cache, 1, 101).await.unwrap_err();
        assert_eq!(
            (err.code(), err.status().as_u16()),
            ("model_too_large", 507)
        );
        assert!(cache.contains(&key(0)));
        assert!(cache.make_room(&key(1), 101).is_err());
        assert!(cache.contains(&key(0)));
    }

    #[tokio::test]
    async fn an_evicted_model_in_use_stays_counted_until_released() {
        let cache = ModelCache::with_wait(100, Duration::from_secs(5));
        let (held, _) = load(&cache, 0, 60).await.unwrap();
        assert!(cache.evict(&key(0)));
        assert_eq!(cache.bytes_used(), 60, "still in use");
        assert_eq!(*held.value(), 0, "and still usable");
        // Admitting 60 more must wait for the release.
        let waiter = {
            let cache = cache.clone();
            tokio::spawn(async move { load(&cache, 1, 60).await.map(|(l, _)| *l.value()) })
        };
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(!waiter.is_finished());
        drop(held);
        assert_eq!(waiter.await.unwrap().unwrap(), 1);
        assert_eq!(cache.bytes_used(), 60);
    }

    #[tokio::test]
    async fn busy_when_in_use_models_are_never_released() {
        let cache = ModelCache::with_wait(100, Duration::from_millis(50));
        let (_held, _) = load(&cache, 0, 60).await.unwrap();
        let err = load(&cache, 1, 60).await.unwrap_err();
        assert_eq!((err.code(), err.status().as_u16()), ("cache_busy", 503));
        assert!(cache.bytes_used() <= 100);
    }

    #[tokio::test]
    async fn idle_models_are_evicted_before_ones_in_use() {
        let cache = ModelCache::new(100);
        let (_held, _) = load(&cache, 0, 40).await.unwrap();
        load(&cache, 1, 40).await.unwrap();
        load(&cache, 2, 40).await.unwrap();
        assert!(cache.contains(&key(0)), "m0 is older but in use");
        assert!(!cache.contains(&key(1)));
    }
}

#[cfg(test)]
mod share_tests {
    use super::*;

    struct Owned(&'static str);
    impl CacheValue for Owned {
        fn team(&self) -> Option<&str> {
            Some(self.0)
        }
    }

    fn key(team: &str, n: usize) -> ModelKey {
        ModelKey::new(&format!("{team}{n}"), "1").unwrap()
    }

    #[tokio::test]
    async fn a_team_within_its_share_keeps_its_model_while_another_floods() {
        let cache = ModelCache::<Owned>::new(1000);
        cache.set_shares(&BTreeMap::from([
            ("b".to_string(), 0.3),
            ("a".to_string(), 0.5),
        ]));
        let (b_model, _) = cache
            .get_or_load(&key("b", 0), || async { Ok((Owned("b"), 250)) })
            .await
            .unwrap();
        drop(b_model);
        for n in 0..40 {
            cache
                .get_or_load(&key("a", n), || async { Ok((Owned("a"), 200)) })
                .await
                .unwrap();
            assert!(
                cache.contains(&key("b", 0)),
                "b's model evicted while a flooded (after a{n})"
            );
            assert!(cache.bytes_used() <= 1000);
            // b keeps using its model: it is the most recently used, and still never the victim.
            if n % 3 == 0 {
                assert!(cache.get(&key("b", 0)).is_some());
            }
        }
        let status = cache.status();
        assert_eq!(
            status.teams["b"],
            TeamUsage {
                bytes_used: 250,
                share_bytes: 300
            }
        );
        assert!(status.teams["a"].bytes_used <= 750);
    }

    #[tokio::test]
    async fn a_team_over_its_share_loses_its_own_models_first() {
        let cache = ModelCache::<Owned>::new(1000);
        cache.set_shares(&BTreeMap::from([("b".to_string(), 0.2)]));
        // b goes over its 200-byte share with two models; a holds one older model.
        cache
            .get_or_load(&key("a", 0), || async { Ok((Owned("a"), 400)) })
            .await
            .unwrap();
        cache
            .get_or_load(&key("b", 0), || async { Ok((Owned("b"), 300)) })
            .await
            .unwrap();
        cache
            .get_or_load(&key("b", 1), || async { Ok((Owned("b"), 300)) })
            .await
            .unwrap();
        // Room for 300 more: a (no share, so over it) is least recent and goes first.
        cache
            .get_or_load(&key("b", 2), || async { Ok((Owned("b"), 300)) })
            .await
            .unwrap();
        assert!(!cache.contains(&key("a", 0)));
        // Next, b is the only team over its share: its least recently used goes.
        cache
            .get_or_load(&key("b", 3), || async { Ok((Owned("b"), 300)) })
            .await
            .unwrap();
        assert!(!cache.contains(&key("b", 0)) && cache.contains(&key("b", 1)));
    }
}
