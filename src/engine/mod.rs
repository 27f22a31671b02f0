//! The inference engine: the only module that talks to ONNX Runtime (through `ort`).
//!
//! [`Engine`] owns the process's one ONNX Runtime environment; [`Engine::load`]
//! turns a verified local model file into a [`LoadedModel`], whose
//! [`LoadedModel::run`] checks a request's tensors against the model's
//! [`Signature`] and runs them. Everything outside this module sees only the
//! plain types of [`tensor`].
//!
//! Memory, which is what a byte-bounded cache of many models cares about:
//! - `.ort` files are used zero-copy: ONNX Runtime reads the model, weights
//!   included, straight from a read-only mapping of the file that lives as long
//!   as the session.
//! - `.onnx` files are parsed from a mapping that is dropped once the session
//!   exists (ONNX Runtime keeps its own copy of the weights).
//! - Each session's own CPU memory arena is off, so a freed session gives its
//!   memory back instead of keeping it pooled inside ONNX Runtime. Under a
//!   run memory limit ([`Engine::limit_run_memory`]) sessions share one
//!   environment arena with a hard `max_mem` instead, shrunk after every run
//!   (src/engine/arena.rs).
//! - What a load costs is counted by the allocator on the loading thread
//!   (src/engine/footprint.rs).
//! - All sessions share one intra-op thread pool, created with the environment.

mod arena;
mod convert;
mod footprint;
mod pool;
pub mod tensor;

#[cfg(test)]
mod tests;

use std::borrow::Cow;
use std::fmt;
use std::fs::{self, File};
use std::panic::{self, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock, PoisonError};

use memmap2::Mmap;
use ort::environment::{Environment, GlobalThreadPoolOptions};
use ort::ep;
use ort::logging::LogLevel;
use ort::session::{OutputSelector, RunOptions, Session};

pub use footprint::{
    ProcessMemory, ThreadMeter, ThreadPeak, anon_rss_bytes, process_memory, release_free_memory,
};
pub use tensor::*;

/// The post-check [`LoadedModel::run_admitted`] asks before copying outputs:
/// called first with every tensor output's extent, then, as sequences and
/// maps are read (their size is not in their type), with each sequence's
/// length and each item's extent, before that item is copied. Each call
/// adds to what the earlier ones admitted; `Err(reason)` refuses.
pub type Admit<'a> = dyn Fn(&[OutputExtent]) -> Result<(), String> + Sync + 'a;

/// The file name ONNX Runtime's shared library goes by on Linux.
const LIBRARY_NAME: &str = "libonnxruntime.so";

/// What to tell a user whose ONNX Runtime library cannot be found or loaded.
const LIBRARY_HINT: &str = "run scripts/setup-ort.sh or set ORT_DYLIB_PATH";

/// Where the engine finds ONNX Runtime and how many threads it gives it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EngineConfig {
    /// `libonnxruntime.so` to load, usually from [`find_library`]. A bare file
    /// name is left to the system loader (`LD_LIBRARY_PATH`, `/opt/lib` on Lambda).
    pub dylib_path: PathBuf,
    /// Threads in the one intra-op pool every session shares; `0` lets ONNX
    /// Runtime choose (one per core it sees).
    pub intra_threads: usize,
}

/// Why the engine could not load ONNX Runtime, load a model, or run it.
#[derive(Debug, Clone, thiserror::Error)]
pub enum EngineError {
    /// ONNX Runtime's library could not be loaded (path, reason).
    #[error("cannot load ONNX Runtime from {}: {reason}", path.display())]
    Library { path: PathBuf, reason: String },
    /// The model could not be turned into a session (ORT's message).
    #[error("cannot load model: {0}")]
    Load(String),
    /// The request's inputs do not fit the model: the message names the input,
    /// what was expected and what came.
    #[error("{0}")]
    InvalidInput(String),
    /// ONNX Runtime failed while running.
    #[error("inference failed: {0}")]
    Inference(String),
    /// The run needed more memory than the run memory limit leaves free
    /// (ONNX Runtime's message, which says how much it asked for).
    #[error(
        "the model needs more memory for this request than is free for requests now; \
         retry later or send a smaller batch ({0})"
    )]
    OutOfMemory(String),
}

/// Finds ONNX Runtime's shared library, in this order:
///
/// 1. `explicit` (the `ORT_DYLIB_PATH` setting), as given. A bare file name is
///    passed to the system loader; a path with a directory must exist.
/// 2. `libonnxruntime.so`, else the newest `libonnxruntime.so.<version>`, next
///    to the current executable, then in its parent directory (cargo puts test
///    binaries in `target/debug/deps`, one below where a library copied next to
///    the main binary would be).
/// 3. `<crate>/.cache/onnxruntime/1.32.0/libonnxruntime.so`, where
///    `scripts/setup-ort.sh` puts it (the crate directory as it was at build time).
/// 4. The bare name `libonnxruntime.so`, for the system loader. Whether that
///    works is only known when [`Engine::init`] loads it; its error then says how
///    to get the library.
///
/// ```
/// let path = model_router::engine::find_library(None).unwrap();
/// assert!(path.to_string_lossy().contains("libonnxruntime.so"));
/// ```
pub fn find_library(explicit: Option<&Path>) -> Result<PathBuf, EngineError> {
    if let Some(path) = explicit {
        let is_bare_name = path.components().count() == 1;
        if !is_bare_name && !path.is_file() {
            return Err(EngineError::Library {
                path: path.to_path_buf(),
                reason: format!("no such file; {LIBRARY_HINT}"),
            });
        }
        return Ok(path.to_path_buf());
    }
    if let Ok(exe) = std::env::current_exe() {
        let exe_dir = exe.parent();
        let parent_dir = exe_dir.and_then(Path::parent);
        if let Some(found) = exe_dir.into_iter().chain(parent_dir).find_map(library_in) {
            return Ok(found);
        }
    }
    let cached = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join(".cache/onnxruntime/1.32.0")
        .join(LIBRARY_NAME);
    if cached.is_file() {
        return Ok(cached);
    }
    Ok(PathBuf::from(LIBRARY_NAME))
}

