//! The model service: the one code path every front door reaches after parsing
//! its route. It resolves a version, gets the model from the cache (staging,
//! verifying and loading it on a miss) and runs it.

use std::collections::HashMap;
use std::sync::{Arc, OnceLock, PoisonError};
use std::time::Instant;

use serde::Serialize;

use crate::cache::{CacheOutcome, CacheStatus, Lease, ModelCache};
use crate::config::Config;
use crate::engine::{
    Engine, EngineConfig, EngineError, LoadedModel, ModelFormat, OutputValue, Signature, Tensor,
};
use crate::error::{Error, RequestError};
use crate::identity::{AlbOidc, AlbVerifier, Caller};
use crate::memory::{MemorySplit, RequestMemory, Reservation};
use crate::policy::{Access, AccessControl, Policy, PolicyStatus};
use crate::repository::{
    FetchOptions, Manifest, ModelKey, ModelName, Repository, RepositoryError, ResolvedModel,
    StageSource, Staged, Staging, StagingStats,
};

/// A loaded model as the cache holds it.
pub struct Model {
    pub key: ModelKey,
    pub manifest: Manifest,
    pub loaded: LoadedModel,
    /// Where its verified bytes came from (the repository, or this process's copy).
    pub stage_source: StageSource,
    pub stage_ms: f64,
    pub load_ms: f64,
    /// The team whose cache share this model counts against (see `Policy::team_for`).
    pub team: Option<String>,
}

impl crate::cache::CacheValue for Model {
    fn team(&self) -> Option<&str> {
        self.team.as_deref()
    }
}

/// How a request got its model, for logs and metrics.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct LoadInfo {
    pub outcome: CacheOutcome,
    /// Milliseconds spent copying and hashing into staging (this request's load only).
    pub stage_ms: f64,
    /// Milliseconds spent creating the ONNX Runtime session (this request's load only).
    pub load_ms: f64,
    /// On a miss, whether the staged copy was reused.
    pub staged_reused: bool,
    /// Bytes the model is charged in the cache.
    pub model_bytes: u64,
}

/// The answer to a prediction.
#[derive(Debug)]
pub struct Prediction {
    pub key: ModelKey,
    pub outputs: Vec<(String, OutputValue)>,
    pub load: LoadInfo,
    /// Running the model, without the wait for a free session.
    pub inference_ms: f64,
    /// The request memory its tensors and response are counted in; held
    /// until the prediction (and the response made from it) is dropped.
    pub memory: Reservation,
    /// Waiting for a free session of the model's pool (0 when one was free).
    pub queue_ms: f64,
}

/// A model a warm (or preload) got into the cache.
#[derive(Debug, Clone, Serialize)]
pub struct Warmed {
    pub model: String,
    /// Bytes it is charged in the cache.
    pub bytes: u64,
    /// Whether this warm loaded it (false: it was already cached).
    pub loaded: bool,
}

/// Outcome of warming one model.
#[derive(Debug, Clone, Serialize)]
pub struct WarmFailure {
    pub model: String,
    pub code: &'static str,
    pub error: String,
}

/// The shared state of the router: built once at start-up, cheap to clone.
#[derive(Clone)]
pub struct ModelService {
    inner: Arc<Inner>,
}

