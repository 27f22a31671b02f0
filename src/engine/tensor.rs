//! Tensors and values as the router sees them: plain Rust data, no ONNX Runtime
//! types. The engine converts these to and from `ort` values; the HTTP layer
//! converts them to and from JSON.

use std::fmt;

/// An element type a client can send or receive, named as the Open Inference
/// Protocol names it (`FP32`, `INT64`, `BYTES`...).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ElementType {
    Bool,
    Int8,
    Int16,
    Int32,
    Int64,
    Uint8,
    Uint16,
    Uint32,
    Uint64,
    Fp16,
    Fp32,
    Fp64,
    /// ONNX `string` tensors: UTF-8 text on the wire.
    Bytes,
}

impl ElementType {
    /// Every element type, in a stable order (used in error messages and tests).
    pub const ALL: [ElementType; 13] = [
        ElementType::Bool,
        ElementType::Int8,
        ElementType::Int16,
        ElementType::Int32,
        ElementType::Int64,
        ElementType::Uint8,
        ElementType::Uint16,
        ElementType::Uint32,
        ElementType::Uint64,
        ElementType::Fp16,
        ElementType::Fp32,
        ElementType::Fp64,
        ElementType::Bytes,
    ];

    /// The Open Inference Protocol datatype name.
    pub fn v2_name(self) -> &'static str {
        match self {
            ElementType::Bool => "BOOL",
            ElementType::Int8 => "INT8",
            ElementType::Int16 => "INT16",
            ElementType::Int32 => "INT32",
            ElementType::Int64 => "INT64",
            ElementType::Uint8 => "UINT8",
            ElementType::Uint16 => "UINT16",
            ElementType::Uint32 => "UINT32",
            ElementType::Uint64 => "UINT64",
            ElementType::Fp16 => "FP16",
            ElementType::Fp32 => "FP32",
            ElementType::Fp64 => "FP64",
            ElementType::Bytes => "BYTES",
        }
    }

    /// Parses an Open Inference Protocol datatype name.
    pub fn from_v2_name(name: &str) -> Option<ElementType> {
        ElementType::ALL.into_iter().find(|t| t.v2_name() == name)
    }

    /// Bytes one element takes in a tensor (a `string` element: its `String`
    /// header, the text not counted).
    pub fn size_bytes(self) -> usize {
        match self {
            ElementType::Bool | ElementType::Int8 | ElementType::Uint8 => 1,
            ElementType::Int16 | ElementType::Uint16 | ElementType::Fp16 => 2,
            ElementType::Int32 | ElementType::Uint32 | ElementType::Fp32 => 4,
            ElementType::Int64 | ElementType::Uint64 | ElementType::Fp64 => 8,
            ElementType::Bytes => std::mem::size_of::<String>(),
        }
    }

    /// The ONNX name (`float`, `int64`, `string`...), as users see it in Netron
    /// and in `onnx.helper`.
    pub fn onnx_name(self) -> &'static str {
        match self {
            ElementType::Bool => "bool",
            ElementType::Int8 => "int8",
            ElementType::Int16 => "int16",
            ElementType::Int32 => "int32",
            ElementType::Int64 => "int64",
            ElementType::Uint8 => "uint8",
            ElementType::Uint16 => "uint16",
            ElementType::Uint32 => "uint32",
            ElementType::Uint64 => "uint64",
            ElementType::Fp16 => "float16",
            ElementType::Fp32 => "float32",
            ElementType::Fp64 => "float64",
            ElementType::Bytes => "string",
        }
    }
}

impl fmt::Display for ElementType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.onnx_name())
    }
}

/// The elements of a tensor, row-major, one variant per element type.
#[derive(Debug, Clone, PartialEq)]
pub enum TensorData {
    Bool(Vec<bool>),
    Int8(Vec<i8>),
    Int16(Vec<i16>),
    Int32(Vec<i32>),
    Int64(Vec<i64>),
    Uint8(Vec<u8>),
    Uint16(Vec<u16>),
    Uint32(Vec<u32>),
    Uint64(Vec<u64>),
    Fp16(Vec<half::f16>),
    Fp32(Vec<f32>),
    Fp64(Vec<f64>),
    Bytes(Vec<String>),
}

impl TensorData {
    pub fn element_type(&self) -> ElementType {
        match self {
            TensorData::Bool(_) => ElementType::Bool,
            TensorData::Int8(_) => ElementType::Int8,
            TensorData::Int16(_) => ElementType::Int16,
            TensorData::Int32(_) => ElementType::Int32,
            TensorData::Int64(_) => ElementType::Int64,
            TensorData::Uint8(_) => ElementType::Uint8,
            TensorData::Uint16(_) => ElementType::Uint16,
            TensorData::Uint32(_) => ElementType::Uint32,
            TensorData::Uint64(_) => ElementType::Uint64,
            TensorData::Fp16(_) => ElementType::Fp16,
            TensorData::Fp32(_) => ElementType::Fp32,
            TensorData::Fp64(_) => ElementType::Fp64,
            TensorData::Bytes(_) => ElementType::Bytes,
        }
    }