/// `libonnxruntime.so` in `dir`, else its highest-versioned `libonnxruntime.so.X.Y.Z`.
fn library_in(dir: &Path) -> Option<PathBuf> {
    let plain = dir.join(LIBRARY_NAME);
    if plain.is_file() {
        return Some(plain);
    }
    let versioned_prefix = format!("{LIBRARY_NAME}.");
    fs::read_dir(dir)
        .ok()?
        .filter_map(|entry| entry.ok().map(|entry| entry.path()))
        .filter_map(|path| {
            let name = path.file_name()?.to_str()?;
            // Compared as numbers so that 1.32.0 outranks 1.9.0.
            let version: Vec<u64> = name
                .strip_prefix(&versioned_prefix)?
                .split('.')
                .map(|part| part.parse().ok())
                .collect::<Option<_>>()?;
            path.is_file().then_some((version, path))
        })
        .max()
        .map(|(_, path)| path)
}

/// The engine of this process, once made. A `Mutex` rather than a `OnceLock`
/// because making it can fail, and two first calls must not both try.
static ENGINE: Mutex<Option<Engine>> = Mutex::new(None);

/// The ONNX Runtime environment: one per process (ort allows one), with one
/// global intra-op thread pool of `intra_threads` threads, shared by every
/// session (sessions use DisablePerSessionThreads, which ort does automatically
/// when the env has a global pool), and each session's own CPU memory arena
/// off (ep::CPU with_arena_allocator(false)) so freed sessions return memory;
/// under a run memory limit, one shared, bounded arena (see
/// [`Engine::limit_run_memory`]).
///
/// A cheap handle: clones share the one environment.
#[derive(Clone)]
pub struct Engine {
    env: Environment,
    /// The configuration the environment was made with (the first caller's).
    config: Arc<EngineConfig>,
    /// The run memory limit in force, once set (see [`Engine::limit_run_memory`]).
    run_limit: Arc<OnceLock<u64>>,
}

impl fmt::Debug for Engine {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Engine")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl Engine {
    /// The first call in a process loads ONNX Runtime from `config.dylib_path`
    /// and creates the environment; later calls return that same engine, even
    /// if they pass a different configuration (ONNX Runtime can be loaded, and
    /// its environment created, only once per process; tests in one process
    /// share it). [`Engine::config`] tells which configuration is in force.
    ///
    /// A failed first call leaves nothing behind: a later call may try again.
    ///
    /// ```
    /// use model_router::engine::{find_library, Engine, EngineConfig};
    ///
    /// let config = EngineConfig { dylib_path: find_library(None).unwrap(), intra_threads: 1 };
    /// let engine = Engine::init(&config).unwrap();
    /// let again = Engine::init(&EngineConfig { intra_threads: 4, ..config }).unwrap();
    /// assert_eq!(again.config(), engine.config());
    /// ```
    pub fn init(config: &EngineConfig) -> Result<Engine, EngineError> {
        let mut slot = ENGINE.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(engine) = slot.as_ref() {
            return Ok(engine.clone());
        }
        let engine = Engine::create(config)?;
        *slot = Some(engine.clone());
        Ok(engine)
    }

    /// The configuration the environment was created with.
    pub fn config(&self) -> &EngineConfig {
        &self.config
    }

    /// Caps the memory ONNX Runtime may allocate for running models at
    /// `bytes`, for every run of every session loaded after this call, all
    /// runs together (src/engine/arena.rs). A run that would pass it fails
    /// with [`EngineError::OutOfMemory`]; the process is untouched.
    ///
    /// Once per process, like the environment: the first call sets the
    /// limit, later calls return the limit in force whatever they pass.
    pub fn limit_run_memory(&self, bytes: u64) -> Result<u64, EngineError> {
        static SETTING: Mutex<()> = Mutex::new(());
        let _once = SETTING.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(limit) = self.run_limit.get() {
            return Ok(*limit);
        }
        arena::register(&self.env, usize::try_from(bytes).unwrap_or(usize::MAX))?;
        Ok(*self.run_limit.get_or_init(|| bytes))
    }

    /// The run memory limit in force, if any.
    pub fn run_memory_limit(&self) -> Option<u64> {
        self.run_limit.get().copied()
    }

