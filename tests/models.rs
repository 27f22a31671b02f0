//! Models teams really bring (scikit-learn and XGBoost, converted with
//! skl2onnx and onnxmltools; tests/data/README.md says how each was made),
//! served from a published repository as `.onnx` (version 1) and `.ort`
//! (version 2), through both request formats. Each answer must equal what
//! Python's onnxruntime gave (within the fixture's tolerance) and what the
//! original framework predicted (`framework_outputs`: labels exactly,
//! probabilities and regression values within 1e-4).

mod common;

use common::{TestServer, assert_close, check_fixture, expected, repository};
use serde_json::{Value, json};

/// How far an ONNX answer may be from scikit-learn's / XGBoost's own (float32
/// inside the ONNX graph, float64 in the framework).
const FRAMEWORK_TOLERANCE: f64 = 1e-4;

/// Which outputs carry a model's answer, to compare with `framework_outputs`.
enum Answer {
    /// A classifier: the label output, and the probabilities output (a ZipMap
    /// sequence of maps, or a float tensor [N, classes]).
    Classifier {
        label: &'static str,
        probabilities: &'static str,
    },
    /// A regressor: the prediction output.
    Regressor { prediction: &'static str },
}

/// A row-major list of rows: each row's probabilities in `classes` order,
/// read from a ZipMap row (an object keyed by class label) or a tensor row.
fn probability_rows(output: &Value, classes: &[Value]) -> Vec<Vec<f64>> {
    output
        .as_array()
        .unwrap()
        .iter()
        .map(|row| match row {
            Value::Object(by_class) => {
                assert_eq!(by_class.len(), classes.len(), "one entry per class: {row}");
                classes
                    .iter()
                    .map(|class| {
                        let key = match class {
                            Value::String(s) => s.clone(),
                            other => other.to_string(),
                        };
                        by_class[&key].as_f64().unwrap()
                    })
                    .collect()
            }
            Value::Array(columns) => columns.iter().map(|p| p.as_f64().unwrap()).collect(),
            other => panic!("a probability row is an object or an array, not {other}"),
        })
        .collect()
}

fn assert_within(actual: f64, expected: f64, context: &str) {
    assert!(
        (actual - expected).abs() <= FRAMEWORK_TOLERANCE * expected.abs().max(1.0),
        "{context}: {actual} vs the framework's {expected}"
    );
}

/// Compares outputs (as the simple format nests them: output name -> JSON)
/// with the framework's own predictions for one case.
fn assert_matches_framework(outputs: &Value, answer: &Answer, framework: &Value, context: &str) {
    match answer {
        Answer::Classifier {
            label,
            probabilities,
        } => {
            assert_eq!(
                outputs[label], framework["label"],
                "{context}: labels equal scikit-learn's / XGBoost's predict"
            );
            let classes = framework["classes"].as_array().unwrap();
            let got = probability_rows(&outputs[probabilities], classes);
            let want = framework["probabilities"].as_array().unwrap();
            assert_eq!(got.len(), want.len(), "{context}: rows");
            for (r, (got, want)) in got.iter().zip(want).enumerate() {
                let want = want.as_array().unwrap();
                assert_eq!(got.len(), want.len(), "{context} row {r}: classes");
                for (c, (got, want)) in got.iter().zip(want).enumerate() {
                    assert_within(
                        *got,
                        want.as_f64().unwrap(),
                        &format!("{context} row {r} class {}", classes[c]),
                    );
                }
            }
        }
        Answer::Regressor { prediction } => {
            let got: Vec<f64> = outputs[prediction]
                .as_array()
                .unwrap()
                .iter()
                .map(|row| match row {
                    // [N, 1] from ONNX, [N] from scikit-learn.
                    Value::Array(one) => one[0].as_f64().unwrap(),
                    value => value.as_f64().unwrap(),
                })
                .collect();
            let want = framework["prediction"].as_array().unwrap();
            assert_eq!(got.len(), want.len(), "{context}: rows");
            for (r, (got, want)) in got.iter().zip(want).enumerate() {
                assert_within(*got, want.as_f64().unwrap(), &format!("{context} row {r}"));
            }
        }
    }
}

/// The V2 datatype each input of a fixture declares.
fn input_datatype(model: &str, input: &str) -> Value {
    expected(model)["signature"]["inputs"]
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["name"] == input)
        .unwrap()["datatype"]
        .clone()
}

