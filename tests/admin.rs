//! `serve --admin-addr` end to end through the real binary: Triton's model
//! repository API, warm/evict/status and Prometheus `/metrics` on the admin
//! listener (127.0.0.1:0), requests on the front door (127.0.0.1:0), the
//! session pool's charge; and Triton-layout repositories (`verify` refusing
//! an empty repository, `import-triton`).

mod common;

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};

use common::{fixture, repository, request_raw};
use serde_json::{Value, json};

const BIN: &str = env!("CARGO_BIN_EXE_model-router");

/// The binary serving `root`, with its front door and admin addresses as it
/// announced them on stdout. Killed on drop.
struct Served {
    child: Child,
    front: SocketAddr,
    admin: SocketAddr,
    _staging: tempfile::TempDir,
}

impl Drop for Served {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn serve(root: &Path, sessions: usize) -> Served {
    serve_with(root, sessions, &[])
}

fn serve_with(root: &Path, sessions: usize, env: &[(&str, &str)]) -> Served {
    let staging = tempfile::tempdir().unwrap();
    let mut child = Command::new(BIN)
        .args([
            "serve",
            "--addr",
            "127.0.0.1:0",
            "--admin-addr",
            "127.0.0.1:0",
        ])
        .arg("--repo")
        .arg(root)
        .arg("--staging-dir")
        .arg(staging.path())
        .args(["--cache-bytes", "256Mi", "--ort-intra-threads", "1"])
        .env("MODEL_SESSIONS", sessions.to_string())
        .env("RUST_LOG", "warn")
        .envs(env.iter().copied())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut address = |prefix: &str| -> SocketAddr {
        let line = lines
            .next()
            .expect("the server announces its address")
            .unwrap();
        line.strip_prefix(prefix)
            .unwrap_or_else(|| panic!("expected {prefix:?}, got {line:?}"))
            .parse()
            .unwrap()
    };
    // The admin listener is bound (and announced) before the front door.
    let admin = address("model-router admin listening on http://");
    let front = address("model-router listening on http://");
    Served {
        child,
        front,
        admin,
        _staging: staging,
    }
}

async fn call(addr: SocketAddr, method: &str, path: &str, body: &Value) -> (u16, Value) {
    let body = if body.is_null() {
        Vec::new()
    } else {
        body.to_string().into_bytes()
    };
    let (status, bytes) = request_raw(addr, method, path, &body).await;
    let value = serde_json::from_slice(&bytes)
        .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into_owned()));
    (status, value)
}

