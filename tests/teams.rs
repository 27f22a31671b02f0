//! Many teams on one function (DESIGN section 8): who may call which model,
//! through every event source, and fair shares of the cache.

mod common;

use std::path::Path;

use base64::Engine as _;
use common::{fixture, repository};
use model_router::repository::{PublishRequest, Repository};
use model_router::{Config, ModelService};
use serde_json::{Value, json};

const FRAUD_ARN: &str = "arn:aws:iam::111111111111:role/fraud-scorer";
const SEARCH_ARN: &str = "arn:aws:iam::222222222222:role/search-api";
const NOBODY_ARN: &str = "arn:aws:iam::999999999999:role/nobody";

fn policy(alb_oidc: bool) -> String {
    json!({
        "teams": {
            "fraud": {"principals": ["arn:aws:iam::111111111111:role/fraud-*"], "jwt": {"team": "fraud"},
                      "models": ["fraud-*"], "cache_share": 0.5},
            "search": {"principals": [SEARCH_ARN], "jwt": {"team": "search"}, "models": ["ranker"], "cache_share": 0.3},
        },
        "alb_oidc": alb_oidc,
    })
    .to_string()
}

/// A repository with a fraud model, a search model, and a model the search team
/// owns through its manifest but that no team lists.
fn team_repository() -> tempfile::TempDir {
    let root = repository(&[("fraud-model", "1", "mlp.ort"), ("ranker", "1", "mlp.ort")]);
    Repository::open(root.path())
        .unwrap()
        .publish(&PublishRequest {
            name: "owned".into(),
            version: "1".into(),
            source: fixture("mlp.onnx"),
            team: Some("search".into()),
            description: None,
        })
        .unwrap();
    root
}

fn service(root: &Path, policy_path: &Path, cache_bytes: u64) -> (ModelService, tempfile::TempDir) {
    let staging = tempfile::tempdir().unwrap();
    let mut config = Config::for_repository(
        root.to_path_buf(),
        staging.path().to_path_buf(),
        cache_bytes,
    );
    config.access_policy = Some(policy_path.to_path_buf());
    config.alb_oidc_signer = Some(ALB_ARN.to_string());
    config.alb_oidc_keys_url = Some(key_server().url.clone());
    (ModelService::new(config).unwrap(), staging)
}

/// Who calls, in the terms of one event source.
#[derive(Clone, Copy)]
enum Who {
    Fraud,
    Search,
    Nobody,
}

impl Who {
    fn arn(self) -> &'static str {
        match self {
            Who::Fraud => FRAUD_ARN,
            Who::Search => SEARCH_ARN,
            Who::Nobody => NOBODY_ARN,
        }
    }
    fn team(self) -> &'static str {
        match self {
            Who::Fraud => "fraud",
            Who::Search => "search",
            Who::Nobody => "nobody",
        }
    }
}

/// The ALB of the tests, and the key it signs its OIDC tokens with.
const ALB_ARN: &str =
    "arn:aws:elasticloadbalancing:us-east-1:123456789012:loadbalancer/app/models/50dc6c495c0c9188";
const ALB_KID: &str = "5f0d7a3c-6b1e-4c2a-9d8e-0123456789ab";

fn alb_key() -> p256::ecdsa::SigningKey {
    p256::ecdsa::SigningKey::from_slice(&[7; 32]).unwrap()
}

/// The regional public-key endpoint, played on 127.0.0.1:0: `GET /<kid>`
/// answers the PEM of the ALB's key for [`ALB_KID`], 404 otherwise. One per
/// test binary; counts the keys it served, to show that keys are cached.
struct KeyServer {
    url: String,
    served: std::sync::atomic::AtomicUsize,
}

fn key_server() -> &'static KeyServer {
    static SERVER: std::sync::OnceLock<&'static KeyServer> = std::sync::OnceLock::new();
    SERVER.get_or_init(|| {
        use p256::pkcs8::EncodePublicKey as _;
        use std::io::{BufRead, Write};
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let server: &'static KeyServer = Box::leak(Box::new(KeyServer {
            url: format!("http://{}", listener.local_addr().unwrap()),
            served: Default::default(),
        }));
        let pem = alb_key()
            .verifying_key()
            .to_public_key_pem(p256::pkcs8::LineEnding::LF)
            .unwrap();
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let mut reader = std::io::BufReader::new(&stream);
                let mut request_line = String::new();
                let _ = reader.read_line(&mut request_line);
                let mut line = String::new();
                while reader.read_line(&mut line).is_ok_and(|n| n > 2) {
                    line.clear();
                }
                let (status, body) = if request_line.starts_with(&format!("GET /{ALB_KID} ")) {
                    server
                        .served
                        .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                    ("200 OK", pem.as_str())
                } else {
                    ("404 Not Found", "no such key")
                };
                let _ = write!(
                    &stream,
                    "HTTP/1.1 {status}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
            }
        });
        server
    })
}