    fn create(config: &EngineConfig) -> Result<Engine, EngineError> {
        let library_error = |reason: String| EngineError::Library {
            path: config.dylib_path.clone(),
            reason,
        };
        let builder = ort::init_from(&config.dylib_path)
            .map_err(|e| library_error(format!("{e}; {LIBRARY_HINT}")))?;
        // Inter-op threads only serve parallel execution mode, which no session
        // uses; one means "no extra pool". Spinning is off because requests come
        // in bursts on one or two vCPUs: a spinning idle pool burns the CPU the
        // next request (or another tenant's model) needs.
        let pool = GlobalThreadPoolOptions::default()
            .with_intra_threads(config.intra_threads)
            .and_then(|pool| pool.with_inter_threads(1))
            .and_then(|pool| pool.with_spin_control(false))
            .map_err(|e| {
                library_error(format!(
                    "ONNX Runtime rejected the thread pool options: {e}"
                ))
            })?;
        let env = builder
            .with_name("model-router")
            .with_telemetry(false)
            .with_global_thread_pool(pool)
            .with_logger(Arc::new(forward_ort_log))
            .build()
            .map_err(|e| {
                library_error(format!(
                    "ONNX Runtime loaded, but creating its environment failed: {e}"
                ))
            })?;
        // A custom logger makes ort ask for verbose logs; ONNX Runtime formats
        // every message at or above this level, so keep it to warnings.
        env.set_log_level(LogLevel::Warning);
        let engine = Engine {
            env,
            config: Arc::new(config.clone()),
            run_limit: Arc::default(),
        };
        engine.prime()?;
        Ok(engine)
    }

    /// Creates (and drops) one session of each format from a tiny built-in
    /// model, so that ONNX Runtime's one-time allocations (kernel registries,
    /// allocators, the first session's bookkeeping: about 1.4 MB measured here)
    /// are paid at start-up instead of being charged to the first real model's
    /// footprint. The models are made by scripts/make_prime_models.py.
    fn prime(&self) -> Result<(), EngineError> {
        const PRIME_ONNX: &[u8] = include_bytes!("prime/prime.onnx");
        const PRIME_ORT: &[u8] = include_bytes!("prime/prime.ort");
        for (bytes, format) in [
            (PRIME_ONNX, ModelFormat::Onnx),
            (PRIME_ORT, ModelFormat::Ort),
        ] {
            let session = self
                .create_session(bytes, format)
                .map_err(|e| EngineError::Library {
                    path: self.config.dylib_path.clone(),
                    reason: format!("priming ONNX Runtime failed: {e}"),
                })?;
            drop(session);
        }
        Ok(())
    }

    /// Maps the verified local file at `path` read-only (memmap2) and creates a
    /// session, as `format` says (the caller decides it, usually with
    /// [`ModelFormat::from_file_name`]).
    ///
    /// - [`ModelFormat::Ort`]: zero-copy. The session reads the model and its
    ///   weights from the mapping, which the returned model keeps for as long as
    ///   the session. Prepacking is off: it would copy every MatMul weight.
    ///   The file must be in ORT format (its flatbuffer identifier is checked).
    /// - [`ModelFormat::Onnx`]: ONNX Runtime parses the mapping and copies what
    ///   it keeps; the mapping is dropped before this returns.
    ///
    /// Loads on different threads run in parallel; each is measured on its own
    /// thread (see [`LoadedModel::footprint_bytes`]).
    /// The file must be a private copy that nothing rewrites, truncates or
    /// removes while the model is loaded: the staging directory's verified copy,
    /// never a file on EFS/NFS (DESIGN.md section 7).
    ///
    /// ```
    /// use std::path::Path;
    /// use model_router::engine::{find_library, Engine, EngineConfig, ModelFormat};
    ///
    /// let engine = Engine::init(&EngineConfig { dylib_path: find_library(None)?, intra_threads: 1 })?;
    /// let path = Path::new("tests/data/models/mlp.ort");
    /// let model = engine.load(path, ModelFormat::Ort)?;
    /// assert_eq!(model.signature().inputs[0].name, "features");
    /// assert!(model.footprint_bytes() >= std::fs::metadata(path)?.len());
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn load(&self, path: &Path, format: ModelFormat) -> Result<LoadedModel, EngineError> {
        let file = File::open(path)
            .map_err(|e| EngineError::Load(format!("cannot open {}: {e}", path.display())))?;
        // SAFETY: a mapping is only sound while no one changes the file under it
        // (a truncation turns reads into SIGBUS). The caller guarantees this file
        // is a private, verified copy that nothing rewrites or truncates while
        // mapped; it is mapped read-only, and the mapping is kept in
        // `LoadedModel` after the session (the `.ort` case), so it outlives
        // every read.
        let mapping = unsafe { Mmap::map(&file) }
            .map_err(|e| EngineError::Load(format!("cannot map {}: {e}", path.display())))?;
        drop(file);
        self.load_bytes(Arc::new(mapping), format, &path.display().to_string())
    }

    /// Creates a session from verified, read-only bytes in memory (anonymous
    /// memory a model was fetched into, or a mapping of a staged copy), as
    /// [`Engine::load`] does from a file; `label` names the model in errors.
    /// For `.ort` the model keeps `bytes` for as long as its session; for
    /// `.onnx` it lets them go once the session exists.
    pub fn load_bytes(
        &self,
        bytes: Arc<Mmap>,
        format: ModelFormat,
        label: &str,
    ) -> Result<LoadedModel, EngineError> {
        self.load_bytes_known(bytes, format, label, None)
    }

