//! Just enough S3 for the publisher: a SigV4-signed GET that streams an object
//! into a file while hashing it, and a signed PUT of a small body.
//!
//! Blocking (ureq): the caller runs it on a blocking thread, next to the
//! blocking filesystem work of publishing.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::time::Duration;

use base64::Engine as _;
use sha2::{Digest, Sha256};

use super::sigv4::{self, Credentials, EMPTY_PAYLOAD_SHA256};
use crate::repository::copy_hashing;

/// Largest S3 error body read for its `<Code>` and `<Message>`.
const ERROR_BODY_LIMIT: u64 = 16 * 1024;

/// Why an S3 request did not give us what we asked for.
#[derive(Debug, Clone, thiserror::Error)]
pub enum S3Error {
    /// S3 answered with an error status (403 AccessDenied, 404 NoSuchKey, ...).
    #[error("S3 answered {status}{} to {method} {target}{}", code_suffix(.code), message_suffix(.message))]
    Status {
        status: u16,
        code: Option<String>,
        message: Option<String>,
        method: &'static str,
        target: String,
    },
    /// The request did not get an answer: DNS, connection, TLS, timeout.
    #[error("could not reach S3 for {method} {target}: {reason}")]
    Transport {
        method: &'static str,
        target: String,
        reason: String,
    },
    /// The body stopped short of its Content-Length, or reading or storing it failed.
    #[error("downloading {target} failed: {reason}")]
    Body { target: String, reason: String },
    /// Configuration: credentials or endpoint missing or malformed.
    #[error("S3 client configuration: {0}")]
    Config(String),
}

fn code_suffix(code: &Option<String>) -> String {
    code.as_deref().map(|c| format!(" {c}")).unwrap_or_default()
}

fn message_suffix(message: &Option<String>) -> String {
    message
        .as_deref()
        .map(|m| format!(" ({m})"))
        .unwrap_or_default()
}

/// Where requests go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Endpoint {
    /// AWS itself: `https://<bucket>.s3.<region>.amazonaws.com` (virtual-hosted),
    /// or path-style on `s3.<region>.amazonaws.com` for bucket names with dots,
    /// which the wildcard certificate does not cover.
    Aws,
    /// Anything else (a test server, MinIO, a VPC interface endpoint), always
    /// path-style: `<base>/<bucket>/<key>`.
    Custom {
        /// `http` or `https`.
        scheme: String,
        /// `host[:port]`, also the signed `host` header.
        authority: String,
        /// A path prefix, empty or starting with `/`, without a trailing `/`.
        base_path: String,
    },
}

impl Endpoint {
    /// Parses an endpoint URL such as `http://127.0.0.1:9000` or
    /// `https://bucket.vpce-123.s3.us-east-1.vpce.amazonaws.com/`.
    ///
    /// ```
    /// use model_router::publisher::s3::Endpoint;
    ///
    /// let endpoint = Endpoint::parse("http://127.0.0.1:9000/").unwrap();
    /// assert_eq!(endpoint, Endpoint::Custom {
    ///     scheme: "http".into(),
    ///     authority: "127.0.0.1:9000".into(),
    ///     base_path: String::new(),
    /// });
    /// assert!(Endpoint::parse("127.0.0.1:9000").is_err());
    /// ```
    pub fn parse(url: &str) -> Result<Endpoint, S3Error> {
        let bad = |why: &str| S3Error::Config(format!("endpoint {url:?} {why}"));
        let (scheme, rest) = url
            .split_once("://")
            .ok_or_else(|| bad("must start with http:// or https://"))?;
        if scheme != "http" && scheme != "https" {
            return Err(bad("must start with http:// or https://"));
        }
        let (authority, path) = match rest.find('/') {
            Some(at) => rest.split_at(at),
            None => (rest, ""),
        };
        if authority.is_empty() || authority.contains(['?', '#', '@']) {
            return Err(bad("has no plain host[:port]"));
        }
        Ok(Endpoint::Custom {
            scheme: scheme.to_string(),
            authority: authority.to_string(),
            base_path: path.trim_end_matches('/').to_string(),
        })
    }
}

