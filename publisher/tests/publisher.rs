//! The publisher against moto, a real S3 API server: started once per test
//! process on 127.0.0.1 with a port the OS picks (publisher/tests/moto_server.py,
//! from the hash-pinned venv of scripts/setup-moto.sh), and gone when the
//! tests end (it exits when its stdin closes). Objects are uploaded with the
//! AWS SDK as a team would; events come from tests/data/events/s3_put.json
//! with the bucket, key and version of the real upload; the publisher reaches
//! moto through a loopback TCP proxy of this file, which counts connections
//! and can reset them (the retry tests). Each test has a bucket of its own.
//!
//! When moto cannot be installed (no network to PyPI, no python3-venv) the
//! tests say so and pass without running, except under CI=true, where that
//! is a failure: scripts/test.sh installs moto before `cargo test`.

use std::io::{BufRead as _, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use aws_config::BehaviorVersion;
use aws_sdk_s3::config::{Credentials, Region};
use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::types::{
    BucketVersioningStatus, ChecksumAlgorithm, ChecksumType, CompletedMultipartUpload,
    CompletedPart, VersioningConfiguration,
};
use aws_smithy_http_client::tls::{self, rustls_provider::CryptoMode};
use base64::Engine as _;
use model_router::engine::{Engine, EngineConfig, find_library};
use model_router::repository::{Manifest, hash_file};
use model_router_publisher::s3::{DownloadSettings, S3};
use model_router_publisher::{EventReport, Publisher, PublisherConfig, PublisherError, Status};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};

fn fixture(file: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../tests/data")
        .join(file)
}

fn model(file: &str) -> Vec<u8> {
    std::fs::read(fixture(&format!("models/{file}"))).unwrap()
}

fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

fn sha256_base64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(Sha256::digest(bytes))
}

/// Bytes that are no model, different at every offset (a part fetched in
/// the wrong order or twice changes the sha256).
fn noise(len: usize) -> Vec<u8> {
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    (0..len)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state as u8
        })
        .collect()
}

// ---------------------------------------------------------------- moto

/// The moto server of this test process.
struct Moto {
    endpoint: String,
    /// Kept so that the server's stdin stays open while the tests run; the
    /// OS closes it when this process exits, and the server then stops.
    _child: Mutex<Child>,
}

static MOTO: OnceLock<Option<Moto>> = OnceLock::new();

/// moto, started on first use; `None` (with the reason printed) when it
/// cannot be installed here and this is not CI.
fn moto() -> Option<&'static Moto> {
    MOTO.get_or_init(|| match start_moto() {
        Ok(moto) => Some(moto),
        Err(why) if std::env::var_os("CI").is_some() => {
            panic!("moto is required in CI (scripts/test.sh installs it): {why}")
        }
        Err(why) => {
            eprintln!(
                "SKIPPED: the publisher tests need moto, which could not be installed: {why}"
            );
            None
        }
    })
    .as_ref()
}

fn start_moto() -> Result<Moto, String> {
    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let python = match std::env::var_os("MOTO_PYTHON") {
        Some(python) => PathBuf::from(python),
        None => {
            let out = Command::new(repo.join("scripts/setup-moto.sh"))
                .stderr(Stdio::inherit())
                .output()
                .map_err(|e| format!("scripts/setup-moto.sh: {e}"))?;
            if !out.status.success() {
                return Err(format!("scripts/setup-moto.sh exited {}", out.status));
            }
            let stdout = String::from_utf8_lossy(&out.stdout);
            PathBuf::from(stdout.lines().last().unwrap_or_default().trim())
        }
    };
    let mut child = Command::new(&python)
        .arg(repo.join("publisher/tests/moto_server.py"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| format!("{}: {e}", python.display()))?;
    let stdout = child.stdout.take().ok_or("no stdout")?;
    let mut line = String::new();
    BufReader::new(stdout)
        .read_line(&mut line)
        .map_err(|e| e.to_string())?;
    let endpoint = line
        .trim()
        .strip_prefix("moto listening on ")
        .ok_or_else(|| format!("moto_server.py said {line:?}"))?
        .to_string();
    Ok(Moto {
        endpoint,
        _child: Mutex::new(child),
    })
}

/// An SDK configuration for `endpoint` with moto's test credentials; few,
/// quick retries so that the retry tests take milliseconds.
async fn sdk_config(endpoint: &str) -> aws_config::SdkConfig {
    let http = aws_smithy_http_client::Builder::new()
        .tls_provider(tls::Provider::Rustls(CryptoMode::Ring))
        .build_https();
    aws_config::defaults(BehaviorVersion::latest())
        .http_client(http)
        .region(Region::new("us-east-1"))
        .credentials_provider(Credentials::new("testing", "testing", None, None, "tests"))
        .endpoint_url(endpoint)
        .retry_config(
            aws_config::retry::RetryConfig::standard()
                .with_max_attempts(3)
                .with_initial_backoff(Duration::from_millis(20)),
        )
        .load()
        .await
}

// --------------------------------------------------------------- proxy

/// A loopback TCP proxy in front of moto: counts connections, and resets
/// the ones it is told to, the way a flaky network or an S3 front end does.
#[derive(Clone, Default)]
struct Proxy {
    connections: Arc<AtomicUsize>,
    /// The next this many connections are reset once their request arrives.
    reset_on_request: Arc<AtomicUsize>,
    /// When set, the first connection whose response passes this many bytes
    /// is reset there, in the middle of a body.
    reset_mid_response: Arc<Mutex<Option<u64>>>,
    resets: Arc<AtomicUsize>,
}

impl Proxy {
    async fn start(upstream: &str) -> (Proxy, String) {
        let upstream = upstream.trim_start_matches("http://").to_string();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let endpoint = format!("http://{}", listener.local_addr().unwrap());
        let proxy = Proxy::default();
        let shared = proxy.clone();
        tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let (proxy, upstream) = (shared.clone(), upstream.clone());
                tokio::spawn(async move { proxy.relay(client, &upstream).await });
            }
        });
        (proxy, endpoint)
    }

    async fn relay(&self, mut client: TcpStream, upstream: &str) {
        self.connections.fetch_add(1, Ordering::SeqCst);
        let reset_now = self
            .reset_on_request
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok();
        if reset_now {
            let mut buf = [0u8; 1024];
            let _ = client.read(&mut buf).await;
            self.reset(client);
            return;
        }
        let Ok(mut server) = TcpStream::connect(upstream).await else {
            return;
        };
        let reset_wanted = {
            let (mut client_read, mut client_write) = client.split();
            let (mut server_read, mut server_write) = server.split();
            let requests = async {
                let _ = tokio::io::copy(&mut client_read, &mut server_write).await;
                let _ = server_write.shutdown().await;
            };
            let responses = async {
                let mut sent = 0u64;
                let mut buf = vec![0u8; 16 * 1024];
                loop {
                    let n = match server_read.read(&mut buf).await {
                        Ok(0) | Err(_) => return false,
                        Ok(n) => n,
                    };
                    sent += n as u64;
                    let trigger = {
                        let mut armed = self.reset_mid_response.lock().unwrap();
                        match *armed {
                            Some(limit) if sent > limit => armed.take().is_some(),
                            _ => false,
                        }
                    };
                    if trigger {
                        // Half of this read goes out, then the connection is reset.
                        let _ = client_write.write_all(&buf[..n / 2]).await;
                        return true;
                    }
                    if client_write.write_all(&buf[..n]).await.is_err() {
                        return false;
                    }
                }
            };
            tokio::pin!(requests, responses);
            tokio::select! {
                reset = &mut responses => reset,
                () = &mut requests => responses.await,
            }
        };
        if reset_wanted {
            self.reset(client);
        }
    }

    fn reset(&self, stream: TcpStream) {
        self.resets.fetch_add(1, Ordering::SeqCst);
        // SO_LINGER 0: closing sends RST, not FIN.
        let _ = stream.set_zero_linger();
        drop(stream);
    }

    fn connections(&self) -> usize {
        self.connections.load(Ordering::SeqCst)
    }
}

