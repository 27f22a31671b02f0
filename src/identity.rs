//! Who is calling: taken only from what AWS authenticated (the Lambda event's
//! request context), never from a header or body a caller sets, except the
//! ALB's OIDC token when the policy says the ALB authenticates (and then only
//! once its ES256 signature, signer and expiry are verified, [`AlbVerifier`]),
//! and the trusted-header mode of `serve`, which must be switched on explicitly.

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;
use std::time::Duration;

use base64::Engine as _;
use bytes::Bytes;
use lambda_http::request::RequestContext;
use p256::ecdsa::signature::Verifier as _;
use p256::ecdsa::{Signature, VerifyingKey};
use p256::pkcs8::DecodePublicKey as _;
use serde::Serialize;

/// The authenticated caller of one request.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Caller {
    /// The IAM principal ARN AWS verified (SigV4 through API Gateway or a Function URL).
    pub arn: Option<String>,
    /// Verified JWT claims (an HTTP API JWT authorizer, or the ALB's OIDC token).
    pub claims: BTreeMap<String, String>,
    /// Where the identity came from, for logs.
    pub source: &'static str,
}

/// Marks a request of `serve` in trusted-header mode: a proxy in front
/// authenticated the caller and set [`TRUSTED_ARN_HEADER`] / [`TRUSTED_CLAIMS_HEADER`].
#[derive(Debug, Clone, Copy)]
pub struct TrustedHeaders;

/// The principal ARN, in trusted-header mode.
pub const TRUSTED_ARN_HEADER: &str = "x-caller-arn";
/// A JSON object of claims, in trusted-header mode.
pub const TRUSTED_CLAIMS_HEADER: &str = "x-caller-claims";

