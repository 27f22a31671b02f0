//! Hash-while-copy throughput of staging against the system's sha256 tools, in
//! one run, on one generated file (256 MiB unless `MODEL_ROUTER_BENCH_MIB` says
//! otherwise) in a temporary directory (under `TMPDIR`).
//!
//! ```text
//! scripts/bench-staging.sh          # checks the tools, runs this, prints a summary
//! cargo bench --bench staging
//! ```
//!
//! What each variant does to the same file, a published model version's file
//! (in the page cache: publishing has just read it back):
//!
//! - `stage`: [`Staging::stage`], what a cache miss does: the file read into
//!   anonymous memory with several 1 MiB preads in flight while it is hashed
//!   in order, checked against the manifest, made read-only. The staged copy
//!   on local disk is written afterwards by a background thread; waiting for
//!   it and deleting the previous copy are outside the timing.
//! - `hash_file`: [`hash_file`], the same loop into a sink: hash only.
//! - `openssl` (the baseline): `openssl dgst -sha256 -r FILE`, hash only.
//! - `sha256sum`: `sha256sum FILE`, hash only.
//!
//! The two tools are separate processes, so their times include starting one;
//! the summary measures that start (the tool on an empty file) and shows it.
//! Before timing, all four must give the same sha256, or the bench stops.
//!
//! [`Staging::stage`]: model_router::repository::Staging::stage
//! [`hash_file`]: model_router::repository::hash_file

use std::env;
use std::fs::File;
use std::hint::black_box;
use std::io::{BufWriter, Write};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use criterion::{Criterion, SamplingMode, Throughput};
use model_router::repository::{
    FetchOptions, PublishRequest, Repository, ResolvedModel, StageSource, Staging, hash_file,
};

const SIZE_ENV: &str = "MODEL_ROUTER_BENCH_MIB";
const DEFAULT_MIB: u64 = 256;
const MIB: u64 = 1 << 20;
/// Runs of each tool on an empty file, to show what starting it costs.
const START_RUNS: usize = 5;

/// A hash-only system tool: its command line before the file, and how its
/// output starts (the hex digest, then a space).
struct Tool {
    name: &'static str,
    program: &'static str,
    args: &'static [&'static str],
}

const OPENSSL: Tool = Tool {
    name: "openssl",
    program: "openssl",
    args: &["dgst", "-sha256", "-r"],
};
const SHA256SUM: Tool = Tool {
    name: "sha256sum",
    program: "sha256sum",
    args: &[],
};

impl Tool {
    fn digest(&self, path: &Path) -> String {
        let output = Command::new(self.program)
            .args(self.args)
            .arg(path)
            .output()
            .unwrap_or_else(|e| panic!("running {} (is it installed?): {e}", self.program));
        let stdout = String::from_utf8_lossy(&output.stdout);
        assert!(
            output.status.success(),
            "{} failed: {}",
            self.name,
            String::from_utf8_lossy(&output.stderr)
        );
        stdout
            .split_whitespace()
            .next()
            .unwrap_or_else(|| panic!("{} printed no digest", self.name))
            .to_ascii_lowercase()
    }
}

fn main() {
    let mib = env::var(SIZE_ENV)
        .ok()
        .and_then(|v| v.parse::<u64>().ok())
        .filter(|v| *v > 0)
        .unwrap_or(DEFAULT_MIB);
    let size = mib * MIB;
    let work = tempfile::tempdir().expect("a temporary directory");
    let model = published_model(work.path(), size);
    let staging_dir = work.path().join("staging");
    let staging = Staging::open(&staging_dir, 2 * size).expect("staging directory");
    let empty = work.path().join("empty");
    File::create(&empty).expect("an empty file");

    let expected = check_same_hash(&model, &staging);
    let starts = [&OPENSSL, &SHA256SUM].map(|tool| start_time(tool, &empty));

    let mut criterion = Criterion::default()
        .sample_size(10)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(6))
        .configure_from_args();
    let mut group = criterion.benchmark_group("staging");
    // Flat: every sample runs the same number of passes; each takes ~0.1-0.5 s.
    group.sampling_mode(SamplingMode::Flat);
    group.throughput(Throughput::Bytes(size));
    let mut timings: Vec<(&str, Vec<Duration>)> = Vec::new();

    let mut passes = Vec::new();
    group.bench_function("stage", |bencher| {
        bencher.iter_custom(|iterations| {
            let mut total = Duration::ZERO;
            for _ in 0..iterations {
                staging.wait_for_writes(Duration::from_secs(60));
                staging.remove(&model.key);
                let start = Instant::now();
                let staged = staging
                    .stage(&model, FetchOptions::default())
                    .expect("staging");
                let took = start.elapsed();
                assert_eq!(staged.source, StageSource::Fetched, "read, not reused");
                black_box(staged);
                passes.push(took);
                total += took;
            }
            total
        })
    });
    timings.push(("stage", passes));

    timings.push((
        "hash_file",
        timed(&mut group, "hash_file", || {
            black_box(hash_file(&model.file).expect("hashing"));
        }),
    ));
    for tool in [&OPENSSL, &SHA256SUM] {
        timings.push((
            tool.name,
            timed(&mut group, tool.name, || {
                black_box(tool.digest(&model.file));
            }),
        ));
    }
    group.finish();
    criterion.final_summary();

    print_summary(size, &expected, &timings, &starts);
}

