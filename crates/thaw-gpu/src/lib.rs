//! Weights to GPU: a safetensors file in an image streams from the chunk store through
//! pinned host buffers into one GPU allocation, with fetching (and decompression and
//! verification, in the reader), copying into staging buffers, and DMA to the device all
//! overlapping.
//!
//! The pipeline is generic over a [`Sink`]: [`cuda::CudaSink`] writes GPU memory through
//! `cudarc` (loaded at run time, so this crate builds and its tests run on machines
//! without CUDA), [`HostSink`] writes host memory and is what CI exercises.

pub mod cuda;
mod header;
mod pipeline;

pub use header::{Tensor, WeightsHeader, MAX_HEADER_BYTES};
pub use pipeline::{load, HostSink, LoadOptions, LoadReport, Sink};

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
    /// The copy thread died.
    #[error("the copy thread failed: {0}")]
    Pipeline(String),
}
