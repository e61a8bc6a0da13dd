//! GPU memory as the destination, through `cudarc`'s driver API (loaded at run time).
//!
//! The destination is one `cuMemAlloc` allocation (not the stream-ordered pool, whose
//! memory cannot be exported to another process). Each worker's lane has its own stream,
//! its own page-locked staging slots (`cuMemHostAlloc` with `PORTABLE`: not
//! write-combined, so the CPU may read them too) and one reusable event per slot; a slot
//! is written again only after its event completes, and a lane waits for its stream
//! before its slots are freed, so DMA never reads freed memory.

use crate::sink::{Lane, Sink};
use crate::LoadError;
use cudarc::driver::{result, sys, CudaContext};
use std::ffi::c_void;
use std::sync::Arc;

/// Whether a CUDA driver can be loaded here (checked before anything touches CUDA:
/// creating a context without one panics).
pub fn cuda_available() -> bool {
    // SAFETY: only probes for the shared library.
    unsafe { sys::is_culib_present() }
}

fn cuda(e: impl std::fmt::Debug) -> LoadError {
    LoadError::Cuda(format!("{e:?}"))
}

/// The GPU's free and total memory, bytes (for checks that a load leaves nothing behind).
pub fn memory_info(ctx: &CudaContext) -> Result<(usize, usize), LoadError> {
    ctx.bind_to_thread().map_err(cuda)?;
    result::mem_get_info().map_err(cuda)
}

/// One device allocation, freed on drop.
#[derive(Debug)]
struct DeviceBuffer {
    ctx: Arc<CudaContext>,
    ptr: sys::CUdeviceptr,
    len: usize,
}

impl Drop for DeviceBuffer {
    fn drop(&mut self) {
        if self.ctx.bind_to_thread().is_ok() {
            // SAFETY: allocated by cuMemAlloc in `allocate`; every lane has synchronised
            // its stream before the sink can be dropped.
            let _ = unsafe { result::free_sync(self.ptr) };
        }
    }
}

/// Writes into one device allocation.
pub struct CudaSink {
    ctx: Arc<CudaContext>,
    dst: Option<Arc<DeviceBuffer>>,
}

impl std::fmt::Debug for CudaSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CudaSink")
            .field("device", &self.ctx.ordinal())
            .field("bytes", &self.dst.as_ref().map(|d| d.len))
            .finish()
    }
}

impl CudaSink {
    /// A sink on GPU `device`. Fails with `NoCuda` where there is no driver.
    pub fn new(device: usize) -> Result<Self, LoadError> {
        if !cuda_available() {
            return Err(LoadError::NoCuda);
        }
        let ctx = CudaContext::new(device).map_err(cuda)?;
        Ok(CudaSink { ctx, dst: None })
    }

    /// The CUDA context the destination lives in.
    pub fn context(&self) -> &Arc<CudaContext> {
        &self.ctx
    }

    /// The destination's device pointer and length.
    pub fn device_ptr(&self) -> Option<(u64, usize)> {
        self.dst.as_ref().map(|d| (d.ptr, d.len))
    }

    /// Copies the device bytes back (to check them).
    pub fn to_host(&self) -> Result<Vec<u8>, LoadError> {
        let Some(d) = &self.dst else {
            return Ok(Vec::new());
        };
        self.ctx.bind_to_thread().map_err(cuda)?;
        let mut host = vec![0u8; d.len];
        // SAFETY: `host` holds `d.len` bytes; the synchronous copy completes before return.
        unsafe { result::memcpy_dtoh_sync(&mut host, d.ptr) }.map_err(cuda)?;
        Ok(host)
    }
}

impl Sink for CudaSink {
    type Lane = CudaLane;

    fn allocate(&mut self, len: u64) -> Result<(), LoadError> {
        self.ctx.bind_to_thread().map_err(cuda)?;
        let len = usize::try_from(len).map_err(cuda)?;
        // SAFETY: a plain allocation; every byte is written by the load before it is read.
        let ptr = unsafe { result::malloc_sync(len.max(1)) }.map_err(cuda)?;
        self.dst = Some(Arc::new(DeviceBuffer {
            ctx: self.ctx.clone(),
            ptr,
            len,
        }));
        Ok(())
    }

    fn lane(&self, slots: usize, slot_bytes: usize) -> Result<CudaLane, LoadError> {
        let dst = self
            .dst
            .clone()
            .ok_or_else(|| LoadError::Pipeline("a lane before the destination".into()))?;
        CudaLane::new(self.ctx.clone(), dst, slots, slot_bytes)
    }

    fn finish(&mut self) -> Result<(), LoadError> {
        Ok(())
    }
}

/// One staging slot: page-locked host memory and the event of its last copy.
struct Slot {
    ptr: *mut u8,
    len: usize,
    event: sys::CUevent,
    pending: bool,
}

/// One worker's stream, slots and events.
pub struct CudaLane {
    ctx: Arc<CudaContext>,
    dst: Arc<DeviceBuffer>,
    stream: sys::CUstream,
    slots: Vec<Slot>,
}