    /// As [`Engine::load_bytes`], for the same bytes loaded before, whose
    /// footprint that load measured (`footprint`): the probe run is skipped,
    /// since all it is for is measuring what a session keeps after its first
    /// run, and the footprint is the larger of the one given and what this
    /// session's creation kept. The first request's run then pays what the
    /// probe would have (for a 128 MiB MLP, one pass over its weights:
    /// 6-7 ms), once, instead of every reload paying it before any request.
    pub fn reload_bytes(
        &self,
        bytes: Arc<Mmap>,
        format: ModelFormat,
        label: &str,
        footprint: u64,
    ) -> Result<LoadedModel, EngineError> {
        self.load_bytes_known(bytes, format, label, Some(footprint))
    }

    fn load_bytes_known(
        &self,
        bytes: Arc<Mmap>,
        format: ModelFormat,
        label: &str,
        known_footprint: Option<u64>,
    ) -> Result<LoadedModel, EngineError> {
        let file_bytes = bytes.len() as u64;
        if format == ModelFormat::Ort && !is_ort_format(&bytes) {
            return Err(EngineError::Load(format!(
                "{label} is not an ORT-format model (no ORTM identifier); convert it with \
                 `python -m onnxruntime.tools.convert_onnx_models_to_ort` or publish it as .onnx"
            )));
        }

        // Everything the loading thread allocates and keeps from here to the
        // end of the probe run is this model's (footprint.rs): the session,
        // its signature, and what ONNX Runtime keeps after a first run. The
        // model's bytes were allocated (or mapped) before the meter started,
        // so they are counted once, as `file_bytes`.
        let meter = ThreadMeter::start();
        let session = self.create_session(&bytes, format)?;
        let signature = convert::signature(&session);
        let mapping = match format {
            ModelFormat::Ort => Some(bytes),
            // ONNX Runtime copied what it needs: let the bytes go now.
            ModelFormat::Onnx => None,
        };
        let mut model = LoadedModel {
            sessions: pool::SessionPool::new(session),
            extra_session_bytes: 0,
            signature,
            format,
            footprint: 0,
            shrink_arena: self.run_limit.get().is_some(),
            _mapping: mapping,
        };
        if known_footprint.is_none() {
            model.probe();
        }
        model.footprint = footprint::footprint_bytes(format, file_bytes, meter.kept_bytes())
            .max(known_footprint.unwrap_or(0));
        Ok(model)
    }

    fn create_session(
        &self,
        model_bytes: &[u8],
        format: ModelFormat,
    ) -> Result<Session, EngineError> {
        let commit = || -> ort::Result<Session> {
            let cpu = ep::CPU::default()
                .with_arena_allocator(false)
                .build()
                .error_on_failure();
            let mut builder = Session::builder(&self.env)?.with_execution_providers([cpu])?;
            if self.run_limit.get().is_some() {
                builder = builder
                    .with_env_allocators()?
                    .with_config_entry("session.use_device_allocator_for_initializers", "1")?;
            }
            if format == ModelFormat::Ort {
                builder = builder
                    .with_config_entry("session.use_ort_model_bytes_directly", "1")?
                    .with_config_entry("session.use_ort_model_bytes_for_initializers", "1")?
                    .with_config_entry("session.disable_prepacking", "1")?;
            }
            builder.commit_from_memory(model_bytes)
        };
        // ort panics (`unreachable!`) on value types it does not model, such as
        // opaque types or sequences of sequences, while reading a new session's
        // inputs and outputs. That is a bad model, not a bad process: report it.
        match panic::catch_unwind(AssertUnwindSafe(commit)) {
            Ok(Ok(session)) => Ok(session),
            Ok(Err(e)) => Err(EngineError::Load(with_locale_hint(e.to_string()))),
            Err(panic) => Err(EngineError::Load(format!(
                "the model declares an input or output type this server cannot read ({})",
                panic_message(panic.as_ref())
            ))),
        }
    }
}

/// ONNX Runtime's message when a model (a StringNormalizer: skl2onnx's text
/// models ask for `en_US`, i.e. `en_US.UTF-8`) needs a locale this environment
/// lacks, with which locale it is and how to add it prepended.
fn with_locale_hint(message: String) -> String {
    const MARK: &str = "Failed to construct locale with name:";
    let Some(at) = message.find(MARK) else {
        return message;
    };
    let rest = &message[at + MARK.len()..];
    let name = rest.split([':', ' ', '\n']).next().unwrap_or(rest);
    format!(
        "the model needs the locale {name}, which this environment does not have \
         (skl2onnx exports text models with a StringNormalizer whose default locale is en_US). \
         Add it: Debian `apt-get install locales` and generate {name} (scripts/setup-locale.sh); \
         Amazon Linux 2023 `dnf install glibc-langpack-en` (infra/Dockerfile does); or compile it \
         into a directory and set LOCPATH to it (`scripts/setup-locale.sh --dir DIR`; the zip \
         deployment's layer does). Or convert the model with the option locale=\"C\". \
         ONNX Runtime said: {message}"
    )
}