/// A V2 response's outputs as the simple format has them (name -> nested
/// JSON), so one comparison serves both. Checks each output's datatype and
/// shape on the way; BYTES elements of a non-tensor output are parsed back
/// from their JSON text.
fn v2_outputs_as_nested(model: &str, answer: &Value, context: &str) -> Value {
    let signature = expected(model)["signature"]["outputs"].clone();
    let mut nested = serde_json::Map::new();
    for output in answer["outputs"].as_array().unwrap() {
        let name = output["name"].as_str().unwrap();
        let declared = signature
            .as_array()
            .unwrap()
            .iter()
            .find(|o| o["name"] == name)
            .unwrap();
        let shape: Vec<usize> = output["shape"]
            .as_array()
            .unwrap()
            .iter()
            .map(|d| d.as_u64().unwrap() as usize)
            .collect();
        let data = output["data"].as_array().unwrap();
        assert_eq!(
            data.len(),
            shape.iter().product::<usize>(),
            "{context} {name}: data holds the shape"
        );
        let value = if declared["datatype"].is_null() {
            // A sequence of maps: BYTES, one JSON text per row.
            assert_eq!(output["datatype"], "BYTES", "{context} {name}");
            assert_eq!(
                output["parameters"]["onnx_type"], declared["dtype"],
                "{context} {name}"
            );
            Value::Array(
                data.iter()
                    .map(|text| serde_json::from_str(text.as_str().unwrap()).unwrap())
                    .collect(),
            )
        } else {
            assert_eq!(output["datatype"], declared["datatype"], "{context} {name}");
            match shape.as_slice() {
                [_] => Value::Array(data.clone()),
                [_, columns] => Value::Array(
                    data.chunks(*columns)
                        .map(|row| Value::Array(row.to_vec()))
                        .collect(),
                ),
                other => panic!("{context} {name}: unexpected rank {other:?}"),
            }
        };
        nested.insert(name.to_string(), value);
    }
    Value::Object(nested)
}

