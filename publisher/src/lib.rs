//! The S3 publisher (`model-router-publisher`): publishes models uploaded to
//! S3 into the model repository (EFS), the repository's only writer on AWS.
//! A crate of its own, so that the serving binary never links the AWS SDK.
//!
//! For each record of an S3 `ObjectCreated` event whose key is
//! `<prefix><name>/<version>/<file>.ort|.onnx` (or each object named on the
//! command line):
//!
//! 1. the name and version are checked with the repository's rules before
//!    anything is downloaded;
//! 2. the object's head is read and its bytes fetched with the AWS SDK
//!    ([`s3`]: default credential chain, standard retries, one validated GET
//!    or parallel ranged GETs for large objects) into a private temporary
//!    file under the staging directory, hashed in order as it is written;
//! 3. the bytes must match every sha256 the object claims: S3's own
//!    `x-amz-checksum-sha256` (full-object checksums only) and the uploader's
//!    `x-amz-meta-sha256`;
//! 4. an existing version is never touched: the same bytes again (S3 delivers
//!    events at least once) are `already_published`, other bytes `version_exists`;
//! 5. ONNX Runtime must load the file, so a model that cannot load never
//!    reaches the servers;
//! 6. [`Repository::publish`] copies it in atomically with its manifest (team
//!    and description from the `x-amz-meta-team` / `x-amz-meta-description` metadata);
//! 7. `results/<name>/<version>.json` is written back to the bucket, so the
//!    uploader can see the outcome.
//!
//! Every record is processed, then the invocation fails if any record
//! `failed` (S3 or EFS trouble: Lambda retries asynchronous events twice, then
//! the dead-letter queue keeps the event for a redrive). A `rejected` record
//! (bad key, checksum mismatch, existing version, unloadable model) is final:
//! retrying cannot change the answer, so it is reported, not retried.
//!
//! # Layout
//!
//! - this file: records, keys, checks, outcomes and codes, the Lambda loop;
//! - [`s3`]: the SDK client, the in-order hashing download, the result PUT;
//! - `main.rs`: the `model-router-publisher` command line (`lambda`, `event`, `object`).

pub mod s3;

use std::fmt;
use std::fs;
use std::path::PathBuf;

use aws_lambda_events::event::s3::{S3Event, S3EventRecord};
use lambda_runtime::{Diagnostic, LambdaEvent};
use model_router::engine::{Engine, EngineConfig, EngineError, ModelFormat, find_library};
use model_router::repository::{
    Manifest, ModelKey, ModelName, PublishRequest, Repository, RepositoryError, validate_segment,
};
use serde::Serialize;
use serde_json::Value;

use s3::{DownloadSettings, Downloaded, ObjectHead, ObjectRef, S3, S3Error};

/// Temporary downloads are named `.publish-s3-*` in the staging directory, so
/// that what a killed invocation left behind can be recognised and removed.
const TEMP_PREFIX: &str = ".publish-s3-";

/// The publisher's settings (flags and environment of `model-router-publisher`).
#[derive(Debug, Clone, Serialize)]
pub struct PublisherConfig {
    /// MODEL_ROOT: the repository, mounted writable (the publisher access point).
    pub model_root: PathBuf,
    /// PUBLISH_INCOMING_PREFIX: keys outside it are ignored.
    pub incoming_prefix: String,
    /// PUBLISH_RESULTS_PREFIX: where `<name>/<version>.json` outcomes are
    /// written in the same bucket; `None` (an empty prefix) writes none.
    pub results_prefix: Option<String>,
    /// MODEL_STAGING_DIR: where downloads wait, on local disk (`/tmp`).
    pub staging_dir: PathBuf,
    /// ORT_DYLIB_PATH: ONNX Runtime, to check that a model loads before it is published.
    pub ort_dylib_path: Option<PathBuf>,
    /// PUBLISH_RANGED_GET_THRESHOLD, PUBLISH_GET_PART_BYTES, PUBLISH_GET_CONCURRENCY.
    pub download: DownloadSettings,
}

