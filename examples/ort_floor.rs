//! The cold-start floor: the least a program can do to answer one prediction
//! with ONNX Runtime. It loads the library, creates the environment (telemetry
//! off, as the router does), maps the model file and creates one session from
//! it (an `.ort` file zero-copy, as the router loads it), runs it
//! once on zeros (every float input, dynamic dimensions as 1), prints the
//! first output's first value, and exits without tearing anything down.
//! `scripts/bench-load-path.sh` times it against `model-router invoke` in the
//! same run: the router's cold start is measured against this, not against
//! itself.
//!
//! ```text
//! ORT_DYLIB_PATH=.cache/onnxruntime/1.32.0/libonnxruntime.so \
//!   cargo run --release --example ort_floor -- tests/data/models/mlp.onnx
//! ```

use std::io::Write as _;

use ort::session::Session;
use ort::value::{Tensor, ValueType};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    // As the router does (src/main.rs): ONNX Runtime 1.29+ writes a telemetry
    // file at every start unless this is set before the environment exists.
    // SAFETY: no other thread exists yet to read the environment meanwhile.
    unsafe { std::env::set_var("ORT_DISABLE_TELEMETRY", "1") };
    let model = std::env::args()
        .nth(1)
        .ok_or("usage: ort_floor MODEL.onnx|MODEL.ort")?;
    let dylib = std::env::var("ORT_DYLIB_PATH").unwrap_or_else(|_| "libonnxruntime.so".into());
    let env = ort::init_from(&dylib)?
        .with_name("ort-floor")
        .with_telemetry(false)
        .build()?;
    let mut builder = Session::builder(&env)?;
    let file = std::fs::File::open(&model)?;
    // SAFETY: a local file this program only reads, that nothing truncates
    // while it runs; the mapping lives until the process exits, so it outlives
    // the session that reads from it.
    let bytes = unsafe { memmap2::Mmap::map(&file)? };
    if model.ends_with(".ort") {
        // ORT format the fastest way ONNX Runtime offers, as the router loads it:
        // the weights used in place from the mapping, no prepacking copies
        // (DESIGN.md section 7). From a file path, ONNX Runtime would copy them.
        builder = builder
            .with_config_entry("session.use_ort_model_bytes_directly", "1")?
            .with_config_entry("session.use_ort_model_bytes_for_initializers", "1")?
            .with_config_entry("session.disable_prepacking", "1")?;
    }
    let mut session = builder.commit_from_memory(&bytes)?;
    let mut inputs = Vec::new();
    for input in session.inputs() {
        let ValueType::Tensor { shape, .. } = input.dtype() else {
            return Err(format!("input {} is not a tensor", input.name()).into());
        };
        let dims: Vec<i64> = shape.iter().map(|&d| if d < 0 { 1 } else { d }).collect();
        let count = dims.iter().product::<i64>() as usize;
        let tensor = Tensor::from_array((dims, vec![0f32; count]))?;
        inputs.push((input.name().to_string(), tensor.into_dyn()));
    }
    let outputs = session.run(inputs)?;
    let (_, first) = outputs.iter().next().ok_or("the model has no output")?;
    let (_, values) = first.try_extract_tensor::<f32>()?;
    let mut stdout = std::io::stdout().lock();
    writeln!(stdout, "{}", values.first().copied().unwrap_or(f32::NAN))?;
    stdout.flush()?;
    // As the router's `invoke` does: the answer is out, nothing to tear down.
    std::process::exit(0)
}
