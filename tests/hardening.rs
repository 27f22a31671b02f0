//! Inputs, clients and files that used to hang, kill or mislead the process
//! (issue 10), each against the real server (or the real binary, for
//! `invoke`): slow and idle clients, malformed bodies, undecodable base64,
//! a policy file that blocks.

mod common;

use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use common::{TestServer, repository};
use model_router::server::ServeOptions;
use model_router::{Config, ModelService};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// A server on 127.0.0.1:0 with `options`; stops when the returned sender drops.
async fn serve(
    root: &Path,
    options: ServeOptions,
) -> (
    SocketAddr,
    tempfile::TempDir,
    tokio::sync::oneshot::Sender<()>,
) {
    let staging = tempfile::tempdir().unwrap();
    let config = Config::for_repository(root.to_path_buf(), staging.path().to_path_buf(), 1 << 30);
    let service = ModelService::new(config).expect("service starts");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(model_router::server::serve_with(
        listener,
        service,
        options,
        async {
            let _ = stopped.await;
        },
    ));
    (addr, staging, stop)
}

/// Reads until the server closes the connection (or `limit` passes: then
/// panics); returns what it sent and how long that took.
async fn read_until_closed(stream: &mut TcpStream, limit: Duration) -> (Vec<u8>, Duration) {
    let started = Instant::now();
    let mut out = Vec::new();
    let read = tokio::time::timeout(limit, stream.read_to_end(&mut out)).await;
    assert!(
        read.is_ok(),
        "the server kept the connection open for {limit:?}"
    );
    (out, started.elapsed())
}

fn status_of(response: &[u8]) -> u16 {
    let text = String::from_utf8_lossy(response);
    text.split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("not an HTTP response: {text:?}"))
}

fn body_of(response: &[u8]) -> Value {
    let start = response
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("a complete response")
        + 4;
    serde_json::from_slice(&response[start..]).unwrap_or(Value::Null)
}

const PREDICT: &str = r#"{"features": [0.5, -1.25, 2.0, 0.75]}"#;

