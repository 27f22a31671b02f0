//! A small closed-loop HTTP/1.1 load client for scripts/bench-concurrency.sh:
//! `--concurrency` keep-alive connections on loopback, each sending one
//! request, waiting for its answer and sending the next, for `--seconds` or
//! `--max-requests` in all, whichever comes first.
//!
//! ```sh
//! cargo run --release --example load_client -- --addr 127.0.0.1:8080 \
//!     --target /models/mlp/1/predict=body.json --concurrency 4 --seconds 3
//! ```
//!
//! Several `--target PATH=BODY_FILE` spread the connections over them
//! (connection i sends to target i mod n), e.g. two models at once. Prints one
//! JSON line: requests, non-2xx answers, seconds, requests/s, p50/p99 (ms).
//! Written in Rust, with one thread, so that the client costs the machine
//! under test as little CPU as possible.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use clap::Parser;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

#[derive(Parser, Debug)]
#[command(name = "load_client")]
struct Args {
    /// The server's address.
    #[arg(long, env = "LOAD_ADDR")]
    addr: SocketAddr,
    /// `PATH=BODY_FILE`: POST the file's bytes to PATH. Repeatable.
    #[arg(
        long = "target",
        env = "LOAD_TARGETS",
        value_delimiter = ',',
        required = true
    )]
    targets: Vec<String>,
    /// Connections, each with one request in flight.
    #[arg(long, env = "LOAD_CONCURRENCY", default_value_t = 1)]
    concurrency: usize,
    /// Stop after this long.
    #[arg(long, env = "LOAD_SECONDS", default_value_t = 3.0)]
    seconds: f64,
    /// Stop after this many requests in all.
    #[arg(long, env = "LOAD_MAX_REQUESTS", default_value_t = 200_000)]
    max_requests: usize,
}

/// What one connection saw: each request's latency, and the non-2xx count.
type Outcome = std::io::Result<(Vec<Duration>, usize)>;

async fn connection(addr: SocketAddr, request: Vec<u8>, until: Instant, budget: usize) -> Outcome {
    let mut stream = TcpStream::connect(addr).await?;
    stream.set_nodelay(true)?;
    let mut latencies = Vec::new();
    let mut errors = 0;
    let mut buffer = Vec::with_capacity(64 * 1024);
    while Instant::now() < until && latencies.len() < budget {
        let started = Instant::now();
        stream.write_all(&request).await?;
        let status = read_response(&mut stream, &mut buffer).await?;
        latencies.push(started.elapsed());
        if !(200..300).contains(&status) {
            errors += 1;
        }
    }
    Ok((latencies, errors))
}

/// Reads one response (Content-Length bodies: what the router sends) and
/// returns its status.
async fn read_response(stream: &mut TcpStream, buffer: &mut Vec<u8>) -> std::io::Result<u16> {
    buffer.clear();
    let invalid =
        |what: &str| std::io::Error::new(std::io::ErrorKind::InvalidData, what.to_string());
    let head_end = loop {
        if let Some(end) = buffer.windows(4).position(|w| w == b"\r\n\r\n") {
            break end + 4;
        }
        let mut chunk = [0u8; 16 * 1024];
        let read = stream.read(&mut chunk).await?;
        if read == 0 {
            return Err(invalid("connection closed mid-response"));
        }
        buffer.extend_from_slice(&chunk[..read]);
    };
    let head = String::from_utf8_lossy(&buffer[..head_end]).to_ascii_lowercase();
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| invalid("no status"))?;
    let length: usize = head
        .lines()
        .find_map(|line| line.strip_prefix("content-length:"))
        .and_then(|v| v.trim().parse().ok())
        .ok_or_else(|| invalid("no content-length"))?;
    let mut have = buffer.len() - head_end;
    while have < length {
        let mut chunk = [0u8; 16 * 1024];
        let read = stream.read(&mut chunk).await?;
        if read == 0 {
            return Err(invalid("connection closed mid-body"));
        }
        have += read;
    }
    Ok(status)
}

fn percentile(sorted: &[Duration], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let index = ((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[index].as_secs_f64() * 1e3
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args = Args::parse();
    let mut requests = Vec::new();
    for target in &args.targets {
        let (path, file) = target
            .split_once('=')
            .ok_or_else(|| format!("--target {target:?}: expected PATH=BODY_FILE"))?;
        let body = std::fs::read(file).map_err(|e| format!("reading {file}: {e}"))?;
        let mut request = format!(
            "POST {path} HTTP/1.1\r\nHost: {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
            args.addr,
            body.len()
        )
        .into_bytes();
        request.extend_from_slice(&body);
        requests.push(request);
    }
    let concurrency = args.concurrency.max(1);
    let started = Instant::now();
    let until = started + Duration::from_secs_f64(args.seconds);
    let budget = args.max_requests.div_ceil(concurrency);
    let tasks: Vec<_> = (0..concurrency)
        .map(|i| {
            let request = requests[i % requests.len()].clone();
            tokio::spawn(connection(args.addr, request, until, budget))
        })
        .collect();
    let mut latencies = Vec::new();
    let mut errors = 0;
    for task in tasks {
        let (mut seen, failed) = task.await??;
        latencies.append(&mut seen);
        errors += failed;
    }
    let seconds = started.elapsed().as_secs_f64();
    latencies.sort();
    println!(
        "{{\"requests\": {}, \"errors\": {errors}, \"seconds\": {seconds:.3}, \"rps\": {:.1}, \"p50_ms\": {:.3}, \"p99_ms\": {:.3}}}",
        latencies.len(),
        latencies.len() as f64 / seconds,
        percentile(&latencies, 0.50),
        percentile(&latencies, 0.99)
    );
    Ok(())
}
