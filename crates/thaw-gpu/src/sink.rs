//! Where loaded bytes go: a [`Sink`] owns the destination, and each decode worker gets a
//! [`Lane`] of its own staging slots, which it fills and copies to known offsets of the
//! destination independently of every other worker. [`HostSink`] is host memory, what
//! tests and machines without a GPU use; it counts its live allocations so that tests
//! can prove a failed load frees everything.

use crate::memfd::SharedMemory;
use crate::LoadError;
use std::ptr::NonNull;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;

/// The destination of one load.
pub trait Sink: Send + Sync {
    /// One worker's staging slots and copy queue.
    type Lane: Lane;
    /// Allocates the destination: `len` bytes.
    fn allocate(&mut self, len: u64) -> Result<(), LoadError>;
    /// A lane of `slots` staging slots of `slot_bytes` each, for one worker thread.
    fn lane(&self, slots: usize, slot_bytes: usize) -> Result<Self::Lane, LoadError>;
    /// Called once every lane has waited for its copies.
    fn finish(&mut self) -> Result<(), LoadError>;
}

/// One worker's staging slots. The worker fills a slot, submits its copy, and fills the
/// next while the copy runs; [`Lane::slot`] waits for a slot's last copy before handing
/// it out again.
pub trait Lane: Send {
    /// How many slots there are.
    fn slots(&self) -> usize;
    /// Waits until slot `i`'s last copy is done, and returns it.
    fn slot(&mut self, i: usize) -> Result<&mut [u8], LoadError>;
    /// Starts copying `slot[from..to]` of slot `i` to `offset` in the destination; may
    /// return before the copy is done.
    fn submit(&mut self, i: usize, from: usize, to: usize, offset: u64) -> Result<(), LoadError>;
    /// Sets `len` bytes at `offset` in the destination to zero (a memset on a device: no
    /// zero buffers cross the link).
    fn zero(&mut self, offset: u64, len: u64) -> Result<(), LoadError>;
    /// The destination's bytes `offset..offset + len`, to be filled in place, where the
    /// destination is memory this process writes directly (host memory): a piece that
    /// lands in one range skips the slot and its copy. `None` where bytes must be staged
    /// (a device), or the range is outside the destination.
    fn direct(&mut self, _offset: u64, _len: usize) -> Option<&mut [u8]> {
        None
    }
    /// Waits for every copy this lane started. Called before the lane is dropped, on
    /// failure too, so no copy still reads a slot that is freed.
    fn wait(&mut self) -> Result<(), LoadError>;
}

/// Live allocations of host sinks: staging slots and destinations.
#[derive(Debug, Default, Clone)]
pub struct Allocations(Arc<AtomicI64>);

impl Allocations {
    /// How many are alive now.
    pub fn live(&self) -> i64 {
        self.0.load(Ordering::SeqCst)
    }
    fn add(&self) -> Counted {
        self.0.fetch_add(1, Ordering::SeqCst);
        Counted(self.clone())
    }
}

/// One allocation, counted until dropped.
#[derive(Debug)]
struct Counted(Allocations);

impl Drop for Counted {
    fn drop(&mut self) {
        (self.0).0.fetch_sub(1, Ordering::SeqCst);
    }
}

/// What holds a host destination's bytes.
#[derive(Debug)]
enum Memory {
    /// This process's heap.
    Heap(Vec<u8>),
    /// A memfd, to be sealed and handed to other processes.
    Shared(SharedMemory),
}

impl Memory {
    fn as_slice(&self) -> &[u8] {
        match self {
            Memory::Heap(v) => v,
            Memory::Shared(m) => m.as_slice(),
        }
    }
}

/// Host memory lanes write into at disjoint offsets.
#[derive(Debug)]
struct HostDestination {
    ptr: NonNull<u8>,
    len: usize,
    /// Owns the memory `ptr` points into; only ever touched through `ptr` while lanes live.
    owner: Memory,
    _counted: Counted,
}

// SAFETY: the memory is owned by the destination; lanes write disjoint ranges of it
// through the pointer (the pipeline gives each range of the file to exactly one piece of
// work), and nothing reads it until every lane has finished.
unsafe impl Send for HostDestination {}
// SAFETY: as above.
unsafe impl Sync for HostDestination {}

impl HostDestination {
    fn new(len: usize, counted: Counted) -> Self {
        // Zeroed pages from the kernel (a large allocation is a fresh mapping), asked for
        // all at once rather than faulted in one by one by the workers.
        let mut owner = vec![0u8; len];
        crate::memfd::prefault(owner.as_mut_ptr(), len);
        let ptr = NonNull::new(owner.as_mut_ptr()).unwrap_or(NonNull::dangling());
        HostDestination {
            ptr,
            len,
            owner: Memory::Heap(owner),
            _counted: counted,
        }
    }

    fn shared(name: &str, len: usize, counted: Counted) -> Result<Self, LoadError> {
        let memory = SharedMemory::create(name, len)
            .map_err(|e| LoadError::Pipeline(format!("shared memory of {len} bytes: {e}")))?;
        let ptr = memory
            .write_ptr()
            .ok_or_else(|| LoadError::Pipeline("shared memory already sealed".into()))?;
        Ok(HostDestination {
            ptr,
            len,
            owner: Memory::Shared(memory),
            _counted: counted,
        })
    }

    /// The range `offset..offset + len`, checked.
    fn range(&self, offset: u64, len: usize) -> Result<usize, LoadError> {
        let start = usize::try_from(offset).ok();
        match start.and_then(|s| s.checked_add(len).map(|e| (s, e))) {
            Some((s, e)) if e <= self.len => Ok(s),
            _ => Err(LoadError::Pipeline(format!(
                "a copy of {len} bytes at {offset} outside a destination of {}",
                self.len
            ))),
        }
    }

