//! One configuration, from flags and their environment twins (DESIGN section 5),
//! with every default explicit and resolved once at start-up.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};
use serde::Serialize;

/// The command line (DESIGN section 6).
#[derive(Debug, Parser)]
#[command(
    name = "model-router",
    version,
    about = "Serve many ONNX models from one Lambda function or container"
)]
pub struct Cli {
    /// Without a subcommand: `lambda` when AWS_LAMBDA_RUNTIME_API is set, else help.
    #[command(subcommand)]
    pub command: Option<Command>,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the local HTTP server.
    Serve {
        #[command(flatten)]
        router: RouterArgs,
        /// Address to listen on (port 0 picks a free one; the bound address is logged).
        #[arg(long, env = "MODEL_ROUTER_ADDR", default_value = "127.0.0.1:8080")]
        addr: String,
        /// Believe the `x-caller-arn` and `x-caller-claims` headers as the caller's
        /// identity. Only behind a proxy that authenticates callers and sets (and
        /// strips) these headers itself; off by default.
        #[arg(long, env = "TRUST_IDENTITY_HEADERS")]
        trust_identity_headers: bool,
        #[command(flatten)]
        clients: ClientLimits,
        /// Address of the admin listener (Triton's model repository API,
        /// warm/evict/status, Prometheus `/metrics`); off unless set. It has no
        /// authentication: never expose it to tenants (README "Admin listener").
        #[arg(long, env = "MODEL_ROUTER_ADMIN_ADDR")]
        admin_addr: Option<String>,
        /// Also serve gRPC (`inference.GRPCInferenceService`, docs/protocols.md)
        /// on this address (port 0 picks a free one). Off unless set.
        #[arg(long, env = "MODEL_ROUTER_GRPC_ADDR")]
        grpc_addr: Option<String>,
        /// Origins browsers may call from (CORS), comma-separated, `*` for any.
        /// Off unless set: no CORS headers, and `OPTIONS` is a 405.
        #[arg(long, env = "CORS_ALLOW_ORIGINS", value_delimiter = ',')]
        cors_allow_origins: Vec<String>,
    },
    /// Send one Lambda event (any event source, or an admin event) through the
    /// handler and print the Lambda-shaped response.
    Invoke {
        #[command(flatten)]
        router: RouterArgs,
        /// The event JSON file, or `-` for standard input.
        #[arg(long)]
        event: String,
    },
    /// Publish a model file as a new, immutable version (atomic; writes manifest.json).
    Publish {
        #[arg(long = "repo", env = "MODEL_ROOT")]
        repo: PathBuf,
        #[arg(long)]
        name: String,
        #[arg(long)]
        version: String,
        /// The owning team, recorded in the manifest.
        #[arg(long)]
        team: Option<String>,
        #[arg(long)]
        description: Option<String>,
        /// The `.ort` or `.onnx` file.
        file: PathBuf,
    },
    /// Re-hash every published version against its manifest; exit 1 on any mismatch.
    Verify {
        #[arg(long = "repo", env = "MODEL_ROOT")]
        repo: PathBuf,
        /// Only this model.
        #[arg(long)]
        name: Option<String>,
        /// Exit 0 even when the repository holds no published version (by
        /// default an empty repository is an error: usually a wrong path, or
        /// a repository in another layout, such as Triton's).
        #[arg(long, env = "VERIFY_ALLOW_EMPTY")]
        allow_empty: bool,
    },
    /// Publish every ONNX model of a Triton model repository
    /// (`DIR/<model>/<version>/model.onnx`) into this repository, each with
    /// its manifest; versions already published with the same bytes are skipped.
    #[command(name = "import-triton")]
    ImportTriton {
        /// The Triton model repository.
        #[arg(env = "TRITON_REPOSITORY")]
        dir: PathBuf,
        #[arg(long = "repo", env = "MODEL_ROOT")]
        repo: PathBuf,
    },
    /// Run the AWS Lambda runtime loop.
    Lambda {
        #[command(flatten)]
        router: RouterArgs,
    },
}

