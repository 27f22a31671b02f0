//! The `publish-s3` publisher against a fake S3 on 127.0.0.1:0: events from
//! tests/data/events/s3_put.json (and variants of it) go straight into the
//! publisher's handler; the fake serves objects with metadata and checksums,
//! stores result objects, and checks every request's SigV4 signature.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use aws_lambda_events::event::s3::S3Event;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::response::Response;
use base64::Engine as _;
use model_router::engine::{Engine, EngineConfig, find_library};
use model_router::publisher::s3::{Endpoint, S3Client};
use model_router::publisher::sigv4::{self, Credentials, parse_authorization};
use model_router::publisher::{EventReport, Publisher, PublisherConfig, PublisherError, Status};
use model_router::repository::{Manifest, hash_file};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

const BUCKET: &str = "model-router-incoming-111111111111-us-east-1";
const VERSION_ID: &str = "3HL4kqtJlcpXroDTDmJ.rmSpXd3dIbrHY";
const ACCESS_KEY: &str = "ASIATESTPUBLISHER";
const SECRET: &str = "publisher/secret+key";
const TOKEN: &str = "IQoJb3JpZ2luX2VjEXAMPLE//session+token==";

fn fixture(file: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data")
        .join(file)
}

fn mlp() -> Vec<u8> {
    std::fs::read(fixture("models/mlp.ort")).unwrap()
}

fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

fn sha256_base64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(Sha256::digest(bytes))
}

// ------------------------------------------------------------------ fake S3

/// An object the fake serves.
#[derive(Clone, Default)]
struct Object {
    body: Vec<u8>,
    version_id: Option<String>,
    /// `x-amz-meta-*` and `x-amz-checksum-*` headers, sent as given.
    metadata: Vec<(String, String)>,
    checksum_sha256: Option<String>,
    checksum_type: Option<String>,
    /// Answer this status (with S3's XML error) instead of the object.
    status: Option<(u16, &'static str)>,
}

/// What the fake saw of one request.
#[derive(Debug, Clone)]
struct Seen {
    method: String,
    /// Decoded object path, `/bucket/key`.
    path: String,
    query: Vec<(String, String)>,
    checksum_mode: Option<String>,
}

#[derive(Default)]
struct FakeState {
    objects: HashMap<String, Object>,
    puts: HashMap<String, Vec<u8>>,
    seen: Vec<Seen>,
    /// Every signature problem, with the request it was found in.
    signature_errors: Vec<String>,
    deny_puts: bool,
}

#[derive(Clone, Default)]
struct FakeS3(Arc<Mutex<FakeState>>);

impl FakeS3 {
    fn put_object(&self, key: &str, object: Object) {
        let mut state = self.0.lock().unwrap();
        state.objects.insert(format!("/{BUCKET}/{key}"), object);
    }

    fn result(&self, name: &str, version: &str) -> Option<Value> {
        let state = self.0.lock().unwrap();
        let body = state
            .puts
            .get(&format!("/{BUCKET}/results/{name}/{version}.json"))?;
        Some(serde_json::from_slice(body).unwrap())
    }

    fn seen(&self) -> Vec<Seen> {
        self.0.lock().unwrap().seen.clone()
    }

    fn assert_signatures_valid(&self) {
        let state = self.0.lock().unwrap();
        assert!(
            state.signature_errors.is_empty(),
            "bad signatures: {:#?}",
            state.signature_errors
        );
    }
}

fn s3_error(status: u16, code: &str, message: &str) -> Response {
    let body = format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Error><Code>{code}</Code><Message>{message}</Message><RequestId>TEST</RequestId></Error>"
    );
    Response::builder()
        .status(status)
        .header("content-type", "application/xml")
        .body(Body::from(body))
        .unwrap()
}

