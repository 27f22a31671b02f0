//! AWS Signature Version 4 for header-signed requests: the canonical request,
//! the string to sign, the derived key and the `Authorization` header.
//!
//! Written here rather than taken from `aws-sigv4` (see Cargo.toml); its
//! correctness is pinned by AWS's published vectors in the tests below: the
//! SigV4 test suite (`get-vanilla`, query ordering, `post-sts-header-before`
//! with a session token) and the S3 documentation's signed GET, PUT and list
//! examples. A signature that is wrong by one byte compiles, connects and gets
//! `403 SignatureDoesNotMatch`, which looks exactly like a missing permission;
//! hence the vectors.
//!
//! Scope: what S3 needs. The path is signed as given (already URI-encoded once,
//! see [`uri_encode`]): S3 neither normalises paths nor double-encodes them,
//! unlike the other services' rules.

use std::fmt;

use chrono::{DateTime, Utc};
use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};

/// The sha256 of an empty payload, which every body-less request signs.
pub const EMPTY_PAYLOAD_SHA256: &str =
    "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

const ALGORITHM: &str = "AWS4-HMAC-SHA256";

/// AWS credentials: the access key, its secret, and for temporary credentials
/// (Lambda's, an assumed role's) the session token.
#[derive(Clone, PartialEq, Eq)]
pub struct Credentials {
    pub access_key_id: String,
    pub secret_access_key: String,
    pub session_token: Option<String>,
}

/// Never prints the secret or the token: credentials end up in `Debug` output
/// of whatever holds them, and that output ends up in logs.
impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Credentials")
            .field("access_key_id", &self.access_key_id)
            .field("secret_access_key", &"<redacted>")
            .field(
                "session_token",
                &self.session_token.as_ref().map(|_| "<redacted>"),
            )
            .finish()
    }
}

/// One request to sign. Header names may be in any case; `host` must be among
/// the headers (it is always signed), `x-amz-date` and `x-amz-security-token`
/// must not (the signer adds them).
#[derive(Debug, Clone, Copy)]
pub struct Request<'a> {
    pub method: &'a str,
    /// The URI-encoded path, as sent on the wire (`/bucket/my%20key`).
    pub path: &'a str,
    /// The query parameters, decoded; the signer encodes and sorts them.
    pub query: &'a [(&'a str, &'a str)],
    pub headers: &'a [(&'a str, &'a str)],
    /// Lowercase hex sha256 of the body (S3 also sends it as `x-amz-content-sha256`).
    pub payload_sha256: &'a str,
}

/// The headers a signed request adds to those it was signed with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Signature {
    /// `x-amz-date`: `20150830T123600Z`.
    pub amz_date: String,
    /// `x-amz-security-token`, signed, when the credentials have one.
    pub security_token: Option<String>,
    /// `Authorization`.
    pub authorization: String,
}

impl Signature {
    /// The headers to add to the request, names lowercase.
    pub fn headers(&self) -> Vec<(&'static str, &str)> {
        let mut headers = vec![("x-amz-date", self.amz_date.as_str())];
        if let Some(token) = &self.security_token {
            headers.push(("x-amz-security-token", token));
        }
        headers.push(("authorization", &self.authorization));
        headers
    }
}