/// How `serve` bounds slow and idle clients (README, "Slow and idle clients").
#[derive(Debug, Clone, Args)]
pub struct ClientLimits {
    /// Seconds a request's headers may take to arrive, from their first byte;
    /// then the connection is closed (one that sends nothing is closed by the
    /// idle timeout).
    #[arg(long, env = "HEADER_READ_TIMEOUT_SECONDS", default_value_t = 10.0)]
    pub header_read_timeout_seconds: f64,
    /// Seconds a request's body may take to arrive after its headers; then
    /// 408 `request_timeout`, and the connection is closed.
    #[arg(long, env = "BODY_READ_TIMEOUT_SECONDS", default_value_t = 30.0)]
    pub body_read_timeout_seconds: f64,
    /// Seconds a keep-alive connection may stay open with no request in flight.
    #[arg(long, env = "IDLE_TIMEOUT_SECONDS", default_value_t = 60.0)]
    pub idle_timeout_seconds: f64,
    /// Connections served at once. Default: half the open-file limit
    /// (`ulimit -n`), at most 1024 and at least 16, so that model files,
    /// staging and the listener always have descriptors left. At the limit a
    /// new connection closes the longest-idle one, or waits for one to end.
    #[arg(long, env = "MAX_CONNECTIONS")]
    pub max_connections: Option<usize>,
}

impl ClientLimits {
    /// The connection limit, resolved (see [`ClientLimits::max_connections`]).
    pub fn max_connections(&self) -> usize {
        self.max_connections.filter(|n| *n > 0).unwrap_or_else(|| {
            let files = rustix::process::getrlimit(rustix::process::Resource::Nofile)
                .current
                .unwrap_or(2048);
            (files / 2).clamp(16, 1024) as usize
        })
    }

    /// A timeout flag as a duration (a negative or NaN value as zero).
    pub fn duration(seconds: f64) -> std::time::Duration {
        std::time::Duration::try_from_secs_f64(seconds).unwrap_or_default()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Json,
    Text,
}

/// Whether metrics are written (see [`crate::metrics`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum MetricsMode {
    /// CloudWatch Embedded Metric Format lines on stdout.
    Emf,
    /// None.
    Off,
}

/// What the per-model metric dimension (EMF `Model`, Prometheus `model`)
/// holds. CloudWatch bills each distinct dimension set as one custom metric,
/// so `version` costs a set of metrics per model version that gets traffic,
/// `name` one per model, and `off` none (docs/metrics.md has the arithmetic).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ModelDimension {
    /// `name/version` (the default: what the metrics always had).
    #[default]
    Version,
    /// The model's name only: versions roll up.
    Name,
    /// No per-model dimension: metrics by function (and team) only.
    Off,
}

impl ModelDimension {
    /// The dimension's value for the model `spec` (`name/version`).
    ///
    /// ```
    /// use model_router::config::ModelDimension;
    /// assert_eq!(ModelDimension::Version.of("ranker/3").as_deref(), Some("ranker/3"));
    /// assert_eq!(ModelDimension::Name.of("ranker/3").as_deref(), Some("ranker"));
    /// assert_eq!(ModelDimension::Off.of("ranker/3"), None);
    /// ```
    pub fn of(self, spec: &str) -> Option<String> {
        match self {
            ModelDimension::Version => Some(spec.to_string()),
            ModelDimension::Name => Some(spec.split('/').next().unwrap_or(spec).to_string()),
            ModelDimension::Off => None,
        }
    }
}