/// What the ALB's OIDC header means for this request, from the policy
/// (`alb_oidc`) and the configuration (`ALB_OIDC_SIGNER`).
#[derive(Debug, Clone, Copy)]
pub enum AlbOidc<'a> {
    /// The policy does not say the ALB authenticates: the header is ignored.
    Ignored,
    /// The policy says it does: tokens are verified by this verifier.
    Verified(&'a AlbVerifier),
    /// The policy says it does, but there is no usable ALB ARN to verify
    /// against (the reason): every token is refused.
    Unconfigured(&'a str),
}

impl Caller {
    /// The identity of `request`. An ALB request whose OIDC token is present
    /// but does not verify is an error (403), not an unauthenticated caller.
    pub async fn of(
        request: &http::Request<Bytes>,
        alb: AlbOidc<'_>,
    ) -> Result<Caller, AlbTokenError> {
        let headers = request.headers();
        Ok(match request.extensions().get::<RequestContext>() {
            Some(RequestContext::ApiGatewayV1(context)) => Caller {
                arn: context.identity.user_arn.clone(),
                claims: BTreeMap::new(),
                source: "apigw_rest_iam",
            },
            Some(RequestContext::ApiGatewayV2(context)) => {
                let authorizer = context.authorizer.as_ref();
                Caller {
                    arn: authorizer
                        .and_then(|a| a.iam.as_ref())
                        .and_then(|iam| iam.user_arn.clone()),
                    claims: authorizer
                        .and_then(|a| a.jwt.as_ref())
                        .map(|jwt| {
                            jwt.claims
                                .iter()
                                .map(|(k, v)| (k.clone(), v.clone()))
                                .collect()
                        })
                        .unwrap_or_default(),
                    source: "apigw_http_or_function_url",
                }
            }
            Some(RequestContext::Alb(_)) => match (alb, headers.get(ALB_OIDC_HEADER)) {
                // Not believed, or no token (the listener rule did not
                // authenticate this request, e.g. a health check): the policy
                // decides what an unauthenticated caller may do.
                (AlbOidc::Ignored, _) | (_, None) => Caller {
                    source: "unauthenticated",
                    ..Caller::default()
                },
                (AlbOidc::Unconfigured(why), Some(_)) => {
                    return Err(AlbTokenError::Unconfigured(why.to_string()));
                }
                (AlbOidc::Verified(verifier), Some(value)) => {
                    let token = value
                        .to_str()
                        .map_err(|_| AlbTokenError::Malformed("not ASCII"))?;
                    Caller {
                        arn: None,
                        claims: verifier.verify(token, unix_now()).await?,
                        source: "alb_oidc",
                    }
                }
            },
            Some(_) => Caller {
                source: "unauthenticated",
                ..Caller::default()
            },
            None if request.extensions().get::<TrustedHeaders>().is_some() => Caller {
                arn: headers
                    .get(TRUSTED_ARN_HEADER)
                    .and_then(|v| v.to_str().ok())
                    .map(str::to_string),
                claims: headers
                    .get(TRUSTED_CLAIMS_HEADER)
                    .and_then(|v| {
                        serde_json::from_slice::<serde_json::Map<String, serde_json::Value>>(
                            v.as_bytes(),
                        )
                        .ok()
                    })
                    .map(claims_from_json)
                    .unwrap_or_default(),
                source: "trusted_headers",
            },
            None => Caller {
                source: "unauthenticated",
                ..Caller::default()
            },
        })
    }

    /// For messages: the ARN, or the claims, or "an unauthenticated caller".
    pub fn describe(&self) -> String {
        match (&self.arn, self.claims.is_empty()) {
            (Some(arn), _) => arn.clone(),
            (None, false) => format!("a caller with claims {:?}", self.claims),
            (None, true) => "an unauthenticated caller".to_string(),
        }
    }
}

/// The header in which an ALB that authenticates (listener rule
/// `authenticate-oidc`) passes the user's claims, as a JWT it signed.
pub const ALB_OIDC_HEADER: &str = "x-amzn-oidc-data";

/// Why ALB tokens cannot be verified when `ALB_OIDC_SIGNER` is not set.
pub const ALB_SIGNER_UNSET: &str = "ALB_OIDC_SIGNER (the load balancer's ARN) is not set";

/// Why an ALB OIDC token was refused (each answers 403 `forbidden`).
#[derive(Debug, Clone, thiserror::Error)]
pub enum AlbTokenError {
    #[error("the ALB OIDC token ({ALB_OIDC_HEADER}) is malformed: {0}")]
    Malformed(&'static str),
    #[error("the ALB OIDC token is signed with {0:?}; the ALB signs with ES256")]
    Algorithm(String),
    #[error(
        "the ALB OIDC token was signed by {got:?}, not by the configured ALB {want:?} (ALB_OIDC_SIGNER)"
    )]
    Signer { got: String, want: String },
    #[error("the ALB OIDC token expired at {exp} (now {now}, seconds since 1970)")]
    Expired { exp: u64, now: u64 },
    #[error("the ALB OIDC token's signature does not verify with the ALB's key {kid:?}")]
    Signature { kid: String },
    #[error("the ALB's public key {kid:?} could not be fetched from {url}: {why}")]
    Key {
        kid: String,
        url: String,
        why: String,
    },
    #[error(
        "the access policy says the ALB authenticates (\"alb_oidc\": true), but its tokens cannot be verified: {0}"
    )]
    Unconfigured(String),
}

/// Verifies the ALB's OIDC tokens as AWS documents ("Authenticate users using
/// an Application Load Balancer", user claims encoding and signature
/// verification): an ES256 (ECDSA P-256, SHA-256) signature over
/// `header.payload` exactly as sent (the ALB pads its base64url segments, which
/// RFC 7515 does not allow, so the text is never re-encoded), by the public key
/// that the header's `kid` names at the regional endpoint
/// `https://public-keys.auth.elb.REGION.amazonaws.com/KID` (a PEM); the
/// header's `signer` must be the configured ALB's ARN, and its `exp` (the
/// payload's, when the header has none) in the future.
///
/// Keys are cached by `kid` for the life of the process (the endpoint serves
/// one immutable key per `kid`); at most [`AlbVerifier::MAX_KEYS`] are kept.
/// Concurrent first uses of one `kid` may each fetch it; the results are equal.
/// A token whose `signer`, `alg` or `exp` is wrong is refused before any fetch.
#[derive(Debug)]
pub struct AlbVerifier {
    signer: String,
    keys_url: String,
    agent: ureq::Agent,
    /// kid -> key. A std Mutex: held only to look up or insert, never across a fetch.
    keys: Mutex<HashMap<String, VerifyingKey>>,
}

