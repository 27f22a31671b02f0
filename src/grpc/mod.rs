//! The gRPC front door: `inference.GRPCInferenceService`, the Open Inference
//! Protocol's gRPC service as Triton defines it (proto/grpc_service.proto,
//! vendored; see proto/README.md), served by tonic on its own port
//! (`serve --grpc-addr`).
//!
//! Every call goes the same way as its REST twin: the same authorization
//! ([`ModelService::caller_of`] and [`ModelService::authorize`]), the same
//! answers ([`crate::http::v2::facts`]), the same inference path
//! ([`crate::http::v2::call::run`]), the same log line and metrics. Only the
//! encoding differs: inputs come as `raw_input_contents` (the binary tensor
//! data layout) or typed `contents`; outputs always go as
//! `raw_output_contents`, as Triton sends them.
//!
//! Errors become the gRPC status of their HTTP status (400 `INVALID_ARGUMENT`,
//! 403 `PERMISSION_DENIED`, 404 `NOT_FOUND`, 413/507 `RESOURCE_EXHAUSTED`,
//! 503 `UNAVAILABLE`, 504 `DEADLINE_EXCEEDED`, else `INTERNAL`), with the
//! stable error code in the `error-code` response metadata. Calls model-router
//! does not offer (streaming, shared memory, trace and log settings) answer
//! `UNIMPLEMENTED`.

use std::borrow::Cow;
use std::collections::HashMap;
use std::time::Instant;

use bytes::Bytes;
use tonic::{Request, Response, Status};

use crate::engine::{ElementType, TensorData};
use crate::error::Error;
use crate::http::v2::call::{
    self, InferCall, InputData, Outputs, Parameter, Parameters, ParsedInput,
};
use crate::http::v2::{binary, facts};
use crate::http::{RequestRecord, record_request};
use crate::identity::Caller;
use crate::service::ModelService;

/// The messages and server trait generated from proto/grpc_service.proto.
#[allow(clippy::all, clippy::pedantic, missing_docs)]
pub mod proto {
    tonic::include_proto!("inference");
}

use proto::grpc_inference_service_server::{GrpcInferenceService, GrpcInferenceServiceServer};
use proto::infer_parameter::ParameterChoice;

/// The gRPC service over one [`ModelService`].
#[derive(Clone)]
pub struct GrpcFrontDoor {
    service: ModelService,
    /// Believe the `x-caller-*` metadata as the caller's identity (the same
    /// trusted-header mode as HTTP; see [`crate::identity`]).
    trust_identity_headers: bool,
}

impl GrpcFrontDoor {
    pub fn new(service: ModelService, trust_identity_headers: bool) -> GrpcFrontDoor {
        GrpcFrontDoor {
            service,
            trust_identity_headers,
        }
    }

    /// The tonic service, with the request size limit of HTTP
    /// (MAX_REQUEST_BYTES, on the decompressed message) and no limit on
    /// answers; gzip and deflate requests accepted. Answers are never
    /// compressed: gRPC clients advertise gzip on every call whether or not
    /// they want it, and compressing every answer held perf_analyzer's gRPC
    /// throughput to 0.27-0.35x of HTTP's (0.80-0.96x without;
    /// scripts/bench-perf-analyzer.sh).
    pub fn into_server(self) -> GrpcInferenceServiceServer<GrpcFrontDoor> {
        use tonic::codec::CompressionEncoding::{Deflate, Gzip};
        let limit = self.service.config().max_request_bytes;
        GrpcInferenceServiceServer::new(self)
            .max_decoding_message_size(limit)
            .max_encoding_message_size(usize::MAX)
            .accept_compressed(Gzip)
            .accept_compressed(Deflate)
    }

