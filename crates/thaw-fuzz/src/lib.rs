//! Fuzz targets for every decoder of untrusted input thaw has, each a plain
//! `fn(&[u8])` that must return for any input, panicking only when an invariant the
//! decoder promises is broken (a round trip that changes a value).
//!
//! Three drivers run them: `cargo fuzz` with the nightly toolchain (`fuzz/`, through
//! `scripts/fuzz.sh`); `cargo test` on stable, which replays the corpus and every
//! regression input in `fuzz/` and feeds each target seeded mutations of its corpus
//! (`mutate`); and anything else that wants to (the soak).

mod image_inputs;
pub mod mutate;
mod node_inputs;
mod snapshot_requests;
mod store_formats;

/// A fuzz target: any bytes in, nothing out.
pub type Target = fn(&[u8]);

/// Every target by name; the names are `fuzz/fuzz_targets/*.rs` and the corpus folders.
pub const TARGETS: &[(&str, Target)] = &[
    ("manifest", store_formats::manifest),
    ("pack_index", store_formats::pack_index),
    ("pack_chunk", store_formats::pack_chunk),
    ("trace", store_formats::trace),
    ("tar_build", image_inputs::tar_build),
    ("docker_archive", image_inputs::docker_archive),
    ("oci_documents", image_inputs::oci_documents),
    ("registry_reference", image_inputs::registry_reference),
    ("safetensors_header", node_inputs::safetensors_header),
    ("api_bodies", node_inputs::api_bodies),
    ("auth_tokens", node_inputs::auth_tokens),
    ("snapshot_filter", node_inputs::snapshot_filter),
    ("snapshot_requests", snapshot_requests::snapshot_requests),
    ("autoscale_config", node_inputs::autoscale_config),
    ("autoscale_trace", node_inputs::autoscale_trace),
];

/// The target named `name`.
pub fn target(name: &str) -> Option<Target> {
    TARGETS.iter().find(|(n, _)| *n == name).map(|(_, t)| *t)
}

/// A small tokio runtime shared by the targets that drive async code, built once; `None`
/// if the process cannot make one (then those targets do nothing).
pub(crate) fn runtime() -> Option<&'static tokio::runtime::Runtime> {
    static RUNTIME: std::sync::OnceLock<Option<tokio::runtime::Runtime>> =
        std::sync::OnceLock::new();
    RUNTIME
        .get_or_init(|| {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .ok()
        })
        .as_ref()
}

/// Splits `data` at its first NUL byte: two inputs from one.
pub(crate) fn split2(data: &[u8]) -> (&[u8], &[u8]) {
    match data.iter().position(|&b| b == 0) {
        Some(i) => (&data[..i], &data[i + 1..]),
        None => (data, &[]),
    }
}
