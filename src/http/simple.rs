//! The simple predict format, `POST /models/{name}/{version}/predict`: the
//! single-model handler's `{"features": [...]}` request and `prediction` field,
//! plus batches and named inputs.

use bytes::Bytes;
use http::{Response, StatusCode};
use serde::Serialize;
use serde_json::Value;

use super::RequestRecord;
use super::json::{JsonArray, OutputJson, OutputsJson, describe, flatten, input_tensor, invalid};
use crate::error::{Error, RequestError};
use crate::service::ModelService;

/// The parsed body, before the model is known.
enum Body<'a> {
    /// `{"features": [...]}`: one row, or `[[...], ...]`: a batch, for the model's only input.
    Features(JsonArray<'a>),
    /// `{"inputs": {"name": nested array, ...}}`.
    Inputs(Vec<(&'a str, JsonArray<'a>)>),
}

fn parse(body: &Value) -> Result<Body<'_>, Error> {
    let expected = r#"expected {"features": [...]} or {"inputs": {"<input name>": [...]}}"#;
    let Some(object) = body.as_object() else {
        return Err(invalid(format!(
            "the body is not a JSON object; {expected}"
        )));
    };
    match (object.get("features"), object.get("inputs")) {
        (Some(features), None) => {
            let mut array = flatten("features", features)?;
            match array.shape.len() {
                0 => {
                    return Err(invalid(format!(
                        "\"features\" must be an array; {expected}"
                    )));
                }
                // One row: the original handler's form, which added the batch dimension.
                1 => array.shape.insert(0, 1),
                _ => {}
            }
            Ok(Body::Features(array))
        }
        (None, Some(Value::Object(inputs))) => {
            let parsed = inputs
                .iter()
                .map(|(name, value)| Ok((name.as_str(), flatten(name, value)?)))
                .collect::<Result<_, Error>>()?;
            Ok(Body::Inputs(parsed))
        }
        (None, Some(_)) => Err(invalid(format!("\"inputs\" must be an object; {expected}"))),
        (Some(_), Some(_)) => Err(invalid(format!(
            "give \"features\" or \"inputs\", not both; {expected}"
        ))),
        (None, None) => Err(invalid(format!(
            "the body has neither \"features\" nor \"inputs\"; {expected}"
        ))),
    }
}

pub(super) async fn predict(
    service: &ModelService,
    name: &str,
    version: &str,
    body: &[u8],
    record: &mut RequestRecord,
) -> Result<Response<Bytes>, Error> {
    // Everything checkable without the model is checked before it is loaded.
    let body: Value =
        serde_json::from_slice(body).map_err(|e| RequestError::InvalidJson(e.to_string()))?;
    let parsed = parse(&body)?;
    let (lease, load) = service.model(name, version).await?;
    record.loaded(&lease, load);
    let signature = lease.value().loaded.signature();
    let inputs = match parsed {
        Body::Features(array) => {
            let [only] = signature.inputs.as_slice() else {
                let names: Vec<_> = signature.inputs.iter().map(describe).collect();
                return Err(invalid(format!(
                    "\"features\" fills a model's only input, but this model has {} inputs ({}); send {{\"inputs\": {{...}}}} naming each",
                    names.len(),
                    names.join(", ")
                )));
            };
            vec![input_tensor(
                signature,
                &only.name,
                array.shape,
                &array.leaves,
                None,
            )?]
        }
        Body::Inputs(inputs) => inputs
            .into_iter()
            .map(|(name, array)| input_tensor(signature, name, array.shape, &array.leaves, None))
            .collect::<Result<_, _>>()?,
    };
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