/// Signs `request` for `service` in `region` at time `at`.
///
/// ```
/// use model_router::publisher::sigv4::{sign, Credentials, Request, EMPTY_PAYLOAD_SHA256};
///
/// let credentials = Credentials {
///     access_key_id: "AKIDEXAMPLE".into(),
///     secret_access_key: "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY".into(),
///     session_token: None,
/// };
/// let request = Request {
///     method: "GET",
///     path: "/",
///     query: &[],
///     headers: &[("Host", "example.amazonaws.com")],
///     payload_sha256: EMPTY_PAYLOAD_SHA256,
/// };
/// let at = "2015-08-30T12:36:00Z".parse().unwrap();
/// let signed = sign(&request, &credentials, "us-east-1", "service", at);
/// assert_eq!(signed.amz_date, "20150830T123600Z");
/// assert!(signed.authorization.ends_with(
///     "Signature=5fa00fa31553b73ebf1942676e86291e8372ff2a2260956d9b8aae1d763fbf31"
/// ));
/// ```
pub fn sign(
    request: &Request<'_>,
    credentials: &Credentials,
    region: &str,
    service: &str,
    at: DateTime<Utc>,
) -> Signature {
    let amz_date = at.format("%Y%m%dT%H%M%SZ").to_string();
    let date = &amz_date[..8];
    let scope = format!("{date}/{region}/{service}/aws4_request");

    let mut headers: Vec<(&str, &str)> = request.headers.to_vec();
    headers.push(("x-amz-date", &amz_date));
    if let Some(token) = &credentials.session_token {
        headers.push(("x-amz-security-token", token));
    }
    let (canonical_headers, signed_headers) = canonical_headers(&headers);
    let canonical_request = format!(
        "{}\n{}\n{}\n{}\n{}\n{}",
        request.method,
        request.path,
        canonical_query(request.query),
        canonical_headers,
        signed_headers,
        request.payload_sha256,
    );
    let string_to_sign = format!(
        "{ALGORITHM}\n{amz_date}\n{scope}\n{}",
        hex::encode(Sha256::digest(canonical_request.as_bytes()))
    );

    let secret = format!("AWS4{}", credentials.secret_access_key);
    let key = [date, region, service, "aws4_request"]
        .iter()
        .fold(secret.into_bytes(), |key, part| hmac(&key, part.as_bytes()));
    let signature = hex::encode(hmac(&key, string_to_sign.as_bytes()));

    Signature {
        authorization: format!(
            "{ALGORITHM} Credential={}/{scope}, SignedHeaders={signed_headers}, Signature={signature}",
            credentials.access_key_id
        ),
        amz_date,
        security_token: credentials.session_token.clone(),
    }
}

fn hmac(key: &[u8], data: &[u8]) -> Vec<u8> {
    // HMAC accepts a key of any length; `new_from_slice` cannot fail for it.
    match Hmac::<Sha256>::new_from_slice(key) {
        Ok(mut mac) => {
            mac.update(data);
            mac.finalize().into_bytes().to_vec()
        }
        Err(_) => unreachable!("HMAC-SHA256 takes keys of any length"),
    }
}

