//! Compiles the .proto files with the pure-Rust `protox` compiler, so no system
//! `protoc` is needed, and writes the descriptor set to OUT_DIR for servers that
//! offer gRPC reflection.

use prost::Message;
use std::path::PathBuf;

const PROTOS: &[&str] = &["tts.proto", "stt.proto", "voxwire.proto"];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto");
    for file in PROTOS {
        println!("cargo:rerun-if-changed=proto/{file}");
    }
    let descriptors = protox::compile(PROTOS, ["proto"])?;
    let out_dir = PathBuf::from(std::env::var("OUT_DIR")?);
    std::fs::write(
        out_dir.join("voxwire_descriptor.bin"),
        descriptors.encode_to_vec(),
    )?;
    tonic_prost_build::configure()
        .build_server(true)
        .build_client(true)
        // Audio crosses the orchestrator without being copied.
        .bytes(".")
        .compile_fds(descriptors)?;
    Ok(())
}
