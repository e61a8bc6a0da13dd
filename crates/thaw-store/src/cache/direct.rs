//! Reading whole cache files with `O_DIRECT` into page-aligned buffers.
//!
//! A chunk read from the disk cache is copied once into memory and, when the FUSE
//! mount serves it, once more into the mount's page cache. Going through the page
//! cache of the cache file as well would cost a third copy and keep the same bytes
//! cached twice, so entries are read with `O_DIRECT` (the device writes straight into
//! our buffer). Filesystems without `O_DIRECT` (tmpfs) fall back to a buffered read.

use bytes::Bytes;
use std::alloc::{alloc, dealloc, Layout};
use std::fs::File;
use std::io::{self, Read};
use std::os::fd::AsRawFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::ptr::NonNull;

/// Offsets, lengths and buffer addresses of `O_DIRECT` reads are multiples of this.
/// 4 KiB covers every logical block size in common use.
const ALIGN: usize = 4096;

/// A heap buffer aligned to [`ALIGN`], of which the first `len` bytes are initialised.
struct AlignedBuf {
    ptr: NonNull<u8>,
    layout: Layout,
    len: usize,
}

// SAFETY: the buffer is uniquely owned heap memory; nothing else aliases it.
unsafe impl Send for AlignedBuf {}
// SAFETY: only shared reads of the initialised prefix are handed out.
unsafe impl Sync for AlignedBuf {}

impl AlignedBuf {
    /// An uninitialised buffer of at least `capacity` bytes (a multiple of ALIGN).
    fn new(capacity: usize) -> Option<Self> {
        let size = capacity.max(1).checked_next_multiple_of(ALIGN)?;
        let layout = Layout::from_size_align(size, ALIGN).ok()?;
        // SAFETY: the layout has a non-zero size.
        let ptr = NonNull::new(unsafe { alloc(layout) })?;
        Some(AlignedBuf {
            ptr,
            layout,
            len: 0,
        })
    }
}

impl AsRef<[u8]> for AlignedBuf {
    fn as_ref(&self) -> &[u8] {
        // SAFETY: `len <= layout.size()` and the first `len` bytes were written by read(2).
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.len) }
    }
}

impl Drop for AlignedBuf {
    fn drop(&mut self) {
        // SAFETY: allocated in `new` with this layout.
        unsafe { dealloc(self.ptr.as_ptr(), self.layout) }
    }
}

/// Reads the whole file at `path`, which is expected to hold `expected_len` bytes (a
/// file of another length is read as it is; the caller's hash check catches it).
pub fn read_file(path: &Path, expected_len: u64) -> io::Result<Bytes> {
    let file = match std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_DIRECT)
        .open(path)
    {
        Ok(f) => f,
        Err(e) if e.raw_os_error() == Some(libc::EINVAL) => return buffered(path),
        Err(e) => return Err(e),
    };
    let len = usize::try_from(expected_len)
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidData, "cache entry too large"))?;
    // One block more than expected, so a longer (corrupt) file shows as a length mismatch
    // instead of being cut to the expected length and passing for a short read.
    let Some(mut buf) = AlignedBuf::new(len + ALIGN) else {
        return Err(io::Error::new(
            io::ErrorKind::OutOfMemory,
            "cache read buffer",
        ));
    };
    let capacity = buf.layout.size();
    loop {
        let remaining = capacity - buf.len;
        if remaining == 0 {
            break;
        }
        // SAFETY: writes at most `remaining` bytes inside the allocation; `buf.len` is a
        // multiple of ALIGN until the last (short) read, after which the loop ends.
        let n = unsafe {
            libc::read(
                file.as_raw_fd(),
                buf.ptr.as_ptr().add(buf.len).cast(),
                remaining,
            )
        };
        match n {
            0 => break,
            n if n > 0 => {
                buf.len += n as usize;
                if buf.len % ALIGN != 0 {
                    break; // a short read at the end of the file
                }
            }
            _ => {
                let e = io::Error::last_os_error();
                match e.raw_os_error() {
                    Some(libc::EINTR) => continue,
                    // Some filesystems accept O_DIRECT at open but refuse the read.
                    Some(libc::EINVAL) if buf.len == 0 => return buffered(path),
                    _ => return Err(e),
                }
            }
        }
    }
    Ok(Bytes::from_owner(buf))
}

fn buffered(path: &Path) -> io::Result<Bytes> {
    let mut data = Vec::new();
    File::open(path)?.read_to_end(&mut data)?;
    Ok(Bytes::from(data))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_files_of_every_alignment() {
        let dir = tempfile::tempdir().unwrap();
        check_reads(dir.path());
    }

    #[test]
    fn falls_back_to_buffered_reads_where_o_direct_is_refused() {
        // tmpfs refuses O_DIRECT at open.
        let Ok(dir) = tempfile::tempdir_in("/dev/shm") else {
            eprintln!("SKIPPED falls_back_to_buffered_reads: no /dev/shm here");
            return;
        };
        check_reads(dir.path());
    }

    fn check_reads(dir: &Path) {
        for len in [0usize, 1, 4095, 4096, 4097, 1 << 20, (1 << 20) + 3] {
            let data: Vec<u8> = (0..len).map(|i| (i * 7 + len) as u8).collect();
            let path = dir.join(format!("f{len}"));
            std::fs::write(&path, &data).unwrap();
            assert_eq!(read_file(&path, len as u64).unwrap(), data, "length {len}");
            // A file longer than expected is returned whole, not cut to the expected length.
            assert_eq!(
                read_file(&path, len.saturating_sub(1) as u64)
                    .unwrap()
                    .len(),
                len
            );
        }
        assert!(read_file(&dir.join("missing"), 1).is_err());
    }
}
