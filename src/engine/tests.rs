//! The engine over the real fixtures in `tests/data/models` (made by
//! `scripts/make_fixtures.py`; see `tests/data/README.md`): every model, both
//! formats, against the outputs onnxruntime's Python binding computed.
//!
//! Needs `libonnxruntime.so` (`scripts/setup-ort.sh`, or `ORT_DYLIB_PATH`).

use std::path::{Path, PathBuf};

use serde_json::Value as Json;

use super::*;

fn engine() -> Engine {
    let explicit = std::env::var_os("ORT_DYLIB_PATH").map(PathBuf::from);
    let dylib_path = find_library(explicit.as_deref()).expect("a library path");
    Engine::init(&EngineConfig {
        dylib_path,
        intra_threads: 1,
    })
    .expect("ONNX Runtime loads")
}

fn models_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/models")
}

fn model_path(name: &str, format: ModelFormat) -> PathBuf {
    models_dir().join(format!("{name}.{format}"))
}

fn load(name: &str, format: ModelFormat) -> LoadedModel {
    engine()
        .load(&model_path(name, format), format)
        .unwrap_or_else(|e| panic!("{name}.{format}: {e}"))
}

fn expected(name: &str) -> Json {
    let path = models_dir().join(format!("{name}.expected.json"));
    serde_json::from_str(&std::fs::read_to_string(&path).expect("expected file"))
        .expect("valid JSON")
}

const FORMATS: [ModelFormat; 2] = [ModelFormat::Onnx, ModelFormat::Ort];

// ---- fixture JSON <-> tensors -------------------------------------------------

fn flatten<'a>(value: &'a Json, out: &mut Vec<&'a Json>) {
    match value {
        Json::Array(items) => items.iter().for_each(|item| flatten(item, out)),
        leaf => out.push(leaf),
    }
}

fn shape_of(spec: &Json) -> Vec<usize> {
    spec["shape"]
        .as_array()
        .expect("shape")
        .iter()
        .map(|d| d.as_u64().expect("dim") as usize)
        .collect()
}

/// A fixture's `{"dtype", "shape", "data"}` as a tensor.
fn tensor_from_json(spec: &Json) -> Tensor {
    let mut leaves = Vec::new();
    flatten(&spec["data"], &mut leaves);
    let int = |v: &&Json| v.as_i64().expect("integer");
    let float = |v: &&Json| v.as_f64().expect("number");
    let data = match spec["dtype"].as_str().expect("dtype") {
        "bool" => TensorData::Bool(leaves.iter().map(|v| v.as_bool().expect("bool")).collect()),
        "int8" => TensorData::Int8(leaves.iter().map(|v| int(v) as i8).collect()),
        "int16" => TensorData::Int16(leaves.iter().map(|v| int(v) as i16).collect()),
        "int32" => TensorData::Int32(leaves.iter().map(|v| int(v) as i32).collect()),
        "int64" => TensorData::Int64(leaves.iter().map(int).collect()),
        "uint8" => TensorData::Uint8(leaves.iter().map(|v| int(v) as u8).collect()),
        "uint16" => TensorData::Uint16(leaves.iter().map(|v| int(v) as u16).collect()),
        "uint32" => TensorData::Uint32(leaves.iter().map(|v| int(v) as u32).collect()),
        "uint64" => TensorData::Uint64(leaves.iter().map(|v| v.as_u64().expect("u64")).collect()),
        "float16" => TensorData::Fp16(
            leaves
                .iter()
                .map(|v| half::f16::from_f64(float(v)))
                .collect(),
        ),
        "float32" => TensorData::Fp32(leaves.iter().map(|v| float(v) as f32).collect()),
        "float64" => TensorData::Fp64(leaves.iter().map(float).collect()),
        "string" => TensorData::Bytes(
            leaves
                .iter()
                .map(|v| v.as_str().expect("string").to_owned())
                .collect(),
        ),
        other => panic!("unexpected dtype {other}"),
    };
    Tensor::new(shape_of(spec), data).expect("fixture shape matches its data")
}

fn case_inputs(case: &Json) -> Vec<(String, Tensor)> {
    case["inputs"]
        .as_object()
        .expect("inputs")
        .iter()
        .map(|(name, spec)| (name.clone(), tensor_from_json(spec)))
        .collect()
}

