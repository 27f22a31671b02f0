//! Tensors to and from JSON: nested row-major arrays, with every element
//! checked against the input's element type (no silent wrapping or rounding).

use serde::ser::{Serialize, SerializeMap, SerializeSeq, Serializer};
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

/// A tensor written as nested JSON arrays (a scalar for shape `[]`) straight
/// from its elements, with no JSON tree in between: the response costs its
/// text, not the ~20x of a `serde_json::Value` per element. Floats are the
/// shortest decimal that reads back as the same value of their own type (so
/// 0.1f32 prints as 0.1, not 0.10000000149011612); NaN and infinities, which
/// JSON cannot hold, become null.
pub struct TensorJson<'a>(pub &'a Tensor);

impl Serialize for TensorJson<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        Nested {
            shape: self.0.shape(),
            data: self.0.data(),
            offset: 0,
        }
        .serialize(serializer)
    }
}

/// The elements of `shape` starting at `offset` in `data`, row-major.
struct Nested<'a> {
    shape: &'a [usize],
    data: &'a TensorData,
    offset: usize,
}

impl Serialize for Nested<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let Some((&len, rest)) = self.shape.split_first() else {
            return element(self.data, self.offset, serializer);
        };
        let stride: usize = rest.iter().product();
        let mut seq = serializer.serialize_seq(Some(len))?;
        for i in 0..len {
            seq.serialize_element(&Nested {
                shape: rest,
                data: self.data,
                offset: self.offset + i * stride,
            })?;
        }
        seq.end()
    }
}

/// A tensor's elements as one flat JSON array, row-major (the V2 `data` form).
pub struct FlatJson<'a>(pub &'a TensorData);

impl Serialize for FlatJson<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut seq = serializer.serialize_seq(Some(self.0.len()))?;
        for i in 0..self.0.len() {
            seq.serialize_element(&Element(self.0, i))?;
        }
        seq.end()
    }
}

struct Element<'a>(&'a TensorData, usize);

impl Serialize for Element<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        element(self.0, self.1, serializer)
    }
}

/// Element `i` of `data`; an index past the end (impossible for a checked
/// [`Tensor`]) is null.
fn element<S: Serializer>(data: &TensorData, i: usize, serializer: S) -> Result<S::Ok, S::Error> {
    macro_rules! write {
        ($v:expr, $method:ident, $convert:expr) => {
            match $v.get(i) {
                Some(x) => serializer.$method($convert(x)),
                None => serializer.serialize_unit(),
            }
        };
    }
    match data {
        TensorData::Bool(v) => write!(v, serialize_bool, |x: &bool| *x),
        TensorData::Int8(v) => write!(v, serialize_i8, |x: &i8| *x),
        TensorData::Int16(v) => write!(v, serialize_i16, |x: &i16| *x),
        TensorData::Int32(v) => write!(v, serialize_i32, |x: &i32| *x),
        TensorData::Int64(v) => write!(v, serialize_i64, |x: &i64| *x),
        TensorData::Uint8(v) => write!(v, serialize_u8, |x: &u8| *x),
        TensorData::Uint16(v) => write!(v, serialize_u16, |x: &u16| *x),
        TensorData::Uint32(v) => write!(v, serialize_u32, |x: &u32| *x),
        TensorData::Uint64(v) => write!(v, serialize_u64, |x: &u64| *x),
        // serde_json writes non-finite floats as null.
        TensorData::Fp16(v) => write!(v, serialize_f32, |x: &half::f16| x.to_f32()),
        TensorData::Fp32(v) => write!(v, serialize_f32, |x: &f32| *x),
        TensorData::Fp64(v) => write!(v, serialize_f64, |x: &f64| *x),
        TensorData::Bytes(v) => write!(v, serialize_str, String::as_str),
    }
}

/// An output as JSON, written straight from it: tensors nested; sequences as
/// arrays; maps as objects keyed by the map key (so a ZipMap's probabilities
/// read `{"0": 0.9, "1": 0.1}`).
pub struct OutputJson<'a>(pub &'a OutputValue);

impl Serialize for OutputJson<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self.0 {
            OutputValue::Tensor(tensor) => TensorJson(tensor).serialize(serializer),
            OutputValue::Sequence(items) => {
                let mut seq = serializer.serialize_seq(Some(items.len()))?;
                for item in items {
                    seq.serialize_element(&OutputJson(item))?;
                }
                seq.end()
            }
            OutputValue::Map(entries) => {
                let mut map = serializer.serialize_map(Some(entries.len()))?;
                for (key, value) in entries {
                    match key {
                        MapKey::Int(i) => {
                            map.serialize_entry(&i.to_string(), &TensorJson(value))?
                        }
                        MapKey::String(s) => map.serialize_entry(s, &TensorJson(value))?,
                    }
                }
                map.end()
            }
        }
    }
}

/// `(name, output)` pairs as one JSON object, in order.
pub struct OutputsJson<'a>(pub &'a [(String, OutputValue)]);

impl Serialize for OutputsJson<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(Some(self.0.len()))?;
        for (name, value) in self.0 {
            map.serialize_entry(name, &OutputJson(value))?;
        }
        map.end()
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

    /// The JSON a client reads: the text written, parsed.
    fn tensor_json(tensor: &Tensor) -> Value {
        serde_json::from_str(&serde_json::to_string(&TensorJson(tensor)).unwrap()).unwrap()
    }

    fn output_json(value: &OutputValue) -> Value {
        serde_json::from_str(&serde_json::to_string(&OutputJson(value)).unwrap()).unwrap()
    }

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
        let text = serde_json::to_string(&TensorJson(&t)).unwrap();
        assert_eq!(text, "[0.1,null,1.0]");
        let t = Tensor::new(
            vec![2, 2],
            TensorData::Fp32(vec![f32::MAX, 1e-38, -2.5, 3.0]),
        )
        .unwrap();
        assert_eq!(
            serde_json::to_string(&TensorJson(&t)).unwrap(),
            "[[3.4028235e+38,1e-38],[-2.5,3.0]]"
        );
        assert_eq!(
            serde_json::to_string(&FlatJson(t.data())).unwrap(),
            "[3.4028235e+38,1e-38,-2.5,3.0]"
        );
    }

    #[test]
    fn a_response_costs_its_text_not_a_json_tree() {
        // 4 Mi floats (16 MiB) written as text: the writer allocates about
        // the text, and never the ~32 bytes per element a Value tree takes.
        let n = 4 << 20;
        let t = Tensor::new(vec![n / 1024, 1024], TensorData::Fp32(vec![0.123_456_7; n])).unwrap();
        let meter = crate::engine::ThreadMeter::start();
        let text = serde_json::to_vec(&TensorJson(&t)).unwrap();
        let written = text.len() as u64;
        // Vec doubling: at most twice the final text allocated and kept.
        let kept = meter.kept_bytes();
        assert!(
            kept <= 2 * written,
            "kept {kept} for {written} bytes of text"
        );
        assert!(written < 12 * n as u64, "{written}");
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
