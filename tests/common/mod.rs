//! Shared by the integration tests: a repository made by publishing the
//! committed fixtures (tests/data/models, made by scripts/make_fixtures.py), the
//! real server on 127.0.0.1:0, and a minimal HTTP/1.1 client that sends paths
//! exactly as written (so `..` and `%2e%2e` reach the router unnormalised).

#![allow(dead_code)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use model_router::repository::{PublishRequest, Repository};
use model_router::{Config, ModelService};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

pub fn fixture(file: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data/models")
        .join(file)
}

pub fn expected(model: &str) -> Value {
    let text = std::fs::read_to_string(fixture(&format!("{model}.expected.json"))).unwrap();
    serde_json::from_str(&text).unwrap()
}

/// A model repository in a temporary directory, with `(name, version, fixture file)` published.
pub fn repository(models: &[(&str, &str, &str)]) -> tempfile::TempDir {
    let root = tempfile::tempdir().unwrap();
    let repository = Repository::open(root.path()).unwrap();
    for (name, version, file) in models {
        repository
            .publish(&PublishRequest {
                name: name.to_string(),
                version: version.to_string(),
                source: fixture(file),
                team: None,
                description: None,
            })
            .unwrap();
    }
    root
}

/// A running server and what it serves.
pub struct TestServer {
    pub addr: SocketAddr,
    pub service: ModelService,
    pub root: PathBuf,
    _staging: tempfile::TempDir,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
}

impl TestServer {
    pub async fn start(root: &Path, cache_bytes: u64) -> TestServer {
        let staging = tempfile::tempdir().unwrap();
        let config = Config::for_repository(
            root.to_path_buf(),
            staging.path().to_path_buf(),
            cache_bytes,
        );
        TestServer::with_config(config, staging).await
    }

    pub async fn with_config(config: Config, staging: tempfile::TempDir) -> TestServer {
        let root = config.model_root.clone();
        let service = ModelService::new(config)
            .expect("service starts (is the ONNX Runtime library set up? scripts/setup-ort.sh)");
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (tx, rx) = tokio::sync::oneshot::channel();
        let served = service.clone();
        tokio::spawn(async move {
            model_router::server::serve(listener, served, async {
                let _ = rx.await;
            })
            .await
            .unwrap();
        });
        TestServer {
            addr,
            service,
            root,
            _staging: staging,
            shutdown: Some(tx),
        }
    }

    pub async fn request(&self, method: &str, path: &str, body: &str) -> (u16, Value) {
        let (status, bytes) = request_raw(self.addr, method, path, body.as_bytes()).await;
        let value = serde_json::from_slice(&bytes)
            .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into_owned()));
        (status, value)
    }

    pub async fn post(&self, path: &str, body: &Value) -> (u16, Value) {
        self.request("POST", path, &body.to_string()).await
    }

    pub async fn get(&self, path: &str) -> (u16, Value) {
        self.request("GET", path, "").await
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
    }
}

/// One HTTP/1.1 request with `Connection: close`; returns status and body.
pub async fn request_raw(
    addr: SocketAddr,
    method: &str,
    path: &str,
    body: &[u8],
) -> (u16, Vec<u8>) {
    request_with_headers(addr, method, path, &[], body).await
}

/// [`request_raw`] with more headers (`Inference-Header-Content-Length`).
pub async fn request_with_headers(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, String)],
    body: &[u8],
) -> (u16, Vec<u8>) {
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let extra: String = headers
        .iter()
        .map(|(name, value)| format!("{name}: {value}\r\n"))
        .collect();
    let head = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n{extra}Connection: close\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    // The server may answer (413) before reading a large body; a failed write is fine then.
    let _ = stream.write_all(body).await;
    let mut response = Vec::new();
    let _ = stream.read_to_end(&mut response).await;
    let text_end = response
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("a complete HTTP response")
        + 4;
    let head = String::from_utf8_lossy(&response[..text_end]).into_owned();
    let status = head.split_whitespace().nth(1).unwrap().parse().unwrap();
    let mut body = response[text_end..].to_vec();
    if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        body = dechunk(&body);
    }
    (status, body)
}

fn dechunk(mut data: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let line_end = data.windows(2).position(|w| w == b"\r\n").unwrap();
        let size =
            usize::from_str_radix(std::str::from_utf8(&data[..line_end]).unwrap().trim(), 16)
                .unwrap();
        if size == 0 {
            return out;
        }
        out.extend_from_slice(&data[line_end + 2..line_end + 2 + size]);
        data = &data[line_end + 2 + size + 2..];
    }
}

/// Asserts two JSON values are equal, numbers within a relative/absolute tolerance.
pub fn assert_close(actual: &Value, expected: &Value, tolerance: f64, context: &str) {
    match (actual, expected) {
        (Value::Number(a), Value::Number(e)) => {
            let (a, e) = (a.as_f64().unwrap(), e.as_f64().unwrap());
            assert!(
                (a - e).abs() <= tolerance * (1.0 + e.abs()),
                "{context}: {a} != {e}"
            );
        }
        (Value::Array(a), Value::Array(e)) => {
            assert_eq!(
                a.len(),
                e.len(),
                "{context}: lengths differ: {actual} vs {expected}"
            );
            for (i, (a, e)) in a.iter().zip(e).enumerate() {
                assert_close(a, e, tolerance, &format!("{context}[{i}]"));
            }
        }
        (Value::Object(a), Value::Object(e)) => {
            assert_eq!(
                a.keys().collect::<Vec<_>>(),
                e.keys().collect::<Vec<_>>(),
                "{context}: keys differ"
            );
            for (k, e) in e {
                assert_close(&a[k], e, tolerance, &format!("{context}.{k}"));
            }
        }
        _ => assert_eq!(actual, expected, "{context}"),
    }
}

/// Every case of a fixture's expected file, sent as `{"inputs": ...}` and, for
/// single-input models, as `{"features": ...}`, must give the outputs Python's
/// onnxruntime gave.
pub async fn check_fixture(server: &TestServer, name: &str, version: &str) {
    let expected = expected(name);
    let tolerance = expected["tolerance"]["rtol"]
        .as_f64()
        .unwrap_or(1e-5)
        .max(1e-6);
    for case in expected["cases"].as_array().unwrap() {
        let inputs: serde_json::Map<String, Value> = case["inputs"]
            .as_object()
            .unwrap()
            .iter()
            .map(|(k, v)| (k.clone(), v["data"].clone()))
            .collect();
        let mut bodies = vec![json!({ "inputs": inputs })];
        if inputs.len() == 1 {
            let data = inputs.values().next().unwrap().clone();
            bodies.push(json!({ "features": data.clone() }));
            // The original single-row form: a flat list.
            if data.as_array().unwrap().len() == 1 {
                bodies.push(json!({ "features": data[0].clone() }));
            }
        }
        for body in bodies {
            let (status, answer) = server
                .post(&format!("/models/{name}/{version}/predict"), &body)
                .await;
            let context = format!("{name}/{version} case {}: {body}", case["name"]);
            assert_eq!(status, 200, "{context}: {answer}");
            assert_eq!(answer["model"], name);
            for (output, want) in case["outputs"].as_object().unwrap() {
                assert_close(
                    &answer["outputs"][output],
                    &want["data"],
                    tolerance,
                    &format!("{context} output {output}"),
                );
            }
            let first = case["outputs"].as_object().unwrap().keys().next().unwrap();
            assert_eq!(
                answer["prediction"], answer["outputs"][first],
                "prediction is the first output"
            );
        }
    }
}