/// Why the publisher could not start, or why an invocation failed.
#[derive(Debug, thiserror::Error)]
pub enum PublisherError {
    #[error(transparent)]
    S3(#[from] S3Error),
    #[error(transparent)]
    Repository(#[from] RepositoryError),
    #[error(transparent)]
    Engine(#[from] EngineError),
    #[error("staging directory {path}: {reason}")]
    Staging { path: String, reason: String },
    #[error("the event is not an S3 event notification: {0}")]
    InvalidEvent(String),
    #[error("not under a Lambda runtime: {0}")]
    NotOnLambda(String),
    #[error("internal error: {0}")]
    Internal(String),
    /// Some records failed; every record was processed first.
    #[error("{failed} of {total} records failed: {details}")]
    RecordsFailed {
        failed: usize,
        total: usize,
        details: String,
    },
}

impl From<PublisherError> for Diagnostic {
    fn from(error: PublisherError) -> Diagnostic {
        let error_type = match &error {
            PublisherError::InvalidEvent(_) => "InvalidEvent",
            PublisherError::RecordsFailed { .. } => "PublishFailed",
            _ => "PublisherUnavailable",
        };
        Diagnostic {
            error_type: error_type.to_string(),
            error_message: error.to_string(),
        }
    }
}

/// What became of one record.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    /// A new version is in the repository.
    Published,
    /// The version was already there with these very bytes (a re-delivery).
    AlreadyPublished,
    /// Not for the publisher: outside the prefix, not a model file, not a creation.
    Ignored,
    /// Refused for good: bad key or name, checksum mismatch, version exists,
    /// model does not load. Nothing was published.
    Rejected,
    /// S3 or the repository failed; a retry may succeed. Nothing was published.
    Failed,
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Status::Published => "published",
            Status::AlreadyPublished => "already_published",
            Status::Ignored => "ignored",
            Status::Rejected => "rejected",
            Status::Failed => "failed",
        })
    }
}

/// One object to publish: a record of an S3 event, or an object named on
/// the command line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Upload {
    /// The object; its key URL-decoded (as it came when it would not decode).
    pub object: ObjectRef,
    /// `ObjectCreated:Put`, ...; anything not `ObjectCreated:*` is ignored.
    pub event_name: String,
    /// The key as the event carried it, when it is not URL-encoded UTF-8.
    pub undecodable_key: Option<String>,
}

impl Upload {
    /// The upload an event record describes (its key URL-decoded).
    pub fn from_record(record: &S3EventRecord) -> Upload {
        let raw_key = record.s3.object.key.clone().unwrap_or_default();
        let (key, undecodable_key) = match decode_key(&raw_key) {
            Ok(key) => (key, None),
            Err(_) => (raw_key.clone(), Some(raw_key)),
        };
        Upload {
            object: ObjectRef {
                bucket: record.s3.bucket.name.clone().unwrap_or_default(),
                key,
                version_id: object_version(record),
                region: record.aws_region.clone().filter(|r| !r.is_empty()),
            },
            event_name: record.event_name.clone().unwrap_or_default(),
            undecodable_key,
        }
    }

    /// An object named directly (`model-router-publisher object`), treated
    /// as if its upload had just been announced.
    pub fn of_object(object: ObjectRef) -> Upload {
        Upload {
            object,
            event_name: "ObjectCreated:Put".into(),
            undecodable_key: None,
        }
    }
}

/// The summary of one record: logged as one line, returned in the
/// invocation's answer and (with `at`) written as the result object.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RecordReport {
    pub status: Status,
    /// The stable code of a rejection or failure (`checksum_mismatch`, `version_exists`, ...).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub code: Option<&'static str>,
    /// What went wrong and what was expected, for `rejected` and `failed`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Why an `ignored` record was ignored.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// `s3://bucket/key?versionId=...`
    pub source: String,
    pub bucket: String,
    /// The object key, URL-decoded.
    pub key: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    /// sha256 (hex) of the bytes downloaded.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sha256: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub size: Option<u64>,
    /// How many GETs fetched it: 1, or the number of ranged parts.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub parts: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub team: Option<String>,
    /// The claimed checksums the bytes were checked against and matched:
    /// `x-amz-checksum-sha256`, `x-amz-meta-sha256`. Empty: the object claimed none.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub verified: Vec<&'static str>,
    /// The result object written for the uploader.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub result_key: Option<String>,
    /// Writing the result object failed (the record then counts as failed for
    /// the invocation, so the retry writes it).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub result_error: Option<String>,
}

