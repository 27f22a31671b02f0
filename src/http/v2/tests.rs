//! The Open Inference Protocol's parse within its reservation: adversarial
//! request bodies measured as `parse::tests` measures the simple protocol's.

use super::*;
use crate::engine::{ElementType, ThreadMeter, ThreadPeak};
use crate::http::parse::tests::{Measured, held_at_most, repeat, signature};
use crate::http::parse::{Census, bound_before_model};

/// Parses an infer request's JSON on this thread as `infer` does before and
/// after the model is loaded (its steps and reservations, without the model
/// service), measuring.
fn measure_v2(header: &[u8], signature: &crate::engine::Signature) -> Measured {
    let reserved_before_model = bound_before_model(&Census::of(header));
    let meter = ThreadMeter::start();
    let peak = ThreadPeak::start();
    let mut shapes = 0;
    let mut before_model = 0;
    let mut after = 0;
    let outcome = (|| {
        parse::validate(header)?;
        let request = parse_request(header)?;
        call::check_body_model(
            "m",
            "1",
            request.model_name.as_deref(),
            request.model_version.as_deref(),
        )?;
        let parameters = request
            .parameters
            .map(Parameters::from_json)
            .transpose()
            .map_err(not_v2)?;
        call::request_deadline(parameters.as_ref(), Instant::now())?;
        shapes = shapes_bound(&request);
        let mut inputs = Vec::with_capacity(request.inputs.0.len());
        for input in &request.inputs.0 {
            inputs.push(parse_input(&input.0, &mut &[][..])?);
        }
        let _outputs = parse_outputs(&request)?;
        before_model = held_at_most(&meter, &peak);
        let typed = call::typed(inputs, signature)?;
        after = call::tensors_bound(&typed);
        call::tensors(typed).map(drop)
    })();
    if before_model == 0 {
        before_model = held_at_most(&meter, &peak);
    }
    Measured {
        before_model,
        reserved_before_model: reserved_before_model + shapes,
        total: held_at_most(&meter, &peak),
        reserved: reserved_before_model + shapes + after,
        outcome: outcome.map_err(|e: Error| e.to_string()),
    }
}

