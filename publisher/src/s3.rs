//! S3 through the AWS SDK: an object's head, its download into a file, hashed
//! in order as it is written (one GET, or parallel ranged GETs for large
//! objects), and the small PUT of a result.
//!
//! Credentials, region, endpoint and retries come from the SDK's default
//! chains (docs/publisher.md, "Credentials, retries, downloads"); nothing
//! here signs or retries requests itself, except that a ranged part whose
//! body breaks off is fetched again (the SDK retries until the response
//! headers arrive, not a body that stops halfway).

use std::collections::BTreeMap;
use std::future::Future;
use std::io::Write;
use std::pin::Pin;
use std::task::{Context, Poll};

use aws_config::BehaviorVersion;
use aws_sdk_s3::config::ResponseChecksumValidation;
use aws_sdk_s3::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};
use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::types::{ChecksumMode, ChecksumType};
use aws_smithy_http_client::tls::{self, rustls_provider::CryptoMode};
use base64::Engine as _;
use bytes::Bytes;
use futures_util::StreamExt as _;
use sha2::{Digest, Sha256};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

/// How objects are downloaded (flags and environment of the publisher).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct DownloadSettings {
    /// Objects larger than this are fetched as parallel ranged GETs; others
    /// with one GET, whose checksum the SDK validates.
    pub ranged_threshold: u64,
    /// Bytes per ranged GET (each part is held in memory until it is written).
    pub part_bytes: u64,
    /// Ranged GETs in flight at once.
    pub concurrency: usize,
}

impl Default for DownloadSettings {
    fn default() -> DownloadSettings {
        DownloadSettings {
            ranged_threshold: 16 << 20,
            part_bytes: 8 << 20,
            concurrency: 8,
        }
    }
}

/// Why an S3 request did not give us what we asked for, after the SDK's retries.
#[derive(Debug, Clone, thiserror::Error)]
pub enum S3Error {
    /// S3 answered with an error status (403 AccessDenied, 404 NoSuchKey, ...).
    #[error("S3 answered {status}{} to {operation} {target}{}", code_suffix(.code), message_suffix(.message))]
    Status {
        status: u16,
        code: Option<String>,
        message: Option<String>,
        operation: &'static str,
        target: String,
    },
    /// No answer: DNS, connection, TLS, timeout, credentials.
    #[error("could not complete {operation} {target}: {reason}")]
    Transport {
        operation: &'static str,
        target: String,
        reason: String,
    },
    /// The body broke off, or held other than the bytes announced.
    #[error("downloading {target} failed: {reason}")]
    Body { target: String, reason: String },
    /// The SDK's validation of S3's stored checksum failed on every attempt.
    #[error("downloading {target}: the SDK's checksum validation failed: {reason}")]
    ChecksumValidation { target: String, reason: String },
    /// The file the download goes to could not be written.
    #[error("writing the download of {target}: {reason}")]
    Write { target: String, reason: String },
    /// Configuration: no region, a malformed setting.
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

impl S3Error {
    /// The HTTP status S3 answered, if it answered with an error.
    pub fn status(&self) -> Option<u16> {
        match self {
            S3Error::Status { status, .. } => Some(*status),
            _ => None,
        }
    }

