//! Errors of the store layers.

use std::sync::Arc;
use std::time::Duration;
use thaw_core::{ChunkId, FormatError, ImageId, PackId};
use thiserror::Error;

type Source = Box<dyn std::error::Error + Send + Sync>;

/// An error from a [`crate::BlobStore`].
#[derive(Debug, Error)]
pub enum StoreError {
    /// No object has this key.
    #[error("object {key:?} not found")]
    NotFound {
        /// The key.
        key: String,
    },
    /// Worth retrying: network trouble, throttling, a server error.
    #[error("{op} {key:?} failed (transient): {source}")]
    Transient {
        /// The request.
        op: &'static str,
        /// Its key.
        key: String,
        /// The backend's error.
        source: Source,
    },
    /// Not worth retrying: permissions, bad paths, unsupported operations.
    #[error("{op} {key:?} failed: {source}")]
    Permanent {
        /// The request.
        op: &'static str,
        /// Its key.
        key: String,
        /// The backend's error.
        source: Source,
    },
    /// A ranged GET returned fewer bytes than asked (transient: the object may be being
    /// replaced, or the connection cut).
    #[error("{op} {key:?}: the store returned {got} bytes for a range of {want}")]
    ShortRead {
        /// The request.
        op: &'static str,
        /// Its key.
        key: String,
        /// Bytes asked for.
        want: u64,
        /// Bytes returned.
        got: u64,
    },
    /// The retry layer gave up: the overall deadline passed or the attempts ran out.
    #[error("{op} {key:?} gave up after {after:?} ({attempts} attempts); last error: {last}")]
    Deadline {
        /// The request.
        op: &'static str,
        /// Its key.
        key: String,
        /// Time spent.
        after: Duration,
        /// Attempts made.
        attempts: u32,
        /// The last attempt's error.
        last: String,
    },
    /// A failure injected by `FaultyStore` (tests).
    #[error("{op} {key:?}: injected fault")]
    Injected {
        /// The request.
        op: &'static str,
        /// Its key.
        key: String,
    },
    /// A `--store` location thaw cannot open.
    #[error("bad store location {spec:?}: {reason}")]
    BadLocation {
        /// The location as given.
        spec: String,
        /// Why.
        reason: String,
    },
}

impl StoreError {
    /// Whether trying the same request again may succeed.
    pub fn is_transient(&self) -> bool {
        matches!(
            self,
            StoreError::Transient { .. }
                | StoreError::Injected { .. }
                | StoreError::ShortRead { .. }
        )
    }
}