/// The ALB's OIDC token as the ALB makes it: padded base64url segments,
/// `signer` and `exp` in the header, ES256 over `header.payload`.
fn signed_token(key: &p256::ecdsa::SigningKey, header: &Value, claims: &Value) -> String {
    use p256::ecdsa::signature::Signer as _;
    let padded = |bytes: &[u8]| base64::engine::general_purpose::URL_SAFE.encode(bytes);
    let signed = format!(
        "{}.{}",
        padded(header.to_string().as_bytes()),
        padded(claims.to_string().as_bytes())
    );
    let signature: p256::ecdsa::Signature = key.sign(signed.as_bytes());
    format!("{signed}.{}", padded(&signature.to_bytes()))
}

fn alb_header(exp: u64) -> Value {
    json!({"typ": "JWT", "kid": ALB_KID, "alg": "ES256", "iss": "https://idp.example.com",
           "client": "model-router", "signer": ALB_ARN, "exp": exp})
}

fn in_an_hour() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        + 3600
}

/// A good token of the ALB for a member of `team`.
fn oidc_token(team: &str) -> String {
    signed_token(
        &alb_key(),
        &alb_header(in_an_hour()),
        &json!({"sub": "user-1", "team": team, "email": "user-1@example.com"}),
    )
}

/// An event of `source` from its template in tests/data/teams, calling `model`
/// as `who`, optionally with forged identity headers and body fields.
fn event(source: &str, who: Who, model: &str, forged: bool) -> String {
    event_with(
        source,
        who,
        model,
        forged,
        json!({"features": [0.5, -1.25, 2.0, 0.75]}),
    )
}

