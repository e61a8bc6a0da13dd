//! thaw's node daemon (`thaw serve`): one process per node owning the shared memory and
//! disk caches, the mounts of every container on the node, and prewarm jobs, behind a
//! versioned JSON API over HTTP. Also the API's client, for the CLI.
//!
//! This is the only crate that knows HTTP and JSON.

pub mod api;
pub mod client;
mod error;
mod http;
pub mod jobs;
mod metrics;
pub mod mounts;
pub mod validate;

pub use client::{Client, ClientError};
pub use error::ApiError;
pub use http::router;
pub use mounts::MountSettings;

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;
use thaw_core::{ImageId, Manifest};
use thaw_store::{ChunkReader, ReadError, ReaderConfig, Repository};

/// Everything `thaw serve` is told.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    pub listen: SocketAddr,
    /// Clients must send `Authorization: Bearer <token>`. Required off loopback.
    pub token: Option<String>,
    pub reader: ReaderConfig,
    pub mounts: MountSettings,
    /// Once listening, write the bound address here (useful with port 0).
    pub ready_file: Option<PathBuf>,
}

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("refusing to listen on {0} without a token: set THAW_TOKEN or --token-file, or listen on a loopback address")]
    TokenRequired(SocketAddr),
    #[error("the token is empty")]
    EmptyToken,
    #[error("listening on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("opening the cache: {0}")]
    Cache(#[from] ReadError),
    #[error("{what} {path}: {source}")]
    Io {
        what: &'static str,
        path: String,
        source: std::io::Error,
    },
}

/// The daemon's shared state.
#[derive(Debug)]
pub struct Node {
    pub repo: Repository,
    /// One reader, so one memory and one disk cache, for every mount and job.
    pub reader: Arc<ChunkReader>,
    pub jobs: Arc<jobs::Jobs>,
    pub mounts: mounts::Mounts,
    pub token: Option<String>,
    pub started: Instant,
    pub http: http::HttpStats,
    /// Recently used manifests: images are immutable, so a prewarm's manifest serves the
    /// mount that follows without another request.
    manifests: parking_lot::Mutex<lru::LruCache<ImageId, Arc<Manifest>>>,
}

impl Node {
    pub fn new(repo: Repository, config: &ServerConfig) -> Result<Arc<Self>, ServeError> {
        if config.token.as_deref() == Some("") {
            return Err(ServeError::EmptyToken);
        }
        if config.token.is_none() && !config.listen.ip().is_loopback() {
            return Err(ServeError::TokenRequired(config.listen));
        }
        let reader = ChunkReader::new(repo.packs().clone(), config.reader.clone())?;
        let state = &config.mounts.state_dir;
        let mounts =
            mounts::Mounts::open(config.mounts.clone()).map_err(|source| ServeError::Io {
                what: "opening the state directory",
                path: state.display().to_string(),
                source,
            })?;
        Ok(Arc::new(Node {
            repo,
            reader,
            jobs: Arc::default(),
            mounts,
            token: config.token.clone(),
            started: Instant::now(),
            http: http::HttpStats::default(),
            manifests: parking_lot::Mutex::new(lru::LruCache::new(MANIFESTS_CACHED)),
        }))
    }

    /// An image's manifest, from memory when recently used.
    pub async fn manifest(&self, id: &ImageId) -> Result<Arc<Manifest>, ApiError> {
        if let Some(m) = self.manifests.lock().get(id) {
            return Ok(m.clone());
        }
        let m = Arc::new(self.repo.get_manifest(id).await?);
        // An image built since the daemon started may sit in packs it has not loaded.
        if m.chunks.iter().any(|c| !self.repo.packs().contains(&c.id)) {
            self.repo.packs().reload().await?;
        }
        self.manifests.lock().put(*id, m.clone());
        Ok(m)
    }
}

/// Manifests the daemon keeps in memory.
const MANIFESTS_CACHED: std::num::NonZeroUsize = std::num::NonZeroUsize::new(32).unwrap();

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
        let tmp = f.with_extension("tmp");
        std::fs::write(&tmp, format!("{addr}\n"))
            .and_then(|()| std::fs::rename(&tmp, f))
            .map_err(|source| ServeError::Io {
                what: "writing the ready file",
                path: f.display().to_string(),
                source,
            })?;
    }
    let served = axum::serve(listener, router(node.clone()))
        .with_graceful_shutdown(shutdown)
        .await;
    node.jobs.cancel_all();
    node.mounts.remove_all().await;
    served.map_err(|source| ServeError::Bind { addr, source })
}
