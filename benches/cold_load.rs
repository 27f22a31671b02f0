//! Cold load of a ~128 MiB model, `.ort` zero-copy against `.onnx`, in one run:
//! the time `Engine::load` takes each way, their ratio, and the anonymous
//! memory each way adds.
//!
//! ```text
//! scripts/bench-cold-load.sh          # generates the model, runs this, prints a summary
//! MODEL_ROUTER_BIG_ORT=/tmp/m/big.ort MODEL_ROUTER_BIG_ONNX=/tmp/m/big.onnx cargo bench --bench cold_load
//! ```
//!
//! The model comes from `scripts/make_big_model.py` (never committed). Without
//! the two variables the bench says so and does nothing.
//!
//! How each number is measured:
//! - Answer check first: both sessions must give the same output (within float
//!   tolerance: the `.onnx` session prepacks its MatMul weights, the zero-copy
//!   one does not, so kernels differ) for one input, or the bench stops.
//! - Time: criterion times `Engine::load` alone (dropping the model is outside
//!   the timed part). The file is in the page cache after the first load, so
//!   this is session creation from a mapped file, not disk I/O. The summary
//!   gives the median and mean of every timed load (criterion's warm-up
//!   included) and their ratios; the median resists the noise of other
//!   processes on a shared machine, the mean is what criterion estimates.
//! - Memory: each format is loaded once in each of several fresh child
//!   processes (this binary, re-run with `MODEL_ROUTER_COLD_LOAD_CHILD`), which
//!   reads `RssAnon` and `RssFile` from `/proc/self/status` after creating the
//!   engine, after the load, and after one inference. A fresh process per load
//!   keeps one load's freed memory from being reused by the next.

use std::env;
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use criterion::{Criterion, SamplingMode};
use model_router::engine::{
    Dim, ElementType, Engine, EngineConfig, LoadedModel, ModelFormat, OutputValue, Tensor,
    TensorData, ValueKind, find_library,
};

const ORT_ENV: &str = "MODEL_ROUTER_BIG_ORT";
const ONNX_ENV: &str = "MODEL_ROUTER_BIG_ONNX";
const CHILD_ENV: &str = "MODEL_ROUTER_COLD_LOAD_CHILD";
const MIB: f64 = (1 << 20) as f64;
/// Fresh child processes per format for the memory numbers.
const MEMORY_RUNS: usize = 5;

fn main() {
    if let Some(format) = env::var_os(CHILD_ENV) {
        child(&format);
        return;
    }
    let (Some(ort_path), Some(onnx_path)) = (env::var_os(ORT_ENV), env::var_os(ONNX_ENV)) else {
        eprintln!(
            "cold_load: {ORT_ENV} and {ONNX_ENV} are not set; skipping (scripts/bench-cold-load.sh sets them)"
        );
        return;
    };
    let models = [
        (ModelFormat::Ort, PathBuf::from(ort_path)),
        (ModelFormat::Onnx, PathBuf::from(onnx_path)),
    ];
    let engine = engine();

    let max_difference = check_same_answer(&engine, &models);
    // Several children per format: what malloc keeps after a load varies a
    // little from process to process (threads, arenas); the summary shows the
    // median child and the range.
    let memory: Vec<Vec<Memory>> = models
        .iter()
        .map(|(format, path)| {
            let mut runs: Vec<Memory> = (0..MEMORY_RUNS)
                .map(|_| measure_in_child(*format, path))
                .collect();
            runs.sort_by_key(|m| m.anon_by_load);
            runs
        })
        .collect();

    let mut criterion = Criterion::default()
        .sample_size(10)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(8))
        .configure_from_args();
    let mut group = criterion.benchmark_group("cold_load");
    // Flat: every sample runs the same number of loads; a .onnx load takes
    // ~0.5 s, so criterion's default linear ramp would take minutes.
    group.sampling_mode(SamplingMode::Flat);
    let mut timings = Vec::new();
    for (format, path) in &models {
        let mut loads = Vec::new();
        group.bench_function(bench_name(*format), |bencher| {
            bencher.iter_custom(|iterations| {
                let mut total = Duration::ZERO;
                for _ in 0..iterations {
                    let start = Instant::now();
                    let model = load(&engine, path, *format);
                    let took = start.elapsed();
                    drop(model);
                    loads.push(took);
                    total += took;
                }
                total
            })
        });
        timings.push(Timing::of(&mut loads));
    }
    group.finish();
    criterion.final_summary();

    print_summary(&models, &timings, &memory, max_difference);
}

