//! One Open Inference Protocol inference, whatever the transport: the REST
//! routes ([`super`]) and the gRPC service ([`crate::grpc`]) each turn their
//! request into an [`InferCall`], and [`run`] checks it, gets the model, runs
//! it and records its statistics. Only the encodings differ.
//!
//! Parameters (request, input and output `parameters`) have one meaning each,
//! shared by both transports (docs/protocols.md):
//! - `timeout` (microseconds, Triton's unit): a deadline for the request. It
//!   covers waiting for the model (a load, or a load another request started)
//!   and is checked again before the run starts; a run in progress is not
//!   interrupted. Past it: 504 `deadline_exceeded` (gRPC `DEADLINE_EXCEEDED`).
//! - `sequence_id` (other than 0 or ""), `sequence_start`/`sequence_end`
//!   (true), `priority` (other than 0): 400 `not_supported`. model-router has
//!   no sequence batcher and no priority queues; 0 is those parameters'
//!   "none" and is accepted.
//! - `classification` on an output, shared memory on an input or output: 400
//!   `not_supported`.
//! - `binary_data_output`, `binary_data` and `binary_data_size`: the binary
//!   tensor data extension (REST only).

use std::borrow::Cow;
use std::fmt;
use std::time::{Duration, Instant};

use serde_json::value::RawValue;

use super::binary;
use crate::engine::{ElementType, OutputValue, Tensor, TensorData, ValueKind};
use crate::error::{Error, RequestError};
use crate::http::RequestRecord;
use crate::http::json::{OutputJson, input_type, invalid};
use crate::http::parse::{self, Kind, Scanned, Shown, ShownDims};
use crate::repository::ModelKey;
use crate::service::ModelService;
use crate::status::InferenceTimes;

/// Parameters refused wherever they appear: model-router has no shared
/// memory and no classification extension, so a client never reads shared
/// memory that was never written or gets scores where it asked for classes.
const UNSUPPORTED_PARAMETERS: [&str; 4] = [
    "shared_memory_region",
    "shared_memory_byte_size",
    "shared_memory_offset",
    "classification",
];

/// Every parameter model-router reads (the module doc gives each its
/// meaning); any other is ignored, and not kept.
const KNOWN_PARAMETERS: [&str; 12] = [
    "shared_memory_region",
    "shared_memory_byte_size",
    "shared_memory_offset",
    "classification",
    "binary_data_size",
    "binary_data",
    "binary_data_output",
    "timeout",
    "sequence_id",
    "sequence_start",
    "sequence_end",
    "priority",
];

/// One parameter's value, as JSON gives it (gRPC's typed parameters map onto
/// the scalars).
#[derive(Debug, Clone)]
pub enum Parameter<'a> {
    Null,
    Bool(bool),
    Number(serde_json::Number),
    String(Cow<'a, str>),
    /// An array or an object: never a valid value of a parameter
    /// model-router reads, kept only to be named in the error.
    Other(&'a RawValue),
}

impl Parameter<'_> {
    pub fn as_u64(&self) -> Option<u64> {
        match self {
            Parameter::Number(n) => n.as_u64(),
            _ => None,
        }
    }

    /// Whether this is a parameter's "none": null, false, 0 or "".
    fn is_none(&self) -> bool {
        match self {
            Parameter::Null | Parameter::Bool(false) => true,
            Parameter::Number(n) => n.as_f64() == Some(0.0),
            Parameter::String(s) => s.is_empty(),
            _ => false,
        }
    }
}

/// As JSON writes it (strings and raw values cut as [`Shown`] cuts them).
impl fmt::Display for Parameter<'_> {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        match self {
            Parameter::Null => f.write_str("null"),
            Parameter::Bool(b) => write!(f, "{b}"),
            Parameter::Number(n) => write!(f, "{n}"),
            Parameter::String(s) => write!(f, "{}", Shown(s)),
            Parameter::Other(raw) => write!(f, "{}", parse::shown_raw(raw)),
        }
    }
}

