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
    },
    /// Run the AWS Lambda runtime loop.
    Lambda {
        #[command(flatten)]
        router: RouterArgs,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Json,
    Text,
}

/// Flags shared by every command that serves models.
#[derive(Debug, Clone, Args)]
pub struct RouterArgs {
    /// The model repository.
    #[arg(long = "repo", env = "MODEL_ROOT", default_value = "/mnt/models")]
    pub repo: PathBuf,
    /// Cache budget in bytes (suffixes K, M, G, Ki, Mi, Gi accepted). Default: 60% of
    /// AWS_LAMBDA_FUNCTION_MEMORY_SIZE on Lambda, else 1 GiB.
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
}

/// The resolved configuration, logged once at start-up.
#[derive(Debug, Clone, Serialize)]
pub struct Config {
    /// MODEL_ROOT: the repository of models.
    pub model_root: PathBuf,
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
    /// AWS_LAMBDA_FUNCTION_NAME, when running on Lambda.
    pub function_name: Option<String>,
}

/// Lambda gives one vCPU per 1769 MB of memory, six at most.
const LAMBDA_MB_PER_VCPU: u64 = 1769;
const DEFAULT_CACHE_BYTES: u64 = 1 << 30;

impl Config {
    /// Resolves defaults from the environment Lambda sets and the machine.
    pub fn resolve(args: &RouterArgs) -> Config {
        let lambda_memory_mb = std::env::var("AWS_LAMBDA_FUNCTION_MEMORY_SIZE")
            .ok()
            .and_then(|v| v.parse::<u64>().ok());
        let on_lambda = std::env::var_os("AWS_LAMBDA_RUNTIME_API").is_some();
        let cache_bytes = args.cache_bytes.unwrap_or_else(|| {
            lambda_memory_mb
                .map(|mb| mb * 1024 * 1024 * 6 / 10)
                .unwrap_or(DEFAULT_CACHE_BYTES)
        });
        let staging_bytes = args
            .staging_bytes
            .unwrap_or_else(|| free_space(&args.staging_dir) / 10 * 8);
        let cpus = std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1);
        let intra_threads = args
            .ort_intra_threads
            .filter(|n| *n > 0)
            .unwrap_or_else(|| match lambda_memory_mb {
                Some(mb) => (mb.div_ceil(LAMBDA_MB_PER_VCPU).clamp(1, 6) as usize).min(cpus),
                None => cpus,
            });
        Config {
            model_root: args.repo.clone(),
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
            function_name: std::env::var("AWS_LAMBDA_FUNCTION_NAME").ok(),
        }
    }

    /// A configuration for tests and embedding: explicit root, budgets and staging.
    pub fn for_repository(model_root: PathBuf, staging_dir: PathBuf, cache_bytes: u64) -> Config {
        Config {
            model_root,
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
            function_name: None,
        }
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