fn engine() -> Engine {
    let explicit = env::var_os("ORT_DYLIB_PATH").map(PathBuf::from);
    let dylib_path = find_library(explicit.as_deref()).expect("ONNX Runtime library");
    Engine::init(&EngineConfig {
        dylib_path,
        intra_threads: 0,
    })
    .expect("ONNX Runtime environment")
}

fn load(engine: &Engine, path: &Path, format: ModelFormat) -> LoadedModel {
    engine
        .load(path, format)
        .unwrap_or_else(|e| panic!("loading {}: {e}", path.display()))
}

fn bench_name(format: ModelFormat) -> &'static str {
    match format {
        ModelFormat::Ort => "ort_zero_copy",
        ModelFormat::Onnx => "onnx",
    }
}

/// Two rows of a fixed pattern for the model's one `[N, width]` float input.
fn sample_input(model: &LoadedModel) -> Vec<(String, Tensor)> {
    let input = &model.signature().inputs[0];
    let ValueKind::Tensor {
        element_type: ElementType::Fp32,
        shape,
    } = &input.kind
    else {
        panic!(
            "the big model's input should be a float32 tensor, is {:?}",
            input.kind
        );
    };
    let Some(&Dim::Fixed(width)) = shape.get(1) else {
        panic!("the big model's input should be [N, width], is {shape:?}");
    };
    let rows = 2;
    let data = (0..rows * width)
        .map(|i| ((i % 13) as f32 - 6.0) / 6.0)
        .collect();
    let tensor =
        Tensor::new(vec![rows, width], TensorData::Fp32(data)).expect("shape matches data");
    vec![(input.name.clone(), tensor)]
}

fn run_once(model: &LoadedModel) -> Vec<f32> {
    let outputs = model.run(sample_input(model), None).expect("inference");
    match outputs.into_iter().next() {
        Some((_, OutputValue::Tensor(tensor))) => match tensor.data() {
            TensorData::Fp32(values) => values.clone(),
            other => panic!("expected a float32 output, got {:?}", other.element_type()),
        },
        other => panic!("expected one tensor output, got {other:?}"),
    }
}

/// Both formats must compute the same thing before their load times mean
/// anything. Returns the largest difference relative to the output's scale.
fn check_same_answer(engine: &Engine, models: &[(ModelFormat, PathBuf)]) -> f32 {
    let [(ort_format, ort_path), (onnx_format, onnx_path)] = models else {
        unreachable!("two formats");
    };
    let from_ort = run_once(&load(engine, ort_path, *ort_format));
    let from_onnx = run_once(&load(engine, onnx_path, *onnx_format));
    assert_eq!(from_ort.len(), from_onnx.len(), "outputs differ in size");
    let scale = from_onnx
        .iter()
        .fold(0f32, |max, v| max.max(v.abs()))
        .max(f32::MIN_POSITIVE);
    let difference = from_ort
        .iter()
        .zip(&from_onnx)
        .fold(0f32, |max, (a, b)| max.max((a - b).abs()))
        / scale;
    assert!(
        difference < 1e-4,
        "the .ort and .onnx sessions disagree: max relative difference {difference}"
    );
    difference
}

/// Median and mean of one format's timed loads.
struct Timing {
    median: Duration,
    mean: Duration,
    loads: usize,
}

impl Timing {
    fn of(samples: &mut [Duration]) -> Timing {
        samples.sort();
        let count = u32::try_from(samples.len()).unwrap_or(u32::MAX).max(1);
        Timing {
            median: samples.get(samples.len() / 2).copied().unwrap_or_default(),
            mean: samples.iter().sum::<Duration>() / count,
            loads: samples.len(),
        }
    }
}

/// What one load cost in a fresh process, in bytes.
#[derive(Debug, Default)]
struct Memory {
    anon_by_load: i64,
    anon_by_first_run: i64,
    file_by_first_run: i64,
    footprint: u64,
}

