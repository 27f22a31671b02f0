//! model-router: many ONNX models served from one AWS Lambda function or one
//! container, from a shared model repository (on EFS, or any directory).
//!
//! A request names a model and a version. The router resolves the version,
//! copies the model file into a local staging directory while hashing it,
//! refuses it unless the sha256 matches its manifest, memory-maps the verified
//! copy into an ONNX Runtime session, keeps sessions in a cache bounded by
//! bytes, and answers.
//!
//! # Layout
//!
//! - [`config`]: the one configuration, from flags and environment.
//! - [`error`]: the crate's error, and its one mapping to code and HTTP status.
//! - [`repository`]: validated names, manifests, `latest` and aliases,
//!   publish and verify, and the staging tier of verified local copies.
//! - [`cache`]: the byte-bounded LRU with single-flight loads and leases.
//! - [`engine`]: ONNX Runtime (the only module that uses `ort`): sessions,
//!   tensors, input checks.
//! - [`service`]: the one code path from "model name and version" to outputs.
//! - [`http`]: the routes (simple predict, Open Inference Protocol, listing,
//!   health), independent of any front door.
//! - [`admin`]: warm, evict, status (non-HTTP events only).
//! - [`policy`] and [`identity`]: teams, who may call which model, cache shares;
//!   the caller's identity as AWS authenticated it.
//! - [`metrics`]: metric names and dimensions, and the CloudWatch Embedded
//!   Metric Format lines they are written as.
//! - [`server`], [`grpc`] and [`lambda`]: the front doors (local HTTP with
//!   tower-http's layers; gRPC `inference.GRPCInferenceService` from the
//!   vendored protos in proto/; Lambda runtime and the `invoke` CLI).
//! - [`status`]: what is remembered per model version (signature, last load
//!   failure, inference statistics) for readiness, metadata without a load,
//!   and Triton's statistics.
//! - [`publisher`]: the `publish-s3` Lambda function, the repository's only
//!   writer on AWS: S3 uploads verified and published, with SigV4 and a minimal
//!   S3 client of its own.

pub mod admin;
pub mod cache;
pub mod config;
pub mod engine;
pub mod error;
pub mod grpc;
pub mod http;
pub mod identity;
pub mod lambda;
pub mod metrics;
pub mod policy;
pub mod publisher;
pub mod repository;
pub mod server;
pub mod service;
pub mod status;

pub use config::Config;
pub use error::Error;
pub use service::ModelService;