    /// Runs one call: identifies the caller, authorizes `model` when the call
    /// addresses one, runs `work`, and writes the request's log line and
    /// metrics as HTTP does (path `/inference.GRPCInferenceService/{method}`).
    async fn call<T, F, Fut>(
        &self,
        method: &'static str,
        metadata: &tonic::metadata::MetadataMap,
        model: Option<(&str, &str)>,
        work: F,
    ) -> Result<Response<T>, Status>
    where
        F: FnOnce(Caller, RequestRecord) -> Fut,
        Fut: Future<Output = (RequestRecord, Result<T, Error>)>,
    {
        let started = Instant::now();
        let mut request = http::Request::new(Bytes::new());
        *request.method_mut() = http::Method::POST;
        if let Ok(uri) = format!("/inference.GRPCInferenceService/{method}").parse() {
            *request.uri_mut() = uri;
        }
        *request.headers_mut() = metadata.clone().into_headers();
        if self.trust_identity_headers {
            request
                .extensions_mut()
                .insert(crate::identity::TrustedHeaders);
        }
        let request_id = metadata
            .get("x-request-id")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
            .unwrap_or_else(crate::server::new_request_id);
        let mut record = RequestRecord::default();
        let authorized = async {
            let caller = self.service.caller_of(&request).await?;
            if let Some((name, version)) = model {
                record.model = Some(name.to_string());
                record.version = Some(version.to_string());
                self.service.authorize(&caller, name, version).await?;
            }
            Ok::<_, Error>(caller)
        }
        .await;
        let (record, result) = match authorized {
            Ok(caller) => work(caller, record).await,
            Err(e) => (record, Err(e)),
        };
        let (status, code) = match &result {
            Ok(_) => (http::StatusCode::OK, None),
            Err(e) => (e.status(), Some(e.code())),
        };
        record_request(
            &self.service,
            &request,
            &request_id,
            &record,
            status,
            code,
            started,
        );
        let mut response = result.map(Response::new).map_err(|e| to_status(&e))?;
        if let Ok(id) = request_id.parse() {
            response.metadata_mut().insert("x-request-id", id);
        }
        Ok(response)
    }
}

/// The gRPC status of an error (see the module doc).
pub fn to_status(error: &Error) -> Status {
    use http::StatusCode as H;
    use tonic::Code;
    let code = match error.status() {
        H::BAD_REQUEST | H::METHOD_NOT_ALLOWED => Code::InvalidArgument,
        H::FORBIDDEN => Code::PermissionDenied,
        H::NOT_FOUND => Code::NotFound,
        H::PAYLOAD_TOO_LARGE | H::INSUFFICIENT_STORAGE => Code::ResourceExhausted,
        H::SERVICE_UNAVAILABLE => Code::Unavailable,
        H::GATEWAY_TIMEOUT => Code::DeadlineExceeded,
        _ => Code::Internal,
    };
    let mut status = Status::new(code, error.to_string());
    status.metadata_mut().insert(
        "error-code",
        tonic::metadata::MetadataValue::from_static(error.code()),
    );
    status
}

/// The version a gRPC request names: empty is `latest`.
fn version_of(version: &str) -> &str {
    if version.is_empty() {
        "latest"
    } else {
        version
    }
}

/// gRPC parameters as the parameters REST requests carry, so one set of
/// checks ([`call`]) gives them their meaning.
fn parameters_of(
    parameters: &HashMap<String, proto::InferParameter>,
) -> Option<Parameters<'static>> {
    if parameters.is_empty() {
        return None;
    }
    let mut known = Parameters::default();
    for (key, p) in parameters {
        let value = match &p.parameter_choice {
            None => Parameter::Null,
            Some(ParameterChoice::BoolParam(b)) => Parameter::Bool(*b),
            Some(ParameterChoice::Int64Param(i)) => Parameter::Number((*i).into()),
            Some(ParameterChoice::Uint64Param(u)) => Parameter::Number((*u).into()),
            // As JSON holds it: a number, or null for what JSON cannot hold.
            Some(ParameterChoice::DoubleParam(d)) => serde_json::Number::from_f64(*d)
                .map(Parameter::Number)
                .unwrap_or(Parameter::Null),
            Some(ParameterChoice::StringParam(s)) => Parameter::String(s.clone().into()),
        };
        known.set(key, value);
    }
    Some(known)
}