/// Serves `model` as `.onnx` and `.ort` and checks every case through both formats.
async fn check_model(model: &str, answer: Answer) {
    let onnx = format!("{model}.onnx");
    let ort = format!("{model}.ort");
    let root = repository(&[(model, "1", &onnx), (model, "2", &ort)]);
    let server = TestServer::start(root.path(), 1 << 30).await;
    let fixture = expected(model);
    let tolerance = fixture["tolerance"]["rtol"].as_f64().unwrap();
    for version in ["1", "2"] {
        // Simple predict: `{"inputs": ...}` and, for one-input models, `{"features": ...}`
        // (batch and the original one-row form), against onnxruntime's outputs.
        check_fixture(&server, model, version).await;
        for case in fixture["cases"].as_array().unwrap() {
            let context = format!("{model}/{version} case {}", case["name"]);
            let inputs = case["inputs"].as_object().unwrap();
            let framework = &case["framework_outputs"];
            assert!(framework.is_object(), "{context}: framework_outputs");

            let simple_inputs: serde_json::Map<String, Value> = inputs
                .iter()
                .map(|(name, tensor)| (name.clone(), tensor["data"].clone()))
                .collect();
            let (status, simple) = server
                .post(
                    &format!("/models/{model}/{version}/predict"),
                    &json!({ "inputs": simple_inputs }),
                )
                .await;
            assert_eq!(status, 200, "{context}: {simple}");
            assert_matches_framework(
                &simple["outputs"],
                &answer,
                framework,
                &format!("{context} simple"),
            );

            let v2_inputs: Vec<Value> = inputs
                .iter()
                .map(|(name, tensor)| {
                    json!({
                        "name": name,
                        "shape": tensor["shape"],
                        "datatype": input_datatype(model, name),
                        "data": tensor["data"],
                    })
                })
                .collect();
            let (status, v2) = server
                .post(
                    &format!("/v2/models/{model}/versions/{version}/infer"),
                    &json!({ "id": context, "inputs": v2_inputs }),
                )
                .await;
            assert_eq!(status, 200, "{context}: {v2}");
            assert_eq!(v2["id"], context);
            assert_eq!(v2["model_version"], version);
            let outputs = v2_outputs_as_nested(model, &v2, &context);
            for (name, want) in case["outputs"].as_object().unwrap() {
                assert_close(
                    &outputs[name],
                    &want["data"],
                    tolerance,
                    &format!("{context} V2 {name}"),
                );
            }
            assert_eq!(
                outputs.as_object().unwrap().keys().collect::<Vec<_>>(),
                case["outputs"]
                    .as_object()
                    .unwrap()
                    .keys()
                    .collect::<Vec<_>>(),
                "{context}: every output, in model order"
            );
            assert_matches_framework(&outputs, &answer, framework, &format!("{context} V2"));
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn iris_logistic_regression_with_zipmap() {
    check_model(
        "iris_logreg",
        Answer::Classifier {
            label: "output_label",
            probabilities: "output_probability",
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn diabetes_ridge_regressor() {
    check_model(
        "diabetes_ridge",
        Answer::Regressor {
            prediction: "variable",
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn text_tfidf_pipeline_with_a_string_input_and_string_labels() {
    check_model(
        "text_tfidf",
        Answer::Classifier {
            label: "output_label",
            probabilities: "output_probability",
        },
    )
    .await;
}

/// The same pipeline exported with skl2onnx's defaults, as users do: its
/// StringNormalizer needs en_US.UTF-8 (scripts/setup-locale.sh installs it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn text_tfidf_exported_with_skl2onnx_defaults() {
    check_model(
        "text_tfidf_default",
        Answer::Classifier {
            label: "output_label",
            probabilities: "output_probability",
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn xgboost_classifier() {
    check_model(
        "xgb_classifier",
        Answer::Classifier {
            label: "label",
            probabilities: "probabilities",
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mixed_float_and_string_inputs() {
    check_model(
        "mixed_inputs",
        Answer::Classifier {
            label: "label",
            probabilities: "probabilities",
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn text_features_wrong_types_and_empty_batches() {
    let root = repository(&[
        ("text_tfidf", "1", "text_tfidf.ort"),
        ("mixed_inputs", "1", "mixed_inputs.ort"),
        ("iris_logreg", "1", "iris_logreg.ort"),
    ]);
    let server = TestServer::start(root.path(), 1 << 30).await;
    // The original handler's one-row form, with a string feature.
    let (status, answer) = server
        .post(
            "/models/text_tfidf/1/predict",
            &json!({"features": ["a wonderful and happy movie"]}),
        )
        .await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["prediction"], json!(["positive"]));
    let row = &answer["outputs"]["output_probability"][0];
    assert_eq!(
        row.as_object().unwrap().keys().collect::<Vec<_>>(),
        ["negative", "positive"],
        "a ZipMap row is an object keyed by class label"
    );
    // A number where text is expected, and text where a number is: 400 naming the input.
    for (path, body, input) in [
        (
            "/models/text_tfidf/1/predict",
            json!({"features": [42]}),
            "\"text\"",
        ),
        (
            "/models/mixed_inputs/1/predict",
            json!({"inputs": {"num": [["35", 60.0]], "color": [["red"]]}}),
            "\"num\"",
        ),
        (
            "/models/mixed_inputs/1/predict",
            json!({"features": [35.0, 60.0]}),
            "num: float32",
        ),
    ] {
        let (status, answer) = server.post(path, &body).await;
        assert_eq!(status, 400, "{body}: {answer}");
        assert_eq!(answer["code"], "invalid_input");
        assert!(
            answer["error"].as_str().unwrap().contains(input),
            "{body}: {answer} should name {input}"
        );
    }

    // An empty batch: the classifier answers empty outputs (an empty ZipMap
    // sequence too); ONNX Runtime's StringNormalizer, inside the text
    // pipeline, refuses one itself, and says so.
    let empty =
        json!({"inputs": [{"name": "features", "shape": [0, 4], "datatype": "FP32", "data": []}]});
    let (status, answer) = server.post("/v2/models/iris_logreg/infer", &empty).await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["outputs"][0]["shape"], json!([0]));
    assert_eq!(answer["outputs"][1]["data"], json!([]));
    let empty =
        json!({"inputs": [{"name": "text", "shape": [0, 1], "datatype": "BYTES", "data": []}]});
    let (status, answer) = server.post("/v2/models/text_tfidf/infer", &empty).await;
    assert_eq!(
        (status, answer["code"].as_str()),
        (400, Some("invalid_input")),
        "{answer}"
    );
    assert!(
        answer["error"]
            .as_str()
            .unwrap()
            .contains("StringNormalizer"),
        "{answer}"
    );
}
