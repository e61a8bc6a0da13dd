//! Shared memory for weights: a `memfd` mapped into this process, written once by a load,
//! then sealed (no writes, no resizing, by anyone) and mapped read-only, so that its file
//! descriptor can be handed to serving processes, which map the same pages.

use rustix::fd::{AsFd, BorrowedFd, OwnedFd};
use rustix::fs::{MemfdFlags, SealFlags};
use rustix::mm::{MapFlags, ProtFlags};
use std::ptr::NonNull;

/// A memfd and its mapping in this process.
#[derive(Debug)]
pub struct SharedMemory {
    fd: OwnedFd,
    ptr: NonNull<u8>,
    len: usize,
    sealed: bool,
}

// SAFETY: the mapping is owned by this value; while it is writable only the load writes
// it (at disjoint ranges, see `sink`), and once sealed it is read-only.
unsafe impl Send for SharedMemory {}
// SAFETY: as above.
unsafe impl Sync for SharedMemory {}

fn map(fd: BorrowedFd<'_>, len: usize, prot: ProtFlags) -> std::io::Result<NonNull<u8>> {
    if len == 0 {
        return Ok(NonNull::dangling());
    }
    // SAFETY: a fresh shared mapping of a file we own, `len` bytes long (the file's size).
    let ptr =
        unsafe { rustix::mm::mmap(std::ptr::null_mut(), len, prot, MapFlags::SHARED, fd, 0) }?;
    NonNull::new(ptr.cast()).ok_or_else(|| std::io::Error::other("mmap returned null"))
}

/// Asks the kernel for the pages of `len` bytes at `ptr` now, in one call, instead of one
/// fault per page while a load writes them (a large share of a load's time on a fresh
/// destination), with transparent huge pages where the system allows them (fewer
/// faults and TLB misses). Best effort: on a kernel without `MADV_POPULATE_WRITE` the
/// pages come lazily as before.
pub(crate) fn prefault(ptr: *mut u8, len: usize) {
    const PAGE: usize = 4096;
    let start = (ptr as usize).next_multiple_of(PAGE);
    let end = (ptr as usize).saturating_add(len) / PAGE * PAGE;
    if end <= start {
        return;
    }
    let (addr, n) = (start as *mut std::ffi::c_void, end - start);
    // SAFETY: whole pages inside memory this process owns and is about to write; neither
    // advice changes its contents (the pages are zero either way).
    unsafe {
        let _ = rustix::mm::madvise(addr, n, rustix::mm::Advice::LinuxHugepage);
        let _ = rustix::mm::madvise(addr, n, rustix::mm::Advice::LinuxPopulateWrite);
    }
}

/// How often [`add_seals`] tries again while the pages are still referenced, 25 ms apart.
const SEAL_TRIES: u32 = 40;

/// Seals `fd` against writes and resizing, trying again while the kernel answers EBUSY.
/// The write seal needs every page free of references other than mappings; the kernel
/// waits about 75 ms for them, then gives up. Pages written moments before can still be
/// held that long in another CPU's page batch (a `scripts/test.sh` run failed so), and a
/// pipe holding them releases them only once read.
fn add_seals(fd: &OwnedFd) -> std::io::Result<()> {
    let seals = SealFlags::SHRINK | SealFlags::GROW | SealFlags::WRITE | SealFlags::SEAL;
    let mut tries = 1;
    loop {
        match rustix::fs::fcntl_add_seals(fd, seals) {
            Err(rustix::io::Errno::BUSY) if tries < SEAL_TRIES => {
                tries += 1;
                std::thread::sleep(std::time::Duration::from_millis(25));
            }
            done => return done.map_err(Into::into),
        }
    }
}

impl SharedMemory {
    /// A new memfd of `len` zero bytes, named `name` (as /proc shows it), mapped writable
    /// with its pages allocated: a machine short of memory fails here, with an error,
    /// rather than with a `SIGBUS` in the middle of a load.
    pub fn create(name: &str, len: usize) -> std::io::Result<Self> {
        let fd = rustix::fs::memfd_create(
            format!("thaw-weights:{name}"),
            MemfdFlags::CLOEXEC | MemfdFlags::ALLOW_SEALING,
        )?;
        rustix::fs::ftruncate(&fd, len as u64)?;
        if len > 0 {
            rustix::fs::fallocate(&fd, rustix::fs::FallocateFlags::empty(), 0, len as u64)?;
        }
        let ptr = map(fd.as_fd(), len, ProtFlags::READ | ProtFlags::WRITE)?;
        prefault(ptr.as_ptr(), len);
        Ok(SharedMemory {
            fd,
            ptr,
            len,
            sealed: false,
        })
    }