// ------------------------------------------------------------- harness

/// A bucket of its own on moto, a repository, and a publisher reaching moto
/// through a proxy.
struct Harness {
    bucket: String,
    /// Straight to moto: what the uploading team and the checks use.
    seed: aws_sdk_s3::Client,
    proxy: Proxy,
    publisher: Publisher,
    root: tempfile::TempDir,
    staging: tempfile::TempDir,
}

static BUCKETS: AtomicUsize = AtomicUsize::new(0);

impl Harness {
    async fn start() -> Option<Harness> {
        Harness::with(DownloadSettings::default()).await
    }

    async fn with(download: DownloadSettings) -> Option<Harness> {
        let moto = moto()?;
        let seed = aws_sdk_s3::Client::from_conf(
            aws_sdk_s3::config::Builder::from(&sdk_config(&moto.endpoint).await)
                .force_path_style(true)
                .build(),
        );
        let bucket = format!(
            "model-router-incoming-{}-{}",
            std::process::id(),
            BUCKETS.fetch_add(1, Ordering::SeqCst)
        );
        seed.create_bucket().bucket(&bucket).send().await.unwrap();
        seed.put_bucket_versioning()
            .bucket(&bucket)
            .versioning_configuration(
                VersioningConfiguration::builder()
                    .status(BucketVersioningStatus::Enabled)
                    .build(),
            )
            .send()
            .await
            .unwrap();

        let (proxy, endpoint) = Proxy::start(&moto.endpoint).await;
        let s3 = S3::from_sdk_config(&sdk_config(&endpoint).await, download).unwrap();
        let dylib = std::env::var_os("ORT_DYLIB_PATH").map(PathBuf::from);
        let engine = Engine::init(&EngineConfig {
            dylib_path: find_library(dylib.as_deref()).unwrap(),
            intra_threads: 1,
        })
        .expect("ONNX Runtime loads (scripts/setup-ort.sh)");
        let root = tempfile::tempdir().unwrap();
        let staging = tempfile::tempdir().unwrap();
        let config = PublisherConfig {
            model_root: root.path().to_path_buf(),
            incoming_prefix: "incoming/".into(),
            results_prefix: Some("results/".into()),
            staging_dir: staging.path().join("staging"),
            ort_dylib_path: None,
            download,
        };
        let publisher = Publisher::new(config, s3, Some(engine)).unwrap();
        Some(Harness {
            bucket,
            seed,
            proxy,
            publisher,
            root,
            staging,
        })
    }

    /// Uploads `body` at `key` as a team would, and returns its version id.
    async fn upload(&self, key: &str, body: &[u8], upload: Upload<'_>) -> String {
        let mut request = self
            .seed
            .put_object()
            .bucket(&self.bucket)
            .key(key)
            .body(ByteStream::from(body.to_vec()));
        if upload.checksum {
            request = request.checksum_algorithm(ChecksumAlgorithm::Sha256);
        }
        if let Some(claimed) = upload.stored_checksum {
            request = request
                .checksum_algorithm(ChecksumAlgorithm::Sha256)
                .checksum_sha256(claimed);
        }
        for (name, value) in upload.metadata {
            request = request.metadata(*name, *value);
        }
        let output = request.send().await.unwrap();
        output.version_id().unwrap().to_string()
    }