impl std::fmt::Debug for CudaLane {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CudaLane")
            .field("slots", &self.slots.len())
            .finish_non_exhaustive()
    }
}

// SAFETY: the lane's stream, events and pinned slots are used only by the thread that
// holds the lane; the context is bound on that thread before each use.
unsafe impl Send for CudaLane {}

impl CudaLane {
    fn new(
        ctx: Arc<CudaContext>,
        dst: Arc<DeviceBuffer>,
        slots: usize,
        slot_bytes: usize,
    ) -> Result<Self, LoadError> {
        ctx.bind_to_thread().map_err(cuda)?;
        let stream =
            result::stream::create(result::stream::StreamKind::NonBlocking).map_err(cuda)?;
        let mut lane = CudaLane {
            ctx,
            dst,
            stream,
            slots: Vec::new(),
        };
        for _ in 0..slots.max(1) {
            // SAFETY: page-locked allocation; written before any byte is read.
            let ptr =
                unsafe { result::malloc_host(slot_bytes.max(1), sys::CU_MEMHOSTALLOC_PORTABLE) }
                    .map_err(cuda)?;
            let event = match result::event::create(sys::CUevent_flags::CU_EVENT_DISABLE_TIMING) {
                Ok(e) => e,
                Err(e) => {
                    // SAFETY: just allocated, never used.
                    let _ = unsafe { result::free_host(ptr) };
                    return Err(cuda(e));
                }
            };
            lane.slots.push(Slot {
                ptr: ptr.cast(),
                len: slot_bytes.max(1),
                event,
                pending: false,
            });
        }
        Ok(lane)
    }

    fn check(&self, offset: u64, len: usize) -> Result<sys::CUdeviceptr, LoadError> {
        let end = offset.checked_add(len as u64);
        match end {
            Some(end) if end <= self.dst.len as u64 => Ok(self.dst.ptr + offset),
            _ => Err(LoadError::Pipeline(format!(
                "a copy of {len} bytes at {offset} outside a destination of {}",
                self.dst.len
            ))),
        }
    }
}

impl Lane for CudaLane {
    fn slots(&self) -> usize {
        self.slots.len()
    }

    fn slot(&mut self, i: usize) -> Result<&mut [u8], LoadError> {
        let s = self
            .slots
            .get_mut(i)
            .ok_or_else(|| LoadError::Pipeline(format!("no slot {i}")))?;
        if s.pending {
            // SAFETY: a live event of this lane.
            unsafe { result::event::synchronize(s.event) }.map_err(cuda)?;
            s.pending = false;
        }
        // SAFETY: the slot's memory is `len` bytes, owned by the lane, and no copy reads
        // it any more (its event completed).
        Ok(unsafe { std::slice::from_raw_parts_mut(s.ptr, s.len) })
    }

    fn submit(&mut self, i: usize, from: usize, to: usize, offset: u64) -> Result<(), LoadError> {
        let stream = self.stream;
        let s = self
            .slots
            .get(i)
            .filter(|s| from <= to && to <= s.len)
            .ok_or_else(|| LoadError::Pipeline(format!("slot {i} has no bytes {from}..{to}")))?;
        let (ptr, event) = (s.ptr, s.event);
        let dst = self.check(offset, to - from)?;
        // SAFETY: the source is inside the page-locked slot, which stays alive and
        // unwritten until the event recorded after the copy completes; the destination
        // range is inside the allocation (checked).
        unsafe {
            let src = std::slice::from_raw_parts(ptr.add(from), to - from);
            result::memcpy_htod_async(dst, src, stream).map_err(cuda)?;
            result::event::record(event, stream).map_err(cuda)?;
        }
        if let Some(s) = self.slots.get_mut(i) {
            s.pending = true;
        }
        Ok(())
    }

    fn zero(&mut self, offset: u64, len: u64) -> Result<(), LoadError> {
        let n = usize::try_from(len).map_err(cuda)?;
        let dst = self.check(offset, n)?;
        // SAFETY: inside the allocation (checked); ordered on this lane's stream.
        unsafe { result::memset_d8_async(dst, 0, n, self.stream) }.map_err(cuda)
    }

    fn wait(&mut self) -> Result<(), LoadError> {
        self.ctx.bind_to_thread().map_err(cuda)?;
        // SAFETY: this lane's live stream.
        unsafe { result::stream::synchronize(self.stream) }.map_err(cuda)?;
        for s in &mut self.slots {
            s.pending = false;
        }
        Ok(())
    }
}

impl Drop for CudaLane {
    fn drop(&mut self) {
        if self.ctx.bind_to_thread().is_err() {
            return;
        }
        // SAFETY: the stream is this lane's; waiting first means no copy still reads a
        // slot when it is freed.
        unsafe {
            let _ = result::stream::synchronize(self.stream);
            for s in &self.slots {
                let _ = result::event::destroy(s.event);
                let _ = result::free_host(s.ptr.cast::<c_void>());
            }
            let _ = result::stream::destroy(self.stream);
        }
    }
}