/// What a GET's response headers said about the object.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ObjectHead {
    /// Content-Length.
    pub content_length: Option<u64>,
    /// `x-amz-checksum-sha256` (base64), present when the object was uploaded
    /// with a SHA-256 checksum and the GET asked for it.
    pub checksum_sha256: Option<String>,
    /// `x-amz-checksum-type`: `FULL_OBJECT` or `COMPOSITE` (a multipart
    /// upload's checksum of part checksums, not the object's sha256).
    pub checksum_type: Option<String>,
    /// `x-amz-version-id`.
    pub version_id: Option<String>,
    /// User metadata (`x-amz-meta-<name>`), names lowercase without the
    /// prefix, values decoded from RFC 2047 where S3 encoded non-ASCII text.
    pub metadata: BTreeMap<String, String>,
}

/// A downloaded object: its response headers, and the sha256 (hex) and size
/// of the bytes actually received.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Downloaded {
    pub head: ObjectHead,
    pub sha256: String,
    pub size: u64,
}

/// A signing S3 client. Cheap to clone (ureq's agent shares its pool).
#[derive(Debug, Clone)]
pub struct S3Client {
    agent: ureq::Agent,
    endpoint: Endpoint,
    credentials: Credentials,
    /// AWS_REGION: used when an event record does not name its region.
    default_region: String,
}

impl S3Client {
    pub fn new(endpoint: Endpoint, credentials: Credentials, default_region: String) -> S3Client {
        let agent = ureq::AgentBuilder::new()
            .timeout_connect(Duration::from_secs(10))
            // Per read and per write, not for the whole transfer: a model of
            // several GB takes minutes, a stalled connection should not.
            .timeout_read(Duration::from_secs(60))
            .timeout_write(Duration::from_secs(60))
            // S3 redirects only when the region is wrong; following would
            // resend a signature for the wrong host. Report it instead.
            .redirects(0)
            .build();
        S3Client {
            agent,
            endpoint,
            credentials,
            default_region,
        }
    }

    /// The client Lambda's environment describes: AWS_ACCESS_KEY_ID,
    /// AWS_SECRET_ACCESS_KEY, AWS_SESSION_TOKEN (the function role's temporary
    /// credentials), AWS_REGION (else AWS_DEFAULT_REGION), and an endpoint
    /// override in AWS_ENDPOINT_URL_S3, else AWS_ENDPOINT_URL (as the AWS SDKs
    /// and CLI read them).
    pub fn from_env() -> Result<S3Client, S3Error> {
        let var = |name: &str| {
            std::env::var(name)
                .ok()
                .map(|v| v.trim().to_string())
                .filter(|v| !v.is_empty())
        };
        let required = |name: &str| {
            var(name).ok_or_else(|| {
                S3Error::Config(format!(
                    "{name} is not set (Lambda sets it from the function's role)"
                ))
            })
        };
        let credentials = Credentials {
            access_key_id: required("AWS_ACCESS_KEY_ID")?,
            secret_access_key: required("AWS_SECRET_ACCESS_KEY")?,
            session_token: var("AWS_SESSION_TOKEN"),
        };
        let region = var("AWS_REGION")
            .or_else(|| var("AWS_DEFAULT_REGION"))
            .ok_or_else(|| S3Error::Config("AWS_REGION is not set".into()))?;
        let endpoint = match var("AWS_ENDPOINT_URL_S3").or_else(|| var("AWS_ENDPOINT_URL")) {
            Some(url) => Endpoint::parse(&url)?,
            None => Endpoint::Aws,
        };
        Ok(S3Client::new(endpoint, credentials, region))
    }

    pub fn default_region(&self) -> &str {
        &self.default_region
    }

    pub fn endpoint(&self) -> &Endpoint {
        &self.endpoint
    }