/// ORT-format files are flatbuffers whose file identifier (bytes 4..8) is `ORTM`.
fn is_ort_format(bytes: &[u8]) -> bool {
    bytes.get(4..8) == Some(b"ORTM".as_slice())
}

fn panic_message(panic: &(dyn std::any::Any + Send)) -> &str {
    if let Some(message) = panic.downcast_ref::<&str>() {
        message
    } else if let Some(message) = panic.downcast_ref::<String>() {
        message
    } else {
        "no message"
    }
}

/// ONNX Runtime's own log lines, as `tracing` events with target `onnxruntime`,
/// so they come out in the process's log format (JSON on Lambda).
fn forward_ort_log(
    level: LogLevel,
    category: &str,
    _logger_id: &str,
    code_location: &str,
    message: &str,
) {
    match level {
        LogLevel::Fatal | LogLevel::Error => {
            tracing::error!(target: "onnxruntime", category, code_location, "{message}")
        }
        LogLevel::Warning => {
            tracing::warn!(target: "onnxruntime", category, code_location, "{message}")
        }
        LogLevel::Info => {
            tracing::debug!(target: "onnxruntime", category, code_location, "{message}")
        }
        LogLevel::Verbose => {
            tracing::trace!(target: "onnxruntime", category, code_location, "{message}")
        }
    }
}

/// How a model file is stored, which decides how it is loaded (see [`Engine::load`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ModelFormat {
    /// ONNX Runtime's flatbuffer format (`.ort`): loaded zero-copy from the mapping.
    Ort,
    /// ONNX protobuf (`.onnx`): ONNX Runtime copies what it keeps.
    Onnx,
}

impl ModelFormat {
    /// The format a file name's extension says (`.ort`, `.onnx`, any case).
    ///
    /// ```
    /// use model_router::engine::ModelFormat;
    ///
    /// assert_eq!(ModelFormat::from_file_name("model.ort"), Some(ModelFormat::Ort));
    /// assert_eq!(ModelFormat::from_file_name("model.onnx"), Some(ModelFormat::Onnx));
    /// assert_eq!(ModelFormat::from_file_name("model.pt"), None);
    /// ```
    pub fn from_file_name(name: &str) -> Option<ModelFormat> {
        let extension = Path::new(name).extension()?.to_str()?;
        if extension.eq_ignore_ascii_case("ort") {
            Some(ModelFormat::Ort)
        } else if extension.eq_ignore_ascii_case("onnx") {
            Some(ModelFormat::Onnx)
        } else {
            None
        }
    }
}

impl fmt::Display for ModelFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // `pad` so that width and alignment flags work (`{:<5}` in tables).
        f.pad(match self {
            ModelFormat::Ort => "ort",
            ModelFormat::Onnx => "onnx",
        })
    }
}

/// A model ready to run: its ONNX Runtime session, its signature, and (for
/// `.ort`) the mapping the session reads from.
///
/// `Send + Sync`; as many runs on one model go at once as it has sessions
/// (see [`LoadedModel::run`]).
pub struct LoadedModel {
    // Field order is drop order: the session must go before the mapping it may
    // read from. Every ort value made from the session is dropped inside `run`,
    // so nothing else can keep the session alive past this struct.
    /// One session per run at a time (`Session::run` takes `&mut self`); a
    /// pool of them lets runs on one model go in parallel (see [`pool`]).
    sessions: pool::SessionPool,
    /// What the sessions after the first cost (see [`LoadedModel::extra_session_bytes`]).
    extra_session_bytes: u64,
    signature: Signature,
    format: ModelFormat,
    footprint: u64,
    /// Whether the session uses the environment's limited arena, which each
    /// run asks to give back what it freed (src/engine/arena.rs).
    shrink_arena: bool,
    /// The `.ort` model's bytes, which the session uses in place; `None` for `.onnx`.
    _mapping: Option<Arc<Mmap>>,
}

impl fmt::Debug for LoadedModel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LoadedModel")
            .field("format", &self.format)
            .field("footprint", &self.footprint)
            .field("signature", &self.signature)
            .finish_non_exhaustive()
    }
}

impl LoadedModel {
    /// The model's inputs and outputs, read from the session at load.
    pub fn signature(&self) -> &Signature {
        &self.signature
    }

    /// Bytes this model costs while loaded, measured once, at load, by the
    /// allocator (src/engine/footprint.rs):
    ///
    /// - the bytes the loading thread allocated and did not free while ONNX
    ///   Runtime created the session and ran it once on probe inputs (zeros,
    ///   every dynamic dimension 1): weights ONNX Runtime copied, kernels, graph
    ///   structures, and what a session keeps after its first run. Counted per
    ///   thread, so what other threads allocate or free meanwhile (other
    ///   loads, requests on other models) is not in it;
    /// - `.ort`: plus the mapped file's size (the session reads the model in
    ///   place; its pages become resident as they are used).
    ///
    /// How close this is to the resident memory a model adds is measured by
    /// `scripts/bench-churn.sh` (README, "Memory").
    pub fn footprint_bytes(&self) -> u64 {
        self.footprint
    }