struct Inner {
    config: Config,
    repository: Repository,
    staging: Staging,
    cache: ModelCache<Model>,
    /// ONNX Runtime, started on a thread of its own by [`ModelService::new`]
    /// so that its start-up (loading the library, creating the environment:
    /// ~15-20 ms) overlaps whatever comes before the first session is needed:
    /// the runtime's set-up, the first event, and above all reading and
    /// hashing the first model. Loads wait for it ([`OnceLock::wait`]).
    engine: Arc<OnceLock<Result<Engine, EngineError>>>,
    /// Preloads that failed, kept for `status`.
    preload_failures: std::sync::Mutex<Vec<WarmFailure>>,
    /// The team policy (ACCESS_POLICY), re-read when its file changes.
    access: AccessControl,
    /// The policy whose cache shares are applied, to notice a reload.
    shares_applied: std::sync::Mutex<Option<Arc<Policy>>>,
    /// Verifies ALB OIDC tokens (ALB_OIDC_SIGNER), or why it cannot.
    alb: Result<AlbVerifier, String>,
    /// How the memory limit is split (src/memory.rs): set by the thread that
    /// starts ONNX Runtime, right after it has (the split's baseline is the
    /// process with ONNX Runtime loaded and no model), whether or not it could.
    memory: Arc<OnceLock<MemorySplit>>,
    /// The split measured at start-up, before ONNX Runtime loaded: in force
    /// until `memory` is set, so that no request waits for ONNX Runtime to
    /// reserve its buffers (and ONNX Runtime's start overlaps the first load).
    provisional_memory: MemorySplit,
    /// The router's request buffers, reserved per request; made from the
    /// provisional split, resized to the final one when it is known.
    request_memory: RequestMemory,
    /// Signatures, last load failures and inference statistics per version
    /// (readiness, metadata without a load, Triton's statistics).
    versions: crate::status::VersionRegistry,
    /// What each model version's first load measured it to cost, by key and
    /// sha256, so that a reload after an eviction skips the probe run
    /// ([`Engine::reload_bytes`]). A few dozen bytes a version ever loaded.
    footprints: std::sync::Mutex<HashMap<(ModelKey, String), u64>>,
    /// True from start-up until `PRELOAD_MODELS` has been warmed: the server
    /// is live but not ready meanwhile.
    preloading: std::sync::atomic::AtomicBool,
    /// Held by the readiness probe of the repository while it runs (by its
    /// blocking thread, until the listing returns): at most one probe at a
    /// time, so a hung mount holds one blocked thread, not one per health
    /// check; concurrent checks wait for it, within their limit.
    probing: Arc<tokio::sync::Mutex<()>>,
}

impl ModelService {
    /// Opens the repository and staging directory and starts ONNX Runtime.
    pub fn new(config: Config) -> Result<ModelService, Error> {
        let repository = Repository::open(&config.model_root)?.with_resolve_ttl(config.resolve_ttl);
        let staging = Staging::open(&config.staging_dir, config.staging_bytes)?;
        let engine_config = EngineConfig {
            dylib_path: crate::engine::find_library(config.ort_dylib_path.as_deref())?,
            intra_threads: config.intra_threads,
        };
        let engine = Arc::new(OnceLock::new());
        let memory = Arc::new(OnceLock::new());
        let provisional_memory = MemorySplit::new(
            config.memory_limit,
            config.memory_limit_source,
            config.cache_bytes,
            current_rss(),
        );
        let request_memory = RequestMemory::new(&provisional_memory);
        let start = {
            let (engine, memory, request_memory) =
                (engine.clone(), memory.clone(), request_memory.clone());
            let (limit, source, cache_bytes) = (
                config.memory_limit,
                config.memory_limit_source,
                config.cache_bytes,
            );
            move || {
                let started = Instant::now();
                let started_engine = Engine::init(&engine_config).and_then(|engine| {
                    let split = memory_split(&engine, limit, source, cache_bytes)?;
                    Ok((engine, split))
                });
                let ms = started.elapsed().as_secs_f64() * 1e3;
                let split = match started_engine {
                    Ok((started_engine, split)) => {
                        tracing::info!(ms, ?split, "onnxruntime started; memory split");
                        let _ = engine.set(Ok(started_engine));
                        split
                    }
                    Err(e) => {
                        tracing::error!(ms, error = %e, "onnxruntime failed to start");
                        let _ = engine.set(Err(e));
                        // Requests still need their buffers accounted (and
                        // waiters released): the split without ONNX Runtime.
                        MemorySplit::new(limit, source, cache_bytes, current_rss())
                    }
                };
                request_memory.resize(&split);
                let _ = memory.set(split);
            }
        };
        if let Err(e) = std::thread::Builder::new()
            .name("onnxruntime-start".into())
            .spawn(start)
        {
            return Err(Error::Engine(EngineError::Library {
                path: config.ort_dylib_path.clone().unwrap_or_default(),
                reason: format!("cannot start a thread for ONNX Runtime: {e}"),
            }));
        }
        let cache = ModelCache::new(config.cache_bytes);
        let access = AccessControl::new(
            config.access_policy.as_deref(),
            config.policy_reload_interval,
        );
        let alb = match config.alb_oidc_signer.as_deref() {
            Some(signer) => AlbVerifier::new(signer, config.alb_oidc_keys_url.as_deref()),
            None => Err(crate::identity::ALB_SIGNER_UNSET.to_string()),
        };
        if let (Some(_), Err(why)) = (&config.alb_oidc_signer, &alb) {
            tracing::error!("ALB OIDC tokens will be refused: {why}");
        }
        let preloading = std::sync::atomic::AtomicBool::new(!config.preload.is_empty());
        let service = ModelService {
            inner: Arc::new(Inner {
                versions: Default::default(),
                footprints: Default::default(),
                preloading,
                probing: Default::default(),
                config,
                repository,
                staging,
                cache,
                engine,
                preload_failures: Default::default(),
                access,
                shares_applied: Default::default(),
                alb,
                memory,
                provisional_memory,
                request_memory,
            }),
        };
        // Apply the shares of the policy read at start-up.
        let _ = service.access();
        Ok(service)
    }

