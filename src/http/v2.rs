//! The Open Inference Protocol (KServe V2 / Triton) REST routes, JSON only.
//!
//! Non-tensor outputs (the sequence of maps a scikit-learn ZipMap makes) have
//! no V2 datatype: they are answered as `BYTES` tensors of shape `[N]` whose
//! elements are the JSON text of each item (`"{\"0\":0.9,\"1\":0.1}"`), so
//! strict V2 clients still decode them. The binary tensor extension is not
//! supported; requests using it get a 400 saying so.

use http::{Method, StatusCode};
use serde::Deserialize;
use serde_json::{Value, json};

use super::RequestRecord;
use super::json::{flat_json, flatten, input_tensor, invalid, output_json};
use crate::engine::{Dim, ElementType, OutputValue, Signature, ValueInfo, ValueKind};
use crate::error::{Error, RequestError};
use crate::service::ModelService;

#[derive(Deserialize)]
struct InferRequest {
    #[serde(default)]
    id: Option<String>,
    inputs: Vec<InferInput>,
    #[serde(default)]
    outputs: Option<Vec<RequestedOutput>>,
}

#[derive(Deserialize)]
struct InferInput {
    name: String,
    shape: Vec<i64>,
    datatype: String,
    #[serde(default)]
    data: Option<Value>,
    #[serde(default)]
    parameters: Option<serde_json::Map<String, Value>>,
}

#[derive(Deserialize)]
struct RequestedOutput {
    name: String,
}