    /// Runs the model once on probe inputs: zeros of each input's type, every
    /// dynamic dimension 1. ONNX Runtime keeps some memory per session only
    /// after its first run (memory patterns, kernel state: measured 0.76 MB on
    /// a model whose load alone kept 0.86 MB); running at load puts that in
    /// the footprint instead of leaving it uncharged. A model whose probe
    /// cannot run (an input that is not a tensor, inputs whose zeros are
    /// invalid, probe inputs over 4 MiB) is simply not probed.
    fn probe(&self) {
        const PROBE_LIMIT: usize = 4 << 20;
        let mut inputs = Vec::with_capacity(self.signature.inputs.len());
        let mut bytes = 0usize;
        for info in &self.signature.inputs {
            let ValueKind::Tensor {
                element_type,
                shape,
            } = &info.kind
            else {
                return;
            };
            let dims: Vec<usize> = shape
                .iter()
                .map(|dim| match dim {
                    Dim::Fixed(n) => *n,
                    Dim::Dynamic(_) => 1,
                })
                .collect();
            let count = dims.iter().product::<usize>();
            bytes = bytes.saturating_add(count.saturating_mul(element_type.size_bytes()));
            if bytes > PROBE_LIMIT {
                return;
            }
            let Ok(tensor) = Tensor::new(dims, TensorData::zeros(*element_type, count)) else {
                return;
            };
            inputs.push((info.name.clone(), tensor));
        }
        if let Err(error) = self.run_inner(inputs, None, &|_| Ok(()), false) {
            tracing::debug!(%error, "probe run failed; the footprint leaves out first-run memory");
        }
    }

    /// How the model was loaded.
    pub fn format(&self) -> ModelFormat {
        self.format
    }

    /// Grows the model's session pool to `sessions` (at least 1; fewer than it
    /// has already is a no-op), so that that many runs go at once. Extra
    /// sessions are made from the same verified bytes: for `.ort`, from the
    /// mapping the model already keeps (`onnx_bytes` is not used; the weights
    /// are shared, zero-copy); for `.onnx`, from `onnx_bytes`, which must be
    /// the bytes the model was loaded from (each session copies its weights).
    /// What they cost is measured and then told by
    /// [`LoadedModel::extra_session_bytes`]; a session that would take that
    /// past `within` bytes is not kept, so the pool may end up smaller than
    /// asked (the caller passes the room its budget leaves).
    ///
    /// ```
    /// use std::path::Path;
    /// use model_router::engine::*;
    ///
    /// let engine = Engine::init(&EngineConfig { dylib_path: find_library(None)?, intra_threads: 1 })?;
    /// let mut model = engine.load(Path::new("tests/data/models/mlp.ort"), ModelFormat::Ort)?;
    /// model.add_sessions(&engine, &[], 3, u64::MAX)?;
    /// assert_eq!(model.sessions(), 3);
    /// let row = Tensor::new(vec![1, 4], TensorData::Fp32(vec![0.5, -1.25, 2.0, 0.75]))?;
    /// let (outputs, _queued) = model.run_queued(vec![("features".into(), row)], None)?;
    /// assert_eq!(outputs.len(), model.signature().outputs.len());
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn add_sessions(
        &mut self,
        engine: &Engine,
        onnx_bytes: &[u8],
        sessions: usize,
        within: u64,
    ) -> Result<(), EngineError> {
        let bytes: &[u8] = match &self._mapping {
            Some(mapping) => mapping,
            None => onnx_bytes,
        };
        let room = within.saturating_sub(self.extra_session_bytes);
        let added = self
            .sessions
            .grow(engine, bytes, self.format, sessions, room)?;
        self.extra_session_bytes = self.extra_session_bytes.saturating_add(added);
        Ok(())
    }

    /// Sessions in the model's pool: how many runs on it can go at once.
    pub fn sessions(&self) -> usize {
        self.sessions.len()
    }

    /// Bytes the sessions after the first cost, measured when they were made
    /// (the anonymous memory they added; for `.onnx` at least the file's size
    /// each). Not part of [`LoadedModel::footprint_bytes`]: the cache charges
    /// the sum of both.
    pub fn extra_session_bytes(&self) -> u64 {
        self.extra_session_bytes
    }

    /// Checks `inputs` against the signature before running: every input name
    /// known (else InvalidInput naming the unknown name and listing the model's
    /// inputs), every model input present (naming the missing one and its
    /// expected type and shape), element type equal (expected vs got), rank
    /// equal, fixed dims equal (which dimension, expected vs got). Then runs.
    ///
    /// `outputs`: `None` = all outputs in model order, `Some(names)` = only
    /// those, in that order (an unknown or repeated name is InvalidInput).
    /// Returns `(name, value)` in that order.
    ///
    /// Tensors of all 13 [`ElementType`]s go in and come out; sequences (of
    /// tensors or maps) and maps with `int64` or `string` keys and `float`,
    /// `double` or `int64` values come out as [`OutputValue::Sequence`] and
    /// [`OutputValue::Map`] (each map value a one-element tensor of shape `[]`).
    /// An output that cannot be converted is an [`EngineError::Inference`]
    /// naming the output and its type.
    ///
    /// Runs on one model take a free session of its pool (see
    /// [`LoadedModel::add_sessions`]): as many run at once as it has sessions,
    /// and the others wait for one. Different models run in parallel (on the
    /// one shared thread pool).
    ///
    /// ```
    /// use std::path::Path;
    /// use model_router::engine::*;
    ///
    /// let engine = Engine::init(&EngineConfig { dylib_path: find_library(None)?, intra_threads: 1 })?;
    /// let model = engine.load(Path::new("tests/data/models/mlp.onnx"), ModelFormat::Onnx)?;
    /// let row = Tensor::new(vec![1, 4], TensorData::Fp32(vec![0.5, -1.25, 2.0, 0.75]))?;
    ///
    /// let outputs = model.run(vec![("features".into(), row.clone())], Some(&["label".into()]))?;
    /// let (name, OutputValue::Tensor(label)) = &outputs[0] else { unreachable!() };
    /// assert_eq!((name.as_str(), label.shape()), ("label", &[1][..]));
    ///
    /// let error = model.run(vec![("feature".into(), row)], None).unwrap_err();
    /// assert!(error.to_string().starts_with("unknown input 'feature'"));
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn run(
        &self,
        inputs: Vec<(String, Tensor)>,
        outputs: Option<&[String]>,
    ) -> Result<Vec<(String, OutputValue)>, EngineError> {
        self.run_queued(inputs, outputs).map(|(outputs, _)| outputs)
    }

