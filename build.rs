//! Compiles the vendored gRPC protos (proto/, see proto/README.md) into
//! `inference.rs` under OUT_DIR: protox parses them (pure Rust, no protoc),
//! tonic-prost-build generates the messages and the server trait.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto");
    let descriptors = protox::compile(["grpc_service.proto"], ["proto"])?;
    tonic_prost_build::configure()
        .build_client(false)
        // Calls model-router does not implement answer UNIMPLEMENTED (shared
        // memory, tracing, logging), as the generated defaults do.
        .generate_default_stubs(true)
        .compile_fds(descriptors)?;
    Ok(())
}