    /// The policy in force, applying its cache shares when it changed.
    fn access(&self) -> Access {
        let access = self.inner.access.current();
        if let Access::Policy(policy) = &access {
            let mut applied = self
                .inner
                .shares_applied
                .lock()
                .unwrap_or_else(|p| p.into_inner());
            if !applied.as_ref().is_some_and(|a| Arc::ptr_eq(a, policy)) {
                self.inner.cache.set_shares(&policy.shares());
                *applied = Some(policy.clone());
            }
        }
        access
    }

    pub fn policy_status(&self) -> PolicyStatus {
        self.inner.access.status()
    }

    /// The caller of `request`, as far as the front door authenticated it. An
    /// ALB OIDC token that the policy says to believe but that does not verify
    /// is refused: 403.
    pub async fn caller_of(&self, request: &http::Request<bytes::Bytes>) -> Result<Caller, Error> {
        let trust_alb = matches!(self.inner.access.current(), Access::Policy(p) if p.alb_oidc);
        let alb = match (&self.inner.alb, trust_alb) {
            (_, false) => AlbOidc::Ignored,
            (Ok(verifier), true) => AlbOidc::Verified(verifier),
            (Err(why), true) => AlbOidc::Unconfigured(why),
        };
        Caller::of(request, alb)
            .await
            .map_err(|e| RequestError::Forbidden(e.to_string()).into())
    }

    /// Whether `caller` may use `name` at `version` (DESIGN section 8). Decided
    /// before the repository is touched whenever the policy's model lists
    /// decide it; only a caller in some team whose lists do not name the model
    /// has the manifest read, to see whether one of its teams owns it. A refusal
    /// never says whether the model exists.
    pub async fn authorize(&self, caller: &Caller, name: &str, version: &str) -> Result<(), Error> {
        let policy = match self.access() {
            Access::Open => return Ok(()),
            Access::Unavailable(message) => {
                return Err(RequestError::PolicyUnavailable(message).into());
            }
            Access::Policy(policy) => policy,
        };
        let teams: Vec<String> = policy
            .teams_of(caller)
            .into_iter()
            .map(str::to_string)
            .collect();
        if teams.is_empty() {
            return Err(RequestError::Forbidden(format!(
                "{} belongs to no team of the access policy, so may use no model",
                caller.describe()
            ))
            .into());
        }
        let team_refs: Vec<&str> = teams.iter().map(String::as_str).collect();
        if policy.grants(&team_refs, name) {
            return Ok(());
        }
        let forbidden = || -> Error {
            RequestError::Forbidden(format!(
                "{} (team {}) may not use model {name:?}",
                caller.describe(),
                teams.join(", ")
            ))
            .into()
        };
        let Ok(model_name) = ModelName::new(name) else {
            return Err(forbidden());
        };
        let what = format!("reading the owner of model {model_name}");
        let version = version.to_string();
        let owner = self
            .repository_call(what, move |repository| {
                Ok(repository
                    .resolve(&model_name, &version)
                    .map(|m| m.manifest.team))
            })
            .await?;
        match owner {
            Ok(Some(owner)) if teams.contains(&owner) => Ok(()),
            _ => Err(forbidden()),
        }
    }

