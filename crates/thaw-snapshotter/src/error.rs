//! The snapshotter's errors, each with the gRPC code containerd maps to its own errors.

use std::path::PathBuf;

/// What a snapshot operation can fail with.
#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    /// No snapshot has this key or name.
    #[error("snapshot {0:?} does not exist")]
    NotFound(String),
    /// A snapshot with this key or name exists already.
    #[error("snapshot {0:?} already exists")]
    AlreadyExists(String),
    /// The snapshot is in the wrong state for the operation (a parent that is not
    /// committed, a view committed, a snapshot with children removed).
    #[error("{0}")]
    FailedPrecondition(String),
    /// The request itself is malformed (a bad filter, oversized labels, an empty key).
    #[error("{0}")]
    InvalidArgument(String),
    /// A file system operation on the snapshot directories failed.
    #[error("{op} {path}: {source}")]
    Io {
        /// What was being done.
        op: &'static str,
        /// On what.
        path: PathBuf,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// The metadata file cannot be read or written.
    #[error("snapshot metadata {path}: {reason}")]
    Metadata {
        /// The metadata file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// A lazy layer could not be resolved or mounted (the store is down, the image is
    /// damaged): the pull or the container start fails with this, never falls back.
    #[error("lazy layer {layer}: {reason}")]
    Remote {
        /// The layer's chain id or image.
        layer: String,
        /// Why.
        reason: String,
    },
}

impl SnapshotError {
    pub(crate) fn io(
        op: &'static str,
        path: impl Into<PathBuf>,
    ) -> impl FnOnce(std::io::Error) -> Self {
        let path = path.into();
        move |source| SnapshotError::Io { op, path, source }
    }
}

impl From<SnapshotError> for tonic::Status {
    fn from(e: SnapshotError) -> Self {
        let message = e.to_string();
        match e {
            SnapshotError::NotFound(_) => tonic::Status::not_found(message),
            SnapshotError::AlreadyExists(_) => tonic::Status::already_exists(message),
            SnapshotError::FailedPrecondition(_) => tonic::Status::failed_precondition(message),
            SnapshotError::InvalidArgument(_) => tonic::Status::invalid_argument(message),
            SnapshotError::Remote { .. } => tonic::Status::unavailable(message),
            SnapshotError::Io { .. } | SnapshotError::Metadata { .. } => {
                tonic::Status::internal(message)
            }
        }
    }
}
