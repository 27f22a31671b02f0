//! The `model-router` binary: configuration, logging, then one front door.

use std::io::Read;
use std::process::ExitCode;

use anyhow::Context as _;
use clap::Parser;
use model_router::config::{Cli, ClientLimits, Command, Config, LogFormat, RouterArgs};
use model_router::logging::init as init_tracing;
use model_router::metrics::Metrics;
use model_router::repository::{ModelName, PublishRequest, Repository, verify};
use model_router::{ModelService, lambda, server, triton};

fn main() -> ExitCode {
    disable_onnxruntime_telemetry();
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

/// ONNX Runtime 1.29+ records telemetry on Linux too, in a SQLite file under
/// `~/.cache/Microsoft` written at every start (10-30 ms of a cold start here,
/// and a write to a read-only home on Lambda), before the environment's own
/// telemetry switch is applied. Its documented opt-out is this variable; a
/// value the operator set is left alone.
fn disable_onnxruntime_telemetry() {
    if std::env::var_os("ORT_DISABLE_TELEMETRY").is_none() {
        // SAFETY: set_var is unsound only when another thread reads or writes
        // the environment at the same time. This is the first statement of
        // `main`: no thread of ours or of any library has been started yet.
        unsafe { std::env::set_var("ORT_DISABLE_TELEMETRY", "1") };
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
            clients,
            admin_addr,
            grpc_addr,
            cors_allow_origins,
        } => {
            let (config, runtime) = start(&router)?;
            runtime.block_on(async {
                Metrics::install(Metrics::from_config(&config).with_prometheus());
                let service = build_service(config)?;
                warn_if_empty(&service);
                let listener = tokio::net::TcpListener::bind(&addr)
                    .await
                    .with_context(|| format!("binding {addr}"))?;
                let local = listener.local_addr()?;
                if let Some(admin_addr) = admin_addr {
                    start_admin(&admin_addr, &service).await?;
                }
                let grpc_listener = match &grpc_addr {
                    Some(grpc_addr) => Some(
                        tokio::net::TcpListener::bind(grpc_addr)
                            .await
                            .with_context(|| format!("binding {grpc_addr} (gRPC)"))?,
                    ),
                    None => None,
                };
                // On stdout, for scripts and tests that started us on port 0.
                println!("model-router listening on http://{local}");
                tracing::info!(%local, "listening");
                if let Some(grpc) = &grpc_listener {
                    let grpc_local = grpc.local_addr()?;
                    println!("model-router grpc listening on {grpc_local}");
                    tracing::info!(%grpc_local, "gRPC listening");
                }
                let options = server::ServeOptions {
                    trust_identity_headers,
                    header_read_timeout: ClientLimits::duration(
                        clients.header_read_timeout_seconds,
                    ),
                    body_read_timeout: ClientLimits::duration(clients.body_read_timeout_seconds),
                    idle_timeout: ClientLimits::duration(clients.idle_timeout_seconds),
                    max_connections: clients.max_connections(),
                    cors_origins: cors_allow_origins,
                };
                tracing::info!(?options, "client limits");
                // One shutdown for both listeners: a signal, or a failed start.
                let (stop, stopped) = tokio::sync::watch::channel(false);
                let until_stopped = move || {
                    let mut stopped = stopped.clone();
                    async move {
                        let _ = stopped.wait_for(|s| *s).await;
                    }
                };
                let signal_stop = stop.clone();
                tokio::spawn(async move {
                    shutdown_signal().await;
                    let _ = signal_stop.send(true);
                });
                // The listeners answer from now on: live at once, ready once
                // the preloads are done (GET /v2/health/ready says which), so
                // an orchestrator can tell "loading" from "hung". ONNX Runtime
                // starts while the preloads read their files; if it cannot
                // start, serve stops with its error.
                let starting = {
                    let service = service.clone();
                    async move {
                        model_router::admin::preload(&service, &Metrics::global()).await;
                        let started = service.engine_ready().await;
                        if started.is_err() {
                            let _ = stop.send(true);
                        }
                        started
                    }
                };
                let http =
                    server::serve_with(listener, service.clone(), options.clone(), until_stopped());
                let grpc = async {
                    match grpc_listener {
                        Some(grpc) => {
                            server::serve_grpc(grpc, service.clone(), options, until_stopped())
                                .await
                        }
                        None => Ok(()),
                    }
                };
                let (started, http, grpc) = tokio::join!(starting, http, grpc);
                started.map_err(|e| anyhow::anyhow!("{e}"))?;
                http?;
                grpc?;
                Ok(ExitCode::SUCCESS)
            })
        }
        Command::Invoke { mut router, event } => {
            // One event, then exit: a staged copy would never be reloaded, so
            // unless MODEL_STAGING_BYTES says otherwise, none is written.
            router.staging_bytes.get_or_insert(0);
            // One event at a time, as on Lambda: one session per model.
            router.sessions_per_model.get_or_insert(1);
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
                Ok::<_, anyhow::Error>(())
            })?;
            // The answer is out: exit now rather than spend time tearing down
            // ONNX Runtime, its thread pools and the async runtime for nothing.
            // `_exit`, not `exit`: `exit` still runs the C++ static destructors
            // libonnxruntime registered, 10-15 ms after a 128 MiB model. Stdout is
            // flushed first; stderr (the log) is unbuffered.
            use std::io::Write as _;
            let _ = std::io::stdout().flush();
            // SAFETY: `_exit` ends the process at once; nothing after it runs,
            // and every answer and log line was written above.
            unsafe { libc::_exit(0) }
        }
        Command::Lambda { router } => {
            let (config, runtime) = start(&router)?;
            runtime.block_on(async {
                // Built once, before the first event, and reused by every one.
                let service = build_service(config)?;
                let handler = lambda::Handler::from_config(service.clone());
                // ONNX Runtime starts while the preloads read their files.
                handler.preload().await;
                service
                    .engine_ready()
                    .await
                    .map_err(|e| anyhow::anyhow!("{e}"))?;
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
        Command::ImportTriton { dir, repo } => {
            init_tracing(LogFormat::Text);
            std::fs::create_dir_all(&repo)
                .with_context(|| format!("creating {}", repo.display()))?;
            let repository = Repository::open(&repo)?;
            let outcomes = triton::import(&repository, &dir)
                .with_context(|| format!("reading the Triton repository {}", dir.display()))?;
            let mut failures = 0;
            for outcome in &outcomes {
                match outcome {
                    triton::Imported::Published(key) => println!("published {key}"),
                    triton::Imported::AlreadyThere(key) => println!("unchanged {key}"),
                    triton::Imported::Failed { model, error } => {
                        failures += 1;
                        println!("FAILED    {model}: {error}");
                    }
                }
            }
            println!(
                "{} ONNX model versions found, {failures} failed",
                outcomes.len()
            );
            Ok(if failures == 0 && !outcomes.is_empty() {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            })
        }
        Command::Verify {
            repo,
            name,
            allow_empty,
        } => {
            init_tracing(LogFormat::Text);
            let repository = Repository::open(&repo)?;
            let empty = name
                .is_none()
                .then(|| triton::empty_repository_warning(&repository))
                .flatten();
            if let Some(warning) = &empty {
                eprintln!("model-router: warning: {warning}");
                if !allow_empty {
                    eprintln!(
                        "model-router: an empty repository fails verify; pass --allow-empty if it may be empty"
                    );
                    return Ok(ExitCode::FAILURE);
                }
            }
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

/// Logs a warning when the repository holds no published version (a wrong
/// path, or a Triton-layout repository that needs `import-triton`).
fn warn_if_empty(service: &ModelService) {
    if let Some(warning) = triton::empty_repository_warning(service.repository()) {
        tracing::warn!("{warning}");
    }
}

/// Binds the admin listener and serves it in the background (it stops with
/// the process). Announced on stdout like the main address.
async fn start_admin(addr: &str, service: &ModelService) -> anyhow::Result<()> {
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("binding the admin listener {addr}"))?;
    let local = listener.local_addr()?;
    if !local.ip().is_loopback() {
        tracing::warn!(%local, "the admin listener is not on loopback: it has no authentication, so only operators and the metrics scraper may reach this address, never tenants");
    }
    println!("model-router admin listening on http://{local}");
    tracing::info!(%local, "admin listening");
    let serving = model_router::http::admin::serve_admin(
        listener,
        service.clone(),
        Metrics::global(),
        std::future::pending(),
    );
    tokio::spawn(async move {
        if let Err(error) = serving.await {
            tracing::error!(%error, "the admin listener stopped");
        }
    });
    Ok(())
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
