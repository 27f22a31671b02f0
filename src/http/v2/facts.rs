//! The answers of the Open Inference Protocol's non-inference calls and of
//! Triton's extensions (model configuration, statistics, repository index),
//! as data: the REST routes ([`super`]) render them as JSON and the gRPC
//! service ([`crate::grpc`]) as protobuf messages, so both say the same.

use std::time::Duration;

use serde_json::{Value, json};

use crate::engine::{Dim, ElementType, Signature, ValueInfo, ValueKind};
use crate::error::{Error, RequestError};
use crate::identity::Caller;
use crate::repository::{ModelKey, ModelName};
use crate::service::ModelService;
use crate::status::{Timed, VersionStats};

/// What `GET /v2/models/{m}` and Triton's configuration call `platform`.
pub const PLATFORM: &str = "onnxruntime_onnx";

/// The extensions `GET /v2` (and gRPC `ServerMetadata`) lists.
pub const EXTENSIONS: [&str; 3] = ["binary_tensor_data", "model_configuration", "statistics"];

/// How long server readiness waits for the repository to list before it
/// calls it unreadable (a hung mount must not hang the probe).
pub const REPOSITORY_PROBE: Duration = Duration::from_secs(2);

pub struct ServerMetadata {
    pub name: &'static str,
    pub version: &'static str,
    pub extensions: &'static [&'static str],
}

pub fn server_metadata() -> ServerMetadata {
    ServerMetadata {
        name: "model-router",
        version: env!("CARGO_PKG_VERSION"),
        extensions: &EXTENSIONS,
    }
}

/// Ready when preload has finished and the repository's root can be listed
/// now; else why not.
pub async fn server_ready(service: &ModelService) -> Result<(), String> {
    if service.preloading() {
        return Err("PRELOAD_MODELS is still loading".into());
    }
    if !service.repository_readable(REPOSITORY_PROBE).await {
        return Err(format!(
            "the model repository {} cannot be listed (within {} s)",
            service.repository().root().display(),
            REPOSITORY_PROBE.as_secs()
        ));
    }
    Ok(())
}

/// A model version's readiness.
pub struct ModelReadiness {
    /// The concrete version `latest` or an alias resolved to.
    pub version: String,
    /// Whether it is in memory now.
    pub loaded: bool,
    /// `None` when ready; else why not (its last load failed).
    pub why_not: Option<String>,
}

/// Ready when the version resolves to a readable manifest and its last load
/// (if any) did not fail. Readiness never loads the model: loading happens on
/// first use, a warm, or preload.
pub async fn model_ready(
    service: &ModelService,
    name: &str,
    version: &str,
) -> Result<ModelReadiness, Error> {
    let resolved = service.resolve(name, version).await?;
    let why_not = service
        .versions()
        .load_failure(&resolved.key)
        .map(|why| format!("its last load failed: {why}"));
    Ok(ModelReadiness {
        version: resolved.key.version().to_string(),
        loaded: service.is_cached(&resolved.key),
        why_not,
    })
}

/// One input or output as model metadata describes it.
pub struct TensorMetadata {
    pub name: String,
    pub datatype: &'static str,
    /// -1 for dynamic dimensions.
    pub shape: Vec<i64>,
    /// For values that are not tensors (answered as BYTES): ONNX's type.
    pub onnx_type: Option<String>,
}

pub struct ModelMetadata {
    pub name: String,
    pub versions: Vec<String>,
    pub platform: &'static str,
    pub inputs: Vec<TensorMetadata>,
    pub outputs: Vec<TensorMetadata>,
}

fn tensor_metadata(info: &ValueInfo) -> TensorMetadata {
    match &info.kind {
        ValueKind::Tensor {
            element_type,
            shape,
        } => TensorMetadata {
            name: info.name.clone(),
            datatype: element_type.v2_name(),
            shape: shape
                .iter()
                .map(|d| match d {
                    Dim::Fixed(n) => i64::try_from(*n).unwrap_or(i64::MAX),
                    Dim::Dynamic(_) => -1,
                })
                .collect(),
            onnx_type: None,
        },
        ValueKind::Other { description } => TensorMetadata {
            name: info.name.clone(),
            datatype: "BYTES",
            shape: vec![-1],
            onnx_type: Some(description.clone()),
        },
    }
}