/// Typed `contents` as tensor data of the declared type. Each type has its
/// field (INT8 and INT16 ride in `int_contents`, UINT8 and UINT16 in
/// `uint_contents`, range-checked); FP16 has none and must come raw.
fn typed_contents(
    name: &str,
    ty: ElementType,
    contents: proto::InferTensorContents,
) -> Result<TensorData, Error> {
    fn narrow<W: Copy + std::fmt::Display, N: TryFrom<W>>(
        name: &str,
        ty: ElementType,
        values: Vec<W>,
    ) -> Result<Vec<N>, Error> {
        values
            .into_iter()
            .map(|v| {
                N::try_from(v).map_err(|_| {
                    crate::http::json::invalid(format!(
                        "input {name:?} has value {v}, out of range for {}",
                        ty.v2_name()
                    ))
                })
            })
            .collect()
    }
    Ok(match ty {
        ElementType::Bool => TensorData::Bool(contents.bool_contents),
        ElementType::Int8 => TensorData::Int8(narrow(name, ty, contents.int_contents)?),
        ElementType::Int16 => TensorData::Int16(narrow(name, ty, contents.int_contents)?),
        ElementType::Int32 => TensorData::Int32(contents.int_contents),
        ElementType::Int64 => TensorData::Int64(contents.int64_contents),
        ElementType::Uint8 => TensorData::Uint8(narrow(name, ty, contents.uint_contents)?),
        ElementType::Uint16 => TensorData::Uint16(narrow(name, ty, contents.uint_contents)?),
        ElementType::Uint32 => TensorData::Uint32(contents.uint_contents),
        ElementType::Uint64 => TensorData::Uint64(contents.uint64_contents),
        ElementType::Fp32 => TensorData::Fp32(contents.fp32_contents),
        ElementType::Fp64 => TensorData::Fp64(contents.fp64_contents),
        ElementType::Fp16 => {
            return Err(crate::http::json::invalid(format!(
                "input {name:?} is FP16, which InferTensorContents cannot carry; send it in raw_input_contents"
            )));
        }
        ElementType::Bytes => TensorData::Bytes(
            contents
                .bytes_contents
                .into_iter()
                .enumerate()
                .map(|(i, b)| {
                    String::from_utf8(b).map_err(|_| {
                        crate::http::json::invalid(format!(
                            "input {name:?} element {i} is not UTF-8 text; model-router carries BYTES as text"
                        ))
                    })
                })
                .collect::<Result<_, _>>()?,
        ),
    })
}

/// A `ModelInferRequest`'s inputs, checked as far as they can be without the model.
fn parse_inputs(request: &mut proto::ModelInferRequest) -> Result<Vec<ParsedInput<'_>>, Error> {
    let raw = std::mem::take(&mut request.raw_input_contents);
    if !raw.is_empty() && raw.len() != request.inputs.len() {
        return Err(crate::http::json::invalid(format!(
            "the request has {} inputs but {} raw_input_contents; give one per input, in order",
            request.inputs.len(),
            raw.len()
        )));
    }
    let mut raw = raw.into_iter();
    request
        .inputs
        .iter_mut()
        .map(|input| {
            let name = input.name.as_str();
            let parameters = parameters_of(&input.parameters);
            call::refuse_unsupported(&format!("input {name:?}"), parameters.as_ref())?;
            let (datatype, shape, count) =
                call::checked_tensor(name, &input.datatype, &input.shape)?;
            let data = match (raw.next(), input.contents.take()) {
                (Some(_), Some(_)) => {
                    return Err(crate::http::json::invalid(format!(
                        "input {name:?} has both contents and raw_input_contents; give one"
                    )));
                }
                (Some(bytes), None) => InputData::Binary(Cow::Owned(bytes)),
                (None, Some(contents)) => {
                    InputData::Typed(typed_contents(name, datatype, contents)?)
                }
                (None, None) => {
                    return Err(crate::http::json::invalid(format!(
                        "input {name:?} has neither contents nor raw_input_contents"
                    )));
                }
            };
            Ok(ParsedInput {
                name,
                datatype,
                shape,
                count,
                data,
            })
        })
        .collect()
}