/// Every element as f64 (numbers) or text, to compare with a tolerance.
fn elements(data: &TensorData) -> Vec<Json> {
    match data {
        TensorData::Bool(v) => v.iter().map(|&x| Json::from(x)).collect(),
        TensorData::Int8(v) => v.iter().map(|&x| Json::from(x)).collect(),
        TensorData::Int16(v) => v.iter().map(|&x| Json::from(x)).collect(),
        TensorData::Int32(v) => v.iter().map(|&x| Json::from(x)).collect(),
        TensorData::Int64(v) => v.iter().map(|&x| Json::from(x)).collect(),
        TensorData::Uint8(v) => v.iter().map(|&x| Json::from(x)).collect(),
        TensorData::Uint16(v) => v.iter().map(|&x| Json::from(x)).collect(),
        TensorData::Uint32(v) => v.iter().map(|&x| Json::from(x)).collect(),
        TensorData::Uint64(v) => v.iter().map(|&x| Json::from(x)).collect(),
        TensorData::Fp16(v) => v.iter().map(|&x| Json::from(x.to_f64())).collect(),
        TensorData::Fp32(v) => v.iter().map(|&x| Json::from(f64::from(x))).collect(),
        TensorData::Fp64(v) => v.iter().map(|&x| Json::from(x)).collect(),
        TensorData::Bytes(v) => v.iter().map(|x| Json::from(x.as_str())).collect(),
    }
}

struct Tolerance {
    rtol: f64,
    atol: f64,
}

fn assert_close(context: &str, got: &Json, want: &Json, tolerance: &Tolerance) {
    match (got, want) {
        (Json::Number(g), Json::Number(w)) if g.is_f64() || w.is_f64() => {
            let (g, w) = (g.as_f64().expect("f64"), w.as_f64().expect("f64"));
            assert!(
                (g - w).abs() <= tolerance.atol + tolerance.rtol * w.abs(),
                "{context}: got {g}, want {w}"
            );
        }
        // Integers, booleans and strings must be equal.
        _ => assert_eq!(got, want, "{context}"),
    }
}

fn assert_output_matches(context: &str, got: &OutputValue, want: &Json, tolerance: &Tolerance) {
    match got {
        OutputValue::Tensor(tensor) => {
            assert_eq!(
                tensor.element_type().onnx_name(),
                want["dtype"],
                "{context}: dtype"
            );
            assert_eq!(tensor.shape(), shape_of(want), "{context}: shape");
            let mut want_leaves = Vec::new();
            flatten(&want["data"], &mut want_leaves);
            let got_leaves = elements(tensor.data());
            assert_eq!(
                got_leaves.len(),
                want_leaves.len(),
                "{context}: element count"
            );
            for (i, (g, w)) in got_leaves.iter().zip(want_leaves).enumerate() {
                assert_close(&format!("{context}[{i}]"), g, w, tolerance);
            }
        }
        // Sequences of maps (ZipMap): one JSON object per row, keyed by label.
        OutputValue::Sequence(rows) => {
            let want_rows = want["data"].as_array().expect("rows");
            assert_eq!(rows.len(), want_rows.len(), "{context}: rows");
            for (r, (row, want_row)) in rows.iter().zip(want_rows).enumerate() {
                let OutputValue::Map(entries) = row else {
                    panic!("{context}[{r}]: expected a map, got {row:?}")
                };
                let want_row = want_row.as_object().expect("object");
                assert_eq!(entries.len(), want_row.len(), "{context}[{r}]: keys");
                for (key, value) in entries {
                    assert_eq!(
                        value.shape(),
                        &[] as &[usize],
                        "{context}[{r}][{key}]: a map value is a scalar"
                    );
                    let want_value = &want_row[&key.to_string()];
                    assert_close(
                        &format!("{context}[{r}][{key}]"),
                        &elements(value.data())[0],
                        want_value,
                        tolerance,
                    );
                }
            }
        }
        OutputValue::Map(_) => panic!("{context}: no fixture has a bare map output"),
    }
}

fn dtype_name(kind: &ValueKind) -> String {
    match kind {
        ValueKind::Tensor { element_type, .. } => element_type.onnx_name().to_owned(),
        ValueKind::Other { description } => description.clone(),
    }
}

