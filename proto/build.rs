//! Generates the Rust wire types from `trainerd.proto` with a vendored protoc, so a fresh machine
//! needs no system protobuf package.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=trainerd.proto");
    let mut config = prost_build::Config::new();
    config.protoc_executable(protoc_bin_vendored::protoc_bin_path()?);
    tonic_prost_build::configure().compile_with_config(config, &["trainerd.proto"], &["."])?;
    Ok(())
}
