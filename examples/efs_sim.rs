//! Mounts the EFS-like test filesystem (tests/support/efs_sim.rs) by hand, for
//! benchmarks and for trying the router against a slow network filesystem:
//!
//! ```sh
//! cargo run --release --example efs_sim -- --latency-ms 2 --mbps 200 SOURCE MOUNTPOINT
//! ```
//!
//! Prints `mounted` (one line on stdout) once the mount answers, and unmounts
//! on SIGINT or SIGTERM. docs/efs-sim.md describes what it models.

#[path = "../tests/support/efs_sim.rs"]
mod efs_sim;

use std::io::Write;
use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;
use tokio::signal::unix::{SignalKind, signal};

/// Serve SOURCE read-only at MOUNTPOINT through FUSE, like EFS: every round
/// trip waits the latency, all reads share the throughput ceiling.
#[derive(Parser, Debug)]
#[command(name = "efs_sim")]
struct Args {
    /// Latency of each round trip (lookup, getattr, open, read, readdir), ms.
    #[arg(long, env = "EFS_SIM_LATENCY_MS", default_value_t = 2.0)]
    latency_ms: f64,
    /// Throughput ceiling shared by all reads, MB/s (10^6 bytes); 0: none.
    #[arg(long, env = "EFS_SIM_MBPS", default_value_t = 200.0)]
    mbps: f64,
    /// How long the kernel may cache names and attributes, ms (0: every
    /// stat and path walk is a round trip).
    #[arg(long, env = "EFS_SIM_ATTR_TTL_MS", default_value_t = 0)]
    attr_ttl_ms: u64,
    /// Kernel read-ahead of the mount, KiB (15360 is what efs-utils sets).
    #[arg(long, env = "EFS_SIM_READ_AHEAD_KB", default_value_t = efs_sim::EFS_READ_AHEAD / 1024)]
    read_ahead_kb: u32,
    /// The directory to serve.
    #[arg(env = "EFS_SIM_SOURCE")]
    source: PathBuf,
    /// An existing, empty directory to mount on.
    #[arg(env = "EFS_SIM_MOUNTPOINT")]
    mountpoint: PathBuf,
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    efs_sim::available().map_err(anyhow::Error::msg)?;
    anyhow::ensure!(
        args.latency_ms.is_finite() && args.latency_ms >= 0.0,
        "--latency-ms must be a non-negative number"
    );
    anyhow::ensure!(
        args.mbps.is_finite() && args.mbps >= 0.0,
        "--mbps must be a non-negative number"
    );
    let options = efs_sim::Options {
        latency: Duration::from_secs_f64(args.latency_ms / 1000.0),
        bytes_per_sec: (args.mbps > 0.0).then_some((args.mbps * 1e6) as u64),
        attr_ttl: Duration::from_millis(args.attr_ttl_ms),
        read_ahead: args.read_ahead_kb.saturating_mul(1024),
    };
    // Signals first, so one that arrives right after "mounted" still unmounts.
    let mut interrupt = signal(SignalKind::interrupt())?;
    let mut terminate = signal(SignalKind::terminate())?;
    let sim = efs_sim::EfsSim::mount(&args.source, &args.mountpoint, options)?;
    let mut stdout = std::io::stdout();
    writeln!(stdout, "mounted")?;
    stdout.flush()?;
    tokio::select! {
        _ = interrupt.recv() => {}
        _ = terminate.recv() => {}
    }
    drop(sim);
    Ok(())
}
