//! The cold load path against the real server, on a local repository: what
//! `latest` and aliases cost once resolved, what a vanished repository or a
//! file that is not a regular file answers, and that a staged copy serves
//! reloads. (Network-filesystem faults: tests/efs_faults.rs.)

mod common;

use std::time::Duration;

use common::{TestServer, repository};
use model_router::Config;

const ROW: &str = r#"{"features": [0.5, -1.25, 2.0, 0.75]}"#;

async fn server_with(root: &std::path::Path, tweak: impl FnOnce(&mut Config)) -> TestServer {
    let staging = tempfile::tempdir().unwrap();
    let mut config =
        Config::for_repository(root.to_path_buf(), staging.path().to_path_buf(), 1 << 30);
    tweak(&mut config);
    TestServer::with_config(config, staging).await
}

fn predict_path(version: &str) -> String {
    format!("/models/mlp/{version}/predict")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn latest_and_aliases_are_answered_from_memory_within_the_ttl() {
    let root = repository(&[("mlp", "1", "mlp.onnx"), ("mlp", "2", "mlp.ort")]);
    std::fs::write(root.path().join("mlp/aliases.json"), r#"{"stable": "1"}"#).unwrap();
    let server = server_with(root.path(), |c| c.resolve_ttl = Duration::from_secs(60)).await;
    for (version, concrete) in [("latest", "2"), ("stable", "1")] {
        let (status, body) = server.request("POST", &predict_path(version), ROW).await;
        assert_eq!(
            (status, body["model_version"].as_str()),
            (200, Some(concrete)),
            "{body}"
        );
    }
    // The repository disappears (an EFS mount gone): requests that resolve
    // from memory to a cached model still answer, without touching it.
    let moved = root.path().with_extension("moved");
    std::fs::rename(root.path(), &moved).unwrap();
    for (version, concrete) in [("latest", "2"), ("stable", "1"), ("2", "2")] {
        let (status, body) = server.request("POST", &predict_path(version), ROW).await;
        assert_eq!(
            (status, body["model_version"].as_str()),
            (200, Some(concrete)),
            "{version}: {body}"
        );
    }
    std::fs::rename(&moved, root.path()).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_version_or_alias_is_seen_once_the_ttl_has_passed() {
    let root = repository(&[("mlp", "1", "mlp.onnx")]);
    let ttl = Duration::from_millis(300);
    let server = server_with(root.path(), |c| c.resolve_ttl = ttl).await;
    let (status, body) = server.request("POST", &predict_path("latest"), ROW).await;
    assert_eq!((status, body["model_version"].as_str()), (200, Some("1")));
    model_router::repository::Repository::open(root.path())
        .unwrap()
        .publish(&model_router::repository::PublishRequest {
            name: "mlp".into(),
            version: "2".into(),
            source: common::fixture("mlp.ort"),
            team: None,
            description: None,
        })
        .unwrap();
    tokio::time::sleep(ttl + Duration::from_millis(100)).await;
    let (status, body) = server.request("POST", &predict_path("latest"), ROW).await;
    assert_eq!(
        (status, body["model_version"].as_str()),
        (200, Some("2")),
        "{body}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_vanished_repository_is_503_not_404() {
    let root = repository(&[("mlp", "1", "mlp.onnx")]);
    // TTL 0: every `latest` goes to the repository.
    let server = server_with(root.path(), |_| {}).await;
    let moved = root.path().with_extension("gone");
    std::fs::rename(root.path(), &moved).unwrap();
    for path in [
        predict_path("1"),
        predict_path("latest"),
        "/models/other/1/predict".into(),
    ] {
        let (status, body) = server.request("POST", &path, ROW).await;
        assert_eq!(
            (status, body["code"].as_str()),
            (503, Some("repository_unavailable")),
            "{path}: {body}"
        );
    }
    std::fs::rename(&moved, root.path()).unwrap();
    // Back: the same requests succeed, nothing was poisoned.
    let (status, _) = server.request("POST", &predict_path("1"), ROW).await;
    assert_eq!(status, 200);
    let (status, body) = server.request("POST", "/models/other/1/predict", ROW).await;
    assert_eq!(
        (status, body["code"].as_str()),
        (404, Some("model_not_found"))
    );
}

/// A FIFO in place of a model file or `aliases.json` answers at once with an
/// error, where opening it for reading would wait forever for a writer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fifo_in_the_repository_never_hangs_a_request() {
    let root = repository(&[("mlp", "1", "mlp.onnx"), ("iris", "1", "iris_logreg.onnx")]);
    let mkfifo = |path: &std::path::Path| {
        let _ = std::fs::remove_file(path);
        let status = std::process::Command::new("mkfifo")
            .arg(path)
            .status()
            .unwrap();
        assert!(status.success());
    };
    mkfifo(&root.path().join("mlp/1/model.onnx"));
    mkfifo(&root.path().join("iris/aliases.json"));
    let server = server_with(root.path(), |c| c.load_timeout = Duration::from_secs(30)).await;
    let answered = tokio::time::timeout(Duration::from_secs(10), async {
        let (status, body) = server.request("POST", &predict_path("1"), ROW).await;
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
        let (status, body) = server
            .request(
                "POST",
                "/models/iris/stable/predict",
                r#"{"features": [5.1, 3.5, 1.4, 0.2]}"#,
            )
            .await;
        assert_eq!(status, 500, "{body}");
        assert!(
            body["error"].as_str().unwrap().contains("aliases.json"),
            "{body}"
        );
        // The model's own versions still answer.
        let (status, _) = server
            .request(
                "POST",
                "/models/iris/1/predict",
                r#"{"features": [5.1, 3.5, 1.4, 0.2]}"#,
            )
            .await;
        assert_eq!(status, 200);
    })
    .await;
    assert!(answered.is_ok(), "a request hung on a FIFO");
    assert_eq!(
        server.service.cache_status().entries.len(),
        1,
        "only iris/1 is cached"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_after_eviction_uses_the_staged_copy() {
    let root = repository(&[("mlp", "1", "mlp.ort")]);
    let server = server_with(root.path(), |_| {}).await;
    let (status, first) = server.request("POST", &predict_path("1"), ROW).await;
    assert_eq!(status, 200);
    assert!(server.service.wait_for_staging(Duration::from_secs(10)));
    let stats = server.service.staging_stats();
    assert_eq!(
        (stats.hashes, stats.writes, stats.files),
        (1, 1, 1),
        "{stats:?}"
    );
    assert_eq!(server.service.evict(&["mlp/1".into()]), ["mlp/1"]);
    // The repository's file is overwritten with garbage: a reload does not
    // read it (it maps the copy this process verified against the same
    // manifest), so it still answers the same.
    let file = root.path().join("mlp/1/model.ort");
    let size = std::fs::metadata(&file).unwrap().len() as usize;
    std::fs::write(&file, vec![0u8; size]).unwrap();
    let (status, again) = server.request("POST", &predict_path("1"), ROW).await;
    assert_eq!((status, &again["outputs"]), (200, &first["outputs"]));
    let stats = server.service.staging_stats();
    assert_eq!((stats.hashes, stats.reuses), (1, 1), "{stats:?}");
}