/// The parameters of a request, an input or an output that model-router
/// reads: at most one value for each of [`KNOWN_PARAMETERS`], in place
/// (no allocation but a string value's unescaped copy); others are not kept.
#[derive(Debug, Default, Clone)]
pub struct Parameters<'a> {
    values: [Option<Parameter<'a>>; KNOWN_PARAMETERS.len()],
}

impl<'a> Parameters<'a> {
    /// The value of `key`, if given (and `key` is one model-router reads).
    pub fn get(&self, key: &str) -> Option<&Parameter<'a>> {
        let index = KNOWN_PARAMETERS.iter().position(|k| *k == key)?;
        self.values[index].as_ref()
    }

    /// Sets `key` (the last value given counts); ignores keys model-router
    /// does not read.
    pub fn set(&mut self, key: &str, value: Parameter<'a>) {
        if let Some(index) = KNOWN_PARAMETERS.iter().position(|k| *k == key) {
            self.values[index] = Some(value);
        }
    }

    /// Reads a JSON `parameters` object; `Err` says why `raw` is not one.
    pub fn from_json(raw: &'a RawValue) -> Result<Parameters<'a>, String> {
        let kind = Kind::of(raw);
        if kind != Kind::Object {
            return Err(format!(
                "\"parameters\" is {}; expected an object",
                kind.article()
            ));
        }
        let mut parameters = Parameters::default();
        parse::entries(raw.get().as_bytes(), |key, value| {
            if KNOWN_PARAMETERS.contains(&key.as_ref()) {
                parameters.set(&key, parameter(value));
            }
            Ok(())
        })
        .map_err(|e| e.to_string())?;
        Ok(parameters)
    }
}

/// A raw JSON value as a [`Parameter`].
fn parameter(raw: &RawValue) -> Parameter<'_> {
    match Kind::of(raw) {
        Kind::Null => Parameter::Null,
        Kind::Bool => Parameter::Bool(raw.get() == "true"),
        Kind::Number => serde_json::from_str(raw.get())
            .map(Parameter::Number)
            .unwrap_or(Parameter::Other(raw)),
        Kind::String => parse::string(raw)
            .map(Parameter::String)
            .unwrap_or(Parameter::Other(raw)),
        Kind::Array | Kind::Object => Parameter::Other(raw),
    }
}

/// An input's data as it came: JSON (its text, and what the scan of it
/// learned), bytes in the binary tensor data layout (REST binary data, gRPC
/// `raw_input_contents`), or typed values (gRPC `contents`).
pub enum InputData<'a> {
    Json(&'a RawValue, Scanned),
    Binary(Cow<'a, [u8]>),
    Typed(TensorData),
}

/// One input, checked as far as it can be without the model.
pub struct ParsedInput<'a> {
    pub name: &'a str,
    pub datatype: ElementType,
    pub shape: Vec<usize>,
    pub count: usize,
    pub data: InputData<'a>,
}

/// An input's declared datatype and shape, checked: the element type, the
/// shape as sizes, and the element count.
pub fn checked_tensor(
    name: &str,
    datatype: &str,
    shape: &[i64],
) -> Result<(ElementType, Vec<usize>, usize), Error> {
    let ty = ElementType::from_v2_name(datatype).ok_or_else(|| {
        invalid(format!(
            "input {:?} has unknown datatype {:?}; expected one of {}",
            Shown(name),
            Shown(datatype),
            ElementType::ALL.map(|t| t.v2_name()).join(", ")
        ))
    })?;
    // Exactly the shape's length: it is reserved before it is read.
    let mut sizes = Vec::with_capacity(shape.len());
    for &d in shape {
        let Ok(size) = usize::try_from(d) else {
            return Err(invalid(format!(
                "input {:?} has a negative dimension in shape {}",
                Shown(name),
                ShownDims(shape)
            )));
        };
        sizes.push(size);
    }
    let count = sizes
        .iter()
        .try_fold(1usize, |n, &d| n.checked_mul(d))
        .ok_or_else(|| {
            invalid(format!(
                "input {:?} has shape {}, whose element count overflows",
                Shown(name),
                ShownDims(shape)
            ))
        })?;
    Ok((ty, sizes, count))
}

