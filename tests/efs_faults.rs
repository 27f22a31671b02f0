//! The load path against a repository on the EFS-like filesystem
//! (tests/support/efs_sim.rs, a real FUSE mount with NFS-like latency and
//! injected faults), through the real server: an I/O error, a truncation, a
//! rewrite or a vanishing file mid-read never crashes the process (the file is
//! read, never mapped, so no SIGBUS), never caches or stages anything, and
//! clears with the fault; a hanging open or read answers 503 `load_timeout`
//! while other models keep answering; concurrent first requests read the file
//! once. Skipped, with the reason, where FUSE cannot be mounted (never under
//! CI: scripts/test.sh sets it up).

mod common;
#[path = "support/efs_sim.rs"]
mod efs_sim;

use std::time::{Duration, Instant};

use common::{TestServer, repository};
use efs_sim::{EfsSim, Fault, Options};
use model_router::Config;

const MLP: &str = "mlp/1/model.ort";
const MLP_ROW: &str = r#"{"features": [0.5, -1.25, 2.0, 0.75]}"#;
const IRIS_ROW: &str = r#"{"features": [5.1, 3.5, 1.4, 0.2]}"#;

/// A fresh repository (faults damage the source), mounted with `latency` per
/// operation, and a server whose MODEL_ROOT is the mount.
struct Setup {
    server: TestServer,
    sim: EfsSim,
    _mount: tempfile::TempDir,
    _source: tempfile::TempDir,
}

async fn setup(test: &str, latency: Duration, load_timeout: Duration) -> Option<Setup> {
    if !efs_sim::usable_or_skip(test) {
        return None;
    }
    let source = repository(&[("mlp", "1", "mlp.ort"), ("iris", "1", "iris_logreg.onnx")]);
    let mount = tempfile::tempdir().unwrap();
    let sim = EfsSim::mount(
        source.path(),
        mount.path(),
        Options {
            latency,
            bytes_per_sec: Some(200_000_000),
            ..Options::default()
        },
    )
    .expect("mounting the EFS-like filesystem");
    let staging = tempfile::tempdir().unwrap();
    let mut config = Config::for_repository(
        mount.path().to_path_buf(),
        staging.path().to_path_buf(),
        1 << 30,
    );
    config.load_timeout = load_timeout;
    let server = TestServer::with_config(config, staging).await;
    Some(Setup {
        server,
        sim,
        _mount: mount,
        _source: source,
    })
}

fn model_size(setup: &Setup) -> u64 {
    std::fs::metadata(setup.sim.path(MLP)).unwrap().len()
}

/// Nothing of `mlp/1` is in memory, staged, or waiting to be staged.
fn assert_nothing_kept(setup: &Setup, context: &str) {
    let service = &setup.server.service;
    assert!(
        !service.is_cached(&model_router::repository::ModelKey::new("mlp", "1").unwrap()),
        "{context}: nothing cached"
    );
    assert!(service.wait_for_staging(Duration::from_secs(10)));
    let stats = service.staging_stats();
    assert_eq!(
        (stats.files, stats.pending_writes),
        (0, 0),
        "{context}: nothing staged: {stats:?}"
    );
}