impl AlbVerifier {
    /// Keys kept before the cache is emptied (ALBs rotate keys rarely; this
    /// bounds the memory of a stream of different `kid`s).
    pub const MAX_KEYS: usize = 64;

    /// A verifier for tokens signed by the ALB `signer` (its ARN), fetching keys
    /// from `keys_url` (default: the regional endpoint of the ARN's region).
    ///
    /// ```
    /// use model_router::identity::AlbVerifier;
    /// let arn = "arn:aws:elasticloadbalancing:eu-west-1:123456789012:loadbalancer/app/models/50dc6c495c0c9188";
    /// let verifier = AlbVerifier::new(arn, None).unwrap();
    /// assert_eq!(verifier.keys_url(), "https://public-keys.auth.elb.eu-west-1.amazonaws.com");
    /// assert!(AlbVerifier::new("not-an-arn", None).is_err());
    /// ```
    pub fn new(signer: &str, keys_url: Option<&str>) -> Result<AlbVerifier, String> {
        let keys_url = match keys_url {
            Some(url) => url.trim_end_matches('/').to_string(),
            None => default_keys_url(signer)?,
        };
        Ok(AlbVerifier {
            signer: signer.to_string(),
            keys_url,
            agent: ureq::AgentBuilder::new()
                .timeout(Duration::from_secs(5))
                .redirects(0)
                .build(),
            keys: Mutex::new(HashMap::new()),
        })
    }

    /// Where keys are fetched from (`<keys_url>/<kid>`).
    pub fn keys_url(&self) -> &str {
        &self.keys_url
    }

    /// The verified claims of `token` at time `now` (seconds since 1970).
    pub async fn verify(
        &self,
        token: &str,
        now: u64,
    ) -> Result<BTreeMap<String, String>, AlbTokenError> {
        let mut parts = token.split('.');
        let (Some(header_b64), Some(payload_b64), Some(signature_b64), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(AlbTokenError::Malformed("not three dot-separated segments"));
        };
        let header: serde_json::Map<String, serde_json::Value> = decode_json(header_b64)
            .ok_or(AlbTokenError::Malformed("the header is not base64url JSON"))?;
        let payload: serde_json::Map<String, serde_json::Value> = decode_json(payload_b64).ok_or(
            AlbTokenError::Malformed("the payload is not base64url JSON"),
        )?;
        let text = |name: &str| header.get(name).and_then(|v| v.as_str()).unwrap_or("");
        let alg = text("alg");
        if alg != "ES256" {
            return Err(AlbTokenError::Algorithm(alg.to_string()));
        }
        let signer = text("signer");
        if signer != self.signer {
            return Err(AlbTokenError::Signer {
                got: signer.to_string(),
                want: self.signer.clone(),
            });
        }
        let exp = header
            .get("exp")
            .or_else(|| payload.get("exp"))
            .and_then(serde_json::Value::as_u64)
            .ok_or(AlbTokenError::Malformed("no numeric exp"))?;
        if now >= exp {
            return Err(AlbTokenError::Expired { exp, now });
        }
        let kid = text("kid");
        // The kid becomes a URL path segment: only what AWS's key ids are made of.
        if kid.is_empty()
            || kid.len() > 128
            || !kid.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
        {
            return Err(AlbTokenError::Malformed("the kid is not a key id"));
        }
        let signature = lenient_base64url(signature_b64)
            .and_then(|bytes| Signature::from_slice(&bytes).ok())
            .ok_or(AlbTokenError::Malformed(
                "the signature is not 64 bytes of base64url",
            ))?;
        let key = self.key(kid).await?;
        let signed = &token[..header_b64.len() + 1 + payload_b64.len()];
        key.verify(signed.as_bytes(), &signature)
            .map_err(|_| AlbTokenError::Signature {
                kid: kid.to_string(),
            })?;
        Ok(claims_from_json(payload))
    }

