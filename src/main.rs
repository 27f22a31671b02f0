//! The `model-router` binary: configuration, logging, then one front door.

use std::io::Read;
use std::process::ExitCode;

use anyhow::Context as _;
use clap::Parser;
use model_router::config::{Cli, Command, Config, LogFormat, RouterArgs};
use model_router::logging::init as init_tracing;
use model_router::metrics::Metrics;
use model_router::repository::{ModelName, PublishRequest, Repository, verify};
use model_router::{ModelService, lambda, server};

fn main() -> ExitCode {
    let cli = Cli::parse();
    let command = match cli.command {
        Some(command) => command,
        None if std::env::var_os("AWS_LAMBDA_RUNTIME_API").is_some() => {
            // The Lambda runtime starts the bootstrap with no arguments: run
            // `lambda`, its flags from the environment. A bad variable exits
            // with clap's message, which Lambda shows as the init error.
            match Cli::try_parse_from(["model-router", "lambda"]) {
                Ok(Cli {
                    command: Some(command),
                }) => command,
                Ok(Cli { command: None }) => unreachable_lambda(),
                Err(error) => error.exit(),
            }
        }
        None => {
            eprintln!("model-router: no command given; try `model-router --help`");
            return ExitCode::from(2);
        }
    };
    match run(command) {
        Ok(code) => code,
        Err(error) => {
            eprintln!("model-router: error: {error:#}");
            ExitCode::from(2)
        }
    }
}

fn unreachable_lambda() -> ! {
    eprintln!("model-router: `model-router lambda` did not parse as the lambda command");
    std::process::exit(2)
}

fn run(command: Command) -> anyhow::Result<ExitCode> {
    match command {
        Command::Serve {
            router,
            addr,
            trust_identity_headers,
        } => {
            let (config, runtime) = start(&router)?;
            runtime.block_on(async {
                Metrics::install(Metrics::from_config(&config));
                let service = build_service(config)?;
                let listener = tokio::net::TcpListener::bind(&addr)
                    .await
                    .with_context(|| format!("binding {addr}"))?;
                let local = listener.local_addr()?;
                // Before the address is announced: no request arrives mid-preload.
                model_router::admin::preload(&service, &Metrics::global()).await;
                // On stdout, for scripts and tests that started us on port 0.
                println!("model-router listening on http://{local}");
                tracing::info!(%local, "listening");
                let options = server::ServeOptions {
                    trust_identity_headers,
                };
                server::serve_with(listener, service, options, shutdown_signal()).await?;
                Ok(ExitCode::SUCCESS)
            })
        }
        Command::Invoke { router, event } => {
            let (config, runtime) = start(&router)?;
            let text = if event == "-" {
                let mut text = String::new();
                std::io::stdin().read_to_string(&mut text)?;
                text
            } else {
                std::fs::read_to_string(&event).with_context(|| format!("reading {event}"))?
            };
            runtime.block_on(async {
                let handler = lambda::Handler::from_config(build_service(config)?);
                handler.preload().await;
                let response = handler
                    .invoke(&text)
                    .await
                    .context("the event is not JSON")?;
                println!("{}", serde_json::to_string_pretty(&response)?);
                Ok(ExitCode::SUCCESS)
            })
        }
        Command::Lambda { router } => {
            let (config, runtime) = start(&router)?;
            runtime.block_on(async {
                // Built once, before the first event, and reused by every one.
                let handler = lambda::Handler::from_config(build_service(config)?);
                handler.preload().await;
                lambda::run(handler, shutdown_signal())
                    .await
                    .map_err(|e| anyhow::anyhow!("{e}"))?;
                Ok(ExitCode::SUCCESS)
            })
        }
        Command::Publish {
            repo,
            name,
            version,
            team,
            description,
            file,
        } => {
            init_tracing(LogFormat::Text);
            std::fs::create_dir_all(&repo)
                .with_context(|| format!("creating {}", repo.display()))?;
            let repository = Repository::open(&repo)?;
            let (key, manifest) = repository.publish(&PublishRequest {
                name,
                version,
                source: file,
                team,
                description,
            })?;
            println!("published {key}");
            println!("{}", serde_json::to_string_pretty(&manifest)?);
            Ok(ExitCode::SUCCESS)
        }
        Command::Verify { repo, name } => {
            init_tracing(LogFormat::Text);
            let repository = Repository::open(&repo)?;
            let name = name.as_deref().map(ModelName::new).transpose()?;
            let reports = verify(&repository, name.as_ref())?;
            let mut failures = 0;
            for report in &reports {
                match &report.error {
                    None => println!("ok        {}", report.model),
                    Some(error) => {
                        failures += 1;
                        println!("MISMATCH  {}: {error}", report.model);
                    }
                }
            }
            println!("{} versions checked, {failures} failed", reports.len());
            Ok(if failures == 0 {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            })
        }
    }
}

/// Resolves the configuration, starts logging and the async runtime, and logs
/// the configuration once.
fn start(args: &RouterArgs) -> anyhow::Result<(Config, tokio::runtime::Runtime)> {
    let config = Config::resolve(args);
    init_tracing(config.log_format);
    tracing::info!(config = %serde_json::to_string(&config)?, "configuration");
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    Ok((config, runtime))
}

fn build_service(config: Config) -> anyhow::Result<ModelService> {
    ModelService::new(config).map_err(|e| anyhow::anyhow!("{e}"))
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
    tracing::info!("shutting down");
}
