//! The warm request path, against raw ONNX Runtime, in one run: what a
//! prediction costs on top of the session's own `run` once the model is cached.
//!
//! ```text
//! scripts/setup-ort.sh && cargo bench --bench predict
//! taskset -c 0 cargo bench --bench predict     # one CPU, like a Lambda function with one vCPU
//! MODEL_ROUTER_PREDICT_MODEL=tests/data/models/mlp.onnx cargo bench --bench predict
//! ```
//!
//! Three ways to the same answer, for one row and for a batch of 64 rows of the
//! mlp fixture (input `features` f32[N,4]):
//!
//! - `lambda_invoke`: [`model_router::lambda::invoke`] of the committed API
//!   Gateway HTTP API event (tests/data/events/apigw_v2_predict.json, its body
//!   set to the rows): event JSON parsed into a request, routed, authorized
//!   (no access policy), cache hit, body parsed and checked against the
//!   signature, `session.run` on a blocking thread, outputs to JSON, the
//!   Lambda-shaped response built and turned into a JSON value. This is what a
//!   warm Lambda invocation costs in-process.
//! - `http_handle`: [`model_router::http::handle`] of the same body: the above
//!   without the Lambda event and response (the local server's path, minus
//!   HTTP/1.1 itself). Building the `http::Request` is inside the timing.
//! - `raw_ort` (the baseline): the same cached model's [`LoadedModel::run`]
//!   with a prebuilt input tensor, on the bench thread: ONNX Runtime's run,
//!   plus the engine's input check and the conversion of outputs to tensors,
//!   which any caller of the engine needs. Cloning the input is outside the
//!   timing.
//!
//! Before timing, all three must give the same `scores`, bit for bit, and the
//! single row must match what Python's onnxruntime gave
//! (tests/data/models/mlp.expected.json), or the bench stops.
//!
//! The router runs the session on a blocking thread, so its two variants
//! include a hop to another thread and back. On more than one CPU, and on a VM
//! especially, that hop's wake-up latency differs from run to run (tens of
//! microseconds); pinned to one CPU the numbers are steadier.
//!
//! Neither logs nor metrics are written: no tracing subscriber is installed and
//! the configuration's metrics are off (on Lambda each request adds one log
//! line and one EMF line). The summary gives, per variant, the median and mean
//! time per call over criterion's samples, the ratios to `raw_ort`, and the
//! overhead in microseconds.
//!
//! [`LoadedModel::run`]: model_router::engine::LoadedModel::run

use std::env;
use std::hint::black_box;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use bytes::Bytes;
use criterion::Criterion;
use model_router::engine::{OutputValue, Tensor, TensorData};
use model_router::repository::{PublishRequest, Repository};
use model_router::{Config, ModelService};
use serde_json::Value;

/// Overrides the model served (any model with one input `features` f32[N,4]
/// and a first output `scores`): scripts/bench-vs-python.sh points this and
/// the Python handler at the same file.
const MODEL_ENV: &str = "MODEL_ROUTER_PREDICT_MODEL";
const NAME: &str = "mlp";
const VERSION: &str = "1";
const INPUT: &str = "features";
const WIDTH: usize = 4;
/// The single_row case of tests/data/models/mlp.expected.json.
const SINGLE_ROW: [f32; WIDTH] = [0.5, -1.25, 2.0, 0.75];
/// Inputs cloned ahead of each timed chunk of raw runs.
const RAW_CHUNK: u64 = 256;

fn main() {
    let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data");
    let model_file = env::var_os(MODEL_ENV)
        .map(PathBuf::from)
        .unwrap_or_else(|| fixtures.join("models/mlp.ort"));
    let (_root, _staging, service) = service(&model_file);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");

    let cases = [
        Case::new("single_row", vec![SINGLE_ROW.to_vec()], &fixtures),
        Case::new("batch_64", batch(64), &fixtures),
    ];
    for case in &cases {
        runtime.block_on(case.check_same_answer(&service, &fixtures));
    }

    let mut criterion = Criterion::default()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(4))
        .configure_from_args();
    let mut results = Vec::new();
    for case in &cases {
        let mut group = criterion.benchmark_group(format!("predict_{}", case.name));
        let mut timings = Timings::default();

        group.bench_function("lambda_invoke", |bencher| {
            bencher.iter_custom(|iterations| {
                let took = runtime.block_on(async {
                    let start = Instant::now();
                    for _ in 0..iterations {
                        black_box(case.invoke(&service).await);
                    }
                    start.elapsed()
                });
                timings.lambda_invoke.push(took, iterations);
                took
            })
        });

        group.bench_function("http_handle", |bencher| {
            bencher.iter_custom(|iterations| {
                let took = runtime.block_on(async {
                    let start = Instant::now();
                    for _ in 0..iterations {
                        black_box(case.handle(&service).await);
                    }
                    start.elapsed()
                });
                timings.http_handle.push(took, iterations);
                took
            })
        });

        let (lease, _) = runtime
            .block_on(service.model(NAME, VERSION))
            .expect("the model is cached");
        let model = &lease.value().loaded;
        group.bench_function("raw_ort", |bencher| {
            bencher.iter_custom(|iterations| {
                let mut took = Duration::ZERO;
                let mut left = iterations;
                while left > 0 {
                    let chunk = left.min(RAW_CHUNK);
                    let inputs: Vec<_> = (0..chunk).map(|_| case.raw_inputs()).collect();
                    let start = Instant::now();
                    for inputs in inputs {
                        black_box(model.run(inputs, None).expect("raw run"));
                    }
                    took += start.elapsed();
                    left -= chunk;
                }
                timings.raw_ort.push(took, iterations);
                took
            })
        });
        group.finish();
        results.push((case.name, timings));
    }
    criterion.final_summary();

    print_summary(&model_file, &service, &results);
}

