//! Logging set-up shared by the binaries (`model-router`, `model-router-publisher`).

use std::io::IsTerminal as _;

use crate::config::LogFormat;

/// Starts `tracing` on stderr (stdout carries `invoke`'s answer, reports and
/// the EMF metrics), filtered by `RUST_LOG` (default `info`); JSON lines for
/// CloudWatch, or text without colour codes unless stderr is a terminal.
/// A second call does nothing.
pub fn init(format: LogFormat) {
    let filter =
        tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = match format {
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .try_init(),
        // No colour codes in files, pipes or CloudWatch.
        LogFormat::Text => builder
            .with_ansi(std::io::stderr().is_terminal())
            .try_init(),
    };
}