    /// GETs `bucket/key` (at `version_id` if given) with the object's checksum
    /// requested, and copies the body into `dest` while hashing it. Fails if
    /// fewer or more bytes arrive than Content-Length announced.
    pub fn get_object(
        &self,
        bucket: &str,
        key: &str,
        version_id: Option<&str>,
        region: Option<&str>,
        dest: &mut impl Write,
    ) -> Result<Downloaded, S3Error> {
        let query: Vec<(&str, &str)> = version_id.map(|v| ("versionId", v)).into_iter().collect();
        let target = s3_uri(bucket, key, version_id);
        let response = self.send(
            "GET",
            bucket,
            key,
            &query,
            // Without this header S3 does not return the stored checksum.
            &[("x-amz-checksum-mode", "ENABLED")],
            None,
            region,
            &target,
        )?;
        let head = object_head(&response);
        let (sha256, size) =
            copy_hashing(&mut response.into_reader(), dest).map_err(|e| S3Error::Body {
                target: target.clone(),
                reason: e.to_string(),
            })?;
        if let Some(expected) = head.content_length
            && expected != size
        {
            return Err(S3Error::Body {
                target,
                reason: format!("received {size} bytes, Content-Length announced {expected}"),
            });
        }
        Ok(Downloaded { head, sha256, size })
    }

    /// PUTs a small body (a JSON result) at `bucket/key`.
    pub fn put_object(
        &self,
        bucket: &str,
        key: &str,
        body: &[u8],
        content_type: &str,
        region: Option<&str>,
    ) -> Result<(), S3Error> {
        let target = s3_uri(bucket, key, None);
        self.send(
            "PUT",
            bucket,
            key,
            &[],
            &[("content-type", content_type)],
            Some(body),
            region,
            &target,
        )?;
        Ok(())
    }

    /// Builds, signs and sends one request; an error status becomes
    /// [`S3Error::Status`] with S3's `<Code>` and `<Message>`.
    #[allow(clippy::too_many_arguments)]
    fn send(
        &self,
        method: &'static str,
        bucket: &str,
        key: &str,
        query: &[(&str, &str)],
        extra_headers: &[(&str, &str)],
        body: Option<&[u8]>,
        region: Option<&str>,
        target: &str,
    ) -> Result<ureq::Response, S3Error> {
        let region = region.unwrap_or(&self.default_region);
        let (scheme, host, path) = self.locate(bucket, key, region);
        let payload_sha256 = match body {
            Some(body) => hex::encode(Sha256::digest(body)),
            None => EMPTY_PAYLOAD_SHA256.to_string(),
        };
        let mut headers: Vec<(&str, &str)> = vec![
            ("host", &host),
            // S3 requires the payload hash as a header, and signed.
            ("x-amz-content-sha256", &payload_sha256),
        ];
        headers.extend_from_slice(extra_headers);
        let signature = sigv4::sign(
            &sigv4::Request {
                method,
                path: &path,
                query,
                headers: &headers,
                payload_sha256: &payload_sha256,
            },
            &self.credentials,
            region,
            "s3",
            chrono::Utc::now(),
        );

        let mut url = format!("{scheme}://{host}{path}");
        for (i, (name, value)) in query.iter().enumerate() {
            url.push(if i == 0 { '?' } else { '&' });
            url.push_str(&sigv4::uri_encode(name, false));
            url.push('=');
            url.push_str(&sigv4::uri_encode(value, false));
        }
        // The Host header is set explicitly so that what is sent is exactly
        // what was signed (ureq would otherwise write its own).
        let mut request = self.agent.request(method, &url);
        for (name, value) in headers.iter().chain(signature.headers().iter()) {
            request = request.set(name, value);
        }
        let result = match body {
            Some(body) => request.send_bytes(body),
            None => request.call(),
        };
        match result {
            Ok(response) => Ok(response),
            Err(ureq::Error::Status(status, response)) => {
                let (code, message) = error_details(response);
                Err(S3Error::Status {
                    status,
                    code,
                    message,
                    method,
                    target: target.to_string(),
                })
            }
            Err(ureq::Error::Transport(transport)) => Err(S3Error::Transport {
                method,
                target: target.to_string(),
                reason: transport.to_string(),
            }),
        }
    }

