//! The README's route table is the list of the server's routes that the
//! deployment follows (scripts/check-infra.sh checks that both HTTP APIs of
//! infra/template.yaml route exactly these). Each route in it must answer 200
//! on the real server, and a path next to them must not: so the table and the
//! router cannot drift apart unnoticed.

mod common;

use common::{TestServer, repository};
use serde_json::json;

/// (method, path) of every row of README.md's "Requests" table, with an
/// optional `[...]` part both left out and kept.
fn readme_routes() -> Vec<(String, String)> {
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
    let section = readme
        .split("\n## Requests")
        .nth(1)
        .and_then(|s| s.split("\n## ").next())
        .expect("a Requests section");
    let mut routes = Vec::new();
    for line in section.lines().filter(|l| l.starts_with("| `")) {
        let cell = line.split('|').nth(1).unwrap();
        for quoted in cell.split('`').skip(1).step_by(2) {
            let Some((method, path)) = quoted.split_once(' ') else {
                continue;
            };
            match (path.find('['), path.find(']')) {
                (Some(open), Some(close)) => {
                    routes.push((
                        method.to_string(),
                        format!("{}{}", &path[..open], &path[close + 1..]),
                    ));
                    routes.push((
                        method.to_string(),
                        format!(
                            "{}{}{}",
                            &path[..open],
                            &path[open + 1..close],
                            &path[close + 1..]
                        ),
                    ));
                }
                _ => routes.push((method.to_string(), path.to_string())),
            }
        }
    }
    routes
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_route_in_the_readme_answers_on_the_real_server() {
    let routes = readme_routes();
    assert!(routes.len() >= 11, "{routes:?}");
    let root = repository(&[("mlp", "1", "mlp.ort")]);
    let server = TestServer::start(root.path(), 1 << 30).await;
    let features = json!({"features": [0.5, -1.25, 2.0, 0.75]}).to_string();
    let infer = json!({"inputs": [{"name": "features", "shape": [1, 4], "datatype": "FP32",
                                   "data": [0.5, -1.25, 2.0, 0.75]}]})
    .to_string();
    for (method, template) in &routes {
        let path = template.replace("{name}", "mlp").replace("{version}", "1");
        let body = match (method.as_str(), path.ends_with("/predict")) {
            ("POST", true) => features.as_str(),
            ("POST", false) => infer.as_str(),
            _ => "",
        };
        let (status, answer) = server.request(method, &path, body).await;
        assert_eq!(status, 200, "{method} {template} as {path}: {answer}");
    }
    // A path the table does not list is not a route.
    let (status, answer) = server
        .request("GET", "/v2/models/mlp/versions/1/extra", "")
        .await;
    assert_eq!(
        (status, answer["code"].as_str()),
        (404, Some("route_not_found")),
        "{answer}"
    );
}
