//! Conversions between the router's plain tensors and `ort` values, and a
//! session's inputs and outputs read into a [`Signature`].

use std::hash::Hash;

use ort::session::Session;
use ort::value::{
    DynValue, DynValueTypeMarker, IntoTensorElementType, Outlet, PrimitiveTensorElementType,
    SequenceValueType, Shape, Tensor as OrtTensor, TensorElementType, Value, ValueType,
};

use super::{
    Admit, Dim, ElementType, EngineError, MapKey, OutputExtent, OutputValue, Signature, Tensor,
    TensorData, ValueInfo, ValueKind,
};

/// The signature of a freshly created session.
pub(super) fn signature(session: &Session) -> Signature {
    Signature {
        inputs: session.inputs().iter().map(value_info).collect(),
        outputs: session.outputs().iter().map(value_info).collect(),
    }
}

fn value_info(outlet: &Outlet) -> ValueInfo {
    let dtype = outlet.dtype();
    let kind = match dtype {
        ValueType::Tensor {
            ty,
            shape,
            dimension_symbols,
        } => match element_type(*ty) {
            Some(element_type) => ValueKind::Tensor {
                element_type,
                shape: shape
                    .iter()
                    .enumerate()
                    .map(|(axis, &dim)| match usize::try_from(dim) {
                        Ok(fixed) => Dim::Fixed(fixed),
                        // ONNX Runtime reports dynamic dimensions as -1, with the
                        // model's symbol (`N`, `batch`) when it has one.
                        Err(_) => Dim::Dynamic(
                            dimension_symbols
                                .get(axis)
                                .filter(|s| !s.is_empty())
                                .cloned(),
                        ),
                    })
                    .collect(),
            },
            None => ValueKind::Other {
                description: onnx_type(dtype),
            },
        },
        _ => ValueKind::Other {
            description: onnx_type(dtype),
        },
    };
    ValueInfo {
        name: outlet.name().to_owned(),
        kind,
    }
}

/// The router's element type for an ONNX Runtime one; `None` for types the
/// router does not carry (bfloat16, float8, int4, complex...).
fn element_type(ty: TensorElementType) -> Option<ElementType> {
    Some(match ty {
        TensorElementType::Bool => ElementType::Bool,
        TensorElementType::Int8 => ElementType::Int8,
        TensorElementType::Int16 => ElementType::Int16,
        TensorElementType::Int32 => ElementType::Int32,
        TensorElementType::Int64 => ElementType::Int64,
        TensorElementType::Uint8 => ElementType::Uint8,
        TensorElementType::Uint16 => ElementType::Uint16,
        TensorElementType::Uint32 => ElementType::Uint32,
        TensorElementType::Uint64 => ElementType::Uint64,
        TensorElementType::Float16 => ElementType::Fp16,
        TensorElementType::Float32 => ElementType::Fp32,
        TensorElementType::Float64 => ElementType::Fp64,
        TensorElementType::String => ElementType::Bytes,
        _ => return None,
    })
}

/// A value type as ONNX writes it: `tensor(float)`, `seq(map(int64,tensor(float)))`.
fn onnx_type(dtype: &ValueType) -> String {
    match dtype {
        ValueType::Tensor { ty, .. } => format!("tensor({})", onnx_element_name(*ty)),
        ValueType::Sequence(inner) => format!("seq({})", onnx_type(inner)),
        ValueType::Map { key, value } => {
            format!(
                "map({},tensor({}))",
                onnx_element_name(*key),
                onnx_element_name(*value)
            )
        }
        ValueType::Optional(inner) => format!("optional({})", onnx_type(inner)),
    }
}

fn onnx_element_name(ty: TensorElementType) -> &'static str {
    match ty {
        TensorElementType::Float32 => "float",
        TensorElementType::Uint8 => "uint8",
        TensorElementType::Int8 => "int8",
        TensorElementType::Uint16 => "uint16",
        TensorElementType::Int16 => "int16",
        TensorElementType::Int32 => "int32",
        TensorElementType::Int64 => "int64",
        TensorElementType::String => "string",
        TensorElementType::Bool => "bool",
        TensorElementType::Float16 => "float16",
        TensorElementType::Float64 => "double",
        TensorElementType::Uint32 => "uint32",
        TensorElementType::Uint64 => "uint64",
        TensorElementType::Bfloat16 => "bfloat16",
        TensorElementType::Complex64 => "complex64",
        TensorElementType::Complex128 => "complex128",
        TensorElementType::Float8E4M3FN => "float8e4m3fn",
        TensorElementType::Float8E4M3FNUZ => "float8e4m3fnuz",
        TensorElementType::Float8E5M2 => "float8e5m2",
        TensorElementType::Float8E5M2FNUZ => "float8e5m2fnuz",
        TensorElementType::Uint4 => "uint4",
        TensorElementType::Int4 => "int4",
        TensorElementType::Float4E2M1 => "float4e2m1",
        TensorElementType::Uint2 => "uint2",
        TensorElementType::Int2 => "int2",
        TensorElementType::Float8E8M0 => "float8e8m0",
        _ => "undefined",
    }
}