    /// The uploader's result object, if written.
    async fn result(&self, name: &str, version: &str) -> Option<Value> {
        let output = self
            .seed
            .get_object()
            .bucket(&self.bucket)
            .key(format!("results/{name}/{version}.json"))
            .send()
            .await
            .ok()?;
        let bytes = output.body.collect().await.unwrap().into_bytes();
        Some(serde_json::from_slice(&bytes).unwrap())
    }

    fn manifest(&self, name: &str, version: &str) -> Option<Manifest> {
        let path = self
            .root
            .path()
            .join(name)
            .join(version)
            .join("manifest.json");
        let bytes = std::fs::read(path).ok()?;
        Some(Manifest::parse(&bytes).unwrap())
    }

    fn published_bytes(&self, name: &str, version: &str, file: &str) -> Vec<u8> {
        std::fs::read(self.root.path().join(name).join(version).join(file)).unwrap()
    }

    /// Nothing was published under `name`, and no download was left behind.
    fn assert_nothing_published(&self, name: &str) {
        let dir = self.root.path().join(name);
        let entries: Vec<_> = std::fs::read_dir(&dir)
            .map(|d| d.map(|e| e.unwrap().file_name()).collect())
            .unwrap_or_default();
        assert!(entries.is_empty(), "{}: {entries:?}", dir.display());
        self.assert_no_downloads_left();
    }

    fn assert_no_downloads_left(&self) {
        let staging = self.staging.path().join("staging");
        let left: Vec<_> = std::fs::read_dir(&staging)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert!(left.is_empty(), "left in staging: {left:?}");
    }

    /// The committed fixture's record, for this bucket, `key` (URL-encoded
    /// as S3 sends it) and version.
    fn record(&self, key: &str, version_id: Option<&str>, event_name: &str) -> Value {
        let text = std::fs::read_to_string(fixture("events/s3_put.json")).unwrap();
        let event: Value = serde_json::from_str(&text).unwrap();
        let mut record = event["Records"][0].clone();
        record["s3"]["bucket"]["name"] = json!(self.bucket);
        record["s3"]["bucket"]["arn"] = json!(format!("arn:aws:s3:::{}", self.bucket));
        record["s3"]["object"]["key"] = json!(key);
        record["s3"]["object"]["versionId"] = json!(version_id);
        record["eventName"] = json!(event_name);
        record
    }

    /// An `ObjectCreated:Put` record of `key` at `version_id`.
    fn put(&self, key: &str, version_id: &str) -> Value {
        self.record(key, Some(version_id), "ObjectCreated:Put")
    }

    async fn handle(&self, records: Vec<Value>) -> EventReport {
        self.publisher
            .handle_payload(json!({ "Records": records }))
            .await
            .unwrap()
    }
}

/// How a test object is uploaded.
#[derive(Default, Clone, Copy)]
struct Upload<'a> {
    /// With an S3 SHA-256 checksum, computed by the SDK.
    checksum: bool,
    /// With this S3 SHA-256 checksum (base64), whatever the bytes are.
    stored_checksum: Option<&'a str>,
    metadata: &'a [(&'a str, &'a str)],
}

/// mlp.ort as a team uploads it: S3 checksum, sha256, team and a
/// description (RFC 2047, as S3 returns non-ASCII metadata: "modèle v1").
async fn upload_mlp(h: &Harness, key: &str) -> String {
    let body = model("mlp.ort");
    let sha = sha256_hex(&body).to_uppercase();
    h.upload(
        key,
        &body,
        Upload {
            checksum: true,
            metadata: &[
                ("team", "fraud"),
                ("description", "=?UTF-8?B?bW9kw6hsZSB2MQ==?="),
                ("sha256", &sha),
            ],
            ..Upload::default()
        },
    )
    .await
}

