//! What Triton and KServe clients rely on beyond the core protocol, over the
//! real server on 127.0.0.1:0: model configuration and statistics, body
//! `model_name`, defined parameters, readiness that means something, and the
//! HTTP details (Allow, x-request-id, gzip both ways, CORS). The clients
//! themselves (tritonclient http and grpc, kserve, perf_analyzer) run in
//! tests/python/test_clients.py.

mod common;
#[path = "support/efs_sim.rs"]
mod efs_sim;

use std::io::{BufRead as _, Read as _, Write as _};
use std::net::SocketAddr;

use common::{TestServer, repository};
use model_router::{Config, ModelService};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const ROW: [f32; 4] = [0.5, -1.25, 2.0, 0.75];

fn infer_body() -> Value {
    json!({"inputs": [{"name": "features", "shape": [1, 4], "datatype": "FP32", "data": ROW}]})
}

/// One HTTP/1.1 request with the given extra header lines; status, headers
/// (lower-case names) and body.
async fn exchange(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> (u16, Vec<(String, String)>, Vec<u8>) {
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let mut head = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Length: {}\r\nConnection: close\r\n",
        body.len()
    );
    for (name, value) in headers {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    head.push_str("\r\n");
    stream.write_all(head.as_bytes()).await.unwrap();
    stream.write_all(body).await.unwrap();
    let mut response = Vec::new();
    stream.read_to_end(&mut response).await.unwrap();
    let end = response.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
    let text = String::from_utf8_lossy(&response[..end]).into_owned();
    let mut lines = text.lines();
    let status = lines.next().unwrap().split_whitespace().nth(1).unwrap();
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    let mut body = response[end..].to_vec();
    if header(&headers, "transfer-encoding") == Some("chunked") {
        body = dechunk(&body);
    }
    (status.parse().unwrap(), headers, body)
}

fn dechunk(mut data: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let line = data.windows(2).position(|w| w == b"\r\n").unwrap();
        let size = usize::from_str_radix(std::str::from_utf8(&data[..line]).unwrap(), 16).unwrap();
        if size == 0 {
            return out;
        }
        out.extend_from_slice(&data[line + 2..line + 2 + size]);
        data = &data[line + 2 + size + 2..];
    }
}

fn header<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|(n, _)| n == name)
        .map(|(_, v)| v.as_str())
}

