//! Who is calling: taken only from what AWS authenticated (the Lambda event's
//! request context), never from a header or body a caller sets, except the
//! ALB's OIDC headers when the policy says the ALB authenticates, and the
//! trusted-header mode of `serve`, which must be switched on explicitly.

use std::collections::BTreeMap;

use base64::Engine as _;
use bytes::Bytes;
use lambda_http::request::RequestContext;
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

impl Caller {
    /// The identity of `request`. `trust_alb_oidc` comes from the policy.
    pub fn of(request: &http::Request<Bytes>, trust_alb_oidc: bool) -> Caller {
        let headers = request.headers();
        match request.extensions().get::<RequestContext>() {
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
            Some(RequestContext::Alb(_)) if trust_alb_oidc => Caller {
                arn: None,
                claims: headers
                    .get("x-amzn-oidc-data")
                    .and_then(|v| v.to_str().ok())
                    .map(jwt_payload_claims)
                    .unwrap_or_default(),
                source: "alb_oidc",
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
        }
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

/// The claims of a JWT's payload. The ALB signed it and overwrote the header,
/// which is why it is only read when the policy says the ALB authenticates.
fn jwt_payload_claims(token: &str) -> BTreeMap<String, String> {
    token
        .split('.')
        .nth(1)
        .and_then(|payload| {
            base64::engine::general_purpose::URL_SAFE_NO_PAD
                .decode(payload.trim_end_matches('='))
                .ok()
        })
        .and_then(|bytes| serde_json::from_slice(&bytes).ok())
        .map(claims_from_json)
        .unwrap_or_default()
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

    #[test]
    fn reads_the_alb_oidc_token_payload() {
        let payload = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .encode(r#"{"sub":"u1","team":"fraud","exp":1}"#);
        let claims = jwt_payload_claims(&format!("eyJhbGciOiJFUzI1NiJ9.{payload}.sig"));
        assert_eq!(claims.get("team").map(String::as_str), Some("fraud"));
        assert_eq!(claims.get("exp").map(String::as_str), Some("1"));
        assert!(jwt_payload_claims("garbage").is_empty());
    }

    #[test]
    fn headers_mean_nothing_without_trusted_mode() {
        let request = http::Request::builder()
            .header(TRUSTED_ARN_HEADER, "arn:aws:iam::1:role/admin")
            .header("x-amzn-oidc-data", "a.b.c")
            .body(Bytes::new())
            .unwrap();
        assert_eq!(
            Caller::of(&request, true),
            Caller {
                source: "unauthenticated",
                ..Caller::default()
            }
        );
        let mut trusted = request;
        trusted.extensions_mut().insert(TrustedHeaders);
        assert_eq!(
            Caller::of(&trusted, false).arn.as_deref(),
            Some("arn:aws:iam::1:role/admin")
        );
    }
}
