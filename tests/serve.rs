//! The local server end to end: real fixtures published into a real
//! repository, the real router on 127.0.0.1:0, real ONNX Runtime.

mod common;

use common::{TestServer, check_fixture, repository};
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn predictions_match_python_onnxruntime_for_onnx_and_ort() {
    let root = repository(&[
        ("mlp", "1", "mlp.onnx"),
        ("mlp", "2", "mlp.ort"),
        ("linear_f64", "1", "linear_f64.onnx"),
        ("linear_f64", "2", "linear_f64.ort"),
        ("int_ops", "1", "int_ops.onnx"),
        ("int_ops", "2", "int_ops.ort"),
    ]);
    let server = TestServer::start(root.path(), 1 << 30).await;
    for (name, version) in [
        ("mlp", "1"),
        ("mlp", "2"),
        ("linear_f64", "1"),
        ("linear_f64", "2"),
        ("int_ops", "1"),
        ("int_ops", "2"),
    ] {
        check_fixture(&server, name, version).await;
    }
    // `latest` is the highest version, and the answer names the concrete one.
    let (status, answer) = server
        .post(
            "/models/mlp/latest/predict",
            &json!({"features": [0.5, -1.25, 2.0, 0.75]}),
        )
        .await;
    assert_eq!((status, answer["model_version"].as_str()), (200, Some("2")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_corrupted_model_is_refused_not_cached_and_harms_nothing_else() {
    let root = repository(&[("mlp", "1", "mlp.ort"), ("bad", "1", "mlp.ort")]);
    let server = TestServer::start(root.path(), 1 << 30).await;
    let body = json!({"features": [0.5, -1.25, 2.0, 0.75]});
    assert_eq!(server.post("/models/mlp/1/predict", &body).await.0, 200);
    // Flip one byte of the published file behind the manifest's back.
    let path = root.path().join("bad/1/model.ort");
    let mut bytes = std::fs::read(&path).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0xff;
    std::fs::write(&path, bytes).unwrap();

    for _ in 0..2 {
        let (status, answer) = server.post("/models/bad/1/predict", &body).await;
        assert_eq!(status, 500, "{answer}");
        assert_eq!(answer["code"], "checksum_mismatch");
        assert!(
            answer["error"].as_str().unwrap().contains("sha256"),
            "{answer}"
        );
    }
    let status = server.service.cache_status();
    assert_eq!(
        status
            .entries
            .iter()
            .map(|e| e.model.as_str())
            .collect::<Vec<_>>(),
        ["mlp/1"],
        "bad/1 never cached, mlp/1 kept"
    );
    assert_eq!(status.load_failures, 2, "each request retried the load");
    assert_eq!(
        server.service.staging_stats().files,
        1,
        "no staged copy of the corrupt file"
    );
    assert_eq!(server.post("/models/mlp/1/predict", &body).await.0, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn eight_concurrent_first_requests_load_and_hash_once() {
    let root = repository(&[("mlp", "1", "mlp.onnx")]);
    let server = std::sync::Arc::new(TestServer::start(root.path(), 1 << 30).await);
    let requests: Vec<_> = (0..8)
        .map(|_| {
            let server = server.clone();
            tokio::spawn(async move {
                server
                    .post("/models/mlp/1/predict", &json!({"features": [1, 2, 3, 4]}))
                    .await
            })
        })
        .collect();
    for request in requests {
        let (status, answer) = request.await.unwrap();
        assert_eq!(status, 200, "{answer}");
    }
    let status = server.service.cache_status();
    assert_eq!(status.loads, 1, "{status:?}");
    assert_eq!(status.misses + status.hits, 8);
    assert_eq!(server.service.staging_stats().hashes, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn names_that_could_leave_the_root_are_refused_and_nothing_outside_is_opened() {
    let outside = repository(&[("secret", "1", "mlp.onnx")]);
    let root = repository(&[("mlp", "1", "mlp.onnx")]);
    std::os::unix::fs::symlink(outside.path().join("secret"), root.path().join("escape")).unwrap();
    std::os::unix::fs::symlink(outside.path().join("secret/1"), root.path().join("mlp/2")).unwrap();
    let server = TestServer::start(root.path(), 1 << 30).await;
    let long = "a".repeat(129);
    let paths = [
        "/models/../1/predict".to_string(),
        "/models/%2e%2e/1/predict".to_string(),
        "/models/%2E%2E/%2E%2E/predict".to_string(),
        "/models/mlp/../predict".to_string(),
        "/models/mlp/%2e%2e/predict".to_string(),
        "/models/a%2Fb/1/predict".to_string(),
        "/models/..%2Fsecret/1/predict".to_string(),
        "/models/a%5Cb/1/predict".to_string(),
        "/models/..\\secret/1/predict".to_string(),
        "/models/%2Fetc%2Fpasswd/1/predict".to_string(),
        "/models//1/predict".to_string(),
        "/models/mlp//predict".to_string(),
        format!("/models/{long}/1/predict"),
        format!("/models/mlp/{long}/predict"),
        "/models/escape/1/predict".to_string(),
        "/models/mlp/2/predict".to_string(),
        "/models/%00/1/predict".to_string(),
    ];
    for path in &paths {
        let (status, answer) = server.post(path, &json!({"features": [1, 2, 3, 4]})).await;
        assert!(status == 400 || status == 404, "{path}: {status} {answer}");
        assert!(answer["code"].is_string(), "{path}: {answer}");
    }
    let staging = server.service.staging_stats();
    assert_eq!(staging.hashes, 0, "nothing was read, let alone staged");
    assert_eq!(server.service.cache_status().loads, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_inputs_get_400_naming_what_was_expected() {
    let root = repository(&[("mlp", "1", "mlp.ort"), ("int_ops", "1", "int_ops.ort")]);
    let server = TestServer::start(root.path(), 1 << 30).await;
    let cases: Vec<(&str, String, &str, Vec<&str>)> = vec![
        (
            "/models/mlp/1/predict",
            r#"{"inputs": {"feature": [[1, 2, 3, 4]]}}"#.into(),
            "invalid_input",
            vec!["\"feature\"", "features: float32[batch, 4]"],
        ),
        (
            "/models/mlp/1/predict",
            r#"{"features": ["a", "b", "c", "d"]}"#.into(),
            "invalid_input",
            vec!["\"features\"", "float32"],
        ),
        (
            "/models/mlp/1/predict",
            r#"{"features": [1, 2, 3]}"#.into(),
            "invalid_input",
            vec!["features", "4", "3"],
        ),
        (
            "/models/mlp/1/predict",
            r#"{"features": [[1, 2, 3, 4], [1, 2]]}"#.into(),
            "invalid_input",
            vec!["features", "ragged"],
        ),
        (
            "/models/mlp/1/predict",
            "{not json".into(),
            "invalid_json",
            vec!["JSON"],
        ),
        (
            "/models/mlp/1/predict",
            "[1, 2, 3, 4]".into(),
            "invalid_input",
            vec!["\"features\""],
        ),
        (
            "/models/mlp/1/predict",
            r#"{"rows": [1]}"#.into(),
            "invalid_input",
            vec!["\"features\"", "\"inputs\""],
        ),
        (
            "/models/int_ops/1/predict",
            r#"{"features": [1, 2]}"#.into(),
            "invalid_input",
            vec!["a: int64", "b: int32"],
        ),
        (
            "/models/int_ops/1/predict",
            r#"{"inputs": {"a": [[1, 2]]}}"#.into(),
            "invalid_input",
            vec!["'b'", "int32"],
        ),
        (
            "/models/int_ops/1/predict",
            r#"{"inputs": {"a": [[1.5, 2]], "b": [[1, 2]]}}"#.into(),
            "invalid_input",
            vec!["\"a\"", "int64"],
        ),
        (
            "/models/int_ops/1/predict",
            r#"{"inputs": {"a": [[1, 2]], "b": [[3000000000, 2]]}}"#.into(),
            "invalid_input",
            vec!["\"b\"", "int32"],
        ),
    ];
    for (path, body, code, mentions) in cases {
        let (status, answer) = server.request("POST", path, &body).await;
        assert_eq!(status, 400, "{body}: {answer}");
        assert_eq!(answer["code"], code, "{body}: {answer}");
        let message = answer["error"].as_str().unwrap();
        for mention in mentions {
            assert!(
                message.contains(mention),
                "{body}: {message:?} should mention {mention:?}"
            );
        }
    }
    // None of that disturbed the cache.
    assert_eq!(server.service.cache_status().load_failures, 0);
    assert_eq!(
        server
            .post("/models/mlp/1/predict", &json!({"features": [1, 2, 3, 4]}))
            .await
            .0,
        200
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_models_versions_and_routes_get_404() {
    let root = repository(&[("mlp", "1", "mlp.ort")]);
    let server = TestServer::start(root.path(), 1 << 30).await;
    let body = json!({"features": [1, 2, 3, 4]});
    let (status, answer) = server.post("/models/nope/1/predict", &body).await;
    assert_eq!(
        (status, answer["code"].as_str()),
        (404, Some("model_not_found"))
    );
    let (status, answer) = server.post("/models/mlp/7/predict", &body).await;
    assert_eq!(
        (status, answer["code"].as_str()),
        (404, Some("version_not_found"))
    );
    assert!(
        answer["error"].as_str().unwrap().contains("available: 1"),
        "{answer}"
    );
    let (status, answer) = server.get("/nowhere").await;
    assert_eq!(
        (status, answer["code"].as_str()),
        (404, Some("route_not_found"))
    );
    let (status, answer) = server.get("/models/mlp/1/predict").await;
    assert_eq!(
        (status, answer["code"].as_str()),
        (405, Some("method_not_allowed"))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lists_models_with_what_is_cached() {
    let root = repository(&[
        ("mlp", "1", "mlp.ort"),
        ("mlp", "2", "mlp.onnx"),
        ("int_ops", "1", "int_ops.ort"),
    ]);
    std::fs::write(root.path().join("mlp/aliases.json"), r#"{"stable": "1"}"#).unwrap();
    let server = TestServer::start(root.path(), 1 << 30).await;
    assert_eq!(
        server
            .post(
                "/models/mlp/stable/predict",
                &json!({"features": [1, 2, 3, 4]})
            )
            .await
            .0,
        200
    );
    let (status, listing) = server.get("/models").await;
    assert_eq!(status, 200);
    assert_eq!(
        listing["models"],
        json!([
            {"name": "int_ops", "versions": [{"version": "1", "cached": false}], "latest": "1", "aliases": {}},
            {"name": "mlp", "versions": [{"version": "1", "cached": true}, {"version": "2", "cached": false}], "latest": "2", "aliases": {"stable": "1"}},
        ])
    );
    assert!(listing["cache"]["bytes_used"].as_u64().unwrap() > 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bodies_over_the_limit_get_413() {
    let root = repository(&[("mlp", "1", "mlp.ort")]);
    let staging = tempfile::tempdir().unwrap();
    let mut config = model_router::Config::for_repository(
        root.path().to_path_buf(),
        staging.path().to_path_buf(),
        1 << 30,
    );
    config.max_request_bytes = 1000;
    let server = TestServer::with_config(config, staging).await;
    let rows: Vec<[f32; 4]> = vec![[1.0, 2.0, 3.0, 4.0]; 200];
    let (status, answer) = server
        .post("/models/mlp/1/predict", &json!({ "features": rows }))
        .await;
    assert_eq!(
        (status, answer["code"].as_str()),
        (413, Some("payload_too_large")),
        "{answer}"
    );
    assert_eq!(
        server.service.cache_status().loads,
        0,
        "refused before any model was touched"
    );
}
