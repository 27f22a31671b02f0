//! The Open Inference Protocol's binary tensor data extension (the
//! `binary_tensor_data` extension of KServe V2 and Triton): tensors as raw
//! bytes after the JSON header of a request or response body, whose length
//! the `Inference-Header-Content-Length` header gives.
//!
//! Elements are little-endian and row-major without padding; a BOOL is one
//! byte, 0 or 1; a BYTES element is a 4-byte little-endian length followed by
//! that many bytes. model-router carries BYTES as text (ONNX Runtime string
//! tensors reach it as UTF-8), so a BYTES input element that is not UTF-8 is
//! refused with a 400 naming the input and the element.

use crate::engine::{ElementType, Tensor, TensorData};
use crate::error::Error;
use crate::http::json::invalid;
use crate::http::parse::{Shown, ShownDims, allocation_bound};

/// The header that gives the length of the JSON part of a body.
pub(crate) const HEADER_LENGTH: &str = "inference-header-content-length";

/// What [`decode`] allocates for `count` elements of `ty` from `bytes`
/// bytes: one buffer of exactly the elements, and for BYTES each element's
/// text (at most the bytes, plus a size class each).
pub(crate) fn decode_bound(ty: ElementType, count: usize, bytes: usize) -> u64 {
    match ty {
        ElementType::Bytes => {
            let elements = count.min(bytes / 4) as u64;
            allocation_bound(elements * ty.size_bytes() as u64)
                + (bytes as u64 + bytes as u64 / 4)
                + 16 * elements
        }
        _ => allocation_bound(count as u64 * ty.size_bytes() as u64),
    }
}

/// Decodes the `bytes` given for input `input` into a tensor of `ty` and `shape`.
/// Every byte must be used: a size that does not match the shape is refused.
pub(crate) fn decode(
    input: &str,
    ty: ElementType,
    shape: Vec<usize>,
    count: usize,
    bytes: &[u8],
) -> Result<Tensor, Error> {
    let fixed = FixedWidth {
        input,
        ty,
        shape: &shape,
        count,
        bytes,
    };
    let data = match ty {
        ElementType::Bool => TensorData::Bool(fixed.decode(|[b]: [u8; 1]| match b {
            0 => Some(false),
            1 => Some(true),
            _ => None,
        })?),
        ElementType::Int8 => TensorData::Int8(fixed.decode(|b| Some(i8::from_le_bytes(b)))?),
        ElementType::Int16 => TensorData::Int16(fixed.decode(|b| Some(i16::from_le_bytes(b)))?),
        ElementType::Int32 => TensorData::Int32(fixed.decode(|b| Some(i32::from_le_bytes(b)))?),
        ElementType::Int64 => TensorData::Int64(fixed.decode(|b| Some(i64::from_le_bytes(b)))?),
        ElementType::Uint8 => TensorData::Uint8(fixed.decode(|b| Some(u8::from_le_bytes(b)))?),
        ElementType::Uint16 => TensorData::Uint16(fixed.decode(|b| Some(u16::from_le_bytes(b)))?),
        ElementType::Uint32 => TensorData::Uint32(fixed.decode(|b| Some(u32::from_le_bytes(b)))?),
        ElementType::Uint64 => TensorData::Uint64(fixed.decode(|b| Some(u64::from_le_bytes(b)))?),
        ElementType::Fp16 => TensorData::Fp16(fixed.decode(|b| Some(half::f16::from_le_bytes(b)))?),
        ElementType::Fp32 => TensorData::Fp32(fixed.decode(|b| Some(f32::from_le_bytes(b)))?),
        ElementType::Fp64 => TensorData::Fp64(fixed.decode(|b| Some(f64::from_le_bytes(b)))?),
        ElementType::Bytes => TensorData::Bytes(strings(input, &shape, count, bytes)?),
    };
    Ok(Tensor::new(shape, data)?)
}

/// One input's bytes, for the element types of a fixed width.
struct FixedWidth<'a> {
    input: &'a str,
    ty: ElementType,
    shape: &'a [usize],
    count: usize,
    bytes: &'a [u8],
}

impl FixedWidth<'_> {
    fn decode<const N: usize, T>(
        &self,
        element: impl Fn([u8; N]) -> Option<T>,
    ) -> Result<Vec<T>, Error> {
        let FixedWidth {
            input,
            ty,
            shape,
            count,
            bytes,
        } = *self;
        if count.checked_mul(N) != Some(bytes.len()) {
            return Err(invalid(format!(
                "input {:?} has {} bytes of binary data, but shape {} of {} needs {count} elements of {N} bytes",
                Shown(input),
                bytes.len(),
                ShownDims(shape),
                ty.v2_name()
            )));
        }
        // Exactly `count` elements: what `decode_bound` reserved.
        let mut out = Vec::with_capacity(count);
        for (i, chunk) in bytes.chunks_exact(N).enumerate() {
            let mut array = [0u8; N];
            array.copy_from_slice(chunk);
            let Some(value) = element(array) else {
                return Err(invalid(format!(
                    "input {:?} element {i}: byte {chunk:?} is not a binary {}; expected 0 or 1",
                    Shown(input),
                    ty.v2_name()
                )));
            };
            out.push(value);
        }
        Ok(out)
    }
}

