//! The Open Inference Protocol (KServe V2 / Triton) end to end, and every
//! element type through both request formats: real fixtures published into a
//! real repository, the real router on 127.0.0.1:0, real ONNX Runtime.
//!
//! `all_types` (one Identity per element type, tests/data/README.md) carries
//! each type in and out; its `limits` case holds each type's extremes.

mod common;

use bytes::Bytes;
use common::{TestServer, expected, repository};
use model_router::repository::{PublishRequest, Repository};
use serde_json::{Map, Value, json};

/// `all_types` as `.onnx` (version 1) and `.ort` (version 2).
fn all_types_repository() -> tempfile::TempDir {
    repository(&[
        ("all_types", "1", "all_types.onnx"),
        ("all_types", "2", "all_types.ort"),
        ("iris_logreg", "1", "iris_logreg.ort"),
    ])
}

/// The V2 datatype of each input and output of a fixture, from its expected file.
fn datatypes(model: &str) -> Map<String, Value> {
    let expected = expected(model);
    let signature = &expected["signature"];
    signature["inputs"]
        .as_array()
        .unwrap()
        .iter()
        .chain(signature["outputs"].as_array().unwrap())
        .map(|info| {
            (
                info["name"].as_str().unwrap().to_string(),
                info["datatype"].clone(),
            )
        })
        .collect()
}

/// Nested JSON arrays, flattened row-major.
fn flat(value: &Value) -> Vec<Value> {
    match value {
        Value::Array(items) => items.iter().flat_map(flat).collect(),
        leaf => vec![leaf.clone()],
    }
}

/// A V2 request for a case of an expected file; `nested` keeps `data` as the
/// file nests it, else it is sent flat (both are row-major).
fn v2_request(model: &str, case: &Value, nested: bool) -> Value {
    let types = datatypes(model);
    let inputs: Vec<Value> = case["inputs"]
        .as_object()
        .unwrap()
        .iter()
        .map(|(name, tensor)| {
            let data = if nested {
                tensor["data"].clone()
            } else {
                Value::Array(flat(&tensor["data"]))
            };
            json!({"name": name, "shape": tensor["shape"], "datatype": types[name], "data": data})
        })
        .collect();
    json!({ "inputs": inputs })
}

/// Element equality as the type defines it: floats compared after rounding to
/// the output's own precision (the expected file widens them to doubles, this
/// server prints their shortest form), everything else exactly.
fn assert_same_elements(datatype: &str, actual: &Value, expected: &Value, context: &str) {
    match (actual, expected) {
        (Value::Array(a), Value::Array(e)) => {
            assert_eq!(a.len(), e.len(), "{context}: {actual} vs {expected}");
            for (i, (a, e)) in a.iter().zip(e).enumerate() {
                assert_same_elements(datatype, a, e, &format!("{context}[{i}]"));
            }
        }
        (Value::Number(a), Value::Number(e)) if datatype.starts_with("FP") => {
            let (a, e) = (a.as_f64().unwrap(), e.as_f64().unwrap());
            match datatype {
                "FP16" => assert_eq!(half::f16::from_f64(a), half::f16::from_f64(e), "{context}"),
                "FP32" => assert_eq!(a as f32, e as f32, "{context}"),
                _ => assert_eq!(a, e, "{context}"),
            }
        }
        _ => assert_eq!(actual, expected, "{context}"),
    }
}

/// Checks a V2 response against a case's expected outputs: names in order,
/// datatype, shape and every element.
fn assert_v2_outputs(model: &str, answer: &Value, case: &Value, context: &str) {
    let types = datatypes(model);
    let want = case["outputs"].as_object().unwrap();
    let outputs = answer["outputs"].as_array().unwrap();
    assert_eq!(
        outputs
            .iter()
            .map(|o| o["name"].clone())
            .collect::<Vec<_>>(),
        want.keys().map(|k| json!(k)).collect::<Vec<_>>(),
        "{context}: every output, in model order"
    );
    for output in outputs {
        let name = output["name"].as_str().unwrap();
        let datatype = types[name].as_str().unwrap();
        assert_eq!(output["datatype"], datatype, "{context} {name}");
        assert_eq!(output["shape"], want[name]["shape"], "{context} {name}");
        assert_same_elements(
            datatype,
            &output["data"],
            &Value::Array(flat(&want[name]["data"])),
            &format!("{context} {name}"),
        );
    }
}