/// Flags shared by every command that serves models.
#[derive(Debug, Clone, Args)]
pub struct RouterArgs {
    /// The model repository.
    #[arg(long = "repo", env = "MODEL_ROOT", default_value = "/mnt/models")]
    pub repo: PathBuf,
    /// The memory the whole process may use (suffixes accepted), split into the
    /// model cache, the process's baseline and the headroom requests need
    /// (README, "Memory"). Default: AWS_LAMBDA_FUNCTION_MEMORY_SIZE on Lambda,
    /// else the memory cgroup's limit, else the machine's memory (MemTotal).
    #[arg(long, env = "MEMORY_LIMIT_BYTES", value_parser = parse_bytes)]
    pub memory_limit: Option<u64>,
    /// Cache budget in bytes (suffixes K, M, G, Ki, Mi, Gi accepted). Default: 60% of
    /// AWS_LAMBDA_FUNCTION_MEMORY_SIZE on Lambda, else 60% of the memory limit, at most 1 GiB.
    #[arg(long, env = "MODEL_CACHE_BYTES", value_parser = parse_bytes)]
    pub cache_bytes: Option<u64>,
    /// Where verified local copies of model files are kept.
    #[arg(long, env = "MODEL_STAGING_DIR", default_value = "/tmp/model-router")]
    pub staging_dir: PathBuf,
    /// Staging budget in bytes. Default: 80% of the staging filesystem's free space.
    #[arg(long, env = "MODEL_STAGING_BYTES", value_parser = parse_bytes)]
    pub staging_bytes: Option<u64>,
    /// Models to load at start-up, comma-separated `name/version`.
    #[arg(long, env = "PRELOAD_MODELS", value_delimiter = ',')]
    pub preload: Vec<String>,
    /// The ONNX Runtime shared library. Default: next to the executable, then
    /// .cache/onnxruntime/ of the source tree, then the system's.
    #[arg(long, env = "ORT_DYLIB_PATH")]
    pub ort_dylib_path: Option<PathBuf>,
    /// ONNX Runtime intra-op threads. Default: the CPUs available (on Lambda, the
    /// vCPUs its memory size gives).
    #[arg(long, env = "ORT_INTRA_THREADS")]
    pub ort_intra_threads: Option<usize>,
    /// The team access policy file (DESIGN section 8). None: every caller may use every model.
    #[arg(long, env = "ACCESS_POLICY")]
    pub access_policy: Option<PathBuf>,
    /// Log format. Default: json on Lambda, text elsewhere.
    #[arg(long, env = "LOG_FORMAT")]
    pub log_format: Option<LogFormat>,
    /// Largest request body accepted (Lambda's synchronous limit is 6 MB).
    #[arg(long, env = "MAX_REQUEST_BYTES", value_parser = parse_bytes, default_value = "6000000")]
    pub max_request_bytes: u64,
    /// CloudWatch namespace of the metrics (Embedded Metric Format).
    #[arg(long, env = "METRICS_NAMESPACE", default_value = "ModelRouter")]
    pub metrics_namespace: String,
    /// Metrics: `emf` (CloudWatch Embedded Metric Format on stdout) or `off`.
    /// Default: emf on Lambda, off elsewhere (so `invoke` prints only its answer).
    #[arg(long, env = "METRICS")]
    pub metrics: Option<MetricsMode>,
    /// What the per-model metric dimension holds: `version` (name/version),
    /// `name`, or `off` (see docs/metrics.md for what each costs in CloudWatch).
    #[arg(long, env = "METRICS_MODEL_DIMENSION", default_value = "version")]
    pub metrics_model_dimension: ModelDimension,
    /// How often, at most, the access policy file is checked for changes.
    #[arg(long, env = "POLICY_RELOAD_SECONDS", default_value_t = 5)]
    pub policy_reload_seconds: u64,
    /// How long what `latest` or an alias resolved to is remembered, in
    /// seconds: within it, such requests for a cached model touch no file;
    /// a newly published version or a changed alias is seen within it.
    /// 0 reads the repository on every such request.
    #[arg(long, env = "RESOLVE_CACHE_SECONDS", default_value_t = 5.0)]
    pub resolve_cache_seconds: f64,
    /// How long a request waits for its model's load (reading the repository,
    /// verifying, creating the session) before answering 503 `load_timeout`;
    /// the load itself goes on and caches the model when it finishes. 0: no limit.
    #[arg(long, env = "MODEL_LOAD_TIMEOUT_SECONDS", default_value_t = 20.0)]
    pub load_timeout_seconds: f64,
    /// Reads in flight at once when a model file is read from a network
    /// filesystem (EFS and NFS answer each read after a round trip); a local
    /// filesystem gets one reader thread, ahead of the hash.
    #[arg(long, env = "MODEL_FETCH_READERS", default_value_t = 8)]
    pub fetch_readers: usize,
    /// ONNX Runtime sessions per loaded model: how many requests to one model
    /// run at once. Extra sessions of an `.ort` model share its weights (zero
    /// copy); each extra session of an `.onnx` model holds its own copy. What
    /// they cost is measured at load and charged to the model in the cache.
    /// Default: 1 on Lambda (one request at a time per instance), else the
    /// CPUs available, at most 4.
    #[arg(long, env = "MODEL_SESSIONS")]
    pub sessions_per_model: Option<usize>,
    /// The ARN of the Application Load Balancer whose OIDC tokens
    /// (`x-amzn-oidc-data`) are verified and believed when the access policy
    /// says `"alb_oidc": true`. Unset: such tokens are refused (403).
    #[arg(long, env = "ALB_OIDC_SIGNER")]
    pub alb_oidc_signer: Option<String>,
    /// Where the ALB's public keys are fetched from, as `<url>/<kid>`. Default:
    /// `https://public-keys.auth.elb.REGION.amazonaws.com`, REGION from ALB_OIDC_SIGNER.
    #[arg(long, env = "ALB_OIDC_KEYS_URL")]
    pub alb_oidc_keys_url: Option<String>,
}