/// Refuses the parameters model-router cannot honour (see the module doc).
pub fn refuse_unsupported(what: &str, parameters: Option<&Parameters<'_>>) -> Result<(), Error> {
    let Some(parameters) = parameters else {
        return Ok(());
    };
    match UNSUPPORTED_PARAMETERS
        .iter()
        .find(|p| parameters.get(p).is_some())
    {
        Some(parameter) => Err(RequestError::NotSupported(format!(
            "{what} uses parameter {parameter:?}, which model-router does not support (no shared memory or classification extension); send the data in the request and read the scores"
        ))
        .into()),
        None => Ok(()),
    }
}

/// A boolean parameter: `None` when absent.
pub fn flag(
    what: &str,
    parameters: Option<&Parameters<'_>>,
    key: &str,
) -> Result<Option<bool>, Error> {
    match parameters.and_then(|p| p.get(key)) {
        None => Ok(None),
        Some(Parameter::Bool(b)) => Ok(Some(*b)),
        Some(other) => Err(invalid(format!(
            "{what} has parameter {key:?} = {other}; expected true or false"
        ))),
    }
}

/// The request-level parameters: refuses sequences and priorities, and gives
/// the deadline `timeout` sets (see the module doc).
pub fn request_deadline(
    parameters: Option<&Parameters<'_>>,
    started: Instant,
) -> Result<Option<Instant>, Error> {
    refuse_unsupported("the request", parameters)?;
    let Some(parameters) = parameters else {
        return Ok(None);
    };
    for key in ["sequence_id", "sequence_start", "sequence_end", "priority"] {
        if let Some(value) = parameters.get(key).filter(|v| !v.is_none()) {
            let what = if key == "priority" {
                "request priorities (there is one queue)"
            } else {
                "sequences (there is no sequence batcher: every request stands alone)"
            };
            return Err(RequestError::NotSupported(format!(
                "the request has parameter {key:?} = {value}; model-router does not support {what}; leave it out"
            ))
            .into());
        }
    }
    match parameters.get("timeout") {
        None | Some(Parameter::Null) => Ok(None),
        Some(value) => {
            let micros = value.as_u64().ok_or_else(|| {
                invalid(format!(
                    "the request has parameter \"timeout\" = {value}; expected a whole number of microseconds"
                ))
            })?;
            Ok(Some(started + Duration::from_micros(micros)))
        }
    }
}

/// Which outputs a request asks for, and in which form.
pub struct Outputs {
    /// `None`: every output, in model order. An empty list of requested
    /// outputs means the same (the spec's "all outputs, default settings";
    /// gRPC cannot tell an empty list from none).
    pub requested: Option<Vec<(String, bool)>>,
    /// The form of outputs that do not say (REST: `binary_data_output`).
    pub binary_default: bool,
}

impl Outputs {
    pub fn names(&self) -> Option<Vec<String>> {
        self.requested
            .as_ref()
            .map(|outputs| outputs.iter().map(|(name, _)| name.clone()).collect())
    }

    pub fn binary(&self, name: &str) -> bool {
        match &self.requested {
            None => self.binary_default,
            Some(outputs) => outputs
                .iter()
                .find(|(output, _)| output == name)
                .is_some_and(|(_, binary)| *binary),
        }
    }
}

/// One inference request, transport-neutral.
pub struct InferCall<'a> {
    pub inputs: Vec<ParsedInput<'a>>,
    pub outputs: Outputs,
    /// When the request's `timeout` runs out.
    pub deadline: Option<Instant>,
}