fn input(name: &str, shape: &str, datatype: &str, data: &str) -> String {
    format!(r#"{{"name":"{name}","shape":{shape},"datatype":"{datatype}","data":{data}}}"#)
}

#[test]
fn the_open_inference_protocol_stays_within_its_reservation() {
    let n = 400_000;
    let int64 = signature(&[("x", ElementType::Int64)]);
    let strings = signature(&[("x", ElementType::Bytes)]);
    let fp32 = signature(&[("x", ElementType::Fp32)]);
    let ones = |n: usize| format!("[{}]", repeat("1", ",", n));
    let many_inputs = repeat(&input("x", "[1]", "FP32", "[1]"), ",", 20_000);
    let cases: Vec<(&str, String, &crate::engine::Signature, bool)> = vec![
        (
            "flat [1,1,...] INT64",
            format!(
                r#"{{"inputs":[{}]}}"#,
                input("x", &format!("[{n}]"), "INT64", &ones(n))
            ),
            &int64,
            true,
        ),
        (
            "nested [[1],[1],...] INT64",
            format!(
                r#"{{"inputs":[{}]}}"#,
                input(
                    "x",
                    &format!("[{n},1]"),
                    "INT64",
                    &format!("[{}]", repeat("[1]", ",", n))
                )
            ),
            &int64,
            true,
        ),
        (
            r#"["","",...] BYTES"#,
            format!(
                r#"{{"inputs":[{}]}}"#,
                input(
                    "x",
                    &format!("[{n}]"),
                    "BYTES",
                    &format!("[{}]", repeat(r#""""#, ",", n))
                )
            ),
            &strings,
            true,
        ),
        (
            "20,000 inputs",
            format!(r#"{{"inputs":[{many_inputs}]}}"#),
            &fp32,
            true,
        ),
        (
            "a shape of 400,000 dimensions",
            format!(r#"{{"inputs":[{}]}}"#, input("x", &ones(n), "FP32", "[1]")),
            &fp32,
            true,
        ),
        (
            "50,000 outputs",
            format!(
                r#"{{"inputs":[{}],"outputs":[{}]}}"#,
                input("x", "[1]", "FP32", "[1]"),
                repeat(
                    r#"{"name":"y","parameters":{"binary_data":false}}"#,
                    ",",
                    50_000
                )
            ),
            &fp32,
            true,
        ),
        (
            "parameters full of unknown keys and long values",
            format!(
                r#"{{"inputs":[{}],"parameters":{{{},"sequence_id":"{}"}}}}"#,
                input("x", "[1]", "FP32", "[1]"),
                repeat(r#""junk":[[[1,2,3]]]"#, ",", 50_000),
                "\\n".repeat(100_000)
            ),
            &fp32,
            false,
        ),
        (
            "a long escaped id",
            format!(
                r#"{{"id":"{}","inputs":[{}]}}"#,
                "\\u00e9".repeat(100_000),
                input("x", "[1]", "FP32", "[1]")
            ),
            &fp32,
            true,
        ),
        (
            "a long unknown field",
            format!(r#"{{"inputs":[],"{}":1}}"#, "k".repeat(1 << 20)),
            &fp32,
            false,
        ),
        (
            "a long string as an input",
            format!(r#"{{"inputs":["{}"]}}"#, "\\n".repeat(n)),
            &fp32,
            false,
        ),
        (
            "a long datatype",
            format!(
                r#"{{"inputs":[{}]}}"#,
                input("x", "[1]", &"F".repeat(1 << 20), "[1]")
            ),
            &fp32,
            false,
        ),
        (
            "strings for FP32",
            format!(
                r#"{{"inputs":[{}]}}"#,
                input(
                    "x",
                    &format!("[{n}]"),
                    "FP32",
                    &format!("[{}]", repeat(r#""a""#, ",", n))
                )
            ),
            &fp32,
            false,
        ),
    ];
    for (what, header, signature, ok) in cases {
        let measured = measure_v2(header.as_bytes(), signature);
        measured.assert_within(what, header.len());
        assert_eq!(
            measured.outcome.is_ok(),
            ok,
            "{what}: {:?}",
            measured.outcome
        );
    }
}

#[test]
fn messages_name_kinds_and_cut_what_was_sent() {
    let long = "\\n".repeat(100_000);
    for (header, mentions) in [
        (
            format!(r#""{long}""#),
            vec![
                "Open Inference Protocol",
                "invalid type: string, expected an object",
            ],
        ),
        (
            format!(r#"{{"inputs":"{long}"}}"#),
            vec!["invalid type: string, expected an array"],
        ),
        (
            format!(r#"{{"inputs":[],"{}":1}}"#, "k".repeat(300)),
            vec!["unknown field"],
        ),
        (
            r#"{"inputs":[{"name":"x","shape":["a"],"datatype":"FP32","data":[1]}]}"#.to_string(),
            vec!["input 0's \"shape\"", "expected an integer"],
        ),
        (
            r#"{"inputs":[],"parameters":[1]}"#.to_string(),
            vec!["\"parameters\" is an array; expected an object"],
        ),
    ] {
        let err = parse_request(header.as_bytes()).map(drop).unwrap_err();
        let message = err.to_string();
        assert_eq!(err.code(), "invalid_input", "{message}");
        for mention in mentions {
            assert!(
                message.contains(mention),
                "{message:?} should say {mention:?}"
            );
        }
        assert!(message.len() < 1500, "{} bytes: {message}", message.len());
    }
}

#[test]
fn every_object_of_a_body_is_counted() {
    // The bound's per-object allowance covers the largest of the lists an
    // object is read into; a change to those types shows here.
    assert!(object_bytes() >= 3 * std::mem::size_of::<Object<InferInput>>() as u64);
    assert!(object_bytes() < 2048, "{}", object_bytes());
}