async fn infer(
    service: &ModelService,
    mut request: proto::ModelInferRequest,
    record: &mut RequestRecord,
) -> Result<proto::ModelInferResponse, Error> {
    let started = Instant::now();
    let name = request.model_name.clone();
    let version = version_of(&request.model_version).to_string();
    let parameters = parameters_of(&request.parameters);
    let deadline = call::request_deadline(parameters.as_ref(), started)?;
    let requested = request
        .outputs
        .iter()
        .map(|output| {
            let what = format!("output {:?}", output.name);
            call::refuse_unsupported(&what, parameters_of(&output.parameters).as_ref())?;
            Ok((output.name.clone(), true))
        })
        .collect::<Result<Vec<_>, Error>>()?;
    let outputs = Outputs {
        requested: Some(requested).filter(|r| !r.is_empty()),
        binary_default: true,
    };
    let id = std::mem::take(&mut request.id);
    let inputs = parse_inputs(&mut request)?;
    let answer = call::run(
        service,
        &name,
        &version,
        InferCall {
            inputs,
            outputs,
            deadline,
        },
        record,
    )
    .await?;
    let mut response = proto::ModelInferResponse {
        model_name: answer.key.name().as_str().to_string(),
        model_version: answer.key.version().to_string(),
        id,
        ..Default::default()
    };
    for output in answer.outputs {
        let mut raw = Vec::new();
        binary::encode(output.tensor.data(), &mut raw);
        let mut parameters = HashMap::new();
        if let Some(onnx_type) = output.onnx_type {
            parameters.insert(
                "onnx_type".to_string(),
                proto::InferParameter {
                    parameter_choice: Some(ParameterChoice::StringParam(onnx_type)),
                },
            );
        }
        response
            .outputs
            .push(proto::model_infer_response::InferOutputTensor {
                name: output.name,
                datatype: output.tensor.element_type().v2_name().to_string(),
                shape: output
                    .tensor
                    .shape()
                    .iter()
                    .map(|&d| i64::try_from(d).unwrap_or(i64::MAX))
                    .collect(),
                parameters,
                contents: None,
            });
        response.raw_output_contents.push(raw);
    }
    Ok(response)
}

fn statistic(t: crate::status::Timed) -> Option<proto::StatisticDuration> {
    Some(proto::StatisticDuration {
        count: t.count,
        ns: t.ns,
    })
}

fn tensor_metadata(t: facts::TensorMetadata) -> proto::model_metadata_response::TensorMetadata {
    proto::model_metadata_response::TensorMetadata {
        name: t.name,
        datatype: t.datatype.to_string(),
        shape: t.shape,
    }
}

fn config_message(config: facts::ModelConfig) -> proto::ModelConfig {
    let data_type = |name: &str| {
        proto::DataType::from_str_name(name).unwrap_or(proto::DataType::TypeInvalid) as i32
    };
    proto::ModelConfig {
        name: config.name,
        platform: facts::PLATFORM.to_string(),
        backend: facts::ModelConfig::BACKEND.to_string(),
        version_policy: Some(proto::ModelVersionPolicy {
            policy_choice: Some(proto::model_version_policy::PolicyChoice::Latest(
                proto::model_version_policy::Latest { num_versions: 1 },
            )),
        }),
        max_batch_size: facts::ModelConfig::MAX_BATCH_SIZE,
        input: config
            .inputs
            .into_iter()
            .map(|t| proto::ModelInput {
                data_type: data_type(t.data_type),
                name: t.name,
                dims: t.dims,
                ..Default::default()
            })
            .collect(),
        output: config
            .outputs
            .into_iter()
            .map(|t| proto::ModelOutput {
                data_type: data_type(t.data_type),
                name: t.name,
                dims: t.dims,
                ..Default::default()
            })
            .collect(),
        ..Default::default()
    }
}