/// Runs every case of a fixture through one format and compares everything.
fn check_fixture(name: &str, format: ModelFormat) {
    let expected = expected(name);
    let model = load(name, format);
    let tolerance = Tolerance {
        rtol: expected["tolerance"]["rtol"].as_f64().expect("rtol"),
        atol: expected["tolerance"]["atol"].as_f64().expect("atol"),
    };

    let signature = model.signature();
    for (side, ours, theirs) in [
        ("input", &signature.inputs, &expected["signature"]["inputs"]),
        (
            "output",
            &signature.outputs,
            &expected["signature"]["outputs"],
        ),
    ] {
        let theirs = theirs.as_array().expect("signature list");
        let names: Vec<&str> = ours.iter().map(|info| info.name.as_str()).collect();
        let want: Vec<&str> = theirs
            .iter()
            .map(|info| info["name"].as_str().expect("name"))
            .collect();
        assert_eq!(names, want, "{name}.{format}: {side} names in graph order");
        for (info, spec) in ours.iter().zip(theirs) {
            assert_eq!(
                dtype_name(&info.kind),
                spec["dtype"],
                "{name}.{format}: {side} {}",
                info.name
            );
        }
    }

    for case in expected["cases"].as_array().expect("cases") {
        let context = format!("{name}.{format} case {}", case["name"]);
        let outputs = model
            .run(case_inputs(case), None)
            .unwrap_or_else(|e| panic!("{context}: {e}"));
        let want = case["outputs"].as_object().expect("outputs");
        let names: Vec<&str> = outputs.iter().map(|(name, _)| name.as_str()).collect();
        let want_names: Vec<&str> = signature
            .outputs
            .iter()
            .map(|info| info.name.as_str())
            .collect();
        assert_eq!(names, want_names, "{context}: all outputs, in model order");
        for (output, value) in &outputs {
            assert_output_matches(
                &format!("{context} {output}"),
                value,
                &want[output.as_str()],
                &tolerance,
            );
        }
    }
}

// ---- outputs --------------------------------------------------------------------

#[test]
fn mlp_gives_the_expected_outputs_for_one_row_and_a_batch_in_both_formats() {
    for format in FORMATS {
        check_fixture("mlp", format);
    }
}

#[test]
fn int_ops_keeps_int64_values_beyond_2_pow_53_exact() {
    for format in FORMATS {
        check_fixture("int_ops", format);
    }
}

#[test]
fn every_fixture_gives_its_expected_outputs_in_both_formats() {
    let mut names: Vec<String> = std::fs::read_dir(models_dir())
        .expect("models dir")
        .filter_map(|entry| {
            entry
                .ok()?
                .file_name()
                .to_str()?
                .strip_suffix(".expected.json")
                .map(str::to_owned)
        })
        .collect();
    names.sort();
    // Sequences of maps with int64 and string keys, string inputs and outputs,
    // the ai.onnx.ml and com.microsoft domains all come through here.
    for required in [
        "all_types",
        "iris_logreg",
        "mlp",
        "text_tfidf",
        "xgb_classifier",
    ] {
        assert!(
            names.iter().any(|n| n == required),
            "fixture {required} is missing"
        );
    }
    for name in &names {
        for format in FORMATS {
            check_fixture(name, format);
        }
    }
}

#[test]
fn all_13_element_types_round_trip_unchanged_through_all_types() {
    let expected = expected("all_types");
    for format in FORMATS {
        let model = load("all_types", format);
        let declared: Vec<ElementType> = model
            .signature()
            .inputs
            .iter()
            .map(|info| match &info.kind {
                ValueKind::Tensor { element_type, .. } => *element_type,
                other => panic!("{}: {other:?}", info.name),
            })
            .collect();
        assert_eq!(
            declared,
            ElementType::ALL,
            "one input per element type, in ElementType::ALL order"
        );
        for case in expected["cases"].as_array().expect("cases") {
            let inputs = case_inputs(case);
            let outputs = model.run(inputs.clone(), None).expect("identity runs");
            assert_eq!(outputs.len(), 13);
            for (input_name, sent) in &inputs {
                let output_name = input_name.replacen("in_", "out_", 1);
                let (_, got) = outputs
                    .iter()
                    .find(|(name, _)| *name == output_name)
                    .expect("matching output");
                // Identity: every element comes back bit for bit (float limits,
                // the smallest subnormal, int64 min, u64 max, non-ASCII text).
                assert_eq!(
                    got,
                    &OutputValue::Tensor(sent.clone()),
                    "{format} case {} {output_name}",
                    case["name"]
                );
            }
        }
    }
}

