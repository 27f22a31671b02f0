//! Reload of a ~128 MiB `.ort` model after a memory eviction, against raw
//! ONNX Runtime's session creation from the same staged file, in one run.
//!
//! ```text
//! scripts/bench-load-path.sh      # generates the model, runs this among the rest
//! MODEL_ROUTER_BIG_ORT=/tmp/m/big.ort cargo bench --bench reload
//! ```
//!
//! The model comes from `scripts/make_big_model.py` (never committed); without
//! the variable the bench says so and does nothing.
//!
//! What is measured, through the real [`ModelService`] (repository, staging,
//! cache, engine):
//! - `first load`: the model's first load (nothing staged): the file read into
//!   memory and hashed, the session created, the probe run (one inference on
//!   zeros, so what a session keeps after its first run is measured and
//!   charged: src/engine/footprint.rs). Once, for reference.
//! - `reload`: after `evict`, the next load: the staged copy (written in the
//!   background after the first load; the bench waits for it) is mapped and a
//!   session made from it, no read of the repository, no hash, and no probe
//!   run (the first load's footprint is remembered). The target is at most
//!   10 ms.
//! - `reload + first run`: the reload and the first inference on it, which now
//!   pays what the probe run would have (the first pass over the weights):
//!   what the first request after an eviction waits for beyond a warm one.
//! - `warm run`: an inference on the model already loaded and run.
//! - `raw engine.load` (the baseline): `Engine::load` of that same staged file:
//!   mapping, session creation and its probe run (so a first run), nothing
//!   of the router's around it; compared with `reload + first run`.
//!
//! Before timing, the first load and a reload must give the same output for one
//! input, bit for bit, or the bench stops.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use model_router::cache::Lease;
use model_router::engine::{Dim, ModelFormat, OutputValue, Tensor, TensorData, ValueKind};
use model_router::repository::{ModelKey, PublishRequest, Repository};
use model_router::service::{LoadInfo, Model};
use model_router::{Config, ModelService};

const RUNS: usize = 30;

fn main() {
    let Some(model_file) = std::env::var_os("MODEL_ROUTER_BIG_ORT").map(PathBuf::from) else {
        eprintln!(
            "reload: MODEL_ROUTER_BIG_ORT is not set; run scripts/bench-load-path.sh, which generates the model"
        );
        return;
    };
    let root = tempfile::tempdir().expect("repository dir");
    let staging = tempfile::tempdir().expect("staging dir");
    Repository::open(root.path())
        .expect("repository")
        .publish(&PublishRequest {
            name: "big".into(),
            version: "1".into(),
            source: model_file,
            team: None,
            description: None,
        })
        .expect("publishing the model");
    let config = Config::for_repository(
        root.path().to_path_buf(),
        staging.path().to_path_buf(),
        1 << 30,
    );
    let service = ModelService::new(config).expect("service (scripts/setup-ort.sh?)");
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let key = ModelKey::new("big", "1").expect("key");

    let (first_ms, first_info, expected) = runtime.block_on(load_and_run(&service, &key));
    assert!(
        !first_info.staged_reused,
        "the first load read the repository"
    );
    assert!(
        service.wait_for_staging(Duration::from_secs(120)),
        "the staged copy was written"
    );
    let staged_file = staged_copy(staging.path());

    let (mut reloads, mut reload_runs, mut warm_runs) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..RUNS {
        assert_eq!(service.evict(&["big/1".into()]), ["big/1"]);
        let started = Instant::now();
        let (lease, info) = runtime.block_on(service.load_key(&key)).expect("reloading");
        let reload_ms = started.elapsed().as_secs_f64() * 1e3;
        assert!(info.staged_reused, "reloaded from the staged copy");
        let (first_run_ms, again) = runtime.block_on(run_once(&service, lease, info));
        assert_eq!(again, expected, "a reload answers as the first load did");
        reloads.push(reload_ms);
        reload_runs.push(reload_ms + first_run_ms);
        let (lease, info) = runtime.block_on(service.load_key(&key)).expect("cached");
        let (warm_ms, _) = runtime.block_on(run_once(&service, lease, info));
        warm_runs.push(warm_ms);
    }

    let engine = service.engine().expect("engine");
    let raw: Vec<f64> = (0..RUNS)
        .map(|_| {
            let started = Instant::now();
            let model = engine
                .load(&staged_file, ModelFormat::Ort)
                .expect("raw engine load");
            let took = started.elapsed().as_secs_f64() * 1e3;
            drop(model);
            took
        })
        .collect();

    let (reload, reload_run) = (median(&mut reloads), median(&mut reload_runs));
    let (warm, raw) = (median(&mut warm_runs), median(&mut raw.clone()));
    println!("reload summary");
    println!("  first load (read + sha256 + session + probe run)  {first_ms:8.2} ms");
    println!(
        "  reload after evict, median of {RUNS}                 {reload:8.2} ms  (target <= 10 ms: {})",
        if reload <= 10.0 { "met" } else { "NOT met" }
    );
    println!("  reload + first run                                {reload_run:8.2} ms");
    println!("  warm run                                          {warm:8.2} ms");
    println!("  raw engine.load of the staged file (+ probe run)  {raw:8.2} ms");
    println!(
        "  ratio (reload + first run) / raw engine.load      {:8.2}x",
        reload_run / raw
    );
}

/// Loads (or hits) the model and runs it once on a row of 0.5s; returns the
/// load's time, its info and the output's bits.
async fn load_and_run(service: &ModelService, key: &ModelKey) -> (f64, LoadInfo, Vec<u32>) {
    let started = Instant::now();
    let (lease, info) = service.load_key(key).await.expect("loading");
    let took = started.elapsed().as_secs_f64() * 1e3;
    let (_, bits) = run_once(service, lease, info).await;
    (took, info, bits)
}

/// Runs the leased model once on a row of 0.5s; returns the run's time and
/// the output's bits.
async fn run_once(service: &ModelService, lease: Lease<Model>, info: LoadInfo) -> (f64, Vec<u32>) {
    let input = &lease.value().loaded.signature().inputs[0];
    let width = match &input.kind {
        ValueKind::Tensor { shape, .. } => match shape.last() {
            Some(Dim::Fixed(width)) => *width,
            other => panic!("the input's last dimension is not fixed: {other:?}"),
        },
        other => panic!("the input is not a tensor: {other:?}"),
    };
    let tensor = Tensor::new(vec![1, width], TensorData::Fp32(vec![0.5; width])).expect("tensor");
    let name = input.name.clone();
    let started = Instant::now();
    let prediction = service
        .predict(lease, info, vec![(name, tensor)], None, None)
        .await
        .expect("inference");
    let took = started.elapsed().as_secs_f64() * 1e3;
    let bits = match &prediction.outputs[0].1 {
        OutputValue::Tensor(tensor) => match tensor.data() {
            TensorData::Fp32(values) => values.iter().map(|v| v.to_bits()).collect(),
            other => panic!("unexpected output type {other:?}"),
        },
        other => panic!("unexpected output {other:?}"),
    };
    (took, bits)
}

fn staged_copy(dir: &Path) -> PathBuf {
    let files: Vec<PathBuf> = std::fs::read_dir(dir)
        .expect("staging dir")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "ort"))
        .collect();
    assert_eq!(files.len(), 1, "one staged copy: {files:?}");
    files[0].clone()
}

fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}
