//! Errors of building and exporting images.

use thaw_core::FormatError;
use thaw_store::error::SharedReadError;
use thaw_store::RepoError;
use thiserror::Error;

/// Why a build failed. Nothing outside the store is written by a build, and a failed
/// build stores no manifest or tag (chunks it uploaded are removed by `thaw gc`).
#[derive(Debug, Error)]
pub enum BuildError {
    #[error("{op} {path}: {source}")]
    Io {
        op: &'static str,
        path: String,
        source: std::io::Error,
    },
    #[error("tar entry {entry:?}: {reason}")]
    Tar { entry: String, reason: String },
    #[error("unsafe path {path:?} in archive: {reason}")]
    UnsafePath { path: String, reason: &'static str },
    #[error("hard link {path:?} -> {target:?}: {reason}")]
    HardLink {
        path: String,
        target: String,
        reason: &'static str,
    },
    #[error("{path:?}: a parent is not a directory")]
    NotADirectory { path: String },
    #[error("{path}: unsupported file type {kind}")]
    Unsupported { path: String, kind: String },
    #[error("OCI image layout {layout}: {reason}")]
    Oci { layout: String, reason: String },
    #[error(transparent)]
    Chunk(#[from] RepoError),
    #[error(transparent)]
    Format(#[from] FormatError),
    #[error("build thread failed: {0}")]
    Internal(String),
}

/// Why an export failed.
#[derive(Debug, Error)]
pub enum ExportError {
    #[error("destination {0} exists and is not an empty directory")]
    DestinationNotEmpty(String),
    #[error("{op} {path}: {source}")]
    Io {
        op: &'static str,
        path: String,
        source: std::io::Error,
    },
    #[error("reading chunks: {0}")]
    Chunk(SharedReadError),
    #[error("export thread failed: {0}")]
    Internal(String),
}

pub(crate) fn io_err<'a>(
    op: &'static str,
    path: &'a std::path::Path,
) -> impl FnOnce(std::io::Error) -> BuildError + 'a {
    move |source| BuildError::Io {
        op,
        path: path.display().to_string(),
        source,
    }
}
