//! The crate's error: one enum wrapping each layer's error, and the one place
//! that maps an error to its stable code and HTTP status.

use http::StatusCode;
use serde_json::json;

use crate::cache::CacheError;
use crate::engine::EngineError;
use crate::memory::MemoryError;
use crate::repository::RepositoryError;

/// Errors of the request layer: what the caller sent, before any model is involved.
#[derive(Debug, Clone, thiserror::Error)]
pub enum RequestError {
    #[error("the body is not valid JSON: {0}")]
    InvalidJson(String),
    #[error("{0}")]
    InvalidInput(String),
    #[error(
        "no route for {method} {path}; routes are listed in the README (e.g. POST /models/{{name}}/{{version}}/predict)"
    )]
    RouteNotFound { method: String, path: String },
    #[error("{method} is not allowed on {path}; allowed: {allowed}")]
    MethodNotAllowed {
        method: String,
        path: String,
        allowed: &'static str,
    },
    #[error("the request body is {size} bytes; the limit is {limit} bytes")]
    PayloadTooLarge { size: usize, limit: usize },
    #[error("{0}")]
    Forbidden(String),
    #[error("{0}")]
    PolicyUnavailable(String),
    #[error("the request body is not valid HTTP framing: {0}")]
    MalformedBody(String),
    #[error("the request body did not arrive within {seconds} seconds (BODY_READ_TIMEOUT_SECONDS)")]
    BodyTimeout { seconds: f64 },
    /// A protocol feature model-router deliberately does not offer (sequences,
    /// priorities, classification, repository load/unload): refused, never ignored.
    #[error("{0}")]
    NotSupported(String),
    /// The request's own deadline (the `timeout` parameter) passed.
    #[error("{0}")]
    DeadlineExceeded(String),
}