impl RecordReport {
    /// A report for `upload`, not yet settled (status `failed` until it is).
    fn for_upload(upload: &Upload) -> RecordReport {
        let object = &upload.object;
        RecordReport {
            status: Status::Failed,
            code: None,
            error: None,
            reason: None,
            source: object.uri(),
            bucket: object.bucket.clone(),
            key: object.key.clone(),
            model: None,
            version: None,
            sha256: None,
            size: None,
            parts: None,
            team: None,
            verified: Vec::new(),
            result_key: None,
            result_error: None,
        }
    }

    /// Whether this record makes the invocation fail (and so be retried).
    pub fn is_failure(&self) -> bool {
        self.status == Status::Failed || self.result_error.is_some()
    }

    /// Whether the object is in the repository now (published or already there).
    pub fn is_published(&self) -> bool {
        matches!(self.status, Status::Published | Status::AlreadyPublished)
    }

    fn ignore(mut self, reason: impl Into<String>) -> RecordReport {
        self.status = Status::Ignored;
        self.reason = Some(reason.into());
        self
    }

    fn settle(&mut self, outcome: Result<Status, RecordError>) {
        match outcome {
            Ok(status) => self.status = status,
            Err(error) => {
                self.status = if error.is_final() {
                    Status::Rejected
                } else {
                    Status::Failed
                };
                self.code = Some(error.code());
                self.error = Some(error.to_string());
            }
        }
    }
}

/// The answer to one invocation: a report per record, in event order.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct EventReport {
    pub records: Vec<RecordReport>,
}

impl EventReport {
    /// How many records make the invocation fail.
    pub fn failed(&self) -> usize {
        self.records.iter().filter(|r| r.is_failure()).count()
    }
}

/// Why one record was not published.
#[derive(Debug, thiserror::Error)]
enum RecordError {
    #[error("{0}")]
    InvalidKey(String),
    #[error(transparent)]
    InvalidName(RepositoryError),
    #[error("{name}: {reason}")]
    InvalidMetadata { name: &'static str, reason: String },
    #[error(
        "the object's sha256 is {actual}, but its {claimed_by} says {expected}; nothing was published"
    )]
    ChecksumMismatch {
        claimed_by: &'static str,
        expected: String,
        actual: String,
    },
    /// S3 checked the stored bytes against this checksum on upload, so the
    /// download is what went wrong.
    #[error(
        "the downloaded bytes' sha256 is {actual}, but S3's x-amz-checksum-sha256 says {expected}: the download was corrupted; nothing was published"
    )]
    DownloadCorrupted { expected: String, actual: String },
    #[error(
        "{key} already exists{}; this object's sha256 is {new}. Published versions are immutable: upload it as a new version",
        existing.as_deref().map(|e| format!(" with sha256 {e}")).unwrap_or_default()
    )]
    VersionExists {
        key: String,
        existing: Option<String>,
        new: String,
    },
    #[error("ONNX Runtime cannot load it, so it was not published: {0}")]
    ModelLoadFailed(String),
    #[error(transparent)]
    S3(#[from] S3Error),
    #[error("staging the download under {dir}: {reason}")]
    Staging { dir: String, reason: String },
    #[error(transparent)]
    Repository(RepositoryError),
    #[error("processing the record stopped unexpectedly: {0}")]
    Internal(String),
}

