//! The Open Inference Protocol (KServe V2 / Triton) REST routes, with the
//! binary tensor data extension ([`binary`]).
//!
//! Non-tensor outputs (the sequence of maps a scikit-learn ZipMap makes, a
//! sequence of tensors, a map) have no V2 datatype: they are answered as
//! `BYTES` tensors of shape `[N]` (one element per sequence item; `[1]` for a
//! lone map) whose elements are the JSON text of each item
//! (`"{\"0\":0.9,\"1\":0.1}"`), with `parameters.onnx_type` naming the ONNX
//! type. Strict V2 clients (tritonclient's `as_numpy`) read them as strings;
//! `json.loads` of each element gives the object docs/protocols.md shows.

mod binary;

use std::borrow::Cow;

use bytes::Bytes;
use http::{HeaderMap, Method, Request, Response, StatusCode, header};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};

use super::RequestRecord;
use super::json::{FlatJson, OutputJson, flatten, input_type, invalid, to_tensor};
use super::json_response;
use crate::engine::{
    Dim, ElementType, OutputValue, Signature, Tensor, TensorData, ValueInfo, ValueKind,
};
use crate::error::{Error, RequestError};
use crate::service::ModelService;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct InferRequest {
    #[serde(default)]
    id: Option<String>,
    inputs: Vec<InferInput>,
    #[serde(default)]
    outputs: Option<Vec<RequestedOutput>>,
    /// `null` and absent both mean none (KServe's Python client sends `null`).
    #[serde(default)]
    parameters: Option<Map<String, Value>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct InferInput {
    name: String,
    shape: Vec<i64>,
    datatype: String,
    #[serde(default)]
    data: Option<Value>,
    /// `null` and absent both mean none (KServe's Python client sends `null`).
    #[serde(default)]
    parameters: Option<Map<String, Value>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RequestedOutput {
    name: String,
    /// `null` and absent both mean none (KServe's Python client sends `null`).
    #[serde(default)]
    parameters: Option<Map<String, Value>>,
}

/// The shape of a V2 infer request's JSON, for error messages.
const REQUEST_FORM: &str = r#"{"id"?: "...", "inputs": [{"name", "shape", "datatype", "data"}], "outputs"?: [{"name"}], "parameters"?: {...}}"#;

/// Parameters model-router cannot honour: refused rather than ignored, so a
/// client never reads shared memory that was never written.
const UNSUPPORTED_PARAMETERS: [&str; 4] = [
    "shared_memory_region",
    "shared_memory_byte_size",
    "shared_memory_offset",
    "classification",
];

pub(super) async fn route(
    service: &ModelService,
    request: &Request<Bytes>,
    rest: &[&str],
    record: &mut RequestRecord,
    only: &(dyn Fn(Method, &'static str) -> Result<(), Error> + Sync),
) -> Result<Response<Bytes>, Error> {
    let method = request.method();
    let ok = |body: Value| -> Result<Response<Bytes>, Error> {
        Ok(json_response(StatusCode::OK, &body))
    };
    match rest {
        [] => {
            only(Method::GET, "GET")?;
            ok(json!({
                "name": "model-router",
                "version": env!("CARGO_PKG_VERSION"),
                "extensions": ["binary_tensor_data"],
            }))
        }
        ["health", "live"] => {
            only(Method::GET, "GET")?;
            ok(json!({"live": true}))
        }
        ["health", "ready"] => {
            only(Method::GET, "GET")?;
            ok(json!({"ready": true}))
        }
        ["models", name, tail @ ..] => {
            let (version, action) = match tail {
                [] => ("latest", None),
                [action] => ("latest", Some(*action)),
                ["versions", version] => (*version, None),
                ["versions", version, action] => (*version, Some(*action)),
                _ => return Err(not_found(method, rest)),
            };
            match action {
                None => {
                    only(Method::GET, "GET")?;
                    ok(metadata(service, name, version).await?)
                }
                Some("ready") => {
                    only(Method::GET, "GET")?;
                    ok(ready(service, name, version).await?)
                }
                Some("infer") => {
                    only(Method::POST, "POST")?;
                    infer(
                        service,
                        name,
                        version,
                        request.headers(),
                        request.body(),
                        record,
                    )
                    .await
                }
                Some(_) => Err(not_found(method, rest)),
            }
        }
        _ => Err(not_found(method, rest)),
    }
}

fn not_found(method: &Method, rest: &[&str]) -> Error {
    RequestError::RouteNotFound {
        method: method.to_string(),
        path: format!("/v2/{}", rest.join("/")),
    }
    .into()
}

/// A V2 tensor description: `{"name", "datatype", "shape"}`, -1 for dynamic dimensions.
fn tensor_metadata(info: &ValueInfo) -> Value {
    match &info.kind {
        ValueKind::Tensor {
            element_type,
            shape,
        } => {
            let shape: Vec<i64> = shape
                .iter()
                .map(|d| match d {
                    Dim::Fixed(n) => i64::try_from(*n).unwrap_or(i64::MAX),
                    Dim::Dynamic(_) => -1,
                })
                .collect();
            json!({"name": info.name, "datatype": element_type.v2_name(), "shape": shape})
        }
        ValueKind::Other { description } => {
            json!({"name": info.name, "datatype": "BYTES", "shape": [-1], "parameters": {"onnx_type": description}})
        }
    }
}

/// `GET /v2/models/{name}[/versions/{version}]`.
async fn metadata(service: &ModelService, name: &str, version: &str) -> Result<Value, Error> {
    let (key, signature) = service.signature(name, version).await?;
    let Signature { inputs, outputs } = signature;
    let repository = service.repository().clone();
    let model_name = key.name().clone();
    let versions = tokio::task::spawn_blocking(move || repository.versions(&model_name))
        .await
        .map_err(|e| Error::Engine(crate::engine::EngineError::Inference(e.to_string())))??;
    Ok(json!({
        "name": key.name().as_str(),
        "versions": versions,
        "platform": "onnxruntime_onnx",
        "inputs": inputs.iter().map(tensor_metadata).collect::<Vec<_>>(),
        "outputs": outputs.iter().map(tensor_metadata).collect::<Vec<_>>(),
    }))
}

/// Ready when the version resolves to a readable manifest; loading happens on
/// first use (or a warm), so readiness does not load the model.
async fn ready(service: &ModelService, name: &str, version: &str) -> Result<Value, Error> {
    let name_checked = crate::repository::ModelName::new(name)?;
    let repository = service.repository().clone();
    let version_owned = version.to_string();
    let resolved =
        tokio::task::spawn_blocking(move || repository.resolve(&name_checked, &version_owned))
            .await
            .map_err(|e| Error::Engine(crate::engine::EngineError::Inference(e.to_string())))??;
    Ok(json!({
        "name": name,
        "version": resolved.key.version(),
        "ready": true,
        "loaded": service.is_cached(&resolved.key),
    }))
}

/// An input's data as it came: JSON leaves, or its slice of the binary part.
enum InputData<'a> {
    Json(Vec<&'a Value>),
    Binary(&'a [u8]),
}

/// One input, checked as far as it can be without the model.
struct ParsedInput<'a> {
    name: &'a str,
    datatype: ElementType,
    shape: Vec<usize>,
    count: usize,
    data: InputData<'a>,
}

/// `POST /v2/models/{name}[/versions/{version}]/infer`.
async fn infer(
    service: &ModelService,
    name: &str,
    version: &str,
    headers: &HeaderMap,
    body: &[u8],
    record: &mut RequestRecord,
) -> Result<Response<Bytes>, Error> {
    let (header, mut binary) = split_body(headers, body)?;
    let value: Value =
        serde_json::from_slice(header).map_err(|e| RequestError::InvalidJson(e.to_string()))?;
    let request: InferRequest = serde_json::from_value(value).map_err(|e| {
        invalid(format!(
            "the body is not an Open Inference Protocol request ({e}); expected {REQUEST_FORM}"
        ))
    })?;
    // Everything checkable without the model is checked before it is loaded.
    let mut parsed = Vec::with_capacity(request.inputs.len());
    for input in &request.inputs {
        parsed.push(parse_input(input, &mut binary)?);
    }
    if !binary.is_empty() {
        return Err(invalid(format!(
            "{} bytes of binary data follow the JSON header that no input's \"binary_data_size\" accounts for",
            binary.len()
        )));
    }
    let outputs = Outputs::parse(&request)?;

    let (lease, load) = service.model(name, version).await?;
    record.loaded(&lease, load);
    let signature = lease.value().loaded.signature();
    let onnx_types: Vec<(String, String)> = signature
        .outputs
        .iter()
        .filter_map(|info| match &info.kind {
            ValueKind::Other { description } => Some((info.name.clone(), description.clone())),
            ValueKind::Tensor { .. } => None,
        })
        .collect();
    let inputs = parsed
        .into_iter()
        .map(|input| {
            let ty = input_type(signature, input.name, Some(input.datatype))?;
            let tensor = match input.data {
                InputData::Json(leaves) => to_tensor(input.name, input.shape, &leaves, ty)?,
                InputData::Binary(bytes) => {
                    binary::decode(input.name, ty, input.shape, input.count, bytes)?
                }
            };
            Ok((input.name.to_string(), tensor))
        })
        .collect::<Result<Vec<_>, Error>>()?;
    let prediction = service
        .predict(lease, load, inputs, outputs.names(), record.memory.take())
        .await?;
    record.predicted(&prediction);

    let tensors = prediction
        .outputs
        .iter()
        .map(|(name, value)| Ok((name.as_str(), v2_tensor(value)?)))
        .collect::<Result<Vec<_>, Error>>()?;
    let mut tail = Vec::new();
    let mut any_binary = false;
    let mut answers = Vec::with_capacity(tensors.len());
    for (name, tensor) in &tensors {
        let mut parameters = Map::new();
        if let Some((_, onnx_type)) = onnx_types.iter().find(|(output, _)| output == name) {
            parameters.insert("onnx_type".into(), onnx_type.as_str().into());
        }
        let binary = outputs.binary(name);
        if binary {
            any_binary = true;
            let start = tail.len();
            binary::encode(tensor.data(), &mut tail);
            parameters.insert("binary_data_size".into(), (tail.len() - start).into());
        }
        answers.push(OutputTensor {
            name,
            datatype: tensor.element_type().v2_name(),
            shape: tensor.shape(),
            data: (!binary).then(|| FlatJson(tensor.data())),
            parameters,
        });
    }
    let response = InferResponse {
        model_name: prediction.key.name().as_str(),
        model_version: prediction.key.version(),
        id: request.id.as_deref(),
        outputs: answers,
    };
    if !any_binary {
        return Ok(json_response(StatusCode::OK, &response));
    }
    Ok(binary_response(&response, tail))
}

/// An infer response, written straight from the output tensors (no JSON tree).
#[derive(Serialize)]
struct InferResponse<'a> {
    model_name: &'a str,
    model_version: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    id: Option<&'a str>,
    outputs: Vec<OutputTensor<'a>>,
}

#[derive(Serialize)]
struct OutputTensor<'a> {
    name: &'a str,
    datatype: &'static str,
    shape: &'a [usize],
    /// Absent when the output is sent as binary data after the JSON.
    #[serde(skip_serializing_if = "Option::is_none")]
    data: Option<FlatJson<'a>>,
    #[serde(skip_serializing_if = "Map::is_empty")]
    parameters: Map<String, Value>,
}

/// Splits a body into its JSON header and the binary data after it, by the
/// `Inference-Header-Content-Length` header; without that header the whole
/// body is JSON.
fn split_body<'a>(headers: &HeaderMap, body: &'a [u8]) -> Result<(&'a [u8], &'a [u8]), Error> {
    let Some(value) = headers.get(binary::HEADER_LENGTH) else {
        return Ok((body, &[]));
    };
    let length = value
        .to_str()
        .ok()
        .and_then(|v| v.trim().parse::<usize>().ok())
        .ok_or_else(|| {
            invalid(format!(
                "the Inference-Header-Content-Length header is {value:?}; expected the byte length of the body's JSON part"
            ))
        })?;
    body.split_at_checked(length).ok_or_else(|| {
        invalid(format!(
            "the Inference-Header-Content-Length header says the JSON part is {length} bytes, but the body has {}",
            body.len()
        ))
    })
}

fn parse_input<'a>(input: &'a InferInput, binary: &mut &'a [u8]) -> Result<ParsedInput<'a>, Error> {
    let name = input.name.as_str();
    refuse_unsupported(&format!("input {name:?}"), input.parameters.as_ref())?;
    let datatype = ElementType::from_v2_name(&input.datatype).ok_or_else(|| {
        invalid(format!(
            "input {name:?} has unknown datatype {:?}; expected one of {}",
            input.datatype,
            ElementType::ALL.map(|t| t.v2_name()).join(", ")
        ))
    })?;
    let shape = input
        .shape
        .iter()
        .map(|&d| usize::try_from(d).ok())
        .collect::<Option<Vec<_>>>()
        .ok_or_else(|| {
            invalid(format!(
                "input {name:?} has a negative dimension in shape {:?}",
                input.shape
            ))
        })?;
    let count = shape
        .iter()
        .try_fold(1usize, |n, &d| n.checked_mul(d))
        .ok_or_else(|| {
            invalid(format!(
                "input {name:?} has shape {:?}, whose element count overflows",
                input.shape
            ))
        })?;
    let binary_size = match input
        .parameters
        .as_ref()
        .and_then(|p| p.get("binary_data_size"))
    {
        None => None,
        Some(size) => Some(
            size.as_u64()
                .and_then(|s| usize::try_from(s).ok())
                .ok_or_else(|| {
                    invalid(format!(
                        "input {name:?} has \"binary_data_size\" {size}; expected a byte count"
                    ))
                })?,
        ),
    };
    let data = match (binary_size, &input.data) {
        (Some(_), Some(_)) => {
            return Err(invalid(format!(
                "input {name:?} has both \"data\" and \"binary_data_size\"; give one"
            )));
        }
        (None, None) => {
            return Err(invalid(format!(
                "input {name:?} has no \"data\" (nor \"binary_data_size\" for binary data)"
            )));
        }
        (Some(size), None) => {
            let Some((mine, rest)) = binary.split_at_checked(size) else {
                return Err(invalid(format!(
                    "input {name:?} has \"binary_data_size\" {size}, but only {} bytes of binary data remain after the JSON header{}",
                    binary.len(),
                    if binary.is_empty() {
                        " (is the Inference-Header-Content-Length header set?)"
                    } else {
                        ""
                    }
                )));
            };
            *binary = rest;
            InputData::Binary(mine)
        }
        (None, Some(data)) => {
            let array = flatten(name, data)?;
            if array.leaves.len() != count {
                return Err(invalid(format!(
                    "input {name:?} has shape {:?} ({count} elements) but {} data elements",
                    input.shape,
                    array.leaves.len()
                )));
            }
            InputData::Json(array.leaves)
        }
    };
    Ok(ParsedInput {
        name,
        datatype,
        shape,
        count,
        data,
    })
}

fn refuse_unsupported(what: &str, parameters: Option<&Map<String, Value>>) -> Result<(), Error> {
    let Some(parameters) = parameters else {
        return Ok(());
    };
    match UNSUPPORTED_PARAMETERS
        .iter()
        .find(|p| parameters.contains_key(**p))
    {
        Some(parameter) => Err(invalid(format!(
            "{what} uses parameter {parameter:?}, which model-router does not support (no shared memory or classification extension); send the data in the request"
        ))),
        None => Ok(()),
    }
}

/// Which outputs the request asks for, and in which form.
struct Outputs {
    /// `None`: every output, in model order.
    requested: Option<Vec<(String, bool)>>,
    /// `parameters.binary_data_output` of the request: the form of outputs
    /// that do not say.
    binary_default: bool,
}

impl Outputs {
    fn parse(request: &InferRequest) -> Result<Outputs, Error> {
        let flag = |what: &str, parameters: &Option<Map<String, Value>>, key: &str| match parameters
            .as_ref()
            .and_then(|p| p.get(key))
        {
            None => Ok(None),
            Some(Value::Bool(b)) => Ok(Some(*b)),
            Some(other) => Err(invalid(format!(
                "{what} has parameter {key:?} = {other}; expected true or false"
            ))),
        };
        let binary_default =
            flag("the request", &request.parameters, "binary_data_output")?.unwrap_or(false);
        let requested = match &request.outputs {
            None => None,
            Some(outputs) => Some(
                outputs
                    .iter()
                    .map(|output| {
                        let what = format!("output {:?}", output.name);
                        refuse_unsupported(&what, output.parameters.as_ref())?;
                        let binary = flag(&what, &output.parameters, "binary_data")?
                            .unwrap_or(binary_default);
                        Ok((output.name.clone(), binary))
                    })
                    .collect::<Result<Vec<_>, Error>>()?,
            ),
        };
        Ok(Outputs {
            requested,
            binary_default,
        })
    }

    fn names(&self) -> Option<Vec<String>> {
        self.requested
            .as_ref()
            .map(|outputs| outputs.iter().map(|(name, _)| name.clone()).collect())
    }

    fn binary(&self, name: &str) -> bool {
        match &self.requested {
            None => self.binary_default,
            Some(outputs) => outputs
                .iter()
                .find(|(output, _)| output == name)
                .is_some_and(|(_, binary)| *binary),
        }
    }
}

/// An output as a V2 tensor: tensors as they are; sequences and maps as BYTES
/// holding the JSON text of each item (see the module doc).
fn v2_tensor(value: &OutputValue) -> Result<Cow<'_, Tensor>, Error> {
    let texts: Vec<String> = match value {
        OutputValue::Tensor(tensor) => return Ok(Cow::Borrowed(tensor)),
        OutputValue::Sequence(items) => items
            .iter()
            .map(|item| json_text(&OutputJson(item)))
            .collect(),
        OutputValue::Map(_) => vec![json_text(&OutputJson(value))],
    };
    Ok(Cow::Owned(Tensor::new(
        vec![texts.len()],
        TensorData::Bytes(texts),
    )?))
}

/// JSON text of a value that always serialises (our own output types).
fn json_text(value: &impl Serialize) -> String {
    serde_json::to_string(value).unwrap_or_else(|_| "null".into())
}

/// A response whose body is the JSON header followed by binary output data.
fn binary_response(header_json: &impl Serialize, tail: Vec<u8>) -> Response<Bytes> {
    let mut body = serde_json::to_vec(header_json).unwrap_or_else(|_| b"{}".to_vec());
    let header_length = body.len();
    body.extend_from_slice(&tail);
    let mut response = Response::new(Bytes::from(body));
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("application/octet-stream"),
    );
    headers.insert(
        binary::HEADER_LENGTH,
        header::HeaderValue::from(header_length),
    );
    response
}