fn measure_in_child(format: ModelFormat, path: &Path) -> Memory {
    let exe = env::current_exe().expect("this bench's path");
    let output = Command::new(exe)
        .env(CHILD_ENV, bench_name(format))
        .env(
            match format {
                ModelFormat::Ort => ORT_ENV,
                ModelFormat::Onnx => ONNX_ENV,
            },
            path,
        )
        .output()
        .expect("re-running this bench as a child");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "memory child for {format} failed: {}{stdout}",
        String::from_utf8_lossy(&output.stderr)
    );
    let field = |key: &str| -> i64 {
        stdout
            .split_whitespace()
            .find_map(|pair| pair.strip_prefix(key)?.strip_prefix('='))
            .and_then(|value| value.parse().ok())
            .unwrap_or_else(|| panic!("memory child printed no {key}: {stdout}"))
    };
    Memory {
        anon_by_load: field("anon_by_load"),
        anon_by_first_run: field("anon_by_first_run"),
        file_by_first_run: field("file_by_first_run"),
        footprint: field("footprint").unsigned_abs(),
    }
}

/// The child side of [`measure_in_child`]: one load, one run, numbers on stdout.
fn child(format: &OsString) {
    let (format, path_var) = if format == bench_name(ModelFormat::Ort) {
        (ModelFormat::Ort, ORT_ENV)
    } else {
        (ModelFormat::Onnx, ONNX_ENV)
    };
    let path = PathBuf::from(env::var_os(path_var).expect("model path for the child"));
    let engine = engine();
    let before = status_bytes();
    let model = load(&engine, &path, format);
    let loaded = status_bytes();
    run_once(&model);
    let ran = status_bytes();
    println!(
        "anon_by_load={} anon_by_first_run={} file_by_first_run={} footprint={}",
        loaded.anon - before.anon,
        ran.anon - loaded.anon,
        ran.file - loaded.file,
        model.footprint_bytes()
    );
}

struct Rss {
    anon: i64,
    file: i64,
}

fn status_bytes() -> Rss {
    let status =
        std::fs::read_to_string("/proc/self/status").expect("/proc/self/status (Linux only)");
    let field = |name: &str| -> i64 {
        status
            .lines()
            .find_map(|line| line.strip_prefix(name))
            .and_then(|rest| rest.trim().strip_suffix("kB"))
            .and_then(|kib| kib.trim().parse::<i64>().ok())
            .map(|kib| kib * 1024)
            .unwrap_or_else(|| panic!("no {name} in /proc/self/status"))
    };
    Rss {
        anon: field("RssAnon:"),
        file: field("RssFile:"),
    }
}

fn print_summary(
    models: &[(ModelFormat, PathBuf)],
    timings: &[Timing],
    memory: &[Vec<Memory>],
    max_difference: f32,
) {
    let ms = |d: &Duration| d.as_secs_f64() * 1e3;
    let mib = |bytes: i64| bytes as f64 / MIB;
    println!();
    println!("cold_load summary");
    for (format, path) in models {
        let size = std::fs::metadata(path).map(|m| m.len()).unwrap_or(0);
        println!(
            "  model .{format}: {} ({:.1} MiB)",
            path.display(),
            size as f64 / MIB
        );
    }
    println!("  same answer: yes (max difference {max_difference:.1e} of the output's scale)");
    println!("  load time (Engine::load, file in page cache):");
    for ((format, _), timing) in models.iter().zip(timings) {
        println!(
            "    .{format:<5} median {:>8.2} ms, mean {:>8.2} ms ({} loads)",
            ms(&timing.median),
            ms(&timing.mean),
            timing.loads
        );
    }
    if let [ort, onnx] = timings {
        let ratio = |onnx: &Duration, ort: &Duration| ms(onnx) / ms(ort).max(f64::MIN_POSITIVE);
        println!(
            "    ratio .onnx / .ort: {:.0}x by median, {:.0}x by mean",
            ratio(&onnx.median, &ort.median),
            ratio(&onnx.mean, &ort.mean)
        );
    }
    println!(
        "  memory (one load per fresh child process, {MEMORY_RUNS} children per format, median child shown; \
         RssAnon/RssFile deltas from /proc/self/status):"
    );
    for ((format, _), runs) in models.iter().zip(memory) {
        let (Some(low), Some(high)) = (runs.first(), runs.last()) else {
            continue;
        };
        let m = &runs[runs.len() / 2];
        println!(
            "    .{format:<5} anon by load {:>7.1} MiB (range {:.1}..{:.1}) | then first run: anon {:>+6.1} MiB, \
             file-backed {:>+7.1} MiB | footprint_bytes {:>6.1} MiB",
            mib(m.anon_by_load),
            mib(low.anon_by_load),
            mib(high.anon_by_load),
            mib(m.anon_by_first_run),
            mib(m.file_by_first_run),
            m.footprint as f64 / MIB
        );
    }
}
