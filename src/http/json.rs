//! Tensors to and from JSON: nested row-major arrays, with every element
//! checked against the input's element type (no silent wrapping or rounding).

use serde_json::Value;

use crate::engine::{ElementType, MapKey, OutputValue, Tensor, TensorData};
use crate::error::{Error, RequestError};

/// A JSON array flattened: its shape and its leaves in row-major order.
#[derive(Debug)]
pub struct JsonArray<'a> {
    pub shape: Vec<usize>,
    pub leaves: Vec<&'a Value>,
}

/// Flattens nested JSON arrays, checking that they are rectangular. A scalar
/// has shape `[]`.
pub fn flatten<'a>(input: &str, value: &'a Value) -> Result<JsonArray<'a>, Error> {
    let mut shape = Vec::new();
    let mut probe = value;
    while let Value::Array(items) = probe {
        shape.push(items.len());
        match items.first() {
            Some(first) => probe = first,
            None => break,
        }
    }
    let mut leaves = Vec::with_capacity(shape.iter().product());
    collect(input, value, &shape, 0, &mut leaves)?;
    Ok(JsonArray { shape, leaves })
}

fn collect<'a>(
    input: &str,
    value: &'a Value,
    shape: &[usize],
    depth: usize,
    out: &mut Vec<&'a Value>,
) -> Result<(), Error> {
    match (value, shape.get(depth)) {
        (Value::Array(items), Some(&len)) if items.len() == len => items
            .iter()
            .try_for_each(|item| collect(input, item, shape, depth + 1, out)),
        (Value::Array(items), Some(&len)) => Err(invalid(format!(
            "input {input:?} is ragged: an array at depth {depth} has {} elements where the first had {len}",
            items.len()
        ))),
        (Value::Array(_), None) => Err(invalid(format!(
            "input {input:?} is ragged: arrays nest deeper than {depth} levels in places"
        ))),
        (_, None) => {
            out.push(value);
            Ok(())
        }
        (_, Some(_)) => Err(invalid(format!(
            "input {input:?} is ragged: a scalar stands where an array was expected at depth {depth}"
        ))),
    }
}

pub(crate) fn invalid(message: String) -> Error {
    Error::Request(RequestError::InvalidInput(message))
}

/// What a valid element of `ty` looks like, for error messages.
fn expectation(ty: ElementType) -> &'static str {
    match ty {
        ElementType::Bool => "true or false",
        ElementType::Int8 => "an integer in -128..=127",
        ElementType::Int16 => "an integer in -32768..=32767",
        ElementType::Int32 => "an integer in -2147483648..=2147483647",
        ElementType::Int64 => "an integer in -9223372036854775808..=9223372036854775807",
        ElementType::Uint8 => "an integer in 0..=255",
        ElementType::Uint16 => "an integer in 0..=65535",
        ElementType::Uint32 => "an integer in 0..=4294967295",
        ElementType::Uint64 => "an integer in 0..=18446744073709551615",
        ElementType::Fp16 => "a number within ±65504",
        ElementType::Fp32 => "a number within ±3.4028235e38",
        ElementType::Fp64 => "a number",
        ElementType::Bytes => "a string",
    }
}

fn convert<T>(
    input: &str,
    ty: ElementType,
    leaves: &[&Value],
    f: impl Fn(&Value) -> Option<T>,
) -> Result<Vec<T>, Error> {
    leaves
        .iter()
        .enumerate()
        .map(|(i, v)| {
            f(v).ok_or_else(|| {
                invalid(format!(
                    "input {input:?} element {i}: {v} is not valid for {ty}; expected {}",
                    expectation(ty)
                ))
            })
        })
        .collect()
}

fn int<T: TryFrom<i64> + TryFrom<u64>>(v: &Value) -> Option<T> {
    match v {
        Value::Number(n) => n
            .as_i64()
            .and_then(|x| T::try_from(x).ok())
            .or_else(|| n.as_u64().and_then(|x| T::try_from(x).ok())),
        _ => None,
    }
}