/// Every error a request can end in.
#[derive(Debug, Clone, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Request(#[from] RequestError),
    #[error(transparent)]
    Repository(#[from] RepositoryError),
    #[error(transparent)]
    Cache(#[from] CacheError),
    #[error(transparent)]
    Engine(#[from] EngineError),
    #[error(transparent)]
    Memory(#[from] MemoryError),
}

impl Error {
    /// The stable snake_case code clients may match on (DESIGN section 3).
    pub fn code(&self) -> &'static str {
        match self {
            Error::Request(e) => match e {
                RequestError::InvalidJson(_) => "invalid_json",
                RequestError::InvalidInput(_) => "invalid_input",
                RequestError::RouteNotFound { .. } => "route_not_found",
                RequestError::MethodNotAllowed { .. } => "method_not_allowed",
                RequestError::PayloadTooLarge { .. } => "payload_too_large",
                RequestError::Forbidden(_) => "forbidden",
                RequestError::PolicyUnavailable(_) => "policy_unavailable",
                RequestError::MalformedBody(_) => "invalid_body",
                RequestError::BodyTimeout { .. } => "request_timeout",
                RequestError::NotSupported(_) => "not_supported",
                RequestError::DeadlineExceeded(_) => "deadline_exceeded",
            },
            Error::Repository(e) => match e {
                RepositoryError::InvalidName { .. } => "invalid_name",
                RepositoryError::ModelNotFound { .. } => "model_not_found",
                RepositoryError::VersionNotFound { .. } | RepositoryError::OutsideRoot { .. } => {
                    "version_not_found"
                }
                RepositoryError::ChecksumMismatch { .. } => "checksum_mismatch",
                RepositoryError::InvalidManifest { .. } => "model_load_failed",
                RepositoryError::Unavailable { .. } => "repository_unavailable",
                RepositoryError::Timeout { .. } => "load_timeout",
                RepositoryError::AlreadyExists { .. } => "version_exists",
                RepositoryError::Publish(_) => "publish_failed",
            },
            Error::Cache(e) => match e {
                CacheError::TooLarge { .. } => "model_too_large",
                CacheError::Busy { .. } => "cache_busy",
            },
            Error::Engine(e) => match e {
                EngineError::Library { .. } => "model_load_failed",
                EngineError::Load(_) => "model_load_failed",
                EngineError::InvalidInput(_) => "invalid_input",
                EngineError::Inference(_) => "inference_failed",
                EngineError::OutOfMemory(_) => "insufficient_memory",
            },
            Error::Memory(e) => match e {
                MemoryError::TooLarge { .. } => "memory_limit_exceeded",
                MemoryError::Busy { .. } => "insufficient_memory",
            },
        }
    }

    /// The HTTP status for this error (DESIGN section 3).
    pub fn status(&self) -> StatusCode {
        match self.code() {
            "invalid_json" | "invalid_input" | "invalid_name" | "invalid_body"
            | "not_supported" => StatusCode::BAD_REQUEST,
            "request_timeout" => StatusCode::REQUEST_TIMEOUT,
            "forbidden" => StatusCode::FORBIDDEN,
            "model_not_found" | "version_not_found" | "route_not_found" => StatusCode::NOT_FOUND,
            "method_not_allowed" => StatusCode::METHOD_NOT_ALLOWED,
            "version_exists" => StatusCode::CONFLICT,
            "payload_too_large" | "memory_limit_exceeded" => StatusCode::PAYLOAD_TOO_LARGE,
            "repository_unavailable"
            | "load_timeout"
            | "cache_busy"
            | "policy_unavailable"
            | "insufficient_memory" => StatusCode::SERVICE_UNAVAILABLE,
            "model_too_large" => StatusCode::INSUFFICIENT_STORAGE,
            "deadline_exceeded" => StatusCode::GATEWAY_TIMEOUT,
            _ => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// The JSON error body: `{"error": "...", "code": "..."}`.
    pub fn body(&self) -> serde_json::Value {
        json!({ "error": self.to_string(), "code": self.code() })
    }
}

impl From<crate::engine::ShapeMismatch> for Error {
    fn from(e: crate::engine::ShapeMismatch) -> Self {
        Error::Request(RequestError::InvalidInput(e.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_code_maps_to_the_documented_status() {
        let cases: Vec<(Error, &str, u16)> = vec![
            (
                RequestError::InvalidJson("x".into()).into(),
                "invalid_json",
                400,
            ),
            (
                RequestError::InvalidInput("x".into()).into(),
                "invalid_input",
                400,
            ),
            (
                RepositoryError::InvalidName {
                    what: "name",
                    value: "..".into(),
                    reason: "x",
                }
                .into(),
                "invalid_name",
                400,
            ),
            (RequestError::Forbidden("x".into()).into(), "forbidden", 403),
            (
                RequestError::MalformedBody("x".into()).into(),
                "invalid_body",
                400,
            ),
            (
                RequestError::BodyTimeout { seconds: 1.0 }.into(),
                "request_timeout",
                408,
            ),
            (
                RequestError::NotSupported("x".into()).into(),
                "not_supported",
                400,
            ),
            (
                RequestError::DeadlineExceeded("x".into()).into(),
                "deadline_exceeded",
                504,
            ),
            (
                RequestError::PolicyUnavailable("x".into()).into(),
                "policy_unavailable",
                503,
            ),
            (
                RepositoryError::ModelNotFound { name: "m".into() }.into(),
                "model_not_found",
                404,
            ),
            (
                RepositoryError::VersionNotFound {
                    name: "m".into(),
                    version: "1".into(),
                    available: vec![],
                }
                .into(),
                "version_not_found",
                404,
            ),
            (
                RequestError::RouteNotFound {
                    method: "GET".into(),
                    path: "/x".into(),
                }
                .into(),
                "route_not_found",
                404,
            ),
            (
                RequestError::PayloadTooLarge { size: 2, limit: 1 }.into(),
                "payload_too_large",
                413,
            ),
            (
                RepositoryError::ChecksumMismatch {
                    key: "m/1".into(),
                    expected: "a".into(),
                    actual: "b".into(),
                }
                .into(),
                "checksum_mismatch",
                500,
            ),
            (
                EngineError::Load("x".into()).into(),
                "model_load_failed",
                500,
            ),
            (
                EngineError::Inference("x".into()).into(),
                "inference_failed",
                500,
            ),
            (
                EngineError::InvalidInput("x".into()).into(),
                "invalid_input",
                400,
            ),
            (
                EngineError::OutOfMemory("x".into()).into(),
                "insufficient_memory",
                503,
            ),
            (
                MemoryError::Busy {
                    need: 2,
                    available: 1,
                }
                .into(),
                "insufficient_memory",
                503,
            ),
            (
                MemoryError::TooLarge {
                    need: 2,
                    available: 1,
                    limit: 3,
                }
                .into(),
                "memory_limit_exceeded",
                413,
            ),
            (
                RepositoryError::Unavailable {
                    path: "/m".into(),
                    reason: "EIO".into(),
                }
                .into(),
                "repository_unavailable",
                503,
            ),
            (
                CacheError::TooLarge {
                    key: "m/1".into(),
                    bytes: 2,
                    budget: 1,
                }
                .into(),
                "model_too_large",
                507,
            ),
        ];
        for (error, code, status) in cases {
            assert_eq!(error.code(), code, "{error}");
            assert_eq!(error.status().as_u16(), status, "{code}");
            assert_eq!(error.body()["code"], code);
            assert!(!error.body()["error"].as_str().unwrap().is_empty());
        }
    }
}