/// Times `pass` alone, once per iteration, keeping each pass's time.
fn timed(
    group: &mut criterion::BenchmarkGroup<'_, criterion::measurement::WallTime>,
    name: &str,
    mut pass: impl FnMut(),
) -> Vec<Duration> {
    let mut passes = Vec::new();
    group.bench_function(name, |bencher| {
        bencher.iter_custom(|iterations| {
            let mut total = Duration::ZERO;
            for _ in 0..iterations {
                let start = Instant::now();
                pass();
                let took = start.elapsed();
                passes.push(took);
                total += took;
            }
            total
        })
    });
    passes
}

/// Generates `size` bytes of a fixed pseudo-random pattern (incompressible,
/// so no filesystem shortcut applies) and publishes them as version 1 of a
/// model in a repository under `dir`.
fn published_model(dir: &Path, size: u64) -> ResolvedModel {
    let source = dir.join("generated.onnx");
    let mut writer = BufWriter::with_capacity(MIB as usize, File::create(&source).expect("file"));
    let mut state = 0x9E37_79B9_7F4A_7C15u64;
    for _ in 0..size / 8 {
        // xorshift64
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        writer.write_all(&state.to_le_bytes()).expect("writing");
    }
    writer.flush().expect("writing");
    drop(writer);

    let root = dir.join("repository");
    std::fs::create_dir_all(&root).expect("repository directory");
    let repository = Repository::open(&root).expect("repository");
    let (key, _) = repository
        .publish(&PublishRequest {
            name: "big".into(),
            version: "1".into(),
            source: source.clone(),
            team: None,
            description: None,
        })
        .expect("publishing the generated file");
    std::fs::remove_file(&source).expect("removing the generated source");
    repository
        .read(&key)
        .expect("reading the published version")
}

/// Every way must agree on the file's sha256 (and with its manifest) before
/// any is timed.
fn check_same_hash(model: &ResolvedModel, staging: &Staging) -> String {
    let expected = &model.manifest.sha256;
    let staged = staging
        .stage(model, FetchOptions::default())
        .expect("staging");
    assert_eq!(
        staged.bytes.len() as u64,
        model.manifest.size,
        "stage read every byte"
    );
    assert_eq!(
        &hex::encode(<sha2::Sha256 as sha2::Digest>::digest(&staged.bytes[..])),
        expected,
        "the staged bytes"
    );
    assert_eq!(
        &hash_file(&model.file).expect("hashing").0,
        expected,
        "hash_file"
    );
    for tool in [&OPENSSL, &SHA256SUM] {
        assert_eq!(&tool.digest(&model.file), expected, "{}", tool.name);
    }
    expected.clone()
}

/// Median time to run `tool` on an empty file: what starting it costs.
fn start_time(tool: &Tool, empty: &Path) -> Duration {
    let mut runs: Vec<Duration> = (0..START_RUNS)
        .map(|_| {
            let start = Instant::now();
            black_box(tool.digest(empty));
            start.elapsed()
        })
        .collect();
    runs.sort();
    runs[runs.len() / 2]
}

fn print_summary(
    size: u64,
    sha256: &str,
    timings: &[(&str, Vec<Duration>)],
    starts: &[Duration; 2],
) {
    let median = |passes: &[Duration]| -> Option<Duration> {
        let mut sorted = passes.to_vec();
        sorted.sort();
        sorted.get(sorted.len() / 2).copied()
    };
    let mb_per_s = |d: Duration| size as f64 / 1e6 / d.as_secs_f64().max(f64::MIN_POSITIVE);
    let baseline = timings
        .iter()
        .find(|(name, _)| *name == OPENSSL.name)
        .and_then(|(_, passes)| median(passes))
        .map(mb_per_s);
    println!();
    println!("staging summary");
    println!(
        "  file: {} MiB of generated bytes, in the page cache; sha256 {sha256}",
        size / MIB
    );
    println!("  same hash: yes (stage, hash_file, openssl, sha256sum and the manifest agree)");
    println!(
        "  per pass, median over criterion's passes (warm-up included); MB = 10^6 bytes; {} CPUs:",
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    for (name, passes) in timings {
        let Some(median) = median(passes) else {
            println!("    {name:<10} not run");
            continue;
        };
        let what = match *name {
            "stage" => "copy file -> file + sha256 (model-router staging)",
            "hash_file" => "sha256 only (model-router, same loop into a sink)",
            "openssl" => "sha256 only, incl. process start (baseline)",
            _ => "sha256 only, incl. process start",
        };
        let versus = baseline.map_or(String::new(), |openssl| {
            format!(" {:>5.2}x openssl", mb_per_s(median) / openssl)
        });
        println!(
            "    {name:<10} {:>8.1} ms {:>7.0} MB/s{versus}  {what} ({} passes)",
            median.as_secs_f64() * 1e3,
            mb_per_s(median),
            passes.len()
        );
    }
    println!(
        "  process start, on an empty file (median of {START_RUNS}): openssl {:.1} ms, sha256sum {:.1} ms",
        starts[0].as_secs_f64() * 1e3,
        starts[1].as_secs_f64() * 1e3
    );
}
