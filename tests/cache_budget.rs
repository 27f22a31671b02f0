//! The byte budget under a real workload. In a file of its own, one test at a
//! time, so that no other test's allocations run in this process while models
//! are measured: a model's charge includes the anonymous memory the process
//! gained while its session was created, and a concurrent staging copy (or
//! anything else) would be charged to it too. (Over-charging is the safe
//! direction for a memory bound, but it would make tight budgets flaky here.)

mod common;

use std::path::Path;

use common::{TestServer, check_fixture, fixture, repository};
use model_router::repository::{PublishRequest, Repository};
use model_router::{Config, ModelService};
use serde_json::{Value, json};

static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_models_cycle_through_a_budget_that_holds_two() {
    let _serial = ONE_AT_A_TIME.lock().await;
    let models: Vec<(String, String)> = (0..5)
        .map(|i| (format!("sized_{i}"), format!("sized_{i}.ort")))
        .collect();
    let spec: Vec<(&str, &str, &str)> = models
        .iter()
        .map(|(n, f)| (n.as_str(), "1", f.as_str()))
        .collect();
    let root = repository(&spec);

    // Each model is charged at least its mapped file: two and a half files'
    // worth holds two models at most.
    let file_size = std::fs::metadata(common::fixture("sized_0.ort"))
        .unwrap()
        .len();
    let budget = file_size * 5 / 2;

    let server = TestServer::start(root.path(), budget).await;
    for round in 0..3 {
        for (name, _) in &models {
            check_fixture(&server, name, "1").await;
            let status = server.service.cache_status();
            assert!(
                status.bytes_used <= budget,
                "round {round} {name}: {} > {budget}",
                status.bytes_used
            );
            assert!(
                status.entries.len() <= 2,
                "round {round}: {:?}",
                status.entries
            );
        }
    }
    let status = server.service.cache_status();
    assert!(status.evictions >= 12, "{status:?}");
    assert_eq!(status.load_failures, 0);
    // Staged copies were reused after memory evictions: each file hashed once.
    assert_eq!(server.service.staging_stats().hashes, 5);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_team_within_its_share_keeps_its_model_while_another_floods_the_cache() {
    let _serial = ONE_AT_A_TIME.lock().await;
    // Team "flood" owns five models of ~256 KiB; team "steady" owns one small model.
    let root = tempfile::tempdir().unwrap();
    let repository = Repository::open(root.path()).unwrap();
    let publish = |name: &str, file: &str, team: &str| {
        repository
            .publish(&PublishRequest {
                name: name.into(),
                version: "1".into(),
                source: fixture(file),
                team: Some(team.into()),
                description: None,
            })
            .unwrap();
    };
    for i in 0..5 {
        publish(&format!("big-{i}"), &format!("sized_{i}.ort"), "flood");
    }
    publish("steady", "mlp.ort", "steady");
    let dir = tempfile::tempdir().unwrap();
    let policy_path = dir.path().join("policy.json");
    std::fs::write(
        &policy_path,
        json!({"teams": {
            "flood": {"principals": ["arn:aws:iam::1:role/flood"], "models": ["big-*"], "cache_share": 0.6},
            "steady": {"principals": ["arn:aws:iam::2:role/steady"], "models": ["steady"], "cache_share": 0.2},
        }})
        .to_string(),
    )
    .unwrap();
    let file_size = std::fs::metadata(fixture("sized_0.ort")).unwrap().len();
    let budget = file_size * 3;
    let staging = tempfile::tempdir().unwrap();
    let mut config = Config::for_repository(
        root.path().to_path_buf(),
        staging.path().to_path_buf(),
        budget,
    );
    config.access_policy = Some(policy_path.clone());
    let service = ModelService::new(config).unwrap();
    // Through the HTTP API (payload 2.0) with IAM: the caller is the event's authenticated ARN.
    let template = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/teams/apigw_http_iam.json"),
    )
    .unwrap();
    let call = |model: &str, arn: &str| {
        let features = if model == "steady" {
            json!([1, 2, 3, 4])
        } else {
            json!([1, 2, 3, 4, 5, 6, 7, 8])
        };
        let body = serde_json::to_string(&json!({ "features": features }).to_string()).unwrap();
        let event = template
            .replace("MODEL", model)
            .replace("CALLER_ARN", arn)
            .replace("\"BODY\"", &body);
        let service = service.clone();
        async move {
            let response = model_router::lambda::invoke(&service, &event)
                .await
                .unwrap();
            let body: Value = serde_json::from_str(response["body"].as_str().unwrap()).unwrap();
            (response["statusCode"].as_u64().unwrap(), body)
        }
    };
    assert_eq!(call("steady", "arn:aws:iam::2:role/steady").await.0, 200);
    for round in 0..3 {
        for i in 0..5 {
            let (status, body) = call(&format!("big-{i}"), "arn:aws:iam::1:role/flood").await;
            assert_eq!(status, 200, "{body}");
            let cache = service.cache_status();
            assert!(
                cache.bytes_used <= budget,
                "round {round}: {} > {budget}",
                cache.bytes_used
            );
            assert!(
                cache.entries.iter().any(|e| e.model == "steady/1"),
                "round {round} big-{i}: steady evicted: {:?}",
                cache.entries
            );
            assert_eq!(call("steady", "arn:aws:iam::2:role/steady").await.0, 200);
        }
    }
    let cache = service.cache_status();
    assert!(cache.evictions >= 10, "the flood did evict: {cache:?}");
    assert!(cache.teams["steady"].bytes_used > 0);
    assert!(cache.teams["flood"].bytes_used > 0);
    assert_eq!(
        cache.loads, 16,
        "steady loaded once, every big model on every round"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_model_larger_than_the_budget_gets_507_and_evicts_nothing() {
    let _serial = ONE_AT_A_TIME.lock().await;
    let root = repository(&[("mlp", "1", "mlp.ort"), ("big", "1", "sized_0.ort")]);
    let server = TestServer::start(root.path(), 128 * 1024).await;
    let body = json!({"features": [1, 2, 3, 4]});
    assert_eq!(server.post("/models/mlp/1/predict", &body).await.0, 200);
    let (status, answer) = server
        .post(
            "/models/big/1/predict",
            &json!({"features": [1, 2, 3, 4, 5, 6, 7, 8]}),
        )
        .await;
    assert_eq!(
        (status, answer["code"].as_str()),
        (507, Some("model_too_large")),
        "{answer}"
    );
    let status = server.service.cache_status();
    assert_eq!(status.entries.len(), 1);
    assert_eq!(status.evictions, 0);
    assert_eq!(
        server.service.staging_stats().hashes,
        1,
        "the big one was refused before it was read"
    );
}

/// A reload after an eviction skips the probe run (the first load's measured
/// footprint is remembered), so it must still be charged what the first load
/// measured, first-run memory included: never less.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_is_charged_what_the_first_load_measured() {
    let _serial = ONE_AT_A_TIME.lock().await;
    for format in ["ort", "onnx"] {
        let file = format!("mlp.{format}");
        let root = repository(&[("mlp", "1", file.as_str())]);
        let server = TestServer::start(root.path(), 64 << 20).await;
        let charged = || server.service.cache_status().entries[0].bytes;
        check_fixture(&server, "mlp", "1").await;
        let first = charged();
        for _ in 0..3 {
            assert!(
                server
                    .service
                    .wait_for_staging(std::time::Duration::from_secs(30))
            );
            assert_eq!(server.service.evict(&["mlp/1".into()]), ["mlp/1"]);
            check_fixture(&server, "mlp", "1").await;
            let reloaded = charged();
            assert!(
                reloaded >= first,
                "{format}: a reload is charged {reloaded} bytes, the first load {first}"
            );
        }
        assert_eq!(
            server.service.staging_stats().hashes,
            1,
            "{format}: reloads came from the staged copy"
        );
    }
}