    /// (scheme, host, URI-encoded path) of an object.
    fn locate(&self, bucket: &str, key: &str, region: &str) -> (String, String, String) {
        let key = sigv4::uri_encode(key, true);
        match &self.endpoint {
            Endpoint::Aws => {
                let suffix = if region.starts_with("cn-") {
                    "amazonaws.com.cn"
                } else {
                    "amazonaws.com"
                };
                if bucket.contains('.') {
                    let bucket = sigv4::uri_encode(bucket, false);
                    let host = format!("s3.{region}.{suffix}");
                    ("https".into(), host, format!("/{bucket}/{key}"))
                } else {
                    let host = format!("{bucket}.s3.{region}.{suffix}");
                    ("https".into(), host, format!("/{key}"))
                }
            }
            Endpoint::Custom {
                scheme,
                authority,
                base_path,
            } => {
                let bucket = sigv4::uri_encode(bucket, false);
                (
                    scheme.clone(),
                    authority.clone(),
                    format!("{base_path}/{bucket}/{key}"),
                )
            }
        }
    }
}

/// `s3://bucket/key?versionId=...`, how objects are named in logs and results.
pub fn s3_uri(bucket: &str, key: &str, version_id: Option<&str>) -> String {
    match version_id {
        Some(version) => format!("s3://{bucket}/{key}?versionId={version}"),
        None => format!("s3://{bucket}/{key}"),
    }
}

fn object_head(response: &ureq::Response) -> ObjectHead {
    let header = |name: &str| response.header(name).map(|v| v.trim().to_string());
    let metadata = response
        .headers_names()
        .into_iter()
        .filter_map(|name| {
            let lower = name.to_ascii_lowercase();
            let short = lower.strip_prefix("x-amz-meta-")?.to_string();
            let value = response.header(&name)?;
            Some((short, decode_rfc2047(value.trim())))
        })
        .collect();
    ObjectHead {
        content_length: header("content-length").and_then(|v| v.parse().ok()),
        checksum_sha256: header("x-amz-checksum-sha256"),
        checksum_type: header("x-amz-checksum-type"),
        version_id: header("x-amz-version-id"),
        metadata,
    }
}

/// S3's XML error body, `<Error><Code>NoSuchKey</Code><Message>...`, read
/// without an XML parser: two known, flat elements.
fn error_details(response: ureq::Response) -> (Option<String>, Option<String>) {
    let mut body = String::new();
    let _ = response
        .into_reader()
        .take(ERROR_BODY_LIMIT)
        .read_to_string(&mut body);
    let element = |name: &str| {
        let open = format!("<{name}>");
        let close = format!("</{name}>");
        let start = body.find(&open)? + open.len();
        let end = body[start..].find(&close)? + start;
        Some(body[start..end].trim().to_string()).filter(|s| !s.is_empty())
    };
    (element("Code"), element("Message"))
}