/// A JSON number that rounds to a finite value of the target float type
/// (`narrow` converts with round-to-nearest). Bounding by the type's largest
/// value instead would refuse the shortest decimal form of that value
/// (`3.4028235e38` is a hair above `f32::MAX` as a double, yet is `f32::MAX`),
/// which is exactly what this server prints for it.
fn float<T>(v: &Value, narrow: impl Fn(f64) -> T, is_finite: impl Fn(&T) -> bool) -> Option<T> {
    v.as_f64().map(narrow).filter(is_finite)
}

/// Converts JSON leaves into a tensor of `ty`, refusing any element that does
/// not fit exactly (300 for uint8, 1e40 for float32, 1.5 for int64).
pub fn to_tensor(
    input: &str,
    shape: Vec<usize>,
    leaves: &[&Value],
    ty: ElementType,
) -> Result<Tensor, Error> {
    let data = match ty {
        ElementType::Bool => TensorData::Bool(convert(input, ty, leaves, Value::as_bool)?),
        ElementType::Int8 => TensorData::Int8(convert(input, ty, leaves, int)?),
        ElementType::Int16 => TensorData::Int16(convert(input, ty, leaves, int)?),
        ElementType::Int32 => TensorData::Int32(convert(input, ty, leaves, int)?),
        ElementType::Int64 => TensorData::Int64(convert(input, ty, leaves, int)?),
        ElementType::Uint8 => TensorData::Uint8(convert(input, ty, leaves, int)?),
        ElementType::Uint16 => TensorData::Uint16(convert(input, ty, leaves, int)?),
        ElementType::Uint32 => TensorData::Uint32(convert(input, ty, leaves, int)?),
        ElementType::Uint64 => TensorData::Uint64(convert(input, ty, leaves, int)?),
        ElementType::Fp16 => TensorData::Fp16(convert(input, ty, leaves, |v| {
            float(v, half::f16::from_f64, |x| x.is_finite())
        })?),
        ElementType::Fp32 => TensorData::Fp32(convert(input, ty, leaves, |v| {
            float(v, |x| x as f32, |x| x.is_finite())
        })?),
        ElementType::Fp64 => TensorData::Fp64(convert(input, ty, leaves, Value::as_f64)?),
        ElementType::Bytes => TensorData::Bytes(convert(input, ty, leaves, |v| {
            v.as_str().map(str::to_string)
        })?),
    };
    Ok(Tensor::new(shape, data)?)
}

/// A float as JSON: the shortest decimal that reads back as the same `f32`
/// (so 0.1f32 prints as 0.1, not 0.10000000149011612). NaN and infinities,
/// which JSON cannot hold, become null.
fn f32_json(x: f32) -> Value {
    if !x.is_finite() {
        return Value::Null;
    }
    format!("{x}")
        .parse::<f64>()
        .ok()
        .and_then(serde_json::Number::from_f64)
        .map_or(Value::Null, Value::Number)
}

fn f64_json(x: f64) -> Value {
    serde_json::Number::from_f64(x).map_or(Value::Null, Value::Number)
}

/// The elements of a tensor as flat JSON values, row-major.
pub fn flat_json(data: &TensorData) -> Vec<Value> {
    match data {
        TensorData::Bool(v) => v.iter().map(|x| Value::Bool(*x)).collect(),
        TensorData::Int8(v) => v.iter().map(|x| Value::from(*x)).collect(),
        TensorData::Int16(v) => v.iter().map(|x| Value::from(*x)).collect(),
        TensorData::Int32(v) => v.iter().map(|x| Value::from(*x)).collect(),
        TensorData::Int64(v) => v.iter().map(|x| Value::from(*x)).collect(),
        TensorData::Uint8(v) => v.iter().map(|x| Value::from(*x)).collect(),
        TensorData::Uint16(v) => v.iter().map(|x| Value::from(*x)).collect(),
        TensorData::Uint32(v) => v.iter().map(|x| Value::from(*x)).collect(),
        TensorData::Uint64(v) => v.iter().map(|x| Value::from(*x)).collect(),
        TensorData::Fp16(v) => v.iter().map(|x| f32_json(x.to_f32())).collect(),
        TensorData::Fp32(v) => v.iter().map(|x| f32_json(*x)).collect(),
        TensorData::Fp64(v) => v.iter().map(|x| f64_json(*x)).collect(),
        TensorData::Bytes(v) => v.iter().map(|x| Value::String(x.clone())).collect(),
    }
}