/// `GET /v2/models/{name}[/versions/{version}]`. The signature comes without
/// admitting the model to the cache ([`ModelService::signature`]).
pub async fn model_metadata(
    service: &ModelService,
    name: &str,
    version: &str,
) -> Result<ModelMetadata, Error> {
    let (key, signature) = service.signature(name, version).await?;
    let Signature { inputs, outputs } = signature;
    let versions = versions_of(service, key.name()).await?;
    Ok(ModelMetadata {
        name: key.name().as_str().to_string(),
        versions,
        platform: PLATFORM,
        inputs: inputs.iter().map(tensor_metadata).collect(),
        outputs: outputs.iter().map(tensor_metadata).collect(),
    })
}

async fn versions_of(service: &ModelService, name: &ModelName) -> Result<Vec<String>, Error> {
    let repository = service.repository().clone();
    let name = name.clone();
    tokio::task::spawn_blocking(move || repository.versions(&name))
        .await
        .map_err(|e| Error::Engine(crate::engine::EngineError::Inference(e.to_string())))?
        .map_err(Error::from)
}

/// Triton's name for an element type (`model_config.proto`'s `DataType`).
pub fn triton_type(ty: ElementType) -> &'static str {
    match ty {
        ElementType::Bool => "TYPE_BOOL",
        ElementType::Int8 => "TYPE_INT8",
        ElementType::Int16 => "TYPE_INT16",
        ElementType::Int32 => "TYPE_INT32",
        ElementType::Int64 => "TYPE_INT64",
        ElementType::Uint8 => "TYPE_UINT8",
        ElementType::Uint16 => "TYPE_UINT16",
        ElementType::Uint32 => "TYPE_UINT32",
        ElementType::Uint64 => "TYPE_UINT64",
        ElementType::Fp16 => "TYPE_FP16",
        ElementType::Fp32 => "TYPE_FP32",
        ElementType::Fp64 => "TYPE_FP64",
        ElementType::Bytes => "TYPE_STRING",
    }
}

/// One input or output of a Triton model configuration.
pub struct ConfigTensor {
    pub name: String,
    pub data_type: &'static str,
    pub dims: Vec<i64>,
}

/// Triton's model configuration, as far as model-router has one.
/// `max_batch_size` is 0: model-router does not batch requests together, so
/// `dims` are each tensor's whole shape, batch dimension included (-1 where
/// dynamic), as Triton writes them for a model without batching.
pub struct ModelConfig {
    pub name: String,
    pub version: String,
    pub inputs: Vec<ConfigTensor>,
    pub outputs: Vec<ConfigTensor>,
}

impl ModelConfig {
    pub const MAX_BATCH_SIZE: i32 = 0;
    pub const BACKEND: &'static str = "onnxruntime";

    /// Triton's JSON form (`GET /v2/models/{m}/config`).
    pub fn to_json(&self) -> Value {
        let tensors = |tensors: &[ConfigTensor]| -> Vec<Value> {
            tensors
                .iter()
                .map(|t| json!({"name": t.name, "data_type": t.data_type, "dims": t.dims}))
                .collect()
        };
        json!({
            "name": self.name,
            "platform": PLATFORM,
            "backend": Self::BACKEND,
            "version_policy": {"specific": {"versions": [self.version]}},
            "max_batch_size": Self::MAX_BATCH_SIZE,
            "input": tensors(&self.inputs),
            "output": tensors(&self.outputs),
        })
    }
}

/// `GET /v2/models/{name}[/versions/{version}]/config`: from the signature,
/// without admitting the model to the cache.
pub async fn model_config(
    service: &ModelService,
    name: &str,
    version: &str,
) -> Result<ModelConfig, Error> {
    let (key, signature) = service.signature(name, version).await?;
    let tensors = |infos: &[ValueInfo]| -> Vec<ConfigTensor> {
        infos
            .iter()
            .map(|info| {
                let meta = tensor_metadata(info);
                let data_type = match &info.kind {
                    ValueKind::Tensor { element_type, .. } => triton_type(*element_type),
                    ValueKind::Other { .. } => "TYPE_STRING",
                };
                ConfigTensor {
                    name: meta.name,
                    data_type,
                    dims: meta.shape,
                }
            })
            .collect()
    };
    Ok(ModelConfig {
        name: key.name().as_str().to_string(),
        version: key.version().to_string(),
        inputs: tensors(&signature.inputs),
        outputs: tensors(&signature.outputs),
    })
}

