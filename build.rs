//! Generates the CRI `runtime.v1` messages and server (for tests and stand-ins) from the vendored, hand-trimmed
//! `proto/runtime/v1/api.proto` with `protox` (a protobuf compiler in Rust), so the crate builds
//! without `protoc`. No client is generated: the library's client (`src/cri/client.rs`) makes only
//! the read calls the agent needs, so no lifecycle RPC (create, start, stop, remove) is linked in.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let proto = "proto/runtime/v1/api.proto";
    println!("cargo:rerun-if-changed={proto}");
    let descriptors = protox::compile([proto], ["proto"])?;
    tonic_prost_build::configure()
        .build_client(false)
        .build_server(true)
        .compile_fds(descriptors)?;
    Ok(())
}