/// A repository holding `model_file` as mlp/1, and a service over it with the
/// binary's default thread count off Lambda (ORT_INTRA_THREADS, else the CPUs
/// available), as `model-router invoke` would run it.
fn service(model_file: &Path) -> (tempfile::TempDir, tempfile::TempDir, ModelService) {
    let root = tempfile::tempdir().expect("temporary repository");
    Repository::open(root.path())
        .and_then(|repository| {
            repository.publish(&PublishRequest {
                name: NAME.into(),
                version: VERSION.into(),
                source: model_file.to_path_buf(),
                team: None,
                description: None,
            })
        })
        .unwrap_or_else(|e| panic!("publishing {}: {e}", model_file.display()));
    let staging = tempfile::tempdir().expect("temporary staging directory");
    let mut config = Config::for_repository(
        root.path().to_path_buf(),
        staging.path().to_path_buf(),
        256 << 20,
    );
    config.intra_threads = env::var("ORT_INTRA_THREADS")
        .ok()
        .and_then(|n| n.parse().ok())
        .filter(|n| *n > 0)
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
    let service = ModelService::new(config)
        .expect("service starts (is the ONNX Runtime library set up? scripts/setup-ort.sh)");
    (root, staging, service)
}

/// `rows` rows of a fixed pattern in the range the fixture was trained on.
fn batch(rows: usize) -> Vec<Vec<f32>> {
    (0..rows)
        .map(|row| {
            (0..WIDTH)
                .map(|column| ((row * WIDTH + column) % 17) as f32 / 4.0 - 2.0)
                .collect()
        })
        .collect()
}

/// One input, as each variant receives it.
struct Case {
    name: &'static str,
    rows: Vec<Vec<f32>>,
    /// The Lambda event, as the runtime hands it over: text.
    event: String,
    body: Bytes,
    tensor: Tensor,
}

impl Case {
    fn new(name: &'static str, rows: Vec<Vec<f32>>, fixtures: &Path) -> Case {
        // One row is sent flat, as the original handler's clients send it.
        let features = match rows.as_slice() {
            [row] => serde_json::json!(row),
            _ => serde_json::json!(rows),
        };
        let body = serde_json::json!({ INPUT: features }).to_string();
        let event_path = fixtures.join("events/apigw_v2_predict.json");
        let mut event: Value = std::fs::read_to_string(&event_path)
            .ok()
            .and_then(|text| serde_json::from_str(&text).ok())
            .unwrap_or_else(|| panic!("{} is an event", event_path.display()));
        assert_eq!(
            event["rawPath"],
            format!("/models/{NAME}/{VERSION}/predict"),
            "the event fixture predicts with {NAME}/{VERSION}"
        );
        event["body"] = Value::String(body.clone());
        let data = rows.iter().flatten().copied().collect();
        let tensor =
            Tensor::new(vec![rows.len(), WIDTH], TensorData::Fp32(data)).expect("rows are WIDTH");
        Case {
            name,
            rows,
            event: event.to_string(),
            body: Bytes::from(body),
            tensor,
        }
    }

    async fn invoke(&self, service: &ModelService) -> Value {
        model_router::lambda::invoke(service, &self.event)
            .await
            .expect("the event is JSON")
    }

    async fn handle(&self, service: &ModelService) -> http::Response<Bytes> {
        let request = http::Request::post(format!("/models/{NAME}/{VERSION}/predict"))
            .header(http::header::CONTENT_TYPE, "application/json")
            .body(self.body.clone())
            .expect("a valid request");
        model_router::http::handle(service, request).await
    }

    fn raw_inputs(&self) -> Vec<(String, Tensor)> {
        vec![(INPUT.to_string(), self.tensor.clone())]
    }

