//! The `model-router-publisher` binary: flags, logging, the publisher, then
//! the Lambda runtime loop or one event / one object (docs/publisher.md).

use std::io::Read as _;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;
use clap::builder::TypedValueParser as _;
use clap::{Args, Parser, Subcommand};
use model_router::config::{LogFormat, parse_bytes};
use model_router_publisher::s3::{DownloadSettings, ObjectRef};
use model_router_publisher::{EventReport, Publisher, PublisherConfig, Upload};

/// Publishes models uploaded to S3 into the model repository.
#[derive(Debug, Parser)]
#[command(name = "model-router-publisher", version)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the Lambda runtime loop (the default when AWS_LAMBDA_RUNTIME_API is set).
    Lambda {
        #[command(flatten)]
        publisher: PublisherArgs,
    },
    /// Process one S3 event notification (a file, or - for stdin) off Lambda,
    /// e.g. a dead-lettered event; the report goes to stdout.
    Event {
        #[command(flatten)]
        publisher: PublisherArgs,
        /// The event JSON.
        #[arg(env = "PUBLISH_EVENT")]
        event: String,
    },
    /// Publish one object, as if its upload had just been announced (an ECS
    /// task, a laptop); the report goes to stdout.
    Object {
        #[command(flatten)]
        publisher: PublisherArgs,
        /// `s3://<bucket>/<prefix><name>/<version>/<file>.ort|.onnx`
        #[arg(env = "PUBLISH_OBJECT")]
        uri: String,
        /// The object version to publish (versioned buckets); default the latest.
        #[arg(long, env = "PUBLISH_OBJECT_VERSION_ID")]
        version_id: Option<String>,
    },
}

/// Flags of every command (docs/publisher.md, "Configuration").
#[derive(Debug, Clone, Args)]
struct PublisherArgs {
    /// The model repository, mounted writable.
    #[arg(long = "repo", env = "MODEL_ROOT", default_value = "/mnt/models")]
    repo: PathBuf,
    /// Only keys under this prefix are published: `<prefix><name>/<version>/<file>.ort|.onnx`.
    #[arg(long, env = "PUBLISH_INCOMING_PREFIX", default_value = "incoming/")]
    prefix: String,
    /// Where each outcome is written back to the bucket as `<prefix><name>/<version>.json`;
    /// empty writes none.
    #[arg(long, env = "PUBLISH_RESULTS_PREFIX", default_value = "results/")]
    results_prefix: String,
    /// Where downloads wait before they are published (local disk).
    #[arg(long, env = "MODEL_STAGING_DIR", default_value = "/tmp/model-router")]
    staging_dir: PathBuf,
    /// The ONNX Runtime shared library, to check that a model loads before publishing it.
    #[arg(long, env = "ORT_DYLIB_PATH")]
    ort_dylib_path: Option<PathBuf>,
    /// Objects larger than this are downloaded as parallel ranged GETs (suffixes K, M, G, Ki, Mi, Gi).
    #[arg(long, env = "PUBLISH_RANGED_GET_THRESHOLD", default_value = "16Mi", value_parser = parse_bytes)]
    ranged_get_threshold: u64,
    /// Bytes per ranged GET.
    #[arg(long, env = "PUBLISH_GET_PART_BYTES", default_value = "8Mi", value_parser = parse_bytes)]
    get_part_bytes: u64,
    /// Ranged GETs in flight at once.
    #[arg(long, env = "PUBLISH_GET_CONCURRENCY", default_value_t = 8,
          value_parser = clap::value_parser!(u16).range(1..=64).map(usize::from))]
    get_concurrency: usize,
    /// Log format. Default: json on Lambda, text elsewhere.
    #[arg(long, env = "LOG_FORMAT")]
    log_format: Option<LogFormat>,
}

