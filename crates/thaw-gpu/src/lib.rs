//! Weights to GPU: a safetensors file in an image goes from the chunk store through
//! pinned staging slots into one destination allocation, with decode workers (one per
//! core but one) each fetching, decompressing and verifying chunks straight into their
//! own slots and copying them to their known offsets, all overlapping.
//!
//! The pipeline is generic over a [`Sink`]: [`cuda::CudaSink`] writes GPU memory through
//! `cudarc` (loaded at run time, so this crate builds and its tests run on machines
//! without CUDA), [`HostSink`] writes host memory and is what CI exercises.

mod checksums;
pub mod cuda;
mod fill;
pub mod handoff;
mod header;
mod layout;
pub mod memfd;
mod pipeline;
mod plan;
pub mod resident;
mod sink;

pub use checksums::{tensor_checksums, TensorChecksum};
pub use header::{Tensor, WeightsHeader, MAX_HEADER_BYTES};
pub use layout::Layout;
pub use pipeline::{load, LoadOptions, LoadReport, SLOT_BYTES};
pub use sink::{Allocations, HostLane, HostSink, Lane, Sink};

use thaw_store::error::SharedReadError;

/// Why a load failed.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// The file's header is not a valid safetensors header.
    #[error("{path}: not a safetensors file: {reason}")]
    BadHeader {
        /// The file in the image.
        path: String,
        /// What is wrong.
        reason: String,
    },
    /// The path names no regular file of the image.
    #[error("{0} is not a regular file in the image")]
    NotAFile(String),
    /// A chunk of the file could not be read and verified.
    #[error("reading chunk {index} of {path}: {source}")]
    Chunk {
        /// The file in the image.
        path: String,
        /// The extent's index in the file.
        index: usize,
        /// The read error.
        source: SharedReadError,
    },
    /// The CUDA driver failed.
    #[error("CUDA: {0}")]
    Cuda(String),
    /// No CUDA driver library on this machine.
    #[error("no CUDA driver on this machine (libcuda not found)")]
    NoCuda,
    /// The resident tier could not take the model.
    #[error("resident weights: {0}")]
    Resident(String),
    /// The pipeline itself failed (a worker died, a copy out of bounds).
    #[error("the load pipeline failed: {0}")]
    Pipeline(String),
}
