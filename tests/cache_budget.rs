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

/// Issue 10 measured a model that fits refused with 507 `model_too_large`
/// 5-15 times in 15 s under 64 clients: its charge was read from the
/// process's resident memory, which every other request moved. Charges are
/// now what the loading thread allocated, so under the same load (64 clients,
/// loads, evictions by LRU and by `evict`, and predictions interleaved) a
/// model that fits the budget with room is always answered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_model_that_fits_is_never_refused_under_load() {
    let _serial = ONE_AT_A_TIME.lock().await;
    let names: Vec<String> = (0..4).map(|i| format!("sized_{i}")).collect();
    let files: Vec<String> = names.iter().map(|n| format!("{n}.ort")).collect();
    let spec: Vec<(&str, &str, &str)> = names
        .iter()
        .zip(&files)
        .map(|(n, f)| (n.as_str(), "1", f.as_str()))
        .collect();
    let root = repository(&spec);

    // What each model is charged, quietly, by a service of its own.
    let charge = {
        let staging = tempfile::tempdir().unwrap();
        let probe = ModelService::new(Config::for_repository(
            root.path().to_path_buf(),
            staging.path().to_path_buf(),
            1 << 30,
        ))
        .unwrap();
        let models: Vec<String> = names.iter().map(|n| format!("{n}/1")).collect();
        let (warmed, failed) = probe.warm(&models).await;
        assert!(failed.is_empty(), "{failed:?}");
        warmed.iter().map(|w| w.bytes).max().unwrap()
    };
    // Three fit at once with half a model to spare; the fourth load evicts.
    let budget = charge * 7 / 2;
    let server = TestServer::start(root.path(), budget).await;

    let clients = 64;
    let per_client = 30;
    let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    // Evictions by hand too, as the admin `evict` action makes them, while
    // requests run: every model is loaded again and again.
    let evictor = {
        let (service, done, names) = (server.service.clone(), done.clone(), names.clone());
        tokio::spawn(async move {
            let mut evicted = 0usize;
            let mut i = 0;
            while !done.load(std::sync::atomic::Ordering::Relaxed) {
                evicted += service
                    .evict(&[format!("{}/1", names[i % names.len()])])
                    .len();
                i += 1;
                tokio::time::sleep(std::time::Duration::from_millis(10)).await;
            }
            evicted
        })
    };
    let body = json!({"features": [1, 2, 3, 4, 5, 6, 7, 8]}).to_string();
    let mut tasks = Vec::new();
    for client in 0..clients {
        let (addr, names, body) = (server.addr, names.clone(), body.clone());
        tasks.push(tokio::spawn(async move {
            // A fixed pseudo-random order per client (no timing decides it).
            let mut state = 0x9e37_79b9_u32.wrapping_mul(client as u32 + 1);
            let mut answers = Vec::with_capacity(per_client);
            for _ in 0..per_client {
                state ^= state << 13;
                state ^= state >> 17;
                state ^= state << 5;
                let name = &names[state as usize % names.len()];
                let path = format!("/models/{name}/1/predict");
                let (status, bytes) =
                    common::request_raw(addr, "POST", &path, body.as_bytes()).await;
                answers.push((
                    name.clone(),
                    status,
                    String::from_utf8_lossy(&bytes).into_owned(),
                ));
            }
            answers
        }));
    }
    let mut answers = Vec::new();
    for task in tasks {
        answers.extend(task.await.unwrap());
    }
    done.store(true, std::sync::atomic::Ordering::Relaxed);
    let evicted_by_hand = evictor.await.unwrap();

    let refused: Vec<_> = answers
        .iter()
        .filter(|(_, status, _)| *status != 200)
        .collect();
    let cache = server.service.cache_status();
    eprintln!(
        "{} requests, {} refused; charge {charge} B, budget {budget} B; loads {}, evictions {} ({evicted_by_hand} by hand)",
        answers.len(),
        refused.len(),
        cache.loads,
        cache.evictions
    );
    assert!(
        refused.is_empty(),
        "{} of {} requests refused, e.g. {:?}",
        refused.len(),
        answers.len(),
        &refused[..refused.len().min(3)]
    );
    assert_eq!(answers.len(), clients * per_client);
    // The load did churn the cache, or this test proved nothing.
    assert!(cache.loads >= 12, "{cache:?}");
    assert!(
        evicted_by_hand >= 4 && cache.evictions > evicted_by_hand as u64,
        "{cache:?}"
    );
    assert!(cache.bytes_used <= budget);
    assert_eq!(cache.load_failures, 0);
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