    fn from_sdk<E>(error: SdkError<E>, operation: &'static str, target: &str) -> S3Error
    where
        E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
    {
        let status = error.raw_response().map(|r| r.status().as_u16());
        match (status, &error) {
            (Some(status), SdkError::ServiceError(service)) => S3Error::Status {
                status,
                code: service.err().code().map(str::to_string),
                message: service.err().message().map(str::to_string),
                operation,
                target: target.to_string(),
            },
            (Some(status), _) if status >= 300 => S3Error::Status {
                status,
                code: None,
                message: Some(DisplayErrorContext(&error).to_string()),
                operation,
                target: target.to_string(),
            },
            _ => S3Error::Transport {
                operation,
                target: target.to_string(),
                reason: DisplayErrorContext(&error).to_string(),
            },
        }
    }
}

/// One object, as the event (or the command line) names it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectRef {
    pub bucket: String,
    pub key: String,
    /// The version the event names; `None` for unversioned buckets.
    pub version_id: Option<String>,
    /// The bucket's region, from the event record; `None`: the client's.
    pub region: Option<String>,
}

impl ObjectRef {
    /// `s3://bucket/key?versionId=...`, how objects are named in logs and results.
    pub fn uri(&self) -> String {
        s3_uri(&self.bucket, &self.key, self.version_id.as_deref())
    }
}

/// `s3://bucket/key?versionId=...`.
///
/// ```
/// use model_router_publisher::s3::s3_uri;
///
/// assert_eq!(s3_uri("b", "incoming/m/1/model.ort", None), "s3://b/incoming/m/1/model.ort");
/// assert_eq!(s3_uri("b", "k", Some("v1")), "s3://b/k?versionId=v1");
/// ```
pub fn s3_uri(bucket: &str, key: &str, version_id: Option<&str>) -> String {
    match version_id {
        Some(version) => format!("s3://{bucket}/{key}?versionId={version}"),
        None => format!("s3://{bucket}/{key}"),
    }
}

/// What a HEAD (with checksum mode enabled) said about the object.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ObjectHead {
    pub content_length: u64,
    /// `x-amz-checksum-sha256` (base64), when the object was uploaded with one.
    pub checksum_sha256: Option<String>,
    /// `FULL_OBJECT`, or `COMPOSITE` for a multipart upload's checksum of its
    /// parts' checksums, which is not the object's sha256.
    pub checksum_type: Option<String>,
    /// The ETag, sent back as `If-Match` on every GET so that an object
    /// replaced mid-download (unversioned buckets) fails instead of mixing bytes.
    pub e_tag: Option<String>,
    pub version_id: Option<String>,
    /// User metadata (`x-amz-meta-<name>`), names lowercase, values decoded
    /// from RFC 2047 where S3 encoded non-ASCII text.
    pub metadata: BTreeMap<String, String>,
}

impl ObjectHead {
    /// S3's full-object sha256 of the object as hex, if it has one: `None`
    /// for no checksum or a composite (multipart) one; `Err` for a value that
    /// is not the base64 of 32 bytes.
    pub fn full_object_sha256(&self) -> Result<Option<String>, String> {
        let Some(value) = &self.checksum_sha256 else {
            return Ok(None);
        };
        let composite = value.contains('-')
            || self
                .checksum_type
                .as_deref()
                .is_some_and(|t| t.eq_ignore_ascii_case(ChecksumType::Composite.as_str()));
        if composite {
            return Ok(None);
        }
        checksum_to_hex(value)
            .map(Some)
            .ok_or_else(|| format!("{value:?} is not the base64 of a sha256"))
    }
}

/// The bytes actually written: their sha256 (hex) and count.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Downloaded {
    pub sha256: String,
    pub size: u64,
    /// How many GETs fetched it (1, or the number of ranged parts).
    pub parts: usize,
}

/// An S3 client (the SDK's) and how downloads are split. Cheap to clone.
#[derive(Debug, Clone)]
pub struct S3 {
    client: aws_sdk_s3::Client,
    settings: DownloadSettings,
    /// Attempts per ranged part whose body breaks off: the SDK's own
    /// max_attempts, so that one setting (AWS_MAX_ATTEMPTS) governs both.
    attempts: u32,
}

impl S3 {
    /// The SDK's defaults (`aws_config::defaults`): credentials, region,
    /// retry mode and attempts, and endpoint from the environment and
    /// profile, with the rustls-on-ring HTTP client. An endpoint override
    /// (`AWS_ENDPOINT_URL_S3`, `AWS_ENDPOINT_URL`) is addressed path-style.
    pub async fn from_env(settings: DownloadSettings) -> Result<S3, S3Error> {
        let http = aws_smithy_http_client::Builder::new()
            .tls_provider(tls::Provider::Rustls(CryptoMode::Ring))
            .build_https();
        let sdk = aws_config::defaults(BehaviorVersion::latest())
            .http_client(http)
            .load()
            .await;
        if sdk.region().is_none() {
            return Err(S3Error::Config(
                "no region: set AWS_REGION (Lambda and ECS set it) or a profile's region".into(),
            ));
        }
        S3::from_sdk_config(&sdk, settings)
    }

