//! model-router: many ONNX models served from one AWS Lambda function or one
//! container, from a shared model repository (on EFS, or any directory).
//!
//! A request names a model and a version. The router resolves the version,
//! reads the model file into memory with several reads in flight while hashing
//! it, refuses it unless the sha256 matches its manifest, makes an ONNX Runtime
//! session from the verified bytes (zero-copy for `.ort`), keeps sessions in a
//! cache bounded by bytes, and answers. A verified local copy is written in the
//! background, so a reload after an eviction maps it instead of reading the
//! repository again.
//!
//! # Layout
//!
//! - [`config`]: the one configuration, from flags and environment.
//! - [`error`]: the crate's error, and its one mapping to code and HTTP status.
//! - [`repository`]: validated names, manifests, `latest` and aliases
//!   (remembered for a few seconds), publish and verify, the fetch of a model
//!   file into verified memory, and the staging tier of verified local copies.
//! - [`cache`]: the byte-bounded LRU with single-flight loads and leases.
//! - [`engine`]: ONNX Runtime (the only module that uses `ort`): sessions,
//!   tensors, input checks.
//! - [`memory`]: the process's one memory bound, split into cache, baseline
//!   and request headroom; request reservations.
//! - [`service`]: the one code path from "model name and version" to outputs.
//! - [`http`]: the routes (simple predict, Open Inference Protocol, listing,
//!   health), independent of any front door, and request bodies read within a
//!   memory bound known before the parse ([`http::parse`]).
//! - [`admin`]: warm, evict, status, and Triton's model repository actions:
//!   reached from Lambda's non-HTTP events and from `serve`'s admin listener
//!   ([`http::admin`]), never from the front door's routes.
//! - [`triton`]: Triton-layout repositories: noticed when served, and imported.
//! - [`policy`] and [`identity`]: teams, who may call which model, cache shares;
//!   the caller's identity as AWS authenticated it.
//! - [`metrics`]: metric names and dimensions, recorded once and exported as
//!   CloudWatch Embedded Metric Format lines and as Prometheus `/metrics`.
//! - [`server`], [`grpc`] and [`lambda`]: the front doors (local HTTP with
//!   tower-http's layers; gRPC `inference.GRPCInferenceService` from the
//!   vendored protos in proto/; Lambda runtime and the `invoke` CLI).
//! - [`status`]: what is remembered per model version (signature, last load
//!   failure, inference statistics) for readiness, metadata without a load,
//!   and Triton's statistics.
//! - [`logging`]: `tracing` set-up, shared with the publisher binary.
//!
//! The S3 publisher, the repository's only writer on AWS, is the workspace's
//! other crate (`publisher/`, binary `model-router-publisher`), so that the
//! serving binary never links the AWS SDK.

/// jemalloc is the process's allocator, for Rust and (unprefixed) for ONNX
/// Runtime's C++ allocations alike: one heap, whose per-thread counters
/// [`engine::footprint`] charges model loads with, and which gives freed pages
/// back to the system (README, "Memory"). In the library, so that tests and
/// benchmarks measure the allocator the binary runs with.
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// jemalloc's options, read once when it starts (the `MALLOC_CONF`
/// environment variable, read after, overrides any of them). Measured with
/// benches/churn.rs (README, "Memory"): with jemalloc's defaults, 160 models
/// churning through a 6 MiB cache peaked at idle + 34 MiB and stayed there
/// after evicting everything (freed pages kept dirty for 10 s, and objects
/// parked in every thread's cache); with these, idle + 15 MiB and back to
/// within 10 MiB of idle.
/// - `tcache_max:1024`: threads cache only objects up to 1 KiB;
/// - `dirty_decay_ms:0,muzzy_decay_ms:0`: freed pages go back to the system
///   at once, so resident memory follows the cache down.
#[allow(non_upper_case_globals)]
#[unsafe(no_mangle)]
pub static malloc_conf: &u8 = &b"tcache_max:1024,dirty_decay_ms:0,muzzy_decay_ms:0\0"[0];

pub mod admin;
pub mod cache;
pub mod config;
pub mod engine;
pub mod error;
pub mod grpc;
pub mod http;
pub mod identity;
pub mod lambda;
pub mod logging;
pub mod memory;
pub mod metrics;
pub mod policy;
pub mod repository;
pub mod server;
pub mod service;
pub mod status;
pub mod triton;

pub use config::Config;
pub use error::Error;
pub use service::ModelService;
