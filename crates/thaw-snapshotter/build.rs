//! Generates the containerd snapshots service (and the clients of the content, images and
//! leases services that `thaw snapshotter import` uses) from its `.proto` files with `protox`, a
//! pure-Rust protobuf compiler, so building thaw needs no `protoc`.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protos = [
        "proto/containerd/snapshots.proto",
        "proto/containerd/mount.proto",
        "proto/containerd/descriptor.proto",
        "proto/containerd/content.proto",
        "proto/containerd/images.proto",
        "proto/containerd/leases.proto",
    ];
    for p in &protos {
        println!("cargo:rerun-if-changed={p}");
    }
    let fds = protox::compile(protos, ["proto"])?;
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .compile_fds(fds)?;
    Ok(())
}