/// BYTES elements: each a 4-byte little-endian length and that many bytes of UTF-8.
fn strings(input: &str, shape: &[usize], count: usize, bytes: &[u8]) -> Result<Vec<String>, Error> {
    // `count` comes from the client: never reserve more than the bytes could hold.
    let mut out = Vec::with_capacity(count.min(bytes.len() / 4));
    let mut rest = bytes;
    while let Some((length, tail)) = rest.split_first_chunk::<4>() {
        let i = out.len();
        let length = u32::from_le_bytes(*length) as usize;
        let Some((element, tail)) = tail.split_at_checked(length) else {
            return Err(invalid(format!(
                "input {input:?} element {i} declares {length} bytes, but only {} bytes of its binary data remain",
                tail.len()
            )));
        };
        let text = std::str::from_utf8(element).map_err(|e| {
            invalid(format!(
                "input {input:?} element {i} is not UTF-8 ({e}); model-router passes BYTES to ONNX Runtime string tensors, which hold text"
            ))
        })?;
        out.push(text.to_owned());
        rest = tail;
    }
    if !rest.is_empty() {
        return Err(invalid(format!(
            "input {input:?} has {} trailing bytes of binary data, too few for a BYTES element's 4-byte length",
            rest.len()
        )));
    }
    if out.len() != count {
        return Err(invalid(format!(
            "input {input:?} has {} BYTES elements in its binary data, but shape {} needs {count}",
            out.len(),
            ShownDims(shape)
        )));
    }
    Ok(out)
}

/// Appends the binary form of `data` to `out`.
pub(crate) fn encode(data: &TensorData, out: &mut Vec<u8>) {
    macro_rules! little_endian {
        ($values:expr) => {
            for value in $values {
                out.extend_from_slice(&value.to_le_bytes());
            }
        };
    }
    match data {
        TensorData::Bool(v) => out.extend(v.iter().map(|&b| u8::from(b))),
        TensorData::Int8(v) => little_endian!(v),
        TensorData::Int16(v) => little_endian!(v),
        TensorData::Int32(v) => little_endian!(v),
        TensorData::Int64(v) => little_endian!(v),
        TensorData::Uint8(v) => out.extend_from_slice(v),
        TensorData::Uint16(v) => little_endian!(v),
        TensorData::Uint32(v) => little_endian!(v),
        TensorData::Uint64(v) => little_endian!(v),
        TensorData::Fp16(v) => little_endian!(v),
        TensorData::Fp32(v) => little_endian!(v),
        TensorData::Fp64(v) => little_endian!(v),
        TensorData::Bytes(v) => {
            for text in v {
                // A string output cannot reach 4 GiB: the process's memory is
                // far smaller on Lambda, and the response would be refused.
                let length = u32::try_from(text.len()).unwrap_or(u32::MAX);
                out.extend_from_slice(&length.to_le_bytes());
                out.extend_from_slice(text.as_bytes());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn round_trip(data: TensorData) {
        let count = data.len();
        let ty = data.element_type();
        let mut bytes = Vec::new();
        encode(&data, &mut bytes);
        let tensor = decode("x", ty, vec![count], count, &bytes).unwrap();
        assert_eq!(tensor.data(), &data);
    }

    #[test]
    fn every_type_round_trips() {
        round_trip(TensorData::Bool(vec![true, false]));
        round_trip(TensorData::Int8(vec![i8::MIN, i8::MAX]));
        round_trip(TensorData::Int16(vec![i16::MIN, i16::MAX]));
        round_trip(TensorData::Int32(vec![i32::MIN, i32::MAX]));
        round_trip(TensorData::Int64(vec![i64::MIN, i64::MAX]));
        round_trip(TensorData::Uint8(vec![0, u8::MAX]));
        round_trip(TensorData::Uint16(vec![0, u16::MAX]));
        round_trip(TensorData::Uint32(vec![0, u32::MAX]));
        round_trip(TensorData::Uint64(vec![0, u64::MAX]));
        round_trip(TensorData::Fp16(vec![
            half::f16::MAX,
            half::f16::MIN_POSITIVE,
        ]));
        round_trip(TensorData::Fp32(vec![f32::MAX, -0.5]));
        round_trip(TensorData::Fp64(vec![f64::MAX, 5e-324]));
        round_trip(TensorData::Bytes(vec![String::new(), "héllo".into()]));
    }

    #[test]
    fn the_wire_format_is_little_endian_with_length_prefixed_strings() {
        let mut bytes = Vec::new();
        encode(&TensorData::Int32(vec![1, -2]), &mut bytes);
        encode(&TensorData::Bytes(vec!["ab".into()]), &mut bytes);
        encode(&TensorData::Bool(vec![true]), &mut bytes);
        assert_eq!(
            bytes,
            [
                1, 0, 0, 0, 0xfe, 0xff, 0xff, 0xff, 2, 0, 0, 0, b'a', b'b', 1
            ]
        );
    }

    #[test]
    fn refuses_what_does_not_fit_the_shape() {
        let cases: [(ElementType, usize, &[u8], &str); 7] = [
            (ElementType::Fp32, 2, &[0; 7], "needs 2 elements of 4 bytes"),
            (ElementType::Bool, 1, &[2], "expected 0 or 1"),
            (
                ElementType::Bytes,
                1,
                &[5, 0, 0, 0, b'a'],
                "declares 5 bytes",
            ),
            (ElementType::Bytes, 1, &[1, 0, 0, 0, 0xff], "not UTF-8"),
            (ElementType::Bytes, 2, &[1, 0, 0, 0, b'a'], "needs 2"),
            (ElementType::Bytes, 1, &[0, 0, 0, 0, 1], "trailing"),
            (ElementType::Int64, usize::MAX, &[0; 8], "needs"),
        ];
        for (ty, count, bytes, message) in cases {
            let err = decode("x", ty, vec![count], count, bytes).unwrap_err();
            assert_eq!(err.code(), "invalid_input");
            let text = err.to_string();
            assert!(text.contains("\"x\"") && text.contains(message), "{text}");
        }
    }
}