/// Checks a request's SigV4 signature as S3 would: credential scope, the
/// headers S3 requires to be present and signed, the payload hash, and the
/// signature itself, recomputed from what actually arrived.
fn check_signature(
    method: &str,
    raw_path: &str,
    query: &[(String, String)],
    headers: &http::HeaderMap,
    body: &[u8],
) -> Result<(), String> {
    let header = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
            .ok_or_else(|| format!("no {name} header"))
    };
    let authorization = parse_authorization(&header("authorization")?)
        .ok_or("Authorization is not AWS4-HMAC-SHA256")?;
    let amz_date = header("x-amz-date")?;
    if authorization.access_key_id != ACCESS_KEY {
        return Err(format!("access key {}", authorization.access_key_id));
    }
    if (
        authorization.date.as_str(),
        authorization.region.as_str(),
        authorization.service.as_str(),
    ) != (&amz_date[..8], "us-east-1", "s3")
    {
        return Err(format!("credential scope {authorization:?}"));
    }
    let content_sha256 = header("x-amz-content-sha256")?;
    if content_sha256 != sha256_hex(body) {
        return Err(format!(
            "x-amz-content-sha256 {content_sha256} for a {}-byte body",
            body.len()
        ));
    }
    if header("x-amz-security-token")? != TOKEN {
        return Err("x-amz-security-token is not the session token".into());
    }
    for required in [
        "host",
        "x-amz-content-sha256",
        "x-amz-date",
        "x-amz-security-token",
    ] {
        if !authorization.signed_headers.iter().any(|h| h == required) {
            return Err(format!("{required} is not signed"));
        }
    }
    // Recompute from the received request: the signer adds x-amz-date and the token itself.
    let signed: Vec<(String, String)> = authorization
        .signed_headers
        .iter()
        .filter(|name| !["x-amz-date", "x-amz-security-token"].contains(&name.as_str()))
        .map(|name| Ok((name.clone(), header(name)?)))
        .collect::<Result<_, String>>()?;
    let signed_refs: Vec<(&str, &str)> = signed
        .iter()
        .map(|(n, v)| (n.as_str(), v.as_str()))
        .collect();
    let query_refs: Vec<(&str, &str)> = query
        .iter()
        .map(|(n, v)| (n.as_str(), v.as_str()))
        .collect();
    let at = chrono::NaiveDateTime::parse_from_str(&amz_date, "%Y%m%dT%H%M%SZ")
        .map_err(|e| format!("x-amz-date {amz_date}: {e}"))?
        .and_utc();
    let expected = sigv4::sign(
        &sigv4::Request {
            method,
            path: raw_path,
            query: &query_refs,
            headers: &signed_refs,
            payload_sha256: &content_sha256,
        },
        &Credentials {
            access_key_id: ACCESS_KEY.into(),
            secret_access_key: SECRET.into(),
            session_token: Some(TOKEN.into()),
        },
        "us-east-1",
        "s3",
        at,
    );
    let expected = parse_authorization(&expected.authorization).unwrap();
    if expected.signature != authorization.signature {
        return Err("SignatureDoesNotMatch".into());
    }
    Ok(())
}

fn decode(text: &str) -> String {
    percent_encoding::percent_decode_str(text)
        .decode_utf8()
        .unwrap()
        .into_owned()
}

async fn serve(State(fake): State<FakeS3>, request: Request) -> Response {
    let (parts, body) = request.into_parts();
    let body = axum::body::to_bytes(body, 1 << 26)
        .await
        .unwrap_or_default();
    let raw_path = parts.uri.path().to_string();
    let path = decode(&raw_path);
    let query: Vec<(String, String)> = parts
        .uri
        .query()
        .unwrap_or_default()
        .split('&')
        .filter(|pair| !pair.is_empty())
        .map(|pair| {
            let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
            (decode(name), decode(value))
        })
        .collect();
    let mut state = fake.0.lock().unwrap();
    state.seen.push(Seen {
        method: parts.method.to_string(),
        path: path.clone(),
        query: query.clone(),
        checksum_mode: parts
            .headers
            .get("x-amz-checksum-mode")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string),
    });
    if let Err(problem) = check_signature(
        parts.method.as_str(),
        &raw_path,
        &query,
        &parts.headers,
        &body,
    ) {
        state
            .signature_errors
            .push(format!("{} {raw_path}: {problem}", parts.method));
        return s3_error(403, "SignatureDoesNotMatch", &problem);
    }
    match parts.method.as_str() {
        "PUT" if state.deny_puts => s3_error(403, "AccessDenied", "Access Denied"),
        "PUT" => {
            state.puts.insert(path, body.to_vec());
            Response::new(Body::empty())
        }
        "GET" => {
            let Some(object) = state.objects.get(&path).cloned() else {
                return s3_error(404, "NoSuchKey", "The specified key does not exist.");
            };
            if let Some((status, code)) = object.status {
                return s3_error(status, code, "refused by the fake");
            }
            let wanted = query.iter().find(|(n, _)| n == "versionId").map(|(_, v)| v);
            if wanted.is_some() && wanted != object.version_id.as_ref() {
                return s3_error(
                    404,
                    "NoSuchVersion",
                    "The specified version does not exist.",
                );
            }
            let mut response =
                Response::builder().header("content-type", "application/octet-stream");
            if let Some(version) = &object.version_id {
                response = response.header("x-amz-version-id", version);
            }
            for (name, value) in &object.metadata {
                response = response.header(format!("x-amz-meta-{name}"), value);
            }
            // Like S3: the stored checksum only when the GET asks for it.
            let mode = parts.headers.get("x-amz-checksum-mode");
            if mode.is_some_and(|m| m == "ENABLED") {
                if let Some(checksum) = &object.checksum_sha256 {
                    response = response.header("x-amz-checksum-sha256", checksum);
                }
                if let Some(kind) = &object.checksum_type {
                    response = response.header("x-amz-checksum-type", kind);
                }
            }
            response.body(Body::from(object.body)).unwrap()
        }
        _ => s3_error(405, "MethodNotAllowed", "not in the fake"),
    }
}