impl RecordError {
    /// The stable code, as in the result object and the logs.
    fn code(&self) -> &'static str {
        match self {
            RecordError::InvalidKey(_) => "invalid_key",
            RecordError::InvalidName(_) => "invalid_name",
            RecordError::InvalidMetadata { .. } => "invalid_metadata",
            RecordError::ChecksumMismatch { .. } => "checksum_mismatch",
            RecordError::DownloadCorrupted { .. }
            | RecordError::S3(S3Error::ChecksumValidation { .. }) => "s3_checksum_mismatch",
            RecordError::VersionExists { .. } => "version_exists",
            RecordError::ModelLoadFailed(_) => "model_load_failed",
            RecordError::S3(e) if e.status() == Some(403) => "s3_access_denied",
            RecordError::S3(e) if e.status() == Some(404) => "s3_not_found",
            RecordError::S3(S3Error::Write { .. }) | RecordError::Staging { .. } => {
                "staging_failed"
            }
            RecordError::S3(_) => "s3_error",
            RecordError::Repository(e) => model_router::Error::from(e.clone()).code(),
            RecordError::Internal(_) => "internal_error",
        }
    }

    /// Final: the same object would be refused again, so retrying is pointless.
    fn is_final(&self) -> bool {
        matches!(
            self,
            RecordError::InvalidKey(_)
                | RecordError::InvalidName(_)
                | RecordError::InvalidMetadata { .. }
                | RecordError::ChecksumMismatch { .. }
                | RecordError::VersionExists { .. }
                | RecordError::ModelLoadFailed(_)
        )
    }
}

/// What a key names, if anything the publisher handles.
#[derive(Debug)]
enum KeyMatch {
    Outside,
    NotAModel(&'static str),
    Model { key: ModelKey, format: ModelFormat },
}

/// The publisher: built once at start-up, shared by every invocation.
/// Cheap to clone (the clones share one client and repository handle).
#[derive(Debug, Clone)]
pub struct Publisher {
    inner: std::sync::Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    config: PublisherConfig,
    repository: Repository,
    s3: S3,
    /// `None`: models are published without a load check (tests of the
    /// publishing logic alone; `start` always has one).
    engine: Option<Engine>,
}

impl Publisher {
    /// Opens the repository, prepares the staging directory (removing
    /// downloads a killed invocation left behind) and keeps `s3` and `engine`.
    pub fn new(
        config: PublisherConfig,
        s3: S3,
        engine: Option<Engine>,
    ) -> Result<Publisher, PublisherError> {
        let repository = Repository::open(&config.model_root)?;
        let staging = |e: std::io::Error| PublisherError::Staging {
            path: config.staging_dir.display().to_string(),
            reason: e.to_string(),
        };
        fs::create_dir_all(&config.staging_dir).map_err(staging)?;
        // Lambda keeps /tmp between invocations of one environment, also after
        // a timeout; a leftover multi-GB download would fill it for the retry.
        for entry in fs::read_dir(&config.staging_dir).map_err(staging)? {
            let entry = entry.map_err(staging)?;
            let ours = entry.file_name().to_string_lossy().starts_with(TEMP_PREFIX);
            if ours && fs::remove_file(entry.path()).is_ok() {
                tracing::warn!(path = %entry.path().display(), "removed an unfinished download");
            }
        }
        Ok(Publisher {
            inner: std::sync::Arc::new(Inner {
                config,
                repository,
                s3,
                engine,
            }),
        })
    }

    /// The publisher as it runs: the S3 client from the SDK's default chains
    /// (see [`S3::from_env`]) and ONNX Runtime for the load check.
    pub async fn start(config: PublisherConfig) -> Result<Publisher, PublisherError> {
        let s3 = S3::from_env(config.download).await?;
        let engine = Engine::init(&EngineConfig {
            dylib_path: find_library(config.ort_dylib_path.as_deref())?,
            // Loading checks only; nothing runs.
            intra_threads: 1,
        })?;
        Publisher::new(config, s3, Some(engine))
    }

    pub fn config(&self) -> &PublisherConfig {
        &self.inner.config
    }

    /// One Lambda invocation: the S3 event (or S3's `s3:TestEvent`, sent when
    /// the notification is configured, which is acknowledged and ignored).
    /// Returns the [`EventReport`] as JSON, or, once every record has been
    /// processed, an error if any record failed.
    pub async fn invoke(&self, payload: Value) -> Result<Value, PublisherError> {
        let report = self.handle_payload(payload).await?;
        let failed: Vec<String> = report
            .records
            .iter()
            .filter(|r| r.is_failure())
            .map(|r| {
                let error = r.error.as_deref().or(r.result_error.as_deref());
                format!("{}: {}", r.source, error.unwrap_or("failed"))
            })
            .collect();
        if !failed.is_empty() {
            return Err(PublisherError::RecordsFailed {
                failed: failed.len(),
                total: report.records.len(),
                details: failed.join("; "),
            });
        }
        serde_json::to_value(&report).map_err(|e| PublisherError::Internal(e.to_string()))
    }