#[test]
fn outputs_can_be_selected_and_come_back_in_the_requested_order() {
    let model = load("mlp", ModelFormat::Ort);
    let row = || {
        vec![(
            "features".to_owned(),
            Tensor::new(vec![1, 4], TensorData::Fp32(vec![0.5, -1.25, 2.0, 0.75])).unwrap(),
        )]
    };
    let names = |outputs: &[(String, OutputValue)]| {
        outputs.iter().map(|(n, _)| n.clone()).collect::<Vec<_>>()
    };

    let only_label = model.run(row(), Some(&["label".to_owned()])).unwrap();
    assert_eq!(names(&only_label), ["label"]);
    let reversed = model
        .run(row(), Some(&["label".to_owned(), "scores".to_owned()]))
        .unwrap();
    assert_eq!(names(&reversed), ["label", "scores"]);
    assert_eq!(reversed[0], only_label[0]);

    let unknown = model
        .run(row(), Some(&["probabilities".to_owned()]))
        .unwrap_err();
    assert_invalid_input(
        &unknown,
        &["unknown output 'probabilities'", "scores", "label"],
    );
    let twice = model
        .run(row(), Some(&["label".to_owned(), "label".to_owned()]))
        .unwrap_err();
    assert_invalid_input(&twice, &["'label'", "more than once"]);
}

#[test]
fn an_empty_batch_gives_empty_outputs() {
    let model = load("mlp", ModelFormat::Onnx);
    let outputs = model
        .run(
            vec![(
                "features".into(),
                Tensor::new(vec![0, 4], TensorData::Fp32(vec![])).unwrap(),
            )],
            None,
        )
        .unwrap();
    let OutputValue::Tensor(scores) = &outputs[0].1 else {
        panic!("tensor")
    };
    assert_eq!(scores.shape(), [0, 3]);
}

#[test]
fn concurrent_runs_on_one_model_each_get_their_own_answer() {
    let model = std::sync::Arc::new(load("int_ops", ModelFormat::Ort));
    let threads: Vec<_> = (0..4i64)
        .map(|t| {
            let model = std::sync::Arc::clone(&model);
            std::thread::spawn(move || {
                for i in 0..50i64 {
                    let a =
                        Tensor::new(vec![1, 2], TensorData::Int64(vec![t * 1000 + i, 1])).unwrap();
                    let b = Tensor::new(vec![1, 2], TensorData::Int32(vec![1, 2])).unwrap();
                    let outputs = model
                        .run(
                            vec![("a".into(), a), ("b".into(), b)],
                            Some(&["sum".to_owned()]),
                        )
                        .unwrap();
                    let want =
                        Tensor::new(vec![1, 2], TensorData::Int64(vec![t * 1000 + i + 1, 3]))
                            .unwrap();
                    assert_eq!(outputs[0].1, OutputValue::Tensor(want));
                }
            })
        })
        .collect();
    threads
        .into_iter()
        .for_each(|thread| thread.join().expect("no panic"));
}

// ---- input checks ------------------------------------------------------------------

fn assert_invalid_input(error: &EngineError, needles: &[&str]) {
    let EngineError::InvalidInput(message) = error else {
        panic!("expected InvalidInput, got {error:?}")
    };
    for needle in needles {
        assert!(
            message.contains(needle),
            "message {message:?} should mention {needle:?}"
        );
    }
}

fn features(shape: Vec<usize>) -> Tensor {
    let count = shape.iter().product();
    Tensor::new(shape, TensorData::Fp32(vec![0.5; count])).unwrap()
}

#[test]
fn signature_reads_types_fixed_and_named_dynamic_dimensions() {
    let model = load("mlp", ModelFormat::Ort);
    let batch = || Dim::Dynamic(Some("batch".to_owned()));
    assert_eq!(
        model.signature().inputs,
        [ValueInfo {
            name: "features".into(),
            kind: ValueKind::Tensor {
                element_type: ElementType::Fp32,
                shape: vec![batch(), Dim::Fixed(4)]
            },
        }]
    );
    assert_eq!(
        model.signature().outputs,
        [
            ValueInfo {
                name: "scores".into(),
                kind: ValueKind::Tensor {
                    element_type: ElementType::Fp32,
                    shape: vec![batch(), Dim::Fixed(3)]
                },
            },
            ValueInfo {
                name: "label".into(),
                kind: ValueKind::Tensor {
                    element_type: ElementType::Int64,
                    shape: vec![batch()]
                }
            },
        ]
    );
    let iris = load("iris_logreg", ModelFormat::Onnx);
    assert_eq!(
        iris.signature().outputs[1].kind,
        ValueKind::Other {
            description: "seq(map(int64,tensor(float)))".into()
        }
    );
}