/// The resolved configuration, logged once at start-up.
#[derive(Debug, Clone, Serialize)]
pub struct Config {
    /// MODEL_ROOT: the repository of models.
    pub model_root: PathBuf,
    /// MEMORY_LIMIT_BYTES: the whole process's memory bound, when known.
    pub memory_limit: Option<u64>,
    /// Where `memory_limit` came from: `flag` (MEMORY_LIMIT_BYTES), `lambda`,
    /// `cgroup`, `machine`, or `none`.
    pub memory_limit_source: &'static str,
    /// MODEL_CACHE_BYTES: the byte budget of loaded models.
    pub cache_bytes: u64,
    /// MODEL_STAGING_DIR: verified local copies, the only files ONNX Runtime maps.
    pub staging_dir: PathBuf,
    /// MODEL_STAGING_BYTES: the byte budget of the staging directory.
    pub staging_bytes: u64,
    /// PRELOAD_MODELS: loaded during init.
    pub preload: Vec<String>,
    /// ORT_DYLIB_PATH, if given; else the lookup order of `engine::find_library`.
    pub ort_dylib_path: Option<PathBuf>,
    /// ORT_INTRA_THREADS: threads of the one global intra-op pool.
    pub intra_threads: usize,
    /// ACCESS_POLICY: the team policy file.
    pub access_policy: Option<PathBuf>,
    /// LOG_FORMAT.
    pub log_format: LogFormat,
    /// MAX_REQUEST_BYTES: larger bodies answer 413.
    pub max_request_bytes: usize,
    /// METRICS_NAMESPACE.
    pub metrics_namespace: String,
    /// METRICS: emf or off.
    pub metrics: MetricsMode,
    /// METRICS_MODEL_DIMENSION: version, name or off.
    pub metrics_model_dimension: ModelDimension,
    /// POLICY_RELOAD_SECONDS: the policy file is re-read when it changed, checked this often at most.
    #[serde(with = "seconds")]
    pub policy_reload_interval: std::time::Duration,
    /// AWS_LAMBDA_FUNCTION_NAME, when running on Lambda.
    pub function_name: Option<String>,
    /// RESOLVE_CACHE_SECONDS: how long `latest` and alias resolutions are remembered.
    #[serde(with = "seconds")]
    pub resolve_ttl: std::time::Duration,
    /// MODEL_LOAD_TIMEOUT_SECONDS: how long a request waits for a load.
    #[serde(with = "seconds")]
    pub load_timeout: std::time::Duration,
    /// MODEL_FETCH_READERS: parallel reads of a model file.
    pub fetch_readers: usize,
    /// ALB_OIDC_SIGNER: the ALB whose OIDC tokens are verified (`"alb_oidc": true`).
    pub alb_oidc_signer: Option<String>,
    /// ALB_OIDC_KEYS_URL: where its public keys are fetched; None: the regional endpoint.
    pub alb_oidc_keys_url: Option<String>,
    /// MODEL_SESSIONS: ONNX Runtime sessions per loaded model (runs at once on it).
    pub sessions_per_model: usize,
}

/// Lambda gives one vCPU per 1769 MB of memory, six at most.
const LAMBDA_MB_PER_VCPU: u64 = 1769;
const DEFAULT_CACHE_BYTES: u64 = 1 << 30;
/// Sessions per model by default outside Lambda: one per CPU, up to this many
/// (past a few, extra sessions of a hot model mostly cost memory).
const MAX_DEFAULT_SESSIONS: usize = 4;