// --------------------------------------------------------------- tests

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_verified_upload_is_published_with_its_manifest_and_result() {
    let Some(h) = Harness::start().await else {
        return;
    };
    let version_id = upload_mlp(&h, "incoming/mlp/1/model.ort").await;

    let answer = h
        .publisher
        .invoke(json!({ "Records": [h.put("incoming/mlp/1/model.ort", &version_id)] }))
        .await
        .unwrap();
    let report = &answer["records"][0];
    assert_eq!(report["status"], "published", "{answer:#}");
    assert_eq!(report["model"], "mlp");
    assert_eq!(report["version"], "1");
    assert_eq!(report["parts"], 1);
    assert_eq!(
        report["verified"],
        json!(["x-amz-checksum-sha256", "x-amz-meta-sha256"])
    );
    assert_eq!(report["result_key"], "results/mlp/1.json");

    let bytes = model("mlp.ort");
    let manifest = h.manifest("mlp", "1").expect("manifest.json written");
    assert_eq!(manifest.file, "model.ort");
    assert_eq!(manifest.sha256, sha256_hex(&bytes));
    assert_eq!(manifest.size, bytes.len() as u64);
    assert_eq!(manifest.team.as_deref(), Some("fraud"));
    assert_eq!(manifest.description.as_deref(), Some("modèle v1"));
    assert_eq!(h.published_bytes("mlp", "1", "model.ort"), bytes);
    let published = h.root.path().join("mlp/1/model.ort");
    assert_eq!(hash_file(&published).unwrap().0, manifest.sha256);
    h.assert_no_downloads_left();

    // The uploader's result object, written back to the bucket.
    let result = h.result("mlp", "1").await.expect("result object written");
    assert_eq!(result["status"], "published");
    assert_eq!(result["sha256"], manifest.sha256);
    assert_eq!(result["size"], bytes.len());
    assert_eq!(result["team"], "fraud");
    assert_eq!(
        result["source"],
        format!(
            "s3://{}/incoming/mlp/1/model.ort?versionId={version_id}",
            h.bucket
        )
    );
    let at = result["at"].as_str().unwrap();
    assert!(
        at.starts_with("20") && at.ends_with('Z') && at.len() == 20,
        "{at}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sha256_claim_the_bytes_do_not_match_is_rejected_and_names_both_hashes() {
    let Some(h) = Harness::start().await else {
        return;
    };
    let bytes = model("mlp.ort");
    let other = sha256_hex(b"some other file");
    let version_id = h
        .upload(
            "incoming/mlp/1/model.ort",
            &bytes,
            Upload {
                checksum: true,
                metadata: &[("sha256", &other)],
                ..Upload::default()
            },
        )
        .await;

    // Rejections are final: the invocation succeeds, so Lambda does not retry.
    let answer = h
        .publisher
        .invoke(json!({ "Records": [h.put("incoming/mlp/1/model.ort", &version_id)] }))
        .await
        .unwrap();
    let report = &answer["records"][0];
    assert_eq!(report["status"], "rejected", "{report:#}");
    assert_eq!(report["code"], "checksum_mismatch");
    let error = report["error"].as_str().unwrap();
    assert!(error.contains(&other), "{error}");
    assert!(error.contains(&sha256_hex(&bytes)), "{error}");
    assert!(error.contains("x-amz-meta-sha256"), "{error}");
    // S3's own checksum did match.
    assert_eq!(report["verified"], json!(["x-amz-checksum-sha256"]));
    h.assert_nothing_published("mlp");
    let result = h.result("mlp", "1").await.unwrap();
    assert_eq!(
        (&result["status"], &result["code"]),
        (&json!("rejected"), &json!("checksum_mismatch"))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bytes_that_disagree_with_s3s_checksum_fail_so_the_event_is_retried() {
    // moto stores the checksum it is given without checking it (S3 would
    // refuse the upload), which stands in for a download corrupted on the way.
    let download = DownloadSettings {
        ranged_threshold: 64 << 10,
        part_bytes: 40_000,
        concurrency: 3,
    };
    let Some(h) = Harness::with(download).await else {
        return;
    };
    let wrong = sha256_base64(b"not these bytes");
    let small = model("mlp.ort");
    let large = model("sized_0.ort");
    assert!(large.len() as u64 > download.ranged_threshold);
    let mut records = Vec::new();
    for (name, body) in [("small", &small), ("large", &large)] {
        let key = format!("incoming/{name}/1/model.ort");
        let upload = Upload {
            stored_checksum: Some(&wrong),
            ..Upload::default()
        };
        let version_id = h.upload(&key, body, upload).await;
        records.push(h.put(&key, &version_id));
    }
    let report = h.handle(records).await;
    // One GET: the SDK's own validation fails, on every attempt. Ranged:
    // no checksum per range; the whole file's sha256 disagrees with S3's.
    let small_error = report.records[0].error.as_deref().unwrap();
    assert!(
        small_error.contains("the SDK's checksum validation failed"),
        "{small_error}"
    );
    let large_error = report.records[1].error.as_deref().unwrap();
    assert!(
        large_error.contains("x-amz-checksum-sha256") && large_error.contains(&sha256_hex(&large)),
        "{large_error}"
    );
    for record in &report.records {
        assert_eq!(
            (record.status, record.code),
            (Status::Failed, Some("s3_checksum_mismatch")),
            "{record:#?}"
        );
    }
    assert_eq!(report.records[1].parts, Some(7));
    h.assert_nothing_published("small");
    h.assert_nothing_published("large");
    // Failed records write no result: the retry will.
    assert!(h.result("small", "1").await.is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_keys_are_refused_before_anything_is_downloaded() {
    let Some(h) = Harness::start().await else {
        return;
    };
    let report = h
        .handle(
            [
                "incoming/../x/1/model.ort",
                "incoming/a/b/c/model.ort",
                "incoming/%2E%2E/1/model.ort",
                "incoming/m/1.0%2F..%2F2/model.ort",
                "incoming/m/1/%FF.ort",
            ]
            .iter()
            .map(|key| h.record(key, None, "ObjectCreated:Put"))
            .collect(),
        )
        .await;
    let codes: Vec<_> = report.records.iter().map(|r| (r.status, r.code)).collect();
    assert_eq!(
        codes,
        [
            (Status::Rejected, Some("invalid_name")),
            (Status::Rejected, Some("invalid_key")),
            (Status::Rejected, Some("invalid_name")),
            (Status::Rejected, Some("invalid_key")),
            (Status::Rejected, Some("invalid_key")),
        ]
    );
    let error = |i: usize| report.records[i].error.as_deref().unwrap();
    assert!(error(0).contains("\"..\""), "{}", error(0));
    assert!(error(1).contains("<name>/<version>/<file>"), "{}", error(1));
    assert!(error(4).contains("URL-encoded"), "{}", error(4));
    assert_eq!(report.failed(), 0);
    // Not one request reached S3: no download, and no result for names
    // that are not names.
    assert_eq!(h.proxy.connections(), 0);
    assert_eq!(std::fs::read_dir(h.root.path()).unwrap().count(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_outside_the_prefix_and_other_events_are_ignored() {
    let Some(h) = Harness::start().await else {
        return;
    };
    let report = h
        .handle(vec![
            h.record("other/mlp/1/model.ort", None, "ObjectCreated:Put"),
            h.record("results/mlp/1.json", None, "ObjectCreated:Put"),
            h.record("incoming/mlp/1/README.md", None, "ObjectCreated:Put"),
            h.record("incoming/mlp/1/", None, "ObjectCreated:Put"),
            h.record("incoming/mlp/1/model.ort", None, "ObjectRemoved:Delete"),
        ])
        .await;
    assert!(
        report
            .records
            .iter()
            .all(|r| r.status == Status::Ignored && r.reason.is_some()),
        "{report:#?}"
    );
    assert!(
        report.records[0]
            .reason
            .as_deref()
            .unwrap()
            .contains("incoming/")
    );
    assert_eq!(h.proxy.connections(), 0);
    h.assert_nothing_published("mlp");

    // S3 sends a test event when the notification is configured.
    let test_event = json!({"Service": "Amazon S3", "Event": "s3:TestEvent",
        "Time": "2026-11-28T16:29:49.000Z", "Bucket": h.bucket,
        "RequestId": "5582815E1AEA5ADF", "HostId": "8cLeGAmw098X5cv4Zkwcmo8vvZa3eH3eKxsPzbB9wrR+YstdA6Knx4Ip8EXAMPLE"});
    assert_eq!(
        h.publisher.invoke(test_event).await.unwrap(),
        json!({"records": []})
    );
    // Anything else is an error (retried, then kept in the dead-letter queue).
    assert!(matches!(
        h.publisher.invoke(json!({"action": "status"})).await,
        Err(PublisherError::InvalidEvent(_))
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redelivery_is_already_published_and_other_bytes_are_version_exists() {
    let Some(h) = Harness::start().await else {
        return;
    };
    let version_id = upload_mlp(&h, "incoming/mlp/1/model.ort").await;
    let event = json!({ "Records": [h.put("incoming/mlp/1/model.ort", &version_id)] });
    let first = h.publisher.invoke(event.clone()).await.unwrap();
    assert_eq!(first["records"][0]["status"], "published");
    let manifest = h.manifest("mlp", "1").unwrap();

    // S3 delivers at least once: the same event again.
    let again = h.publisher.invoke(event).await.unwrap();
    assert_eq!(
        again["records"][0]["status"], "already_published",
        "{again:#}"
    );
    assert_eq!(again["records"][0]["sha256"], manifest.sha256);
    assert_eq!(
        h.result("mlp", "1").await.unwrap()["status"],
        "already_published"
    );

    // Other bytes for the same version, as .onnx this time.
    let onnx = model("iris_logreg.onnx");
    let other = h
        .upload("incoming/mlp/1/model.onnx", &onnx, Upload::default())
        .await;
    let conflict = h
        .handle(vec![h.put("incoming/mlp/1/model.onnx", &other)])
        .await;
    let report = &conflict.records[0];
    assert_eq!(
        (report.status, report.code),
        (Status::Rejected, Some("version_exists")),
        "{report:#?}"
    );
    let error = report.error.as_deref().unwrap();
    assert!(
        error.contains(&manifest.sha256) && error.contains(&sha256_hex(&onnx)),
        "{error}"
    );
    assert_eq!(conflict.failed(), 0);
    assert_eq!(
        h.result("mlp", "1").await.unwrap()["code"],
        "version_exists"
    );
    // The published version is untouched.
    assert_eq!(h.manifest("mlp", "1").unwrap(), manifest);
    assert_eq!(h.published_bytes("mlp", "1", "model.ort"), model("mlp.ort"));
    assert!(!h.root.path().join("mlp/1/model.onnx").exists());
    h.assert_no_downloads_left();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_object_above_the_threshold_is_fetched_in_ranged_parts_and_hashed_in_order() {
    let download = DownloadSettings {
        ranged_threshold: 64 << 10,
        part_bytes: 40_000,
        concurrency: 4,
    };
    let Some(h) = Harness::with(download).await else {
        return;
    };
    // A real model in 7 parts (the last one short), and 3 MB of noise in 76.
    let sized = model("sized_0.ort");
    let big = noise(3_000_017);
    let sized_sha = sha256_hex(&sized);
    let big_sha = sha256_hex(&big);
    let mut records = Vec::new();
    for (key, body, sha) in [
        ("incoming/sized/1/model.ort", &sized, &sized_sha),
        ("incoming/noise/1/model.ort", &big, &big_sha),
    ] {
        let upload = Upload {
            checksum: true,
            metadata: &[("sha256", sha)],
            ..Upload::default()
        };
        let version_id = h.upload(key, body, upload).await;
        records.push(h.put(key, &version_id));
    }
    let report = h.handle(records).await;

    let sized_report = &report.records[0];
    assert_eq!(sized_report.status, Status::Published, "{sized_report:#?}");
    assert_eq!(sized_report.parts, Some(7));
    assert_eq!(sized_report.sha256.as_deref(), Some(sized_sha.as_str()));
    assert_eq!(
        sized_report.verified,
        ["x-amz-checksum-sha256", "x-amz-meta-sha256"]
    );
    assert_eq!(h.published_bytes("sized", "1", "model.ort"), sized);
    assert_eq!(h.manifest("sized", "1").unwrap().sha256, sized_sha);

    // Noise is downloaded and verified in full, then refused by ONNX Runtime.
    let noise_report = &report.records[1];
    assert_eq!(noise_report.parts, Some(76));
    assert_eq!(noise_report.size, Some(3_000_017));
    assert_eq!(noise_report.sha256.as_deref(), Some(big_sha.as_str()));
    assert_eq!(
        noise_report.verified,
        ["x-amz-checksum-sha256", "x-amz-meta-sha256"]
    );
    assert_eq!(
        (noise_report.status, noise_report.code),
        (Status::Rejected, Some("model_load_failed"))
    );
    h.assert_nothing_published("noise");
    // The parts ran side by side on more than one connection.
    assert!(h.proxy.connections() > 1, "{}", h.proxy.connections());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reset_connection_is_retried_and_the_upload_still_publishes() {
    let download = DownloadSettings {
        ranged_threshold: 64 << 10,
        part_bytes: 40_000,
        concurrency: 2,
    };
    let Some(h) = Harness::with(download).await else {
        return;
    };
    // Before any response: the SDK's standard retry mode sends it again.
    let small = upload_mlp(&h, "incoming/mlp/1/model.ort").await;
    h.proxy.reset_on_request.store(1, Ordering::SeqCst);
    let first = h
        .handle(vec![h.put("incoming/mlp/1/model.ort", &small)])
        .await;
    assert_eq!(first.records[0].status, Status::Published, "{first:#?}");
    assert_eq!(h.proxy.resets.load(Ordering::SeqCst), 1);

    // In the middle of a ranged part's body (past every HEAD's few hundred
    // bytes): that part is fetched again, the bytes still hash in order.
    let sized = model("sized_0.ort");
    let sized_sha = sha256_hex(&sized);
    let upload = Upload {
        checksum: true,
        metadata: &[("sha256", &sized_sha)],
        ..Upload::default()
    };
    let large = h.upload("incoming/sized/1/model.ort", &sized, upload).await;
    *h.proxy.reset_mid_response.lock().unwrap() = Some(20_000);
    let second = h
        .handle(vec![h.put("incoming/sized/1/model.ort", &large)])
        .await;
    let record = &second.records[0];
    assert_eq!(record.status, Status::Published, "{record:#?}");
    assert_eq!(
        h.proxy.resets.load(Ordering::SeqCst),
        2,
        "the reset happened"
    );
    assert_eq!(record.sha256.as_deref(), Some(sized_sha.as_str()));
    assert_eq!(h.published_bytes("sized", "1", "model.ort"), sized);
    assert_eq!(h.result("sized", "1").await.unwrap()["status"], "published");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_object_fails_its_record_and_the_others_still_publish() {
    let Some(h) = Harness::start().await else {
        return;
    };
    let version_id = upload_mlp(&h, "incoming/mlp/1/model.ort").await;
    let payload = json!({ "Records": [
        h.record("incoming/missing/1/model.ort", None, "ObjectCreated:Put"),
        h.put("incoming/mlp/1/model.ort", &version_id),
    ]});
    let report = h.publisher.handle_payload(payload.clone()).await.unwrap();
    let outcomes: Vec<_> = report.records.iter().map(|r| (r.status, r.code)).collect();
    assert_eq!(
        outcomes,
        [
            (Status::Failed, Some("s3_not_found")),
            (Status::Published, None)
        ]
    );
    let not_found = report.records[0].error.as_deref().unwrap();
    assert!(not_found.contains("404"), "{not_found}");
    assert!(not_found.contains("s3://"), "{not_found}");
    // Failed records write no result: the retry will.
    assert!(h.result("missing", "1").await.is_none());
    h.assert_nothing_published("missing");

    // Through `invoke`, the failure makes the invocation fail (so Lambda
    // retries, then dead-letters), after every record was processed.
    match h.publisher.invoke(payload).await {
        Err(PublisherError::RecordsFailed {
            failed: 1,
            total: 2,
            details,
        }) => assert!(
            details.contains("incoming/missing/1/model.ort"),
            "{details}"
        ),
        other => panic!("{other:?}"),
    }
    assert_eq!(
        h.result("mlp", "1").await.unwrap()["status"],
        "already_published"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_onnx_runtime_cannot_load_is_rejected() {
    let Some(h) = Harness::start().await else {
        return;
    };
    let body = b"not a model at all".to_vec();
    let sha = sha256_hex(&body);
    let version_id = h
        .upload(
            "incoming/broken/1/model.ort",
            &body,
            Upload {
                metadata: &[("sha256", &sha)],
                ..Upload::default()
            },
        )
        .await;
    let report = h
        .handle(vec![h.put("incoming/broken/1/model.ort", &version_id)])
        .await;
    let record = &report.records[0];
    assert_eq!(
        (record.status, record.code),
        (Status::Rejected, Some("model_load_failed")),
        "{record:#?}"
    );
    assert_eq!(record.verified, ["x-amz-meta-sha256"]);
    h.assert_nothing_published("broken");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn encoded_keys_and_multipart_checksums() {
    let Some(h) = Harness::start().await else {
        return;
    };
    // A multipart upload with SHA-256 checksums: S3's checksum covers the
    // parts, not the object, so only x-amz-meta-sha256 is compared.
    let body = model("mlp.ort");
    let sha = sha256_hex(&body);
    let key = "incoming/mlp/2/my model+v2.ort";
    let created = h
        .seed
        .create_multipart_upload()
        .bucket(&h.bucket)
        .key(key)
        .checksum_algorithm(ChecksumAlgorithm::Sha256)
        .checksum_type(ChecksumType::Composite)
        .metadata("sha256", &sha)
        .send()
        .await
        .unwrap();
    let upload_id = created.upload_id().unwrap();
    let part = h
        .seed
        .upload_part()
        .bucket(&h.bucket)
        .key(key)
        .upload_id(upload_id)
        .part_number(1)
        .checksum_algorithm(ChecksumAlgorithm::Sha256)
        .body(ByteStream::from(body.clone()))
        .send()
        .await
        .unwrap();
    let mut completed = CompletedPart::builder().part_number(1);
    if let Some(e_tag) = part.e_tag() {
        completed = completed.e_tag(e_tag);
    }
    if let Some(checksum) = part.checksum_sha256() {
        completed = completed.checksum_sha256(checksum);
    }
    let done = h
        .seed
        .complete_multipart_upload()
        .bucket(&h.bucket)
        .key(key)
        .upload_id(upload_id)
        .multipart_upload(
            CompletedMultipartUpload::builder()
                .parts(completed.build())
                .build(),
        )
        .send()
        .await
        .unwrap();
    let version_id = done.version_id().unwrap();
    // S3 sends the key URL-encoded, a space as '+'.
    let report = h
        .handle(vec![h.record(
            "incoming/mlp/2/my+model%2Bv2.ort",
            Some(version_id),
            "ObjectCreated:CompleteMultipartUpload",
        )])
        .await;
    let record = &report.records[0];
    assert_eq!(record.status, Status::Published, "{record:#?}");
    assert_eq!(record.key, key);
    assert_eq!(record.verified, ["x-amz-meta-sha256"]);
    assert_eq!(h.manifest("mlp", "2").unwrap().file, "model.ort");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unfinished_downloads_are_removed_at_start() {
    let Some(h) = Harness::start().await else {
        return;
    };
    let staging = h.staging.path().join("staging");
    std::fs::write(staging.join(".publish-s3-leftover.ort"), b"partial").unwrap();
    std::fs::write(staging.join("keep.txt"), b"not ours").unwrap();
    let config = h.publisher.config().clone();
    let s3 = S3::from_sdk_config(&sdk_config("http://127.0.0.1:9").await, config.download).unwrap();
    Publisher::new(config, s3, None).unwrap();
    assert!(!staging.join(".publish-s3-leftover.ort").exists());
    assert!(staging.join("keep.txt").exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_binary_publishes_with_credentials_region_and_endpoint_from_the_environment() {
    let Some(h) = Harness::start().await else {
        return;
    };
    let version_id = upload_mlp(&h, "incoming/mlp/7/model.ort").await;
    let object = format!("s3://{}/incoming/mlp/7/model.ort", h.bucket);
    let event_file = h.staging.path().join("event.json");
    let event = json!({ "Records": [h.put("incoming/mlp/7/model.ort", &version_id)] });
    std::fs::write(&event_file, event.to_string()).unwrap();
    let (_, endpoint) = Proxy::start(&moto().unwrap().endpoint).await;
    let run = |args: &[&str]| {
        let mut command = Command::new(env!("CARGO_BIN_EXE_model-router-publisher"));
        command
            .args(args)
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            // The SDK's default chains: environment credentials and region,
            // the service-specific endpoint (addressed path-style).
            .env("AWS_ACCESS_KEY_ID", "testing")
            .env("AWS_SECRET_ACCESS_KEY", "testing")
            .env("AWS_REGION", "us-east-1")
            .env("AWS_ENDPOINT_URL_S3", &endpoint)
            .env("AWS_CONFIG_FILE", "/nonexistent")
            .env("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent")
            .env("AWS_EC2_METADATA_DISABLED", "true")
            .env("MODEL_ROOT", h.root.path())
            .env("MODEL_STAGING_DIR", h.staging.path().join("cli"));
        if let Some(dylib) = std::env::var_os("ORT_DYLIB_PATH") {
            command.env("ORT_DYLIB_PATH", dylib);
        }
        command.output().unwrap()
    };
    let published = run(&["object", &object]);
    let stderr = String::from_utf8_lossy(&published.stderr);
    assert!(published.status.success(), "{stderr}");
    let report: Value = serde_json::from_slice(&published.stdout).unwrap();
    assert_eq!(report["records"][0]["status"], "published", "{report:#}");
    assert_eq!(
        h.manifest("mlp", "7").unwrap().team.as_deref(),
        Some("fraud")
    );

    // The same upload as an event file (a dead-lettered event, redriven by hand).
    let again = run(&["event", event_file.to_str().unwrap()]);
    assert!(again.status.success());
    let report: Value = serde_json::from_slice(&again.stdout).unwrap();
    assert_eq!(report["records"][0]["status"], "already_published");

    // Off Lambda, `lambda` refuses to start and says why.
    let lambda = run(&["lambda"]);
    assert!(!lambda.status.success());
    let stderr = String::from_utf8_lossy(&lambda.stderr);
    assert!(stderr.contains("AWS_LAMBDA_RUNTIME_API"), "{stderr}");

    // An object that is not there: the report says so, the exit status too.
    let missing = run(&[
        "object",
        &format!("s3://{}/incoming/mlp/8/model.ort", h.bucket),
    ]);
    assert_eq!(missing.status.code(), Some(1));
    let report: Value = serde_json::from_slice(&missing.stdout).unwrap();
    assert_eq!(report["records"][0]["code"], "s3_not_found");
}

// ------------------------------------------------- Lambda runtime API

/// A fake Lambda runtime API on 127.0.0.1:0, the part of it a function
/// uses: `GET .../invocation/next` hands out the queued events one by one
/// (then holds the request open, as Lambda does between invocations), and
/// the function's answers to `.../response` and `.../error` are kept.
#[derive(Clone, Default)]
struct RuntimeApi {
    events: Arc<Mutex<std::collections::VecDeque<Value>>>,
    /// (request id, "response" or "error", body) in the order they came.
    answers: Arc<Mutex<Vec<(String, String, Value)>>>,
}

impl RuntimeApi {
    async fn start(events: Vec<Value>) -> (RuntimeApi, String) {
        use axum::extract::{Path as UrlPath, State};
        use axum::routing::{get, post};
        let api = RuntimeApi {
            events: Arc::new(Mutex::new(events.into())),
            ..RuntimeApi::default()
        };
        async fn next(State(api): State<RuntimeApi>) -> axum::response::Response {
            let event = api.events.lock().unwrap().pop_front();
            let Some(event) = event else {
                std::future::pending::<()>().await;
                unreachable!()
            };
            let id = format!("request-{}", api.answers.lock().unwrap().len());
            let deadline = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_millis()
                + 60_000;
            axum::response::Response::builder()
                .header("lambda-runtime-aws-request-id", id)
                .header("lambda-runtime-deadline-ms", deadline.to_string())
                .header(
                    "lambda-runtime-invoked-function-arn",
                    "arn:aws:lambda:us-east-1:111111111111:function:model-router-publisher",
                )
                .header("content-type", "application/json")
                .body(axum::body::Body::from(event.to_string()))
                .unwrap()
        }
        async fn answer(
            State(api): State<RuntimeApi>,
            UrlPath((id, kind)): UrlPath<(String, String)>,
            body: axum::body::Bytes,
        ) -> axum::http::StatusCode {
            let body = serde_json::from_slice(&body).unwrap_or(Value::Null);
            api.answers.lock().unwrap().push((id, kind, body));
            axum::http::StatusCode::ACCEPTED
        }
        let router = axum::Router::new()
            .route("/2018-06-01/runtime/invocation/next", get(next))
            .route("/2018-06-01/runtime/invocation/{id}/{kind}", post(answer))
            .with_state(api.clone());
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap().to_string();
        tokio::spawn(async move { axum::serve(listener, router).await.unwrap() });
        (api, address)
    }

    /// Waits (at most a minute) for `count` answers.
    async fn answers(&self, count: usize) -> Vec<(String, String, Value)> {
        for _ in 0..600 {
            let answers = self.answers.lock().unwrap().clone();
            if answers.len() >= count {
                return answers;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("the function answered {:?}", self.answers.lock().unwrap());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_binary_runs_as_a_lambda_function_and_fails_invocations_with_failed_records() {
    let Some(h) = Harness::start().await else {
        return;
    };
    let version_id = upload_mlp(&h, "incoming/mlp/1/model.ort").await;
    let (api, address) = RuntimeApi::start(vec![
        json!({ "Records": [h.put("incoming/mlp/1/model.ort", &version_id)] }),
        json!({ "Records": [h.record("incoming/gone/1/model.ort", None, "ObjectCreated:Put")] }),
    ])
    .await;
    let (_, endpoint) = Proxy::start(&moto().unwrap().endpoint).await;
    // As the Lambda service starts the image: no command (the image's CMD
    // would be `lambda`; with none the binary runs the loop all the same).
    let mut function = Command::new(env!("CARGO_BIN_EXE_model-router-publisher"));
    function
        .env_clear()
        .env("AWS_LAMBDA_RUNTIME_API", &address)
        .env("AWS_LAMBDA_FUNCTION_NAME", "model-router-publisher")
        .env("AWS_LAMBDA_FUNCTION_VERSION", "$LATEST")
        .env("AWS_LAMBDA_FUNCTION_MEMORY_SIZE", "1024")
        .env("AWS_ACCESS_KEY_ID", "testing")
        .env("AWS_SECRET_ACCESS_KEY", "testing")
        .env("AWS_SESSION_TOKEN", "function-role-session")
        .env("AWS_REGION", "us-east-1")
        .env("AWS_ENDPOINT_URL_S3", &endpoint)
        .env("AWS_CONFIG_FILE", "/nonexistent")
        .env("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent")
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .env("MODEL_ROOT", h.root.path())
        .env("MODEL_STAGING_DIR", h.staging.path().join("lambda"))
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    if let Some(dylib) = std::env::var_os("ORT_DYLIB_PATH") {
        function.env("ORT_DYLIB_PATH", dylib);
    }
    let mut child = function.spawn().unwrap();
    let answers = api.answers(2).await;
    child.kill().unwrap();
    let output = child.wait_with_output().unwrap();
    let logs = String::from_utf8_lossy(&output.stderr);

    let (id, kind, body) = &answers[0];
    assert_eq!(
        (id.as_str(), kind.as_str()),
        ("request-0", "response"),
        "{logs}"
    );
    assert_eq!(body["records"][0]["status"], "published", "{body:#}");
    assert_eq!(
        h.manifest("mlp", "1").unwrap().team.as_deref(),
        Some("fraud")
    );
    // A failed record fails the invocation, so that Lambda retries it.
    let (id, kind, body) = &answers[1];
    assert_eq!(
        (id.as_str(), kind.as_str()),
        ("request-1", "error"),
        "{logs}"
    );
    assert_eq!(body["errorType"], "PublishFailed", "{body:#}");
    let message = body["errorMessage"].as_str().unwrap();
    assert!(message.contains("incoming/gone/1/model.ort"), "{message}");
    // On Lambda the logs are JSON lines, one per record among them.
    assert!(
        logs.lines()
            .any(|l| l.starts_with('{') && l.contains("publish-s3 record")),
        "{logs}"
    );
}
