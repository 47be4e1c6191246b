//! Generates the Rust wire types from `trainerd.proto` with a vendored protoc, so a fresh machine
//! needs no system protobuf package.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=trainerd.proto");
    let mut config = prost_build::Config::new();
    config.protoc_executable(protoc_bin_vendored::protoc_bin_path()?);
    // The descriptor set serves gRPC reflection and lets the compatibility test read the API.
    let descriptor = std::path::PathBuf::from(std::env::var("OUT_DIR")?).join("trainerd_descriptor.bin");
    tonic_prost_build::configure()
        .file_descriptor_set_path(descriptor)
        // The JSON-lines socket reads submissions straight into the generated type: a field added to
        // the proto is accepted there at once (env as an object of name to value, as people write it).
        .type_attribute(
            "trainerd.v1.SubmitJobRequest",
            "#[derive(serde::Deserialize)] #[serde(default, deny_unknown_fields)]",
        )
        .type_attribute(
            "trainerd.v1.SlurmOptions",
            "#[derive(serde::Deserialize)] #[serde(default, deny_unknown_fields)]",
        )
        .type_attribute(
            "trainerd.v1.RetryJobRequest",
            "#[derive(serde::Deserialize)] #[serde(default, deny_unknown_fields)]",
        )
        .type_attribute(
            "trainerd.v1.GetMetricsRequest",
            "#[derive(serde::Deserialize)] #[serde(default, deny_unknown_fields)]",
        )
        .type_attribute(
            "trainerd.v1.RemoveJobsRequest",
            "#[derive(serde::Deserialize)] #[serde(default, deny_unknown_fields)]",
        )
        .field_attribute("trainerd.v1.SubmitJobRequest.env", "#[serde(deserialize_with = \"crate::json::env_object\")]")
        .compile_with_config(config, &["trainerd.proto"], &["."])?;
    Ok(())
}