#[test]
fn an_unknown_input_name_is_named_with_the_models_inputs() {
    let model = load("mlp", ModelFormat::Onnx);
    let error = model
        .run(vec![("feature".into(), features(vec![1, 4]))], None)
        .unwrap_err();
    assert_invalid_input(
        &error,
        &["unknown input 'feature'", "features (float32 [batch, 4])"],
    );
}

#[test]
fn a_missing_input_is_named_with_its_type_and_shape() {
    let model = load("int_ops", ModelFormat::Onnx);
    let a = Tensor::new(vec![1, 2], TensorData::Int64(vec![1, 2])).unwrap();
    let error = model.run(vec![("a".into(), a)], None).unwrap_err();
    assert_invalid_input(&error, &["missing input 'b'", "int32 [batch, 2]"]);
}

#[test]
fn a_repeated_input_is_rejected() {
    let model = load("mlp", ModelFormat::Onnx);
    let error = model.run(
        vec![
            ("features".into(), features(vec![1, 4])),
            ("features".into(), features(vec![1, 4])),
        ],
        None,
    );
    assert_invalid_input(&error.unwrap_err(), &["'features'", "more than once"]);
}

#[test]
fn a_wrong_element_type_says_expected_and_got() {
    let model = load("mlp", ModelFormat::Ort);
    let ints = Tensor::new(vec![1, 4], TensorData::Int64(vec![1, 2, 3, 4])).unwrap();
    let error = model
        .run(vec![("features".into(), ints)], None)
        .unwrap_err();
    assert_invalid_input(
        &error,
        &[
            "input 'features'",
            "expects element type float32",
            "got int64",
        ],
    );
}

#[test]
fn a_wrong_rank_says_expected_and_got() {
    let model = load("mlp", ModelFormat::Ort);
    let error = model
        .run(vec![("features".into(), features(vec![4]))], None)
        .unwrap_err();
    assert_invalid_input(
        &error,
        &[
            "input 'features'",
            "expects rank 2",
            "[batch, 4]",
            "got rank 1",
            "[4]",
        ],
    );
}

#[test]
fn a_wrong_fixed_dimension_names_the_dimension_expected_and_got() {
    let model = load("mlp", ModelFormat::Ort);
    let error = model
        .run(vec![("features".into(), features(vec![2, 3]))], None)
        .unwrap_err();
    assert_invalid_input(
        &error,
        &[
            "input 'features'",
            "dimension 1 must be 4",
            "got 3",
            "[2, 3]",
        ],
    );
}

#[test]
fn inputs_that_disagree_on_a_shared_dimension_are_invalid_input_not_a_server_error() {
    let model = load("int_ops", ModelFormat::Onnx);
    let a = Tensor::new(vec![2, 2], TensorData::Int64(vec![1, 2, 3, 4])).unwrap();
    let b = Tensor::new(vec![3, 2], TensorData::Int32(vec![1, 2, 3, 4, 5, 6])).unwrap();
    let error = model
        .run(vec![("a".into(), a), ("b".into(), b)], None)
        .unwrap_err();
    assert_invalid_input(
        &error,
        &[
            "input 'b' dimension 0 ('batch') is 3",
            "input 'a' has 'batch' = 2",
        ],
    );
}

#[test]
fn a_string_with_a_nul_character_is_invalid_input() {
    let model = load("text_tfidf", ModelFormat::Onnx);
    let text = Tensor::new(vec![1, 1], TensorData::Bytes(vec!["bad\0text".into()])).unwrap();
    let error = model.run(vec![("text".into(), text)], None).unwrap_err();
    assert_invalid_input(&error, &["input 'text'", "NUL"]);
}

// ---- loading --------------------------------------------------------------------------

#[test]
fn footprint_is_positive_and_an_ort_model_counts_at_least_its_mapped_file() {
    for format in FORMATS {
        let path = model_path("sized_0", format);
        let model = engine().load(&path, format).unwrap();
        assert_eq!(model.format(), format);
        let file_bytes = std::fs::metadata(&path).unwrap().len();
        assert!(model.footprint_bytes() > 0);
        // .ort: the mapping; .onnx: ONNX Runtime's copy of the initializers.
        assert!(
            model.footprint_bytes() >= file_bytes,
            "{format}: {} < {file_bytes}",
            model.footprint_bytes()
        );
    }
}

