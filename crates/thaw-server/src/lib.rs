//! thaw's node daemon (`thaw serve`): one process per node owning the shared memory and
//! disk caches, the mounts of every container on the node, and prewarm jobs, behind a
//! versioned JSON API over HTTP: on a unix socket only root (or one group) can use, on TCP
//! only with a token, and metrics alone on a listener of their own. The API's wire types
//! and its client live in `thaw-api`; docs/security.md has the threat model.
//!
//! This is the only crate that serves HTTP.

mod access;
pub mod auth;
pub mod autoscale;
mod confine;
mod container_request;
pub mod containers;
mod error;
mod http;
pub mod jobs;
mod listen;
mod metrics;
pub mod mounts;
pub mod node;
pub mod snapshots;
pub mod validate;
pub mod weights;

pub use access::Access;
pub use confine::PAUSE_VAR;
pub use error::ApiError;
pub use http::{metrics_router, router};
pub use listen::serve;
pub use mounts::MountSettings;
pub use node::Node;
pub use thaw_api::{api, Client, ClientError};

use std::net::SocketAddr;
use std::num::NonZeroU32;
use std::path::PathBuf;
use thaw_store::ReadError;

/// Everything `thaw serve` is told.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// The unix socket of the API (mode 0600, or 0660 with `socket_group`).
    pub socket: PathBuf,
    /// Members of this group may use the socket too.
    pub socket_group: Option<u32>,
    /// Also serve the API on TCP here: only with tokens, loopback included.
    pub listen: Option<SocketAddr>,
    /// The tokens TCP callers may present.
    pub tokens: auth::Tokens,
    /// Serve `/metrics` and `/healthz` alone, without a token, here.
    pub metrics_listen: Option<SocketAddr>,
    /// Requests per second one caller (a local uid, a remote address) may make.
    pub rate_limit: Option<NonZeroU32>,
    /// Mounts and prewarms must name images by full id, not by tag (a node need not
    /// trust who may move tags in a shared store).
    pub require_image_ids: bool,
    /// The shared reader's caches and scheduler.
    pub reader: thaw_store::ReaderConfig,
    /// How mounts are made.
    pub mounts: MountSettings,
    /// Once listening, write the API's address here (`unix:PATH`, then `http://ADDR`
    /// when listening on TCP).
    pub ready_file: Option<PathBuf>,
    /// Deployments whose replicas this daemon autoscales.
    pub autoscale: thaw_autoscale::config::AutoscaleConfig,
    /// Weights kept resident and handed to serving processes.
    pub weights: weights::WeightsSettings,
    /// Serve containerd's snapshots API, if set.
    pub snapshotter: Option<snapshots::SnapshotterSettings>,
}

/// Why the daemon could not start (or stopped serving).
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// TCP needs a token: any local user can reach loopback.
    #[error(
        "refusing to listen on {0} without a token: set THAW_TOKEN, --token-file or --tokens-file"
    )]
    TokenRequired(SocketAddr),
    /// Another daemon answers on the socket.
    #[error("another daemon is serving on {0}")]
    SocketInUse(String),
    /// A listening socket failed.
    #[error("listening on {addr}: {source}")]
    Bind {
        /// The address or socket path.
        addr: String,
        /// The error.
        source: std::io::Error,
    },
    /// The disk cache could not be opened.
    #[error("opening the cache: {0}")]
    Cache(#[from] ReadError),
    /// The autoscaler could not start.
    #[error("autoscaler: {0}")]
    Autoscale(#[from] autoscale::AutoscaleStartError),
    /// A file of the daemon's state could not be written.
    #[error("{what} {path}: {source}")]
    Io {
        /// What was being done.
        what: &'static str,
        /// The file.
        path: String,
        /// The error.
        source: std::io::Error,
    },
}