#[tonic::async_trait]
impl GrpcInferenceService for GrpcFrontDoor {
    async fn server_live(
        &self,
        request: Request<proto::ServerLiveRequest>,
    ) -> Result<Response<proto::ServerLiveResponse>, Status> {
        self.call("ServerLive", request.metadata(), None, |_, record| async {
            (record, Ok(proto::ServerLiveResponse { live: true }))
        })
        .await
    }

    async fn server_ready(
        &self,
        request: Request<proto::ServerReadyRequest>,
    ) -> Result<Response<proto::ServerReadyResponse>, Status> {
        self.call("ServerReady", request.metadata(), None, |_, record| async {
            let ready = facts::server_ready(&self.service).await.is_ok();
            (record, Ok(proto::ServerReadyResponse { ready }))
        })
        .await
    }

    async fn model_ready(
        &self,
        request: Request<proto::ModelReadyRequest>,
    ) -> Result<Response<proto::ModelReadyResponse>, Status> {
        let message = request.get_ref();
        let (name, version) = (message.name.as_str(), version_of(&message.version));
        self.call(
            "ModelReady",
            request.metadata(),
            Some((name, version)),
            |_, record| async move {
                // An unknown model or version is simply not ready (as
                // Triton answers; REST says 404, which clients read as false).
                let ready = match facts::model_ready(&self.service, name, version).await {
                    Ok(r) => Ok(r.why_not.is_none()),
                    Err(e) if e.status() == http::StatusCode::NOT_FOUND => Ok(false),
                    Err(e) => Err(e),
                };
                (
                    record,
                    ready.map(|ready| proto::ModelReadyResponse { ready }),
                )
            },
        )
        .await
    }

    async fn server_metadata(
        &self,
        request: Request<proto::ServerMetadataRequest>,
    ) -> Result<Response<proto::ServerMetadataResponse>, Status> {
        self.call(
            "ServerMetadata",
            request.metadata(),
            None,
            |_, record| async {
                let server = facts::server_metadata();
                let response = proto::ServerMetadataResponse {
                    name: server.name.to_string(),
                    version: server.version.to_string(),
                    extensions: server.extensions.iter().map(|e| e.to_string()).collect(),
                };
                (record, Ok(response))
            },
        )
        .await
    }

    async fn model_metadata(
        &self,
        request: Request<proto::ModelMetadataRequest>,
    ) -> Result<Response<proto::ModelMetadataResponse>, Status> {
        let message = request.get_ref();
        let (name, version) = (message.name.as_str(), version_of(&message.version));
        self.call(
            "ModelMetadata",
            request.metadata(),
            Some((name, version)),
            |_, record| async move {
                let metadata = facts::model_metadata(&self.service, name, version)
                    .await
                    .map(|m| proto::ModelMetadataResponse {
                        name: m.name,
                        versions: m.versions,
                        platform: m.platform.to_string(),
                        inputs: m.inputs.into_iter().map(tensor_metadata).collect(),
                        outputs: m.outputs.into_iter().map(tensor_metadata).collect(),
                    });
                (record, metadata)
            },
        )
        .await
    }

    async fn model_infer(
        &self,
        request: Request<proto::ModelInferRequest>,
    ) -> Result<Response<proto::ModelInferResponse>, Status> {
        let (metadata, _, message) = request.into_parts();
        let name = message.model_name.clone();
        let version = version_of(&message.model_version).to_string();
        self.call(
            "ModelInfer",
            &metadata,
            Some((&name, &version)),
            |_, mut record| async move {
                let response = infer(&self.service, message, &mut record).await;
                (record, response)
            },
        )
        .await
    }

