//! thaw as a containerd remote snapshotter: containerd's `Snapshots` gRPC service over a
//! unix socket, snapshot metadata kept in the state directory, the overlay layout for
//! layers containerd unpacks itself, and lazy layers that a thaw mount serves.
//!
//! [`register`] is the other direction: a client that makes an image known to a
//! containerd (`thaw snapshotter import`).
//!
//! The crate knows containerd's snapshot semantics and nothing of how a lazy layer is
//! mounted: that is behind [`RemoteLayers`], which the daemon implements with its mounts.

mod error;
mod filter;
mod meta;
mod mounts;
mod register;
mod remote;
mod service;
mod snapshotter;
mod usage;

pub use error::SnapshotError;
pub use filter::{Filter, FilterError};
pub use meta::{Info, Kind};
pub use mounts::Mount;
pub use register::{register, unix_channel, ImageRecord, RegisterError, Registered, Target};
pub use remote::{NoRemoteLayers, RemoteLayer, RemoteLayers};
pub use service::{serve, SnapshotsService};
pub use snapshotter::{Snapshotter, Usage};

/// The label containerd's unpacker puts on a Prepare to name the committed snapshot it
/// wants (the layer's chain id): a snapshotter that can provide that layer commits it
/// under this name and answers `AlreadyExists`.
pub const TARGET_REF_LABEL: &str = "containerd.io/snapshot.ref";

/// The generated gRPC types and service of containerd's snapshots API (v1, as in
/// containerd 1.6).
#[allow(
    missing_docs,
    missing_debug_implementations,
    clippy::all,
    clippy::pedantic
)]
pub mod proto {
    /// containerd's API packages.
    pub mod containerd {
        /// `containerd.types`.
        pub mod types {
            include!(concat!(env!("OUT_DIR"), "/containerd.types.rs"));
        }
        /// `containerd.services`.
        pub mod services {
            /// `containerd.services.content`.
            pub mod content {
                /// `containerd.services.content.v1`.
                pub mod v1 {
                    include!(concat!(
                        env!("OUT_DIR"),
                        "/containerd.services.content.v1.rs"
                    ));
                }
            }
            /// `containerd.services.images`.
            pub mod images {
                /// `containerd.services.images.v1`.
                pub mod v1 {
                    include!(concat!(
                        env!("OUT_DIR"),
                        "/containerd.services.images.v1.rs"
                    ));
                }
            }
            /// `containerd.services.leases`.
            pub mod leases {
                /// `containerd.services.leases.v1`.
                pub mod v1 {
                    include!(concat!(
                        env!("OUT_DIR"),
                        "/containerd.services.leases.v1.rs"
                    ));
                }
            }
            /// `containerd.services.snapshots`.
            pub mod snapshots {
                /// `containerd.services.snapshots.v1`.
                pub mod v1 {
                    include!(concat!(
                        env!("OUT_DIR"),
                        "/containerd.services.snapshots.v1.rs"
                    ));
                }
            }
        }
    }
}
