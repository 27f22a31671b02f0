//! The parse's checks, and its bound measured: every adversarial body is
//! parsed on this thread between two readings of jemalloc's counters, and
//! the most it can have held at once must be within what was reserved.

use super::*;
use crate::engine::{Dim, Signature, Tensor, ThreadMeter, ThreadPeak, ValueInfo, ValueKind};
use crate::http::simple;

/// Reads `text` as the data of input `x` of `ty`, as a request does.
fn tensor(text: &str, ty: ElementType) -> Result<Tensor, Error> {
    validate(text.as_bytes())?;
    let raw: &RawValue = serde_json::from_str(text).unwrap();
    let scanned = scan("x", raw)?;
    let data = fill("x", raw, scanned.count, ty)?;
    Ok(Tensor::new(scanned.shape, data)?)
}

#[test]
fn nested_arrays_are_read_row_major() {
    let t = tensor("[[1, 2, 3], [4, 5, 6]]", ElementType::Int64).unwrap();
    assert_eq!(t.shape(), [2, 3]);
    assert_eq!(t.data(), &TensorData::Int64(vec![1, 2, 3, 4, 5, 6]));
    let scalar = tensor("2.5", ElementType::Fp64).unwrap();
    assert_eq!(scalar.shape(), [] as [usize; 0]);
    assert_eq!(scalar.data(), &TensorData::Fp64(vec![2.5]));
    let empty = tensor("[[], []]", ElementType::Fp32).unwrap();
    assert_eq!(empty.shape(), [2, 0]);
    let strings = tensor(r#"[["a", "\u00e9\n"], ["", "x"]]"#, ElementType::Bytes).unwrap();
    assert_eq!(
        strings.data(),
        &TensorData::Bytes(vec!["a".into(), "é\n".into(), "".into(), "x".into()])
    );
}

#[test]
fn refuses_ragged_arrays_as_before() {
    let cases = [
        (
            "[[1, 2], [3]]",
            "an array at depth 1 has 1 elements where the first had 2",
        ),
        (
            "[[1, 2], [3, 4, 5]]",
            "an array at depth 1 has 3 elements where the first had 2",
        ),
        (
            "[[1, 2], 3]",
            "a scalar stands where an array was expected at depth 1",
        ),
        ("[1, [2]]", "arrays nest deeper than 1 levels in places"),
        (
            "[[], [1]]",
            "an array at depth 1 has 1 elements where the first had 0",
        ),
        (
            "[[[1]], [[1], [2]]]",
            "an array at depth 1 has 2 elements where the first had 1",
        ),
    ];
    for (ragged, why) in cases {
        let err = tensor(ragged, ElementType::Int64).unwrap_err();
        assert_eq!(err.code(), "invalid_input", "{ragged}");
        assert_eq!(
            err.to_string(),
            format!("input \"x\" is ragged: {why}"),
            "{ragged}"
        );
    }
}

#[test]
fn refuses_out_of_range_and_fractional_values() {
    let cases = [
        ("[300]", ElementType::Uint8, "300"),
        ("[-1]", ElementType::Uint32, "-1"),
        ("[128]", ElementType::Int8, "128"),
        ("[1.5]", ElementType::Int64, "1.5"),
        ("[1e40]", ElementType::Fp32, "1e+40"),
        ("[70000.0]", ElementType::Fp16, "70000.0"),
        (r#"["a"]"#, ElementType::Fp32, "\"a\""),
        ("[1]", ElementType::Bool, "1"),
        ("[1]", ElementType::Bytes, "1"),
        ("[null]", ElementType::Fp32, "null"),
        (r#"[{"a": 1}]"#, ElementType::Fp32, "an object"),
        (
            "[18446744073709551616]",
            ElementType::Uint64,
            "1.8446744073709552e+19",
        ),
    ];
    for (text, ty, shown) in cases {
        let err = tensor(text, ty).unwrap_err();
        assert_eq!(err.code(), "invalid_input", "{text}");
        assert_eq!(
            err.to_string(),
            format!(
                "input \"x\" element 0: {shown} is not valid for {ty}; expected {}",
                expectation(ty)
            )
        );
    }
    // The index counts the elements before it.
    let err = tensor("[[1, 2], [3, 1.5]]", ElementType::Int32).unwrap_err();
    assert!(err.to_string().contains("element 3: 1.5"), "{err}");
}

#[test]
fn accepts_the_extremes_of_each_type() {
    assert!(tensor("[255, 0]", ElementType::Uint8).is_ok());
    assert!(tensor("[18446744073709551615]", ElementType::Uint64).is_ok());
    assert!(tensor("[-9223372036854775808]", ElementType::Int64).is_ok());
    assert!(tensor("[3.4e38]", ElementType::Fp32).is_ok());
    assert!(tensor("[65504.0]", ElementType::Fp16).is_ok());
    assert!(tensor("[true, false]", ElementType::Bool).is_ok());
    assert!(tensor(r#"["héllo"]"#, ElementType::Bytes).is_ok());
    // Integers read as floats, as a JSON number is.
    let t = tensor("[16777217, -3]", ElementType::Fp32).unwrap();
    assert_eq!(t.data(), &TensorData::Fp32(vec![16777216.0, -3.0]));
}

#[test]
fn floats_that_round_to_the_largest_finite_value_are_that_value() {
    // 3.4028235e38 (how f32::MAX prints) is above f32::MAX as a double.
    let t = tensor("[3.4028235e38, -3.4028235e38]", ElementType::Fp32).unwrap();
    assert_eq!(t.data(), &TensorData::Fp32(vec![f32::MAX, f32::MIN]));
    let t = tensor("[65519.0]", ElementType::Fp16).unwrap();
    assert_eq!(t.data(), &TensorData::Fp16(vec![half::f16::MAX]));
    // Past the rounding boundary, the value would be infinite: refused.
    assert!(tensor("[3.4028236e38]", ElementType::Fp32).is_err());
    assert!(tensor("[65520.0]", ElementType::Fp16).is_err());
}

#[test]
fn invalid_json_is_refused_as_a_value_parse_refused_it() {
    let deep = format!("{}1{}", "[".repeat(129), "]".repeat(129));
    let cases: [&[u8]; 6] = [
        b"[1e400]",
        b"[1, 2",
        b"[1] x",
        b"{\"a\" 1}",
        b"[\"\xff\"]",
        deep.as_bytes(),
    ];
    for text in cases {
        let err = validate(text).unwrap_err();
        assert_eq!(
            err.code(),
            "invalid_json",
            "{}",
            String::from_utf8_lossy(text)
        );
        let value: Result<serde_json::Value, _> = serde_json::from_slice(text);
        assert_eq!(
            err.to_string(),
            format!("the body is not valid JSON: {}", value.unwrap_err())
        );
    }
    // serde_json's limit: 127 levels read, 128 refused, both ways.
    let deep = format!("{}1{}", "[".repeat(127), "]".repeat(127));
    assert!(validate(deep.as_bytes()).is_ok());
    assert!(serde_json::from_str::<serde_json::Value>(&deep).is_ok());
}

#[test]
fn messages_show_a_bounded_part_of_what_was_sent() {
    let long = "é".repeat(10_000);
    let err = tensor(&format!("[\"{long}\"]"), ElementType::Fp32).unwrap_err();
    let message = err.to_string();
    assert!(message.len() < 2 * SHOWN_BYTES, "{} bytes", message.len());
    assert!(
        message.contains("\"ééé") && message.contains("\"…"),
        "{message}"
    );
    assert_eq!(Shown("short").to_string(), "\"short\"");
    assert_eq!(format!("{:?}", Shown("a\nb")), "\"a\\nb\"");
}

#[test]
fn allocation_bounds_hold_for_jemallocs_size_classes() {
    let sizes = (1..=70_000u64).chain((16..40).flat_map(|k| {
        let p = 1u64 << k;
        [p - 1, p, p + 1, p + p / 4, p + p / 4 + 1, p + p / 2 + 7]
    }));
    for n in sizes {
        // SAFETY: nallocx only computes the size class of a request; it
        // allocates nothing and reads no memory of ours.
        let class = unsafe { tikv_jemalloc_sys::nallocx(n as usize, 0) } as u64;
        assert!(class >= n, "{n}");
        assert!(
            allocation_bound(n) >= class,
            "{n}: class {class} > {}",
            allocation_bound(n)
        );
    }
}

#[test]
fn the_census_counts_what_the_bound_needs() {
    let text = br#"{"inputs": {"x\"y": ["ab", "c"]}, "k": {"v": "long value"}}"#;
    assert_eq!(
        Census::of(text),
        Census {
            bytes: text.len() as u64,
            longest_string: 10,
            longest_key: 6,
            objects: 3,
            // "inputs", "x\"y", "k", "v", "long value": the strings in
            // arrays are data.
            object_strings: 5,
            object_string_bytes: 6 + 4 + 1 + 1 + 10,
        }
    );
    assert_eq!(Census::of(b"").bytes, 0);
    assert_eq!(bound_before_model(&Census::of(b"")), 0);
    // An unterminated string counts to the end of the text.
    assert_eq!(Census::of(b"[\"abc").longest_string, 3);
}

/// A signature of tensor inputs `(name, type)`, of any shape.
pub(crate) fn signature(inputs: &[(&str, ElementType)]) -> Signature {
    Signature {
        inputs: inputs
            .iter()
            .map(|(name, ty)| ValueInfo {
                name: name.to_string(),
                kind: ValueKind::Tensor {
                    element_type: *ty,
                    shape: vec![Dim::Dynamic(None)],
                },
            })
            .collect(),
        outputs: Vec::new(),
    }
}

/// What a parse measured: the most it can have held at once, before the
/// model and in all, and what was reserved for each.
#[derive(Debug)]
pub(crate) struct Measured {
    pub before_model: u64,
    pub reserved_before_model: u64,
    pub total: u64,
    pub reserved: u64,
    pub outcome: Result<(), String>,
}

/// The most the calling thread can have held at once since `meter` and
/// `peak` started: jemalloc's sampled peak plus its sampling step, or all it
/// allocated if that is less (both are upper bounds).
pub(crate) fn held_at_most(meter: &ThreadMeter, peak: &ThreadPeak) -> u64 {
    (peak.peak_bytes() + ThreadPeak::SAMPLING_BYTES).min(meter.allocated_bytes())
}

impl Measured {
    /// Asserts both bounds held, and says how close they were.
    pub(crate) fn assert_within(&self, what: &str, text_bytes: usize) {
        eprintln!(
            "{what}: {text_bytes} bytes of text; held at most {} of {} reserved before the model, \
             {} of {} in all ({:.2} bytes per byte of text); {:?}",
            self.before_model,
            self.reserved_before_model,
            self.total,
            self.reserved,
            self.reserved as f64 / text_bytes.max(1) as f64,
            self.outcome
                .as_ref()
                .map_err(|e| e.chars().take(100).collect::<String>())
        );
        assert!(
            self.before_model <= self.reserved_before_model,
            "{what}: held {} before the model, reserved {}",
            self.before_model,
            self.reserved_before_model
        );
        assert!(
            self.total <= self.reserved,
            "{what}: held {} in all, reserved {}",
            self.total,
            self.reserved
        );
    }
}

/// Parses a simple-protocol body for a model of `signature` on this thread
/// as `simple::predict` does (its steps and reservations, without the model
/// service), measuring.
fn measure_simple(body: &[u8], signature: &Signature) -> Measured {
    let reserved_before_model = bound_before_model(&Census::of(body));
    let meter = ThreadMeter::start();
    let peak = ThreadPeak::start();
    let parsed = validate(body).and_then(|()| simple::parse(body));
    let before_model = held_at_most(&meter, &peak);
    let (after, outcome) = match parsed {
        Err(e) => (0, Err(e)),
        Ok(parsed) => match simple::Plan::new(parsed, signature) {
            Err(e) => (0, Err(e)),
            Ok(plan) => (plan.bytes(), plan.tensors().map(drop)),
        },
    };
    Measured {
        before_model,
        reserved_before_model,
        total: held_at_most(&meter, &peak),
        reserved: reserved_before_model + after,
        outcome: outcome.map_err(|e| e.to_string()),
    }
}

/// `n` copies of `item` joined by `separator`.
pub(crate) fn repeat(item: &str, separator: &str, n: usize) -> String {
    let mut out = String::with_capacity((item.len() + separator.len()) * n);
    for i in 0..n {
        if i > 0 {
            out.push_str(separator);
        }
        out.push_str(item);
    }
    out
}

#[test]
fn the_simple_protocol_stays_within_its_reservation() {
    let n = 400_000;
    let int64 = signature(&[("x", ElementType::Int64)]);
    let fp32 = signature(&[("x", ElementType::Fp32)]);
    let fp64 = signature(&[("x", ElementType::Fp64)]);
    let strings = signature(&[("x", ElementType::Bytes)]);
    let two = signature(&[("x", ElementType::Int64), ("y", ElementType::Bytes)]);
    // The deepest serde_json reads: 127 levels, the body's object one of them.
    let deep = format!(
        "{}{}{}",
        "[".repeat(126),
        repeat("1", ",", n),
        "]".repeat(126)
    );
    let long_key = "k".repeat(1 << 20);
    let escaped_key = "\\u006b".repeat(100_000);
    let cases: Vec<(&str, String, &Signature, bool)> = vec![
        // One byte and a comma per 8-byte element: the worst case of numbers.
        (
            "[1,1,...] int64",
            format!(r#"{{"features":[{}]}}"#, repeat("1", ",", n)),
            &int64,
            true,
        ),
        (
            "[[1],[1],...] int64",
            format!(r#"{{"features":[{}]}}"#, repeat("[1]", ",", n)),
            &int64,
            true,
        ),
        (
            "[1,1,...] float64",
            format!(r#"{{"inputs":{{"x":[{}]}}}}"#, repeat("1", ",", n)),
            &fp64,
            true,
        ),
        (
            "whitespace-heavy",
            format!(
                "{{ \"features\" :\n [ {} ] }}",
                repeat("1", " ,\n\t ", n / 4)
            ),
            &int64,
            true,
        ),
        // Three bytes per 24-byte String: the worst case of strings.
        (
            r#"["","",...] strings"#,
            format!(r#"{{"inputs":{{"x":[{}]}}}}"#, repeat(r#""""#, ",", n)),
            &strings,
            true,
        ),
        (
            r#"["a","a",...] strings"#,
            format!(r#"{{"inputs":{{"x":[{}]}}}}"#, repeat(r#""a""#, ",", n)),
            &strings,
            true,
        ),
        (
            "one long escaped string",
            format!(r#"{{"inputs":{{"x":["{}"]}}}}"#, "\\n".repeat(n)),
            &strings,
            true,
        ),
        (
            "126 levels deep",
            format!(r#"{{"features":{deep}}}"#),
            &int64,
            true,
        ),
        (
            "huge numbers",
            format!(
                r#"{{"features":[{}]}}"#,
                repeat("123456789012345678901234567890e270", ",", n / 16)
            ),
            &fp64,
            true,
        ),
        (
            "two inputs",
            format!(
                r#"{{"inputs":{{"x":[{}],"y":[{}]}}}}"#,
                repeat("1", ",", n / 2),
                repeat(r#""""#, ",", n / 2)
            ),
            &two,
            true,
        ),
        (
            "a name given 100,000 times",
            format!(r#"{{"inputs":{{{}}}}}"#, repeat(r#""x":[1]"#, ",", 100_000)),
            &int64,
            true,
        ),
        // Refused: the error paths stay within it too.
        (
            "strings for float32",
            format!(r#"{{"features":[{}]}}"#, repeat(r#""a""#, ",", n)),
            &fp32,
            false,
        ),
        (
            "a long string for float32",
            format!(r#"{{"features":["{}"]}}"#, "\\n".repeat(n)),
            &fp32,
            false,
        ),
        (
            "ragged at the end",
            format!(r#"{{"features":[{},[1,2]]}}"#, repeat("[1]", ",", n)),
            &int64,
            false,
        ),
        (
            "a long unknown name",
            format!(r#"{{"inputs":{{"{long_key}":[1]}}}}"#),
            &int64,
            false,
        ),
        (
            "a long escaped name",
            format!(r#"{{"inputs":{{"{escaped_key}":[1]}}}}"#),
            &int64,
            false,
        ),
        (
            "an object as an element",
            format!(r#"{{"features":[{{"a":[{}]}}]}}"#, repeat("1", ",", n)),
            &fp32,
            false,
        ),
        (
            "1e400",
            format!(r#"{{"features":[{},1e400]}}"#, repeat("1", ",", n)),
            &fp32,
            false,
        ),
    ];
    for (what, body, signature, ok) in cases {
        let measured = measure_simple(body.as_bytes(), signature);
        measured.assert_within(what, body.len());
        assert_eq!(
            measured.outcome.is_ok(),
            ok,
            "{what}: {:?}",
            measured.outcome
        );
    }
}

#[test]
fn the_bound_is_proportionate_to_the_text_for_numbers() {
    // What is reserved for the worst numeric body, in bytes per byte of
    // text: the derivation's 5 (8-byte elements of 2 bytes each, plus the
    // size class) and the constant part, and not the old 8 for every body.
    let n = 400_000;
    let body = format!(r#"{{"features":[{}]}}"#, repeat("1", ",", n));
    let int64 = signature(&[("x", ElementType::Int64)]);
    let measured = measure_simple(body.as_bytes(), &int64);
    let per_byte = measured.reserved as f64 / body.len() as f64;
    assert!((4.0..5.1).contains(&per_byte), "{per_byte}");
    // Typical floats (9 bytes of text each) as float32: under half a byte
    // per byte of text, where a Value tree took about 8.
    let body = format!(r#"{{"features":[{}]}}"#, repeat("0.1234567", ",", n));
    let fp32 = signature(&[("x", ElementType::Fp32)]);
    let measured = measure_simple(body.as_bytes(), &fp32);
    let per_byte = measured.reserved as f64 / body.len() as f64;
    assert!(per_byte < 0.6, "{per_byte}");
    assert!(measured.reserved_before_model < 64 << 10, "{measured:?}");
}