/// URI-encodes `text` as SigV4 and S3 want: every byte except the unreserved
/// `A-Z a-z 0-9 - _ . ~` becomes `%XX` (uppercase hex), and `/` too unless
/// `keep_slash` (object keys in paths keep their slashes).
///
/// ```
/// use model_router::publisher::sigv4::uri_encode;
///
/// assert_eq!(uri_encode("incoming/a b/é+$.ort", true), "incoming/a%20b/%C3%A9%2B%24.ort");
/// assert_eq!(uri_encode("a/b", false), "a%2Fb");
/// ```
pub fn uri_encode(text: &str, keep_slash: bool) -> String {
    let mut out = String::with_capacity(text.len());
    for byte in text.bytes() {
        let unreserved = byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'_' | b'.' | b'~');
        if unreserved || (keep_slash && byte == b'/') {
            out.push(char::from(byte));
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

/// Parameters encoded, then sorted by name and value (so `?a=2&a=1` signs as
/// `a=1&a=2`); a parameter without a value signs as `name=`.
fn canonical_query(query: &[(&str, &str)]) -> String {
    let mut pairs: Vec<(String, String)> = query
        .iter()
        .map(|(name, value)| (uri_encode(name, false), uri_encode(value, false)))
        .collect();
    pairs.sort();
    pairs
        .iter()
        .map(|(name, value)| format!("{name}={value}"))
        .collect::<Vec<_>>()
        .join("&")
}

/// The canonical header block (`name:value\n` per header, names lowercase and
/// sorted, values trimmed with inner runs of spaces collapsed, repeated names
/// joined with `,`) and the signed-header list (`host;x-amz-date`).
fn canonical_headers(headers: &[(&str, &str)]) -> (String, String) {
    let mut lines: Vec<(String, String)> = Vec::with_capacity(headers.len());
    for (name, value) in headers {
        let name = name.to_ascii_lowercase();
        let value = value.split_whitespace().collect::<Vec<_>>().join(" ");
        match lines.iter_mut().find(|(existing, _)| *existing == name) {
            Some((_, joined)) => {
                joined.push(',');
                joined.push_str(&value);
            }
            None => lines.push((name, value)),
        }
    }
    lines.sort_by(|a, b| a.0.cmp(&b.0));
    let block = lines
        .iter()
        .map(|(name, value)| format!("{name}:{value}\n"))
        .collect::<String>();
    let signed = lines
        .iter()
        .map(|(name, _)| name.as_str())
        .collect::<Vec<_>>()
        .join(";");
    (block, signed)
}

/// The parts of an `Authorization` header a server checks before the
/// signature itself: `(access key, scope date, region, service, signed headers,
/// signature)`. `None` unless it is a well-formed SigV4 header.
///
/// ```
/// use model_router::publisher::sigv4::parse_authorization;
///
/// let parsed = parse_authorization(
///     "AWS4-HMAC-SHA256 Credential=AKID/20150830/us-east-1/s3/aws4_request, \
///      SignedHeaders=host;x-amz-date, Signature=abc",
/// )
/// .unwrap();
/// assert_eq!(parsed.region, "us-east-1");
/// assert_eq!(parsed.signed_headers, ["host", "x-amz-date"]);
/// ```
pub fn parse_authorization(header: &str) -> Option<ParsedAuthorization> {
    let rest = header.strip_prefix(ALGORITHM)?.trim_start();
    let mut credential = None;
    let mut signed_headers = None;
    let mut signature = None;
    for part in rest.split(',') {
        let (name, value) = part.trim().split_once('=')?;
        match name {
            "Credential" => credential = Some(value),
            "SignedHeaders" => signed_headers = Some(value),
            "Signature" => signature = Some(value),
            _ => return None,
        }
    }
    let mut scope = credential?.split('/');
    let parsed = ParsedAuthorization {
        access_key_id: scope.next()?.to_string(),
        date: scope.next()?.to_string(),
        region: scope.next()?.to_string(),
        service: scope.next()?.to_string(),
        signed_headers: signed_headers?.split(';').map(str::to_string).collect(),
        signature: signature?.to_string(),
    };
    (scope.next()? == "aws4_request" && scope.next().is_none()).then_some(parsed)
}

/// See [`parse_authorization`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParsedAuthorization {
    pub access_key_id: String,
    pub date: String,
    pub region: String,
    pub service: String,
    pub signed_headers: Vec<String>,
    pub signature: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The SigV4 test suite's credentials and time (aws-sig-v4-test-suite,
    /// published with the AWS General Reference; `service` is literally "service").
    fn suite() -> (Credentials, DateTime<Utc>) {
        let credentials = Credentials {
            access_key_id: "AKIDEXAMPLE".into(),
            secret_access_key: "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY".into(),
            session_token: None,
        };
        (credentials, "2015-08-30T12:36:00Z".parse().unwrap())
    }

    /// The S3 API reference's examples ("Signature Calculations for the
    /// Authorization Header: Transferring Payload in a Single Chunk").
    fn s3_docs() -> (Credentials, DateTime<Utc>) {
        let credentials = Credentials {
            access_key_id: "AKIAIOSFODNN7EXAMPLE".into(),
            secret_access_key: "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY".into(),
            session_token: None,
        };
        (credentials, "2013-05-24T00:00:00Z".parse().unwrap())
    }

    const SUITE_HOST: (&str, &str) = ("Host", "example.amazonaws.com");

    fn suite_request<'a>(
        method: &'a str,
        query: &'a [(&'a str, &'a str)],
        headers: &'a [(&'a str, &'a str)],
    ) -> Request<'a> {
        Request {
            method,
            path: "/",
            query,
            headers,
            payload_sha256: EMPTY_PAYLOAD_SHA256,
        }
    }

    #[test]
    fn get_vanilla() {
        // get-vanilla.req: GET / with Host and X-Amz-Date; get-vanilla.authz:
        let (credentials, at) = suite();
        let signed = sign(
            &suite_request("GET", &[], &[SUITE_HOST]),
            &credentials,
            "us-east-1",
            "service",
            at,
        );
        assert_eq!(
            signed.authorization,
            "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20150830/us-east-1/service/aws4_request, \
             SignedHeaders=host;x-amz-date, \
             Signature=5fa00fa31553b73ebf1942676e86291e8372ff2a2260956d9b8aae1d763fbf31"
        );
        assert_eq!(signed.amz_date, "20150830T123600Z");
        assert_eq!(signed.security_token, None);
    }

    #[test]
    fn get_vanilla_query_order_key() {
        // GET /?Param1=value2&Param1=Value1: equal names sort by value ('V' < 'v').
        let (credentials, at) = suite();
        let query = [("Param1", "value2"), ("Param1", "Value1")];
        let signed = sign(
            &suite_request("GET", &query, &[SUITE_HOST]),
            &credentials,
            "us-east-1",
            "service",
            at,
        );
        assert!(
            signed.authorization.ends_with(
                "Signature=eedbc4e291e521cf13422ffca22be7d2eb8146eecf653089df300a15b2382bd1"
            ),
            "{}",
            signed.authorization
        );
    }

    #[test]
    fn post_sts_header_before() {
        // The session token is a signed header (as S3 requires), added by the signer.
        let (mut credentials, at) = suite();
        credentials.session_token = Some(
            "AQoDYXdzEPT//////////wEXAMPLEtc764bNrC9SAPBSM22wDOk4x4HIZ8j4FZTwdQWLWsKWHGBuFqwAeMicRXmxfpSPfIeoIYRqTflfKD8YUuwthAx7mSEI/qkPpKPi/kMcGdQrmGdeehM4IC1NtBmUpp2wUE8phUZampKsburEDy0KPkyQDYwT7WZ0wq5VSXDvp75YU9HFvlRd8Tx6q6fE8YQcHNVXAkiY9q6d+xo0rKwT38xVqr7ZD0u0iPPkUL64lIZbqBAz+scqKmlzm8FDrypNC9Yjc8fPOLn9FX9KSYvKTr4rvx3iSIlTJabIQwj2ICCR/oLxBA==".into(),
        );
        let signed = sign(
            &suite_request("POST", &[], &[SUITE_HOST]),
            &credentials,
            "us-east-1",
            "service",
            at,
        );
        assert_eq!(
            signed.authorization,
            "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20150830/us-east-1/service/aws4_request, \
             SignedHeaders=host;x-amz-date;x-amz-security-token, \
             Signature=85d96828115b5dc0cfc3bd16ad9e210dd772bbebba041836c64533a82be05ead"
        );
        assert_eq!(signed.security_token, credentials.session_token);
        let names: Vec<_> = signed.headers().iter().map(|(n, _)| *n).collect();
        assert_eq!(
            names,
            ["x-amz-date", "x-amz-security-token", "authorization"]
        );
    }

    #[test]
    fn s3_get_object_with_range() {
        let (credentials, at) = s3_docs();
        let request = Request {
            method: "GET",
            path: "/test.txt",
            query: &[],
            headers: &[
                ("Host", "examplebucket.s3.amazonaws.com"),
                ("Range", "bytes=0-9"),
                ("x-amz-content-sha256", EMPTY_PAYLOAD_SHA256),
            ],
            payload_sha256: EMPTY_PAYLOAD_SHA256,
        };
        let signed = sign(&request, &credentials, "us-east-1", "s3", at);
        assert_eq!(
            signed.authorization,
            "AWS4-HMAC-SHA256 Credential=AKIAIOSFODNN7EXAMPLE/20130524/us-east-1/s3/aws4_request, \
             SignedHeaders=host;range;x-amz-content-sha256;x-amz-date, \
             Signature=f0e8bdb87c964420e857bd35b5d6ed310bd44f0170aba48dd91039c6036bdb41"
        );
    }

    #[test]
    fn s3_put_object_with_a_dollar_in_the_key() {
        let (credentials, at) = s3_docs();
        let body = b"Welcome to Amazon S3.";
        let payload = hex::encode(Sha256::digest(body));
        let path = format!("/{}", uri_encode("test$file.text", true));
        assert_eq!(path, "/test%24file.text");
        let request = Request {
            method: "PUT",
            path: &path,
            query: &[],
            headers: &[
                ("Host", "examplebucket.s3.amazonaws.com"),
                ("Date", "Fri, 24 May 2013 00:00:00 GMT"),
                ("x-amz-storage-class", "REDUCED_REDUNDANCY"),
                ("x-amz-content-sha256", &payload),
            ],
            payload_sha256: &payload,
        };
        let signed = sign(&request, &credentials, "us-east-1", "s3", at);
        assert!(
            signed.authorization.ends_with(
                "SignedHeaders=date;host;x-amz-content-sha256;x-amz-date;x-amz-storage-class, \
                 Signature=98ad721746da40c64f1a55b78f14c238d841ea1380cd77a1b5971af0ece108bd"
            ),
            "{}",
            signed.authorization
        );
    }

    #[test]
    fn s3_list_objects_and_a_valueless_parameter() {
        let (credentials, at) = s3_docs();
        let headers = [
            ("Host", "examplebucket.s3.amazonaws.com"),
            ("x-amz-content-sha256", EMPTY_PAYLOAD_SHA256),
        ];
        for (query, expected) in [
            (
                &[("max-keys", "2"), ("prefix", "J")][..],
                "34b48302e7b5fa45bde8084f4b7868a86f0a534bc59db6670ed5711ef69dc6f7",
            ),
            (
                &[("lifecycle", "")][..],
                "fea454ca298b7da1c68078a5d1bdbfbbe0d65c699e0f91ac7a200a0136783543",
            ),
        ] {
            let request = Request {
                method: "GET",
                path: "/",
                query,
                headers: &headers,
                payload_sha256: EMPTY_PAYLOAD_SHA256,
            };
            let signed = sign(&request, &credentials, "us-east-1", "s3", at);
            assert!(
                signed
                    .authorization
                    .ends_with(&format!("Signature={expected}")),
                "{query:?}: {}",
                signed.authorization
            );
        }
    }

    #[test]
    fn header_values_are_trimmed_and_repeats_joined() {
        let (block, signed) = canonical_headers(&[
            ("My-Header1", "  a   b  c "),
            ("Host", "h"),
            ("my-header1", "d"),
        ]);
        assert_eq!(block, "host:h\nmy-header1:a b c,d\n");
        assert_eq!(signed, "host;my-header1");
    }

    #[test]
    fn authorization_round_trips_and_rejects_other_schemes() {
        let (credentials, at) = suite();
        let signed = sign(
            &suite_request("GET", &[], &[SUITE_HOST]),
            &credentials,
            "eu-west-1",
            "s3",
            at,
        );
        let parsed = parse_authorization(&signed.authorization).unwrap();
        assert_eq!(parsed.access_key_id, "AKIDEXAMPLE");
        assert_eq!(
            (
                parsed.date.as_str(),
                parsed.region.as_str(),
                parsed.service.as_str()
            ),
            ("20150830", "eu-west-1", "s3")
        );
        assert_eq!(parsed.signed_headers, ["host", "x-amz-date"]);
        assert_eq!(parsed.signature.len(), 64);
        assert_eq!(parse_authorization("Basic dTpw"), None);
        assert_eq!(
            parse_authorization(
                "AWS4-HMAC-SHA256 Credential=AKID/20150830/us-east-1/s3, SignedHeaders=host, Signature=x"
            ),
            None
        );
    }

    #[test]
    fn debug_hides_the_secret_and_the_token() {
        let (mut credentials, _) = suite();
        credentials.session_token = Some("TOKEN-VALUE".into());
        let shown = format!("{credentials:?}");
        assert!(shown.contains("AKIDEXAMPLE"));
        assert!(!shown.contains("wJalr"));
        assert!(!shown.contains("TOKEN-VALUE"));
    }
}