    fn write(&self, offset: u64, bytes: &[u8]) -> Result<(), LoadError> {
        let start = self.range(offset, bytes.len())?;
        // SAFETY: in bounds (checked above); ranges written by lanes never overlap, and
        // `bytes` is a staging slot, never the destination itself.
        unsafe {
            std::ptr::copy_nonoverlapping(
                bytes.as_ptr(),
                self.ptr.as_ptr().add(start),
                bytes.len(),
            );
        }
        Ok(())
    }

    fn zero(&self, offset: u64, len: u64) -> Result<(), LoadError> {
        let n = usize::try_from(len).map_err(|_| LoadError::Pipeline("zero run".into()))?;
        let start = self.range(offset, n)?;
        // SAFETY: in bounds (checked above); no other lane writes this range.
        unsafe { std::ptr::write_bytes(self.ptr.as_ptr().add(start), 0, n) };
        Ok(())
    }
}

/// Host memory as the destination: the heap, or a memfd to hand over.
#[derive(Debug, Default)]
pub struct HostSink {
    destination: Option<Arc<HostDestination>>,
    allocations: Allocations,
    /// A memfd of this name instead of the heap.
    shared: Option<String>,
}

impl HostSink {
    /// A host sink on the heap; allocations are counted in `allocations`.
    pub fn new(allocations: Allocations) -> Self {
        HostSink {
            destination: None,
            allocations,
            shared: None,
        }
    }

    /// A host sink into a memfd named `name` (see [`HostSink::into_shared`]).
    pub fn shared(allocations: Allocations, name: &str) -> Self {
        HostSink {
            shared: Some(name.to_owned()),
            ..Self::new(allocations)
        }
    }

    /// The loaded bytes (the destination). Empty before a load.
    pub fn data(&self) -> &[u8] {
        self.destination
            .as_ref()
            .map_or(&[], |d| d.owner.as_slice())
    }

    /// The loaded bytes, taken out of the sink (copied if they are in a memfd).
    pub fn into_data(self) -> Vec<u8> {
        match self.destination.and_then(|d| Arc::try_unwrap(d).ok()) {
            Some(HostDestination {
                owner: Memory::Heap(v),
                ..
            }) => v,
            Some(d) => d.owner.as_slice().to_vec(),
            None => Vec::new(),
        }
    }

    /// The memfd holding the loaded bytes (unsealed), for a sink made with
    /// [`HostSink::shared`].
    pub fn into_shared(self) -> Option<SharedMemory> {
        match self.destination.and_then(|d| Arc::try_unwrap(d).ok()) {
            Some(HostDestination {
                owner: Memory::Shared(m),
                ..
            }) => Some(m),
            _ => None,
        }
    }
}

impl Sink for HostSink {
    type Lane = HostLane;

    fn allocate(&mut self, len: u64) -> Result<(), LoadError> {
        let len = usize::try_from(len)
            .map_err(|_| LoadError::Pipeline(format!("{len} bytes do not fit in memory")))?;
        let counted = self.allocations.add();
        let destination = match &self.shared {
            Some(name) => HostDestination::shared(name, len, counted)?,
            None => HostDestination::new(len, counted),
        };
        self.destination = Some(Arc::new(destination));
        Ok(())
    }

    fn lane(&self, slots: usize, slot_bytes: usize) -> Result<HostLane, LoadError> {
        let destination = self
            .destination
            .clone()
            .ok_or_else(|| LoadError::Pipeline("a lane before the destination".into()))?;
        Ok(HostLane {
            slots: (0..slots.max(1))
                .map(|_| (vec![0u8; slot_bytes], self.allocations.add()))
                .collect(),
            destination,
        })
    }

    fn finish(&mut self) -> Result<(), LoadError> {
        Ok(())
    }
}

/// A host lane: copies are done by the time `submit` returns.
#[derive(Debug)]
pub struct HostLane {
    slots: Vec<(Vec<u8>, Counted)>,
    destination: Arc<HostDestination>,
}

impl Lane for HostLane {
    fn slots(&self) -> usize {
        self.slots.len()
    }
    fn slot(&mut self, i: usize) -> Result<&mut [u8], LoadError> {
        self.slots
            .get_mut(i)
            .map(|(s, _)| s.as_mut_slice())
            .ok_or_else(|| LoadError::Pipeline(format!("no slot {i}")))
    }
    fn submit(&mut self, i: usize, from: usize, to: usize, offset: u64) -> Result<(), LoadError> {
        let bytes = self
            .slots
            .get(i)
            .and_then(|(s, _)| s.get(from..to))
            .ok_or_else(|| LoadError::Pipeline(format!("slot {i} has no bytes {from}..{to}")))?;
        self.destination.write(offset, bytes)
    }
    fn zero(&mut self, offset: u64, len: u64) -> Result<(), LoadError> {
        self.destination.zero(offset, len)
    }
    fn direct(&mut self, offset: u64, len: usize) -> Option<&mut [u8]> {
        let start = self.destination.range(offset, len).ok()?;
        // SAFETY: in bounds (checked above); the pipeline gives each destination range to
        // exactly one piece, so no other lane reads or writes these bytes, and nothing
        // reads the destination until every lane is done. The slice borrows this lane,
        // which holds the destination alive.
        Some(unsafe {
            std::slice::from_raw_parts_mut(self.destination.ptr.as_ptr().add(start), len)
        })
    }
    fn wait(&mut self) -> Result<(), LoadError> {
        Ok(())
    }
}