/// A tensor as nested JSON arrays (a scalar for shape `[]`).
pub fn tensor_json(tensor: &Tensor) -> Value {
    let flat = flat_json(tensor.data());
    nest(tensor.shape(), &mut flat.into_iter())
}

fn nest(shape: &[usize], flat: &mut impl Iterator<Item = Value>) -> Value {
    match shape.split_first() {
        None => flat.next().unwrap_or(Value::Null),
        Some((&len, rest)) => Value::Array((0..len).map(|_| nest(rest, flat)).collect()),
    }
}

/// An output as JSON: tensors nested; sequences as arrays; maps as objects keyed
/// by the map key (so a ZipMap's probabilities read `{"0": 0.9, "1": 0.1}`).
pub fn output_json(value: &OutputValue) -> Value {
    match value {
        OutputValue::Tensor(tensor) => tensor_json(tensor),
        OutputValue::Sequence(items) => Value::Array(items.iter().map(output_json).collect()),
        OutputValue::Map(entries) => Value::Object(
            entries
                .iter()
                .map(|(key, value)| {
                    let key = match key {
                        MapKey::Int(i) => i.to_string(),
                        MapKey::String(s) => s.clone(),
                    };
                    (key, tensor_json(value))
                })
                .collect(),
        ),
    }
}

/// Builds the tensor for model input `name` from JSON leaves, in the element
/// type the model declares. `declared` is the type the client named (Open
/// Inference Protocol `datatype`), which must match.
pub fn input_tensor(
    signature: &crate::engine::Signature,
    name: &str,
    shape: Vec<usize>,
    leaves: &[&Value],
    declared: Option<ElementType>,
) -> Result<(String, Tensor), Error> {
    let element_type = input_type(signature, name, declared)?;
    Ok((
        name.to_string(),
        to_tensor(name, shape, leaves, element_type)?,
    ))
}

/// The element type the model declares for input `name`: an error naming the
/// model's inputs when it has no such input, and naming both types when the
/// client `declared` another.
pub fn input_type(
    signature: &crate::engine::Signature,
    name: &str,
    declared: Option<ElementType>,
) -> Result<ElementType, Error> {
    let Some(info) = signature.inputs.iter().find(|i| i.name == name) else {
        let names: Vec<_> = signature.inputs.iter().map(describe).collect();
        return Err(invalid(format!(
            "the model has no input {name:?}; its inputs are: {}",
            names.join(", ")
        )));
    };
    let crate::engine::ValueKind::Tensor { element_type, .. } = &info.kind else {
        return Err(invalid(format!(
            "input {name:?} is {}, which a JSON request cannot express",
            describe(info)
        )));
    };
    if let Some(declared) = declared
        && declared != *element_type
    {
        return Err(invalid(format!(
            "input {name:?} has datatype {}, but the model expects {} ({})",
            declared.v2_name(),
            element_type.v2_name(),
            element_type
        )));
    }
    Ok(*element_type)
}