    pub fn config(&self) -> &Config {
        &self.inner.config
    }

    /// ONNX Runtime, once started: waits (blocking) for it; its start-up error
    /// if it could not start.
    pub fn engine(&self) -> Result<&Engine, Error> {
        self.inner
            .engine
            .wait()
            .as_ref()
            .map_err(|e| Error::Engine(e.clone()))
    }

    /// Waits for ONNX Runtime to be started, off the async threads: the front
    /// doors call it before they take traffic, so a missing library fails
    /// start-up rather than the first request.
    pub async fn engine_ready(&self) -> Result<(), Error> {
        let service = self.clone();
        blocking(move || service.engine().map(|_| ())).await?
    }

    pub fn repository(&self) -> &Repository {
        &self.inner.repository
    }

    pub fn cache_status(&self) -> CacheStatus {
        self.inner.cache.status()
    }

    pub fn staging_stats(&self) -> StagingStats {
        self.inner.staging.stats()
    }

    /// Waits (blocking) until every staged copy a load started has been
    /// written, at most `timeout`; whether they all have.
    pub fn wait_for_staging(&self, timeout: std::time::Duration) -> bool {
        self.inner.staging.wait_for_writes(timeout)
    }

    /// How the process's memory limit is split (README, "Memory"); until
    /// ONNX Runtime has started, the split measured before it loaded.
    pub fn memory_split(&self) -> MemorySplit {
        self.inner
            .memory
            .get()
            .copied()
            .unwrap_or(self.inner.provisional_memory)
    }

    /// Bytes of request buffers reserved now.
    pub fn request_memory_reserved(&self) -> u64 {
        self.inner.request_memory.reserved_bytes()
    }

    /// Reserves `bytes` of request memory for parsing a body, what its
    /// census bounds (see [`crate::http::parse::bound_before_model`]).
    pub async fn reserve_body(&self, bytes: u64) -> Result<Reservation, Error> {
        Ok(self.inner.request_memory.reserve(bytes).await?)
    }

    /// The model `name` at `version` (a version, `latest` or an alias), loaded.
    ///
    /// A concrete version already cached is answered without touching the
    /// repository at all.
    pub async fn model(
        &self,
        name: &str,
        version: &str,
    ) -> Result<(Lease<Model>, LoadInfo), Error> {
        let name = ModelName::new(name)?;
        let direct = ModelKey::from_parts(name.clone(), version.to_string())?;
        if let Some(lease) = self.inner.cache.get(&direct) {
            return Ok(self.count_hit(lease));
        }
        // `latest` or an alias resolved a moment ago: no repository round trip.
        if let Some(concrete) = self.inner.repository.remembered(&name, version)
            && let Ok(key) = ModelKey::from_parts(name.clone(), concrete)
            && let Some(lease) = self.inner.cache.get(&key)
        {
            return Ok(self.count_hit(lease));
        }
        let resolved = self.resolve(name.as_str(), version).await?;
        self.load(resolved).await
    }

