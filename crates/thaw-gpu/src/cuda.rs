//! GPU memory as the destination, through `cudarc`'s driver API (loaded at run time).
//!
//! Staging buffers are page-locked host memory (portable, not write-combined), so DMA
//! reads them directly; each copy is recorded with an event, and a buffer is written
//! again only after its event completes.

use crate::{LoadError, Sink};
use cudarc::driver::{CudaContext, CudaEvent, CudaSlice, CudaStream, PinnedHostSlice};
use std::sync::Arc;

/// Whether a CUDA driver can be loaded here (checked before anything touches CUDA:
/// creating a context without one panics).
pub fn cuda_available() -> bool {
    // SAFETY: only probes for the shared library.
    unsafe { cudarc::driver::sys::is_culib_present() }
}

fn cuda(e: impl std::fmt::Debug) -> LoadError {
    LoadError::Cuda(format!("{e:?}"))
}

/// Writes into one device allocation on one stream.
pub struct CudaSink {
    ctx: Arc<CudaContext>,
    stream: Arc<CudaStream>,
    staging: Vec<PinnedHostSlice<u8>>,
    events: Vec<Option<CudaEvent>>,
    dst: Option<CudaSlice<u8>>,
}

impl std::fmt::Debug for CudaSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CudaSink")
            .field("staging", &self.staging.len())
            .finish_non_exhaustive()
    }
}

// SAFETY: the pinned buffers are owned by the sink and only touched by the thread that
// holds it; cudarc's context and stream are thread-safe.
unsafe impl Send for CudaSink {}

impl CudaSink {
    /// A sink on GPU `device` with `buffers` page-locked staging buffers of `buffer_bytes` each. Fails with `NoCuda` where there is no driver.
    pub fn new(device: usize, buffers: usize, buffer_bytes: usize) -> Result<Self, LoadError> {
        if !cuda_available() {
            return Err(LoadError::NoCuda);
        }
        let ctx = CudaContext::new(device).map_err(cuda)?;
        let stream = ctx.new_stream().map_err(cuda)?;
        let staging = (0..buffers.max(1))
            .map(|_| {
                // SAFETY: the buffer is written before any byte of it is read.
                unsafe {
                    ctx.alloc_pinned_with_flags::<u8>(
                        buffer_bytes.max(1),
                        cudarc::driver::sys::CU_MEMHOSTALLOC_PORTABLE,
                    )
                }
                .map_err(cuda)
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(CudaSink {
            events: (0..staging.len()).map(|_| None).collect(),
            ctx,
            stream,
            staging,
            dst: None,
        })
    }

    /// The CUDA context the destination lives in.
    pub fn context(&self) -> &Arc<CudaContext> {
        &self.ctx
    }

    /// The loaded bytes on the device.
    pub fn device(&self) -> Option<&CudaSlice<u8>> {
        self.dst.as_ref()
    }

    /// Copies the device bytes back (to check them).
    pub fn to_host(&self) -> Result<Vec<u8>, LoadError> {
        let Some(d) = &self.dst else {
            return Ok(Vec::new());
        };
        let host = self.stream.clone_dtoh(d).map_err(cuda)?;
        // The copy is asynchronous in form: wait for it before the bytes are looked at.
        self.stream.synchronize().map_err(cuda)?;
        Ok(host)
    }
}

impl Sink for CudaSink {
    fn staging_count(&self) -> usize {
        self.staging.len()
    }
    fn staging_bytes(&self) -> usize {
        self.staging[0].len()
    }
    fn allocate(&mut self, len: u64) -> Result<(), LoadError> {
        // SAFETY: every byte is written by the copies before the load returns.
        self.dst = Some(unsafe { self.stream.alloc::<u8>(len.max(1) as usize) }.map_err(cuda)?);
        Ok(())
    }
    fn staging(&mut self, i: usize) -> Result<&mut [u8], LoadError> {
        if let Some(e) = self.events[i].take() {
            e.synchronize().map_err(cuda)?;
        }
        self.staging[i].as_mut_slice().map_err(cuda)
    }
    fn submit(&mut self, i: usize, len: usize, offset: u64) -> Result<(), LoadError> {
        let dst = self.dst.as_mut().ok_or_else(|| cuda("no destination"))?;
        let src = &self.staging[i].as_slice().map_err(cuda)?[..len];
        let o = offset as usize;
        let mut view = dst.slice_mut(o..o + len);
        // Asynchronous from a page-locked buffer; the event below says when it is free.
        self.stream.memcpy_htod(src, &mut view).map_err(cuda)?;
        self.events[i] = Some(self.stream.record_event(None).map_err(cuda)?);
        Ok(())
    }
    fn finish(&mut self) -> Result<(), LoadError> {
        self.stream.synchronize().map_err(cuda)
    }
}