/// Decodes a header value that S3 encoded per RFC 2047 because the metadata
/// held non-ASCII text (`=?UTF-8?B?...?=`, `=?UTF-8?Q?...?=`); anything else,
/// or anything malformed, is returned as it came.
///
/// ```
/// use model_router::publisher::s3::decode_rfc2047;
///
/// assert_eq!(decode_rfc2047("=?UTF-8?B?w6l0w6k=?="), "été");
/// assert_eq!(decode_rfc2047("=?utf-8?Q?caf=C3=A9_cr=C3=A8me?="), "café crème");
/// assert_eq!(decode_rfc2047("plain text"), "plain text");
/// ```
pub fn decode_rfc2047(value: &str) -> String {
    let decode_word = |word: &str| -> Option<String> {
        let inner = word.strip_prefix("=?")?.strip_suffix("?=")?;
        let mut parts = inner.splitn(3, '?');
        let (charset, encoding, text) = (parts.next()?, parts.next()?, parts.next()?);
        if !charset.eq_ignore_ascii_case("utf-8") {
            return None;
        }
        let bytes = if encoding.eq_ignore_ascii_case("b") {
            base64::engine::general_purpose::STANDARD
                .decode(text)
                .ok()?
        } else if encoding.eq_ignore_ascii_case("q") {
            let mut bytes = Vec::with_capacity(text.len());
            let mut rest = text.as_bytes();
            while let Some((&first, tail)) = rest.split_first() {
                match first {
                    b'_' => bytes.push(b' '),
                    b'=' => {
                        let hex = std::str::from_utf8(tail.get(..2)?).ok()?;
                        bytes.push(u8::from_str_radix(hex, 16).ok()?);
                        rest = &tail[2..];
                        continue;
                    }
                    other => bytes.push(other),
                }
                rest = tail;
            }
            bytes
        } else {
            return None;
        };
        String::from_utf8(bytes).ok()
    };
    if !(value.starts_with("=?") && value.ends_with("?=")) {
        return value.to_string();
    }
    // Whitespace between adjacent encoded words is not part of the text.
    value
        .split_whitespace()
        .map(decode_word)
        .collect::<Option<String>>()
        .unwrap_or_else(|| value.to_string())
}

/// `x-amz-checksum-sha256` (base64 of 32 bytes) as lowercase hex; `None` if
/// it is not that.
pub fn checksum_to_hex(base64_value: &str) -> Option<String> {
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(base64_value)
        .ok()?;
    (bytes.len() == 32).then(|| hex::encode(bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn client(endpoint: Endpoint) -> S3Client {
        S3Client::new(
            endpoint,
            Credentials {
                access_key_id: "AKID".into(),
                secret_access_key: "secret".into(),
                session_token: None,
            },
            "eu-west-1".into(),
        )
    }

    #[test]
    fn objects_are_addressed_virtual_hosted_on_aws_and_path_style_elsewhere() {
        let aws = client(Endpoint::Aws);
        assert_eq!(
            aws.locate("models-in", "incoming/a b/1/m.ort", "eu-west-1"),
            (
                "https".into(),
                "models-in.s3.eu-west-1.amazonaws.com".into(),
                "/incoming/a%20b/1/m.ort".into()
            )
        );
        assert_eq!(
            aws.locate("my.bucket", "k", "cn-north-1"),
            (
                "https".into(),
                "s3.cn-north-1.amazonaws.com.cn".into(),
                "/my.bucket/k".into()
            )
        );
        let local = client(Endpoint::parse("http://127.0.0.1:9000/s3/").unwrap());
        assert_eq!(
            local.locate("b", "incoming/m/1/model.ort", "us-east-1"),
            (
                "http".into(),
                "127.0.0.1:9000".into(),
                "/s3/b/incoming/m/1/model.ort".into()
            )
        );
    }

    #[test]
    fn endpoints_must_be_urls() {
        for bad in ["127.0.0.1:9000", "ftp://x", "http://", "http://user@host/"] {
            assert!(Endpoint::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn rfc2047_words_decode_and_malformed_ones_stay() {
        assert_eq!(decode_rfc2047("=?UTF-8?B?w6k=?= =?UTF-8?B?dMOp?="), "été");
        assert_eq!(decode_rfc2047("=?UTF-8?X?abc?="), "=?UTF-8?X?abc?=");
        assert_eq!(decode_rfc2047("=?UTF-8?Q?bad=G?="), "=?UTF-8?Q?bad=G?=");
        assert_eq!(decode_rfc2047("=?latin1?B?6Q==?="), "=?latin1?B?6Q==?=");
    }

    #[test]
    fn checksum_header_is_32_bytes_of_base64() {
        // sha256("") in base64, as S3 returns it.
        assert_eq!(
            checksum_to_hex("47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU=").as_deref(),
            Some(EMPTY_PAYLOAD_SHA256)
        );
        assert_eq!(checksum_to_hex("AAAA"), None);
        assert_eq!(checksum_to_hex("not base64!"), None);
    }
}
