//! The whole-process memory bound (issue 10), against the real server: a
//! request whose tensors cannot fit is refused before it runs, one whose
//! output size only the run can tell (an `Expand` model) fails cleanly inside
//! ONNX Runtime, and, in a real memory cgroup, neither brings the OOM killer.
//!
//! The limits are process-wide (one ONNX Runtime environment per process), so
//! every test in this file uses the same in-process split; the cgroup test
//! runs the real binary in a child process of its own.

#[path = "support/cgroup.rs"]
mod cgroup;
mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use cgroup::{MemoryCgroup, serve_in};
use common::{TestServer, repository};
use model_router::Config;
use serde_json::{Value, json};

const MIB: u64 = 1 << 20;

/// A server whose memory limit leaves 128 MiB of request headroom over a
/// 16 MiB cache and this process's current resident memory: 64 MiB of run
/// arena, 64 MiB of request buffers.
async fn limited_server(root: &Path) -> TestServer {
    let staging = tempfile::tempdir().unwrap();
    let mut config =
        Config::for_repository(root.to_path_buf(), staging.path().to_path_buf(), 16 * MIB);
    // ONNX Runtime first, so that the resident memory read here is the
    // baseline the service will measure.
    let _ = model_router::engine::Engine::init(&model_router::engine::EngineConfig {
        dylib_path: model_router::engine::find_library(None).unwrap(),
        intra_threads: 1,
    });
    model_router::engine::release_free_memory();
    let resident = model_router::engine::process_memory().rss_bytes;
    config.memory_limit = Some(resident + 16 * MIB + 128 * MIB);
    config.memory_limit_source = "flag";
    TestServer::with_config(config, staging).await
}

fn expand(rows: u64, cols: u64) -> Value {
    json!({"inputs": {"x": [[2.0]], "shape": [rows, cols]}})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_that_cannot_fit_are_refused_and_the_server_goes_on() {
    let root = repository(&[("expand", "1", "expand.onnx"), ("mlp", "1", "mlp.onnx")]);
    let server = limited_server(root.path()).await;
    let split = server.service.memory_split();
    assert!(
        split.run_arena_bytes > 50 * MIB && split.request_buffer_bytes > 50 * MIB,
        "{split:?}"
    );

    // A small expansion runs.
    let (status, body) = server.post("/models/expand/1/predict", &expand(3, 2)).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        body["prediction"],
        json!([[2.0, 2.0], [2.0, 2.0], [2.0, 2.0]])
    );

    // 20000 x 20000 floats (1.6 GB): ONNX Runtime's arena refuses the
    // allocation, the run fails, nothing else does.
    let (status, body) = server
        .post("/models/expand/1/predict", &expand(20_000, 20_000))
        .await;
    assert_eq!(
        (status, body["code"].as_str()),
        (503, Some("insufficient_memory")),
        "{body}"
    );
    assert!(
        body["error"].as_str().unwrap().contains("1600000000"),
        "{body}"
    );

    // 4000 x 2000 floats (32 MB) fit the arena, but their copy and JSON text
    // do not fit the request buffers: refused after the run, before the copy.
    let (status, body) = server
        .post("/models/expand/1/predict", &expand(4_000, 2_000))
        .await;
    assert_eq!(
        (status, body["code"].as_str()),
        (413, Some("memory_limit_exceeded")),
        "{body}"
    );

    // A batch whose inputs and outputs alone exceed the buffers is refused
    // before it runs: 550,000 rows of 10 bytes of text (`[1,1,1,1],`) whose
    // outputs (scores and label) would take ~87 MB as copies and JSON text.
    let rows: Vec<[u8; 4]> = vec![[1, 1, 1, 1]; 550_000];
    let (status, body) = server
        .post("/models/mlp/1/predict", &json!({"features": rows}))
        .await;
    assert_eq!(
        (status, body["code"].as_str()),
        (413, Some("memory_limit_exceeded")),
        "{body}"
    );
    assert!(
        body["error"]
            .as_str()
            .unwrap()
            .contains("MEMORY_LIMIT_BYTES"),
        "{body}"
    );

    // Nothing is left reserved, and the server still answers.
    assert_eq!(server.service.request_memory_reserved(), 0);
    let (status, _) = server
        .post("/models/expand/1/predict", &expand(10, 10))
        .await;
    assert_eq!(status, 200);
    let (status, _) = server
        .post(
            "/models/mlp/1/predict",
            &json!({"features": [0.5, -1.25, 2.0, 0.75]}),
        )
        .await;
    assert_eq!(status, 200);
    let status = model_router::admin::status(&server.service);
    let memory = &status["memory"];
    assert_eq!(memory["limit_source"], "flag", "{memory}");
    for field in [
        "limit_bytes",
        "cache_budget_bytes",
        "baseline_bytes",
        "request_headroom_bytes",
        "run_arena_bytes",
        "request_buffer_bytes",
    ] {
        assert!(
            memory[field].as_u64().is_some_and(|v| v > 0),
            "{field}: {memory}"
        );
    }
    assert!(
        memory["process"]["rss_bytes"].as_u64().unwrap() > 0,
        "{memory}"
    );
}