    /// [`LoadedModel::run`], also telling how long the run waited for a free
    /// session of the pool (its queue time; zero when one was free).
    pub fn run_queued(
        &self,
        inputs: Vec<(String, Tensor)>,
        outputs: Option<&[String]>,
    ) -> Result<(Vec<(String, OutputValue)>, std::time::Duration), EngineError> {
        self.run_admitted(inputs, outputs, &|_| Ok(()))
    }

    /// [`LoadedModel::run_queued`], asking `admit` before copying the outputs
    /// out of ONNX Runtime (see [`Admit`]): it gets each tensor output's
    /// extent before any copy, and each sequence's length and each of its
    /// items' extent (a ZipMap's maps) before that item is copied; an
    /// `Err(reason)` stops the request with [`EngineError::OutOfMemory`].
    /// This is the post-check for outputs whose size only the run could tell
    /// (an `Expand` to a shape the request sent, a classifier's ZipMap over
    /// the batch).
    pub fn run_admitted(
        &self,
        inputs: Vec<(String, Tensor)>,
        outputs: Option<&[String]>,
        admit: &Admit<'_>,
    ) -> Result<(Vec<(String, OutputValue)>, std::time::Duration), EngineError> {
        self.run_inner(inputs, outputs, admit, self.shrink_arena)
    }

    /// The run itself; `shrink`: ask the shared arena to give back its free
    /// regions after the run. The probe run at load does not: a shrink frees
    /// regions other threads' runs allocated, on this thread, which would
    /// take them out of the load's per-thread count.
    fn run_inner(
        &self,
        inputs: Vec<(String, Tensor)>,
        outputs: Option<&[String]>,
        admit: &Admit<'_>,
        shrink: bool,
    ) -> Result<(Vec<(String, OutputValue)>, std::time::Duration), EngineError> {
        self.check_inputs(&inputs)?;
        let output_names = self.select_outputs(outputs)?;

        let mut ort_inputs = Vec::with_capacity(inputs.len());
        for (name, tensor) in inputs {
            let value = convert::input_value(&name, tensor)?;
            ort_inputs.push((Cow::Owned(name), value));
        }
        let selector = output_names
            .iter()
            .fold(OutputSelector::no_default(), |selector, name| {
                selector.with(*name)
            });
        let options_error =
            |e: ort::Error| EngineError::Inference(format!("cannot create run options: {e}"));
        let mut options = RunOptions::new()
            .map_err(options_error)?
            .with_outputs(selector);
        if shrink {
            options
                .set("memory.enable_memory_arena_shrinkage", "cpu:0")
                .map_err(options_error)?;
        }

        let (mut session, waited) = self.sessions.acquire();
        let results = session
            .run_with_options(ort_inputs, &options)
            .map_err(run_error)?;
        // Tensors tell their size in their type: all admitted before any is
        // copied. Sequences and maps are admitted as they are read, item by
        // item (convert::output_value).
        let extents: Vec<OutputExtent> = results
            .iter()
            .filter_map(|(_, value)| convert::tensor_extent(&value))
            .collect();
        admit(&extents).map_err(EngineError::OutOfMemory)?;
        // Converted while the session is locked: ort's outputs borrow it.
        let outputs = results
            .into_iter()
            .map(|(name, value)| Ok((name.to_owned(), convert::output_value(name, value, admit)?)))
            .collect::<Result<_, EngineError>>()?;
        Ok((outputs, waited))
    }

    fn check_inputs(&self, inputs: &[(String, Tensor)]) -> Result<(), EngineError> {
        let expected = &self.signature.inputs;
        // Named dynamic dimensions seen so far: symbol -> (size, input that set it).
        let mut symbols: Vec<(&str, usize, &str)> = Vec::new();
        for (i, (name, tensor)) in inputs.iter().enumerate() {
            if inputs[..i].iter().any(|(earlier, _)| earlier == name) {
                return Err(EngineError::InvalidInput(format!(
                    "input '{name}' is given more than once"
                )));
            }
            let Some(info) = expected.iter().find(|info| info.name == *name) else {
                return Err(EngineError::InvalidInput(format!(
                    "unknown input '{name}'; the model's inputs are: {}",
                    describe_values(expected)
                )));
            };
            check_tensor(info, tensor)?;
            check_named_dims(info, tensor, &mut symbols)?;
        }
        if let Some(missing) = expected
            .iter()
            .find(|info| !inputs.iter().any(|(name, _)| *name == info.name))
        {
            return Err(EngineError::InvalidInput(format!(
                "missing input '{}': expected {}",
                missing.name,
                describe_kind(&missing.kind)
            )));
        }
        Ok(())
    }