/// The fake S3, a repository, and a publisher wired to both.
struct Harness {
    fake: FakeS3,
    publisher: Publisher,
    root: tempfile::TempDir,
    staging: tempfile::TempDir,
}

impl Harness {
    async fn start() -> Harness {
        let fake = FakeS3::default();
        let router = axum::Router::new().fallback(serve).with_state(fake.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, router).await.unwrap() });

        let s3 = S3Client::new(
            Endpoint::parse(&format!("http://{addr}")).unwrap(),
            Credentials {
                access_key_id: ACCESS_KEY.into(),
                secret_access_key: SECRET.into(),
                session_token: Some(TOKEN.into()),
            },
            "us-east-1".into(),
        );
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
        };
        let publisher = Publisher::new(config, s3, Some(engine)).unwrap();
        Harness {
            fake,
            publisher,
            root,
            staging,
        }
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

    async fn handle(&self, event: Value) -> EventReport {
        let event: S3Event = serde_json::from_value(event).unwrap();
        self.publisher.handle(event).await
    }
}

/// The committed fixture event.
fn put_event() -> Value {
    let text = std::fs::read_to_string(fixture("events/s3_put.json")).unwrap();
    serde_json::from_str(&text).unwrap()
}

/// A record of the fixture with another key (as S3 sends it: URL-encoded),
/// version id and event name.
fn record(key: &str, version_id: Option<&str>, event_name: &str) -> Value {
    let mut record = put_event()["Records"][0].clone();
    record["s3"]["object"]["key"] = json!(key);
    record["s3"]["object"]["versionId"] = json!(version_id);
    record["eventName"] = json!(event_name);
    record
}

fn event(records: Vec<Value>) -> Value {
    json!({ "Records": records })
}

/// An event with one `ObjectCreated:Put` record per key (unversioned).
fn uploads(keys: &[&str]) -> Value {
    event(
        keys.iter()
            .map(|key| record(key, None, "ObjectCreated:Put"))
            .collect(),
    )
}

/// mlp.ort uploaded as the fixture describes, with both checksums and metadata.
fn mlp_object() -> Object {
    let body = mlp();
    Object {
        metadata: vec![
            ("team".into(), "fraud".into()),
            // "modèle v1", RFC 2047-encoded as S3 returns non-ASCII metadata.
            ("description".into(), "=?UTF-8?B?bW9kw6hsZSB2MQ==?=".into()),
            ("sha256".into(), sha256_hex(&body).to_uppercase()),
        ],
        checksum_sha256: Some(sha256_base64(&body)),
        checksum_type: Some("FULL_OBJECT".into()),
        version_id: Some(VERSION_ID.into()),
        body,
        status: None,
    }
}