pub(super) async fn route(
    service: &ModelService,
    method: &Method,
    rest: &[&str],
    body: &[u8],
    record: &mut RequestRecord,
    only: &(dyn Fn(Method, &'static str) -> Result<(), Error> + Sync),
) -> Result<(StatusCode, Value), Error> {
    match rest {
        [] => {
            only(Method::GET, "GET")?;
            Ok((
                StatusCode::OK,
                json!({"name": "model-router", "version": env!("CARGO_PKG_VERSION"), "extensions": []}),
            ))
        }
        ["health", "live"] => {
            only(Method::GET, "GET")?;
            Ok((StatusCode::OK, json!({"live": true})))
        }
        ["health", "ready"] => {
            only(Method::GET, "GET")?;
            Ok((StatusCode::OK, json!({"ready": true})))
        }
        ["models", name, tail @ ..] => {
            let (version, action) = match tail {
                [] => ("latest", None),
                [action] => ("latest", Some(*action)),
                ["versions", version] => (*version, None),
                ["versions", version, action] => (*version, Some(*action)),
                _ => return Err(not_found(method, rest)),
            };
            record.model = Some(name.to_string());
            record.version = Some(version.to_string());
            match action {
                None => {
                    only(Method::GET, "GET")?;
                    metadata(service, name, version).await
                }
                Some("ready") => {
                    only(Method::GET, "GET")?;
                    ready(service, name, version).await
                }
                Some("infer") => {
                    only(Method::POST, "POST")?;
                    infer(service, name, version, body, record).await
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
                    Dim::Fixed(n) => *n as i64,
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

async fn metadata(
    service: &ModelService,
    name: &str,
    version: &str,
) -> Result<(StatusCode, Value), Error> {
    let (key, signature) = service.signature(name, version).await?;
    let Signature { inputs, outputs } = signature;
    let repository = service.repository().clone();
    let model_name = key.name().clone();
    let versions = tokio::task::spawn_blocking(move || repository.versions(&model_name))
        .await
        .map_err(|e| Error::Engine(crate::engine::EngineError::Inference(e.to_string())))??;
    Ok((
        StatusCode::OK,
        json!({
            "name": key.name().as_str(),
            "versions": versions,
            "platform": "onnxruntime_onnx",
            "inputs": inputs.iter().map(tensor_metadata).collect::<Vec<_>>(),
            "outputs": outputs.iter().map(tensor_metadata).collect::<Vec<_>>(),
        }),
    ))
}

/// Ready when the version resolves to a readable manifest; loading happens on
/// first use (or a warm), so readiness does not load the model.
async fn ready(
    service: &ModelService,
    name: &str,
    version: &str,
) -> Result<(StatusCode, Value), Error> {
    let name_checked = crate::repository::ModelName::new(name)?;
    let repository = service.repository().clone();
    let version_owned = version.to_string();
    let resolved =
        tokio::task::spawn_blocking(move || repository.resolve(&name_checked, &version_owned))
            .await
            .map_err(|e| Error::Engine(crate::engine::EngineError::Inference(e.to_string())))??;
    Ok((
        StatusCode::OK,
        json!({"name": name, "version": resolved.key.version(), "ready": true, "loaded": service.is_cached(&resolved.key)}),
    ))
}

async fn infer(
    service: &ModelService,
    name: &str,
    version: &str,
    body: &[u8],
    record: &mut RequestRecord,
) -> Result<(StatusCode, Value), Error> {
    let request: InferRequest =
        serde_json::from_slice(body).map_err(|e| RequestError::InvalidJson(e.to_string()))?;
    // Check what needs no model first.
    let mut parsed = Vec::with_capacity(request.inputs.len());
    for input in &request.inputs {
        if input
            .parameters
            .as_ref()
            .is_some_and(|p| p.contains_key("binary_data_size"))
        {
            return Err(invalid(format!(
                "input {:?} uses the binary tensor extension, which model-router does not support; send JSON data (tritonclient: binary_data=False)",
                input.name
            )));
        }
        let datatype = ElementType::from_v2_name(&input.datatype).ok_or_else(|| {
            invalid(format!(
                "input {:?} has unknown datatype {:?}; expected one of {}",
                input.name,
                input.datatype,
                ElementType::ALL.map(|t| t.v2_name()).join(", ")
            ))
        })?;
        let shape = input
            .shape
            .iter()
            .map(|&d| {
                usize::try_from(d).map_err(|_| {
                    invalid(format!(
                        "input {:?} has a negative dimension in shape {:?}",
                        input.name, input.shape
                    ))
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        let data = input
            .data
            .as_ref()
            .ok_or_else(|| invalid(format!("input {:?} has no \"data\"", input.name)))?;
        let array = flatten(&input.name, data)?;
        let expected = shape.iter().product::<usize>();
        if array.leaves.len() != expected {
            return Err(invalid(format!(
                "input {:?} has shape {:?} ({expected} elements) but {} data elements",
                input.name,
                input.shape,
                array.leaves.len()
            )));
        }
        parsed.push((input.name.as_str(), shape, array.leaves, datatype));
    }
    let (lease, load) = service.model(name, version).await?;
    record.load = Some(load);
    record.version = Some(lease.key().version().to_string());
    let signature = lease.value().loaded.signature();
    let inputs = parsed
        .into_iter()
        .map(|(name, shape, leaves, datatype)| {
            input_tensor(signature, name, shape, &leaves, Some(datatype))
        })
        .collect::<Result<Vec<_>, _>>()?;
    let wanted = request
        .outputs
        .map(|outputs| outputs.into_iter().map(|o| o.name).collect());
    let prediction = service.predict(lease, load, inputs, wanted).await?;
    record.inference_ms = Some(prediction.inference_ms);
    let outputs: Vec<Value> = prediction
        .outputs
        .iter()
        .map(|(name, value)| output_tensor(name, value))
        .collect();
    let mut response = json!({
        "model_name": prediction.key.name().as_str(),
        "model_version": prediction.key.version(),
        "outputs": outputs,
    });
    if let Some(id) = request.id {
        response["id"] = Value::String(id);
    }
    Ok((StatusCode::OK, response))
}

fn output_tensor(name: &str, value: &OutputValue) -> Value {
    match value {
        OutputValue::Tensor(tensor) => json!({
            "name": name,
            "datatype": tensor.element_type().v2_name(),
            "shape": tensor.shape(),
            "data": flat_json(tensor.data()),
        }),
        OutputValue::Sequence(items) => json!({
            "name": name,
            "datatype": "BYTES",
            "shape": [items.len()],
            "data": items.iter().map(|item| output_json(item).to_string()).collect::<Vec<_>>(),
        }),
        OutputValue::Map(_) => json!({
            "name": name,
            "datatype": "BYTES",
            "shape": [1],
            "data": [output_json(value).to_string()],
        }),
    }
}
