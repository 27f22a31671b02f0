//! Experiment scaffold (replaced below).
use model_router::engine::*;
use std::path::Path;

#[test]
fn arena_limit_experiment() {
    let engine = Engine::init(&EngineConfig {
        dylib_path: find_library(None).unwrap(),
        intra_threads: 1,
    })
    .unwrap();
    engine.limit_run_memory(64 << 20).unwrap();
    let data = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/models");
    let model = engine
        .load(&data.join("expand.onnx"), ModelFormat::Onnx)
        .unwrap();
    let run = |rows: i64, cols: i64| {
        let x = Tensor::new(vec![1, 1], TensorData::Fp32(vec![2.0])).unwrap();
        let shape = Tensor::new(vec![2], TensorData::Int64(vec![rows, cols])).unwrap();
        model.run(vec![("x".into(), x), ("shape".into(), shape)], None)
    };
    println!("small: {:?}", run(10, 10).map(|o| o.len()));
    println!("before big: {:?}", process_memory());
    println!("big: {:?}", run(20000, 20000).map(|o| o.len()).unwrap_err());
    println!("after big: {:?}", process_memory());
    println!(
        "medium 3000x3000 (36MB): {:?}",
        run(3000, 3000).map(|o| o.len())
    );
    println!("after medium: {:?}", process_memory());
    // An .onnx model with 256 KiB of weights under a 64 MiB limit, many times: the weights are not in the arena.
    let mut kept = Vec::new();
    for _ in 0..400 {
        kept.push(
            engine
                .load(&data.join("sized_0.onnx"), ModelFormat::Onnx)
                .unwrap(),
        );
    }
    println!(
        "400 sized loads ok; {}",
        kept.iter().map(|m| m.footprint_bytes()).sum::<u64>()
    );
    println!("small again: {:?}", run(10, 10).map(|o| o.len()));
    println!("medium again: {:?}", run(3000, 3000).map(|o| o.len()));
}