/// `rows` iris rows for the scikit-learn classifier with ZipMap
/// (tests/data/models/iris_logreg.onnx: its `output_probability` is a
/// sequence of one map per row, whose size no type tells).
fn iris_rows(rows: usize) -> String {
    let row = "[5.1,3.5,1.4,0.2]";
    format!(r#"{{"features": [{}]}}"#, vec![row; rows].join(","))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn zipmap_outputs_are_counted_after_the_run() {
    let root = repository(&[("iris", "1", "iris_logreg.onnx")]);
    let server = limited_server(root.path()).await;
    // 1,000 rows: their maps fit; every row answers its three probabilities.
    let (status, body) = server
        .request("POST", "/models/iris/1/predict", &iris_rows(1000))
        .await;
    assert_eq!(status, 200, "{}", body["error"]);
    let rows = body["outputs"]["output_probability"].as_array().unwrap();
    assert_eq!(rows.len(), 1000);
    assert_eq!(rows[999].as_object().unwrap().len(), 3, "{}", rows[999]);
    // 100,000 rows (1.8 MB of JSON): their inputs and labels fit the 64 MiB
    // of request buffers, their maps (about 800 bytes a row as copies and
    // JSON text) do not. Refused after the run, before any map is copied out,
    // as any output that cannot fit is, through both protocols.
    let (status, body) = server
        .request("POST", "/models/iris/1/predict", &iris_rows(100_000))
        .await;
    assert_eq!(
        (status, body["code"].as_str()),
        (413, Some("memory_limit_exceeded")),
        "{body}"
    );
    let rows = vec![1u8; 4 * 100_000];
    let v2 = json!({"inputs": [{"name": "features", "shape": [100_000, 4], "datatype": "FP32", "data": rows}]});
    let (status, body) = server.post("/v2/models/iris/versions/1/infer", &v2).await;
    assert_eq!(
        (status, body["code"].as_str()),
        (413, Some("memory_limit_exceeded")),
        "{body}"
    );
    // Nothing is left reserved, and the model still answers.
    assert_eq!(server.service.request_memory_reserved(), 0);
    let (status, body) = server
        .request("POST", "/models/iris/1/predict", &iris_rows(3))
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["outputs"]["output_label"], json!([0, 0, 0]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_a_512_mib_cgroup_hostile_requests_never_bring_the_oom_killer() {
    let cgroup = match MemoryCgroup::create(512 * MIB) {
        Ok(cgroup) => cgroup,
        Err(reason) => {
            eprintln!("skipped: no memory cgroup to run in ({reason})");
            return;
        }
    };
    let root = repository(&[
        ("expand", "1", "expand.onnx"),
        ("mlp", "1", "mlp.onnx"),
        ("iris", "1", "iris_logreg.onnx"),
    ]);
    let staging = tempfile::tempdir().unwrap();
    let (mut child, addr) = serve_in(&cgroup, root.path(), staging.path());
    let post = |body: String, model: &'static str| async move {
        common::request_raw(
            addr,
            "POST",
            &format!("/models/{model}/1/predict"),
            body.as_bytes(),
        )
        .await
    };
    let started = Instant::now();
    // Each of these took a process down in a 512 MiB-1 GiB limit (issue 10);
    // the last is the 6 MB JSON batch with ZipMap outputs (~650 MiB before).
    let hostile = [
        (expand(20_000, 20_000).to_string(), "expand"),
        (expand(8_000, 8_000).to_string(), "expand"),
        (expand(6_000, 4_000).to_string(), "expand"),
        (
            json!({"features": vec![[0.5f32, -1.25, 2.0, 0.75]; 280_000]}).to_string(),
            "mlp",
        ),
        (
            format!(
                r#"{{"features": [{}]}}"#,
                vec!["[5,3,1,0]"; 590_000].join(",")
            ),
            "iris",
        ),
    ];
    for (body, model) in hostile {
        let (status, answer) = post(body, model).await;
        let answer = String::from_utf8_lossy(&answer).into_owned();
        eprintln!(
            "{model}: {status} {}",
            answer.chars().take(160).collect::<String>()
        );
        assert!(
            [200, 413, 503].contains(&status),
            "{model}: {status} {}",
            answer.chars().take(500).collect::<String>()
        );
        assert!(
            child.try_wait().unwrap().is_none(),
            "the server died on {model}"
        );
    }
    let (status, _) = post(expand(10, 10).to_string(), "expand").await;
    assert_eq!(status, 200);
    assert_eq!(cgroup.oom_kills(), 0, "the OOM killer acted");
    assert!(child.try_wait().unwrap().is_none(), "the server died");
    child.kill().unwrap();
    child.wait().unwrap();
    eprintln!(
        "cgroup test took {:?}; peak usage {} MiB of 512",
        started.elapsed(),
        cgroup.peak_bytes() / MIB
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn charges_do_not_depend_on_what_other_requests_do() {
    let root = repository(&[("mlp", "1", "mlp.onnx"), ("sized", "1", "sized_0.onnx")]);
    let server = limited_server(root.path()).await;
    let warm = |service: model_router::ModelService| async move {
        let (warmed, failed) = service.warm(&["sized/1".to_string()]).await;
        assert!(failed.is_empty(), "{failed:?}");
        service.evict(&["sized/1".to_string()]);
        warmed[0].bytes
    };
    // Twice quietly: the first load on a thread also pays that thread's
    // one-time ONNX Runtime allocations (thread-local buffers).
    warm(server.service.clone()).await;
    let quiet = warm(server.service.clone()).await;
    // Four clients running batches without pause while the model loads again
    // and again: the charge is the same each time, and it always fits.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let served = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let mut clients = Vec::new();
    for _ in 0..4 {
        let (addr, stop, served) = (server.addr, stop.clone(), served.clone());
        clients.push(tokio::spawn(async move {
            let body = json!({"features": vec![[0.5f32, -1.25, 2.0, 0.75]; 2000]}).to_string();
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let (status, _) =
                    common::request_raw(addr, "POST", "/models/mlp/1/predict", body.as_bytes())
                        .await;
                assert_eq!(status, 200);
                served.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }
        }));
    }
    // Loads start once requests are flowing.
    while served.load(std::sync::atomic::Ordering::Relaxed) < 4 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let before = served.load(std::sync::atomic::Ordering::Relaxed);
    for _ in 0..20 {
        let busy = warm(server.service.clone()).await;
        let drift = busy.abs_diff(quiet) as f64 / quiet as f64;
        eprintln!("charged {busy} under load, {quiet} quiet");
        assert!(drift < 0.05, "charged {busy} under load, {quiet} quiet");
    }
    let during = served.load(std::sync::atomic::Ordering::Relaxed) - before;
    assert!(during > 0, "no request ran while the model loaded");
    eprintln!("{during} requests ran during the 20 loads");
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for client in clients {
        client.await.unwrap();
    }
}