/// Moves a checked input tensor into an ort value (numeric data is handed
/// over, not copied; strings are copied, as ONNX Runtime stores its own).
pub(super) fn input_value(name: &str, tensor: Tensor) -> Result<DynValue, EngineError> {
    let (shape, data) = tensor.into_parts();
    let value = match data {
        TensorData::Bool(v) => OrtTensor::from_array((shape, v)).map(Value::into_dyn),
        TensorData::Int8(v) => OrtTensor::from_array((shape, v)).map(Value::into_dyn),
        TensorData::Int16(v) => OrtTensor::from_array((shape, v)).map(Value::into_dyn),
        TensorData::Int32(v) => OrtTensor::from_array((shape, v)).map(Value::into_dyn),
        TensorData::Int64(v) => OrtTensor::from_array((shape, v)).map(Value::into_dyn),
        TensorData::Uint8(v) => OrtTensor::from_array((shape, v)).map(Value::into_dyn),
        TensorData::Uint16(v) => OrtTensor::from_array((shape, v)).map(Value::into_dyn),
        TensorData::Uint32(v) => OrtTensor::from_array((shape, v)).map(Value::into_dyn),
        TensorData::Uint64(v) => OrtTensor::from_array((shape, v)).map(Value::into_dyn),
        TensorData::Fp16(v) => OrtTensor::from_array((shape, v)).map(Value::into_dyn),
        TensorData::Fp32(v) => OrtTensor::from_array((shape, v)).map(Value::into_dyn),
        TensorData::Fp64(v) => OrtTensor::from_array((shape, v)).map(Value::into_dyn),
        TensorData::Bytes(v) => {
            // ONNX Runtime takes C strings: an embedded NUL would cut the element short.
            if let Some(index) = v.iter().position(|s| s.contains('\0')) {
                return Err(EngineError::InvalidInput(format!(
                    "input '{name}' element {index} contains a NUL character, which ONNX Runtime string tensors cannot hold"
                )));
            }
            OrtTensor::from_string_array((shape, v.as_slice())).map(Value::into_dyn)
        }
    };
    value.map_err(|e| {
        EngineError::Inference(format!("cannot hand input '{name}' to ONNX Runtime: {e}"))
    })
}

/// A tensor output's extent, read from its type (nothing is copied); `None`
/// for other values and unknown element types.
pub(super) fn tensor_extent(value: &DynValue) -> Option<OutputExtent> {
    let ValueType::Tensor { ty, shape, .. } = value.dtype() else {
        return None;
    };
    let count = shape
        .iter()
        .try_fold(1usize, |n, &d| n.checked_mul(usize::try_from(d).ok()?))?;
    Some(OutputExtent::Tensor {
        element_type: element_type(*ty)?,
        count,
    })
}

/// Copies one output (of any nesting the router models) out of ONNX Runtime.
/// Tensors were admitted before (their size is in their type); a sequence's
/// length and each item, and a map, are admitted here before they are copied.
pub(super) fn output_value(
    name: &str,
    value: DynValue,
    admit: &Admit<'_>,
) -> Result<OutputValue, EngineError> {
    let refused = |reason: String| EngineError::OutOfMemory(reason);
    match value.dtype().clone() {
        ValueType::Tensor { ty, .. } => output_tensor(name, &value, ty).map(OutputValue::Tensor),
        ValueType::Sequence(_) => {
            let dtype = value.dtype().clone();
            let sequence = value
                .downcast::<SequenceValueType<DynValueTypeMarker>>()
                .map_err(|e| extract_error(name, &dtype, e))?;
            let len = sequence.len();
            admit(&[OutputExtent::Sequence { items: len }]).map_err(refused)?;
            let mut items = Vec::with_capacity(len);
            for i in 0..len {
                // One item out of ONNX Runtime at a time (its own copy of it),
                // admitted before it is converted.
                let item = sequence.get(i).ok_or_else(|| {
                    EngineError::Inference(format!(
                        "cannot read item {i} of output '{name}' ({})",
                        onnx_type(&dtype)
                    ))
                })?;
                if let Some(extent) = tensor_extent(&item) {
                    admit(&[extent]).map_err(refused)?;
                }
                items.push(output_value(name, item, admit)?);
            }
            Ok(OutputValue::Sequence(items))
        }
        ValueType::Map {
            key: TensorElementType::Int64,
            value: values,
        } => output_map(name, &value, values, MapKey::Int, admit).map(OutputValue::Map),
        ValueType::Map {
            key: TensorElementType::String,
            value: values,
        } => output_map(name, &value, values, MapKey::String, admit).map(OutputValue::Map),
        dtype => Err(unsupported(name, &dtype)),
    }
}

