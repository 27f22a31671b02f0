//! The Lambda front door: every event source's fixture (tests/data/events,
//! provenance in its README) through the real handler, answered in its own
//! response shape; admin events only from non-HTTP events; the EMF lines.
//!
//! Each test holds `SERIAL`: a model's charge in the cache is measured from the
//! process's memory growth while it loads, so loads in tests running alongside
//! would blur the budget test (as tests/cache_budget.rs explains).

mod common;

use std::path::Path;

use common::{assert_close, expected, repository};
use lambda_http::request::LambdaRequest;
use model_router::lambda::Handler;
use model_router::metrics::{Capture, Metrics};
use model_router::{Config, ModelService};
use serde_json::{Value, json};

static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn event_text(name: &str) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data/events")
        .join(name);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn event(name: &str) -> Value {
    serde_json::from_str(&event_text(name)).unwrap()
}

/// A service over a temporary repository, and what keeps it alive.
struct Function {
    handler: Handler,
    capture: Capture,
    root: tempfile::TempDir,
    _staging: tempfile::TempDir,
}

impl Function {
    fn new(models: &[(&str, &str, &str)], cache_bytes: u64) -> Function {
        Function::with(models, cache_bytes, |_| {})
    }

    fn with(
        models: &[(&str, &str, &str)],
        cache_bytes: u64,
        configure: impl FnOnce(&mut Config),
    ) -> Function {
        let root = repository(models);
        let staging = tempfile::tempdir().unwrap();
        let mut config = Config::for_repository(
            root.path().to_path_buf(),
            staging.path().to_path_buf(),
            cache_bytes,
        );
        config.metrics_namespace = "ModelRouterTest".into();
        config.function_name = Some("router-test".into());
        configure(&mut config);
        let capture = Capture::default();
        let metrics = Metrics::with_sink(&config, capture.clone());
        let service = ModelService::new(config)
            .expect("service starts (is the ONNX Runtime library set up? scripts/setup-ort.sh)");
        Function {
            handler: Handler::new(service, metrics),
            capture,
            root,
            _staging: staging,
        }
    }

    async fn invoke(&self, event: &Value) -> Value {
        self.handler.invoke(&event.to_string()).await.unwrap()
    }

    async fn admin(&self, event: Value) -> Value {
        self.invoke(&event).await
    }

    async fn status(&self) -> Value {
        self.admin(json!({"action": "status"})).await
    }

    /// The cached models, as `status` lists them.
    async fn cached(&self) -> Vec<String> {
        let status = self.status().await;
        status["entries"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["model"].as_str().unwrap().to_string())
            .collect()
    }

    /// Every EMF line so far, parsed.
    fn emf(&self) -> Vec<Value> {
        self.capture
            .lines()
            .iter()
            .map(|line| serde_json::from_str(line).unwrap())
            .collect()
    }
}

/// Flips one byte of a published model file behind its manifest's back.
fn corrupt(root: &Path, name: &str, version: &str) {
    let dir = root.join(name).join(version);
    let manifest: Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("manifest.json")).unwrap()).unwrap();
    let path = dir.join(manifest["file"].as_str().unwrap());
    let mut bytes = std::fs::read(&path).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0xff;
    std::fs::write(&path, bytes).unwrap();
}

/// The response's JSON body.
fn body(response: &Value) -> Value {
    assert_eq!(response["isBase64Encoded"], false, "{response}");
    serde_json::from_str(response["body"].as_str().unwrap()).unwrap()
}

/// The answer to `{"features": [0.5, -1.25, 2.0, 0.75]}` on mlp version 1.
fn assert_mlp_prediction(answer: &Value) {
    assert_eq!(answer["model"], "mlp", "{answer}");
    assert_eq!(answer["model_version"], "1");
    let case = &expected("mlp")["cases"][0];
    for output in ["scores", "label"] {
        assert_close(
            &answer["outputs"][output],
            &case["outputs"][output]["data"],
            1e-5,
            output,
        );
    }
}