fn json_of(body: &[u8]) -> Value {
    serde_json::from_slice(body)
        .unwrap_or_else(|_| panic!("not JSON: {}", String::from_utf8_lossy(body)))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn model_configuration_is_tritons_json_and_does_not_load_the_model() {
    let root = repository(&[("mlp", "1", "mlp.onnx"), ("mlp", "2", "mlp.ort")]);
    let server = TestServer::start(root.path(), 1 << 30).await;
    let (status, config) = server.get("/v2/models/mlp/versions/1/config").await;
    assert_eq!(status, 200, "{config}");
    assert_eq!(config["name"], "mlp");
    assert_eq!(config["platform"], "onnxruntime_onnx");
    assert_eq!(config["max_batch_size"], 0);
    assert_eq!(
        config["input"],
        json!([{"name": "features", "data_type": "TYPE_FP32", "dims": [-1, 4]}])
    );
    assert_eq!(config["output"][0]["data_type"], "TYPE_FP32");
    assert_eq!(config["output"][1]["data_type"], "TYPE_INT64");
    // Metadata and configuration read the signature without admitting the model.
    let (status, _) = server.get("/v2/models/mlp").await;
    assert_eq!(status, 200);
    assert_eq!(server.service.cache_status().entries.len(), 0);
    let (status, config) = server.get("/v2/models/mlp/config").await;
    assert_eq!((status, &config["name"]), (200, &json!("mlp")));
    let (status, error) = server.get("/v2/models/nope/config").await;
    assert_eq!((status, &error["code"]), (404, &json!("model_not_found")));
    let (_, server_metadata) = server.get("/v2").await;
    assert_eq!(
        server_metadata["extensions"],
        json!(["binary_tensor_data", "model_configuration", "statistics"])
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn statistics_count_successes_and_failures_and_stats_is_not_a_model() {
    let root = repository(&[
        ("mlp", "1", "mlp.ort"),
        ("iris_logreg", "1", "iris_logreg.ort"),
    ]);
    let server = TestServer::start(root.path(), 1 << 30).await;
    // Before any inference: a model's statistics are zeros; all-models is empty.
    let (status, stats) = server.get("/v2/models/stats").await;
    assert_eq!((status, stats), (200, json!({"model_stats": []})));
    let (status, stats) = server.get("/v2/models/mlp/stats").await;
    assert_eq!(status, 200, "{stats}");
    assert_eq!(stats["model_stats"][0]["inference_count"], 0);

    for _ in 0..3 {
        let (status, _) = server
            .post("/v2/models/mlp/versions/1/infer", &infer_body())
            .await;
        assert_eq!(status, 200);
    }
    let bad = json!({"inputs": [{"name": "features", "shape": [1, 3], "datatype": "FP32", "data": [1.0, 2.0, 3.0]}]});
    assert_eq!(
        server.post("/v2/models/mlp/versions/1/infer", &bad).await.0,
        400
    );

    let (_, stats) = server.get("/v2/models/mlp/versions/1/stats").await;
    let mlp = &stats["model_stats"][0];
    assert_eq!(
        (&mlp["name"], &mlp["version"]),
        (&json!("mlp"), &json!("1"))
    );
    assert_eq!(mlp["inference_count"], 3);
    assert_eq!(mlp["execution_count"], 3);
    assert_eq!(mlp["inference_stats"]["success"]["count"], 3);
    assert_eq!(mlp["inference_stats"]["fail"]["count"], 1);
    assert_eq!(mlp["inference_stats"]["compute_infer"]["count"], 3);
    assert!(mlp["inference_stats"]["success"]["ns"].as_u64().unwrap() > 0);
    assert!(mlp["last_inference"].as_u64().unwrap() > 0);
    for part in ["queue", "compute_input", "compute_output", "compute_infer"] {
        assert_eq!(mlp["inference_stats"][part]["count"], 3, "{part}");
    }
    assert_eq!(
        mlp["inference_stats"]["cache_hit"],
        json!({"count": 0, "ns": 0})
    );
    let (_, all) = server.get("/v2/models/stats").await;
    let names: Vec<&str> = all["model_stats"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["mlp"]);
    let (status, error) = server.get("/v2/models/nope/stats").await;
    assert_eq!((status, &error["code"]), (404, &json!("model_not_found")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn body_model_name_parameters_and_empty_outputs_have_their_defined_meaning() {
    let root = repository(&[("mlp", "1", "mlp.ort")]);
    let server = TestServer::start(root.path(), 1 << 30).await;
    let path = "/v2/models/mlp/versions/1/infer";
    let with = |extra: Value| {
        let mut body = infer_body();
        for (k, v) in extra.as_object().unwrap() {
            body[k] = v.clone();
        }
        body
    };
    // kserve's typed client sends model_name (and model_version): agreed, served.
    let (status, answer) = server
        .post(
            path,
            &with(json!({"model_name": "mlp", "model_version": "1"})),
        )
        .await;
    assert_eq!(status, 200, "{answer}");
    for disagreeing in [
        json!({"model_name": "other"}),
        json!({"model_version": "2"}),
    ] {
        let (status, error) = server.post(path, &with(disagreeing.clone())).await;
        assert_eq!(
            (status, &error["code"]),
            (400, &json!("invalid_input")),
            "{disagreeing}"
        );
    }
    // `outputs: []` is every output, as when none are named.
    let (status, answer) = server.post(path, &with(json!({"outputs": []}))).await;
    assert_eq!(status, 200, "{answer}");
    let names: Vec<&str> = answer["outputs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| o["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["scores", "label"]);
    // Sequences and priorities are refused, their "none" values accepted.
    for refused in [
        json!({"sequence_id": 7}),
        json!({"sequence_start": true}),
        json!({"priority": 1}),
    ] {
        let (status, error) = server
            .post(path, &with(json!({"parameters": refused})))
            .await;
        assert_eq!(
            (status, &error["code"]),
            (400, &json!("not_supported")),
            "{error}"
        );
    }
    let (status, _) = server
        .post(
            path,
            &with(json!({"parameters": {"sequence_id": 0, "priority": 0}})),
        )
        .await;
    assert_eq!(status, 200);
    let classify =
        with(json!({"outputs": [{"name": "scores", "parameters": {"classification": 2}}]}));
    let (status, error) = server.post(path, &classify).await;
    assert_eq!((status, &error["code"]), (400, &json!("not_supported")));
    // `timeout` (microseconds) is a deadline: 1 µs has passed before the run.
    let (status, error) = server
        .post(path, &with(json!({"parameters": {"timeout": 1}})))
        .await;
    assert_eq!(
        (status, &error["code"]),
        (504, &json!("deadline_exceeded")),
        "{error}"
    );
    let (status, _) = server
        .post(path, &with(json!({"parameters": {"timeout": 30_000_000}})))
        .await;
    assert_eq!(status, 200);
    // Repository control is an admin action, never HTTP.
    let (status, error) = server
        .post("/v2/repository/models/mlp/load", &json!({}))
        .await;
    assert_eq!((status, &error["code"]), (400, &json!("not_supported")));
    let (status, index) = server.post("/v2/repository/index", &json!({})).await;
    assert_eq!(status, 200);
    assert_eq!(
        index,
        json!([{"name": "mlp", "version": "1", "state": "READY", "reason": ""}])
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_details_allow_request_ids_and_gzip_both_ways() {
    let root = repository(&[("mlp", "1", "mlp.ort")]);
    let server = TestServer::start(root.path(), 1 << 30).await;
    let addr = server.addr;

    let (status, headers, _) = exchange(addr, "DELETE", "/v2/models/mlp", &[], b"").await;
    assert_eq!(
        (status, header(&headers, "allow")),
        (405, Some("GET, HEAD"))
    );
    let (status, headers, _) = exchange(addr, "GET", "/v2/models/mlp/infer", &[], b"").await;
    assert_eq!((status, header(&headers, "allow")), (405, Some("POST")));
    // No CORS unless configured: a preflight is just a method the route does not take.
    let (status, headers, _) = exchange(
        addr,
        "OPTIONS",
        "/v2/health/ready",
        &[("origin", "https://a.example")],
        b"",
    )
    .await;
    assert_eq!(status, 405);
    assert_eq!(header(&headers, "access-control-allow-origin"), None);

    let (_, headers, _) = exchange(
        addr,
        "GET",
        "/v2/health/live",
        &[("x-request-id", "abc-123")],
        b"",
    )
    .await;
    assert_eq!(header(&headers, "x-request-id"), Some("abc-123"));
    let (_, headers, _) = exchange(addr, "GET", "/v2/health/live", &[], b"").await;
    let generated = header(&headers, "x-request-id").expect("an id is generated");
    assert_eq!(generated.len(), 36, "a UUID: {generated}");

    let body = infer_body().to_string();
    let (_, _, plain) = exchange(
        addr,
        "POST",
        "/v2/models/mlp/versions/1/infer",
        &[],
        body.as_bytes(),
    )
    .await;
    let mut gzip = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    gzip.write_all(body.as_bytes()).unwrap();
    let gzipped = gzip.finish().unwrap();
    let mut deflate = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::default());
    deflate.write_all(body.as_bytes()).unwrap();
    let deflated = deflate.finish().unwrap();
    for (encoding, bytes) in [("gzip", &gzipped), ("deflate", &deflated)] {
        let (status, headers, answer) = exchange(
            addr,
            "POST",
            "/v2/models/mlp/versions/1/infer",
            &[("content-encoding", encoding), ("accept-encoding", "gzip")],
            bytes,
        )
        .await;
        assert_eq!(status, 200, "{encoding}");
        assert_eq!(header(&headers, "content-encoding"), Some("gzip"));
        let mut text = Vec::new();
        flate2::read::GzDecoder::new(&answer[..])
            .read_to_end(&mut text)
            .unwrap();
        assert_eq!(json_of(&text), json_of(&plain), "{encoding}");
    }
    // Only inference answers are compressed (tritonclient's asyncio client
    // reads metadata without decompressing it).
    let (_, headers, _) = exchange(
        addr,
        "GET",
        "/v2/models/mlp/config",
        &[("accept-encoding", "gzip")],
        b"",
    )
    .await;
    assert_eq!(header(&headers, "content-encoding"), None);
    // The body limit applies to the decompressed size: a small gzip of a big body is 413.
    let big = vec![b' '; 7_000_000];
    let mut gzip = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    gzip.write_all(&big).unwrap();
    let bomb = gzip.finish().unwrap();
    let (status, _, answer) = exchange(
        addr,
        "POST",
        "/v2/models/mlp/infer",
        &[("content-encoding", "gzip")],
        &bomb,
    )
    .await;
    assert_eq!(status, 413, "{}", String::from_utf8_lossy(&answer));
    let (status, _, _) = exchange(
        addr,
        "POST",
        "/v2/models/mlp/infer",
        &[("content-encoding", "br")],
        b"x",
    )
    .await;
    assert_eq!(status, 415);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cors_answers_preflights_for_configured_origins_only() {
    let root = repository(&[("mlp", "1", "mlp.ort")]);
    let staging = tempfile::tempdir().unwrap();
    let config = Config::for_repository(
        root.path().to_path_buf(),
        staging.path().to_path_buf(),
        1 << 30,
    );
    let service = ModelService::new(config).unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let options = model_router::server::ServeOptions {
        cors_origins: vec!["https://app.example".into()],
        ..Default::default()
    };
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let served = tokio::spawn(model_router::server::serve_with(
        listener,
        service,
        options,
        async {
            let _ = stopped.await;
        },
    ));
    let preflight = [
        ("origin", "https://app.example"),
        ("access-control-request-method", "POST"),
        (
            "access-control-request-headers",
            "content-type,inference-header-content-length",
        ),
    ];
    let (status, headers, _) =
        exchange(addr, "OPTIONS", "/v2/models/mlp/infer", &preflight, b"").await;
    assert_eq!(status, 200);
    assert_eq!(
        header(&headers, "access-control-allow-origin"),
        Some("https://app.example")
    );
    assert!(
        header(&headers, "access-control-allow-methods")
            .unwrap()
            .contains("POST")
    );
    let (status, headers, _) = exchange(
        addr,
        "GET",
        "/v2/health/live",
        &[("origin", "https://evil.example")],
        b"",
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(header(&headers, "access-control-allow-origin"), None);
    let (_, headers, _) = exchange(
        addr,
        "GET",
        "/v2/health/live",
        &[("origin", "https://app.example")],
        b"",
    )
    .await;
    assert_eq!(
        header(&headers, "access-control-allow-origin"),
        Some("https://app.example")
    );
    let _ = stop.send(());
    served.await.unwrap().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readiness_follows_preload_the_repository_and_each_models_last_load() {
    let root = repository(&[("mlp", "1", "mlp.ort"), ("bad", "1", "mlp.ort")]);
    let staging = tempfile::tempdir().unwrap();
    let mut config = Config::for_repository(
        root.path().to_path_buf(),
        staging.path().to_path_buf(),
        1 << 30,
    );
    config.preload = vec!["mlp/1".into()];
    let server = TestServer::with_config(config, staging).await;
    // Live at once; not ready until preload has run.
    assert_eq!(server.get("/v2/health/live").await.0, 200);
    let (status, ready) = server.get("/v2/health/ready").await;
    assert_eq!(status, 400, "{ready}");
    assert_eq!(ready["ready"], false);
    assert!(
        ready["reason"].as_str().unwrap().contains("PRELOAD"),
        "{ready}"
    );
    server.service.preload().await;
    assert_eq!(
        server.get("/v2/health/ready").await,
        (200, json!({"ready": true}))
    );

    // A model whose load failed is not ready until a load succeeds.
    let path = root.path().join("bad/1/model.ort");
    let good = std::fs::read(&path).unwrap();
    let mut corrupt = good.clone();
    corrupt[good.len() / 2] ^= 0xff;
    std::fs::write(&path, &corrupt).unwrap();
    assert_eq!(
        server.get("/v2/models/bad/ready").await.0,
        200,
        "never loaded yet"
    );
    let (status, _) = server.post("/v2/models/bad/infer", &infer_body()).await;
    assert_eq!(status, 500);
    let (status, ready) = server.get("/v2/models/bad/ready").await;
    assert_eq!(status, 400, "{ready}");
    assert!(
        ready["reason"].as_str().unwrap().contains("sha256"),
        "{ready}"
    );
    std::fs::write(&path, &good).unwrap();
    assert_eq!(
        server.post("/v2/models/bad/infer", &infer_body()).await.0,
        200
    );
    assert_eq!(server.get("/v2/models/bad/ready").await.0, 200);

    // The repository gone: the server is not ready (and says so, it does not hang).
    let moved = root.path().with_extension("moved");
    std::fs::rename(root.path(), &moved).unwrap();
    let (status, ready) = server.get("/v2/health/ready").await;
    std::fs::rename(&moved, root.path()).unwrap();
    assert_eq!(status, 400, "{ready}");
    assert!(
        ready["reason"]
            .as_str()
            .unwrap()
            .contains("cannot be listed"),
        "{ready}"
    );
    assert_eq!(server.get("/v2/health/ready").await.0, 200);
}

/// The binary itself: `serve` listens before `PRELOAD_MODELS` is loaded, so
/// live answers during a preload stuck on a slow mount (every open of the
/// model file hangs 5 s on the EFS-like filesystem) and ready says why not;
/// once the preload is done, ready is true and the model is in memory.
#[test]
fn serve_is_live_during_preload_and_ready_after() {
    if !efs_sim::usable_or_skip("serve_is_live_during_preload_and_ready_after") {
        return;
    }
    let source = repository(&[("mlp", "1", "mlp.ort")]);
    let mount = tempfile::tempdir().unwrap();
    let sim = efs_sim::EfsSim::mount(source.path(), mount.path(), efs_sim::Options::default())
        .expect("mounting the EFS-like filesystem");
    sim.set_fault(
        "mlp/1/model.ort",
        efs_sim::Fault::HangOpen(std::time::Duration::from_secs(5)),
    );
    let staging = tempfile::tempdir().unwrap();
    let mut child = KillOnDrop(
        std::process::Command::new(env!("CARGO_BIN_EXE_model-router"))
            .args([
                "serve",
                "--addr",
                "127.0.0.1:0",
                "--preload",
                "mlp/1",
                "--repo",
            ])
            .arg(mount.path())
            .arg("--staging-dir")
            .arg(staging.path())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap(),
    );
    let mut stdout = std::io::BufReader::new(child.0.stdout.take().unwrap());
    let mut line = String::new();
    stdout.read_line(&mut line).unwrap();
    let addr: SocketAddr = line
        .trim()
        .rsplit("http://")
        .next()
        .and_then(|a| a.parse().ok())
        .unwrap_or_else(|| panic!("no address in {line:?}"));
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let (status, _, _) = exchange(addr, "GET", "/v2/health/live", &[], b"").await;
        assert_eq!(status, 200, "live while the preload waits on the mount");
        let (status, _, body) = exchange(addr, "GET", "/v2/health/ready", &[], b"").await;
        assert_eq!(status, 400, "{}", String::from_utf8_lossy(&body));
        assert!(
            json_of(&body)["reason"]
                .as_str()
                .unwrap()
                .contains("PRELOAD")
        );
        let mut ready = false;
        for _ in 0..300 {
            let (status, _, _) = exchange(addr, "GET", "/v2/health/ready", &[], b"").await;
            if status == 200 {
                ready = true;
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
        assert!(ready, "ready once the preload is done");
        let (_, _, body) = exchange(addr, "GET", "/v2/models/mlp/versions/1/ready", &[], b"").await;
        assert_eq!(json_of(&body)["loaded"], true, "the preload loaded it");
    });
}

/// A child process that is killed however the test ends.
struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