    /// A client from an SDK configuration already loaded (tests build one).
    pub fn from_sdk_config(
        sdk: &aws_config::SdkConfig,
        settings: DownloadSettings,
    ) -> Result<S3, S3Error> {
        if settings.part_bytes == 0 || settings.concurrency == 0 {
            return Err(S3Error::Config(format!(
                "part size and concurrency must be above 0: {settings:?}"
            )));
        }
        // Virtual-hosted addressing needs DNS for `<bucket>.<host>`; an
        // endpoint of our own (a test server, MinIO) has none.
        let s3_endpoint = std::env::var_os("AWS_ENDPOINT_URL_S3").is_some_and(|v| !v.is_empty());
        let path_style = s3_endpoint || sdk.endpoint_url().is_some();
        let config = aws_sdk_s3::config::Builder::from(sdk)
            .force_path_style(path_style)
            .build();
        let attempts = config.retry_config().map_or(3, |r| r.max_attempts()).max(1);
        Ok(S3 {
            client: aws_sdk_s3::Client::from_conf(config),
            settings,
            attempts,
        })
    }

    pub fn settings(&self) -> DownloadSettings {
        self.settings
    }

    /// The per-request configuration for `object`: its bucket's region when
    /// the event names one.
    fn overrides(object: &ObjectRef) -> aws_sdk_s3::config::Builder {
        let mut builder = aws_sdk_s3::config::Builder::new();
        if let Some(region) = &object.region {
            builder = builder.region(aws_sdk_s3::config::Region::new(region.clone()));
        }
        builder
    }

    /// HEAD with checksum mode enabled: size, S3's checksum, ETag, metadata.
    pub async fn head(&self, object: &ObjectRef) -> Result<ObjectHead, S3Error> {
        let target = object.uri();
        let output = self
            .client
            .head_object()
            .bucket(&object.bucket)
            .key(&object.key)
            .set_version_id(object.version_id.clone())
            .checksum_mode(ChecksumMode::Enabled)
            .customize()
            .config_override(S3::overrides(object))
            .send()
            .await
            .map_err(|e| S3Error::from_sdk(e, "HeadObject", &target))?;
        let content_length = output
            .content_length()
            .and_then(|n| u64::try_from(n).ok())
            .ok_or_else(|| S3Error::Body {
                target: target.clone(),
                reason: "HeadObject gave no Content-Length".into(),
            })?;
        let metadata = output
            .metadata()
            .into_iter()
            .flatten()
            .map(|(name, value)| (name.to_ascii_lowercase(), decode_rfc2047(value.trim())))
            .collect();
        Ok(ObjectHead {
            content_length,
            checksum_sha256: output.checksum_sha256().map(str::to_string),
            checksum_type: output.checksum_type().map(|t| t.as_str().to_string()),
            e_tag: output.e_tag().map(str::to_string),
            version_id: output.version_id().map(str::to_string),
            metadata,
        })
    }

    /// Downloads `object` (as `head` described it) into `dest`, hashing the
    /// bytes in order as they are written. Up to the ranged threshold: one
    /// GET with checksum mode, which the SDK validates against S3's stored
    /// checksum. Above: parts of `part_bytes`, `concurrency` at a time, each
    /// pinned to the object's version and ETag; S3 gives no checksum for a
    /// range, so the caller's comparison of the whole file's sha256 with
    /// S3's and the uploader's is what checks them.
    pub async fn download(
        &self,
        object: &ObjectRef,
        head: &ObjectHead,
        dest: std::fs::File,
    ) -> Result<Downloaded, S3Error> {
        let target = object.uri();
        let size = head.content_length;
        let ranges: Vec<Option<(u64, u64)>> = if size <= self.settings.ranged_threshold {
            vec![None]
        } else {
            let part = self.settings.part_bytes;
            (0..size.div_ceil(part))
                .map(|i| Some((i * part, ((i + 1) * part).min(size) - 1)))
                .collect()
        };
        let parts = ranges.len();
        let (chunks, writer) = spawn_writer(dest, target.clone());
        let fetched = self.fetch_in_order(object, head, ranges, &chunks).await;
        // Closing the channel lets the writer finish (also after an error).
        drop(chunks);
        let written = writer.await.map_err(|e| S3Error::Write {
            target: target.clone(),
            reason: e.to_string(),
        })?;
        fetched?;
        let (sha256, written) = written?;
        if written != size {
            return Err(S3Error::Body {
                target,
                reason: format!("received {written} bytes, HeadObject announced {size}"),
            });
        }
        Ok(Downloaded {
            sha256,
            size: written,
            parts,
        })
    }

