//! The simple predict format, `POST /models/{name}/{version}/predict`: the
//! single-model handler's `{"features": [...]}` request and `prediction` field,
//! plus batches and named inputs.

use bytes::Bytes;
use http::{Response, StatusCode};
use serde::Serialize;
use serde_json::value::RawValue;

use super::RequestRecord;
use super::json::{OutputJson, OutputsJson, describe, input_type, invalid};
use super::parse::{self, Kind, Scanned, Shown};
use crate::engine::{Signature, Tensor};
use crate::error::Error;
use crate::service::ModelService;

/// The parsed body, before the model is known: slices of its text, checked
/// for shape (see [`super::parse`]).
#[derive(Debug)]
pub(crate) enum Body<'a> {
    /// `{"features": [...]}`: one row, or `[[...], ...]`: a batch, for the
    /// model's only input; its shape has the batch dimension.
    Features(&'a RawValue, Scanned),
    /// `{"inputs": {"name": nested array, ...}}`: an object whose every
    /// entry is rectangular (read again, entry by entry, once the model is known).
    Inputs(&'a RawValue),
}

const EXPECTED: &str = r#"expected {"features": [...]} or {"inputs": {"<input name>": [...]}}"#;

/// Reads a body that [`parse::validate`] accepted, allocating no more than
/// [`parse::bound_before_model`] of its census.
pub(crate) fn parse(body: &[u8]) -> Result<Body<'_>, Error> {
    if Kind::of_text(body) != Kind::Object {
        return Err(invalid(format!(
            "the body is not a JSON object; {EXPECTED}"
        )));
    }
    // A key given twice: the last one counts, as a JSON object read into a map.
    let (mut features, mut inputs) = (None, None);
    parse::entries(body, |key, value| {
        match key.as_ref() {
            "features" => features = Some(value),
            "inputs" => inputs = Some(value),
            _ => {}
        }
        Ok(())
    })?;
    match (features, inputs) {
        (Some(features), None) => {
            let mut scanned = parse::scan("features", features)?;
            match scanned.shape.len() {
                0 => {
                    return Err(invalid(format!(
                        "\"features\" must be an array; {EXPECTED}"
                    )));
                }
                // One row: the original handler's form, which added the batch dimension.
                1 => scanned.shape.insert(0, 1),
                _ => {}
            }
            Ok(Body::Features(features, scanned))
        }
        (None, Some(inputs)) if Kind::of(inputs) == Kind::Object => {
            parse::entries(inputs.get().as_bytes(), |name, value| {
                parse::scan(&name, value).map(drop)
            })?;
            Ok(Body::Inputs(inputs))
        }
        (None, Some(_)) => Err(invalid(format!("\"inputs\" must be an object; {EXPECTED}"))),
        (Some(_), Some(_)) => Err(invalid(format!(
            "give \"features\" or \"inputs\", not both; {EXPECTED}"
        ))),
        (None, None) => Err(invalid(format!(
            "the body has neither \"features\" nor \"inputs\"; {EXPECTED}"
        ))),
    }
}

/// The inputs a body gives the model of `signature`, checked against it
/// (names and element types) but not yet read: [`Plan::tensors`] reads them,
/// allocating [`Plan::bytes`] at most.
pub(crate) struct Plan<'a> {
    /// One per model input named, in the body's order (a name given twice:
    /// the last one, in the first one's place).
    entries: Vec<Planned<'a>>,
    bytes: u64,
}

struct Planned<'a> {
    name: &'a str,
    raw: &'a RawValue,
    scanned: Scanned,
    ty: crate::engine::ElementType,
}

