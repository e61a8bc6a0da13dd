//! thaw's node daemon (`thaw serve`): one process per node owning the shared memory and
//! disk caches, the mounts of every container on the node, and prewarm jobs, behind a
//! versioned JSON API over HTTP. The API's wire types and its client live in `thaw-api`.
//!
//! This is the only crate that serves HTTP.

mod error;
mod http;
pub mod jobs;
mod metrics;
pub mod mounts;
pub mod node;
pub mod validate;

pub use error::ApiError;
pub use http::router;
pub use mounts::MountSettings;
pub use node::Node;
pub use thaw_api::{api, Client, ClientError};

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use thaw_store::{ReadError, ReaderConfig, Repository};

/// Everything `thaw serve` is told.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// The TCP address to listen on.
    pub listen: SocketAddr,
    /// Clients must send `Authorization: Bearer <token>`. Required off loopback.
    pub token: Option<String>,
    /// The shared reader's caches and scheduler.
    pub reader: ReaderConfig,
    /// How mounts are made.
    pub mounts: MountSettings,
    /// Once listening, write the bound address here (useful with port 0).
    pub ready_file: Option<PathBuf>,
}

/// Why the daemon could not start (or stopped serving).
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// Listening off loopback needs a token.
    #[error("refusing to listen on {0} without a token: set THAW_TOKEN or --token-file, or listen on a loopback address")]
    TokenRequired(SocketAddr),
    /// The token file or variable holds nothing.
    #[error("the token is empty")]
    EmptyToken,
    /// The listening socket failed.
    #[error("listening on {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The error.
        source: std::io::Error,
    },
    /// The disk cache could not be opened.
    #[error("opening the cache: {0}")]
    Cache(#[from] ReadError),
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

/// Runs the daemon until `shutdown` resolves; then stops accepting requests, cancels
/// prewarm jobs and unmounts every mount it made.
pub async fn serve(
    repo: Repository,
    config: ServerConfig,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServeError> {
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .map_err(|source| ServeError::Bind {
            addr: config.listen,
            source,
        })?;
    let addr = listener.local_addr().map_err(|source| ServeError::Bind {
        addr: config.listen,
        source,
    })?;
    let mut config = config;
    config.mounts.api_address = Some(format!("http://{addr}"));
    let node = Node::new(repo, &config)?;
    tracing::info!(%addr, "listening");
    eprintln!("thaw serve: listening on http://{addr}");
    if let Some(f) = &config.ready_file {
        thaw_fuse::files::write_atomically(f, format!("{addr}\n").as_bytes()).map_err(
            |source| ServeError::Io {
                what: "writing the ready file",
                path: f.display().to_string(),
                source,
            },
        )?;
    }
    let served = axum::serve(listener, router(node.clone()))
        .with_graceful_shutdown(shutdown)
        .await;
    node.jobs.cancel_all();
    node.mounts.remove_all().await;
    served.map_err(|source| ServeError::Bind { addr, source })
}