/// An error of the repository: images, tags, traces, pack indexes and pack writing.
#[derive(Debug, Error)]
pub enum RepoError {
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A manifest names a chunk no pack of the store holds.
    #[error("chunk {0} is not in any pack of this store")]
    UnknownChunk(ChunkId),
    /// A pack index object does not decode.
    #[error("pack index {key:?}: {source}")]
    BadPackIndex {
        /// Its key.
        key: String,
        /// Why.
        source: FormatError,
    },
    /// An image's manifest does not decode or is invalid.
    #[error("manifest of image {image}: {source}")]
    BadManifest {
        /// The image.
        image: ImageId,
        /// Why.
        source: FormatError,
    },
    /// An image's manifest object does not hash to the image's id: the store is damaged.
    #[error("image {image} does not hash to its id (got {actual})")]
    ImageIdMismatch {
        /// The image asked for.
        image: ImageId,
        /// What the stored bytes hash to.
        actual: ImageId,
    },
    /// No image or tag matches what the user typed.
    #[error("no image or tag matches {0:?}")]
    NoSuchImage(String),
    /// The store has no manifest for this image id (a tag may name a removed image).
    #[error("image {0} has no manifest in this store")]
    MissingManifest(ImageId),
    /// An id prefix matches several images.
    #[error("{input:?} is ambiguous: it matches {count} images")]
    AmbiguousImage {
        /// What the user typed.
        input: String,
        /// How many images it matches.
        count: usize,
    },
    /// Something the repository read or was given is malformed.
    #[error(transparent)]
    Format(#[from] FormatError),
    /// Reading chunks failed.
    #[error(transparent)]
    Read(#[from] ReadError),
    /// The pack writer's pipeline failed.
    #[error("pack writer: {0}")]
    Writer(String),
    /// gc marked or deleted packs this build's image needs while the build ran. The
    /// manifest was withdrawn; building again works (marked packs are not reused).
    #[error(
        "gc is deleting {} pack(s) this build needs (first: {}); nothing was stored, build again",
        packs.len(), packs.first().map(ToString::to_string).unwrap_or_default()
    )]
    GcConflict {
        /// The packs marked or gone.
        packs: Vec<PackId>,
    },
    /// A stored trace does not decode.
    #[error("trace {key:?}: {source}")]
    BadTrace {
        /// Its key.
        key: String,
        /// Why.
        source: FormatError,
    },
    /// A trace pushed for one image was recorded on another.
    #[error("the trace was recorded on image {recorded}, not {image}")]
    TraceImageMismatch {
        /// The image it was pushed for.
        image: ImageId,
        /// The image it was recorded on.
        recorded: ImageId,
    },
    /// A trace names a chunk the image does not hold.
    #[error("the trace names chunk {chunk} at {path:?}, which image {image} does not hold")]
    TraceChunkNotInImage {
        /// The image.
        image: ImageId,
        /// The chunk.
        chunk: ChunkId,
        /// The file the trace says it was read from.
        path: String,
    },
    /// An image's stored OCI documents are damaged or too large.
    #[error("OCI documents of image {image}: {reason}")]
    BadDocuments {
        /// The image.
        image: ImageId,
        /// What is wrong.
        reason: String,
    },
    /// An image has as many traces as are kept.
    #[error("image {image} has {count} traces; at most {max} are kept")]
    TooManyTraces {
        /// The image.
        image: ImageId,
        /// Its traces, with the new one.
        count: usize,
        /// The most kept.
        max: usize,
    },
}

/// An error reading a chunk through the caches and the packs.
#[derive(Debug, Error)]
pub enum ReadError {
    /// No pack of the store holds the chunk.
    #[error("chunk {0} is not in any pack of this store")]
    UnknownChunk(ChunkId),
    /// The bytes the store returned are not the chunk: the store is damaged or lying.
    #[error("integrity error: chunk {chunk} from pack {pack}: {reason}")]
    Integrity {
        /// The chunk asked for.
        chunk: ChunkId,
        /// The pack it was read from.
        pack: PackId,
        /// What was wrong.
        reason: String,
    },
    /// The ranged GET of the chunk's pack failed; the store error keeps its kind (a
    /// missing pack is not transient).
    #[error("fetching chunk {chunk} from pack {pack}: {source}")]
    Fetch {
        /// The chunk asked for.
        chunk: ChunkId,
        /// The pack it lives in.
        pack: PackId,
        /// The store's error, shared by every chunk of the GET.
        source: Arc<StoreError>,
    },
    /// The fetch this read waited for ended without a result: it panicked or was
    /// cancelled. Nothing is left behind; the next read fetches again.
    #[error("the fetch of chunk {0} ended without a result (panicked or cancelled)")]
    Abandoned(ChunkId),
    /// The disk cache could not be opened.
    #[error("disk cache {path}: {source}")]
    DiskCache {
        /// Its directory.
        path: String,
        /// Why.
        source: std::io::Error,
    },
}

impl ReadError {
    /// Whether reading again may succeed.
    pub fn is_transient(&self) -> bool {
        match self {
            ReadError::Fetch { source, .. } => source.is_transient(),
            ReadError::Abandoned(_) => true,
            _ => false,
        }
    }
}

/// A read error that can be handed to every waiter of a single-flight fetch.
pub type SharedReadError = Arc<ReadError>;