    pub fn len(&self) -> usize {
        match self {
            TensorData::Bool(v) => v.len(),
            TensorData::Int8(v) => v.len(),
            TensorData::Int16(v) => v.len(),
            TensorData::Int32(v) => v.len(),
            TensorData::Int64(v) => v.len(),
            TensorData::Uint8(v) => v.len(),
            TensorData::Uint16(v) => v.len(),
            TensorData::Uint32(v) => v.len(),
            TensorData::Uint64(v) => v.len(),
            TensorData::Fp16(v) => v.len(),
            TensorData::Fp32(v) => v.len(),
            TensorData::Fp64(v) => v.len(),
            TensorData::Bytes(v) => v.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// `count` zeros (false, empty strings) of `ty`.
    pub fn zeros(ty: ElementType, count: usize) -> TensorData {
        match ty {
            ElementType::Bool => TensorData::Bool(vec![false; count]),
            ElementType::Int8 => TensorData::Int8(vec![0; count]),
            ElementType::Int16 => TensorData::Int16(vec![0; count]),
            ElementType::Int32 => TensorData::Int32(vec![0; count]),
            ElementType::Int64 => TensorData::Int64(vec![0; count]),
            ElementType::Uint8 => TensorData::Uint8(vec![0; count]),
            ElementType::Uint16 => TensorData::Uint16(vec![0; count]),
            ElementType::Uint32 => TensorData::Uint32(vec![0; count]),
            ElementType::Uint64 => TensorData::Uint64(vec![0; count]),
            ElementType::Fp16 => TensorData::Fp16(vec![half::f16::ZERO; count]),
            ElementType::Fp32 => TensorData::Fp32(vec![0.0; count]),
            ElementType::Fp64 => TensorData::Fp64(vec![0.0; count]),
            ElementType::Bytes => TensorData::Bytes(vec![String::new(); count]),
        }
    }
}

/// A dense tensor: a shape and its elements in row-major order.
///
/// Invariant (checked by [`Tensor::new`]): the product of `shape` equals the
/// number of elements.
#[derive(Debug, Clone, PartialEq)]
pub struct Tensor {
    shape: Vec<usize>,
    data: TensorData,
}

/// A shape that does not hold the number of elements given.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("shape {shape:?} holds {expected} elements, but {actual} were given")]
pub struct ShapeMismatch {
    pub shape: Vec<usize>,
    pub expected: usize,
    pub actual: usize,
}

impl Tensor {
    pub fn new(shape: Vec<usize>, data: TensorData) -> Result<Tensor, ShapeMismatch> {
        let expected = shape.iter().product::<usize>();
        if expected != data.len() {
            return Err(ShapeMismatch {
                shape,
                expected,
                actual: data.len(),
            });
        }
        Ok(Tensor { shape, data })
    }

    pub fn shape(&self) -> &[usize] {
        &self.shape
    }

    pub fn data(&self) -> &TensorData {
        &self.data
    }

    pub fn element_type(&self) -> ElementType {
        self.data.element_type()
    }

    pub fn into_parts(self) -> (Vec<usize>, TensorData) {
        (self.shape, self.data)
    }
}

/// A key of an ONNX map (ONNX maps are keyed by strings or integers).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum MapKey {
    Int(i64),
    String(String),
}

impl fmt::Display for MapKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            MapKey::Int(i) => write!(f, "{i}"),
            MapKey::String(s) => f.write_str(s),
        }
    }
}

/// What a model returns for one output: a tensor, or the non-tensor values
/// scikit-learn converters produce (ZipMap makes a sequence of maps).
#[derive(Debug, Clone, PartialEq)]
pub enum OutputValue {
    Tensor(Tensor),
    /// An ONNX sequence (of tensors, or of maps).
    Sequence(Vec<OutputValue>),
    /// An ONNX map; entries in the order ONNX Runtime returned them. Values
    /// are scalars held as one-element tensors of the map's value type.
    Map(Vec<(MapKey, Tensor)>),
}

/// What one output (or one item of a sequence output) takes once copied out
/// of ONNX Runtime, as the post-check ([`crate::engine::Admit`]) is told it
/// before the copy is made: tensors by their type and shape, sequences by
/// their length, maps by their entries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OutputExtent {
    /// `count` elements of `element_type`.
    Tensor {
        element_type: ElementType,
        count: usize,
    },
    /// A sequence of `items` (each admitted on its own as it is read).
    Sequence { items: usize },
    /// A map of `entries` scalar values of `value`, keyed by integers, or by
    /// strings of `key_bytes` in all.
    Map {
        entries: usize,
        string_keys: bool,
        key_bytes: usize,
        value: ElementType,
    },
}

/// A dimension of a model input or output: fixed, or dynamic (`-1` in the
/// Open Inference Protocol), with its symbolic name when the model gives one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Dim {
    Fixed(usize),
    Dynamic(Option<String>),
}

impl fmt::Display for Dim {
    /// A fixed size as its number, a dynamic one by its symbol (`batch`), or
    /// `?` when the model names none.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Dim::Fixed(n) => write!(f, "{n}"),
            Dim::Dynamic(Some(symbol)) => f.write_str(symbol),
            Dim::Dynamic(None) => f.write_str("?"),
        }
    }
}

/// A declared shape for messages: `[batch, 4]`.
pub fn shape_string(shape: &[Dim]) -> String {
    let dims: Vec<String> = shape.iter().map(Dim::to_string).collect();
    format!("[{}]", dims.join(", "))
}

/// The declared type of a model input or output.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ValueKind {
    Tensor {
        element_type: ElementType,
        shape: Vec<Dim>,
    },
    /// A sequence, map, or other non-tensor type; `description` is ONNX
    /// Runtime's rendering, e.g. `seq(map(int64,tensor(float)))`.
    Other { description: String },
}

/// One named input or output of a model.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ValueInfo {
    pub name: String,
    pub kind: ValueKind,
}

/// A model's inputs and outputs, read from its session once at load.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Signature {
    pub inputs: Vec<ValueInfo>,
    pub outputs: Vec<ValueInfo>,
}