// -------------------------------------------------------------------- tests

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_verified_upload_is_published_with_its_manifest_and_result() {
    let h = Harness::start().await;
    h.fake.put_object("incoming/mlp/1/model.ort", mlp_object());

    let answer = h.publisher.invoke(put_event()).await.unwrap();
    let report = &answer["records"][0];
    assert_eq!(report["status"], "published", "{answer:#}");
    assert_eq!(report["model"], "mlp");
    assert_eq!(report["version"], "1");
    assert_eq!(
        report["verified"],
        json!(["x-amz-checksum-sha256", "x-amz-meta-sha256"])
    );
    assert_eq!(report["result_key"], "results/mlp/1.json");

    let bytes = mlp();
    let manifest = h.manifest("mlp", "1").expect("manifest.json written");
    assert_eq!(manifest.file, "model.ort");
    assert_eq!(manifest.sha256, sha256_hex(&bytes));
    assert_eq!(manifest.size, bytes.len() as u64);
    assert_eq!(manifest.team.as_deref(), Some("fraud"));
    assert_eq!(manifest.description.as_deref(), Some("modèle v1"));
    let published = h.root.path().join("mlp/1/model.ort");
    assert_eq!(std::fs::read(&published).unwrap(), bytes);
    assert_eq!(hash_file(&published).unwrap().0, manifest.sha256);
    h.assert_no_downloads_left();

    // The uploader's result object.
    let result = h.fake.result("mlp", "1").expect("result object written");
    assert_eq!(result["status"], "published");
    assert_eq!(result["sha256"], manifest.sha256);
    assert_eq!(result["size"], bytes.len());
    assert_eq!(
        result["source"],
        format!("s3://{BUCKET}/incoming/mlp/1/model.ort?versionId={VERSION_ID}")
    );
    let at = result["at"].as_str().unwrap();
    assert!(
        at.starts_with("20") && at.ends_with('Z') && at.len() == 20,
        "{at}"
    );

    // The GET named the event's object version and asked for its checksum.
    let seen = h.fake.seen();
    let get = seen.iter().find(|s| s.method == "GET").unwrap();
    assert_eq!(get.path, format!("/{BUCKET}/incoming/mlp/1/model.ort"));
    assert_eq!(
        get.query,
        [("versionId".to_string(), VERSION_ID.to_string())]
    );
    assert_eq!(get.checksum_mode.as_deref(), Some("ENABLED"));
    assert_eq!(seen.len(), 2, "one GET, one PUT: {seen:?}");
    h.fake.assert_signatures_valid();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_checksum_mismatch_publishes_nothing_and_names_both_hashes() {
    let h = Harness::start().await;
    let bytes = mlp();
    let other = sha256_hex(b"some other file");

    // The uploader's claim is wrong.
    let mut claimed = mlp_object();
    claimed.metadata.retain(|(n, _)| n != "sha256");
    claimed.metadata.push(("sha256".into(), other.clone()));
    h.fake.put_object("incoming/mlp/1/model.ort", claimed);
    // S3's stored checksum disagrees with the bytes served.
    let mut stored = mlp_object();
    stored.checksum_sha256 = Some(sha256_base64(b"some other file"));
    stored.version_id = None;
    h.fake.put_object("incoming/mlp/2/model.ort", stored);

    let answer = h
        .publisher
        .invoke(event(vec![
            record(
                "incoming/mlp/1/model.ort",
                Some(VERSION_ID),
                "ObjectCreated:Put",
            ),
            record("incoming/mlp/2/model.ort", None, "ObjectCreated:Put"),
        ]))
        .await
        // Rejections are final: the invocation succeeds, so Lambda does not retry.
        .unwrap();
    for (report, claimed_by) in answer["records"]
        .as_array()
        .unwrap()
        .iter()
        .zip(["x-amz-meta-sha256", "x-amz-checksum-sha256"])
    {
        assert_eq!(report["status"], "rejected", "{report:#}");
        assert_eq!(report["code"], "checksum_mismatch");
        let error = report["error"].as_str().unwrap();
        assert!(error.contains(&other), "{error}");
        assert!(error.contains(&sha256_hex(&bytes)), "{error}");
        assert!(error.contains(claimed_by), "{error}");
    }
    h.assert_nothing_published("mlp");
    assert_eq!(h.fake.result("mlp", "1").unwrap()["status"], "rejected");
    assert_eq!(
        h.fake.result("mlp", "2").unwrap()["code"],
        "checksum_mismatch"
    );
    h.fake.assert_signatures_valid();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_names_are_refused_before_anything_is_downloaded() {
    let h = Harness::start().await;
    let report = h
        .handle(uploads(&[
            "incoming/../x/1/model.ort",
            "incoming/a/b/c/model.ort",
            "incoming/%2E%2E/1/model.ort",
            "incoming/m/1.0%2F..%2F2/model.ort",
        ]))
        .await;
    let codes: Vec<_> = report.records.iter().map(|r| (r.status, r.code)).collect();
    assert_eq!(
        codes,
        [
            (Status::Rejected, Some("invalid_name")),
            (Status::Rejected, Some("invalid_key")),
            (Status::Rejected, Some("invalid_name")),
            (Status::Rejected, Some("invalid_key")),
        ]
    );
    assert!(
        report.records[0]
            .error
            .as_deref()
            .unwrap()
            .contains("\"..\"")
    );
    assert!(
        report.records[1]
            .error
            .as_deref()
            .unwrap()
            .contains("<name>/<version>/<file>")
    );
    assert_eq!(report.failed(), 0);
    assert!(h.fake.seen().is_empty(), "nothing is fetched or written");
    let entries = std::fs::read_dir(h.root.path()).unwrap().count();
    assert_eq!(entries, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_outside_the_prefix_and_other_events_are_ignored() {
    let h = Harness::start().await;
    h.fake.put_object("other/mlp/1/model.ort", mlp_object());
    let report = h
        .handle(event(vec![
            record("other/mlp/1/model.ort", None, "ObjectCreated:Put"),
            record("results/mlp/1.json", None, "ObjectCreated:Put"),
            record("incoming/mlp/1/README.md", None, "ObjectCreated:Put"),
            record("incoming/mlp/1/", None, "ObjectCreated:Put"),
            record("incoming/mlp/1/model.ort", None, "ObjectRemoved:Delete"),
        ]))
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
    assert!(h.fake.seen().is_empty());
    h.assert_nothing_published("mlp");

    // S3 sends a test event when the notification is configured.
    let test_event = json!({"Service": "Amazon S3", "Event": "s3:TestEvent",
        "Time": "2026-11-28T16:29:49.000Z", "Bucket": BUCKET,
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
    let h = Harness::start().await;
    h.fake.put_object("incoming/mlp/1/model.ort", mlp_object());
    let first = h.handle(put_event()).await;
    assert_eq!(first.records[0].status, Status::Published);
    let manifest = h.manifest("mlp", "1").unwrap();

    // S3 delivers at least once: the same event again.
    let again = h.publisher.invoke(put_event()).await.unwrap();
    assert_eq!(
        again["records"][0]["status"], "already_published",
        "{again:#}"
    );
    assert_eq!(again["records"][0]["sha256"], manifest.sha256);
    assert_eq!(
        h.fake.result("mlp", "1").unwrap()["status"],
        "already_published"
    );

    // Different bytes for the same version, as .onnx this time.
    let onnx = std::fs::read(fixture("models/iris_logreg.onnx")).unwrap();
    h.fake.put_object(
        "incoming/mlp/1/model.onnx",
        Object {
            body: onnx.clone(),
            ..Object::default()
        },
    );
    let conflict = h.handle(uploads(&["incoming/mlp/1/model.onnx"])).await;
    let report = &conflict.records[0];
    assert_eq!(
        (report.status, report.code),
        (Status::Rejected, Some("version_exists"))
    );
    let error = report.error.as_deref().unwrap();
    assert!(
        error.contains(&manifest.sha256) && error.contains(&sha256_hex(&onnx)),
        "{error}"
    );
    assert_eq!(conflict.failed(), 0);
    // The published version is untouched.
    assert_eq!(h.manifest("mlp", "1").unwrap(), manifest);
    assert_eq!(
        std::fs::read(h.root.path().join("mlp/1/model.ort")).unwrap(),
        mlp()
    );
    assert!(!h.root.path().join("mlp/1/model.onnx").exists());
    h.assert_no_downloads_left();
    h.fake.assert_signatures_valid();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s3_errors_are_reported_per_record_and_the_others_still_publish() {
    let h = Harness::start().await;
    h.fake.put_object(
        "incoming/denied/1/model.ort",
        Object {
            status: Some((403, "AccessDenied")),
            ..Object::default()
        },
    );
    h.fake.put_object("incoming/mlp/1/model.ort", mlp_object());
    let payload = event(vec![
        record("incoming/missing/1/model.ort", None, "ObjectCreated:Put"),
        record("incoming/denied/1/model.ort", None, "ObjectCreated:Copy"),
        put_event()["Records"][0].clone(),
    ]);

    let report = h.handle(payload.clone()).await;
    let outcomes: Vec<_> = report.records.iter().map(|r| (r.status, r.code)).collect();
    assert_eq!(
        outcomes,
        [
            (Status::Failed, Some("s3_not_found")),
            (Status::Failed, Some("s3_access_denied")),
            (Status::Published, None),
        ]
    );
    let not_found = report.records[0].error.as_deref().unwrap();
    assert!(not_found.contains("404 NoSuchKey"), "{not_found}");
    assert!(not_found.contains("s3://"), "{not_found}");
    assert!(
        report.records[1]
            .error
            .as_deref()
            .unwrap()
            .contains("403 AccessDenied")
    );
    // Failed records write no result: the retry will.
    assert!(h.fake.result("missing", "1").is_none());
    h.assert_nothing_published("missing");
    h.assert_nothing_published("denied");
    assert!(h.manifest("mlp", "1").is_some());

    // Through `invoke`, the failures make the invocation fail (so Lambda
    // retries, then dead-letters), after every record was processed: the
    // good record, delivered again, is now already published.
    match h.publisher.invoke(payload).await {
        Err(PublisherError::RecordsFailed {
            failed: 2,
            total: 3,
            details,
        }) => {
            assert!(
                details.contains("incoming/missing/1/model.ort"),
                "{details}"
            );
            assert!(details.contains("incoming/denied/1/model.ort"), "{details}");
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(
        h.fake.result("mlp", "1").unwrap()["status"],
        "already_published"
    );
    h.fake.assert_signatures_valid();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_onnx_runtime_cannot_load_is_rejected() {
    let h = Harness::start().await;
    let body = b"not a model at all".to_vec();
    h.fake.put_object(
        "incoming/broken/1/model.ort",
        Object {
            metadata: vec![("sha256".into(), sha256_hex(&body))],
            body,
            ..Object::default()
        },
    );
    let report = h.handle(uploads(&["incoming/broken/1/model.ort"])).await;
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
async fn encoded_keys_and_composite_checksums() {
    let h = Harness::start().await;
    // A multipart upload: S3's checksum covers the parts, not the object.
    let mut object = mlp_object();
    object.checksum_sha256 = Some("Zm9v-3".into());
    object.checksum_type = Some("COMPOSITE".into());
    object.version_id = None;
    h.fake.put_object("incoming/mlp/2/my model+v2.ort", object);
    // S3 sends the key URL-encoded, a space as '+'.
    let report = h
        .handle(event(vec![record(
            "incoming/mlp/2/my+model%2Bv2.ort",
            None,
            "ObjectCreated:CompleteMultipartUpload",
        )]))
        .await;
    let record = &report.records[0];
    assert_eq!(record.status, Status::Published, "{record:#?}");
    assert_eq!(record.key, "incoming/mlp/2/my model+v2.ort");
    assert_eq!(record.verified, ["x-amz-meta-sha256"]);
    assert_eq!(h.manifest("mlp", "2").unwrap().file, "model.ort");
    h.fake.assert_signatures_valid();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_result_that_cannot_be_written_fails_the_invocation() {
    let h = Harness::start().await;
    h.fake.put_object("incoming/mlp/1/model.ort", mlp_object());
    h.fake.0.lock().unwrap().deny_puts = true;
    match h.publisher.invoke(put_event()).await {
        Err(PublisherError::RecordsFailed {
            failed: 1, details, ..
        }) => {
            assert!(details.contains("403 AccessDenied"), "{details}");
        }
        other => panic!("{other:?}"),
    }
    // Published all the same; the retry reports already_published and writes the result.
    assert!(h.manifest("mlp", "1").is_some());
    h.fake.0.lock().unwrap().deny_puts = false;
    let again = h.publisher.invoke(put_event()).await.unwrap();
    assert_eq!(again["records"][0]["status"], "already_published");
    assert!(h.fake.result("mlp", "1").is_some());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unfinished_downloads_are_removed_at_start() {
    let h = Harness::start().await;
    let staging = h.staging.path().join("staging");
    std::fs::write(staging.join(".publish-s3-leftover.ort"), b"partial").unwrap();
    std::fs::write(staging.join("keep.txt"), b"not ours").unwrap();
    let config = h.publisher.config().clone();
    let s3 = S3Client::new(
        Endpoint::parse("http://127.0.0.1:9").unwrap(),
        Credentials {
            access_key_id: ACCESS_KEY.into(),
            secret_access_key: SECRET.into(),
            session_token: None,
        },
        "us-east-1".into(),
    );
    Publisher::new(config, s3, None).unwrap();
    assert!(!staging.join(".publish-s3-leftover.ort").exists());
    assert!(staging.join("keep.txt").exists());
}