    /// Parses an event payload (an S3 event notification, or S3's test
    /// event, which has no records) and processes it.
    pub async fn handle_payload(&self, payload: Value) -> Result<EventReport, PublisherError> {
        if payload.get("Event").and_then(Value::as_str) == Some("s3:TestEvent") {
            tracing::info!("S3 test event acknowledged");
            return Ok(EventReport::default());
        }
        let event: S3Event = serde_json::from_value(payload)
            .map_err(|e| PublisherError::InvalidEvent(e.to_string()))?;
        Ok(self.handle(event).await)
    }

    /// Processes every record of `event` in order.
    pub async fn handle(&self, event: S3Event) -> EventReport {
        self.handle_uploads(event.records.iter().map(Upload::from_record).collect())
            .await
    }

    /// Processes each upload in order, each on a task of its own (a panic is
    /// a bug, reported as that record's failure), and logs one line per upload.
    pub async fn handle_uploads(&self, uploads: Vec<Upload>) -> EventReport {
        let mut records = Vec::with_capacity(uploads.len());
        for upload in uploads {
            let fallback = RecordReport::for_upload(&upload);
            let publisher = self.clone();
            let report = match tokio::spawn(async move { publisher.process(&upload).await }).await {
                Ok(report) => report,
                Err(join) => {
                    let mut report = fallback;
                    report.settle(Err(RecordError::Internal(join.to_string())));
                    report
                }
            };
            log_record(&report);
            records.push(report);
        }
        EventReport { records }
    }

    /// Processes one upload.
    async fn process(&self, upload: &Upload) -> RecordReport {
        let mut report = RecordReport::for_upload(upload);
        let event_name = &upload.event_name;
        if !event_name.starts_with("ObjectCreated:") {
            return report.ignore(format!("{event_name:?} is not an ObjectCreated event"));
        }
        if let Some(raw) = &upload.undecodable_key {
            report.settle(Err(RecordError::InvalidKey(format!(
                "key {raw:?} is not URL-encoded UTF-8"
            ))));
            return report;
        }
        let prefix = &self.inner.config.incoming_prefix;
        let (key, format) = match parse_key(prefix, &upload.object.key) {
            Ok(KeyMatch::Outside) => {
                return report.ignore(format!("outside the prefix {prefix:?}"));
            }
            Ok(KeyMatch::NotAModel(why)) => return report.ignore(why),
            Ok(KeyMatch::Model { key, format }) => (key, format),
            Err(error) => {
                report.settle(Err(error));
                return report;
            }
        };
        report.model = Some(key.name().to_string());
        report.version = Some(key.version().to_string());
        let outcome = self
            .publish_object(&upload.object, &key, format, &mut report)
            .await;
        report.settle(outcome);
        if report.status != Status::Failed {
            self.write_result(&upload.object, &key, &mut report).await;
        }
        report
    }

    /// Runs blocking filesystem (or ONNX Runtime) work off the async workers.
    async fn blocking<T: Send + 'static>(
        &self,
        work: impl FnOnce(&Publisher) -> Result<T, RecordError> + Send + 'static,
    ) -> Result<T, RecordError> {
        let publisher = self.clone();
        tokio::task::spawn_blocking(move || work(&publisher))
            .await
            .map_err(|e| RecordError::Internal(e.to_string()))?
    }