/// What the defaults depend on besides the flags: the variables Lambda sets
/// and the machine. Separate from [`Config::resolve`] so the defaults can be
/// tested without a Lambda, a 3 GB function or a full disk.
#[derive(Debug, Clone, Default)]
pub struct Host {
    /// AWS_LAMBDA_RUNTIME_API is set: we run under a Lambda runtime API.
    pub on_lambda: bool,
    /// AWS_LAMBDA_FUNCTION_MEMORY_SIZE, in MB.
    pub lambda_memory_mb: Option<u64>,
    /// AWS_LAMBDA_FUNCTION_NAME.
    pub function_name: Option<String>,
    /// CPUs this process may use.
    pub cpus: usize,
    /// Free bytes on the staging directory's filesystem.
    pub staging_free_bytes: u64,
    /// The memory limit of this process's memory cgroup (v2 `memory.max` or
    /// v1 `memory.limit_in_bytes`, the tightest of its ancestors), if any.
    pub cgroup_memory_limit: Option<u64>,
    /// The machine's memory (`MemTotal` in /proc/meminfo).
    pub machine_memory: Option<u64>,
}

impl Host {
    /// This process's environment and machine, with the free space where
    /// `staging_dir` is (or will be).
    pub fn current(staging_dir: &std::path::Path) -> Host {
        Host {
            on_lambda: std::env::var_os("AWS_LAMBDA_RUNTIME_API").is_some(),
            lambda_memory_mb: std::env::var("AWS_LAMBDA_FUNCTION_MEMORY_SIZE")
                .ok()
                .and_then(|v| v.trim().parse::<u64>().ok()),
            function_name: std::env::var("AWS_LAMBDA_FUNCTION_NAME").ok(),
            cpus: std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(1),
            staging_free_bytes: free_space(staging_dir),
            cgroup_memory_limit: cgroup_memory_limit(),
            machine_memory: std::fs::read_to_string("/proc/meminfo")
                .ok()
                .and_then(|info| {
                    let line = info.lines().find_map(|l| l.strip_prefix("MemTotal:"))?;
                    let kib: u64 = line.trim().strip_suffix("kB")?.trim().parse().ok()?;
                    kib.checked_mul(1024)
                }),
        }
    }
}

/// The tightest memory limit over this process's memory cgroup and its
/// ancestors, cgroup v2 (`memory.max`) or v1 (`memory.limit_in_bytes`).
pub fn cgroup_memory_limit() -> Option<u64> {
    let cgroups = std::fs::read_to_string("/proc/self/cgroup").ok()?;
    let mut limits = Vec::new();
    for line in cgroups.lines() {
        let mut fields = line.splitn(3, ':');
        let (Some(_), Some(controllers), Some(path)) =
            (fields.next(), fields.next(), fields.next())
        else {
            continue;
        };
        let (root, file) = if controllers.is_empty() {
            ("/sys/fs/cgroup", "memory.max")
        } else if controllers.split(',').any(|c| c == "memory") {
            ("/sys/fs/cgroup/memory", "memory.limit_in_bytes")
        } else {
            continue;
        };
        let mut dir = std::path::PathBuf::from(root).join(path.trim_start_matches('/'));
        loop {
            if let Ok(text) = std::fs::read_to_string(dir.join(file))
                && let Ok(limit) = text.trim().parse::<u64>()
                // v1 says "no limit" with a huge number (PAGE_COUNTER_MAX pages).
                && limit < 1 << 60
            {
                limits.push(limit);
            }
            if dir == std::path::Path::new(root) || !dir.pop() {
                break;
            }
        }
    }
    limits.into_iter().min()
}

impl Config {
    /// Resolves defaults from the environment Lambda sets and the machine.
    pub fn resolve(args: &RouterArgs) -> Config {
        Config::resolve_with(args, &Host::current(&args.staging_dir))
    }