/// The value of the sample `name{labels}` (labels exactly as written) in a
/// Prometheus exposition.
fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines().find_map(|line| {
        let (name, value) = line.rsplit_once(' ')?;
        (name == series).then(|| value.parse().ok()).flatten()
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admin_listener_loads_unloads_reports_and_exports_metrics() {
    let root = repository(&[
        ("mlp", "1", "mlp.ort"),
        ("mlp", "2", "mlp.onnx"),
        ("linear_f64", "1", "linear_f64.ort"),
    ]);
    let server = serve(root.path(), 2);
    let admin = server.admin;
    let front = server.front;

    let (status, index) = call(admin, "POST", "/v2/repository/index", &Value::Null).await;
    assert_eq!(status, 200, "{index}");
    assert_eq!(
        index,
        json!([
            {"name": "linear_f64", "version": "1", "state": "UNAVAILABLE", "reason": "unloaded"},
            {"name": "mlp", "version": "1", "state": "UNAVAILABLE", "reason": "unloaded"},
            {"name": "mlp", "version": "2", "state": "UNAVAILABLE", "reason": "unloaded"},
        ])
    );

    // The front door has no admin route. It answers Triton's read-only
    // repository index (tritonclient's get_model_repository_index), and
    // refuses load and unload as unsupported there (docs/protocols.md).
    for path in ["/admin/status", "/admin/warm", "/metrics"] {
        let (status, answer) = call(front, "POST", path, &json!({})).await;
        assert_eq!(
            (status, answer["code"].as_str()),
            (404, Some("route_not_found")),
            "{path}"
        );
    }
    for path in [
        "/v2/repository/models/mlp/load",
        "/v2/repository/models/mlp/unload",
    ] {
        let (status, answer) = call(front, "POST", path, &json!({})).await;
        assert_eq!(
            (status, answer["code"].as_str()),
            (400, Some("not_supported")),
            "{path}"
        );
    }

    let (status, wrong) = call(admin, "GET", "/v2/repository/index", &Value::Null).await;
    assert_eq!(
        (status, wrong["code"].as_str()),
        (405, Some("method_not_allowed")),
        "{wrong}"
    );
    let (status, unknown) = call(admin, "GET", "/admin/nothing", &Value::Null).await;
    assert_eq!(
        (status, unknown["code"].as_str()),
        (404, Some("route_not_found"))
    );

    // Triton's load: the latest version.
    let (status, loaded) = call(
        admin,
        "POST",
        "/v2/repository/models/mlp/load",
        &Value::Null,
    )
    .await;
    assert_eq!((status, &loaded), (200, &json!({"loaded": "mlp/2"})));
    let (_, ready) = call(
        admin,
        "POST",
        "/v2/repository/index",
        &json!({"ready": true}),
    )
    .await;
    assert_eq!(
        ready,
        json!([{"name": "mlp", "version": "2", "state": "READY", "reason": ""}])
    );
    let (status, missing) = call(
        admin,
        "POST",
        "/v2/repository/models/nope/load",
        &Value::Null,
    )
    .await;
    assert_eq!(
        (status, missing["code"].as_str()),
        (404, Some("model_not_found"))
    );

    // Two sessions of an .onnx model hold two copies of its weights: charged.
    let (status, report) = call(admin, "GET", "/admin/status", &Value::Null).await;
    assert_eq!(status, 200, "{report}");
    let onnx_bytes = std::fs::metadata(fixture("mlp.onnx")).unwrap().len();
    let charged = report["entries"][0]["bytes"].as_u64().unwrap();
    assert_eq!(report["entries"][0]["model"], "mlp/2");
    assert!(charged >= 2 * onnx_bytes, "{charged} < 2 x {onnx_bytes}");

    // Traffic on the front door: three good, one bad input, one unknown model.
    let row = json!({"features": [0.5, -1.25, 2.0, 0.75]});
    for _ in 0..3 {
        assert_eq!(
            call(front, "POST", "/models/mlp/2/predict", &row).await.0,
            200
        );
    }
    let bad = json!({"features": [0.5]});
    assert_eq!(
        call(front, "POST", "/models/mlp/2/predict", &bad).await.0,
        400
    );
    assert_eq!(
        call(front, "POST", "/models/nope/1/predict", &row).await.0,
        404
    );

    // Warm and evict, as the Lambda admin events answer them.
    let (status, warmed) = call(
        admin,
        "POST",
        "/admin/warm",
        &json!({"models": ["linear_f64/1", "mlp/9"]}),
    )
    .await;
    assert_eq!(status, 200, "{warmed}");
    assert_eq!(warmed["warmed"], json!(["linear_f64/1"]));
    assert_eq!(warmed["failed"][0]["code"], "version_not_found");
    let (status, refused) = call(admin, "POST", "/admin/warm", &json!({"models": "mlp/2"})).await;
    assert_eq!(
        (status, refused["code"].as_str()),
        (400, Some("invalid_admin_event"))
    );

    let (status, text) = call(admin, "GET", "/metrics", &Value::Null).await;
    assert_eq!(status, 200);
    let text = text.as_str().expect("a text exposition").to_string();
    let requests =
        |labels: &str| sample(&text, &format!("model_router_requests_total{{{labels}}}"));
    assert_eq!(
        requests(r#"model="mlp/2",team="",status="200",code="""#),
        Some(3.0),
        "{text}"
    );
    assert_eq!(
        requests(r#"model="mlp/2",team="",status="400",code="invalid_input""#),
        Some(1.0)
    );
    // An unknown model is never a label value (as it is never an EMF dimension).
    assert_eq!(
        requests(r#"model="",team="",status="404",code="model_not_found""#),
        Some(1.0)
    );
    assert_eq!(
        sample(
            &text,
            r#"model_router_cache_lookups_total{model="mlp/2",team="",outcome="hit"}"#
        ),
        Some(4.0)
    );
    assert_eq!(
        sample(
            &text,
            r#"model_router_inference_seconds_count{model="mlp/2",team=""}"#
        ),
        Some(3.0)
    );
    assert_eq!(
        sample(
            &text,
            r#"model_router_queue_seconds_count{model="mlp/2",team=""}"#
        ),
        Some(3.0)
    );
    assert_eq!(sample(&text, "model_router_cache_loads_total"), Some(2.0));
    assert_eq!(sample(&text, "model_router_models_cached"), Some(2.0));
    assert_eq!(
        sample(&text, "model_router_cache_bytes_budget"),
        Some((256u64 << 20) as f64)
    );
    assert!(sample(&text, "model_router_cache_bytes_used").unwrap() >= charged as f64);
    assert!(sample(&text, "model_router_staging_bytes_used").unwrap() > 0.0);

    // Triton's unload: every cached version of the name.
    let (status, unloaded) = call(
        admin,
        "POST",
        "/v2/repository/models/mlp/unload",
        &Value::Null,
    )
    .await;
    assert_eq!((status, &unloaded), (200, &json!({"evicted": ["mlp/2"]})));
    let (_, evicted) = call(
        admin,
        "POST",
        "/admin/evict",
        &json!({"models": ["linear_f64/1"]}),
    )
    .await;
    assert_eq!(evicted, json!({"evicted": ["linear_f64/1"]}));
    let (_, report) = call(admin, "GET", "/admin/status", &Value::Null).await;
    assert_eq!(report["entries"], json!([]));
    let (_, text) = call(admin, "GET", "/metrics", &Value::Null).await;
    let text = text.as_str().unwrap();
    assert_eq!(
        sample(text, "model_router_cache_evictions_total"),
        Some(2.0)
    );
    assert_eq!(sample(text, "model_router_models_cached"), Some(0.0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_model_label_follows_metrics_model_dimension() {
    let root = repository(&[("mlp", "1", "mlp.ort"), ("mlp", "2", "mlp.ort")]);
    let row = json!({"features": [0.5, -1.25, 2.0, 0.75]});
    for (dimension, label) in [("name", "mlp"), ("off", "")] {
        let server = serve_with(root.path(), 1, &[("METRICS_MODEL_DIMENSION", dimension)]);
        for version in ["1", "2"] {
            let path = format!("/models/mlp/{version}/predict");
            assert_eq!(call(server.front, "POST", &path, &row).await.0, 200);
        }
        let (_, text) = call(server.admin, "GET", "/metrics", &Value::Null).await;
        let text = text.as_str().unwrap();
        let series = format!(
            r#"model_router_requests_total{{model="{label}",team="",status="200",code=""}}"#
        );
        // Both versions roll up into one series.
        assert_eq!(sample(text, &series), Some(2.0), "{dimension}: {text}");
        assert!(!text.contains("mlp/1"), "{dimension}: {text}");
    }
}

fn run(args: &[&str], paths: &[&Path]) -> (bool, String, String) {
    let mut command = Command::new(BIN);
    command.args(args);
    for path in paths {
        command.arg(path);
    }
    let output = command.env("RUST_LOG", "warn").output().unwrap();
    (
        output.status.success(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

#[test]
fn a_triton_repository_is_refused_by_verify_and_imported_in_one_command() {
    let triton = tempfile::tempdir().unwrap();
    for (model, version) in [("mlp", "1"), ("mlp", "2"), ("linear", "1")] {
        let dir = triton.path().join(model).join(version);
        std::fs::create_dir_all(&dir).unwrap();
        let source = if model == "mlp" {
            "mlp.onnx"
        } else {
            "linear_f64.onnx"
        };
        std::fs::copy(fixture(source), dir.join("model.onnx")).unwrap();
    }
    std::fs::write(
        triton.path().join("mlp/config.pbtxt"),
        "backend: \"onnxruntime\"\n",
    )
    .unwrap();
    // Another backend's model is not an ONNX model to import.
    std::fs::create_dir_all(triton.path().join("trt/1")).unwrap();
    std::fs::write(triton.path().join("trt/1/model.plan"), b"plan").unwrap();

    let (ok, stdout, stderr) = run(&["verify", "--repo"], &[triton.path()]);
    assert!(!ok, "an empty repository fails verify: {stdout}");
    assert!(
        stderr.contains("3 Triton-layout ONNX model version(s)"),
        "{stderr}"
    );
    assert!(stderr.contains("import-triton"), "{stderr}");
    let (ok, _, stderr) = run(&["verify", "--allow-empty", "--repo"], &[triton.path()]);
    assert!(ok, "{stderr}");
    // `serve` says so too, and still starts.
    let mut serving = Command::new(BIN)
        .args([
            "serve",
            "--addr",
            "127.0.0.1:0",
            "--log-format",
            "text",
            "--repo",
        ])
        .arg(triton.path())
        .arg("--staging-dir")
        .arg(triton.path().join(".staging"))
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let warning = BufReader::new(serving.stderr.take().unwrap())
        .lines()
        .map_while(Result::ok)
        .find(|line| line.contains("WARN"));
    let _ = serving.kill();
    let _ = serving.wait();
    let warning = warning.expect("serve warns about the empty repository");
    assert!(warning.contains("import-triton"), "{warning}");

    let ours = tempfile::tempdir().unwrap();
    let repo = ours.path().join("repo");
    let (ok, stdout, stderr) = run(&["import-triton", "--repo"], &[&repo, triton.path()]);
    assert!(ok, "{stdout}{stderr}");
    assert_eq!(
        stdout.lines().take(3).collect::<Vec<_>>(),
        ["published linear/1", "published mlp/1", "published mlp/2"]
    );
    let (ok, stdout, _) = run(&["verify", "--repo"], &[&repo]);
    assert!(
        ok && stdout.contains("3 versions checked, 0 failed"),
        "{stdout}"
    );

    // Again: nothing changed, nothing fails; a changed file is refused.
    let (ok, stdout, _) = run(&["import-triton", "--repo"], &[&repo, triton.path()]);
    assert!(ok && stdout.contains("unchanged mlp/2"), "{stdout}");
    std::fs::copy(
        fixture("linear_f64.onnx"),
        triton.path().join("mlp/2/model.onnx"),
    )
    .unwrap();
    let (ok, stdout, _) = run(&["import-triton", "--repo"], &[&repo, triton.path()]);
    assert!(
        !ok && stdout.contains("FAILED    mlp/2") && stdout.contains("immutable"),
        "{stdout}"
    );
}

/// Issue 10: "Charges are not what models cost": 40 `.onnx` loads charged
/// 33-37 MiB while resident memory grew 50-61 MiB, `.ort` 1.16-1.32x; small
/// `.ort` models charged 6.4 KB each while the process held ~69 KB each.
/// In a fresh server process (nothing else running), loads of many copies of
/// a small `.ort`, of a 256 KiB `.onnx` and of its `.ort` grow its anonymous
/// resident memory by what the cache charges them, within 10% (the issue's
/// bar; 1.10 for the small `.ort` before the service's own per-model state
/// was charged).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn charges_match_what_the_process_gains_within_ten_percent() {
    let mut models = vec![("warmup".to_string(), "sized_1.onnx")];
    models.extend((0..200).map(|i| (format!("small{i}"), "mlp.ort")));
    models.extend((0..60).map(|i| (format!("onnx{i}"), "sized_0.onnx")));
    models.extend((0..60).map(|i| (format!("ort{i}"), "sized_0.ort")));
    let spec: Vec<(&str, &str, &str)> = models
        .iter()
        .map(|(name, file)| (name.as_str(), "1", *file))
        .collect();
    let root = repository(&spec);
    let served = serve_with(root.path(), 1, &[("MODEL_STAGING_BYTES", "0")]);
    let status = || async {
        let (code, report) = call(served.admin, "GET", "/admin/status", &Value::Null).await;
        assert_eq!(code, 200, "{report}");
        let rss = report["memory"]["process"]["rss_anon_bytes"]
            .as_u64()
            .unwrap();
        let charged = report["bytes_used"].as_u64().unwrap();
        (rss, charged)
    };
    let warm = |names: Vec<String>| async move {
        let (code, answer) = call(
            served.admin,
            "POST",
            "/admin/warm",
            &json!({"models": names}),
        )
        .await;
        assert_eq!(code, 200, "{answer}");
        assert_eq!(answer["failed"], json!([]), "{answer}");
    };
    // One load first: the process's one-time costs of a first load (the
    // blocking thread, ONNX Runtime's per-thread state) are no model's.
    warm(vec!["warmup/1".into()]).await;
    for (prefix, what) in [
        ("small", "mlp.ort (4 KB)"),
        ("onnx", "sized_0.onnx (256 KiB)"),
        ("ort", "sized_0.ort (258 KiB)"),
    ] {
        let (rss_before, charged_before) = status().await;
        let names: Vec<String> = models
            .iter()
            .filter(|(name, _)| name.starts_with(prefix))
            .map(|(name, _)| format!("{name}/1"))
            .collect();
        let loads = names.len();
        warm(names).await;
        let (rss_after, charged_after) = status().await;
        let grew = rss_after.saturating_sub(rss_before) as f64;
        let charged = (charged_after - charged_before) as f64;
        let ratio = grew / charged;
        eprintln!(
            "{loads} x {what}: charged {:.1} MiB ({:.1} KiB each), resident memory grew {:.1} MiB: {ratio:.3}",
            charged / (1 << 20) as f64,
            charged / loads as f64 / 1024.0,
            grew / (1 << 20) as f64
        );
        assert!(
            (0.9..=1.1).contains(&ratio),
            "{what}: grew {grew} for {charged} charged"
        );
    }
}