    /// Download, verify, check, publish. Fills in what it learns as it goes.
    async fn publish_object(
        &self,
        object: &ObjectRef,
        key: &ModelKey,
        format: ModelFormat,
        report: &mut RecordReport,
    ) -> Result<Status, RecordError> {
        let head = self.inner.s3.head(object).await?;
        report.size = Some(head.content_length);
        // Private (0600), on local disk, and removed when dropped, whatever happens.
        let download = self
            .blocking(move |publisher| {
                let dir = &publisher.inner.config.staging_dir;
                let staging = |e: std::io::Error| RecordError::Staging {
                    dir: dir.display().to_string(),
                    reason: e.to_string(),
                };
                fs::create_dir_all(dir).map_err(staging)?;
                tempfile::Builder::new()
                    .prefix(TEMP_PREFIX)
                    .suffix(&format!(".{format}"))
                    .tempfile_in(dir)
                    .map_err(staging)
            })
            .await?;
        let file = download
            .as_file()
            .try_clone()
            .map_err(|e| RecordError::Staging {
                dir: self.inner.config.staging_dir.display().to_string(),
                reason: e.to_string(),
            })?;
        let downloaded = self.inner.s3.download(object, &head, file).await?;
        report.sha256 = Some(downloaded.sha256.clone());
        report.size = Some(downloaded.size);
        report.parts = Some(downloaded.parts);
        verify_claims(&head, &downloaded, report)?;
        let text = |name: &str| {
            head.metadata
                .get(name)
                .map(|v| v.trim().to_string())
                .filter(|v| !v.is_empty())
        };
        let (team, description) = (text("team"), text("description"));
        report.team = team.clone();

        let (key, sha256) = (key.clone(), downloaded.sha256.clone());
        let (status, team) = self
            .blocking(move |publisher| {
                publisher.publish_download(&key, format, download, &sha256, team, description)
            })
            .await?;
        report.team = team;
        Ok(status)
    }

    /// The blocking half of publishing: the existing-version check, the load
    /// check and [`Repository::publish`]. Returns the status and the team the
    /// repository now holds for the version.
    fn publish_download(
        &self,
        key: &ModelKey,
        format: ModelFormat,
        download: tempfile::NamedTempFile,
        sha256: &str,
        team: Option<String>,
        description: Option<String>,
    ) -> Result<(Status, Option<String>), RecordError> {
        if let Some(existing) = self.existing(key)? {
            return same_or_exists(key, Some(existing), sha256);
        }
        if let Some(engine) = &self.inner.engine {
            // The download is a private local file nothing else writes: the
            // mapping the engine makes of it is safe (DESIGN section 7).
            engine
                .load(download.path(), format)
                .map_err(|e| RecordError::ModelLoadFailed(e.to_string()))?;
        }
        let published = self.inner.repository.publish(&PublishRequest {
            name: key.name().to_string(),
            version: key.version().to_string(),
            source: download.path().to_path_buf(),
            team: team.clone(),
            description,
        });
        match published {
            Ok(_) => Ok((Status::Published, team)),
            // Another invocation published it between our check and our rename.
            Err(RepositoryError::AlreadyExists { .. }) => {
                let existing = self.existing(key)?;
                same_or_exists(key, existing, sha256)
            }
            Err(e) => Err(RecordError::Repository(e)),
        }
    }

    /// The manifest of `key` if that version is published.
    fn existing(&self, key: &ModelKey) -> Result<Option<Manifest>, RecordError> {
        match self.inner.repository.read(key) {
            Ok(model) => Ok(Some(model.manifest)),
            Err(
                RepositoryError::ModelNotFound { .. } | RepositoryError::VersionNotFound { .. },
            ) => Ok(None),
            Err(e) => Err(RecordError::Repository(e)),
        }
    }

    /// Writes `<results prefix><name>/<version>.json`: the report and when.
    async fn write_result(&self, object: &ObjectRef, key: &ModelKey, report: &mut RecordReport) {
        let Some(prefix) = &self.inner.config.results_prefix else {
            return;
        };
        let result_key = format!("{prefix}{}/{}.json", key.name(), key.version());
        let mut document = match serde_json::to_value(&*report) {
            Ok(document) => document,
            Err(e) => {
                report.result_error = Some(e.to_string());
                return;
            }
        };
        if let Some(fields) = document.as_object_mut() {
            let at = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
            fields.insert("at".into(), Value::String(at));
        }
        let body = match serde_json::to_vec_pretty(&document) {
            Ok(body) => body,
            Err(e) => {
                report.result_error = Some(e.to_string());
                return;
            }
        };
        let target = ObjectRef {
            key: result_key.clone(),
            version_id: None,
            ..object.clone()
        };
        match self.inner.s3.put(&target, body, "application/json").await {
            Ok(()) => report.result_key = Some(result_key),
            Err(e) => report.result_error = Some(e.to_string()),
        }
    }
}