    /// Resolves defaults from `host` (see [`Host`]).
    pub fn resolve_with(args: &RouterArgs, host: &Host) -> Config {
        let lambda_memory_mb = host.lambda_memory_mb;
        let on_lambda = host.on_lambda;
        let lambda_memory = lambda_memory_mb.map(|mb| mb * 1024 * 1024);
        let (memory_limit, memory_limit_source) = match (
            args.memory_limit,
            lambda_memory,
            host.cgroup_memory_limit,
            host.machine_memory,
        ) {
            (Some(limit), ..) => (Some(limit), "flag"),
            (None, Some(limit), ..) => (Some(limit), "lambda"),
            (None, None, Some(limit), _) => (Some(limit), "cgroup"),
            (None, None, None, Some(limit)) => (Some(limit), "machine"),
            (None, None, None, None) => (None, "none"),
        };
        let cache_bytes = args
            .cache_bytes
            .unwrap_or_else(|| match (lambda_memory, memory_limit) {
                (Some(memory), _) => memory * 6 / 10,
                (None, Some(limit)) => (limit * 6 / 10).min(DEFAULT_CACHE_BYTES),
                (None, None) => DEFAULT_CACHE_BYTES,
            });
        let staging_bytes = args
            .staging_bytes
            .unwrap_or(host.staging_free_bytes / 10 * 8);
        let cpus = host.cpus.max(1);
        let intra_threads = args
            .ort_intra_threads
            .filter(|n| *n > 0)
            .unwrap_or_else(|| match lambda_memory_mb {
                Some(mb) => (mb.div_ceil(LAMBDA_MB_PER_VCPU).clamp(1, 6) as usize).min(cpus),
                None => cpus,
            });
        Config {
            model_root: args.repo.clone(),
            memory_limit,
            memory_limit_source,
            cache_bytes,
            staging_dir: args.staging_dir.clone(),
            staging_bytes,
            preload: args
                .preload
                .iter()
                .map(|s| s.trim().to_string())
                .filter(|s| !s.is_empty())
                .collect(),
            ort_dylib_path: args.ort_dylib_path.clone(),
            intra_threads,
            access_policy: args.access_policy.clone(),
            log_format: args.log_format.unwrap_or(if on_lambda {
                LogFormat::Json
            } else {
                LogFormat::Text
            }),
            max_request_bytes: usize::try_from(args.max_request_bytes).unwrap_or(usize::MAX),
            metrics_namespace: args.metrics_namespace.clone(),
            // Off locally: `invoke` prints one JSON document on stdout, and
            // EMF lines only mean something where CloudWatch reads stdout.
            metrics: args.metrics.unwrap_or(if on_lambda {
                MetricsMode::Emf
            } else {
                MetricsMode::Off
            }),
            metrics_model_dimension: args.metrics_model_dimension,
            policy_reload_interval: std::time::Duration::from_secs(args.policy_reload_seconds),
            function_name: host.function_name.clone(),
            resolve_ttl: seconds_or_zero(args.resolve_cache_seconds),
            load_timeout: seconds_or_zero(args.load_timeout_seconds),
            fetch_readers: args.fetch_readers.max(1),
            alb_oidc_signer: args.alb_oidc_signer.clone().filter(|s| !s.is_empty()),
            alb_oidc_keys_url: args.alb_oidc_keys_url.clone().filter(|s| !s.is_empty()),
            sessions_per_model: args.sessions_per_model.filter(|n| *n > 0).unwrap_or(
                if on_lambda {
                    1
                } else {
                    cpus.min(MAX_DEFAULT_SESSIONS)
                },
            ),
        }
    }

    /// A configuration for tests and embedding: explicit root, budgets and staging.
    pub fn for_repository(model_root: PathBuf, staging_dir: PathBuf, cache_bytes: u64) -> Config {
        Config {
            model_root,
            memory_limit: None,
            memory_limit_source: "none",
            cache_bytes,
            staging_dir,
            staging_bytes: 1 << 34,
            preload: Vec::new(),
            ort_dylib_path: std::env::var_os("ORT_DYLIB_PATH").map(PathBuf::from),
            intra_threads: 1,
            access_policy: None,
            log_format: LogFormat::Text,
            max_request_bytes: 6_000_000,
            metrics_namespace: "ModelRouter".into(),
            metrics: MetricsMode::Off,
            metrics_model_dimension: ModelDimension::Version,
            policy_reload_interval: std::time::Duration::ZERO,
            function_name: None,
            resolve_ttl: std::time::Duration::ZERO,
            load_timeout: std::time::Duration::from_secs(60),
            fetch_readers: 8,
            alb_oidc_signer: None,
            alb_oidc_keys_url: None,
            sessions_per_model: 1,
        }
    }
}

/// A duration from seconds given on the command line; a negative or
/// non-finite number counts as 0.
fn seconds_or_zero(seconds: f64) -> std::time::Duration {
    std::time::Duration::try_from_secs_f64(seconds).unwrap_or_default()
}

/// Durations in the logged configuration, as seconds.
mod seconds {
    pub fn serialize<S: serde::Serializer>(
        d: &std::time::Duration,
        s: S,
    ) -> Result<S::Ok, S::Error> {
        s.serialize_f64(d.as_secs_f64())
    }
}