    /// Blocking repository work (`list`, `versions`, `resolve`) off the async
    /// threads, under the same deadline as a load: a stalled network
    /// filesystem answers 503 `load_timeout` instead of hanging the request.
    pub async fn repository_call<T: Send + 'static>(
        &self,
        what: String,
        work: impl FnOnce(&Repository) -> Result<T, RepositoryError> + Send + 'static,
    ) -> Result<T, Error> {
        let repository = self.inner.repository.clone();
        Ok(self
            .within_deadline(what, blocking(move || work(&repository)))
            .await??)
    }

    /// `work`, or a 503 `load_timeout` once MODEL_LOAD_TIMEOUT_SECONDS pass (0:
    /// no limit). Blocking file I/O cannot be interrupted: work that times out
    /// goes on in the background, and only this request stops waiting for it.
    pub async fn within_deadline<T>(
        &self,
        what: String,
        work: impl Future<Output = Result<T, Error>>,
    ) -> Result<T, Error> {
        let limit = self.inner.config.load_timeout;
        if limit.is_zero() {
            return work.await;
        }
        match tokio::time::timeout(limit, work).await {
            Ok(result) => result,
            Err(_) => {
                tracing::warn!(what, seconds = limit.as_secs_f64(), "timed out");
                Err(RepositoryError::Timeout {
                    what,
                    seconds: limit.as_secs_f64(),
                }
                .into())
            }
        }
    }

    /// Loads one concrete version (for warm and preload).
    pub async fn load_key(&self, key: &ModelKey) -> Result<(Lease<Model>, LoadInfo), Error> {
        if let Some(lease) = self.inner.cache.get(key) {
            return Ok(self.count_hit(lease));
        }
        let what = format!("reading model {key}");
        let key = key.clone();
        let resolved = self
            .repository_call(what, move |repository| repository.read(&key))
            .await?;
        self.load(resolved).await
    }

    fn count_hit(&self, lease: Lease<Model>) -> (Lease<Model>, LoadInfo) {
        let info = LoadInfo {
            outcome: CacheOutcome::Hit,
            stage_ms: 0.0,
            load_ms: 0.0,
            staged_reused: false,
            model_bytes: lease.bytes(),
        };
        (lease, info)
    }

    async fn load(&self, resolved: ResolvedModel) -> Result<(Lease<Model>, LoadInfo), Error> {
        let key = resolved.key.clone();
        let service = self.clone();
        // The load runs in a task of its own, so a request that stops waiting
        // (its deadline, a client gone) never cancels it: concurrent and later
        // requests join it, and it caches the model when it finishes.
        let loading = tokio::spawn(async move {
            let inner = service.clone();
            service
                .inner
                .cache
                .get_or_load(&resolved.key.clone(), || async move {
                    let key = resolved.key.clone();
                    let registry = inner.clone();
                    let loaded = blocking(move || inner.load_blocking(resolved)).await?;
                    match &loaded {
                        Ok((model, _)) => registry
                            .inner
                            .versions
                            .loaded(&key, model.loaded.signature()),
                        Err(e) => registry.inner.versions.load_failed(&key, &e.to_string()),
                    }
                    loaded
                })
                .await
        });
        let joined = async {
            loading.await.map_err(|e| {
                Error::Engine(EngineError::Inference(format!(
                    "internal error while loading: {e}"
                )))
            })?
        };
        let (lease, outcome) = self
            .within_deadline(format!("loading model {key}"), joined)
            .await?;
        let model = lease.value();
        let info = LoadInfo {
            outcome,
            stage_ms: if outcome == CacheOutcome::Miss {
                model.stage_ms
            } else {
                0.0
            },
            load_ms: if outcome == CacheOutcome::Miss {
                model.load_ms
            } else {
                0.0
            },
            staged_reused: model.stage_source.reused(),
            model_bytes: lease.bytes(),
        };
        Ok((lease, info))
    }

    /// Stage (verify), make room, create the session. Runs on a blocking thread.
    fn load_blocking(&self, resolved: ResolvedModel) -> Result<(Model, u64), Error> {
        let inner = &self.inner;
        let key = resolved.key.clone();
        let started = Instant::now();
        let (format, staged) = self.verified_bytes(&resolved)?;
        let stage_source = staged.source;
        let stage_ms = started.elapsed().as_secs_f64() * 1e3;
        // Only a verified model may push others out.
        inner.cache.make_room(&key, resolved.manifest.size)?;
        // Usually started long ago; at a cold start, while the file was read.
        let engine = self.engine()?;
        let started = Instant::now();
        let measured = (key.clone(), resolved.manifest.sha256.clone());
        let known = inner
            .footprints
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(&measured)
            .copied();
        let mut loaded = match known {
            Some(footprint) => {
                engine.reload_bytes(staged.bytes.clone(), format, &key.to_string(), footprint)?
            }
            None => {
                let loaded = engine.load_bytes(staged.bytes.clone(), format, &key.to_string())?;
                inner
                    .footprints
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .insert(measured, loaded.footprint_bytes());
                loaded
            }
        };
        // Extra sessions only as far as the budget leaves room beside the first.
        let room = inner
            .cache
            .budget()
            .saturating_sub(loaded.footprint_bytes());
        let sessions = inner.config.sessions_per_model;
        loaded.add_sessions(engine, &staged.bytes, sessions, room)?;
        let load_ms = started.elapsed().as_secs_f64() * 1e3;
        let bytes = loaded
            .footprint_bytes()
            .saturating_add(loaded.extra_session_bytes())
            .saturating_add(SERVICE_BYTES_PER_MODEL);
        let team = match self.access() {
            Access::Policy(policy) => {
                policy.team_for(key.name().as_str(), resolved.manifest.team.as_deref())
            }
            _ => resolved.manifest.team.clone(),
        };
        tracing::info!(model = %key, bytes, stage_ms, load_ms, source = ?stage_source, team = team.as_deref(), "model loaded");
        Ok((
            Model {
                key,
                manifest: resolved.manifest,
                loaded,
                stage_source,
                stage_ms,
                load_ms,
                team,
            },
            bytes,
        ))
    }

    /// Runs `name`/`version` on `inputs`, giving `outputs` (all when `None`).
    ///
    /// `held`: request memory the request already holds (for parsing its
    /// body, [`ModelService::reserve_body`], grown to cover `inputs` before
    /// they were read); the prediction grows it to cover the outputs and the
    /// response too, so one request never waits on itself. Without it, the
    /// inputs are counted here.
    pub async fn predict(
        &self,
        lease: Lease<Model>,
        load: LoadInfo,
        inputs: Vec<(String, Tensor)>,
        outputs: Option<Vec<String>>,
        held: Option<Reservation>,
    ) -> Result<Prediction, Error> {
        let started = Instant::now();
        let key = lease.key().clone();
        // Refused before it runs when its inputs and the outputs its
        // signature tells cannot fit; topped up (or refused) once the run has
        // told the real output sizes, before they are copied.
        let expected = crate::memory::expected_outputs(lease.value().loaded.signature(), &inputs);
        let base = match &held {
            Some(held) => held.bytes(),
            None => crate::memory::input_bytes(&inputs),
        };
        let need = base + crate::memory::output_bytes(&expected);
        let memory = match held {
            Some(held) => {
                held.grow_waiting(need).await?;
                held
            }
            None => self.inner.request_memory.reserve(need).await?,
        };
        // The lease is held until the run ends: the model stays alive (and
        // counted) even if it is evicted meanwhile.
        let (outputs, memory) = run_inference(move || {
            let outputs = lease.value().loaded.run_admitted(
                inputs,
                outputs.as_deref(),
                &memory.post_check(base),
            );
            (outputs, memory)
        })
        .await?;
        if let Some(refused) = memory.take_refusal() {
            return Err(refused.into());
        }
        let (outputs, queued) = outputs?;
        let queue_ms = queued.as_secs_f64() * 1e3;
        Ok(Prediction {
            key,
            outputs,
            load,
            inference_ms: (started.elapsed().as_secs_f64() * 1e3 - queue_ms).max(0.0),
            memory,
            queue_ms,
        })
    }

    /// Loads each model, reporting every outcome; never stops at the first failure.
    pub async fn warm(&self, models: &[String]) -> (Vec<Warmed>, Vec<WarmFailure>) {
        let mut warmed = Vec::new();
        let mut failed = Vec::new();
        for spec in models {
            let outcome = match ModelKey::parse(spec) {
                Ok(key) => self.load_key(&key).await.map(|(_, info)| info),
                Err(e) => Err(e.into()),
            };
            match outcome {
                Ok(info) => warmed.push(Warmed {
                    model: spec.clone(),
                    bytes: info.model_bytes,
                    loaded: info.outcome != CacheOutcome::Hit,
                }),
                Err(e) => failed.push(WarmFailure {
                    model: spec.clone(),
                    code: e.code(),
                    error: e.to_string(),
                }),
            }
        }
        (warmed, failed)
    }

    /// Warms `PRELOAD_MODELS`, logging and keeping each failure for `status`.
    /// Returns the models it warmed.
    pub async fn preload(&self) -> Vec<Warmed> {
        if self.inner.config.preload.is_empty() {
            return Vec::new();
        }
        let (warmed, failed) = self.warm(&self.inner.config.preload).await;
        for failure in &failed {
            tracing::error!(model = %failure.model, code = failure.code, error = %failure.error, "preload failed");
        }
        let names: Vec<&str> = warmed.iter().map(|w| w.model.as_str()).collect();
        tracing::info!(warmed = ?names, failed = failed.len(), "preload done");
        *self
            .inner
            .preload_failures
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = failed;
        self.inner
            .preloading
            .store(false, std::sync::atomic::Ordering::Release);
        warmed
    }

    pub fn preload_failures(&self) -> Vec<WarmFailure> {
        self.inner
            .preload_failures
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Evicts models from memory. Returns the ones that were cached. The
    /// allocator gives the freed pages back to the system right away.
    pub fn evict(&self, models: &[String]) -> Vec<String> {
        let evicted: Vec<String> = models
            .iter()
            .filter(|spec| {
                ModelKey::parse(spec)
                    .map(|key| self.inner.cache.evict(&key))
                    .unwrap_or(false)
            })
            .cloned()
            .collect();
        crate::engine::release_free_memory();
        evicted
    }

    /// Which concrete versions are in memory now.
    pub fn is_cached(&self, key: &ModelKey) -> bool {
        self.inner.cache.contains(key)
    }

    /// The signature of a model, without admitting it to the cache: the one
    /// remembered from its last load (cached or since evicted), else read by
    /// creating a session from its verified staged copy that is dropped at
    /// once, never charged to the cache and never evicting anything. So
    /// metadata and model configuration never push hot models out.
    pub async fn signature(
        &self,
        name: &str,
        version: &str,
    ) -> Result<(ModelKey, Signature), Error> {
        let resolved = self.resolve(name, version).await?;
        if let Some(signature) = self.inner.versions.signature(&resolved.key) {
            return Ok((resolved.key, signature));
        }
        let service = self.clone();
        let what = format!("reading the signature of model {}", resolved.key);
        self.within_deadline(what, async move {
            blocking(move || service.inspect_blocking(resolved)).await?
        })
        .await
    }

    /// `name` at `version` (a version, `latest` or an alias) resolved to a
    /// concrete version and its manifest.
    pub async fn resolve(&self, name: &str, version: &str) -> Result<ResolvedModel, Error> {
        let name = ModelName::new(name)?;
        let what = format!("reading model {name} version {version}");
        let version = version.to_string();
        self.repository_call(what, move |repository| repository.resolve(&name, &version))
            .await
    }

    /// The verified bytes of `resolved` and its format, for a load or an
    /// inspection: a model that can never fit the cache is refused before a
    /// byte of it is read. Blocking.
    fn verified_bytes(&self, resolved: &ResolvedModel) -> Result<(ModelFormat, Staged), Error> {
        let inner = &self.inner;
        let key = &resolved.key;
        if resolved.manifest.size > inner.cache.budget() {
            return Err(crate::cache::CacheError::TooLarge {
                key: key.to_string(),
                bytes: resolved.manifest.size,
                budget: inner.cache.budget(),
            }
            .into());
        }
        let format = ModelFormat::from_file_name(&resolved.manifest.file).ok_or_else(|| {
            RepositoryError::InvalidManifest {
                key: key.to_string(),
                reason: "file must end in .ort or .onnx".into(),
            }
        })?;
        let fetch = FetchOptions {
            readers: inner.config.fetch_readers,
            ..FetchOptions::default()
        };
        Ok((format, inner.staging.stage(resolved, fetch)?))
    }

    /// Stage (verify) and open a session only to read its signature (see
    /// [`ModelService::signature`]). Runs on a blocking thread.
    fn inspect_blocking(&self, resolved: ResolvedModel) -> Result<(ModelKey, Signature), Error> {
        let key = resolved.key.clone();
        let (format, staged) = self.verified_bytes(&resolved)?;
        let loaded = self
            .engine()?
            .load_bytes(staged.bytes, format, &key.to_string());
        let signature = match loaded {
            Ok(loaded) => loaded.signature().clone(),
            Err(e) => {
                self.inner.versions.load_failed(&key, &e.to_string());
                return Err(e.into());
            }
        };
        self.inner.versions.loaded(&key, &signature);
        Ok((key, signature))
    }

    /// Per-version signatures, load failures and inference statistics.
    pub fn versions(&self) -> &crate::status::VersionRegistry {
        &self.inner.versions
    }

    /// Whether `PRELOAD_MODELS` is still being warmed.
    pub fn preloading(&self) -> bool {
        self.inner
            .preloading
            .load(std::sync::atomic::Ordering::Acquire)
    }

    /// Whether the repository's root can be listed now, within `limit` (a
    /// hung mount counts as unreadable, and the answer never waits longer).
    /// While an earlier probe is stuck, later ones wait for it and give up
    /// at their limit.
    pub async fn repository_readable(&self, limit: std::time::Duration) -> bool {
        let root = self.inner.repository.root().to_path_buf();
        let probing = self.inner.probing.clone();
        let probe = async move {
            let held = probing.lock_owned().await;
            blocking(move || {
                let _held = held;
                std::fs::read_dir(&root)
                    .and_then(|mut entries| entries.next().transpose().map(|_| ()))
            })
            .await
        };
        matches!(tokio::time::timeout(limit, probe).await, Ok(Ok(Ok(()))))
    }
}