/// Asserts an error answer: its status, its code, and that its message
/// mentions each of `mentions`.
fn assert_error(answer: &(u16, Value), status: u16, code: &str, mentions: &[&str]) {
    let (got, body) = answer;
    assert_eq!(
        (*got, body["code"].as_str()),
        (status, Some(code)),
        "{body}"
    );
    let message = body["error"].as_str().unwrap_or_default();
    for mention in mentions {
        assert!(
            message.contains(mention),
            "{message:?} should mention {mention:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_metadata_and_health() {
    let root = all_types_repository();
    let server = TestServer::start(root.path(), 1 << 30).await;
    let (status, metadata) = server.get("/v2").await;
    assert_eq!(status, 200, "{metadata}");
    assert_eq!(metadata["name"], "model-router");
    assert_eq!(metadata["version"], env!("CARGO_PKG_VERSION"));
    assert_eq!(
        metadata["extensions"],
        json!(["binary_tensor_data", "model_configuration", "statistics"])
    );
    assert_eq!(
        server.get("/v2/health/live").await,
        (200, json!({"live": true}))
    );
    assert_eq!(
        server.get("/v2/health/ready").await,
        (200, json!({"ready": true}))
    );
    let answer = server.post("/v2/health/live", &json!({})).await;
    assert_error(&answer, 405, "method_not_allowed", &["GET"]);
    let answer = server.get("/v2/nothing").await;
    assert_error(&answer, 404, "route_not_found", &["/v2/nothing"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn model_metadata_gives_every_input_and_output_with_dynamic_dims_as_minus_one() {
    let root = all_types_repository();
    let server = TestServer::start(root.path(), 1 << 30).await;
    let want = expected("all_types");
    let strip = |infos: &Value| -> Vec<Value> {
        infos
            .as_array()
            .unwrap()
            .iter()
            .map(|i| json!({"name": i["name"], "datatype": i["datatype"], "shape": i["shape"]}))
            .collect()
    };
    for path in [
        "/v2/models/all_types",
        "/v2/models/all_types/versions/1",
        "/v2/models/all_types/versions/2",
    ] {
        let (status, metadata) = server.get(path).await;
        assert_eq!(status, 200, "{path}: {metadata}");
        assert_eq!(metadata["name"], "all_types");
        assert_eq!(metadata["versions"], json!(["1", "2"]));
        assert_eq!(metadata["platform"], "onnxruntime_onnx");
        let inputs = metadata["inputs"].as_array().unwrap();
        assert_eq!(inputs.len(), 13, "one input per element type");
        assert_eq!(
            metadata["inputs"],
            json!(strip(&want["signature"]["inputs"]))
        );
        assert_eq!(
            metadata["outputs"],
            json!(strip(&want["signature"]["outputs"]))
        );
    }
    // A ZipMap output has no V2 datatype: BYTES of JSON text, its ONNX type said.
    let (status, metadata) = server.get("/v2/models/iris_logreg/versions/1").await;
    assert_eq!(status, 200, "{metadata}");
    assert_eq!(
        metadata["inputs"],
        json!([{"name": "features", "datatype": "FP32", "shape": [-1, 4]}])
    );
    assert_eq!(
        metadata["outputs"],
        json!([
            {"name": "output_label", "datatype": "INT64", "shape": [-1]},
            {"name": "output_probability", "datatype": "BYTES", "shape": [-1],
             "parameters": {"onnx_type": "seq(map(int64,tensor(float)))"}},
        ])
    );

    for (path, code, mention) in [
        ("/v2/models/nope", "model_not_found", "nope"),
        ("/v2/models/all_types/versions/9", "version_not_found", "9"),
        (
            "/v2/models/nope/versions/1/ready",
            "model_not_found",
            "nope",
        ),
    ] {
        assert_error(&server.get(path).await, 404, code, &[mention]);
    }
    let answer = server.get("/v2/models/..%2F/versions/1").await;
    assert_error(&answer, 400, "invalid_name", &[]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readiness_resolves_the_version_without_loading_it() {
    let root = all_types_repository();
    let server = TestServer::start(root.path(), 1 << 30).await;
    let (status, ready) = server.get("/v2/models/all_types/versions/1/ready").await;
    assert_eq!(status, 200);
    assert_eq!(
        ready,
        json!({"name": "all_types", "version": "1", "ready": true, "loaded": false})
    );
    let (status, ready) = server.get("/v2/models/all_types/ready").await;
    assert_eq!((status, &ready["version"]), (200, &json!("2")), "latest");
    assert_eq!(server.service.cache_status().loads, 0);

    let case = &expected("all_types")["cases"][0];
    let (status, answer) = server
        .post(
            "/v2/models/all_types/versions/1/infer",
            &v2_request("all_types", case, true),
        )
        .await;
    assert_eq!(status, 200, "{answer}");
    let (_, ready) = server.get("/v2/models/all_types/versions/1/ready").await;
    assert_eq!(ready["loaded"], true);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_element_type_and_its_limits_round_trip_through_v2_nested_and_flat() {
    let root = all_types_repository();
    let server = TestServer::start(root.path(), 1 << 30).await;
    let want = expected("all_types");
    for version in ["1", "2"] {
        for case in want["cases"].as_array().unwrap() {
            for nested in [true, false] {
                let context = format!("all_types/{version} {} nested={nested}", case["name"]);
                let (status, answer) = server
                    .post(
                        &format!("/v2/models/all_types/versions/{version}/infer"),
                        &v2_request("all_types", case, nested),
                    )
                    .await;
                assert_eq!(status, 200, "{context}: {answer}");
                assert_eq!(answer["model_name"], "all_types");
                assert_eq!(answer["model_version"], version);
                assert!(answer.get("id").is_none(), "no id given, none echoed");
                assert_v2_outputs("all_types", &answer, case, &context);
            }
        }
    }
    // The latest route answers with the concrete version.
    let case = &want["cases"][0];
    let (status, answer) = server
        .post(
            "/v2/models/all_types/infer",
            &v2_request("all_types", case, true),
        )
        .await;
    assert_eq!((status, &answer["model_version"]), (200, &json!("2")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_element_type_and_its_limits_round_trip_through_simple_predict() {
    let root = all_types_repository();
    let server = TestServer::start(root.path(), 1 << 30).await;
    let want = expected("all_types");
    let types = datatypes("all_types");
    for version in ["1", "2"] {
        for case in want["cases"].as_array().unwrap() {
            let inputs: Map<String, Value> = case["inputs"]
                .as_object()
                .unwrap()
                .iter()
                .map(|(name, tensor)| (name.clone(), tensor["data"].clone()))
                .collect();
            let context = format!("all_types/{version} {}", case["name"]);
            let (status, answer) = server
                .post(
                    &format!("/models/all_types/{version}/predict"),
                    &json!({ "inputs": inputs }),
                )
                .await;
            assert_eq!(status, 200, "{context}: {answer}");
            let outputs = answer["outputs"].as_object().unwrap();
            assert_eq!(outputs.len(), 13, "{context}");
            for (name, tensor) in case["outputs"].as_object().unwrap() {
                assert_same_elements(
                    types[name].as_str().unwrap(),
                    &outputs[name],
                    &tensor["data"],
                    &format!("{context} {name}"),
                );
            }
            assert_eq!(answer["prediction"], outputs["out_bool"]);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_largest_floats_this_server_prints_are_accepted_back() {
    // f32::MAX prints as 3.4028235e38, a hair above f32::MAX as a double; it
    // must still be read as f32::MAX, not refused as out of range.
    let root = all_types_repository();
    let server = TestServer::start(root.path(), 1 << 30).await;
    let limits = expected("all_types")["cases"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "limits")
        .unwrap()
        .clone();
    let request = v2_request("all_types", &limits, true);
    let (status, first) = server
        .post("/v2/models/all_types/versions/1/infer", &request)
        .await;
    assert_eq!(status, 200, "{first}");
    // Feed every output back in as the input of the same type.
    let inputs: Vec<Value> = first["outputs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|output| {
            let name = output["name"].as_str().unwrap().replace("out_", "in_");
            json!({"name": name, "shape": output["shape"], "datatype": output["datatype"], "data": output["data"]})
        })
        .collect();
    let (status, second) = server
        .post(
            "/v2/models/all_types/versions/1/infer",
            &json!({ "inputs": inputs }),
        )
        .await;
    assert_eq!(status, 200, "{second}");
    assert_eq!(second["outputs"], first["outputs"]);
    let fp32 = second["outputs"]
        .as_array()
        .unwrap()
        .iter()
        .find(|o| o["name"] == "out_float32")
        .unwrap();
    assert_eq!(fp32["data"][0].as_f64().unwrap() as f32, f32::MAX);
}

/// The `limits` case with one element of one input replaced by `value`.
fn limits_with(input: &str, value: Value) -> (Value, Map<String, Value>) {
    let limits = expected("all_types")["cases"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "limits")
        .unwrap()
        .clone();
    let mut case = limits;
    case["inputs"][input]["data"][0][1] = value;
    let simple: Map<String, Value> = case["inputs"]
        .as_object()
        .unwrap()
        .iter()
        .map(|(name, tensor)| (name.clone(), tensor["data"].clone()))
        .collect();
    (v2_request("all_types", &case, true), simple)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn out_of_range_values_answer_400_naming_the_input_in_both_formats() {
    let root = all_types_repository();
    let server = TestServer::start(root.path(), 1 << 30).await;
    // serde_json reads 18446744073709551616 (u64::MAX + 1) as a float.
    let too_big_u64: Value = serde_json::from_str("18446744073709551616").unwrap();
    let too_small_i64: Value = serde_json::from_str("-9223372036854775809").unwrap();
    let cases: Vec<(&str, Value, &str)> = vec![
        ("in_uint8", json!(300), "0..=255"),
        ("in_uint8", json!(-1), "0..=255"),
        ("in_uint16", json!(-1), "0..=65535"),
        ("in_uint16", json!(65536), "0..=65535"),
        ("in_uint32", json!(-1), "0..=4294967295"),
        ("in_uint64", json!(-1), "0..=18446744073709551615"),
        ("in_uint64", too_big_u64, "0..=18446744073709551615"),
        ("in_int8", json!(128), "-128..=127"),
        ("in_int8", json!(-129), "-128..=127"),
        ("in_int16", json!(32768), "-32768..=32767"),
        (
            "in_int32",
            json!(2147483648_i64),
            "-2147483648..=2147483647",
        ),
        ("in_int64", json!(1.5), "an integer"),
        ("in_int64", too_small_i64, "an integer"),
        ("in_int32", json!(2.5), "an integer"),
        ("in_uint8", json!("7"), "an integer"),
        ("in_float32", json!(1e40), "3.4028235e38"),
        ("in_float32", json!(-1e39), "3.4028235e38"),
        ("in_float16", json!(65520.0), "65504"),
        ("in_float16", json!(1e6), "65504"),
        ("in_float64", json!("1.0"), "a number"),
        ("in_bool", json!(1), "true or false"),
        ("in_bool", json!("true"), "true or false"),
        ("in_string", json!(5), "a string"),
        ("in_string", json!(null), "a string"),
    ];
    for (input, value, expectation) in cases {
        let (v2, simple) = limits_with(input, value.clone());
        for (path, body) in [
            ("/v2/models/all_types/versions/1/infer", v2),
            ("/models/all_types/1/predict", json!({ "inputs": simple })),
        ] {
            let (status, answer) = server.post(path, &body).await;
            let context = format!("{path} {input} = {value}");
            assert_eq!(status, 400, "{context}: {answer}");
            assert_eq!(answer["code"], "invalid_input", "{context}");
            let message = answer["error"].as_str().unwrap();
            assert!(
                message.contains(&format!("\"{input}\"")) && message.contains(expectation),
                "{context}: {message:?} should name the input and say {expectation:?}"
            );
            assert!(message.contains("element 1"), "{context}: {message}");
        }
    }
    assert_eq!(server.service.cache_status().load_failures, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outputs_are_selected_ids_echoed_and_bad_requests_named() {
    let root = all_types_repository();
    let server = TestServer::start(root.path(), 1 << 30).await;
    let case = &expected("all_types")["cases"][1];
    let mut request = v2_request("all_types", case, true);
    request["id"] = json!("request-42");
    request["outputs"] = json!([{"name": "out_string"}, {"name": "out_int8"}]);
    let (status, answer) = server
        .post("/v2/models/all_types/versions/2/infer", &request)
        .await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["id"], "request-42");
    assert_eq!(
        answer["outputs"],
        json!([
            {"name": "out_string", "datatype": "BYTES", "shape": [3, 2], "data": ["a", "b", "c", "d", "e", "f"]},
            {"name": "out_int8", "datatype": "INT8", "shape": [3, 2], "data": [1, 2, 3, 4, 5, 6]},
        ]),
        "only the requested outputs, in the requested order"
    );

    // KServe's Python client sends null for what it does not set.
    let mut nulls = v2_request("all_types", case, false);
    nulls["id"] = Value::Null;
    nulls["parameters"] = Value::Null;
    nulls["outputs"] = Value::Null;
    nulls["inputs"][0]["parameters"] = Value::Null;
    let (status, answer) = server
        .post("/v2/models/all_types/versions/2/infer", &nulls)
        .await;
    assert_eq!(status, 200, "{answer}");
    assert!(answer.get("id").is_none());
    assert_v2_outputs("all_types", &answer, case, "nulls");

    let path = "/v2/models/all_types/versions/2/infer";
    let with = |edit: &dyn Fn(&mut Value)| {
        let mut request = v2_request("all_types", case, true);
        edit(&mut request);
        request.to_string()
    };
    let bad: Vec<(String, u16, &str, Vec<&str>)> = vec![
        ("{\"inputs\": [".into(), 400, "invalid_json", vec!["JSON"]),
        (
            with(&|r| r["outputs"] = json!([{"name": "out_nope"}])),
            400,
            "invalid_input",
            vec!["out_nope", "out_bool"],
        ),
        (
            with(&|r| r["outputs"] = json!([{"name": "out_int8"}, {"name": "out_int8"}])),
            400,
            "invalid_input",
            vec!["out_int8", "more than once"],
        ),
        (
            with(&|r| r["inputs"][0]["datatype"] = json!("INT32")),
            400,
            "invalid_input",
            vec!["\"in_bool\"", "INT32", "BOOL"],
        ),
        (
            with(&|r| r["inputs"][0]["datatype"] = json!("FLOAT")),
            400,
            "invalid_input",
            vec!["\"in_bool\"", "FLOAT", "FP32"],
        ),
        (
            with(&|r| r["inputs"][1]["shape"] = json!([3, 3])),
            400,
            "invalid_input",
            vec!["\"in_int8\"", "9 elements", "6 data elements"],
        ),
        (
            with(&|r| r["inputs"][1]["shape"] = json!([6])),
            400,
            "invalid_input",
            vec!["in_int8", "rank 2"],
        ),
        (
            with(&|r| r["inputs"][1]["shape"] = json!([-3, 2])),
            400,
            "invalid_input",
            vec!["\"in_int8\"", "negative"],
        ),
        (
            with(&|r| r["inputs"][1]["shape"] = json!([i64::MAX, i64::MAX])),
            400,
            "invalid_input",
            vec!["\"in_int8\"", "overflows"],
        ),
        (
            with(&|r| {
                r["inputs"].as_array_mut().unwrap().remove(12);
            }),
            400,
            "invalid_input",
            vec!["in_string", "missing"],
        ),
        (
            with(&|r| r["inputs"][0]["name"] = json!("in_nope")),
            400,
            "invalid_input",
            vec!["in_nope", "in_bool: bool"],
        ),
        (
            with(&|r| r["inputs"][1]["data"] = json!([[1, 2], [3]])),
            400,
            "invalid_input",
            vec!["\"in_int8\"", "ragged"],
        ),
        (
            with(&|r| {
                r["inputs"][1].as_object_mut().unwrap().remove("data");
            }),
            400,
            "invalid_input",
            vec!["\"in_int8\"", "\"data\""],
        ),
        (
            with(&|r| r["output"] = json!([])),
            400,
            "invalid_input",
            vec!["output", "Open Inference Protocol", "\"outputs\""],
        ),
        (
            with(&|r| {
                r["outputs"] = json!([{"name": "out_bool", "parameters": {"classification": 2}}])
            }),
            400,
            "not_supported",
            vec!["out_bool", "classification"],
        ),
        (
            with(&|r| r["inputs"][0]["parameters"] = json!({"shared_memory_region": "r"})),
            400,
            "not_supported",
            vec!["in_bool", "shared_memory_region"],
        ),
    ];
    for (body, status, code, mentions) in bad {
        let answer = server.request("POST", path, &body).await;
        assert_error(&answer, status, code, &mentions);
    }
    assert_error(
        &server.get(path).await,
        405,
        "method_not_allowed",
        &["POST"],
    );
    let answer = server
        .post(
            "/v2/models/nope/infer",
            &v2_request("all_types", case, true),
        )
        .await;
    assert_error(&answer, 404, "model_not_found", &["nope"]);
    assert_eq!(server.service.cache_status().load_failures, 0);
}

// ---- the binary tensor data extension ----------------------------------------

/// The binary form of flat JSON elements of `datatype` (the extension's wire
/// format, written independently of the server's encoder).
fn binary_elements(datatype: &str, elements: &[Value]) -> Vec<u8> {
    let mut out = Vec::new();
    for e in elements {
        match datatype {
            "BOOL" => out.push(u8::from(e.as_bool().unwrap())),
            "INT8" => out.extend((e.as_i64().unwrap() as i8).to_le_bytes()),
            "INT16" => out.extend((e.as_i64().unwrap() as i16).to_le_bytes()),
            "INT32" => out.extend((e.as_i64().unwrap() as i32).to_le_bytes()),
            "INT64" => out.extend(e.as_i64().unwrap().to_le_bytes()),
            "UINT8" => out.extend((e.as_u64().unwrap() as u8).to_le_bytes()),
            "UINT16" => out.extend((e.as_u64().unwrap() as u16).to_le_bytes()),
            "UINT32" => out.extend((e.as_u64().unwrap() as u32).to_le_bytes()),
            "UINT64" => out.extend(e.as_u64().unwrap().to_le_bytes()),
            "FP16" => out.extend(half::f16::from_f64(e.as_f64().unwrap()).to_le_bytes()),
            "FP32" => out.extend((e.as_f64().unwrap() as f32).to_le_bytes()),
            "FP64" => out.extend(e.as_f64().unwrap().to_le_bytes()),
            "BYTES" => {
                let s = e.as_str().unwrap().as_bytes();
                out.extend((s.len() as u32).to_le_bytes());
                out.extend(s);
            }
            other => panic!("no datatype {other}"),
        }
    }
    out
}

/// Flat JSON elements read back from binary data of `datatype`.
fn elements_of_binary(datatype: &str, mut bytes: &[u8]) -> Vec<Value> {
    let mut out = Vec::new();
    let take = |n: usize, bytes: &mut &[u8]| {
        let (head, tail) = bytes.split_at(n);
        *bytes = tail;
        head.to_vec()
    };
    while !bytes.is_empty() {
        let value = match datatype {
            "BOOL" => json!(take(1, &mut bytes)[0] == 1),
            "INT8" => json!(i8::from_le_bytes(take(1, &mut bytes).try_into().unwrap())),
            "INT16" => json!(i16::from_le_bytes(take(2, &mut bytes).try_into().unwrap())),
            "INT32" => json!(i32::from_le_bytes(take(4, &mut bytes).try_into().unwrap())),
            "INT64" => json!(i64::from_le_bytes(take(8, &mut bytes).try_into().unwrap())),
            "UINT8" => json!(take(1, &mut bytes)[0]),
            "UINT16" => json!(u16::from_le_bytes(take(2, &mut bytes).try_into().unwrap())),
            "UINT32" => json!(u32::from_le_bytes(take(4, &mut bytes).try_into().unwrap())),
            "UINT64" => json!(u64::from_le_bytes(take(8, &mut bytes).try_into().unwrap())),
            "FP16" => {
                json!(half::f16::from_le_bytes(take(2, &mut bytes).try_into().unwrap()).to_f64())
            }
            "FP32" => json!(f32::from_le_bytes(take(4, &mut bytes).try_into().unwrap()) as f64),
            "FP64" => json!(f64::from_le_bytes(take(8, &mut bytes).try_into().unwrap())),
            "BYTES" => {
                let length = u32::from_le_bytes(take(4, &mut bytes).try_into().unwrap()) as usize;
                json!(String::from_utf8(take(length, &mut bytes)).unwrap())
            }
            other => panic!("no datatype {other}"),
        };
        out.push(value);
    }
    out
}

/// Sends one request straight to the router (no socket), with `headers`.
async fn call(
    server: &TestServer,
    path: &str,
    headers: &[(&str, String)],
    body: Vec<u8>,
) -> http::Response<Bytes> {
    let mut request = http::Request::builder().method("POST").uri(path);
    for (name, value) in headers {
        request = request.header(*name, value);
    }
    model_router::http::handle(&server.service, request.body(Bytes::from(body)).unwrap()).await
}

/// A V2 body: `header` as JSON, then `binary`, with the header that says where one ends.
fn binary_body(header: &Value, binary: &[u8]) -> (Vec<(&'static str, String)>, Vec<u8>) {
    let mut body = header.to_string().into_bytes();
    let headers = vec![("Inference-Header-Content-Length", body.len().to_string())];
    body.extend_from_slice(binary);
    (headers, body)
}

/// Splits a binary response into its JSON header and each output's flat elements.
fn read_binary_response(response: &http::Response<Bytes>) -> (Value, Map<String, Value>) {
    let length: usize = response.headers()["inference-header-content-length"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    let body = response.body();
    let header: Value = serde_json::from_slice(&body[..length]).unwrap();
    let mut rest = &body[length..];
    let mut elements = Map::new();
    for output in header["outputs"].as_array().unwrap() {
        let data = match output["parameters"]["binary_data_size"].as_u64() {
            Some(size) => {
                let (mine, tail) = rest.split_at(size as usize);
                rest = tail;
                elements_of_binary(output["datatype"].as_str().unwrap(), mine)
            }
            None => output["data"].as_array().unwrap().clone(),
        };
        elements.insert(output["name"].as_str().unwrap().into(), Value::Array(data));
    }
    assert!(rest.is_empty(), "every byte belongs to an output");
    (header, elements)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn binary_tensor_data_carries_every_element_type_both_ways() {
    let root = all_types_repository();
    let server = TestServer::start(root.path(), 1 << 30).await;
    let want = expected("all_types");
    let types = datatypes("all_types");
    for case in want["cases"].as_array().unwrap() {
        // Every other input binary, the rest JSON; outputs binary by default,
        // out_bool asked for as JSON.
        let mut binary = Vec::new();
        let inputs: Vec<Value> = case["inputs"]
            .as_object()
            .unwrap()
            .iter()
            .enumerate()
            .map(|(i, (name, tensor))| {
                let datatype = types[name].as_str().unwrap();
                let mut input =
                    json!({"name": name, "shape": tensor["shape"], "datatype": datatype});
                if i % 2 == 0 {
                    let bytes = binary_elements(datatype, &flat(&tensor["data"]));
                    input["parameters"] = json!({"binary_data_size": bytes.len()});
                    binary.extend(bytes);
                } else {
                    input["data"] = tensor["data"].clone();
                }
                input
            })
            .collect();
        let mut outputs: Vec<Value> = case["outputs"]
            .as_object()
            .unwrap()
            .keys()
            .map(|name| json!({"name": name}))
            .collect();
        outputs[0]["parameters"] = json!({"binary_data": false});
        let header = json!({
            "id": "binary",
            "inputs": inputs,
            "outputs": outputs,
            "parameters": {"binary_data_output": true},
        });
        let (headers, body) = binary_body(&header, &binary);
        let response = call(
            &server,
            "/v2/models/all_types/versions/2/infer",
            &headers,
            body,
        )
        .await;
        let context = format!("binary {}", case["name"]);
        assert_eq!(response.status(), 200, "{context}: {:?}", response.body());
        assert_eq!(
            response.headers()["content-type"],
            "application/octet-stream"
        );
        let (answer, elements) = read_binary_response(&response);
        assert_eq!(answer["id"], "binary");
        for output in answer["outputs"].as_array().unwrap() {
            let name = output["name"].as_str().unwrap();
            assert_eq!(
                output.get("data").is_some(),
                name == "out_bool",
                "{context}: only out_bool as JSON"
            );
            assert_eq!(output["shape"], case["outputs"][name]["shape"]);
            assert_same_elements(
                types[name].as_str().unwrap(),
                &elements[name],
                &Value::Array(flat(&case["outputs"][name]["data"])),
                &format!("{context} {name}"),
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_binary_requests_are_refused_with_what_was_expected() {
    let root = all_types_repository();
    let server = TestServer::start(root.path(), 1 << 30).await;
    let path = "/v2/models/all_types/versions/1/infer";
    let case = &expected("all_types")["cases"][0];
    // in_int32 [1, 2] as 8 binary bytes, the rest JSON.
    let header_for = |size: usize| {
        let mut request = v2_request("all_types", case, true);
        request["inputs"][3].as_object_mut().unwrap().remove("data");
        request["inputs"][3]["parameters"] = json!({"binary_data_size": size});
        request
    };
    let int32 = binary_elements("INT32", &[json!(-32), json!(32)]);
    // The well-formed request works, and answers JSON when no output asks for binary.
    let (headers, body) = binary_body(&header_for(8), &int32);
    let response = call(&server, path, &headers, body).await;
    assert_eq!(response.status(), 200, "{:?}", response.body());
    assert_eq!(response.headers()["content-type"], "application/json");
    let answer: Value = serde_json::from_slice(response.body()).unwrap();
    assert_v2_outputs("all_types", &answer, case, "binary in, JSON out");

    // (headers, body, what the error must mention)
    type Case<'a> = (Vec<(&'a str, String)>, Vec<u8>, Vec<&'a str>);
    let mut cases: Vec<Case> = Vec::new();
    // Too few bytes for the shape.
    let (headers, body) = binary_body(&header_for(4), &int32[..4]);
    cases.push((
        headers,
        body,
        vec!["\"in_int32\"", "4 bytes", "2 elements of 4 bytes"],
    ));
    // More bytes than any input claims.
    let (headers, body) = binary_body(&header_for(8), &[int32.clone(), vec![0; 3]].concat());
    cases.push((headers, body, vec!["3 bytes", "binary_data_size"]));
    // Binary data declared, but no header to find it.
    let (_, body) = binary_body(&header_for(8), &[]);
    cases.push((
        vec![],
        body,
        vec!["\"in_int32\"", "Inference-Header-Content-Length"],
    ));
    // A header length beyond the body.
    let (_, body) = binary_body(&header_for(8), &int32);
    let beyond = vec![(
        "Inference-Header-Content-Length",
        (body.len() + 1).to_string(),
    )];
    cases.push((
        beyond,
        body,
        vec!["Inference-Header-Content-Length", "body has"],
    ));
    let (_, body) = binary_body(&header_for(8), &int32);
    let garbled = vec![("Inference-Header-Content-Length", "twelve".to_string())];
    cases.push((
        garbled,
        body,
        vec!["Inference-Header-Content-Length", "twelve"],
    ));
    // Both data and binary_data_size.
    let mut both = v2_request("all_types", case, true);
    both["inputs"][3]["parameters"] = json!({"binary_data_size": 8});
    let (headers, body) = binary_body(&both, &int32);
    cases.push((headers, body, vec!["\"in_int32\"", "both"]));
    // A BYTES element that is not UTF-8.
    let mut strings = v2_request("all_types", case, true);
    strings["inputs"][12]
        .as_object_mut()
        .unwrap()
        .remove("data");
    let not_utf8 = [&[1u8, 0, 0, 0, 0xff][..], &[1, 0, 0, 0, b'a']].concat();
    strings["inputs"][12]["parameters"] = json!({"binary_data_size": not_utf8.len()});
    let (headers, body) = binary_body(&strings, &not_utf8);
    cases.push((headers, body, vec!["\"in_string\"", "element 0", "UTF-8"]));
    // A BOOL byte that is neither 0 nor 1.
    let mut bools = v2_request("all_types", case, true);
    bools["inputs"][0].as_object_mut().unwrap().remove("data");
    bools["inputs"][0]["parameters"] = json!({"binary_data_size": 2});
    let (headers, body) = binary_body(&bools, &[1, 7]);
    cases.push((headers, body, vec!["\"in_bool\"", "element 1", "0 or 1"]));

    for (headers, body, mentions) in cases {
        let response = call(&server, path, &headers, body).await;
        let answer = (
            response.status().as_u16(),
            serde_json::from_slice(response.body()).unwrap(),
        );
        assert_error(&answer, 400, "invalid_input", &mentions);
    }
}

// ---- outputs JSON cannot carry faithfully -----------------------------------

/// Just enough of the ONNX protobuf format to write tiny models by hand, for
/// cases no converter makes on purpose (so the fixtures script has none).
mod onnx {
    fn varint(mut n: u64, out: &mut Vec<u8>) {
        while n >= 0x80 {
            out.push((n as u8) | 0x80);
            n >>= 7;
        }
        out.push(n as u8);
    }

    /// A varint field.
    pub fn int(field: u32, n: u64) -> Vec<u8> {
        let mut out = Vec::new();
        varint(u64::from(field) << 3, &mut out);
        varint(n, &mut out);
        out
    }

    /// A length-delimited field (bytes, string, or an embedded message).
    pub fn bytes(field: u32, data: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        varint((u64::from(field) << 3) | 2, &mut out);
        varint(data.len() as u64, &mut out);
        out.extend_from_slice(data);
        out
    }

    pub fn message(field: u32, parts: &[Vec<u8>]) -> Vec<u8> {
        bytes(field, &parts.concat())
    }

    /// `TensorProto.DataType` values.
    pub const FLOAT: u64 = 1;
    pub const STRING: u64 = 8;
    pub const BFLOAT16: u64 = 16;

    /// A graph input (`field` 11) or output (12): a tensor of `elem_type`
    /// with one dimension, named `batch`.
    pub fn value(field: u32, name: &str, elem_type: u64) -> Vec<u8> {
        let dim = message(1, &[bytes(2, b"batch")]);
        let tensor_type = message(1, &[int(1, elem_type), message(2, &[dim])]);
        message(
            field,
            &[bytes(1, name.as_bytes()), message(2, &[tensor_type])],
        )
    }

    /// A node: its inputs, one output, its op type and attributes.
    pub fn node(inputs: &[&str], output: &str, op_type: &str, attributes: &[Vec<u8>]) -> Vec<u8> {
        let mut parts: Vec<Vec<u8>> = inputs.iter().map(|i| bytes(1, i.as_bytes())).collect();
        parts.push(bytes(2, output.as_bytes()));
        parts.push(bytes(4, op_type.as_bytes()));
        parts.extend(attributes.iter().map(|a| bytes(5, a)));
        message(1, &parts)
    }

    /// An integer attribute.
    pub fn int_attribute(name: &str, value: u64) -> Vec<u8> {
        const INT: u64 = 2;
        [bytes(1, name.as_bytes()), int(3, value), int(20, INT)].concat()
    }

    /// A `value` attribute holding a one-element string tensor of raw `bytes`.
    pub fn string_tensor_attribute(data: &[u8]) -> Vec<u8> {
        const TENSOR: u64 = 4;
        let tensor = message(5, &[int(1, 1), int(2, STRING), bytes(6, data)]);
        [bytes(1, b"value"), tensor, int(20, TENSOR)].concat()
    }

    /// A model (IR version 8, default domain at opset 17).
    pub fn model(name: &str, parts: &[Vec<u8>]) -> Vec<u8> {
        let mut graph = parts.to_vec();
        graph.push(bytes(2, name.as_bytes()));
        [
            int(1, 8),
            message(7, &graph),
            message(8, &[bytes(1, b""), int(2, 17)]),
        ]
        .concat()
    }
}

/// A repository at `<dir>/repo` holding each `(name, ONNX bytes)` as version
/// 1, published with the real `publish`.
fn repository_with(models: &[(&str, Vec<u8>)]) -> tempfile::TempDir {
    let root = tempfile::tempdir().unwrap();
    std::fs::create_dir(root.path().join("repo")).unwrap();
    let repository = Repository::open(&root.path().join("repo")).unwrap();
    for (name, model) in models {
        let file = root.path().join(format!("{name}.onnx"));
        std::fs::write(&file, model).unwrap();
        repository
            .publish(&PublishRequest {
                name: name.to_string(),
                version: "1".into(),
                source: file,
                team: None,
                description: Some("built by tests/v2.rs".into()),
            })
            .unwrap();
    }
    root
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_string_output_that_is_not_utf8_fails_the_request_and_only_it() {
    use onnx::{STRING, model, node, string_tensor_attribute, value};
    // `echo` = Identity(text); `raw` = a Constant string holding the bytes FF
    // FE, which are not UTF-8. ONNX string tensors are bytes
    // (`TensorProto.string_data` is `repeated bytes`); ONNX Runtime hands them
    // back as they are.
    let root = repository_with(&[(
        "non_utf8",
        model(
            "non_utf8",
            &[
                node(
                    &[],
                    "raw",
                    "Constant",
                    &[string_tensor_attribute(&[0xff, 0xfe])],
                ),
                node(&["text"], "echo", "Identity", &[]),
                value(11, "text", STRING),
                value(12, "echo", STRING),
                value(12, "raw", STRING),
            ],
        ),
    )]);
    let server = TestServer::start(&root.path().join("repo"), 1 << 30).await;
    let input = json!({"name": "text", "shape": [2], "datatype": "BYTES", "data": ["a", "é"]});

    // The model loads, and its UTF-8 output is fine on its own.
    let (status, answer) = server
        .post(
            "/v2/models/non_utf8/versions/1/infer",
            &json!({"inputs": [input], "outputs": [{"name": "echo"}]}),
        )
        .await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["outputs"][0]["data"], json!(["a", "é"]));

    // Asking for the non-UTF-8 output fails, naming it, in both formats and
    // in binary too (the server holds BYTES as text, so it has no bytes to send).
    for (path, body) in [
        (
            "/v2/models/non_utf8/versions/1/infer",
            json!({"inputs": [input]}),
        ),
        (
            "/v2/models/non_utf8/versions/1/infer",
            json!({"inputs": [input], "outputs": [{"name": "raw", "parameters": {"binary_data": true}}]}),
        ),
        (
            "/models/non_utf8/1/predict",
            json!({"inputs": {"text": ["a", "é"]}}),
        ),
    ] {
        let answer = server.post(path, &body).await;
        assert_error(&answer, 500, "inference_failed", &["'raw'", "utf-8"]);
    }
    // The model stays cached and serves the next request.
    let (status, _) = server
        .post(
            "/v2/models/non_utf8/versions/1/infer",
            &json!({"inputs": [input], "outputs": [{"name": "echo"}]}),
        )
        .await;
    assert_eq!(status, 200);
    assert_eq!(server.service.cache_status().loads, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn element_types_outside_the_protocol_are_refused_by_name() {
    use onnx::{BFLOAT16, FLOAT, int_attribute, model, node, value};
    // `half` = Cast(x, bfloat16), `copy` = Identity(x); and a second model
    // whose input is bfloat16.
    let root = repository_with(&[
        (
            "bf16_out",
            model(
                "bf16_out",
                &[
                    node(&["x"], "half", "Cast", &[int_attribute("to", BFLOAT16)]),
                    node(&["x"], "copy", "Identity", &[]),
                    value(11, "x", FLOAT),
                    value(12, "half", BFLOAT16),
                    value(12, "copy", FLOAT),
                ],
            ),
        ),
        (
            "bf16_in",
            model(
                "bf16_in",
                &[
                    node(&["b"], "y", "Identity", &[]),
                    value(11, "b", BFLOAT16),
                    value(12, "y", BFLOAT16),
                ],
            ),
        ),
    ]);
    let server = TestServer::start(&root.path().join("repo"), 1 << 30).await;
    let x = json!({"name": "x", "shape": [2], "datatype": "FP32", "data": [1.5, -2.0]});

    let (status, metadata) = server.get("/v2/models/bf16_out").await;
    assert_eq!(status, 200, "{metadata}");
    assert_eq!(
        metadata["outputs"][0],
        json!({"name": "half", "datatype": "BYTES", "shape": [-1], "parameters": {"onnx_type": "tensor(bfloat16)"}})
    );
    let answer = server
        .post("/v2/models/bf16_out/infer", &json!({"inputs": [x]}))
        .await;
    assert_error(&answer, 500, "inference_failed", &["'half'", "bfloat16"]);
    let (status, answer) = server
        .post(
            "/v2/models/bf16_out/infer",
            &json!({"inputs": [x], "outputs": [{"name": "copy"}]}),
        )
        .await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["outputs"][0]["data"], json!([1.5, -2.0]));

    let answer = server
        .post(
            "/v2/models/bf16_in/infer",
            &json!({"inputs": [{"name": "b", "shape": [1], "datatype": "FP16", "data": [1.0]}]}),
        )
        .await;
    assert_error(&answer, 400, "invalid_input", &["\"b\"", "bfloat16"]);
}

// ---- the 6 MB limit in every front door ---------------------------------------

/// A V2 request for `mlp` padded with spaces (still valid JSON) to exactly `size` bytes.
fn padded_infer(size: usize) -> String {
    let mut body = json!({
        "inputs": [{"name": "features", "shape": [1, 4], "datatype": "FP32", "data": [0.5, -1.25, 2.0, 0.75]}]
    })
    .to_string();
    assert!(body.len() <= size);
    body.extend(std::iter::repeat_n(' ', size - body.len()));
    body
}

const LAMBDA_LIMIT: usize = 6_000_000;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_refuses_bodies_over_6_mb_by_default() {
    let root = repository(&[("mlp", "1", "mlp.ort")]);
    let server = TestServer::start(root.path(), 1 << 30).await;
    assert_eq!(server.service.config().max_request_bytes, LAMBDA_LIMIT);
    let path = "/v2/models/mlp/versions/1/infer";
    let (status, answer) = server
        .request("POST", path, &padded_infer(LAMBDA_LIMIT))
        .await;
    assert_eq!(status, 200, "exactly the limit is accepted: {answer}");
    let answer = server
        .request("POST", path, &padded_infer(LAMBDA_LIMIT + 1))
        .await;
    assert_error(&answer, 413, "payload_too_large", &["6000001", "6000000"]);
}

/// The API Gateway HTTP API (v2) event fixture, turned into a V2 infer with `body`.
fn lambda_event(body: &str) -> String {
    lambda_event_value(Value::String(body.to_string())).to_string()
}

fn lambda_event_value(body: Value) -> Value {
    let path = Value::String("/v2/models/mlp/versions/1/infer".into());
    let template = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/data/events/apigw_v2_predict.json"),
    )
    .unwrap();
    let mut event: Value = serde_json::from_str(&template).unwrap();
    event["rawPath"] = path.clone();
    event["requestContext"]["http"]["path"] = path;
    event["routeKey"] = json!("POST /v2/models/{name}/versions/{version}/infer");
    event["requestContext"]["routeKey"] = event["routeKey"].clone();
    event["body"] = body;
    event
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lambda_refuses_bodies_over_6_mb() {
    let root = repository(&[("mlp", "1", "mlp.ort")]);
    let server = TestServer::start(root.path(), 1 << 30).await;
    let answer =
        model_router::lambda::invoke(&server.service, &lambda_event(&padded_infer(LAMBDA_LIMIT)))
            .await
            .unwrap();
    assert_eq!(answer["statusCode"], 200, "exactly the limit is accepted");
    let body: Value = serde_json::from_str(answer["body"].as_str().unwrap()).unwrap();
    assert_eq!(body["outputs"][0]["name"], "scores", "{body}");

    let answer = model_router::lambda::invoke(
        &server.service,
        &lambda_event(&padded_infer(LAMBDA_LIMIT + 1)),
    )
    .await
    .unwrap();
    assert_eq!(answer["statusCode"], 413, "{answer}");
    let body: Value = serde_json::from_str(answer["body"].as_str().unwrap()).unwrap();
    assert_eq!(body["code"], "payload_too_large");
    assert_eq!(
        server.service.cache_status().loads,
        1,
        "the refused request loaded nothing"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn binary_tensor_data_through_the_lambda_front_door() {
    use base64::Engine as _;
    let base64 = base64::engine::general_purpose::STANDARD;
    let root = repository(&[("mlp", "1", "mlp.ort")]);
    let server = TestServer::start(root.path(), 1 << 30).await;
    let case = &expected("mlp")["cases"][1];
    let features = flat(&case["inputs"]["features"]["data"]);
    let binary = binary_elements("FP32", &features);
    let header = json!({
        "inputs": [{"name": "features", "shape": case["inputs"]["features"]["shape"], "datatype": "FP32",
                    "parameters": {"binary_data_size": binary.len()}}],
        "outputs": [{"name": "label", "parameters": {"binary_data": true}}],
    });
    let (headers, body) = binary_body(&header, &binary);
    // API Gateway base64-encodes a body it does not treat as text.
    let mut event = lambda_event_value(Value::String(base64.encode(&body)));
    event["isBase64Encoded"] = json!(true);
    event["headers"]["inference-header-content-length"] = json!(headers[0].1);
    let answer = model_router::lambda::invoke(&server.service, &event.to_string())
        .await
        .unwrap();
    assert_eq!(answer["statusCode"], 200, "{answer}");
    let text = answer["body"].as_str().unwrap();
    let body = if answer["isBase64Encoded"] == true {
        base64.decode(text).unwrap()
    } else {
        text.as_bytes().to_vec()
    };
    let length: usize = answer["headers"]["inference-header-content-length"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    let response: Value = serde_json::from_slice(&body[..length]).unwrap();
    assert_eq!(
        response["outputs"][0]["parameters"]["binary_data_size"], 24,
        "{response}"
    );
    assert_eq!(
        elements_of_binary("INT64", &body[length..]),
        flat(&case["outputs"]["label"]["data"])
    );
}