#[test]
fn an_ort_model_still_runs_after_other_models_come_and_go() {
    // The zero-copy session reads its weights from the mapping for its whole life.
    let kept = load("sized_1", ModelFormat::Ort);
    let expected = expected("sized_1");
    for _ in 0..3 {
        drop(load("sized_2", ModelFormat::Ort));
        drop(load("sized_3", ModelFormat::Onnx));
    }
    let case = &expected["cases"][0];
    let outputs = kept.run(case_inputs(case), None).unwrap();
    let tolerance = Tolerance {
        rtol: 1e-5,
        atol: 1e-5,
    };
    assert_output_matches(
        "sized_1.ort after churn",
        &outputs[0].1,
        &case["outputs"]["y"],
        &tolerance,
    );
}

#[test]
fn a_file_that_is_not_a_model_fails_to_load_with_a_load_error() {
    let dir = tempfile::tempdir().unwrap();
    let garbage = dir.path().join("garbage.onnx");
    std::fs::write(&garbage, b"this is not a protobuf").unwrap();
    assert!(matches!(
        engine().load(&garbage, ModelFormat::Onnx),
        Err(EngineError::Load(_))
    ));

    // An .onnx file presented as .ort is refused before ONNX Runtime sees it.
    let error = engine()
        .load(&model_path("mlp", ModelFormat::Onnx), ModelFormat::Ort)
        .unwrap_err();
    let EngineError::Load(message) = error else {
        panic!("expected Load, got {error:?}")
    };
    assert!(message.contains("not an ORT-format model"), "{message}");

    let missing = engine()
        .load(&dir.path().join("missing.ort"), ModelFormat::Ort)
        .unwrap_err();
    assert!(matches!(missing, EngineError::Load(message) if message.contains("missing.ort")));
}

#[test]
fn init_returns_the_one_engine_whatever_a_later_config_says() {
    let first = engine();
    let other = EngineConfig {
        dylib_path: "/nowhere/libonnxruntime.so".into(),
        intra_threads: 7,
    };
    let second = Engine::init(&other).expect("the existing engine");
    assert_eq!(second.config(), first.config());
}

#[test]
fn find_library_honours_an_explicit_path_and_explains_a_missing_one() {
    assert_eq!(
        find_library(Some(Path::new("libonnxruntime.so.1.32.0"))).unwrap(),
        Path::new("libonnxruntime.so.1.32.0")
    );
    let error = find_library(Some(Path::new("/nowhere/libonnxruntime.so"))).unwrap_err();
    assert!(
        error
            .to_string()
            .contains("run scripts/setup-ort.sh or set ORT_DYLIB_PATH"),
        "{error}"
    );
    let found = find_library(None).unwrap();
    assert!(
        found.to_string_lossy().contains("libonnxruntime.so"),
        "{}",
        found.display()
    );
}

#[test]
fn find_library_prefers_the_plain_name_then_the_newest_version() {
    let dir = tempfile::tempdir().unwrap();
    assert_eq!(library_in(dir.path()), None);
    for name in [
        "libonnxruntime.so.1.9.0",
        "libonnxruntime.so.1.32.0",
        "libonnxruntime_providers_shared.so",
    ] {
        std::fs::write(dir.path().join(name), b"").unwrap();
    }
    assert_eq!(
        library_in(dir.path()),
        Some(dir.path().join("libonnxruntime.so.1.32.0"))
    );
    std::fs::write(dir.path().join("libonnxruntime.so"), b"").unwrap();
    assert_eq!(
        library_in(dir.path()),
        Some(dir.path().join("libonnxruntime.so"))
    );
}

#[test]
fn model_format_comes_from_the_extension() {
    assert_eq!(
        ModelFormat::from_file_name("model.ort"),
        Some(ModelFormat::Ort)
    );
    assert_eq!(
        ModelFormat::from_file_name("MODEL.ONNX"),
        Some(ModelFormat::Onnx)
    );
    assert_eq!(ModelFormat::from_file_name("model.onnx.bak"), None);
    assert_eq!(ModelFormat::from_file_name("ort"), None);
}
