//! Generates the CRI `runtime.v1` client and server from the vendored, hand-trimmed
//! `proto/runtime/v1/api.proto` with `protox` (a protobuf compiler in Rust), so the crate builds
//! without `protoc`.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let proto = "proto/runtime/v1/api.proto";
    println!("cargo:rerun-if-changed={proto}");
    let descriptors = protox::compile([proto], ["proto"])?;
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .compile_fds(descriptors)?;
    Ok(())
}