impl PublisherArgs {
    fn config(&self) -> PublisherConfig {
        PublisherConfig {
            model_root: self.repo.clone(),
            incoming_prefix: self.prefix.clone(),
            results_prefix: Some(self.results_prefix.clone()).filter(|p| !p.is_empty()),
            staging_dir: self.staging_dir.clone(),
            ort_dylib_path: self.ort_dylib_path.clone(),
            download: DownloadSettings {
                ranged_threshold: self.ranged_get_threshold,
                part_bytes: self.get_part_bytes,
                concurrency: self.get_concurrency,
            },
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let command = match cli.command {
        Some(command) => command,
        // The Lambda runtime starts the image's command; with none, run the
        // loop, its flags from the environment.
        None if std::env::var_os("AWS_LAMBDA_RUNTIME_API").is_some() => {
            match Cli::try_parse_from(["model-router-publisher", "lambda"]) {
                Ok(Cli {
                    command: Some(command),
                }) => command,
                Ok(Cli { command: None }) => return ExitCode::from(2),
                Err(error) => error.exit(),
            }
        }
        None => {
            eprintln!(
                "model-router-publisher: no command given; try `model-router-publisher --help`"
            );
            return ExitCode::from(2);
        }
    };
    match run(command) {
        Ok(code) => code,
        Err(error) => {
            eprintln!("model-router-publisher: error: {error:#}");
            ExitCode::from(2)
        }
    }
}

fn run(command: Command) -> anyhow::Result<ExitCode> {
    let args = match &command {
        Command::Lambda { publisher }
        | Command::Event { publisher, .. }
        | Command::Object { publisher, .. } => publisher.clone(),
    };
    let on_lambda = std::env::var_os("AWS_LAMBDA_RUNTIME_API").is_some();
    model_router::logging::init(args.log_format.unwrap_or(if on_lambda {
        LogFormat::Json
    } else {
        LogFormat::Text
    }));
    let config = args.config();
    tracing::info!(config = %serde_json::to_string(&config)?, "configuration");
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        // Built once, before the first event, and reused by every one.
        let publisher = Publisher::start(config).await?;
        match command {
            Command::Lambda { .. } => {
                model_router_publisher::run(publisher)
                    .await
                    .map_err(|e| anyhow::anyhow!("{e}"))?;
                Ok(ExitCode::SUCCESS)
            }
            Command::Event { event, .. } => {
                let text = if event == "-" {
                    let mut text = String::new();
                    std::io::stdin().read_to_string(&mut text)?;
                    text
                } else {
                    std::fs::read_to_string(&event).with_context(|| format!("reading {event}"))?
                };
                let payload = serde_json::from_str(&text).context("the event is not JSON")?;
                report(&publisher.handle_payload(payload).await?)
            }
            Command::Object {
                uri, version_id, ..
            } => {
                let (bucket, key) = uri
                    .strip_prefix("s3://")
                    .and_then(|rest| rest.split_once('/'))
                    .filter(|(bucket, key)| !bucket.is_empty() && !key.is_empty())
                    .with_context(|| format!("{uri:?} is not s3://<bucket>/<key>"))?;
                let upload = Upload::of_object(ObjectRef {
                    bucket: bucket.to_string(),
                    key: key.to_string(),
                    version_id,
                    region: None,
                });
                report(&publisher.handle_uploads(vec![upload]).await)
            }
        }
    })
}

/// Prints the report; exit 1 unless every record was published (or already
/// was, or was not for the publisher).
fn report(report: &EventReport) -> anyhow::Result<ExitCode> {
    println!("{}", serde_json::to_string_pretty(report)?);
    let all_good = report
        .records
        .iter()
        .all(|r| r.is_published() || r.status == model_router_publisher::Status::Ignored);
    Ok(if all_good && report.failed() == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_flag_has_its_env_twin() {
        use clap::CommandFactory;
        let cli = Cli::command();
        for sub in ["lambda", "event", "object"] {
            let command = cli.find_subcommand(sub).unwrap();
            for arg in command.get_arguments() {
                let id = arg.get_id().as_str();
                if ["help", "version"].contains(&id) {
                    continue;
                }
                assert!(
                    arg.get_env().is_some(),
                    "{sub} --{id} has no environment twin"
                );
            }
        }
    }

    #[test]
    fn download_settings_take_byte_suffixes() {
        let cli = Cli::try_parse_from([
            "model-router-publisher",
            "object",
            "--ranged-get-threshold",
            "2Mi",
            "--get-part-bytes",
            "512K",
            "--get-concurrency",
            "3",
            "s3://b/incoming/m/1/model.ort",
        ])
        .unwrap();
        let Some(Command::Object { publisher, .. }) = cli.command else {
            panic!("not the object command");
        };
        assert_eq!(
            publisher.config().download,
            DownloadSettings {
                ranged_threshold: 2 << 20,
                part_bytes: 512_000,
                concurrency: 3,
            }
        );
        assert!(
            Cli::try_parse_from(["model-router-publisher", "lambda", "--get-concurrency", "0"])
                .is_err()
        );
    }
}