/// Runs a session. On a multi-thread runtime, in place on this worker
/// (`block_in_place` hands the worker's other tasks to another thread), which
/// saves the ~20 µs round trip to a blocking-pool thread that `spawn_blocking`
/// costs; that hop was a third of a warm single-row invocation
/// (benches/predict.rs). Elsewhere (a current-thread runtime), on the blocking
/// pool. Either way a panic becomes an error for this request, not a crash.
async fn run_inference<T: Send + 'static>(
    work: impl FnOnce() -> T + Send + 'static,
) -> Result<T, Error> {
    match tokio::runtime::Handle::current().runtime_flavor() {
        tokio::runtime::RuntimeFlavor::MultiThread => tokio::task::block_in_place(|| {
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(work))
        })
        .map_err(|_| {
            Error::Engine(EngineError::Inference(
                "internal error: the model run panicked".into(),
            ))
        }),
        _ => blocking(work).await,
    }
}

/// Runs blocking work (file I/O, hashing, ONNX Runtime) off the async threads.
/// A panic in it becomes an error for this request, not a crash.
async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> T + Send + 'static,
) -> Result<T, Error> {
    tokio::task::spawn_blocking(work).await.map_err(|e| {
        Error::Engine(EngineError::Inference(format!(
            "internal error in a worker thread: {e}"
        )))
    })
}

