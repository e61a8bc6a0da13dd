//! thaw's container runner: from an image's run configuration and `thaw run`'s flags to an
//! OCI runtime bundle (`config.json` over a root file system someone else mounted), and
//! driving runc or crun over it. It knows nothing of chunks, stores or FUSE: the root it
//! is given is a directory.

pub mod cdi;
pub mod defaults;
mod error;
pub mod prepare;
pub mod process;
pub mod record;
pub mod rootfs;
pub mod runtime;
pub mod seccomp;
pub mod spec;
pub mod user;

pub use cdi::{GpuEdits, GpuRequest};
pub use error::RunError;
pub use prepare::{find_init, parse_mount, parse_size, prepare, RunRequest, Seccomp};
pub use record::{ContainerRecord, ContainerRegistry};
pub use runtime::{Runtime, Streams};
pub use spec::{runtime_spec, BindMount, ContainerConfig, Device, Hook, Limits, Mount, Network};

/// Writes `config.json` for `config` into `bundle`.
pub fn write_bundle(bundle: &std::path::Path, config: &ContainerConfig) -> Result<(), RunError> {
    let spec = runtime_spec(config)?;
    let text = serde_json::to_vec_pretty(&spec).map_err(|e| RunError::Spec(e.to_string()))?;
    let path = bundle.join("config.json");
    std::fs::write(&path, text).map_err(|source| RunError::Io {
        op: "write",
        path,
        source,
    })
}
