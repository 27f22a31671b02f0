//! Resident memory under model churn: many models through a small cache, as
//! the real server (in this process, on 127.0.0.1:0) serves them, with this
//! process's `VmRSS` and `RssAnon` sampled every 10 ms. Prints the peak
//! against the cache budget and the idle baseline, then evicts everything and
//! prints what is left 0.5 s and 11.5 s later (tokio's blocking-pool threads,
//! and their thread-local caches, end after 10 s idle).
//!
//! ```text
//! scripts/bench-churn.sh                      # generates the models, runs this
//! MODEL_ROUTER_CHURN_DIR=/tmp/m cargo bench --bench churn
//! ```
//!
//! Knobs (environment): `CHURN_BUDGET` (cache budget, default 6Mi),
//! `CHURN_ROUNDS` (passes over all models, default 3), `CHURN_CLIENTS`
//! (concurrent clients, default 4). Every answer must be 200, or the bench
//! fails. The bound checked (exit status 1 when broken): peak VmRSS <= cache
//! budget + 64 MiB, and 11.5 s after evicting everything VmRSS <= idle + 16 MiB.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use model_router::engine::{process_memory, release_free_memory};
use model_router::repository::{PublishRequest, Repository};
use model_router::{Config, ModelService};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const MIB: u64 = 1 << 20;

fn main() {
    let Some(dir) = std::env::var_os("MODEL_ROUTER_CHURN_DIR").map(PathBuf::from) else {
        eprintln!(
            "churn: MODEL_ROUTER_CHURN_DIR is not set; skipping (scripts/bench-churn.sh sets it)"
        );
        return;
    };
    let budget = std::env::var("CHURN_BUDGET")
        .ok()
        .and_then(|v| model_router::config::parse_bytes(&v).ok())
        .unwrap_or(6 * MIB);
    let rounds: usize = env_number("CHURN_ROUNDS", 3);
    let clients: usize = env_number("CHURN_CLIENTS", 4);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let ok = runtime.block_on(churn(&dir, budget, rounds, clients));
    if !ok {
        std::process::exit(1);
    }
}