/// Statistics of the versions the caller may see: every version that ran or
/// loaded (no `name`), one model's, or one version's (zeros if it never ran).
pub async fn stats(
    service: &ModelService,
    caller: &Caller,
    name: Option<&str>,
    version: Option<&str>,
) -> Result<Vec<(ModelKey, VersionStats)>, Error> {
    let registry = service.versions();
    match (name, version) {
        (Some(name), Some(version)) => {
            let key = service.resolve(name, version).await?.key;
            let stats = registry.version_stats(&key);
            Ok(vec![(key, stats)])
        }
        (Some(name), None) => {
            let recorded = registry.stats(Some(name));
            if recorded.is_empty() {
                // A model that never ran: its latest version, with zeros
                // (and a 404 when there is no such model).
                let key = service.resolve(name, "latest").await?.key;
                return Ok(vec![(key, VersionStats::default())]);
            }
            Ok(recorded)
        }
        (None, _) => {
            let mut visible = Vec::new();
            for (key, stats) in registry.stats(None) {
                match service
                    .authorize(caller, key.name().as_str(), key.version())
                    .await
                {
                    Ok(()) => visible.push((key, stats)),
                    Err(Error::Request(RequestError::Forbidden(_))) => {}
                    Err(e) => return Err(e),
                }
            }
            Ok(visible)
        }
    }
}

/// Triton's statistics JSON (`{"model_stats": [...]}`).
pub fn stats_json(stats: &[(ModelKey, VersionStats)]) -> Value {
    let timed = |t: Timed| json!({"count": t.count, "ns": t.ns});
    let zero = timed(Timed::default());
    let models: Vec<Value> = stats
        .iter()
        .map(|(key, s)| {
            json!({
                "name": key.name().as_str(),
                "version": key.version(),
                "last_inference": s.last_inference_ms,
                "inference_count": s.inference_count,
                "execution_count": s.execution_count,
                "inference_stats": {
                    "success": timed(s.success),
                    "fail": timed(s.fail),
                    "queue": timed(s.queue),
                    "compute_input": timed(s.compute_input),
                    "compute_infer": timed(s.compute_infer),
                    "compute_output": timed(s.compute_output),
                    "cache_hit": zero,
                    "cache_miss": zero,
                },
                "batch_stats": [],
            })
        })
        .collect();
    json!({ "model_stats": models })
}

/// One row of the repository index.
pub struct IndexEntry {
    pub name: String,
    pub version: String,
    /// `READY`, or `UNAVAILABLE` when its last load failed.
    pub state: &'static str,
    pub reason: String,
}

/// Triton's repository index: every version the caller may use.
pub async fn repository_index(
    service: &ModelService,
    caller: &Caller,
) -> Result<Vec<IndexEntry>, Error> {
    let repository = service.repository().clone();
    let listing = tokio::task::spawn_blocking(move || repository.list())
        .await
        .map_err(|e| Error::Engine(crate::engine::EngineError::Inference(e.to_string())))??;
    let mut entries = Vec::new();
    for (name, versions) in listing {
        for version in versions {
            match service.authorize(caller, &name, &version).await {
                Ok(()) => {}
                Err(Error::Request(RequestError::Forbidden(_))) => continue,
                Err(e) => return Err(e),
            }
            let failure = ModelKey::new(&name, &version)
                .ok()
                .and_then(|key| service.versions().load_failure(&key));
            entries.push(IndexEntry {
                state: if failure.is_some() {
                    "UNAVAILABLE"
                } else {
                    "READY"
                },
                reason: failure.unwrap_or_default(),
                name: name.clone(),
                version,
            });
        }
    }
    Ok(entries)
}

/// Repository load and unload are admin actions (DESIGN section 4), never
/// reachable from HTTP or gRPC: refused, saying what to use instead.
pub fn repository_control_refused(action: &str) -> Error {
    RequestError::NotSupported(format!(
        "model {action} through the repository extension is not offered: models load on first use; \
         warm and evict are admin events (direct invoke or EventBridge), never HTTP or gRPC"
    ))
    .into()
}