const MLP: [(&str, &str, &str); 2] = [("mlp", "1", "mlp.onnx"), ("mlp", "2", "mlp.ort")];

#[test]
fn each_fixture_parses_as_the_event_source_it_claims() {
    let parsed = |text: &str| serde_json::from_str::<LambdaRequest>(text).unwrap();
    assert!(matches!(
        parsed(&event_text("apigw_v1_predict.json")),
        LambdaRequest::ApiGatewayV1(_)
    ));
    for name in [
        "apigw_v2_predict.json",
        "function_url_predict.json",
        "function_url_bad_request.json",
    ] {
        assert!(
            matches!(parsed(&event_text(name)), LambdaRequest::ApiGatewayV2(_)),
            "{name}"
        );
    }
    assert!(matches!(
        parsed(&event_text("alb_predict.json")),
        LambdaRequest::Alb(_)
    ));
    // Admin events and EventBridge events are none of the HTTP shapes: they
    // reach the handler as pass-through events, and only those reach admin.
    let eventbridge_default = json!({
        "version": "0", "id": "53dc4d37-cffa-4f76-80c9-8b7d4a4d2eaa",
        "detail-type": "Scheduled Event", "source": "aws.events",
        "account": "123456789012", "time": "2015-10-08T16:53:06Z", "region": "us-east-1",
        "resources": ["arn:aws:events:us-east-1:123456789012:rule/my-scheduled-rule"],
        "detail": {}
    });
    for text in [
        event_text("admin_warm.json"),
        event_text("admin_status.json"),
        event_text("admin_evict.json"),
        event_text("eventbridge_warm.json"),
        eventbridge_default.to_string(),
        json!({"action": "warm", "models": []}).to_string(),
    ] {
        assert!(
            matches!(parsed(&text), LambdaRequest::PassThrough(_)),
            "{text}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rest_api_v1_answers_in_the_v1_shape_with_the_stage_removed() {
    let _serial = SERIAL.lock().await;
    let function = Function::new(&MLP, 1 << 30);
    // The fixture's stage is `prod`: lambda_http makes the path
    // /prod/models/mlp/1/predict, the router must see /models/mlp/1/predict.
    let response = function.invoke(&event("apigw_v1_predict.json")).await;
    assert_eq!(response["statusCode"], 200, "{response}");
    assert_eq!(
        response["multiValueHeaders"]["content-type"],
        json!(["application/json"])
    );
    // API Gateway merges `headers` into `multiValueHeaders`: one of them only.
    assert_eq!(response["headers"], json!({}));
    assert_mlp_prediction(&body(&response));

    // A query string survives the path rewrite, and a path that really starts
    // with the stage's name is not shortened.
    let mut with_query = event("apigw_v1_predict.json");
    with_query["queryStringParameters"] = json!({"trace": "1"});
    with_query["multiValueQueryStringParameters"] = json!({"trace": ["1"]});
    assert_eq!(function.invoke(&with_query).await["statusCode"], 200);
    let mut staged_path = event("apigw_v1_predict.json");
    staged_path["path"] = json!("/prod/models/mlp/1/predict");
    let response = function.invoke(&staged_path).await;
    assert_eq!(response["statusCode"], 404, "{response}");
    assert_eq!(body(&response)["code"], "route_not_found");

    // A wrong input is a 400 in the same shape.
    let mut wrong = event("apigw_v1_predict.json");
    wrong["body"] = json!(r#"{"features": [1.0, 2.0, 3.0]}"#);
    let response = function.invoke(&wrong).await;
    assert_eq!(response["statusCode"], 400, "{response}");
    assert_eq!(body(&response)["code"], "invalid_input");
    assert!(response.get("cookies").is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_api_v2_and_function_urls_answer_in_the_v2_shape() {
    let _serial = SERIAL.lock().await;
    let function = Function::new(&MLP, 1 << 30);
    for name in ["apigw_v2_predict.json", "function_url_predict.json"] {
        let response = function.invoke(&event(name)).await;
        assert_eq!(response["statusCode"], 200, "{name}: {response}");
        assert_eq!(response["headers"]["content-type"], "application/json");
        assert_eq!(response["cookies"], json!([]), "{name}");
        assert!(
            response
                .get("multiValueHeaders")
                .is_none_or(|m| m == &json!({})),
            "{name}: v2 has no multi-value headers: {response}"
        );
        assert!(response.get("statusDescription").is_none());
        assert_mlp_prediction(&body(&response));
    }

    // An HTTP API stage other than $default is part of rawPath.
    let mut staged = event("apigw_v2_predict.json");
    staged["rawPath"] = json!("/prod/models/mlp/1/predict");
    staged["requestContext"]["stage"] = json!("prod");
    staged["requestContext"]["http"]["path"] = json!("/prod/models/mlp/1/predict");
    let response = function.invoke(&staged).await;
    assert_eq!(response["statusCode"], 200, "{response}");

    // `latest` through a Function URL names the concrete version.
    let mut latest = event("function_url_predict.json");
    latest["rawPath"] = json!("/models/mlp/latest/predict");
    assert_eq!(body(&function.invoke(&latest).await)["model_version"], "2");

    let response = function
        .invoke(&event("function_url_bad_request.json"))
        .await;
    assert_eq!(response["statusCode"], 400, "{response}");
    let answer = body(&response);
    assert_eq!(answer["code"], "invalid_json", "{answer}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn alb_answers_with_a_status_description_and_both_header_forms() {
    let _serial = SERIAL.lock().await;
    let function = Function::new(&MLP, 1 << 30);
    let response = function.invoke(&event("alb_predict.json")).await;
    assert_eq!(response["statusCode"], 200, "{response}");
    assert_eq!(response["statusDescription"], "200 OK");
    assert_eq!(response["headers"]["content-type"], "application/json");
    assert_eq!(
        response["multiValueHeaders"]["content-type"],
        json!(["application/json"])
    );
    assert_mlp_prediction(&body(&response));

    let mut missing = event("alb_predict.json");
    missing["path"] = json!("/models/nope/1/predict");
    let response = function.invoke(&missing).await;
    assert_eq!(response["statusDescription"], "404 Not Found");
    assert_eq!(body(&response)["code"], "model_not_found");
}

/// Each HTTP fixture, re-aimed at `method path` with `body`.
fn http_events(method: &str, path: &str, body: &str) -> Vec<(&'static str, Value)> {
    let mut events = Vec::new();
    let mut v1 = event("apigw_v1_predict.json");
    v1["httpMethod"] = json!(method);
    v1["path"] = json!(path);
    v1["resource"] = json!("/{proxy+}");
    v1["requestContext"]["httpMethod"] = json!(method);
    v1["requestContext"]["path"] = json!(format!("/prod{path}"));
    v1["body"] = json!(body);
    events.push(("apigw_v1", v1));
    for (source, name) in [
        ("apigw_v2", "apigw_v2_predict.json"),
        ("function_url", "function_url_predict.json"),
    ] {
        let mut v2 = event(name);
        v2["rawPath"] = json!(path);
        v2["requestContext"]["http"]["method"] = json!(method);
        v2["requestContext"]["http"]["path"] = json!(path);
        v2["body"] = json!(body);
        events.push((source, v2));
    }
    let mut alb = event("alb_predict.json");
    alb["httpMethod"] = json!(method);
    alb["path"] = json!(path);
    alb["body"] = json!(body);
    events.push(("alb", alb));
    events
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_http_request_reaches_the_admin_actions() {
    let _serial = SERIAL.lock().await;
    let function = Function::new(&MLP, 1 << 30);
    let warmed = function
        .admin(json!({"action": "warm", "models": ["mlp/1"]}))
        .await;
    assert_eq!(warmed["warmed"], json!(["mlp/1"]), "{warmed}");

    let admin_bodies = [
        json!({"action": "evict", "models": ["mlp/1"]}).to_string(),
        json!({"detail": {"action": "evict", "models": ["mlp/1"]}}).to_string(),
        json!({"action": "status"}).to_string(),
    ];
    let paths = [
        "/events",
        "/events/",
        "/",
        "/admin",
        "/evict",
        "/status",
        "/warm",
        "/admin/evict",
        "/v2/admin",
        "/models/mlp/1/evict",
    ];
    for path in paths {
        for method in ["POST", "GET"] {
            for admin_body in &admin_bodies {
                for (source, event) in http_events(method, path, admin_body) {
                    let response = function.invoke(&event).await;
                    let context = format!("{source} {method} {path} {admin_body}: {response}");
                    let status = response["statusCode"].as_u64().unwrap();
                    assert!([404, 405].contains(&status), "{context}");
                    let answer = body(&response);
                    assert!(
                        ["route_not_found", "method_not_allowed"]
                            .contains(&answer["code"].as_str().unwrap()),
                        "{context}"
                    );
                    assert!(answer.get("evicted").is_none() && answer.get("entries").is_none());
                }
            }
        }
    }
    // A direct event that carries HTTP fields but is no valid HTTP event
    // (what a parser gap would look like) is refused too.
    for broken in [
        json!({"action": "evict", "models": ["mlp/1"], "requestContext": {}}),
        json!({"action": "evict", "models": ["mlp/1"], "httpMethod": "POST"}),
        json!({"rawPath": "/events", "detail": {"action": "evict", "models": ["mlp/1"]}}),
    ] {
        let answer = function.invoke(&broken).await;
        assert_eq!(answer["code"], "invalid_admin_event", "{broken}: {answer}");
    }

    assert_eq!(function.cached().await, ["mlp/1"]);
    assert_eq!(function.status().await["evictions"], 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_events_by_direct_invoke_and_eventbridge() {
    let _serial = SERIAL.lock().await;
    let function = Function::new(&MLP, 1 << 30);

    let answer = function.invoke(&event("admin_warm.json")).await;
    assert_eq!(answer, json!({"warmed": ["mlp/1", "mlp/2"], "failed": []}));
    let status = function.invoke(&event("admin_status.json")).await;
    let mut cached: Vec<&str> = status["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["model"].as_str().unwrap())
        .collect();
    cached.sort();
    assert_eq!(cached, ["mlp/1", "mlp/2"], "{status}");
    let entry_bytes: u64 = status["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["bytes"].as_u64().unwrap())
        .sum();
    assert_eq!(status["bytes_used"].as_u64(), Some(entry_bytes));
    assert_eq!(status["bytes_budget"], 1u64 << 30);
    assert_eq!(
        (&status["loads"], &status["misses"]),
        (&json!(2), &json!(2))
    );
    assert!(status["preload_failures"].as_array().unwrap().is_empty());

    let answer = function.invoke(&event("admin_evict.json")).await;
    assert_eq!(answer, json!({"evicted": ["mlp/1"]}));
    // Evicting what is not cached is not an error; it is not listed.
    assert_eq!(
        function.invoke(&event("admin_evict.json")).await,
        json!({"evicted": []})
    );
    assert_eq!(function.cached().await, ["mlp/2"]);

    // EventBridge: the admin object is the event's `detail`.
    let answer = function.invoke(&event("eventbridge_warm.json")).await;
    assert_eq!(answer, json!({"warmed": ["mlp/1"], "failed": []}));
    assert_eq!(function.cached().await.len(), 2);

    // A scheduled event with an empty detail, or any other event, is answered
    // with an error object, not a crash.
    let mut empty = event("eventbridge_warm.json");
    empty["detail"] = json!({});
    for wrong in [
        empty,
        json!({"action": "reboot"}),
        json!({"action": "warm"}),
        json!({"action": "warm", "models": ["mlp/1"], "extra": 1}),
        json!([1, 2, 3]),
        json!("warm"),
    ] {
        let answer = function.invoke(&wrong).await;
        assert_eq!(answer["code"], "invalid_admin_event", "{wrong}: {answer}");
        assert!(answer["error"].as_str().unwrap().contains("action"));
    }
    assert!(function.handler.invoke("{not json").await.is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn warm_reports_every_outcome_and_status_matches() {
    let _serial = SERIAL.lock().await;
    let function = Function::new(
        &[
            ("mlp", "1", "mlp.onnx"),
            ("iris", "1", "iris_logreg.ort"),
            ("bad", "1", "mlp.ort"),
        ],
        1 << 30,
    );
    corrupt(function.root.path(), "bad", "1");
    let models = [
        "mlp/1", "bad/1", "nope/1", "mlp/9", "../etc/1", "mlp", "iris/1",
    ];
    let answer = function
        .admin(json!({"action": "warm", "models": models}))
        .await;
    // Every good model is warmed, after failures, in the order asked.
    assert_eq!(answer["warmed"], json!(["mlp/1", "iris/1"]), "{answer}");
    let failed: Vec<(&str, &str)> = answer["failed"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| (f["model"].as_str().unwrap(), f["code"].as_str().unwrap()))
        .collect();
    assert_eq!(
        failed,
        [
            ("bad/1", "checksum_mismatch"),
            ("nope/1", "model_not_found"),
            ("mlp/9", "version_not_found"),
            ("../etc/1", "invalid_name"),
            ("mlp", "invalid_name"),
        ],
        "{answer}"
    );
    for failure in answer["failed"].as_array().unwrap() {
        assert!(!failure["error"].as_str().unwrap().is_empty());
    }

    let status = function.status().await;
    let mut cached = function.cached().await;
    cached.sort();
    assert_eq!(cached, ["iris/1", "mlp/1"], "{status}");
    // Loads counts attempts: the corrupted model's failed one too.
    assert_eq!(status["loads"], 3, "{status}");
    assert_eq!(status["load_failures"], 1, "{status}");
    assert_eq!(status["evictions"], 0);

    // The corrupted model was never cached, and a second warm says the same.
    let again = function
        .admin(json!({"action": "warm", "models": ["bad/1", "mlp/1"]}))
        .await;
    assert_eq!(again["warmed"], json!(["mlp/1"]));
    assert_eq!(again["failed"][0]["code"], "checksum_mismatch");
    let status = function.status().await;
    assert_eq!(
        (&status["loads"], &status["load_failures"]),
        (&json!(4), &json!(2))
    );
    assert_eq!(function.cached().await.len(), 2);

    // ChecksumFailures reached the metrics, by model and for the function.
    let checksum_lines: Vec<Value> = function
        .emf()
        .into_iter()
        .filter(|line| line["ChecksumFailures"] == 1)
        .collect();
    assert_eq!(checksum_lines.len(), 2, "{checksum_lines:?}");
    assert!(checksum_lines.iter().all(|l| l["Model"] == "bad/1"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_warm_beyond_the_budget_says_which_models_did_not_fit() {
    let _serial = SERIAL.lock().await;
    let file_size = std::fs::metadata(common::fixture("sized_0.ort"))
        .unwrap()
        .len();
    // The first session of a process is charged ONNX Runtime's one-time
    // allocations too (about 1.2 MB, more than this budget): make it here.
    let first = Function::new(&[("mlp", "1", "mlp.ort")], 1 << 30);
    assert_eq!(
        first
            .admin(json!({"action": "warm", "models": ["mlp/1"]}))
            .await["warmed"],
        json!(["mlp/1"])
    );
    // Each model is charged at least its mapped file: one fits, two do not.
    let function = Function::new(
        &[
            ("sized_0", "1", "sized_0.ort"),
            ("sized_1", "1", "sized_1.ort"),
            ("sized_2", "1", "sized_2.ort"),
        ],
        file_size * 3 / 2,
    );
    let answer = function
        .admin(json!({"action": "warm", "models": ["sized_0/1", "sized_1/1", "sized_2/1"]}))
        .await;
    assert_eq!(answer["warmed"], json!(["sized_2/1"]), "{answer}");
    let failed = answer["failed"].as_array().unwrap();
    assert_eq!(failed.len(), 2, "{answer}");
    for (failure, model) in failed.iter().zip(["sized_0/1", "sized_1/1"]) {
        assert_eq!(failure["model"], model);
        assert_eq!(failure["code"], "did_not_fit");
        assert!(failure["error"].as_str().unwrap().contains("budget"));
    }
    assert_eq!(function.cached().await, ["sized_2/1"]);
    assert_eq!(function.status().await["evictions"], 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn preload_failures_are_reported_and_the_function_still_serves() {
    let _serial = SERIAL.lock().await;
    let function = Function::with(
        &[("mlp", "1", "mlp.onnx"), ("bad", "1", "mlp.ort")],
        1 << 30,
        |config| config.preload = vec!["bad/1".into(), "mlp/1".into(), "nope/1".into()],
    );
    corrupt(function.root.path(), "bad", "1");
    function.handler.preload().await;

    let status = function.status().await;
    assert_eq!(function.cached().await, ["mlp/1"]);
    let failures: Vec<(&str, &str)> = status["preload_failures"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| (f["model"].as_str().unwrap(), f["code"].as_str().unwrap()))
        .collect();
    assert_eq!(
        failures,
        [
            ("bad/1", "checksum_mismatch"),
            ("nope/1", "model_not_found")
        ],
        "{status}"
    );
    let response = function.invoke(&event("function_url_predict.json")).await;
    assert_eq!(response["statusCode"], 200);
    assert_eq!(
        function.emf()[..3]
            .iter()
            .map(|l| (
                l["Model"].as_str(),
                l.get("ModelBytes").is_some(),
                l.get("ChecksumFailures").is_some()
            ))
            .collect::<Vec<_>>(),
        [
            (Some("mlp/1"), true, false),
            (Some("bad/1"), false, true),
            (None, false, false)
        ],
        "preload: ModelBytes for what it loaded, ChecksumFailures, then the gauges"
    );
}

/// The metric names a line declares, after checking it against the EMF rules
/// CloudWatch enforces: `_aws` with a millisecond Timestamp and directives in
/// our namespace, every dimension a string member, every metric a number.
fn declared(line: &Value) -> Vec<String> {
    let aws = &line["_aws"];
    assert!(
        aws["Timestamp"].as_u64().unwrap() > 1_600_000_000_000,
        "{line}"
    );
    let mut names = Vec::new();
    for directive in aws["CloudWatchMetrics"].as_array().unwrap() {
        assert_eq!(directive["Namespace"], "ModelRouterTest");
        let sets = directive["Dimensions"].as_array().unwrap();
        assert!(!sets.is_empty());
        for set in sets {
            let set = set.as_array().unwrap();
            assert_eq!(set[0], "FunctionName", "{line}");
            for key in set {
                assert!(line[key.as_str().unwrap()].is_string(), "{key}: {line}");
            }
        }
        for metric in directive["Metrics"].as_array().unwrap() {
            let name = metric["Name"].as_str().unwrap();
            assert!(line[name].is_number(), "{name}: {line}");
            assert!(["Count", "Milliseconds", "Bytes"].contains(&metric["Unit"].as_str().unwrap()));
            names.push(name.to_string());
        }
    }
    assert_eq!(line["FunctionName"], "router-test");
    names
}

fn dimensions(line: &Value, directive: usize) -> Value {
    line["_aws"]["CloudWatchMetrics"][directive]["Dimensions"].clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn emf_lines_carry_the_declared_metrics_and_dimensions() {
    let _serial = SERIAL.lock().await;
    let function = Function::new(
        &[("mlp", "1", "mlp.onnx"), ("bad", "1", "mlp.ort")],
        1 << 30,
    );
    corrupt(function.root.path(), "bad", "1");
    let predict = event("function_url_predict.json");
    function.invoke(&predict).await; // miss
    function.invoke(&predict).await; // hit
    function
        .invoke(&event("function_url_bad_request.json"))
        .await;
    let mut missing = predict.clone();
    missing["rawPath"] = json!("/models/nope/1/predict");
    function.invoke(&missing).await;
    let mut corrupted = predict.clone();
    corrupted["rawPath"] = json!("/models/bad/1/predict");
    function.invoke(&corrupted).await;
    function.status().await;

    let lines = function.emf();
    for line in &lines {
        declared(line);
    }
    let requests: Vec<&Value> = lines
        .iter()
        .filter(|l| l.get("Requests").is_some())
        .collect();
    assert_eq!(requests.len(), 5, "{lines:?}");
    let ids: std::collections::BTreeSet<&str> = requests
        .iter()
        .map(|l| l["RequestId"].as_str().unwrap())
        .collect();
    assert_eq!(ids.len(), 5, "each invoke has its own request id: {ids:?}");
    assert!(ids.iter().all(|id| id.starts_with("invoke-")));

    let [miss, hit, bad_json, not_found, checksum] = requests[..] else {
        unreachable!()
    };
    assert_eq!(
        declared(miss),
        [
            "Requests",
            "Errors",
            "ChecksumFailures",
            "CacheHit",
            "CacheMiss",
            "ModelLoadMs",
            "StageMs",
            "ModelBytes",
            "InferenceMs",
            "CacheBytesUsed",
            "CacheBytesBudget",
            "ModelsCached",
            "Evictions"
        ]
    );
    assert_eq!(
        dimensions(miss, 0),
        json!([["FunctionName", "Model"], ["FunctionName"]])
    );
    assert_eq!(dimensions(miss, 1), json!([["FunctionName"]]));
    assert_eq!(
        (
            &miss["Model"],
            &miss["CacheMiss"],
            &miss["Errors"],
            &miss["Status"]
        ),
        (&json!("mlp/1"), &json!(1), &json!(0), &json!(200))
    );
    assert!(miss["ModelBytes"].as_u64().unwrap() >= 666);
    assert_eq!(miss["CacheBytesBudget"], 1u64 << 30);
    assert_eq!(miss["ModelsCached"], 1);

    assert_eq!(
        (&hit["CacheHit"], &hit["CacheMiss"]),
        (&json!(1), &json!(0))
    );
    assert!(hit.get("ModelLoadMs").is_none() && hit.get("InferenceMs").is_some());

    // A model name the repository did not know is no dimension.
    for line in [bad_json, not_found] {
        assert!(line.get("Model").is_none(), "{line}");
        assert_eq!(dimensions(line, 0), json!([["FunctionName"]]));
        assert_eq!(line["Errors"], 1);
    }
    assert_eq!(
        (&bad_json["Code"], &not_found["Code"]),
        (&json!("invalid_json"), &json!("model_not_found"))
    );
    assert_eq!(
        (
            &checksum["Model"],
            &checksum["ChecksumFailures"],
            &checksum["Status"]
        ),
        (&json!("bad/1"), &json!(1), &json!(500))
    );

    // Errors by code: one more line per failed request.
    let by_code: Vec<&Value> = lines
        .iter()
        .filter(|l| l.get("Requests").is_none() && l.get("Code").is_some())
        .collect();
    assert_eq!(by_code.len(), 3, "{by_code:?}");
    for line in &by_code {
        assert_eq!(declared(line), ["Errors"]);
        assert_eq!(line["Errors"], 1);
    }
    assert_eq!(dimensions(by_code[0], 0), json!([["FunctionName", "Code"]]));
    assert_eq!(
        dimensions(by_code[2], 0),
        json!([["FunctionName", "Code"], ["FunctionName", "Model", "Code"]])
    );
    assert_eq!(
        (&by_code[2]["Code"], &by_code[2]["Model"]),
        (&json!("checksum_mismatch"), &json!("bad/1"))
    );

    // The admin status event wrote the gauges.
    let last = lines.last().unwrap();
    assert_eq!(
        declared(last),
        [
            "CacheBytesUsed",
            "CacheBytesBudget",
            "ModelsCached",
            "Evictions"
        ]
    );
}