/// Runs the Lambda runtime loop with `publisher` handling every event.
pub async fn run(publisher: Publisher) -> Result<(), lambda_runtime::Error> {
    model_router::lambda::check_lambda_environment().map_err(|why| {
        Box::new(PublisherError::NotOnLambda(format!(
            "{why}; off Lambda use `model-router-publisher event FILE` or `object s3://...`"
        ))) as lambda_runtime::Error
    })?;
    tracing::info!(pid = std::process::id(), "publisher runtime loop starting");
    lambda_runtime::run(lambda_runtime::service_fn(
        move |event: LambdaEvent<Value>| {
            let publisher = publisher.clone();
            async move { publisher.invoke(event.payload).await }
        },
    ))
    .await
}

/// `already_published` (with the team the repository holds, which is what
/// the report should say, not this upload's claim) when `existing` has these
/// bytes, else `version_exists`.
fn same_or_exists(
    key: &ModelKey,
    existing: Option<Manifest>,
    sha256: &str,
) -> Result<(Status, Option<String>), RecordError> {
    match existing {
        Some(manifest) if manifest.sha256 == sha256 => {
            Ok((Status::AlreadyPublished, manifest.team))
        }
        other => Err(RecordError::VersionExists {
            key: key.to_string(),
            existing: other.map(|m| m.sha256),
            new: sha256.to_string(),
        }),
    }
}

/// Checks the downloaded bytes against every sha256 the object claims:
/// S3's full-object checksum (a mismatch there means the transfer went wrong:
/// S3 checked those bytes on upload) and the uploader's `x-amz-meta-sha256`.
fn verify_claims(
    head: &ObjectHead,
    downloaded: &Downloaded,
    report: &mut RecordReport,
) -> Result<(), RecordError> {
    let stored = head
        .full_object_sha256()
        .map_err(|reason| RecordError::InvalidMetadata {
            name: "x-amz-checksum-sha256",
            reason,
        })?;
    if head.checksum_sha256.is_some() && stored.is_none() {
        // A multipart upload's checksum of its parts' checksums ("...-<parts>",
        // type COMPOSITE): not the object's sha256. x-amz-meta-sha256 covers those.
        tracing::debug!(source = %report.source, "x-amz-checksum-sha256 is composite; not compared");
    }
    let claimed = match head.metadata.get("sha256") {
        Some(value) => {
            let hex = value.trim().to_ascii_lowercase();
            if hex.len() != 64 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Err(RecordError::InvalidMetadata {
                    name: "x-amz-meta-sha256",
                    reason: format!("{value:?} is not 64 hex digits (the file's sha256)"),
                });
            }
            Some(hex)
        }
        None => None,
    };
    if let Some(expected) = stored {
        if expected != downloaded.sha256 {
            return Err(RecordError::DownloadCorrupted {
                expected,
                actual: downloaded.sha256.clone(),
            });
        }
        report.verified.push("x-amz-checksum-sha256");
    }
    if let Some(expected) = claimed {
        if expected != downloaded.sha256 {
            return Err(RecordError::ChecksumMismatch {
                claimed_by: "x-amz-meta-sha256",
                expected,
                actual: downloaded.sha256.clone(),
            });
        }
        report.verified.push("x-amz-meta-sha256");
    }
    Ok(())
}

/// The object version the event names; `None` for unversioned buckets.
fn object_version(record: &S3EventRecord) -> Option<String> {
    record
        .s3
        .object
        .version_id
        .clone()
        .filter(|v| !v.is_empty())
}

/// S3 event keys are URL-encoded with `+` for a space.
fn decode_key(raw: &str) -> Result<String, RecordError> {
    let spaced = raw.replace('+', " ");
    percent_encoding::percent_decode_str(&spaced)
        .decode_utf8()
        .map(|key| key.into_owned())
        .map_err(|_| RecordError::InvalidKey(format!("key {raw:?} is not URL-encoded UTF-8")))
}