    async fn key(&self, kid: &str) -> Result<VerifyingKey, AlbTokenError> {
        if let Some(key) = self.lock_keys().get(kid) {
            return Ok(*key);
        }
        let url = format!("{}/{kid}", self.keys_url);
        let agent = self.agent.clone();
        let fetch_url = url.clone();
        // ureq blocks: off the async workers.
        let fetched = tokio::task::spawn_blocking(move || -> Result<VerifyingKey, String> {
            let pem = agent
                .get(&fetch_url)
                .call()
                .map_err(|e| e.to_string())?
                .into_string()
                .map_err(|e| e.to_string())?;
            VerifyingKey::from_public_key_pem(pem.trim())
                .map_err(|e| format!("not a P-256 public key in PEM: {e}"))
        })
        .await
        .map_err(|e| e.to_string())
        .and_then(|r| r);
        let key = fetched.map_err(|why| AlbTokenError::Key {
            kid: kid.to_string(),
            url,
            why,
        })?;
        let mut keys = self.lock_keys();
        if keys.len() >= Self::MAX_KEYS {
            keys.clear();
        }
        keys.insert(kid.to_string(), key);
        Ok(key)
    }

    fn lock_keys(&self) -> std::sync::MutexGuard<'_, HashMap<String, VerifyingKey>> {
        // Nothing panics while it is held; a poisoned map is still whole.
        self.keys.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// `https://public-keys.auth.elb.REGION.amazonaws.com` for the ALB ARN
/// `arn:aws:elasticloadbalancing:REGION:ACCOUNT:loadbalancer/app/NAME/ID`.
fn default_keys_url(signer: &str) -> Result<String, String> {
    let fields: Vec<&str> = signer.split(':').collect();
    match fields.as_slice() {
        ["arn", "aws", "elasticloadbalancing", region, _, resource]
            if !region.is_empty() && resource.starts_with("loadbalancer/app/") =>
        {
            Ok(format!(
                "https://public-keys.auth.elb.{region}.amazonaws.com"
            ))
        }
        _ => Err(format!(
            "ALB_OIDC_SIGNER {signer:?} is not an Application Load Balancer ARN of the aws partition \
             (arn:aws:elasticloadbalancing:REGION:ACCOUNT:loadbalancer/app/NAME/ID); \
             for other partitions set ALB_OIDC_KEYS_URL to the region's key endpoint"
        )),
    }
}

/// base64url with or without padding (the ALB pads; RFC 7515 does not).
fn lenient_base64url(text: &str) -> Option<Vec<u8>> {
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(text.trim_end_matches('='))
        .ok()
}

fn decode_json<T: serde::de::DeserializeOwned>(segment: &str) -> Option<T> {
    lenient_base64url(segment).and_then(|bytes| serde_json::from_slice(&bytes).ok())
}

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn claims_from_json(
    claims: serde_json::Map<String, serde_json::Value>,
) -> BTreeMap<String, String> {
    claims
        .into_iter()
        .map(|(k, v)| match v {
            serde_json::Value::String(s) => (k, s),
            other => (k, other.to_string()),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use p256::ecdsa::SigningKey;
    use p256::ecdsa::signature::Signer as _;

    const ALB: &str = "arn:aws:elasticloadbalancing:us-east-1:123456789012:loadbalancer/app/models/50dc6c495c0c9188";

    /// A token shaped like the ALB's: padded base64url segments, signer and
    /// exp in the header, signed by `key`.
    fn token(key: &SigningKey, header: serde_json::Value, payload: serde_json::Value) -> String {
        let padded =
            |v: &serde_json::Value| base64::engine::general_purpose::URL_SAFE.encode(v.to_string());
        let signed = format!("{}.{}", padded(&header), padded(&payload));
        let signature: Signature = key.sign(signed.as_bytes());
        format!("{signed}.{}", padded_bytes(&signature.to_bytes()))
    }

    fn padded_bytes(bytes: &[u8]) -> String {
        base64::engine::general_purpose::URL_SAFE.encode(bytes)
    }

    /// A verifier that already holds `key` under kid "k1" (no fetch).
    fn verifier_with(key: &SigningKey) -> AlbVerifier {
        let verifier = AlbVerifier::new(ALB, Some("http://127.0.0.1:9")).unwrap();
        verifier
            .lock_keys()
            .insert("k1".into(), *key.verifying_key());
        verifier
    }

    fn header(exp: u64) -> serde_json::Value {
        serde_json::json!({"alg": "ES256", "kid": "k1", "signer": ALB, "iss": "https://idp", "client": "c", "exp": exp})
    }

    #[tokio::test]
    async fn verifies_padded_es256_tokens_and_refuses_everything_else() {
        let alb_key = SigningKey::from_slice(&[7; 32]).unwrap();
        let other_key = SigningKey::from_slice(&[9; 32]).unwrap();
        let verifier = verifier_with(&alb_key);
        let payload = serde_json::json!({"sub": "u1", "team": "fraud"});
        let good = token(&alb_key, header(2_000), payload.clone());
        assert!(good.contains('='), "the fixture pads like the ALB: {good}");
        let claims = verifier.verify(&good, 1_000).await.unwrap();
        assert_eq!(claims.get("team").map(String::as_str), Some("fraud"));

        let refused = |token: String, now: u64| {
            let verifier = &verifier;
            async move { verifier.verify(&token, now).await.unwrap_err() }
        };
        assert!(matches!(
            refused(good.clone(), 2_000).await,
            AlbTokenError::Expired { .. }
        ));
        assert!(matches!(
            refused(token(&other_key, header(2_000), payload.clone()), 1_000).await,
            AlbTokenError::Signature { .. }
        ));
        let mut foreign = header(2_000);
        foreign["signer"] =
            "arn:aws:elasticloadbalancing:us-east-1:999999999999:loadbalancer/app/x/1".into();
        assert!(matches!(
            refused(token(&alb_key, foreign, payload.clone()), 1_000).await,
            AlbTokenError::Signer { .. }
        ));
        // Claims edited after signing.
        let (signed, signature) = good.rsplit_once('.').unwrap();
        let (head, _) = signed.split_once('.').unwrap();
        let edited =
            base64::engine::general_purpose::URL_SAFE.encode(r#"{"sub":"u1","team":"search"}"#);
        assert!(matches!(
            refused(format!("{head}.{edited}.{signature}"), 1_000).await,
            AlbTokenError::Signature { .. }
        ));
        // Unsigned ("alg": "none") and malformed tokens.
        let mut none = header(2_000);
        none["alg"] = "none".into();
        let unsigned = format!(
            "{}.{}.",
            padded_bytes(none.to_string().as_bytes()),
            padded_bytes(payload.to_string().as_bytes())
        );
        assert!(matches!(
            refused(unsigned, 1_000).await,
            AlbTokenError::Algorithm(_)
        ));
        assert!(matches!(
            refused("a.b".into(), 1_000).await,
            AlbTokenError::Malformed(_)
        ));
        let mut traversal = header(2_000);
        traversal["kid"] = "../../etc/passwd".into();
        assert!(matches!(
            refused(token(&alb_key, traversal, payload), 1_000).await,
            AlbTokenError::Malformed(_)
        ));
    }

    #[tokio::test]
    async fn an_unreachable_key_endpoint_refuses_the_token() {
        let key = SigningKey::from_slice(&[7; 32]).unwrap();
        // 127.0.0.1:9 (discard): nothing listens; the fetch fails fast.
        let verifier = AlbVerifier::new(ALB, Some("http://127.0.0.1:9/")).unwrap();
        let mut unknown = header(2_000);
        unknown["kid"] = "k2".into();
        let error = verifier
            .verify(&token(&key, unknown, serde_json::json!({})), 1_000)
            .await
            .unwrap_err();
        assert!(
            matches!(&error, AlbTokenError::Key { url, .. } if url == "http://127.0.0.1:9/k2"),
            "{error}"
        );
    }

    #[tokio::test]
    async fn headers_mean_nothing_without_trusted_mode() {
        let request = http::Request::builder()
            .header(TRUSTED_ARN_HEADER, "arn:aws:iam::1:role/admin")
            .header(ALB_OIDC_HEADER, "a.b.c")
            .body(Bytes::new())
            .unwrap();
        assert_eq!(
            Caller::of(&request, AlbOidc::Unconfigured("no ALB"))
                .await
                .unwrap(),
            Caller {
                source: "unauthenticated",
                ..Caller::default()
            }
        );
        let mut trusted = request;
        trusted.extensions_mut().insert(TrustedHeaders);
        assert_eq!(
            Caller::of(&trusted, AlbOidc::Ignored)
                .await
                .unwrap()
                .arn
                .as_deref(),
            Some("arn:aws:iam::1:role/admin")
        );
    }
}
