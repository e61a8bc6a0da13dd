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

#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("{path}: not a safetensors file: {reason}")]
    BadHeader { path: String, reason: String },
    #[error("{0} is not a regular file in the image")]
    NotAFile(String),
    #[error("reading chunk {index} of {path}: {source}")]
    Chunk {
        path: String,
        index: usize,
        source: SharedReadError,
    },
    #[error("CUDA: {0}")]
    Cuda(String),
    #[error("no CUDA driver on this machine (libcuda not found)")]
    NoCuda,
    #[error("the copy thread failed: {0}")]
    Pipeline(String),
}
