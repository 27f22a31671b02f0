//! ONNX models too big to commit, written at test time: a multi-layer
//! perceptron as ONNX protobuf bytes (the few fields of onnx.proto it needs,
//! encoded by hand), and its ORT-format conversion by ONNX Runtime itself.
//!
//! `mlp(64, &[1024, 8])` is `y = Relu(x @ w0 + b0) @ w1 + b1` with `x`
//! float32 `[batch, 64]`: weights of deterministic small values (a fixed
//! linear congruential sequence scaled to ±1e-3), so outputs stay finite;
//! what is tested is memory, not the numbers. IR version 8, opset 17, as
//! tests/data/models are.

#![allow(dead_code)]

use std::path::Path;

fn varint(out: &mut Vec<u8>, mut value: u64) {
    while value >= 0x80 {
        out.push((value as u8) | 0x80);
        value >>= 7;
    }
    out.push(value as u8);
}

/// A varint field.
fn number(out: &mut Vec<u8>, field: u64, value: u64) {
    varint(out, field << 3);
    varint(out, value);
}

/// A length-delimited field (bytes, string or message).
fn bytes(out: &mut Vec<u8>, field: u64, value: &[u8]) {
    varint(out, (field << 3) | 2);
    varint(out, value.len() as u64);
    out.extend_from_slice(value);
}

/// ValueInfoProto of a float32 tensor `[batch, width]`.
fn value_info(name: &str, width: usize) -> Vec<u8> {
    let mut batch = Vec::new();
    bytes(&mut batch, 2, b"batch"); // Dimension.dim_param
    let mut fixed = Vec::new();
    number(&mut fixed, 1, width as u64); // Dimension.dim_value
    let mut shape = Vec::new();
    bytes(&mut shape, 1, &batch); // TensorShapeProto.dim
    bytes(&mut shape, 1, &fixed);
    let mut tensor = Vec::new();
    number(&mut tensor, 1, 1); // TypeProto.Tensor.elem_type = FLOAT
    bytes(&mut tensor, 2, &shape);
    let mut ty = Vec::new();
    bytes(&mut ty, 1, &tensor); // TypeProto.tensor_type
    let mut info = Vec::new();
    bytes(&mut info, 1, name.as_bytes());
    bytes(&mut info, 2, &ty);
    info
}

/// TensorProto of float32 `dims`, deterministic small values.
fn initializer(name: &str, dims: &[usize], seed: &mut u32) -> Vec<u8> {
    let count: usize = dims.iter().product();
    let mut raw = Vec::with_capacity(4 * count);
    for _ in 0..count {
        *seed = seed.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
        let value = ((*seed >> 8) as f32 / (1u32 << 24) as f32 - 0.5) * 2e-3;
        raw.extend_from_slice(&value.to_le_bytes());
    }
    let mut tensor = Vec::with_capacity(raw.len() + 64);
    for &dim in dims {
        number(&mut tensor, 1, dim as u64); // dims
    }
    number(&mut tensor, 2, 1); // data_type = FLOAT
    bytes(&mut tensor, 8, name.as_bytes());
    bytes(&mut tensor, 9, &raw); // raw_data
    tensor
}

fn node(op: &str, inputs: &[&str], output: &str) -> Vec<u8> {
    let mut node = Vec::new();
    for input in inputs {
        bytes(&mut node, 1, input.as_bytes());
    }
    bytes(&mut node, 2, output.as_bytes());
    bytes(&mut node, 3, output.as_bytes()); // name
    bytes(&mut node, 4, op.as_bytes());
    node
}

/// An MLP from `input` features through layers of `widths` (Relu between
/// layers), input `x`, output `y`, as ONNX bytes.
pub fn mlp(input: usize, widths: &[usize]) -> Vec<u8> {
    let mut graph = Vec::new();
    let mut seed = 0x5eed_u32;
    let mut current = "x".to_string();
    let mut from = input;
    for (i, &width) in widths.iter().enumerate() {
        let (w, b, mm, add) = (
            format!("w{i}"),
            format!("b{i}"),
            format!("mm{i}"),
            format!("add{i}"),
        );
        bytes(&mut graph, 5, &initializer(&w, &[from, width], &mut seed));
        bytes(&mut graph, 5, &initializer(&b, &[width], &mut seed));
        bytes(&mut graph, 1, &node("MatMul", &[&current, &w], &mm));
        let last = i + 1 == widths.len();
        let added = if last { "y".to_string() } else { add };
        bytes(&mut graph, 1, &node("Add", &[&mm, &b], &added));
        current = if last {
            added
        } else {
            let relu = format!("relu{i}");
            bytes(&mut graph, 1, &node("Relu", &[&added], &relu));
            relu
        };
        from = width;
    }
    bytes(&mut graph, 2, b"mlp");
    bytes(&mut graph, 11, &value_info("x", input));
    bytes(&mut graph, 12, &value_info("y", from));
    let mut opset = Vec::new();
    bytes(&mut opset, 1, b"");
    number(&mut opset, 2, 17);
    let mut model = Vec::with_capacity(graph.len() + 64);
    number(&mut model, 1, 8); // ir_version
    bytes(&mut model, 2, b"model-router tests/support/onnx_mlp.rs");
    bytes(&mut model, 7, &graph);
    bytes(&mut model, 8, &opset);
    model
}

/// Converts the ONNX file `onnx` to ORT format at `ort` with ONNX Runtime
/// (basic graph optimizations, as tests/data/models/*.ort are made). Call it
/// only in a test process that uses no other ONNX Runtime environment.
pub fn to_ort(onnx: &Path, ort: &Path) {
    let library = model_router::engine::find_library(None).expect("ONNX Runtime library");
    let convert = || -> ort::Result<()> {
        let env = ort::init_from(&library)
            .map_err(|e| ort::Error::new(e.to_string()))?
            .with_name("onnx_mlp")
            .build()?;
        let session = ort::session::Session::builder(&env)?
            .with_optimization_level(ort::session::builder::GraphOptimizationLevel::Level1)?
            .with_config_entry("session.save_model_format", "ORT")?
            .with_optimized_model_path(ort)?
            .commit_from_file(onnx)?;
        drop(session);
        Ok(())
    };
    convert().expect("ONNX Runtime converts the model");
}