    /// Fetches each range (`None`: the whole object) and hands the bodies
    /// to the writer in order, with up to `concurrency` fetches running ahead.
    async fn fetch_in_order(
        &self,
        object: &ObjectRef,
        head: &ObjectHead,
        ranges: Vec<Option<(u64, u64)>>,
        chunks: &mpsc::Sender<Bytes>,
    ) -> Result<(), S3Error> {
        let mut bodies = futures_util::stream::iter(ranges)
            .map(|range| {
                let (s3, object, head) = (self.clone(), object.clone(), head.clone());
                AbortOnDrop(tokio::spawn(async move {
                    s3.get_part(&object, &head, range).await
                }))
            })
            .buffered(self.settings.concurrency);
        while let Some(body) = bodies.next().await {
            let body = body.map_err(|e| S3Error::Body {
                target: object.uri(),
                reason: format!("a part download stopped: {e}"),
            })??;
            if chunks.send(body).await.is_err() {
                // The writer stopped; its error is what the caller reports.
                break;
            }
        }
        Ok(())
    }

    /// One GET (of a range, or of the whole object with the SDK's checksum
    /// validation), its body read to the end. A body that breaks off, or
    /// fails validation, is fetched again, up to the SDK's max attempts.
    async fn get_part(
        &self,
        object: &ObjectRef,
        head: &ObjectHead,
        range: Option<(u64, u64)>,
    ) -> Result<Bytes, S3Error> {
        let target = match range {
            Some((first, last)) => format!("{} bytes {first}-{last}", object.uri()),
            None => object.uri(),
        };
        let mut attempt = 1;
        loop {
            let mut overrides = S3::overrides(object);
            if range.is_some() {
                // No checksum exists for a range; the whole file's is checked.
                overrides = overrides
                    .response_checksum_validation(ResponseChecksumValidation::WhenRequired);
            }
            let output = self
                .client
                .get_object()
                .bucket(&object.bucket)
                .key(&object.key)
                .set_version_id(object.version_id.clone())
                .set_if_match(head.e_tag.clone())
                .set_range(range.map(|(first, last)| format!("bytes={first}-{last}")))
                .set_checksum_mode(range.is_none().then_some(ChecksumMode::Enabled))
                .customize()
                .config_override(overrides)
                .send()
                .await
                .map_err(|e| S3Error::from_sdk(e, "GetObject", &target))?;
            let expected = match range {
                Some((first, last)) => last - first + 1,
                None => head.content_length,
            };
            let error = match collect(output.body).await {
                Ok(bytes) if bytes.len() as u64 == expected => return Ok(bytes),
                Ok(bytes) => S3Error::Body {
                    target: target.clone(),
                    reason: format!("received {} bytes, expected {expected}", bytes.len()),
                },
                Err(error) => error_of_body(&target, &error),
            };
            if attempt >= self.attempts {
                return Err(error);
            }
            tracing::warn!(%target, attempt, error = %error, "the body broke off; fetching it again");
            attempt += 1;
        }
    }

    /// PUTs a small body (a JSON result) at `bucket/key`.
    pub async fn put(
        &self,
        object: &ObjectRef,
        body: Vec<u8>,
        content_type: &str,
    ) -> Result<(), S3Error> {
        let target = object.uri();
        self.client
            .put_object()
            .bucket(&object.bucket)
            .key(&object.key)
            .content_type(content_type)
            .body(ByteStream::from(body))
            .customize()
            .config_override(S3::overrides(object))
            .send()
            .await
            .map_err(|e| S3Error::from_sdk(e, "PutObject", &target))?;
        Ok(())
    }

    /// The SDK client, for tests that set up objects.
    pub fn client(&self) -> &aws_sdk_s3::Client {
        &self.client
    }
}

