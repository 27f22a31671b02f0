//! The locale that skl2onnx's default text models need (en_US.UTF-8), through
//! the real binary: supplied by a directory named in LOCPATH (as the zip
//! deployment's layer does), and, when it is missing, an error that says which
//! locale and how to add it. A LOCPATH set to a directory makes glibc look only
//! there (never in the system's locale archive), so both cases hold on any
//! machine, whatever it has installed.

mod common;

use std::path::Path;
use std::process::Command;

use common::{expected, fixture};
use serde_json::{Value, json};

/// `model-router invoke` of one predict on the default-export text model, with
/// LOCPATH set to `locpath`: (status, body).
fn predict_with_locpath(locpath: &Path) -> (u64, Value) {
    let root = tempfile::tempdir().unwrap();
    let staging = tempfile::tempdir().unwrap();
    let bin = env!("CARGO_BIN_EXE_model-router");
    let published = Command::new(bin)
        .args(["publish", "--repo"])
        .arg(root.path())
        .args(["--name", "text", "--version", "1"])
        .arg(fixture("text_tfidf_default.ort"))
        .output()
        .unwrap();
    assert!(published.status.success(), "{published:?}");
    let case = &expected("text_tfidf_default")["cases"][0];
    let event = json!({
        "version": "2.0",
        "routeKey": "$default",
        "rawPath": "/models/text/1/predict",
        "rawQueryString": "",
        "headers": {"content-type": "application/json"},
        "requestContext": {
            "accountId": "123456789012", "apiId": "api", "domainName": "api.example.com",
            "domainPrefix": "api", "requestId": "r1", "routeKey": "$default", "stage": "$default",
            "time": "01/Dec/2026:00:00:00 +0000", "timeEpoch": 0,
            "http": {"method": "POST", "path": "/models/text/1/predict", "protocol": "HTTP/1.1",
                     "sourceIp": "192.0.2.1", "userAgent": "test"}
        },
        "body": json!({"inputs": {"text": case["inputs"]["text"]["data"]}}).to_string(),
        "isBase64Encoded": false
    });
    let event_path = staging.path().join("event.json");
    std::fs::write(&event_path, event.to_string()).unwrap();
    let output = Command::new(bin)
        .args(["invoke", "--repo"])
        .arg(root.path())
        .arg("--staging-dir")
        .arg(staging.path().join("staging"))
        .arg("--event")
        .arg(&event_path)
        .env("LOCPATH", locpath)
        .env("RUST_LOG", "error")
        .output()
        .unwrap();
    assert!(output.status.success(), "{output:?}");
    let response: Value = serde_json::from_slice(&output.stdout).unwrap();
    let body = serde_json::from_str(response["body"].as_str().unwrap()).unwrap();
    (response["statusCode"].as_u64().unwrap(), body)
}

#[test]
fn a_missing_locale_is_named_with_how_to_add_it() {
    let empty = tempfile::tempdir().unwrap();
    let (status, body) = predict_with_locpath(empty.path());
    assert_eq!(
        (status, body["code"].as_str()),
        (500, Some("model_load_failed")),
        "{body}"
    );
    let error = body["error"].as_str().unwrap();
    for needed in [
        "needs the locale en_US.UTF-8",
        "scripts/setup-locale.sh",
        "glibc-langpack-en",
        "LOCPATH",
        "Failed to construct locale",
    ] {
        assert!(error.contains(needed), "{needed:?} missing from: {error}");
    }
}

#[test]
fn a_locale_compiled_into_locpath_serves_the_default_export() {
    let dir = tempfile::tempdir().unwrap();
    let setup = Command::new(Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/setup-locale.sh"))
        .arg("--dir")
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(setup.status.success(), "{setup:?}");
    let (status, body) = predict_with_locpath(dir.path());
    assert_eq!(status, 200, "{body}");
    let want = &expected("text_tfidf_default")["cases"][0]["outputs"]["output_label"]["data"];
    assert_eq!(&body["outputs"]["output_label"], want, "{body}");
}