    async fn model_config(
        &self,
        request: Request<proto::ModelConfigRequest>,
    ) -> Result<Response<proto::ModelConfigResponse>, Status> {
        let message = request.get_ref();
        let (name, version) = (message.name.as_str(), version_of(&message.version));
        self.call(
            "ModelConfig",
            request.metadata(),
            Some((name, version)),
            |_, record| async move {
                let config = facts::model_config(&self.service, name, version)
                    .await
                    .map(|c| proto::ModelConfigResponse {
                        config: Some(config_message(c)),
                    });
                (record, config)
            },
        )
        .await
    }

    async fn model_statistics(
        &self,
        request: Request<proto::ModelStatisticsRequest>,
    ) -> Result<Response<proto::ModelStatisticsResponse>, Status> {
        let message = request.get_ref();
        let name = Some(message.name.as_str()).filter(|n| !n.is_empty());
        let version = Some(message.version.as_str()).filter(|v| !v.is_empty());
        let model = name.map(|n| (n, version.unwrap_or("latest")));
        self.call(
            "ModelStatistics",
            request.metadata(),
            model,
            |caller, record| async move {
                let stats = facts::stats(&self.service, &caller, name, version)
                    .await
                    .map(|stats| proto::ModelStatisticsResponse {
                        model_stats: stats
                            .into_iter()
                            .map(|(key, s)| proto::ModelStatistics {
                                name: key.name().as_str().to_string(),
                                version: key.version().to_string(),
                                last_inference: s.last_inference_ms,
                                inference_count: s.inference_count,
                                execution_count: s.execution_count,
                                inference_stats: Some(proto::InferStatistics {
                                    success: statistic(s.success),
                                    fail: statistic(s.fail),
                                    compute_infer: statistic(s.compute_infer),
                                    queue: statistic(s.queue),
                                    compute_input: statistic(s.compute_input),
                                    compute_output: statistic(s.compute_output),
                                    cache_hit: statistic(Default::default()),
                                    cache_miss: statistic(Default::default()),
                                }),
                                ..Default::default()
                            })
                            .collect(),
                    });
                (record, stats)
            },
        )
        .await
    }

    async fn repository_index(
        &self,
        request: Request<proto::RepositoryIndexRequest>,
    ) -> Result<Response<proto::RepositoryIndexResponse>, Status> {
        let ready_only = request.get_ref().ready;
        self.call(
            "RepositoryIndex",
            request.metadata(),
            None,
            |caller, record| async move {
                let index = facts::repository_index(&self.service, &caller)
                    .await
                    .map(|entries| proto::RepositoryIndexResponse {
                        models: entries
                            .into_iter()
                            .filter(|e| !ready_only || e.state == "READY")
                            .map(|e| proto::repository_index_response::ModelIndex {
                                name: e.name,
                                version: e.version,
                                state: e.state.to_string(),
                                reason: e.reason,
                            })
                            .collect(),
                    });
                (record, index)
            },
        )
        .await
    }

    async fn repository_model_load(
        &self,
        request: Request<proto::RepositoryModelLoadRequest>,
    ) -> Result<Response<proto::RepositoryModelLoadResponse>, Status> {
        self.call(
            "RepositoryModelLoad",
            request.metadata(),
            None,
            |_, record| async { (record, Err(facts::repository_control_refused("load"))) },
        )
        .await
    }

    async fn repository_model_unload(
        &self,
        request: Request<proto::RepositoryModelUnloadRequest>,
    ) -> Result<Response<proto::RepositoryModelUnloadResponse>, Status> {
        self.call(
            "RepositoryModelUnload",
            request.metadata(),
            None,
            |_, record| async { (record, Err(facts::repository_control_refused("unload"))) },
        )
        .await
    }
}