async fn collect(body: ByteStream) -> Result<Bytes, aws_sdk_s3::primitives::ByteStreamError> {
    Ok(body.collect().await?.into_bytes())
}

/// A body error, told apart: the SDK's checksum validation, or a transfer error.
fn error_of_body(target: &str, error: &aws_sdk_s3::primitives::ByteStreamError) -> S3Error {
    let reason = DisplayErrorContext(error).to_string();
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(error);
    while let Some(e) = source {
        if e.downcast_ref::<aws_smithy_checksums::body::validate::Error>()
            .is_some()
        {
            return S3Error::ChecksumValidation {
                target: target.to_string(),
                reason,
            };
        }
        source = e.source();
    }
    S3Error::Body {
        target: target.to_string(),
        reason,
    }
}

/// The writer's answer: the sha256 (hex) and count of the bytes written.
type Writer = JoinHandle<Result<(String, u64), S3Error>>;

/// The one place download bytes are written: a blocking thread that hashes
/// and writes each chunk in the order it arrives, and returns the sha256
/// (hex) and byte count once the sender is dropped.
fn spawn_writer(mut file: std::fs::File, target: String) -> (mpsc::Sender<Bytes>, Writer) {
    // Two chunks queued: the fetches ahead of the writer hold the rest.
    let (sender, mut receiver) = mpsc::channel::<Bytes>(2);
    let writer = tokio::task::spawn_blocking(move || {
        let mut hasher = Sha256::new();
        let mut size = 0u64;
        while let Some(chunk) = receiver.blocking_recv() {
            hasher.update(&chunk);
            file.write_all(&chunk).map_err(|e| S3Error::Write {
                target: target.clone(),
                reason: e.to_string(),
            })?;
            size += chunk.len() as u64;
        }
        file.flush().map_err(|e| S3Error::Write {
            target: target.clone(),
            reason: e.to_string(),
        })?;
        Ok((hex::encode(hasher.finalize()), size))
    });
    (sender, writer)
}

/// A spawned part download that is cancelled when the download gives up
/// (an error elsewhere drops the stream holding it).
struct AbortOnDrop<T>(JoinHandle<T>);

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

impl<T> Future for AbortOnDrop<T> {
    type Output = Result<T, tokio::task::JoinError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        Pin::new(&mut self.0).poll(cx)
    }
}

/// Decodes a header value that S3 encoded per RFC 2047 because the metadata
/// held non-ASCII text (`=?UTF-8?B?...?=`, `=?UTF-8?Q?...?=`); anything else,
/// or anything malformed, is returned as it came.
///
/// ```
/// use model_router_publisher::s3::decode_rfc2047;
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

    #[test]
    fn rfc2047_words_decode_and_malformed_ones_stay() {
        assert_eq!(decode_rfc2047("=?UTF-8?B?w6k=?= =?UTF-8?B?dMOp?="), "été");
        assert_eq!(decode_rfc2047("=?UTF-8?X?abc?="), "=?UTF-8?X?abc?=");
        assert_eq!(decode_rfc2047("=?UTF-8?Q?bad=G?="), "=?UTF-8?Q?bad=G?=");
        assert_eq!(decode_rfc2047("=?latin1?B?6Q==?="), "=?latin1?B?6Q==?=");
    }

    #[test]
    fn only_full_object_checksums_are_an_objects_sha256() {
        // sha256("") in base64, as S3 returns it.
        let empty = "47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU=";
        let head = |value: &str, kind: Option<&str>| ObjectHead {
            checksum_sha256: Some(value.into()),
            checksum_type: kind.map(str::to_string),
            ..ObjectHead::default()
        };
        assert_eq!(
            head(empty, Some("FULL_OBJECT")).full_object_sha256(),
            Ok(Some(
                "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855".into()
            ))
        );
        assert_eq!(head("Zm9v-3", None).full_object_sha256(), Ok(None));
        assert_eq!(
            head(empty, Some("COMPOSITE")).full_object_sha256(),
            Ok(None)
        );
        assert!(head("AAAA", None).full_object_sha256().is_err());
        assert_eq!(ObjectHead::default().full_object_sha256(), Ok(None));
    }
}
