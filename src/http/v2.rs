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

pub(crate) mod binary;
pub(crate) mod call;
pub(crate) mod facts;

use std::borrow::Cow;
use std::time::Instant;

use bytes::Bytes;
use http::{HeaderMap, Method, Request, Response, StatusCode, header};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use serde_json::{Map, Value, json};

use self::call::{InferCall, InputData, Outputs, Parameters, ParsedInput};
use super::RequestRecord;
use super::json::{FlatJson, invalid};
use super::json_response;
use super::parse::{self, List, Object, Shown};
use crate::error::{Error, RequestError};
use crate::identity::Caller;
use crate::service::ModelService;

/// An infer request's JSON, borrowed from the body's text: names and types
/// in place (copied only when they had escapes), data, shapes and parameters
/// as raw slices read later (see [`super::parse`]).
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct InferRequest<'a> {
    #[serde(default)]
    id: Option<String>,
    /// Sent by KServe's typed client (`InferRequest.to_rest()`); must agree
    /// with the path when given.
    #[serde(default)]
    model_name: Option<String>,
    #[serde(default)]
    model_version: Option<String>,
    #[serde(borrow)]
    inputs: List<Object<InferInput<'a>>>,
    #[serde(default, borrow)]
    outputs: Option<List<Object<RequestedOutput<'a>>>>,
    /// `null` and absent both mean none (KServe's Python client sends `null`).
    #[serde(default, borrow)]
    parameters: Option<&'a RawValue>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct InferInput<'a> {
    #[serde(borrow)]
    name: Cow<'a, str>,
    #[serde(borrow)]
    shape: &'a RawValue,
    #[serde(borrow)]
    datatype: Cow<'a, str>,
    #[serde(default, borrow)]
    data: Option<&'a RawValue>,
    /// `null` and absent both mean none (KServe's Python client sends `null`).
    #[serde(default, borrow)]
    parameters: Option<&'a RawValue>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RequestedOutput<'a> {
    #[serde(borrow)]
    name: Cow<'a, str>,
    /// `null` and absent both mean none (KServe's Python client sends `null`).
    #[serde(default, borrow)]
    parameters: Option<&'a RawValue>,
}

/// The most one object of a request body costs in the lists it is read into
/// (the census counts objects; [`parse::bound_before_model`]): an input is one entry of the list
/// of inputs (grown as serde grows it: three entries while it doubles, with
/// the size class), one of the parsed inputs and one of the typed inputs
/// (exact lists); an output is an entry of the list of outputs and one of the
/// requested names.
pub(crate) fn object_bytes() -> u64 {
    use std::mem::size_of;
    let grown = |size: usize| (3 * size + 3 * size / 4) as u64;
    let exact = |size: usize| (size + size / 4) as u64;
    let input = grown(size_of::<Object<InferInput>>())
        + exact(size_of::<ParsedInput>())
        + exact(size_of::<(ParsedInput, crate::engine::ElementType)>());
    let output = grown(size_of::<Object<RequestedOutput>>()) + exact(size_of::<(String, bool)>());
    input.max(output)
}

/// The shape of a V2 infer request's JSON, for error messages.
const REQUEST_FORM: &str = r#"{"id"?: "...", "model_name"?: "...", "model_version"?: "...", "inputs": [{"name", "shape", "datatype", "data"}], "outputs"?: [{"name"}], "parameters"?: {...}}"#;

pub(super) async fn route(
    service: &ModelService,
    request: &Request<Bytes>,
    rest: &[&str],
    record: &mut RequestRecord,
    only: &(dyn Fn(Method, &'static str) -> Result<(), Error> + Sync),
    caller: &Caller,
) -> Result<Response<Bytes>, Error> {
    let method = request.method();
    let ok = |body: Value| -> Result<Response<Bytes>, Error> {
        Ok(json_response(StatusCode::OK, &body))
    };
    match rest {
        [] => {
            only(Method::GET, "GET")?;
            let server = facts::server_metadata();
            ok(json!({
                "name": server.name,
                "version": server.version,
                "extensions": server.extensions,
            }))
        }
        ["health", "live"] => {
            only(Method::GET, "GET")?;
            ok(json!({"live": true}))
        }
        ["health", "ready"] => {
            only(Method::GET, "GET")?;
            let ready = facts::server_ready(service).await;
            Ok(readiness(json!({"ready": ready.is_ok()}), ready.err()))
        }
        ["models", "stats"] => {
            only(Method::GET, "GET")?;
            ok(facts::stats_json(
                &facts::stats(service, caller, None, None).await?,
            ))
        }
        ["repository", "index"] => {
            only(Method::POST, "POST")?;
            let index = facts::repository_index(service, caller).await?;
            ok(Value::Array(
                index
                    .into_iter()
                    .map(|m| json!({"name": m.name, "version": m.version, "state": m.state, "reason": m.reason}))
                    .collect(),
            ))
        }
        ["repository", "models", _, action @ ("load" | "unload")] => {
            only(Method::POST, "POST")?;
            Err(facts::repository_control_refused(action))
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
                    ok(metadata_json(
                        &facts::model_metadata(service, name, version).await?,
                    ))
                }
                Some("ready") => {
                    only(Method::GET, "GET")?;
                    let ready = facts::model_ready(service, name, version).await?;
                    Ok(readiness(
                        json!({"name": name, "version": ready.version, "ready": ready.why_not.is_none(), "loaded": ready.loaded}),
                        ready.why_not,
                    ))
                }
                Some("config") => {
                    only(Method::GET, "GET")?;
                    ok(facts::model_config(service, name, version).await?.to_json())
                }
                Some("stats") => {
                    only(Method::GET, "GET")?;
                    let pinned = tail.first() == Some(&"versions");
                    let stats =
                        facts::stats(service, caller, Some(name), pinned.then_some(version))
                            .await?;
                    ok(facts::stats_json(&stats))
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

/// A readiness answer: 200 when ready; 400 with the reason when not (the
/// Open Inference Protocol's "4xx means false", which tritonclient reads).
fn readiness(mut body: Value, why_not: Option<String>) -> Response<Bytes> {
    match why_not {
        None => json_response(StatusCode::OK, &body),
        Some(reason) => {
            body["reason"] = Value::String(reason);
            json_response(StatusCode::BAD_REQUEST, &body)
        }
    }
}

fn not_found(method: &Method, rest: &[&str]) -> Error {
    RequestError::RouteNotFound {
        method: method.to_string(),
        path: format!("/v2/{}", rest.join("/")),
    }
    .into()
}

/// `GET /v2/models/{name}[/versions/{version}]` as JSON.
fn metadata_json(metadata: &facts::ModelMetadata) -> Value {
    let tensors = |tensors: &[facts::TensorMetadata]| -> Vec<Value> {
        tensors
            .iter()
            .map(|t| {
                let mut v = json!({"name": t.name, "datatype": t.datatype, "shape": t.shape});
                if let Some(onnx_type) = &t.onnx_type {
                    v["parameters"] = json!({"onnx_type": onnx_type});
                }
                v
            })
            .collect()
    };
    json!({
        "name": metadata.name,
        "versions": metadata.versions,
        "platform": metadata.platform,
        "inputs": tensors(&metadata.inputs),
        "outputs": tensors(&metadata.outputs),
    })
}

/// An error in the request's structure, as the protocol defines it.
fn not_v2(why: impl std::fmt::Display) -> Error {
    invalid(format!(
        "the body is not an Open Inference Protocol request ({why}); expected {REQUEST_FORM}"
    ))
}

/// Reads a request's JSON (which [`parse::validate`] accepted) and checks
/// every part the protocol types (its parameters, its inputs' shapes)
/// without keeping them.
fn parse_request(header: &[u8]) -> Result<InferRequest<'_>, Error> {
    let Object(request): Object<InferRequest> = serde_json::from_slice(header).map_err(not_v2)?;
    let inputs = request.inputs.0.iter().map(|i| &i.0);
    let outputs = request
        .outputs
        .iter()
        .flat_map(|o| o.0.iter().map(|o| &o.0));
    let parameters = request
        .parameters
        .iter()
        .chain(inputs.clone().filter_map(|i| i.parameters.as_ref()))
        .chain(outputs.filter_map(|o| o.parameters.as_ref()));
    for raw in parameters {
        Parameters::from_json(raw).map_err(not_v2)?;
    }
    for (i, input) in inputs.enumerate() {
        parse::integers(input.shape, None)
            .map_err(|e| not_v2(format!("input {i}'s \"shape\": {e}")))?;
    }
    Ok(request)
}

/// What reading the request's shapes allocates: each is read into a list of
/// its length, then once more as sizes ([`call::checked_tensor`]).
fn shapes_bound(request: &InferRequest) -> u64 {
    request
        .inputs
        .0
        .iter()
        .map(|input| {
            let dims = parse::integers(input.0.shape, None).unwrap_or(0) as u64;
            2 * parse::allocation_bound(8 * dims)
        })
        .sum()
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
    let started = Instant::now();
    let (header, mut binary) = split_body(headers, body)?;
    parse::validate(header)?;
    let request = parse_request(header)?;
    call::check_body_model(
        name,
        version,
        request.model_name.as_deref(),
        request.model_version.as_deref(),
    )?;
    let parameters = request
        .parameters
        .map(Parameters::from_json)
        .transpose()
        .map_err(not_v2)?;
    let deadline = call::request_deadline(parameters.as_ref(), started)?;
    if let Some(memory) = &record.memory {
        memory
            .grow_waiting(memory.bytes() + shapes_bound(&request))
            .await?;
    }
    // Everything checkable without the model is checked before it is loaded.
    let mut inputs = Vec::with_capacity(request.inputs.0.len());
    for input in &request.inputs.0 {
        inputs.push(parse_input(&input.0, &mut binary)?);
    }
    if !binary.is_empty() {
        return Err(invalid(format!(
            "{} bytes of binary data follow the JSON header that no input's \"binary_data_size\" accounts for",
            binary.len()
        )));
    }
    let outputs = parse_outputs(&request)?;
    let answer = call::run(
        service,
        name,
        version,
        InferCall {
            inputs,
            outputs,
            deadline,
        },
        record,
    )
    .await?;

    let mut tail = Vec::new();
    let mut any_binary = false;
    let mut answers = Vec::with_capacity(answer.outputs.len());
    for output in &answer.outputs {
        let tensor = &output.tensor;
        // Output parameters only where they say something: tritonclient 2.50
        // reads any output `parameters` as "this output is binary".
        let mut parameters = Map::new();
        if let Some(onnx_type) = &output.onnx_type {
            parameters.insert("onnx_type".into(), onnx_type.as_str().into());
        }
        if output.binary {
            any_binary = true;
            let start = tail.len();
            binary::encode(tensor.data(), &mut tail);
            parameters.insert("binary_data_size".into(), (tail.len() - start).into());
        }
        answers.push(OutputTensor {
            name: &output.name,
            datatype: tensor.element_type().v2_name(),
            shape: tensor.shape(),
            data: (!output.binary).then(|| FlatJson(tensor.data())),
            parameters,
        });
    }
    let response = InferResponse {
        model_name: answer.key.name().as_str(),
        model_version: answer.key.version(),
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

fn parse_input<'a>(
    input: &'a InferInput<'a>,
    binary: &mut &'a [u8],
) -> Result<ParsedInput<'a>, Error> {
    let name = input.name.as_ref();
    let parameters = input
        .parameters
        .map(Parameters::from_json)
        .transpose()
        .map_err(not_v2)?;
    call::refuse_unsupported(&format!("input {:?}", Shown(name)), parameters.as_ref())?;
    let mut dims = Vec::with_capacity(parse::integers(input.shape, None).map_err(not_v2)?);
    parse::integers(input.shape, Some(&mut dims)).map_err(not_v2)?;
    let (datatype, shape, count) = call::checked_tensor(name, &input.datatype, &dims)?;
    drop(dims);
    let binary_size = match parameters.as_ref().and_then(|p| p.get("binary_data_size")) {
        None => None,
        Some(size) => Some(
            size.as_u64()
                .and_then(|s| usize::try_from(s).ok())
                .ok_or_else(|| {
                    invalid(format!(
                        "input {:?} has \"binary_data_size\" {size}; expected a byte count",
                        Shown(name)
                    ))
                })?,
        ),
    };
    let data = match (binary_size, input.data) {
        (Some(_), Some(_)) => {
            return Err(invalid(format!(
                "input {:?} has both \"data\" and \"binary_data_size\"; give one",
                Shown(name)
            )));
        }
        (None, None) => {
            return Err(invalid(format!(
                "input {:?} has no \"data\" (nor \"binary_data_size\" for binary data)",
                Shown(name)
            )));
        }
        (Some(size), None) => {
            let Some((mine, rest)) = binary.split_at_checked(size) else {
                return Err(invalid(format!(
                    "input {:?} has \"binary_data_size\" {size}, but only {} bytes of binary data remain after the JSON header{}",
                    Shown(name),
                    binary.len(),
                    if binary.is_empty() {
                        " (is the Inference-Header-Content-Length header set?)"
                    } else {
                        ""
                    }
                )));
            };
            *binary = rest;
            InputData::Binary(Cow::Borrowed(mine))
        }
        (None, Some(data)) => {
            let scanned = parse::scan(name, data)?;
            if scanned.count != count {
                return Err(invalid(format!(
                    "input {:?} has shape {} ({count} elements) but {} data elements",
                    Shown(name),
                    parse::shown_raw(input.shape),
                    scanned.count
                )));
            }
            InputData::Json(data, scanned)
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

/// Which outputs a REST request asks for, and in which form; `"outputs": []`
/// is every output (see [`call::Outputs`]).
fn parse_outputs(request: &InferRequest) -> Result<Outputs, Error> {
    let parameters = request
        .parameters
        .map(Parameters::from_json)
        .transpose()
        .map_err(not_v2)?;
    let binary_default =
        call::flag("the request", parameters.as_ref(), "binary_data_output")?.unwrap_or(false);
    let requested = match request.outputs.as_ref().map(|o| o.0.as_slice()) {
        None | Some([]) => None,
        Some(outputs) => {
            let mut requested = Vec::with_capacity(outputs.len());
            for Object(output) in outputs {
                let what = format!("output {:?}", Shown(&output.name));
                let parameters = output
                    .parameters
                    .map(Parameters::from_json)
                    .transpose()
                    .map_err(not_v2)?;
                call::refuse_unsupported(&what, parameters.as_ref())?;
                let binary = call::flag(&what, parameters.as_ref(), "binary_data")?
                    .unwrap_or(binary_default);
                requested.push((output.name.to_string(), binary));
            }
            Some(requested)
        }
    };
    Ok(Outputs {
        requested,
        binary_default,
    })
}

/// JSON text of a value that always serialises (our own output types).
pub(crate) fn json_text(value: &impl Serialize) -> String {
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

#[cfg(test)]
mod tests;