    /// All three variants must answer the same scores before any is timed.
    async fn check_same_answer(&self, service: &ModelService, fixtures: &Path) {
        let context = |variant: &str| format!("{} via {variant}", self.name);

        let invoked = self.invoke(service).await;
        assert_eq!(
            invoked["statusCode"],
            200,
            "{}: {invoked}",
            context("invoke")
        );
        let body: Value = invoked["body"]
            .as_str()
            .and_then(|text| serde_json::from_str(text).ok())
            .unwrap_or_else(|| panic!("{}: body is not JSON: {invoked}", context("invoke")));
        let from_invoke = json_scores(&body, &context("invoke"));

        let response = self.handle(service).await;
        let body: Value = serde_json::from_slice(response.body()).expect("handle answers JSON");
        assert_eq!(response.status(), 200, "{}: {body}", context("handle"));
        let from_handle = json_scores(&body, &context("handle"));

        let (lease, _) = service.model(NAME, VERSION).await.expect("cached model");
        let outputs = lease
            .value()
            .loaded
            .run(self.raw_inputs(), None)
            .expect("raw run");
        let from_raw = match outputs.first() {
            Some((name, OutputValue::Tensor(tensor))) if name == "scores" => match tensor.data() {
                TensorData::Fp32(values) => values
                    .chunks(tensor.shape()[1])
                    .map(<[f32]>::to_vec)
                    .collect::<Vec<_>>(),
                other => panic!("scores are {:?}, not float32", other.element_type()),
            },
            other => panic!("the first output should be the scores tensor, is {other:?}"),
        };

        assert_eq!(
            from_raw.len(),
            self.rows.len(),
            "one score row per input row"
        );
        assert_eq!(
            from_invoke,
            from_raw,
            "{} differs from raw",
            context("invoke")
        );
        assert_eq!(
            from_handle,
            from_raw,
            "{} differs from raw",
            context("handle")
        );

        if self.rows == [SINGLE_ROW.to_vec()] {
            let path = fixtures.join("models/mlp.expected.json");
            let expected: Value = std::fs::read_to_string(&path)
                .ok()
                .and_then(|text| serde_json::from_str(&text).ok())
                .unwrap_or_else(|| panic!("{} is JSON", path.display()));
            let want = json_scores(
                &expected["cases"][0]["outputs"]["scores"]["data"],
                "mlp.expected.json",
            );
            let close = want.iter().flatten().zip(from_raw.iter().flatten());
            for (want, got) in close {
                assert!(
                    (want - got).abs() <= 1e-5 * (1.0 + want.abs()),
                    "{}: {got} where Python's onnxruntime gave {want}",
                    self.name
                );
            }
        }
    }
}

/// The `scores` of a simple-format answer (or a bare nested array), as f32
/// rows: serde_json writes an f32 in its shortest form, so this is exact.
fn json_scores(value: &Value, context: &str) -> Vec<Vec<f32>> {
    let scores = value
        .get("outputs")
        .map_or(value, |outputs| &outputs["scores"]);
    scores
        .as_array()
        .map(|rows| {
            rows.iter()
                .map(|row| {
                    row.as_array()
                        .map(|r| r.iter().filter_map(Value::as_f64).map(|v| v as f32))
                        .into_iter()
                        .flatten()
                        .collect()
                })
                .collect()
        })
        .unwrap_or_else(|| panic!("{context}: no scores in {value}"))
}

/// Per-call times of one variant: one entry per criterion sample.
#[derive(Default)]
struct Samples {
    per_call: Vec<Duration>,
    total: Duration,
    calls: u64,
}

impl Samples {
    fn push(&mut self, took: Duration, calls: u64) {
        if calls == 0 {
            return;
        }
        self.per_call
            .push(took / u32::try_from(calls).unwrap_or(u32::MAX));
        self.total += took;
        self.calls += calls;
    }

    /// Median per-call time over samples (resists other processes' noise) and
    /// the overall mean; `None` when criterion did not run it (a filter).
    fn us(&self) -> Option<(f64, f64)> {
        if self.calls == 0 {
            return None;
        }
        let mut sorted = self.per_call.clone();
        sorted.sort();
        let median = sorted[sorted.len() / 2].as_secs_f64() * 1e6;
        let mean = self.total.as_secs_f64() * 1e6 / self.calls as f64;
        Some((median, mean))
    }
}

#[derive(Default)]
struct Timings {
    lambda_invoke: Samples,
    http_handle: Samples,
    raw_ort: Samples,
}

fn print_summary(model_file: &Path, service: &ModelService, results: &[(&str, Timings)]) {
    println!();
    println!("predict summary");
    println!(
        "  model: {} as {NAME}/{VERSION}, cache hit on every call; ORT intra-op threads: {}; {} CPUs",
        model_file.display(),
        service.config().intra_threads,
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    println!(
        "  same answer: yes (scores equal bit for bit across the three; single row matches Python's onnxruntime)"
    );
    println!(
        "  per call, median of criterion's samples (mean in brackets); no logs or metrics written:"
    );
    for (case, timings) in results {
        let raw = timings.raw_ort.us();
        for (variant, samples) in [
            ("lambda_invoke", &timings.lambda_invoke),
            ("http_handle", &timings.http_handle),
            ("raw_ort", &timings.raw_ort),
        ] {
            let Some((median, mean)) = samples.us() else {
                println!("    {case:<10} {variant:<13} not run");
                continue;
            };
            let versus = match raw {
                Some((raw_median, _)) if variant != "raw_ort" => format!(
                    "  {:>5.2}x raw_ort, +{:.1} us",
                    median / raw_median,
                    median - raw_median
                ),
                _ => "  (baseline)".to_string(),
            };
            println!(
                "    {case:<10} {variant:<13} median_us={median:<8.2} (mean {mean:.2} us){versus}"
            );
        }
    }
}