/// One output of an answer.
pub struct AnsweredOutput {
    pub name: String,
    pub tensor: Tensor,
    /// For outputs that are not tensors: ONNX's type (see [`super`]'s doc).
    pub onnx_type: Option<String>,
    pub binary: bool,
}

/// The answer of [`run`].
pub struct InferAnswer {
    pub key: ModelKey,
    pub outputs: Vec<AnsweredOutput>,
    /// The request memory the outputs are counted in (src/memory.rs): held
    /// until the answer, and the response made from it, are dropped.
    pub _memory: crate::memory::Reservation,
}

/// Checks a body's `model_name` / `model_version` against the route's: absent
/// or empty agrees; anything else must equal what the path says (`latest`
/// when the path names no version).
pub fn check_body_model(
    path_name: &str,
    path_version: &str,
    body_name: Option<&str>,
    body_version: Option<&str>,
) -> Result<(), Error> {
    if let Some(body) = body_name.filter(|n| !n.is_empty() && *n != path_name) {
        return Err(invalid(format!(
            "the body's \"model_name\" is {:?} but the request is for model {path_name:?}; leave it out or make them agree",
            Shown(body)
        )));
    }
    if let Some(body) = body_version.filter(|v| !v.is_empty() && *v != path_version) {
        return Err(invalid(format!(
            "the body's \"model_version\" is {:?} but the request is for version {path_version:?}; address /v2/models/{path_name}/versions/{}/infer to call that version",
            Shown(body),
            parse::cut(body)
        )));
    }
    Ok(())
}

/// Each input with the element type the model of `signature` declares for
/// it (which its declared datatype must be).
pub(crate) fn typed<'a>(
    inputs: Vec<ParsedInput<'a>>,
    signature: &crate::engine::Signature,
) -> Result<Vec<(ParsedInput<'a>, ElementType)>, Error> {
    let mut typed = Vec::with_capacity(inputs.len());
    for input in inputs {
        let ty = input_type(signature, input.name, Some(input.datatype))?;
        typed.push((input, ty));
    }
    Ok(typed)
}