/// Free bytes on the filesystem holding `dir` (or its nearest existing parent).
fn free_space(dir: &std::path::Path) -> u64 {
    let existing = dir
        .ancestors()
        .find(|p| p.exists())
        .unwrap_or(std::path::Path::new("/"));
    rustix::fs::statvfs(existing)
        .map(|s| s.f_bavail.saturating_mul(s.f_frsize))
        .unwrap_or(512 << 20)
}

/// Parses a byte count: `1048576`, `512Mi`, `2GiB`, `1.5G`, `6MB`.
pub fn parse_bytes(text: &str) -> Result<u64, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let number: f64 = number
        .parse()
        .map_err(|_| format!("{text:?} is not a byte count (e.g. 1073741824, 512Mi, 2GiB)"))?;
    let multiplier: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" => 1_000,
        "m" | "mb" => 1_000_000,
        "g" | "gb" => 1_000_000_000,
        "ki" | "kib" => 1 << 10,
        "mi" | "mib" => 1 << 20,
        "gi" | "gib" => 1 << 30,
        other => {
            return Err(format!(
                "unknown byte unit {other:?} (use K, M, G, Ki, Mi or Gi)"
            ));
        }
    };
    Ok((number * multiplier as f64) as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_byte_counts() {
        assert_eq!(parse_bytes("1048576"), Ok(1 << 20));
        assert_eq!(parse_bytes("512Mi"), Ok(512 << 20));
        assert_eq!(parse_bytes("2GiB"), Ok(2 << 30));
        assert_eq!(parse_bytes("6MB"), Ok(6_000_000));
        assert_eq!(parse_bytes("1.5G"), Ok(1_500_000_000));
        assert!(parse_bytes("lots").is_err());
        assert!(parse_bytes("5 parsecs").is_err());
    }

    /// Parses `lambda` flags as the binary would (environment twins included).
    fn args(flags: &[&str]) -> RouterArgs {
        let argv = ["model-router", "lambda"].iter().chain(flags);
        match Cli::try_parse_from(argv) {
            Ok(Cli {
                command: Some(Command::Lambda { router }),
            }) => router,
            other => panic!("not a lambda command line: {other:?}"),
        }
    }

    fn lambda_host(memory_mb: u64, cpus: usize) -> Host {
        Host {
            on_lambda: true,
            lambda_memory_mb: Some(memory_mb),
            function_name: Some("router".into()),
            cpus,
            staging_free_bytes: 10_000_000_000,
            ..Host::default()
        }
    }

    #[test]
    fn the_memory_limit_comes_from_the_flag_lambda_the_cgroup_or_the_machine() {
        let gib = 1u64 << 30;
        let in_cgroup = Host {
            cgroup_memory_limit: Some(512 << 20),
            machine_memory: Some(24 * gib),
            ..Host::default()
        };
        let config = Config::resolve_with(&args(&[]), &in_cgroup);
        assert_eq!(
            (config.memory_limit, config.memory_limit_source),
            (Some(512 << 20), "cgroup")
        );
        // 60% of the limit when that is under 1 GiB.
        assert_eq!(config.cache_bytes, (512 << 20) * 6 / 10);
        let machine = Host {
            machine_memory: Some(24 * gib),
            ..Host::default()
        };
        let config = Config::resolve_with(&args(&[]), &machine);
        assert_eq!(
            (config.memory_limit, config.memory_limit_source),
            (Some(24 * gib), "machine")
        );
        assert_eq!(config.cache_bytes, gib);
        // Lambda's memory size wins over a cgroup; the flag over everything.
        let lambda = Host {
            cgroup_memory_limit: Some(4 * gib),
            ..lambda_host(512, 1)
        };
        let config = Config::resolve_with(&args(&[]), &lambda);
        assert_eq!(
            (config.memory_limit, config.memory_limit_source),
            (Some(512 << 20), "lambda")
        );
        let config = Config::resolve_with(&args(&["--memory-limit", "300Mi"]), &lambda);
        assert_eq!(
            (config.memory_limit, config.memory_limit_source),
            (Some(300 << 20), "flag")
        );
        let config = Config::resolve_with(&args(&[]), &Host::default());
        assert_eq!(
            (config.memory_limit, config.memory_limit_source),
            (None, "none")
        );
    }

    #[test]
    fn lambda_defaults_follow_the_function_memory_size() {
        let config = Config::resolve_with(&args(&[]), &lambda_host(3008, 2));
        // 60% of 3008 MiB.
        assert_eq!(config.cache_bytes, 1_892_469_964);
        // 80% of the free space of /tmp.
        assert_eq!(config.staging_bytes, 8_000_000_000);
        assert_eq!(config.intra_threads, 2);
        assert_eq!(config.log_format, LogFormat::Json);
        assert_eq!(config.metrics, MetricsMode::Emf);
        assert_eq!(config.function_name.as_deref(), Some("router"));

        // One vCPU per 1769 MB, rounded up, six at most, never more than the CPUs seen.
        for (memory_mb, cpus, threads) in [
            (128, 2, 1),
            (1769, 2, 1),
            (1770, 2, 2),
            (5307, 6, 3),
            (10240, 6, 6),
            (10240, 8, 6),
            (10240, 2, 2),
        ] {
            let config = Config::resolve_with(&args(&[]), &lambda_host(memory_mb, cpus));
            assert_eq!(config.intra_threads, threads, "{memory_mb} MB, {cpus} CPUs");
            assert_eq!(config.cache_bytes, memory_mb * 1024 * 1024 * 6 / 10);
        }
    }

    #[test]
    fn local_defaults_and_explicit_flags() {
        let local = Host {
            cpus: 4,
            staging_free_bytes: 1000,
            ..Host::default()
        };
        let config = Config::resolve_with(&args(&[]), &local);
        assert_eq!(config.cache_bytes, 1 << 30);
        assert_eq!(config.staging_bytes, 800);
        assert_eq!(config.intra_threads, 4);
        assert_eq!(config.log_format, LogFormat::Text);
        assert_eq!(config.metrics, MetricsMode::Off);
        assert_eq!(config.function_name, None);

        let flags = [
            "--cache-bytes",
            "512Mi",
            "--staging-bytes",
            "1G",
            "--ort-intra-threads",
            "3",
            "--log-format",
            "text",
            "--metrics",
            "off",
        ];
        let config = Config::resolve_with(&args(&flags), &lambda_host(3008, 2));
        assert_eq!(config.cache_bytes, 512 << 20);
        assert_eq!(config.staging_bytes, 1_000_000_000);
        assert_eq!(config.intra_threads, 3);
        assert_eq!(config.log_format, LogFormat::Text);
        assert_eq!(config.metrics, MetricsMode::Off);
        let config = Config::resolve_with(&args(&["--metrics", "emf"]), &local);
        assert_eq!(config.metrics, MetricsMode::Emf);
    }

    #[test]
    fn sessions_per_model_and_the_metrics_model_dimension() {
        let local = |cpus| Host {
            cpus,
            ..Host::default()
        };
        // One request at a time per Lambda instance: one session.
        let config = Config::resolve_with(&args(&[]), &lambda_host(10240, 6));
        assert_eq!(config.sessions_per_model, 1);
        assert_eq!(config.metrics_model_dimension, ModelDimension::Version);
        // Elsewhere one per CPU, at most 4 unless asked.
        assert_eq!(
            Config::resolve_with(&args(&[]), &local(2)).sessions_per_model,
            2
        );
        assert_eq!(
            Config::resolve_with(&args(&[]), &local(16)).sessions_per_model,
            4
        );
        let flags = [
            "--sessions-per-model",
            "8",
            "--metrics-model-dimension",
            "name",
        ];
        let config = Config::resolve_with(&args(&flags), &local(2));
        assert_eq!(config.sessions_per_model, 8);
        assert_eq!(config.metrics_model_dimension, ModelDimension::Name);
        let zero = Config::resolve_with(&args(&["--sessions-per-model", "0"]), &local(2));
        assert_eq!(zero.sessions_per_model, 2, "0 means the default");
    }

    #[test]
    fn every_flag_has_its_env_twin() {
        use clap::CommandFactory;
        let cli = Cli::command();
        for sub in ["serve", "invoke", "lambda"] {
            let command = cli.find_subcommand(sub).unwrap();
            for arg in command.get_arguments() {
                let id = arg.get_id().as_str();
                if ["event", "help", "version"].contains(&id) {
                    continue;
                }
                assert!(
                    arg.get_env().is_some(),
                    "{sub} --{id} has no environment twin"
                );
            }
        }
    }
}
