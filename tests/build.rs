//! Generates the Kubernetes CRI client the CRI test uses, with `protox` (pure Rust: no
//! `protoc` needed to build the tests).

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let proto = "proto/cri/v1.proto";
    println!("cargo:rerun-if-changed={proto}");
    let fds = protox::compile([proto], ["proto"])?;
    tonic_prost_build::configure()
        .build_server(false)
        .build_client(true)
        .compile_fds(fds)?;
    Ok(())
}