fn event_with(source: &str, who: Who, model: &str, forged: bool, mut body: Value) -> String {
    let template = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("tests/data/teams/{source}.json")),
    )
    .unwrap();
    if forged {
        body["caller"] = json!(FRAUD_ARN);
        body["team"] = json!("fraud");
    }
    let text = template
        .replace("MODEL", model)
        .replace("CALLER_ARN", who.arn())
        .replace("CALLER_TEAM", who.team())
        .replace("OIDC_DATA", &oidc_token(who.team()))
        .replace(
            "\"BODY\"",
            &serde_json::to_string(&body.to_string()).unwrap(),
        );
    let mut event: Value = serde_json::from_str(&text).unwrap();
    if forged {
        // Everything a caller can set freely, claiming to be the fraud team.
        let headers = event["headers"].as_object_mut().unwrap();
        headers.insert("x-caller-arn".into(), json!(FRAUD_ARN));
        headers.insert("x-caller-claims".into(), json!(r#"{"team":"fraud"}"#));
        if source != "alb_oidc" {
            // (An ALB that authenticates overwrites this header itself, so
            // only other sources can be sent a forged one.)
            headers.insert("x-amzn-oidc-data".into(), json!(oidc_token("fraud")));
        }
        if let Some(multi) = event
            .get_mut("multiValueHeaders")
            .and_then(Value::as_object_mut)
        {
            multi.insert("x-caller-arn".into(), json!([FRAUD_ARN]));
        }
    }
    event.to_string()
}

async fn status_of(service: &ModelService, event: &str) -> (u16, Value) {
    let response = model_router::lambda::invoke(service, event).await.unwrap();
    let status = response["statusCode"].as_u64().unwrap() as u16;
    let body: Value = serde_json::from_str(response["body"].as_str().unwrap()).unwrap();
    (status, body)
}

const SOURCES: [&str; 4] = [
    "apigw_rest_iam",
    "apigw_http_iam",
    "function_url_iam",
    "apigw_http_jwt",
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_event_source_admits_its_team_and_refuses_others() {
    let root = team_repository();
    let dir = tempfile::tempdir().unwrap();
    let policy_path = dir.path().join("policy.json");
    std::fs::write(&policy_path, policy(true)).unwrap();
    let (service, _staging) = service(root.path(), &policy_path, 1 << 30);

    for source in SOURCES.into_iter().chain(["alb_oidc"]) {
        let cases = [
            (Who::Fraud, "fraud-model", false, 200),
            (Who::Search, "ranker", false, 200),
            (Who::Fraud, "ranker", false, 403),
            (Who::Search, "fraud-model", false, 403),
            (Who::Nobody, "fraud-model", false, 403),
            (Who::Nobody, "fraud-model", true, 403),
            (Who::Search, "fraud-model", true, 403),
            // A model's owner may always call it; others may not, and a refusal
            // looks the same whether or not the model exists.
            (Who::Search, "owned", false, 200),
            (Who::Fraud, "owned", false, 403),
            (Who::Fraud, "fraud-nonexistent", false, 404),
            (Who::Search, "nonexistent", false, 403),
        ];
        for (who, model, forged, want) in cases {
            let (status, body) = status_of(&service, &event(source, who, model, forged)).await;
            let context = format!(
                "{source}: {} calling {model} (forged: {forged})",
                who.team()
            );
            assert_eq!(status, want, "{context}: {body}");
            if want == 403 {
                assert_eq!(body["code"], "forbidden", "{context}");
                assert!(
                    !body["error"]
                        .as_str()
                        .unwrap()
                        .contains("not in the repository"),
                    "{context}: {body}"
                );
            }
            if want == 200 {
                assert_eq!(body["model"], model, "{context}");
            }
        }
    }
    // Nothing refused was ever loaded.
    let cached: Vec<String> = service
        .cache_status()
        .entries
        .into_iter()
        .map(|e| e.model)
        .collect();
    assert!(cached.iter().all(|m| m != "fraud-nonexistent/1"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn alb_headers_are_ignored_unless_the_policy_says_the_alb_authenticates() {
    let root = team_repository();
    let dir = tempfile::tempdir().unwrap();
    let policy_path = dir.path().join("policy.json");
    std::fs::write(&policy_path, policy(false)).unwrap();
    let (service, _staging) = service(root.path(), &policy_path, 1 << 30);
    let (status, body) = status_of(
        &service,
        &event("alb_oidc", Who::Fraud, "fraud-model", false),
    )
    .await;
    assert_forbidden(
        status,
        &body,
        "unauthenticated",
        "an ALB token the policy does not believe",
    );
}

/// A 403 `forbidden` whose message contains `why`.
fn assert_forbidden(status: u16, body: &Value, why: &str, context: &str) {
    assert_eq!(
        (status, body["code"].as_str()),
        (403, Some("forbidden")),
        "{context}: {body}"
    );
    assert!(
        body["error"].as_str().unwrap().contains(why),
        "{context}: {body}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn alb_tokens_must_be_signed_by_the_configured_alb_and_unexpired() {
    let root = team_repository();
    let dir = tempfile::tempdir().unwrap();
    let policy_path = dir.path().join("policy.json");
    std::fs::write(&policy_path, policy(true)).unwrap();
    let (service, _staging) = service(root.path(), &policy_path, 1 << 30);
    let fraud = json!({"sub": "user-1", "team": "fraud"});
    let with_token = |token: &str| {
        let mut event: Value =
            serde_json::from_str(&event("alb_oidc", Who::Fraud, "fraud-model", false)).unwrap();
        event["headers"]["x-amzn-oidc-data"] = json!(token);
        event.to_string()
    };
    let good = oidc_token("fraud");
    assert_eq!(status_of(&service, &with_token(&good)).await.0, 200);

    let padded = |v: &Value| base64::engine::general_purpose::URL_SAFE.encode(v.to_string());
    let mut unsigned_header = alb_header(in_an_hour());
    unsigned_header["alg"] = json!("none");
    let mut foreign_signer = alb_header(in_an_hour());
    foreign_signer["signer"] =
        json!("arn:aws:elasticloadbalancing:us-east-1:999999999999:loadbalancer/app/evil/1");
    let mut unknown_kid = alb_header(in_an_hour());
    unknown_kid["kid"] = json!("00000000-0000-0000-0000-000000000000");
    let foreign_key = p256::ecdsa::SigningKey::from_slice(&[9; 32]).unwrap();
    let (good_signed, good_signature) = good.rsplit_once('.').unwrap();
    let refused = [
        (
            "unsigned (alg none)",
            format!("{}.{}.", padded(&unsigned_header), padded(&fraud)),
            "ES256",
        ),
        (
            "claims without a signature",
            format!("{}.{}.", padded(&alb_header(in_an_hour())), padded(&fraud)),
            "signature",
        ),
        (
            "signed by a foreign key",
            signed_token(&foreign_key, &alb_header(in_an_hour()), &fraud),
            "does not verify",
        ),
        (
            "from a foreign ALB",
            signed_token(&alb_key(), &foreign_signer, &fraud),
            "not by the configured ALB",
        ),
        (
            "expired in 2001",
            signed_token(&alb_key(), &alb_header(978_307_200), &fraud),
            "expired",
        ),
        (
            "claims edited after signing",
            format!(
                "{}.{}.{good_signature}",
                good_signed.split_once('.').unwrap().0,
                padded(&json!({"sub": "user-1", "team": "fraud", "admin": true}))
            ),
            "does not verify",
        ),
        (
            "a key the endpoint does not have",
            signed_token(&alb_key(), &unknown_kid, &fraud),
            "could not be fetched",
        ),
        ("garbage", "garbage".to_string(), "malformed"),
    ];
    for (what, token, why) in refused {
        let (status, body) = status_of(&service, &with_token(&token)).await;
        assert_forbidden(status, &body, why, what);
    }
    // The good token still passes; its key came from the loopback endpoint.
    assert_eq!(status_of(&service, &with_token(&good)).await.0, 200);
    assert!(
        key_server()
            .served
            .load(std::sync::atomic::Ordering::SeqCst)
            >= 1
    );

    // Without ALB_OIDC_SIGNER, a policy that believes the ALB refuses its tokens.
    let staging = tempfile::tempdir().unwrap();
    let mut config = Config::for_repository(
        root.path().to_path_buf(),
        staging.path().to_path_buf(),
        1 << 30,
    );
    config.access_policy = Some(policy_path.clone());
    let unconfigured = ModelService::new(config).unwrap();
    let (status, body) = status_of(&unconfigured, &with_token(&good)).await;
    assert_forbidden(status, &body, "ALB_OIDC_SIGNER", "no ALB_OIDC_SIGNER");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_believes_identity_headers_only_in_trusted_mode() {
    let root = team_repository();
    let dir = tempfile::tempdir().unwrap();
    let policy_path = dir.path().join("policy.json");
    std::fs::write(&policy_path, policy(false)).unwrap();
    for trusted in [false, true] {
        let (service, _staging) = service(root.path(), &policy_path, 1 << 30);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let options = model_router::server::ServeOptions {
            trust_identity_headers: trusted,
            ..Default::default()
        };
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(model_router::server::serve_with(
            listener,
            service,
            options,
            async {
                let _ = stopped.await;
            },
        ));
        let body = r#"{"features": [1, 2, 3, 4]}"#;
        let request = |arn: &str| {
            format!(
                "POST /models/fraud-model/1/predict HTTP/1.1\r\nHost: x\r\nx-caller-arn: {arn}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            )
        };
        for (arn, want_trusted) in [(FRAUD_ARN, 200), (SEARCH_ARN, 403), (NOBODY_ARN, 403)] {
            let status = raw_status(addr, &request(arn)).await;
            assert_eq!(
                status,
                if trusted { want_trusted } else { 403 },
                "trusted={trusted} arn={arn}"
            );
        }
        let _ = stop.send(());
        server.await.unwrap().unwrap();
    }
}

async fn raw_status(addr: std::net::SocketAddr, request: &str) -> u16 {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).await.unwrap();
    response.split_whitespace().nth(1).unwrap().parse().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_malformed_policy_keeps_the_last_good_one_and_no_good_policy_refuses_everything() {
    let root = team_repository();
    let dir = tempfile::tempdir().unwrap();
    let policy_path = dir.path().join("policy.json");
    std::fs::write(&policy_path, policy(false)).unwrap();
    let (service, _staging) = service(root.path(), &policy_path, 1 << 30);
    let allowed = event("apigw_http_iam", Who::Fraud, "fraud-model", false);
    assert_eq!(status_of(&service, &allowed).await.0, 200);

    // Replaced whole (written beside it, then renamed), so that the reloader
    // cannot read a half-written file first: that is a malformed policy too,
    // but not the one this test is about.
    let replacement = dir.path().join("policy.json.new");
    std::fs::write(
        &replacement,
        r#"{"teams": {"fraud": {"principals": ["*"], "models": ["*"], "cache_share": 7}}}"#,
    )
    .unwrap();
    std::fs::rename(&replacement, &policy_path).unwrap();
    // The file is re-read off the request path, by a background thread.
    let waited = std::time::Instant::now();
    while !service
        .policy_status()
        .last_error
        .is_some_and(|e| e.contains("cache_share"))
        && waited.elapsed() < std::time::Duration::from_secs(5)
    {
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert_eq!(
        status_of(&service, &allowed).await.0,
        200,
        "the last good policy is still in force"
    );
    let forbidden = event("apigw_http_iam", Who::Nobody, "fraud-model", false);
    assert_eq!(
        status_of(&service, &forbidden).await.0,
        403,
        "the malformed policy (which allows everyone) did not take effect"
    );
    let status = service.policy_status();
    assert!(status.loaded);
    assert!(
        status
            .last_error
            .as_deref()
            .unwrap()
            .contains("cache_share"),
        "{status:?}"
    );
    let admin = model_router::lambda::invoke(&service, r#"{"action": "status"}"#)
        .await
        .unwrap();
    assert!(
        admin.to_string().contains("cache_share"),
        "status shows why the file on disk is not in force: {admin}"
    );

    // A process that never read a good policy refuses every request, clearly.
    let (fresh, _staging2) = self::service(root.path(), &policy_path, 1 << 30);
    let (status, body) = status_of(&fresh, &allowed).await;
    assert_eq!(
        (status, body["code"].as_str()),
        (503, Some("policy_unavailable")),
        "{body}"
    );
    assert!(
        body["error"].as_str().unwrap().contains("refused"),
        "{body}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_carry_the_team_dimension_and_bytes_per_team() {
    use model_router::lambda::Handler;
    use model_router::metrics::{Capture, Metrics};
    let root = team_repository();
    let dir = tempfile::tempdir().unwrap();
    let policy_path = dir.path().join("policy.json");
    std::fs::write(&policy_path, policy(false)).unwrap();
    let (service, _staging) = service(root.path(), &policy_path, 1 << 30);
    let capture = Capture::default();
    let handler = Handler::new(service, Metrics::new("ModelRouter", "fn", capture.clone()));
    let answer = handler
        .invoke(&event("apigw_http_iam", Who::Search, "owned", false))
        .await
        .unwrap();
    assert_eq!(answer["statusCode"], 200, "{answer}");
    let lines: Vec<Value> = capture
        .lines()
        .iter()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    // The request line rolls up by team: the manifest makes "search" the owner.
    let request = lines
        .iter()
        .find(|l| l["Requests"] == 1)
        .expect("a request line");
    assert_eq!(request["Team"], "search");
    let dimension_sets = &request["_aws"]["CloudWatchMetrics"][0]["Dimensions"];
    assert!(
        dimension_sets
            .as_array()
            .unwrap()
            .contains(&json!(["FunctionName", "Team"])),
        "{request}"
    );
    // The load wrote each team's bytes, dimensioned by team.
    let usage: Vec<&Value> = lines
        .iter()
        .filter(|l| l["Team"].is_string() && l.get("ShareBytes").is_some())
        .collect();
    let search = usage
        .iter()
        .find(|l| l["Team"] == "search")
        .expect("search usage");
    assert!(search["CacheBytesUsed"].as_u64().unwrap() > 0);
    assert_eq!(
        search["ShareBytes"].as_u64().unwrap(),
        ((1u64 << 30) as f64 * 0.3) as u64
    );
    assert_eq!(
        search["_aws"]["CloudWatchMetrics"][0]["Dimensions"],
        json!([["FunctionName", "Team"]])
    );
    let fraud = usage
        .iter()
        .find(|l| l["Team"] == "fraud")
        .expect("fraud usage, with a share and nothing cached");
    assert_eq!(fraud["CacheBytesUsed"], 0);
}
