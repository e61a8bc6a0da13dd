//! Errors of building and exporting images.

use thaw_core::FormatError;
use thaw_store::error::SharedReadError;
use thaw_store::RepoError;
use thiserror::Error;

/// Why a build failed. Nothing outside the store is written by a build, and a failed
/// build stores no manifest or tag (chunks it uploaded are removed by `thaw gc`).
#[derive(Debug, Error)]
pub enum BuildError {
    /// Reading the source failed.
    #[error("{op} {path}: {source}")]
    Io {
        /// What was being done.
        op: &'static str,
        /// On which file.
        path: String,
        /// The error.
        source: std::io::Error,
    },
    /// A tar entry is malformed or truncated.
    #[error("tar entry {entry:?}: {reason}")]
    Tar {
        /// The entry's path (or where in the archive).
        entry: String,
        /// What is wrong.
        reason: String,
    },
    /// An archive path that is absolute, escapes with `..`, or names the root wrongly.
    #[error("unsafe path {path:?} in archive: {reason}")]
    UnsafePath {
        /// The path.
        path: String,
        /// What is wrong.
        reason: &'static str,
    },
    /// A hard link that does not name an earlier non-directory entry of the archive.
    #[error("hard link {path:?} -> {target:?}: {reason}")]
    HardLink {
        /// The link.
        path: String,
        /// What it names.
        target: String,
        /// What is wrong.
        reason: &'static str,
    },
    /// An entry under something that is not a directory.
    #[error("{path:?}: a parent is not a directory")]
    NotADirectory {
        /// The entry.
        path: String,
    },
    /// A file type thaw does not store.
    #[error("{path}: unsupported file type {kind}")]
    Unsupported {
        /// The file.
        path: String,
        /// Its type.
        kind: String,
    },
    /// An OCI image layout that is malformed, incomplete or fails a digest check.
    #[error("OCI image layout {layout}: {reason}")]
    Oci {
        /// The layout's directory.
        layout: String,
        /// What is wrong.
        reason: String,
    },
    /// Storing chunks, the manifest or the tag failed.
    #[error(transparent)]
    Chunk(#[from] RepoError),
    /// A value thaw-core refused (a tag name, chunker settings, the manifest).
    #[error(transparent)]
    Format(#[from] FormatError),
    /// A build thread died.
    #[error("build thread failed: {0}")]
    Internal(String),
}

/// Why an export failed.
#[derive(Debug, Error)]
pub enum ExportError {
    /// The destination holds something already.
    #[error("destination {0} exists and is not an empty directory")]
    DestinationNotEmpty(String),
    /// Writing the tree failed.
    #[error("{op} {path}: {source}")]
    Io {
        /// What was being done.
        op: &'static str,
        /// On which path.
        path: String,
        /// The error.
        source: std::io::Error,
    },
    /// A chunk could not be read and verified.
    #[error("reading chunks: {0}")]
    Chunk(SharedReadError),
    /// An export thread died, or the image and the store disagree.
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