/// What the service keeps for each loaded model beside its sessions (its
/// cache entry, version record and metrics series) and the allocator's
/// rounding of a small model's many small allocations, which the session's
/// footprint does not count: charged with every model. Measured through the
/// real server (tests/admin.rs, `charges_match_what_the_process_gains_within_ten_percent`):
/// 200 copies of a 4 KB `.ort` model grew the process 10% more than their
/// footprints (7 KiB each); with this, within 2%.
const SERVICE_BYTES_PER_MODEL: u64 = 8 << 10;

/// The memory split of a process whose ONNX Runtime has just started: its
/// baseline is what the process holds now, with ONNX Runtime loaded and no
/// model; under a limit, ONNX Runtime's runs get their bounded arena.
fn memory_split(
    engine: &Engine,
    limit: Option<u64>,
    source: &'static str,
    cache_bytes: u64,
) -> Result<MemorySplit, EngineError> {
    let memory = MemorySplit::new(limit, source, cache_bytes, current_rss());
    if memory.limit_bytes.is_some() {
        // At least 16 MiB, so that a misconfigured split still runs small
        // requests (the warning says why larger ones fail).
        engine.limit_run_memory(memory.run_arena_bytes.max(16 << 20))?;
        if memory.request_headroom_bytes < 64 << 20 {
            tracing::warn!(
                ?memory,
                "the memory limit leaves under 64 MiB for requests: lower MODEL_CACHE_BYTES or raise MEMORY_LIMIT_BYTES"
            );
        }
    }
    Ok(memory)
}

/// The process's resident memory now, after giving free pages back.
fn current_rss() -> u64 {
    crate::engine::release_free_memory();
    crate::engine::process_memory().rss_bytes
}