fn env_number(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

async fn churn(dir: &Path, budget: u64, rounds: usize, clients: usize) -> bool {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .expect("model dir")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "onnx" || e == "ort"))
        .collect();
    files.sort();
    let root = tempfile::tempdir().expect("repo");
    let staging = tempfile::tempdir().expect("staging");
    let repository = Repository::open(root.path()).expect("repository");
    let mut names = Vec::new();
    for (i, file) in files.iter().enumerate() {
        let name = format!("m{i}");
        repository
            .publish(&PublishRequest {
                name: name.clone(),
                version: "1".into(),
                source: file.clone(),
                team: None,
                description: None,
            })
            .expect("publish");
        names.push(name);
    }
    let mut config = Config::for_repository(root.path().into(), staging.path().into(), budget);
    // The split serve makes under a memory limit (so the run arena is in use):
    // 256 MiB of request headroom over the budget and the baseline.
    model_router::engine::Engine::init(&model_router::engine::EngineConfig {
        dylib_path: model_router::engine::find_library(None).expect("ONNX Runtime"),
        intra_threads: 1,
    })
    .expect("engine");
    release_free_memory();
    config.memory_limit = Some(process_memory().rss_bytes + budget + 256 * MIB);
    config.memory_limit_source = "flag";
    let service = ModelService::new(config).expect("service");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let served = service.clone();
    tokio::spawn(model_router::server::serve(
        listener,
        served,
        std::future::pending(),
    ));

    tokio::time::sleep(Duration::from_millis(200)).await;
    release_free_memory();
    let idle = process_memory();

    // The sampler: peaks of VmRSS and RssAnon.
    let stop = Arc::new(AtomicBool::new(false));
    let peak_rss = Arc::new(AtomicU64::new(0));
    let peak_anon = Arc::new(AtomicU64::new(0));
    let sampler = {
        let (stop, peak_rss, peak_anon) = (stop.clone(), peak_rss.clone(), peak_anon.clone());
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                let now = process_memory();
                peak_rss.fetch_max(now.rss_bytes, Ordering::Relaxed);
                peak_anon.fetch_max(now.rss_anon_bytes, Ordering::Relaxed);
                std::thread::sleep(Duration::from_millis(10));
            }
        })
    };

    let started = Instant::now();
    let names = Arc::new(names);
    let mut tasks = Vec::new();
    for client in 0..clients {
        let names = names.clone();
        tasks.push(tokio::spawn(async move {
            // A fixed pseudo-random walk per client (an LCG), so runs compare.
            let mut state = 0x9E37_79B9_7F4A_7C15u64 ^ client as u64;
            let mut failures = Vec::new();
            for _ in 0..rounds * names.len() / clients.max(1) {
                state = state
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                let name = &names[(state >> 33) as usize % names.len()];
                let rows = 1 + (state >> 20) as usize % 8;
                let row: Vec<f32> = (0..64).map(|j| (j as f32) / 64.0).collect();
                let body = serde_json::json!({ "features": vec![row; rows] }).to_string();
                let status = post(addr, &format!("/models/{name}/1/predict"), &body).await;
                if status != 200 {
                    failures.push((name.clone(), status));
                }
            }
            failures
        }));
    }
    let mut failures = Vec::new();
    for task in tasks {
        failures.extend(task.await.expect("client"));
    }
    let churn_seconds = started.elapsed().as_secs_f64();
    let cache = service.cache_status();
    let keys: Vec<String> = cache.entries.iter().map(|e| e.model.clone()).collect();
    service.evict(&keys);
    tokio::time::sleep(Duration::from_millis(500)).await;
    release_free_memory();
    let soon_after = process_memory();
    // tokio ends blocking-pool threads idle for 10 s; with them go their
    // thread-local caches (jemalloc's and ONNX Runtime's).
    tokio::time::sleep(Duration::from_secs(11)).await;
    release_free_memory();
    let after = process_memory();
    stop.store(true, Ordering::Relaxed);
    sampler.join().expect("sampler");
    let (peak_rss, peak_anon) = (
        peak_rss.load(Ordering::Relaxed),
        peak_anon.load(Ordering::Relaxed),
    );

    let mib = |b: u64| b as f64 / MIB as f64;
    println!(
        "churn: {} models, {} requests by {clients} clients in {churn_seconds:.1} s; cache budget {:.1} MiB; {} loads, {} evictions",
        names.len(),
        rounds * names.len() / clients.max(1) * clients,
        mib(budget),
        cache.loads,
        cache.evictions
    );
    println!(
        "idle:              VmRSS {:>7.1} MiB   RssAnon {:>7.1} MiB",
        mib(idle.rss_bytes),
        mib(idle.rss_anon_bytes)
    );
    println!(
        "peak under churn:  VmRSS {:>7.1} MiB   RssAnon {:>7.1} MiB   (budget + 64 MiB = {:.1} MiB; peak - idle = {:.1} MiB = {:.2} x budget)",
        mib(peak_rss),
        mib(peak_anon),
        mib(budget + 64 * MIB),
        mib(peak_rss.saturating_sub(idle.rss_bytes)),
        peak_rss.saturating_sub(idle.rss_bytes) as f64 / budget as f64
    );
    println!(
        "evicted, 0.5 s:    VmRSS {:>7.1} MiB   RssAnon {:>7.1} MiB   ({:+.1} MiB from idle)",
        mib(soon_after.rss_bytes),
        mib(soon_after.rss_anon_bytes),
        mib(soon_after.rss_bytes) - mib(idle.rss_bytes)
    );
    println!(
        "evicted, 11.5 s:   VmRSS {:>7.1} MiB   RssAnon {:>7.1} MiB   ({:+.1} MiB from idle)",
        mib(after.rss_bytes),
        mib(after.rss_anon_bytes),
        mib(after.rss_bytes) - mib(idle.rss_bytes)
    );
    println!(
        "allocated (jemalloc): idle {:.1} MiB, after {:.1} MiB; allocator resident: idle {:.1} MiB, after {:.1} MiB",
        mib(idle.allocated_bytes),
        mib(after.allocated_bytes),
        mib(idle.allocator_resident_bytes),
        mib(after.allocator_resident_bytes)
    );
    let within = peak_rss <= budget + 64 * MIB;
    let returned = after.rss_bytes <= idle.rss_bytes + 16 * MIB;
    println!(
        "bound: peak <= budget + 64 MiB: {}; back near idle (<= +16 MiB): {}; non-200 answers: {}",
        if within { "yes" } else { "NO" },
        if returned { "yes" } else { "NO" },
        failures.len()
    );
    if let Some((name, status)) = failures.first() {
        println!("first failure: {name}: {status}");
    }
    within && returned && failures.is_empty()
}

/// One request with `Connection: close`; the status.
async fn post(addr: std::net::SocketAddr, path: &str, body: &str) -> u16 {
    let Ok(mut stream) = tokio::net::TcpStream::connect(addr).await else {
        return 0;
    };
    let head = format!(
        "POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    if stream.write_all(head.as_bytes()).await.is_err()
        || stream.write_all(body.as_bytes()).await.is_err()
    {
        return 0;
    }
    let mut response = Vec::new();
    let _ = stream.read_to_end(&mut response).await;
    String::from_utf8_lossy(&response)
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0)
}
