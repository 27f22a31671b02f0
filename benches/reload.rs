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
//!   memory and hashed, the session created. Once, for reference.
//! - `reload`: after `evict`, the next load: the staged copy (written in the
//!   background after the first load; the bench waits for it) is mapped and a
//!   session made from it, no read of the repository and no hash. The target
//!   is at most 10 ms. Every load includes the engine's probe run (one
//!   inference on zeros, so what a session keeps after its first run is
//!   charged: src/engine/footprint.rs).
//! - `raw engine.load` (the baseline): `Engine::load` of that same staged file:
//!   mapping, session creation and the same probe run, nothing of the
//!   router's around it.
//!
//! Before timing, the first load and a reload must give the same output for one
//! input, bit for bit, or the bench stops.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use model_router::engine::{Dim, ModelFormat, OutputValue, Tensor, TensorData, ValueKind};
use model_router::repository::{ModelKey, PublishRequest, Repository};
use model_router::service::LoadInfo;
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

    let mut reloads = Vec::new();
    for run in 0..RUNS {
        assert_eq!(service.evict(&["big/1".into()]), ["big/1"]);
        let started = Instant::now();
        let (_, info) = runtime.block_on(service.load_key(&key)).expect("reloading");
        reloads.push(started.elapsed().as_secs_f64() * 1e3);
        assert!(info.staged_reused, "reloaded from the staged copy");
        if run == 0 {
            let (_, _, again) = runtime.block_on(load_and_run(&service, &key));
            assert_eq!(again, expected, "a reload answers as the first load did");
        }
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

    let (reload, raw) = (median(&mut reloads), median(&mut raw.clone()));
    println!("reload summary");
    println!("  first load (read + sha256 + session)   {first_ms:8.2} ms");
    println!(
        "  reload after evict, median of {RUNS}      {reload:8.2} ms  (target <= 10 ms: {})",
        if reload <= 10.0 { "met" } else { "NOT met" }
    );
    println!("  raw engine.load of the staged file     {raw:8.2} ms");
    println!(
        "  ratio reload / raw engine.load         {:8.2}x",
        reload / raw
    );
}

/// Loads (or hits) the model and runs it once on a row of 0.5s; returns the
/// load's time, its info and the output's bits.
async fn load_and_run(service: &ModelService, key: &ModelKey) -> (f64, LoadInfo, Vec<u32>) {
    let started = Instant::now();
    let (lease, info) = service.load_key(key).await.expect("loading");
    let took = started.elapsed().as_secs_f64() * 1e3;
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
    let prediction = service
        .predict(lease, info, vec![(name, tensor)], None, None)
        .await
        .expect("inference");
    let bits = match &prediction.outputs[0].1 {
        OutputValue::Tensor(tensor) => match tensor.data() {
            TensorData::Fp32(values) => values.iter().map(|v| v.to_bits()).collect(),
            other => panic!("unexpected output type {other:?}"),
        },
        other => panic!("unexpected output {other:?}"),
    };
    (took, info, bits)
}

/// The one staged copy in `dir`.
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
