//! Tensors as JSON: outputs written straight from their elements as nested
//! row-major arrays (requests are read by [`super::parse`]), and the checks
//! and descriptions of model inputs that messages share.

use serde::ser::{Serialize, SerializeMap, SerializeSeq, Serializer};

use super::parse::Shown;
use crate::engine::{ElementType, MapKey, OutputValue, Tensor, TensorData};
use crate::error::{Error, RequestError};

pub(crate) fn invalid(message: String) -> Error {
    Error::Request(RequestError::InvalidInput(message))
}

/// What a valid element of `ty` looks like, for error messages.
pub(crate) fn expectation(ty: ElementType) -> &'static str {
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
            "the model has no input {:?}; its inputs are: {}",
            Shown(name),
            names.join(", ")
        )));
    };
    let crate::engine::ValueKind::Tensor { element_type, .. } = &info.kind else {
        return Err(invalid(format!(
            "input {:?} is {}, which a JSON request cannot express",
            Shown(name),
            describe(info)
        )));
    };
    if let Some(declared) = declared
        && declared != *element_type
    {
        return Err(invalid(format!(
            "input {:?} has datatype {}, but the model expects {} ({})",
            Shown(name),
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
    use serde_json::{Value, json};

    /// The JSON a client reads: the text written, parsed.
    fn tensor_json(tensor: &Tensor) -> Value {
        serde_json::from_str(&serde_json::to_string(&TensorJson(tensor)).unwrap()).unwrap()
    }

    fn output_json(value: &OutputValue) -> Value {
        serde_json::from_str(&serde_json::to_string(&OutputJson(value)).unwrap()).unwrap()
    }

    #[test]
    fn nested_arrays_are_written_row_major() {
        let t = Tensor::new(vec![2, 3], TensorData::Int64(vec![1, 2, 3, 4, 5, 6])).unwrap();
        assert_eq!(tensor_json(&t), json!([[1, 2, 3], [4, 5, 6]]));
        let scalar = Tensor::new(vec![], TensorData::Fp64(vec![2.5])).unwrap();
        assert_eq!(tensor_json(&scalar), json!(2.5));
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