impl<'a> Plan<'a> {
    /// What the body's inputs will be for the model of `signature` (its
    /// names are borrowed from the signature), or why they cannot be.
    pub(crate) fn new(body: Body<'a>, signature: &'a Signature) -> Result<Plan<'a>, Error> {
        let mut entries = Vec::with_capacity(signature.inputs.len());
        match body {
            Body::Features(raw, scanned) => {
                let [only] = signature.inputs.as_slice() else {
                    let names: Vec<_> = signature.inputs.iter().map(describe).collect();
                    return Err(invalid(format!(
                        "\"features\" fills a model's only input, but this model has {} inputs ({}); send {{\"inputs\": {{...}}}} naming each",
                        names.len(),
                        names.join(", ")
                    )));
                };
                let ty = input_type(signature, &only.name, None)?;
                entries.push(Planned {
                    name: &only.name,
                    raw,
                    scanned,
                    ty,
                });
            }
            Body::Inputs(inputs) => {
                parse::entries(inputs.get().as_bytes(), |name, raw| {
                    let ty = input_type(signature, &name, None)?;
                    // input_type found it; the name is borrowed from the signature.
                    let Some(info) = signature.inputs.iter().find(|i| i.name == name) else {
                        return Err(invalid(format!(
                            "the model has no input {:?}",
                            Shown(&name)
                        )));
                    };
                    let planned = Planned {
                        name: &info.name,
                        raw,
                        scanned: parse::scan(&name, raw)?,
                        ty,
                    };
                    match entries.iter_mut().find(|p| p.name == planned.name) {
                        Some(earlier) => *earlier = planned,
                        None => entries.push(planned),
                    }
                    Ok(())
                })?;
            }
        }
        // The plan itself (bounded by the model's inputs, not by the body) is
        // counted too: it lives until the tensors are made.
        let plan =
            parse::allocation_bound((entries.capacity() * std::mem::size_of::<Planned>()) as u64)
                + entries
                    .iter()
                    .map(|p| parse::allocation_bound(8 * p.scanned.shape.capacity() as u64))
                    .sum::<u64>();
        let bytes = plan + tensors_bound(entries.iter().map(|p| (p.name, p.ty, &p.scanned)));
        Ok(Plan { entries, bytes })
    }

    /// The most [`Plan::tensors`] allocates.
    pub(crate) fn bytes(&self) -> u64 {
        self.bytes
    }

    /// Reads every planned input into its tensor.
    pub(crate) fn tensors(self) -> Result<Vec<(String, Tensor)>, Error> {
        let mut tensors = Vec::with_capacity(self.entries.len());
        for planned in self.entries {
            let data = parse::fill(planned.name, planned.raw, planned.scanned.count, planned.ty)?;
            tensors.push((
                planned.name.to_string(),
                Tensor::new(planned.scanned.shape, data)?,
            ));
        }
        Ok(tensors)
    }
}

/// What reading inputs `(name, type, scanned)` into `(String, Tensor)` pairs
/// allocates: each tensor's buffer ([`parse::tensor_bound`]), its name, and
/// the list of pairs.
pub(crate) fn tensors_bound<'s>(
    inputs: impl ExactSizeIterator<Item = (&'s str, crate::engine::ElementType, &'s Scanned)>,
) -> u64 {
    let list =
        parse::allocation_bound((inputs.len() * std::mem::size_of::<(String, Tensor)>()) as u64);
    list + inputs
        .map(|(name, ty, scanned)| {
            parse::tensor_bound(ty, scanned) + parse::allocation_bound(name.len() as u64)
        })
        .sum::<u64>()
}

pub(super) async fn predict(
    service: &ModelService,
    name: &str,
    version: &str,
    body: &[u8],
    record: &mut RequestRecord,
) -> Result<Response<Bytes>, Error> {
    // Everything checkable without the model is checked before it is loaded.
    parse::validate(body)?;
    let parsed = parse(body)?;
    let (lease, load) = service.model(name, version).await?;
    record.loaded(&lease, load);
    let signature = lease.value().loaded.signature();
    let plan = Plan::new(parsed, signature)?;
    // The typed inputs are reserved before they are read; the prediction
    // counts them in what the request holds.
    if let Some(memory) = &record.memory {
        memory.grow_waiting(memory.bytes() + plan.bytes()).await?;
    }
    let inputs = plan.tensors()?;
    let prediction = service
        .predict(lease, load, inputs, None, record.memory.take())
        .await?;
    record.predicted(&prediction);
    let response = PredictResponse {
        model: prediction.key.name().as_str(),
        model_version: prediction.key.version(),
        outputs: OutputsJson(&prediction.outputs),
        prediction: prediction
            .outputs
            .first()
            .map(|(_, value)| OutputJson(value)),
    };
    Ok(super::json_response(StatusCode::OK, &response))
}

/// The simple response, written straight from the output tensors (no JSON
/// tree); `prediction` repeats the first output (null when there is none).
#[derive(Serialize)]
struct PredictResponse<'a> {
    model: &'a str,
    model_version: &'a str,
    outputs: OutputsJson<'a>,
    prediction: Option<OutputJson<'a>>,
}