async fn predict_mlp(server: &TestServer) -> (u16, serde_json::Value) {
    server
        .request("POST", "/models/mlp/1/predict", MLP_ROW)
        .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_io_error_mid_read_is_503_keeps_nothing_and_clears_with_the_fault() {
    let Some(setup) = setup("eio", Duration::from_millis(1), Duration::from_secs(30)).await else {
        return;
    };
    setup
        .sim
        .set_fault(MLP, Fault::EioAt(model_size(&setup) / 2));
    let (status, body) = predict_mlp(&setup.server).await;
    assert_eq!(
        (status, body["code"].as_str()),
        (503, Some("repository_unavailable")),
        "{body}"
    );
    assert_nothing_kept(&setup, "after EIO");
    setup.sim.clear_faults();
    let (status, body) = predict_mlp(&setup.server).await;
    assert_eq!(status, 200, "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_truncated_rewritten_or_removed_mid_read_is_refused_never_a_crash() {
    for (name, fault_at) in [
        ("truncated", Fault::TruncateAt as fn(u64) -> Fault),
        ("rewritten", Fault::RewriteAt),
        ("vanished", Fault::VanishAt),
    ] {
        let Some(setup) = setup(name, Duration::from_millis(1), Duration::from_secs(30)).await
        else {
            return;
        };
        setup.sim.set_fault(MLP, fault_at(model_size(&setup) / 2));
        let (status, body) = predict_mlp(&setup.server).await;
        let code = body["code"].as_str().unwrap_or_default();
        assert!(
            matches!(
                (status, code),
                (503, "repository_unavailable") | (500, "checksum_mismatch")
            ),
            "{name}: {status} {body}"
        );
        eprintln!("{name}: {status} {code}");
        assert_nothing_kept(&setup, name);
        // The process is alive and serves every other model.
        let (status, body) = setup
            .server
            .request("POST", "/models/iris/1/predict", IRIS_ROW)
            .await;
        assert_eq!(status, 200, "{name}: {body}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hanging_read_or_open_answers_503_in_time_while_other_models_answer() {
    for (name, fault) in [
        ("read", Fault::HangRead(Duration::from_secs(4))),
        ("open", Fault::HangOpen(Duration::from_secs(4))),
    ] {
        let Some(setup) = setup(name, Duration::ZERO, Duration::from_millis(500)).await else {
            return;
        };
        setup.sim.set_fault(MLP, fault);
        let started = Instant::now();
        let (status, body) = predict_mlp(&setup.server).await;
        assert_eq!(
            (status, body["code"].as_str()),
            (503, Some("load_timeout")),
            "{name}: {body}"
        );
        assert!(
            started.elapsed() < Duration::from_secs(4),
            "{name}: answered before the hang ended"
        );
        // Meanwhile another model loads and answers.
        let (status, body) = setup
            .server
            .request("POST", "/models/iris/1/predict", IRIS_ROW)
            .await;
        assert_eq!(status, 200, "{name}: {body}");
        // A second request joins the load still waiting: it reads nothing more.
        let (status, _) = predict_mlp(&setup.server).await;
        assert_eq!(status, 503, "{name}");
        assert_eq!(
            setup.sim.stats(MLP).opens,
            1,
            "{name}: one open for both requests"
        );
        // Once the hang ends, the load that went on in the background is done.
        setup.sim.clear_faults();
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let (status, body) = predict_mlp(&setup.server).await;
            if status == 200 {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "{name}: never recovered: {status} {body}"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_first_requests_through_the_slow_mount_read_the_file_once() {
    let Some(setup) = setup("once", Duration::from_millis(5), Duration::from_secs(30)).await else {
        return;
    };
    let size = model_size(&setup);
    setup.sim.reset_stats();
    let answers = futures_join(&setup.server, 8).await;
    assert!(answers.iter().all(|&status| status == 200), "{answers:?}");
    let stats = setup.sim.stats(MLP);
    assert_eq!(stats.opens, 1, "{stats:?}");
    assert_eq!(stats.bytes_read, size, "every byte read once: {stats:?}");
    assert_eq!(setup.server.service.staging_stats().hashes, 1);
}

/// `count` concurrent first requests for mlp/1; their statuses.
async fn futures_join(server: &TestServer, count: usize) -> Vec<u16> {
    let mut tasks = Vec::new();
    for _ in 0..count {
        let addr = server.addr;
        tasks.push(tokio::spawn(async move {
            common::request_raw(addr, "POST", "/models/mlp/1/predict", MLP_ROW.as_bytes())
                .await
                .0
        }));
    }
    let mut statuses = Vec::new();
    for task in tasks {
        statuses.push(task.await.unwrap());
    }
    statuses
}