/// `name: float32[batch, 4]`, for messages that say what was expected.
pub fn describe(info: &crate::engine::ValueInfo) -> String {
    use crate::engine::ValueKind;
    match &info.kind {
        ValueKind::Tensor {
            element_type,
            shape,
        } => {
            format!(
                "{}: {}{}",
                info.name,
                element_type,
                crate::engine::shape_string(shape)
            )
        }
        ValueKind::Other { description } => format!("{}: {}", info.name, description),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn tensor(value: Value, ty: ElementType) -> Result<Tensor, Error> {
        let array = flatten("x", &value)?;
        to_tensor("x", array.shape, &array.leaves, ty)
    }

    #[test]
    fn flattens_nested_arrays_row_major() {
        let t = tensor(json!([[1, 2, 3], [4, 5, 6]]), ElementType::Int64).unwrap();
        assert_eq!(t.shape(), [2, 3]);
        assert_eq!(t.data(), &TensorData::Int64(vec![1, 2, 3, 4, 5, 6]));
        assert_eq!(tensor_json(&t), json!([[1, 2, 3], [4, 5, 6]]));
        let scalar = tensor(json!(2.5), ElementType::Fp64).unwrap();
        assert_eq!(scalar.shape(), [] as [usize; 0]);
        assert_eq!(tensor_json(&scalar), json!(2.5));
    }

    #[test]
    fn refuses_ragged_arrays() {
        for ragged in [json!([[1, 2], [3]]), json!([[1, 2], 3]), json!([1, [2]])] {
            let err = tensor(ragged.clone(), ElementType::Int64).unwrap_err();
            assert_eq!(err.code(), "invalid_input", "{ragged}");
            assert!(err.to_string().contains("ragged"), "{err}");
        }
    }

    #[test]
    fn refuses_out_of_range_and_fractional_values() {
        let cases = [
            (json!([300]), ElementType::Uint8),
            (json!([-1]), ElementType::Uint32),
            (json!([128]), ElementType::Int8),
            (json!([1.5]), ElementType::Int64),
            (json!([1e40]), ElementType::Fp32),
            (json!([70000.0]), ElementType::Fp16),
            (json!(["a"]), ElementType::Fp32),
            (json!([1]), ElementType::Bool),
            (json!([1]), ElementType::Bytes),
        ];
        for (value, ty) in cases {
            let err = tensor(value.clone(), ty).unwrap_err();
            assert_eq!(err.code(), "invalid_input");
            let message = err.to_string();
            assert!(
                message.contains("\"x\"") && message.contains(expectation(ty)),
                "{message}"
            );
        }
    }

    #[test]
    fn accepts_the_extremes_of_each_type() {
        assert!(tensor(json!([255, 0]), ElementType::Uint8).is_ok());
        assert!(tensor(json!([u64::MAX]), ElementType::Uint64).is_ok());
        assert!(tensor(json!([i64::MIN]), ElementType::Int64).is_ok());
        assert!(tensor(json!([3.4e38]), ElementType::Fp32).is_ok());
        assert!(tensor(json!([65504.0]), ElementType::Fp16).is_ok());
        assert!(tensor(json!([true, false]), ElementType::Bool).is_ok());
        assert!(tensor(json!(["héllo"]), ElementType::Bytes).is_ok());
    }

    #[test]
    fn floats_that_round_to_the_largest_finite_value_are_that_value() {
        // 3.4028235e38 (how f32::MAX prints) is above f32::MAX as a double.
        let t = tensor(json!([3.4028235e38, -3.4028235e38]), ElementType::Fp32).unwrap();
        assert_eq!(t.data(), &TensorData::Fp32(vec![f32::MAX, f32::MIN]));
        let t = tensor(json!([65519.0]), ElementType::Fp16).unwrap();
        assert_eq!(t.data(), &TensorData::Fp16(vec![half::f16::MAX]));
        // Past the rounding boundary, the value would be infinite: refused.
        assert!(tensor(json!([3.4028236e38]), ElementType::Fp32).is_err());
        assert!(tensor(json!([65520.0]), ElementType::Fp16).is_err());
    }

    #[test]
    fn floats_print_as_their_shortest_f32_form() {
        let t = Tensor::new(vec![3], TensorData::Fp32(vec![0.1, f32::NAN, 1.0])).unwrap();
        assert_eq!(tensor_json(&t), json!([0.1, null, 1.0]));
    }

    #[test]
    fn maps_and_sequences_render_as_objects_and_arrays() {
        let p = |x: f32| Tensor::new(vec![], TensorData::Fp32(vec![x])).unwrap();
        let zipmap = OutputValue::Sequence(vec![OutputValue::Map(vec![
            (MapKey::Int(0), p(0.25)),
            (MapKey::Int(1), p(0.75)),
        ])]);
        assert_eq!(output_json(&zipmap), json!([{"0": 0.25, "1": 0.75}]));
    }
}