    /// Maps a memfd handed over by a daemon, read-only, after checking that it is sealed
    /// (nobody can change or shrink it while this process reads it) and holds `len`
    /// bytes.
    pub fn from_received(fd: OwnedFd, len: usize) -> std::io::Result<Self> {
        let seals = rustix::fs::fcntl_get_seals(&fd)?;
        let needed = SealFlags::WRITE | SealFlags::SHRINK;
        if !seals.contains(needed) {
            return Err(std::io::Error::other(
                "the memory handed over is not sealed against writes and shrinking",
            ));
        }
        let size = rustix::fs::fstat(&fd)?.st_size;
        if u64::try_from(size).ok() != Some(len as u64) {
            return Err(std::io::Error::other(format!(
                "the memory handed over holds {size} bytes, not the {len} announced"
            )));
        }
        let ptr = map(fd.as_fd(), len, ProtFlags::READ)?;
        Ok(SharedMemory {
            fd,
            ptr,
            len,
            sealed: true,
        })
    }

    /// Seals it: the writable mapping goes, the file can no longer be written, grown or
    /// shrunk by anyone holding it, and it is mapped again read-only.
    pub fn seal(mut self) -> std::io::Result<Self> {
        self.unmap();
        add_seals(&self.fd)?;
        self.ptr = map(self.fd.as_fd(), self.len, ProtFlags::READ)?;
        self.sealed = true;
        Ok(self)
    }

    fn unmap(&mut self) {
        if self.len > 0 {
            // SAFETY: the mapping made in `map` for `len` bytes; nothing borrows it (this
            // takes `&mut self`, and slices borrow `self`).
            let _ = unsafe { rustix::mm::munmap(self.ptr.as_ptr().cast(), self.len) };
            self.ptr = NonNull::dangling();
        }
    }

    /// Its bytes.
    pub fn as_slice(&self) -> &[u8] {
        // SAFETY: `len` mapped bytes (or none), alive as long as `self`.
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.len) }
    }

    /// The raw pointer writers use while it is unsealed.
    pub(crate) fn write_ptr(&self) -> Option<NonNull<u8>> {
        (!self.sealed).then_some(self.ptr)
    }

    /// Its length.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether it holds no bytes.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The file descriptor, to hand over.
    pub fn fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

impl Drop for SharedMemory {
    fn drop(&mut self) {
        self.unmap();
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, reason = "tests")]
    use super::*;

    #[test]
    fn a_sealed_memfd_keeps_its_bytes_and_refuses_writes() {
        let m = SharedMemory::create("t", 4096).unwrap();
        let p = m.write_ptr().unwrap();
        // SAFETY: in bounds of the writable mapping.
        unsafe { p.as_ptr().add(10).write(42) };
        let m = m.seal().unwrap();
        assert_eq!(m.as_slice()[10], 42);
        assert!(m.write_ptr().is_none());
        // Another holder of the fd cannot map it writable and shared, nor resize it.
        let writable = map(m.fd(), 4096, ProtFlags::READ | ProtFlags::WRITE);
        assert!(writable.is_err());
        assert!(rustix::fs::ftruncate(m.fd(), 0).is_err());
        let empty = SharedMemory::create("e", 0).unwrap().seal().unwrap();
        assert!(empty.as_slice().is_empty());
    }

    #[test]
    fn a_seal_waits_for_pages_still_referenced() {
        let m = SharedMemory::create("busy", 64 << 10).unwrap();
        let p = m.write_ptr().unwrap();
        // SAFETY: in bounds of the writable mapping.
        unsafe { p.as_ptr().write_bytes(7, 64 << 10) };
        // The pipe takes references to the pages themselves, as a batch of another CPU
        // can; they go once the pipe is read, after the kernel's own wait for them.
        let (reader, writer) = rustix::pipe::pipe().unwrap();
        let pages = [rustix::pipe::IoSliceRaw::from_slice(m.as_slice())];
        // SAFETY: the pages stay mapped and unchanged until the pipe is read below.
        let spliced =
            unsafe { rustix::pipe::vmsplice(&writer, &pages, rustix::pipe::SpliceFlags::empty()) };
        assert_eq!(spliced.unwrap(), 64 << 10);
        let drain = std::thread::spawn(move || {
            std::thread::sleep(std::time::Duration::from_millis(300));
            let mut got = vec![0u8; 64 << 10];
            let mut at = 0;
            while at < got.len() {
                at += rustix::io::read(&reader, &mut got[at..]).unwrap();
            }
            got
        });
        let m = m.seal().unwrap();
        assert!(m.as_slice().iter().all(|&b| b == 7));
        assert!(drain.join().unwrap().iter().all(|&b| b == 7));
    }

    #[test]
    fn received_memory_must_be_sealed_and_of_the_announced_length() {
        let m = SharedMemory::create("r", 8192).unwrap();
        let unsealed = m.fd().try_clone_to_owned().unwrap();
        let err = SharedMemory::from_received(unsealed, 8192).unwrap_err();
        assert!(err.to_string().contains("not sealed"), "{err}");
        let m = m.seal().unwrap();
        let wrong = SharedMemory::from_received(m.fd().try_clone_to_owned().unwrap(), 4096);
        assert!(wrong.unwrap_err().to_string().contains("not the 4096"));
        let got = SharedMemory::from_received(m.fd().try_clone_to_owned().unwrap(), 8192).unwrap();
        assert_eq!(got.as_slice(), m.as_slice());
    }
}
