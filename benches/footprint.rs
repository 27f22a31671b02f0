//! Do footprint charges match what loads really cost? For each model file and
//! format, a fresh child process loads many copies (each its own file, so each
//! `.ort` mapping is its own pages), keeps them all, and compares the growth of
//! its resident memory with the sum of the charges (`footprint_bytes`). Run
//! once quietly and once while another thread runs a model without pause (the
//! charges must not take in what other threads allocate).
//!
//! ```text
//! scripts/bench-footprint.sh     # makes the big model, runs this, prints the table
//! MODEL_ROUTER_FOOTPRINT_MODELS=a.onnx,a.ort,... cargo bench --bench footprint
//! ```
//!
//! Growth is `VmRSS` after minus before (jemalloc purged both times), with
//! every `.ort` mapping touched in full so its pages are resident, as a model
//! in use would have them. The ratio printed is growth / charges: 1.00 is exact.

use std::env;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use model_router::engine::{
    Engine, EngineConfig, LoadedModel, ModelFormat, Tensor, TensorData, find_library,
    process_memory, release_free_memory,
};

const MODELS_ENV: &str = "MODEL_ROUTER_FOOTPRINT_MODELS";
const CHILD_ENV: &str = "MODEL_ROUTER_FOOTPRINT_CHILD";
const MIB: f64 = (1 << 20) as f64;

fn main() {
    if let Ok(spec) = env::var(CHILD_ENV) {
        child(&spec);
        return;
    }
    let models = env::var(MODELS_ENV).unwrap_or_else(|_| {
        let data = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/models");
        ["mlp.onnx", "mlp.ort", "sized_0.onnx", "sized_0.ort"]
            .map(|f| data.join(f).display().to_string())
            .join(",")
    });
    println!(
        "{:<24} {:>4} {:>6} {:>11} {:>11} {:>11} {:>7}",
        "model", "fmt", "loads", "load", "charged", "RSS grew", "ratio"
    );
    let exe = env::current_exe().expect("the bench's own path");
    let mut worst: f64 = 1.0;
    for model in models.split(',').filter(|m| !m.is_empty()) {
        for busy in ["quiet", "busy"] {
            let output = Command::new(&exe)
                .env(CHILD_ENV, format!("{busy}:{model}"))
                .output()
                .expect("child runs");
            let text = String::from_utf8_lossy(&output.stdout);
            let Some(line) = text.lines().find(|l| l.starts_with("result ")) else {
                eprintln!(
                    "{model} ({busy}): child failed: {}",
                    String::from_utf8_lossy(&output.stderr)
                );
                std::process::exit(1);
            };
            let fields: Vec<f64> = line
                .split_whitespace()
                .skip(1)
                .map(|f| f.parse().unwrap_or(0.0))
                .collect();
            let [loads, charged, grew] = fields[..] else {
                panic!("bad child line {line}");
            };
            let ratio = grew / charged;
            worst = if (ratio - 1.0).abs() > (worst - 1.0).abs() {
                ratio
            } else {
                worst
            };
            let name = Path::new(model)
                .file_name()
                .unwrap_or_default()
                .to_string_lossy();
            println!(
                "{:<24} {:>4} {:>6} {:>8.3} MiB {:>7.1} MiB {:>7.1} MiB {:>7.3}",
                format!("{name} ({busy})"),
                fmt_of(model),
                loads,
                charged / loads / MIB,
                charged / MIB,
                grew / MIB,
                ratio
            );
        }
    }
    println!("worst ratio (resident growth / charges): {worst:.3}");
}

fn fmt_of(path: &str) -> ModelFormat {
    ModelFormat::from_file_name(path).expect(".onnx or .ort")
}

/// Loads as many copies as make ~64 MiB of files (at least 3, at most 400).
fn child(spec: &str) {
    let (busy, model) = spec.split_once(':').expect("busy:path");
    let path = PathBuf::from(model);
    let format = fmt_of(model);
    let size = std::fs::metadata(&path).expect("model file").len();
    let loads = ((64u64 << 20) / size.max(1)).clamp(3, 400) as usize;
    let engine = Engine::init(&EngineConfig {
        dylib_path: find_library(None).expect("ONNX Runtime"),
        intra_threads: 1,
    })
    .expect("engine");
    // With the run memory limit serve sets (src/engine/arena.rs), sessions use
    // one shared arena: charges must hold that way too.
    if let Some(limit) = env::var("MODEL_ROUTER_FOOTPRINT_RUN_LIMIT")
        .ok()
        .and_then(|v| v.parse().ok())
    {
        engine.limit_run_memory(limit).expect("run limit");
    }
    let copies = tempfile::tempdir().expect("temp dir");
    let files: Vec<PathBuf> = (0..loads)
        .map(|i| {
            let copy = copies.path().join(format!("{i}.{format}"));
            std::fs::copy(&path, &copy).expect("copy");
            copy
        })
        .collect();
    // Another model running without pause on another thread, for "busy".
    let stop = Arc::new(AtomicBool::new(false));
    let runner = (busy == "busy").then(|| {
        let stop = stop.clone();
        let engine = engine.clone();
        std::thread::spawn(move || {
            let mlp = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/models/mlp.onnx");
            let model = engine.load(&mlp, ModelFormat::Onnx).expect("mlp loads");
            while !stop.load(Ordering::Relaxed) {
                let rows = Tensor::new(vec![256, 4], TensorData::Fp32(vec![0.5; 1024])).unwrap();
                let _ = model.run(vec![("features".into(), rows)], None);
            }
        })
    });
    std::thread::sleep(std::time::Duration::from_millis(200));
    release_free_memory();
    let before = process_memory();
    let mut models: Vec<LoadedModel> = Vec::with_capacity(loads);
    let mut charged = 0u64;
    for file in &files {
        let model = engine.load(file, format).expect("model loads");
        charged += model.footprint_bytes();
        models.push(model);
    }
    stop.store(true, Ordering::Relaxed);
    if let Some(runner) = runner {
        runner.join().expect("runner");
    }
    // A model in use has its mapped pages resident: touch them all.
    if format == ModelFormat::Ort {
        for file in &files {
            let bytes = std::fs::read(file).expect("read");
            std::hint::black_box(bytes);
        }
        touch_mappings();
    }
    release_free_memory();
    let after = process_memory();
    let grew = after.rss_bytes.saturating_sub(before.rss_bytes);
    println!("result {loads} {charged} {grew}");
    drop(models);
}

/// Reads one byte per page of every file mapping of this process that lies
/// under the temp dir, through /proc/self/maps and /proc/self/mem (the
/// mappings belong to ONNX Runtime's sessions; reading the files again does
/// not make their mapped pages resident in this process's RSS).
fn touch_mappings() {
    let maps = std::fs::read_to_string("/proc/self/maps").unwrap_or_default();
    let mem = std::fs::File::open("/proc/self/mem").expect("/proc/self/mem");
    let tmp = env::temp_dir().display().to_string();
    for line in maps.lines().filter(|l| l.contains(&tmp)) {
        let Some((range, _)) = line.split_once(' ') else {
            continue;
        };
        let Some((start, end)) = range.split_once('-') else {
            continue;
        };
        let (Ok(start), Ok(end)) = (u64::from_str_radix(start, 16), u64::from_str_radix(end, 16))
        else {
            continue;
        };
        let mut byte = [0u8; 1];
        let mut page = start;
        while page < end {
            let _ = std::os::unix::fs::FileExt::read_at(&mem, &mut byte, page);
            page += 4096;
        }
    }
}