    fn select_outputs<'a>(
        &'a self,
        requested: Option<&'a [String]>,
    ) -> Result<Vec<&'a str>, EngineError> {
        let known = &self.signature.outputs;
        let Some(requested) = requested else {
            return Ok(known.iter().map(|info| info.name.as_str()).collect());
        };
        for (i, name) in requested.iter().enumerate() {
            if !known.iter().any(|info| info.name == *name) {
                return Err(EngineError::InvalidInput(format!(
                    "unknown output '{name}'; the model's outputs are: {}",
                    describe_values(known)
                )));
            }
            if requested[..i].contains(name) {
                return Err(EngineError::InvalidInput(format!(
                    "output '{name}' is requested more than once"
                )));
            }
        }
        Ok(requested.iter().map(String::as_str).collect())
    }
}

/// Element type, rank and fixed dimensions of one input, in that order, so the
/// message names the first thing that is wrong.
fn check_tensor(info: &ValueInfo, tensor: &Tensor) -> Result<(), EngineError> {
    let name = &info.name;
    let ValueKind::Tensor {
        element_type,
        shape,
    } = &info.kind
    else {
        return Err(EngineError::InvalidInput(format!(
            "input '{name}' is {}, which this server cannot send; only tensor inputs are supported",
            describe_kind(&info.kind)
        )));
    };
    let got_type = tensor.element_type();
    if got_type != *element_type {
        return Err(EngineError::InvalidInput(format!(
            "input '{name}' expects element type {element_type} ({}), got {got_type}",
            describe_kind(&info.kind)
        )));
    }
    let got_shape = tensor.shape();
    if got_shape.len() != shape.len() {
        return Err(EngineError::InvalidInput(format!(
            "input '{name}' expects rank {} (shape {}), got rank {} (shape {got_shape:?})",
            shape.len(),
            shape_string(shape),
            got_shape.len()
        )));
    }
    for (axis, (dim, &got)) in shape.iter().zip(got_shape).enumerate() {
        if let Dim::Fixed(want) = *dim
            && want != got
        {
            return Err(EngineError::InvalidInput(format!(
                "input '{name}' dimension {axis} must be {want} (shape {}), got {got} (shape {got_shape:?})",
                shape_string(shape)
            )));
        }
    }
    Ok(())
}

/// ONNX gives one size to every dimension with the same name in a graph: two
/// inputs declared `[batch, 2]` must agree on `batch`. ONNX Runtime does not
/// check this before running; a kernel then fails with a generic error that
/// would read as a server fault, so it is checked here.
fn check_named_dims<'a>(
    info: &'a ValueInfo,
    tensor: &Tensor,
    symbols: &mut Vec<(&'a str, usize, &'a str)>,
) -> Result<(), EngineError> {
    let ValueKind::Tensor { shape, .. } = &info.kind else {
        return Ok(());
    };
    for (axis, (dim, &got)) in shape.iter().zip(tensor.shape()).enumerate() {
        let Dim::Dynamic(Some(symbol)) = dim else {
            continue;
        };
        match symbols.iter().find(|(seen, _, _)| seen == symbol) {
            Some(&(_, size, first)) if size != got => {
                return Err(EngineError::InvalidInput(format!(
                    "input '{}' dimension {axis} ('{symbol}') is {got}, but input '{first}' has '{symbol}' = {size}; \
                     inputs sharing a named dimension must agree",
                    info.name
                )));
            }
            Some(_) => {}
            None => symbols.push((symbol, got, &info.name)),
        }
    }
    Ok(())
}

/// ONNX Runtime's own input checks (e.g. two inputs whose shared dimension
/// differs) fail with INVALID_ARGUMENT: the caller's fault, not the server's.
fn run_error(error: ort::Error) -> EngineError {
    let message = error.to_string();
    if arena::is_out_of_memory(&message) {
        EngineError::OutOfMemory(message)
    } else if error.code() == ort::ErrorCode::InvalidArgument {
        EngineError::InvalidInput(format!("ONNX Runtime rejected the inputs: {error}"))
    } else {
        EngineError::Inference(error.to_string())
    }
}

/// `float32 [N, 4]` for tensors (unnamed dynamic dimensions as `-1`), ONNX
/// Runtime's rendering for anything else.
fn describe_kind(kind: &ValueKind) -> String {
    match kind {
        ValueKind::Tensor {
            element_type,
            shape,
        } => format!("{element_type} {}", shape_string(shape)),
        ValueKind::Other { description } => description.clone(),
    }
}

/// `features (float32 [N, 4]), mask (bool [N])`
fn describe_values(values: &[ValueInfo]) -> String {
    let described: Vec<String> = values
        .iter()
        .map(|info| format!("{} ({})", info.name, describe_kind(&info.kind)))
        .collect();
    described.join(", ")
}