/// Each input's tensor: JSON read straight into its element type, binary
/// data decoded, typed contents checked; [`tensors_bound`] is what it takes.
pub(crate) fn tensors(
    typed: Vec<(ParsedInput<'_>, ElementType)>,
) -> Result<Vec<(String, Tensor)>, Error> {
    let mut tensors = Vec::with_capacity(typed.len());
    for (input, ty) in typed {
        let tensor = match input.data {
            InputData::Json(raw, scanned) => Tensor::new(
                input.shape,
                parse::fill(input.name, raw, scanned.count, ty)?,
            )?,
            InputData::Binary(bytes) => {
                binary::decode(input.name, ty, input.shape, input.count, &bytes)?
            }
            InputData::Typed(data) => {
                if data.len() != input.count {
                    return Err(invalid(format!(
                        "input {:?} has shape {} ({} elements) but {} elements in its contents",
                        Shown(input.name),
                        ShownDims(&input.shape),
                        input.count,
                        data.len()
                    )));
                }
                Tensor::new(input.shape, data)?
            }
        };
        tensors.push((input.name.to_string(), tensor));
    }
    Ok(tensors)
}

/// What turning `inputs` (each with its model's element type) into the
/// `(name, tensor)` list allocates: each tensor's elements (JSON:
/// [`parse::tensor_bound`]; binary: [`binary::decode_bound`]; typed
/// contents are already allocated), each name, and the list.
pub(crate) fn tensors_bound(inputs: &[(ParsedInput<'_>, ElementType)]) -> u64 {
    let list =
        parse::allocation_bound((inputs.len() * std::mem::size_of::<(String, Tensor)>()) as u64);
    list + inputs
        .iter()
        .map(|(input, ty)| {
            let data = match &input.data {
                InputData::Json(_, scanned) => parse::tensor_bound(*ty, scanned),
                InputData::Binary(bytes) => binary::decode_bound(*ty, input.count, bytes.len()),
                InputData::Typed(_) => 0,
            };
            data + parse::allocation_bound(input.name.len() as u64)
        })
        .sum::<u64>()
}

/// Gets the model, runs `call`, records the version's statistics.
pub async fn run(
    service: &ModelService,
    name: &str,
    version: &str,
    call: InferCall<'_>,
    record: &mut RequestRecord,
) -> Result<InferAnswer, Error> {
    let InferCall {
        inputs,
        outputs,
        deadline,
    } = call;
    let expired = || {
        Error::from(RequestError::DeadlineExceeded(
            "the request's \"timeout\" passed before its model could run".into(),
        ))
    };
    let called = Instant::now();
    let model = service.model(name, version);
    let (lease, load) = match deadline {
        None => model.await?,
        Some(deadline) => tokio::time::timeout_at(deadline.into(), model)
            .await
            .map_err(|_| expired())??,
    };
    record.loaded(&lease, load);
    let key = lease.key().clone();
    let mut times = InferenceTimes {
        queue: called.elapsed(),
        ..Default::default()
    };
    let result = async {
        let converting = Instant::now();
        let signature = lease.value().loaded.signature();
        let onnx_types: Vec<(String, String)> = signature
            .outputs
            .iter()
            .filter_map(|info| match &info.kind {
                ValueKind::Other { description } => Some((info.name.clone(), description.clone())),
                ValueKind::Tensor { .. } => None,
            })
            .collect();
        // Each input's type, then what making their tensors allocates,
        // reserved before any is made (a REST request's reservation; gRPC
        // requests reserve in the prediction, once their tensors exist).
        let typed = typed(inputs, signature)?;
        if let Some(memory) = &record.memory {
            memory
                .grow_waiting(memory.bytes() + tensors_bound(&typed))
                .await?;
        }
        let tensors = tensors(typed)?;
        if deadline.is_some_and(|d| Instant::now() >= d) {
            return Err(expired());
        }
        times.compute_input = converting.elapsed();
        let prediction = service
            .predict(lease, load, tensors, outputs.names(), record.memory.take())
            .await?;
        record.predicted(&prediction);
        times.compute_infer = Duration::from_secs_f64(prediction.inference_ms / 1e3);
        let converting = Instant::now();
        let answered = prediction
            .outputs
            .into_iter()
            .map(|(name, value)| {
                let tensor = v2_tensor(value)?;
                let onnx_type = onnx_types
                    .iter()
                    .find(|(output, _)| *output == name)
                    .map(|(_, t)| t.clone());
                let binary = outputs.binary(&name);
                Ok(AnsweredOutput {
                    name,
                    tensor,
                    onnx_type,
                    binary,
                })
            })
            .collect::<Result<Vec<_>, Error>>()?;
        times.compute_output = converting.elapsed();
        Ok((answered, prediction.memory))
    }
    .await;
    times.total = called.elapsed();
    match &result {
        Ok(_) => service.versions().record_success(&key, &times),
        Err(_) => service.versions().record_failure(&key, times.total),
    }
    let (outputs, memory) = result?;
    Ok(InferAnswer {
        key,
        outputs,
        _memory: memory,
    })
}

/// An output as a V2 tensor: tensors as they are; sequences and maps as BYTES
/// holding the JSON text of each item (see [`super`]'s doc).
fn v2_tensor(value: OutputValue) -> Result<Tensor, Error> {
    let texts: Vec<String> = match value {
        OutputValue::Tensor(tensor) => return Ok(tensor),
        OutputValue::Sequence(items) => items
            .iter()
            .map(|item| super::json_text(&OutputJson(item)))
            .collect(),
        map @ OutputValue::Map(_) => vec![super::json_text(&OutputJson(&map))],
    };
    Ok(Tensor::new(vec![texts.len()], TensorData::Bytes(texts))?)
}