fn output_tensor(
    name: &str,
    value: &DynValue,
    ty: TensorElementType,
) -> Result<Tensor, EngineError> {
    fn copy<T: PrimitiveTensorElementType + Clone>(
        name: &str,
        value: &DynValue,
        wrap: fn(Vec<T>) -> TensorData,
    ) -> Result<(Vec<usize>, TensorData), EngineError> {
        let (shape, data) = value
            .try_extract_tensor::<T>()
            .map_err(|e| extract_error(name, value.dtype(), e))?;
        Ok((dims(shape), wrap(data.to_vec())))
    }
    let (shape, data) = match ty {
        TensorElementType::Bool => copy(name, value, TensorData::Bool)?,
        TensorElementType::Int8 => copy(name, value, TensorData::Int8)?,
        TensorElementType::Int16 => copy(name, value, TensorData::Int16)?,
        TensorElementType::Int32 => copy(name, value, TensorData::Int32)?,
        TensorElementType::Int64 => copy(name, value, TensorData::Int64)?,
        TensorElementType::Uint8 => copy(name, value, TensorData::Uint8)?,
        TensorElementType::Uint16 => copy(name, value, TensorData::Uint16)?,
        TensorElementType::Uint32 => copy(name, value, TensorData::Uint32)?,
        TensorElementType::Uint64 => copy(name, value, TensorData::Uint64)?,
        TensorElementType::Float16 => copy(name, value, TensorData::Fp16)?,
        TensorElementType::Float32 => copy(name, value, TensorData::Fp32)?,
        TensorElementType::Float64 => copy(name, value, TensorData::Fp64)?,
        TensorElementType::String => {
            let (shape, strings) = value
                .try_extract_strings()
                .map_err(|e| extract_error(name, value.dtype(), e))?;
            (dims(shape), TensorData::Bytes(strings))
        }
        _ => return Err(unsupported(name, value.dtype())),
    };
    Tensor::new(shape, data).map_err(|e| EngineError::Inference(format!("output '{name}': {e}")))
}

/// How long a map key's text is (0 for integers: their extent says so).
trait KeyBytes {
    const STRING: bool;
    fn key_bytes(&self) -> usize;
}

impl KeyBytes for i64 {
    const STRING: bool = false;
    fn key_bytes(&self) -> usize {
        0
    }
}

impl KeyBytes for String {
    const STRING: bool = true;
    fn key_bytes(&self) -> usize {
        self.len()
    }
}

/// A map output, its values as one-element tensors of shape `[]`. Its pairs
/// are read out of ONNX Runtime first (16 bytes an integer-keyed entry), then
/// the map is admitted before it is built (about 100 bytes an entry, and its
/// JSON text).
fn output_map<K: IntoTensorElementType + Clone + Hash + Eq + KeyBytes>(
    name: &str,
    value: &DynValue,
    values: TensorElementType,
    key: fn(K) -> MapKey,
    admit: &Admit<'_>,
) -> Result<Vec<(MapKey, Tensor)>, EngineError> {
    fn entries<
        K: IntoTensorElementType + Clone + Hash + Eq + KeyBytes,
        V: PrimitiveTensorElementType + Clone,
    >(
        name: &str,
        value: &DynValue,
        key: fn(K) -> MapKey,
        wrap: fn(Vec<V>) -> TensorData,
        admit: &Admit<'_>,
    ) -> Result<Vec<(MapKey, Tensor)>, EngineError> {
        let pairs = value
            .try_extract_key_values::<K, V>()
            .map_err(|e| extract_error(name, value.dtype(), e))?;
        let value_type = wrap(Vec::new()).element_type();
        admit(&[OutputExtent::Map {
            entries: pairs.len(),
            string_keys: K::STRING,
            key_bytes: pairs.iter().map(|(k, _)| k.key_bytes()).sum(),
            value: value_type,
        }])
        .map_err(EngineError::OutOfMemory)?;
        let mut map = Vec::with_capacity(pairs.len());
        for (k, v) in pairs {
            let scalar = Tensor::new(Vec::new(), wrap(vec![v]))
                .map_err(|e| EngineError::Inference(format!("output '{name}': {e}")))?;
            map.push((key(k), scalar));
        }
        Ok(map)
    }
    match values {
        TensorElementType::Float32 => entries::<K, f32>(name, value, key, TensorData::Fp32, admit),
        TensorElementType::Float64 => entries::<K, f64>(name, value, key, TensorData::Fp64, admit),
        TensorElementType::Int64 => entries::<K, i64>(name, value, key, TensorData::Int64, admit),
        // Includes string values: ort 2.0.0-rc.15 reads map values only as
        // primitive tensors.
        _ => Err(unsupported(name, value.dtype())),
    }
}

fn dims(shape: &Shape) -> Vec<usize> {
    // Shapes of actual values are never negative; a -1 could only mean an
    // ONNX Runtime bug, and becomes 0 (the element count then fails to match).
    shape
        .iter()
        .map(|&dim| usize::try_from(dim).unwrap_or(0))
        .collect()
}

fn unsupported(name: &str, dtype: &ValueType) -> EngineError {
    EngineError::Inference(format!(
        "output '{name}' has type {}, which this server cannot return",
        onnx_type(dtype)
    ))
}

fn extract_error(name: &str, dtype: &ValueType, error: ort::Error) -> EngineError {
    EngineError::Inference(format!(
        "cannot read output '{name}' ({}): {error}",
        onnx_type(dtype)
    ))
}
