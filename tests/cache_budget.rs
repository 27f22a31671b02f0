//! The byte budget under a real workload. In a file of its own so that no other
//! test's allocations run in this process while models are measured (a model's
//! charge includes the anonymous memory its session creation allocated).

mod common;

use common::{TestServer, check_fixture, repository};
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_models_cycle_through_a_budget_that_holds_two() {
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