/// Matches `<prefix><name>/<version>/<file>.ort|.onnx`; the name and version
/// must pass the repository's rules.
fn parse_key(prefix: &str, key: &str) -> Result<KeyMatch, RecordError> {
    let Some(rest) = key.strip_prefix(prefix) else {
        return Ok(KeyMatch::Outside);
    };
    let file = rest.rsplit('/').next().unwrap_or(rest);
    if file.is_empty() {
        return Ok(KeyMatch::NotAModel("a folder, not a file"));
    }
    let Some(format) = ModelFormat::from_file_name(file) else {
        return Ok(KeyMatch::NotAModel("not a .ort or .onnx file"));
    };
    let parts: Vec<&str> = rest.split('/').collect();
    // The segments are checked first so that `../x/1/model.ort` says why.
    if parts.len() >= 2 {
        ModelName::new(parts[0]).map_err(RecordError::InvalidName)?;
    }
    if parts.len() >= 3 {
        validate_segment("model version", parts[1]).map_err(RecordError::InvalidName)?;
    }
    if parts.len() != 3 {
        return Err(RecordError::InvalidKey(format!(
            "key {key:?} is not {prefix}<name>/<version>/<file>.ort or .onnx"
        )));
    }
    let key = ModelKey::new(parts[0], parts[1]).map_err(RecordError::InvalidName)?;
    Ok(KeyMatch::Model { key, format })
}

/// One line per record, at a level that says whether someone should look.
fn log_record(report: &RecordReport) {
    let line = serde_json::to_string(report).unwrap_or_default();
    match report.status {
        Status::Published | Status::AlreadyPublished | Status::Ignored
            if report.result_error.is_none() =>
        {
            tracing::info!(status = %report.status, source = %report.source, record = %line, "publish-s3 record")
        }
        Status::Rejected if report.result_error.is_none() => {
            tracing::warn!(status = %report.status, source = %report.source, record = %line, "publish-s3 record")
        }
        _ => {
            tracing::error!(status = %report.status, source = %report.source, record = %line, "publish-s3 record")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(key: &str) -> Result<KeyMatch, RecordError> {
        parse_key("incoming/", key)
    }

    #[test]
    fn keys_name_a_model_version_or_are_left_alone() {
        match parse("incoming/fraud-xgb/3/model.ort") {
            Ok(KeyMatch::Model { key, format }) => {
                assert_eq!(key.to_string(), "fraud-xgb/3");
                assert_eq!(format, ModelFormat::Ort);
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            parse("incoming/m/1/anything.ONNX"),
            Ok(KeyMatch::Model {
                format: ModelFormat::Onnx,
                ..
            })
        ));
        assert!(matches!(parse("results/m/1.json"), Ok(KeyMatch::Outside)));
        assert!(matches!(
            parse("elsewhere/incoming/m/1/model.ort"),
            Ok(KeyMatch::Outside)
        ));
        assert!(matches!(parse("incoming/m/1/"), Ok(KeyMatch::NotAModel(_))));
        assert!(matches!(
            parse("incoming/m/1/notes.txt"),
            Ok(KeyMatch::NotAModel(_))
        ));
    }

    #[test]
    fn bad_keys_are_rejected_with_the_reason() {
        for (key, code) in [
            ("incoming/../x/1/model.ort", "invalid_name"),
            ("incoming/../1/model.ort", "invalid_name"),
            ("incoming/m/../model.ort", "invalid_name"),
            ("incoming/.hidden/1/model.ort", "invalid_name"),
            ("incoming/a/b/c/model.ort", "invalid_key"),
            ("incoming/m/model.ort", "invalid_key"),
            ("incoming/model.ort", "invalid_key"),
        ] {
            match parse(key) {
                Err(error) => {
                    assert_eq!(error.code(), code, "{key}: {error}");
                    assert!(error.is_final(), "{key}");
                }
                Ok(other) => panic!("{key}: {other:?}"),
            }
        }
    }

    #[test]
    fn event_keys_are_url_decoded() {
        assert_eq!(
            decode_key("incoming/my+model/1/a%2Bb.ort").unwrap(),
            "incoming/my model/1/a+b.ort"
        );
        assert_eq!(
            decode_key("incoming/%C3%A9/1/m.ort").unwrap(),
            "incoming/é/1/m.ort"
        );
        assert_eq!(
            decode_key("incoming/%FF/1/m.ort").unwrap_err().code(),
            "invalid_key"
        );
    }
}