fn predict_request(connection: &str) -> String {
    format!(
        "POST /models/mlp/1/predict HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: {connection}\r\n\r\n{PREDICT}",
        PREDICT.len()
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_malformed_chunked_body_is_400_and_one_over_the_limit_413() {
    let root = repository(&[("mlp", "1", "mlp.onnx")]);
    let server = TestServer::start(root.path(), 1 << 30).await;
    let head = "POST /models/mlp/1/predict HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n";
    // "zz" is not a hex chunk size.
    let mut stream = TcpStream::connect(server.addr).await.unwrap();
    stream
        .write_all(format!("{head}zz\r\nabc\r\n0\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let (response, _) = read_until_closed(&mut stream, Duration::from_secs(10)).await;
    assert_eq!(
        status_of(&response),
        400,
        "{}",
        String::from_utf8_lossy(&response)
    );
    assert_eq!(body_of(&response)["code"], "invalid_body");

    // A well-formed chunked body past the limit is still 413.
    let big = "7".repeat(7_000_000);
    let mut stream = TcpStream::connect(server.addr).await.unwrap();
    stream.write_all(head.as_bytes()).await.unwrap();
    let chunk = format!("{:x}\r\n{big}\r\n0\r\n\r\n", big.len());
    let _ = stream.write_all(chunk.as_bytes()).await;
    let (response, _) = read_until_closed(&mut stream, Duration::from_secs(10)).await;
    assert_eq!(status_of(&response), 413);
    assert_eq!(body_of(&response)["code"], "payload_too_large");

    // And a good chunked body is answered.
    let mut stream = TcpStream::connect(server.addr).await.unwrap();
    let chunked = format!("{head}{:x}\r\n{PREDICT}\r\n0\r\n\r\n", PREDICT.len());
    stream.write_all(chunked.as_bytes()).await.unwrap();
    let (response, _) = read_until_closed(&mut stream, Duration::from_secs(10)).await;
    assert_eq!(
        status_of(&response),
        200,
        "{}",
        String::from_utf8_lossy(&response)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn half_sent_headers_and_bodies_are_cut_off() {
    let root = repository(&[("mlp", "1", "mlp.onnx")]);
    let options = ServeOptions {
        header_read_timeout: Duration::from_millis(500),
        body_read_timeout: Duration::from_millis(500),
        ..Default::default()
    };
    let (addr, _staging, _stop) = serve(root.path(), options).await;

    // Headers that never end: the connection is closed, without an answer.
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream
        .write_all(b"POST /models/mlp/1/predict HTTP/1.1\r\nHost: x\r\n")
        .await
        .unwrap();
    let (_, waited) = read_until_closed(&mut stream, Duration::from_secs(10)).await;
    assert!(
        waited >= Duration::from_millis(400),
        "closed after {waited:?}"
    );

    // Headers trickled a byte every 50 ms (slowloris): cut off all the same,
    // the timeout counting from their first byte.
    let mut stream = TcpStream::connect(addr).await.unwrap();
    let started = Instant::now();
    let mut closed = false;
    for byte in b"POST /models/mlp/1/predict HTTP/1.1\r\nHost: x\r\nX-Slow: "
        .iter()
        .cycle()
        .take(200)
    {
        if stream.write_all(&[*byte]).await.is_err() {
            closed = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(closed, "a trickling client was never cut off");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );

    // A body that never ends: 408 request_timeout, then the connection closes.
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream
        .write_all(
            b"POST /models/mlp/1/predict HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{\"features\"",
        )
        .await
        .unwrap();
    let (response, waited) = read_until_closed(&mut stream, Duration::from_secs(10)).await;
    assert_eq!(
        status_of(&response),
        408,
        "{}",
        String::from_utf8_lossy(&response)
    );
    assert_eq!(body_of(&response)["code"], "request_timeout");
    assert!(
        waited >= Duration::from_millis(400),
        "answered after {waited:?}"
    );

    // Meanwhile, and after, good requests are answered.
    let (status, _) =
        common::request_raw(addr, "POST", "/models/mlp/1/predict", PREDICT.as_bytes()).await;
    assert_eq!(status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_keep_alive_connections_are_closed() {
    let root = repository(&[("mlp", "1", "mlp.onnx")]);
    let options = ServeOptions {
        idle_timeout: Duration::from_millis(300),
        ..Default::default()
    };
    let (addr, _staging, _stop) = serve(root.path(), options).await;
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream
        .write_all(predict_request("keep-alive").as_bytes())
        .await
        .unwrap();
    // The answer comes, then (no further request) the close.
    let (response, waited) = read_until_closed(&mut stream, Duration::from_secs(10)).await;
    assert_eq!(status_of(&response), 200);
    assert!(
        waited >= Duration::from_millis(250),
        "closed after {waited:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_connections_at_the_limit_make_room_for_a_good_request() {
    let root = repository(&[("mlp", "1", "mlp.onnx")]);
    let options = ServeOptions {
        max_connections: 8,
        // Long enough that only the limit can explain a close.
        idle_timeout: Duration::from_secs(600),
        header_read_timeout: Duration::from_secs(600),
        ..Default::default()
    };
    let (addr, _staging, _stop) = serve(root.path(), options).await;
    let mut idle = Vec::new();
    for _ in 0..40 {
        idle.push(TcpStream::connect(addr).await.unwrap());
    }
    let answered = tokio::time::timeout(
        Duration::from_secs(20),
        common::request_raw(addr, "POST", "/models/mlp/1/predict", PREDICT.as_bytes()),
    )
    .await;
    let (status, _) =
        answered.expect("a good request is answered while 40 idle connections are open");
    assert_eq!(status, 200);
    // The oldest idle connections were closed to make room.
    let mut buf = [0u8; 1];
    let first = tokio::time::timeout(Duration::from_secs(5), idle[0].read(&mut buf)).await;
    assert!(matches!(first, Ok(Ok(0))), "{first:?}");
}

/// An HTTP event of `source` with `isBase64Encoded` and `body`, as a file.
fn base64_event(source: &str, body: &str, dir: &Path) -> std::path::PathBuf {
    let fixture = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data/events")
        .join(format!("{source}_predict.json"));
    let mut event: Value =
        serde_json::from_str(&std::fs::read_to_string(fixture).unwrap()).unwrap();
    event["isBase64Encoded"] = json!(true);
    event["body"] = json!(body);
    // A caller cannot fake the marker the front door sets.
    event["headers"]["x-model-router-undecodable-body"] = json!("1");
    let path = dir.join(format!("{source}.json"));
    std::fs::write(&path, event.to_string()).unwrap();
    path
}

#[test]
fn invoke_answers_400_to_a_body_marked_base64_that_is_not() {
    use base64::Engine as _;
    let root = repository(&[("mlp", "1", "mlp.onnx")]);
    let dir = tempfile::tempdir().unwrap();
    let good = base64::engine::general_purpose::STANDARD.encode(PREDICT);
    for source in ["apigw_v1", "apigw_v2", "alb"] {
        for (body, status) in [("%%% not base64 %%%", 400), (good.as_str(), 200)] {
            let event = base64_event(source, body, dir.path());
            let output = std::process::Command::new(env!("CARGO_BIN_EXE_model-router"))
                .args(["invoke", "--repo"])
                .arg(root.path())
                .arg("--staging-dir")
                .arg(dir.path().join("staging"))
                .arg("--event")
                .arg(&event)
                .output()
                .unwrap();
            assert!(
                output.status.success(),
                "{source}: exit {:?}: {}",
                output.status,
                String::from_utf8_lossy(&output.stderr)
            );
            let answer: Value = serde_json::from_slice(&output.stdout).unwrap();
            assert_eq!(answer["statusCode"], status, "{source}: {answer}");
            if status == 400 {
                let error: Value = serde_json::from_str(answer["body"].as_str().unwrap()).unwrap();
                assert_eq!(error["code"], "invalid_input", "{source}: {error}");
                assert!(error["error"].as_str().unwrap().contains("base64"));
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_policy_file_that_blocks_never_holds_up_a_request() {
    let root = repository(&[("mlp", "1", "mlp.onnx")]);
    let dir = tempfile::tempdir().unwrap();
    let policy = dir.path().join("policy.json");
    std::fs::write(
        &policy,
        r#"{"teams": {"all": {"principals": ["*"], "models": ["*"]}}}"#,
    )
    .unwrap();
    let staging = tempfile::tempdir().unwrap();
    let mut config = Config::for_repository(
        root.path().to_path_buf(),
        staging.path().to_path_buf(),
        1 << 30,
    );
    config.access_policy = Some(policy.clone());
    config.policy_reload_interval = Duration::from_millis(50);
    let server = TestServer::with_config(config, staging).await;
    // The policy becomes a FIFO no one writes: reading it would block forever.
    std::fs::remove_file(&policy).unwrap();
    let c = std::ffi::CString::new(policy.as_os_str().as_encoded_bytes()).unwrap();
    // SAFETY: `c` is a NUL-terminated path that outlives the call.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
    tokio::time::sleep(Duration::from_millis(300)).await;
    for path in ["/v2/health/ready", "/v2/health/live", "/models"] {
        let answered = tokio::time::timeout(Duration::from_secs(5), server.get(path)).await;
        let (status, body) = answered.unwrap_or_else(|_| panic!("{path} hung"));
        assert_eq!(status, 200, "{path}: {body}");
    }
    let status = model_router::admin::status(&server.service);
    assert_eq!(status["policy"]["loaded"], true, "{status}");
    assert!(
        status["policy"]["last_error"]
            .as_str()
            .is_some_and(|e| e.contains("not a regular file")),
        "{status}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_header_timeout_does_not_cut_an_idle_keep_alive_connection_short() {
    let root = repository(&[("mlp", "1", "mlp.onnx")]);
    let options = ServeOptions {
        header_read_timeout: Duration::from_millis(300),
        idle_timeout: Duration::from_secs(600),
        ..Default::default()
    };
    let (addr, _staging, _stop) = serve(root.path(), options).await;
    let mut stream = TcpStream::connect(addr).await.unwrap();
    for _ in 0..2 {
        stream
            .write_all(predict_request("keep-alive").as_bytes())
            .await
            .unwrap();
        let mut buf = vec![0u8; 4096];
        let n = tokio::time::timeout(Duration::from_secs(10), stream.read(&mut buf))
            .await
            .unwrap()
            .unwrap();
        assert!(n > 0, "the connection was closed");
        assert_eq!(status_of(&buf[..n]), 200);
        // Idle for longer than the header timeout, shorter than the idle one.
        tokio::time::sleep(Duration::from_millis(800)).await;
    }
}

/// Replaces `path` with a FIFO no one writes.
fn mkfifo(path: &Path) {
    let _ = std::fs::remove_file(path);
    let c = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).unwrap();
    // SAFETY: `c` is a NUL-terminated path that outlives the call.
    assert_eq!(
        unsafe { libc::mkfifo(c.as_ptr(), 0o600) },
        0,
        "{}",
        path.display()
    );
}

/// Replaces `path` with a character device node of `/dev/zero`'s numbers
/// (1, 5), where the process may make one (root); false where it may not.
fn mknod_zero(path: &Path) -> bool {
    let _ = std::fs::remove_file(path);
    let c = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).unwrap();
    // SAFETY: `c` is a NUL-terminated path that outlives the call; makedev
    // only packs two numbers.
    unsafe { libc::mknod(c.as_ptr(), libc::S_IFCHR | 0o600, libc::makedev(1, 5)) == 0 }
}

const IRIS_ROW: &str = r#"{"features": [5.1, 3.5, 1.4, 0.2]}"#;

/// Issue 10: "A model file or `aliases.json` that blocks hangs every request
/// for that model (and `GET /models`)". tests/load_path.rs covers the model's
/// requests; here, the listing, which reads every model's aliases.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fifo_aliases_file_never_hangs_the_listing() {
    let root = repository(&[("mlp", "1", "mlp.onnx"), ("iris", "1", "iris_logreg.onnx")]);
    mkfifo(&root.path().join("iris/aliases.json"));
    let server = TestServer::start(root.path(), 1 << 30).await;
    let answered = tokio::time::timeout(Duration::from_secs(10), async {
        let (status, body) = server.get("/models").await;
        assert_eq!(status, 200, "{body}");
        let names: Vec<&str> = body["models"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["name"].as_str().unwrap())
            .collect();
        assert_eq!(names, ["iris", "mlp"], "{body}");
        let (status, body) = server
            .request("POST", "/models/iris/1/predict", IRIS_ROW)
            .await;
        assert_eq!(status, 200, "{body}");
    })
    .await;
    assert!(answered.is_ok(), "a request hung on a FIFO aliases.json");
}

/// Issue 10: "A model file that is `/dev/zero` is copied past its manifest's
/// size until the disk fills." A model file that is a device node, or a
/// symlink to `/dev/zero`, is refused before a byte is read: answered at
/// once, nothing staged, other models unaffected.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_model_file_that_is_dev_zero_is_refused_before_a_byte_is_read() {
    let root = repository(&[
        ("linked", "1", "mlp.onnx"),
        ("device", "1", "mlp.onnx"),
        ("mlp", "1", "mlp.onnx"),
    ]);
    let linked = root.path().join("linked/1/model.onnx");
    std::fs::remove_file(&linked).unwrap();
    std::os::unix::fs::symlink("/dev/zero", &linked).unwrap();
    let device = mknod_zero(&root.path().join("device/1/model.onnx"));
    if !device {
        eprintln!("no device node case: mknod needs root (CAP_MKNOD)");
    }
    let server = TestServer::start(root.path(), 1 << 30).await;
    let answered = tokio::time::timeout(Duration::from_secs(10), async {
        // A symlink leaving the root is never followed: that version is not
        // there (DESIGN.md section 2).
        let (status, body) = server
            .request("POST", "/models/linked/1/predict", PREDICT)
            .await;
        assert_eq!(
            (status, body["code"].as_str()),
            (404, Some("version_not_found")),
            "{body}"
        );
        // And it says why, rather than "no version 1; available: 1".
        assert!(
            body["error"]
                .as_str()
                .is_some_and(|e| e.contains("leads outside MODEL_ROOT")),
            "{body}"
        );
        if device {
            let (status, body) = server
                .request("POST", "/models/device/1/predict", PREDICT)
                .await;
            assert_eq!(
                (status, body["code"].as_str()),
                (500, Some("model_load_failed")),
                "{body}"
            );
            assert!(
                body["error"]
                    .as_str()
                    .unwrap()
                    .contains("not a regular file"),
                "{body}"
            );
        }
        let (status, _) = server
            .request("POST", "/models/mlp/1/predict", PREDICT)
            .await;
        assert_eq!(status, 200);
    })
    .await;
    assert!(answered.is_ok(), "a request read a device without end");
    assert!(server.service.wait_for_staging(Duration::from_secs(10)));
    let staging = server.service.staging_stats();
    assert_eq!(staging.files, 1, "only mlp/1 is staged: {staging:?}");
    assert_eq!(server.service.cache_status().entries.len(), 1);
}

/// `model-router verify` on `repo`, killed (and failed) after `limit`.
fn verify_within(repo: &Path, limit: Duration) -> (Option<i32>, String) {
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_model-router"))
        .args(["verify", "--repo"])
        .arg(repo)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let started = Instant::now();
    while started.elapsed() < limit {
        if let Some(status) = child.try_wait().unwrap() {
            let mut out = String::new();
            std::io::Read::read_to_string(&mut child.stdout.take().unwrap(), &mut out).unwrap();
            return (status.code(), out);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    panic!("verify did not return within {limit:?}");
}

/// Issue 10: "`verify` never returns on a FIFO or a device." It returns,
/// naming each such version as failed, and exits 1.
#[test]
fn verify_returns_on_a_fifo_a_device_and_a_link_to_dev_zero() {
    let root = repository(&[
        ("fifo", "1", "mlp.onnx"),
        ("linked", "1", "mlp.onnx"),
        ("device", "1", "mlp.onnx"),
        ("mlp", "1", "mlp.onnx"),
    ]);
    mkfifo(&root.path().join("fifo/1/model.onnx"));
    let linked = root.path().join("linked/1/model.onnx");
    std::fs::remove_file(&linked).unwrap();
    std::os::unix::fs::symlink("/dev/zero", &linked).unwrap();
    let device = mknod_zero(&root.path().join("device/1/model.onnx"));
    if !device {
        // Without root the version stays a regular file and verifies.
        eprintln!("no device node case: mknod needs root (CAP_MKNOD)");
    }
    let (code, out) = verify_within(root.path(), Duration::from_secs(30));
    eprintln!("{out}");
    assert_eq!(code, Some(1), "{out}");
    assert!(
        out.contains("MISMATCH  fifo/1") && out.contains("not a regular file"),
        "{out}"
    );
    assert!(out.contains("MISMATCH  linked/1"), "{out}");
    assert!(out.contains("ok        mlp/1"), "{out}");
    if device {
        assert!(out.contains("MISMATCH  device/1"), "{out}");
        assert!(out.contains("4 versions checked, 3 failed"), "{out}");
    }
}

/// Issue 10: "With a small staging budget, a concurrent load can delete a
/// staged copy between its verification and its opening (`500 cannot open
/// ...`, a few in 5,000)." Through the real server: three models, a cache
/// that holds one and a staging tier that holds two, eight clients asking
/// for them in a pseudo-random order, so that loads reuse staged copies
/// while other loads stage theirs and evict: every answer is 200.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_small_staging_budget_never_loses_a_copy_a_load_is_opening() {
    let root = repository(&[
        ("a", "1", "sized_0.ort"),
        ("b", "1", "sized_1.ort"),
        ("c", "1", "sized_2.ort"),
    ]);
    let size = std::fs::metadata(common::fixture("sized_0.ort"))
        .unwrap()
        .len();
    let staging = tempfile::tempdir().unwrap();
    let mut config = Config::for_repository(
        root.path().to_path_buf(),
        staging.path().to_path_buf(),
        // One model's charge (its mapping and a little) fits, two do not.
        size * 3 / 2,
    );
    config.staging_bytes = size * 5 / 2;
    let server = TestServer::with_config(config, staging).await;
    let body = r#"{"features": [1, 2, 3, 4, 5, 6, 7, 8]}"#;
    let mut clients = Vec::new();
    for client in 0..8u32 {
        let addr = server.addr;
        clients.push(tokio::spawn(async move {
            let mut failures = Vec::new();
            let mut state = 0x2545_f491_u32.wrapping_mul(client + 1);
            for _ in 0..80 {
                state ^= state << 13;
                state ^= state >> 17;
                state ^= state << 5;
                let model = ["a", "b", "c"][state as usize % 3];
                let path = format!("/models/{model}/1/predict");
                let (status, bytes) =
                    common::request_raw(addr, "POST", &path, body.as_bytes()).await;
                if status != 200 {
                    failures.push((status, String::from_utf8_lossy(&bytes).into_owned()));
                }
            }
            failures
        }));
    }
    let mut failures = Vec::new();
    for client in clients {
        failures.extend(client.await.unwrap());
    }
    let cache = server.service.cache_status();
    let staged = server.service.staging_stats();
    eprintln!(
        "loads {}, evictions {}, staging {staged:?}",
        cache.loads, cache.evictions
    );
    assert!(
        failures.is_empty(),
        "{} failed, e.g. {:?}",
        failures.len(),
        failures.first()
    );
    // The cache churned through the staging tier, which churned too.
    assert!(
        cache.loads >= 20 && staged.reuses >= 10 && staged.evictions >= 5,
        "{cache:?} {staged:?}"
    );
}

/// Issue 10: "An unreadable version directory ... answers 404
/// `model_not_found` (clients do not retry a 404) while `GET /models` says
/// 503 at the same moment." The real binary, as a user for whom the
/// directory is unreadable (root reads any directory): 503 from both.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreadable_version_directory_is_503_from_every_route() {
    use std::os::unix::fs::PermissionsExt;
    use std::os::unix::process::CommandExt;
    // SAFETY: geteuid only reads the process's credentials.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("skipped: needs root, to run the server as another user");
        return;
    }
    let root = repository(&[("mlp", "1", "mlp.onnx"), ("mlp", "2", "mlp.ort")]);
    let staging = tempfile::tempdir().unwrap();
    for dir in [root.path(), staging.path()] {
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o777)).unwrap();
    }
    let unreadable = root.path().join("mlp/2");
    std::fs::set_permissions(&unreadable, std::fs::Permissions::from_mode(0o000)).unwrap();
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_model-router"))
        .args(["serve", "--addr", "127.0.0.1:0", "--repo"])
        .arg(root.path())
        .arg("--staging-dir")
        .arg(staging.path())
        .uid(65534)
        .gid(65534)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let addr: Option<SocketAddr> = std::io::BufRead::lines(std::io::BufReader::new(stdout))
        .find_map(|line| {
            line.ok()?
                .strip_prefix("model-router listening on http://")?
                .parse()
                .ok()
        });
    let Some(addr) = addr else {
        let _ = child.kill();
        panic!("the server did not start as uid 65534: {:?}", child.wait());
    };
    let ask = |method: &'static str, path: &'static str, body: &'static str| async move {
        let (status, bytes) = common::request_raw(addr, method, path, body.as_bytes()).await;
        (
            status,
            serde_json::from_slice::<Value>(&bytes).unwrap_or(Value::Null),
        )
    };
    for (method, path, body) in [
        ("POST", "/models/mlp/2/predict", PREDICT),
        ("POST", "/models/mlp/latest/predict", PREDICT),
        ("GET", "/models", ""),
    ] {
        let (status, answer) = ask(method, path, body).await;
        assert_eq!(
            (status, answer["code"].as_str()),
            (503, Some("repository_unavailable")),
            "{method} {path}: {answer}"
        );
    }
    // Readable again: the same requests answer, nothing was poisoned.
    std::fs::set_permissions(&unreadable, std::fs::Permissions::from_mode(0o755)).unwrap();
    let (status, answer) = ask("POST", "/models/mlp/2/predict", PREDICT).await;
    assert_eq!(status, 200, "{answer}");
    let (status, answer) = ask("GET", "/models", "").await;
    assert_eq!(status, 200, "{answer}");
    child.kill().unwrap();
    child.wait().unwrap();
}
