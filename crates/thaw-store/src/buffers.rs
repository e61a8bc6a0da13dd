//! Reading whole cache entries and ranges of a local store's packs, and decompressing
//! chunks, into reused buffers.
//!
//! A chunk read from the disk cache or decompressed from the store lands in a fresh
//! buffer of about a megabyte, and the first write into fresh memory costs a page fault
//! and a cleared page per 4 KiB: about a tenth of the mount's CPU on a warm sequential
//! read, and page faults were about 5% of the CPU while a workload read every file of a
//! 5.7 GB image from a local store; reading the packs' compressed ranges into fresh buffers
//! was another 3% of all samples (`clear_page_erms` under `pread64`). Buffers freed by the
//! caches and by the fetcher are therefore pooled and reused. Small entries, where that
//! cost is small and a pooled buffer (rounded up to 64 KiB) would hold far more memory
//! than the caches count, are read into buffers of their exact size.
//!
//! Reads go through the page cache. `O_DIRECT` saved a copy, but on this project's VMs it
//! capped the disk at about 1.25 GB/s where buffered reads of the same files reached up to
//! 1.6 to 1.9 GB/s (`scripts/disk_read_modes.py`; ARCHITECTURE.md).

use bytes::Bytes;
use std::alloc::{alloc, dealloc, Layout};
use std::fs::File;
use std::io::{self, Read};
use std::os::fd::AsRawFd;
use std::path::Path;
use std::ptr::NonNull;
use std::sync::Mutex;

/// Buffers are page-aligned.
const ALIGN: usize = 4096;

/// Entries smaller than this are read into a buffer of their exact size. Content-defined
/// chunks are at least 256 KiB except at the end of a file.
const POOLED_MIN: u64 = 256 << 10;

/// Buffers are allocated in multiples of this, so chunks of similar sizes share them.
const SIZE_STEP: usize = 64 << 10;
/// Idle buffers kept for reuse, in bytes. Reuse matters: the first write into a fresh
/// buffer costs a page fault and a cleared page per 4 KiB (about a tenth of the mount's
/// CPU on a warm sequential read before the pool).
const POOL_BYTES: usize = 32 << 20;

/// Buffers dropped by the caches, kept for the next read (most recently freed last).
static POOL: Mutex<Pool> = Mutex::new(Pool {
    free: Vec::new(),
    bytes: 0,
});

struct Pool {
    free: Vec<(NonNull<u8>, Layout)>,
    bytes: usize,
}

// SAFETY: the pool owns the idle allocations; nothing else points into them.
unsafe impl Send for Pool {}

impl Pool {
    /// An idle buffer of at least `size` bytes and at most a quarter more.
    fn take(&mut self, size: usize) -> Option<(NonNull<u8>, Layout)> {
        let limit = size + size / 4;
        let (i, _) = self
            .free
            .iter()
            .enumerate()
            .filter(|(_, (_, l))| (size..=limit).contains(&l.size()))
            .min_by_key(|(_, (_, l))| l.size())?;
        let found = self.free.remove(i);
        self.bytes -= found.1.size();
        Some(found)
    }

    /// Keeps a buffer, freeing the oldest idle ones past the pool's size.
    fn give(&mut self, ptr: NonNull<u8>, layout: Layout) {
        self.free.push((ptr, layout));
        self.bytes += layout.size();
        while self.bytes > POOL_BYTES {
            let (old, old_layout) = self.free.remove(0);
            self.bytes -= old_layout.size();
            // SAFETY: allocated by `AlignedBuf::new` with this layout; idle buffers in
            // the pool are not used by anyone.
            unsafe { dealloc(old.as_ptr(), old_layout) };
        }
    }
}

/// A heap buffer aligned to [`ALIGN`], of which the first `len` bytes are initialised.
/// Dropped buffers go back to [`POOL`].
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
    /// An uninitialised buffer of at least `capacity` bytes, from the pool if one fits.
    fn new(capacity: usize) -> Option<Self> {
        let size = capacity.max(1).checked_next_multiple_of(SIZE_STEP)?;
        let reused = POOL.lock().ok().and_then(|mut p| p.take(size));
        let (ptr, layout) = match reused {
            Some(found) => found,
            None => {
                let layout = Layout::from_size_align(size, ALIGN).ok()?;
                // SAFETY: the layout has a non-zero size.
                (NonNull::new(unsafe { alloc(layout) })?, layout)
            }
        };
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
        match POOL.lock() {
            Ok(mut pool) => pool.give(self.ptr, self.layout),
            // SAFETY: allocated in `new` with this layout; the pool is unusable.
            Err(_) => unsafe { dealloc(self.ptr.as_ptr(), self.layout) },
        }
    }
}

/// Reads the whole file at `path`, which is expected to hold `expected_len` bytes (a
/// file of another length is read as it is; the caller's checksum check catches it).
pub fn read_file(path: &Path, expected_len: u64) -> io::Result<Bytes> {
    if expected_len < POOLED_MIN {
        return exact(path);
    }
    let file = File::open(path)?;
    let len = usize::try_from(expected_len)
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidData, "cache entry too large"))?;
    // Room for more than expected, so a longer (corrupt) file shows as a length mismatch
    // instead of being cut to the expected length.
    let Some(mut buf) = AlignedBuf::new(len + 1) else {
        return Err(io::Error::new(
            io::ErrorKind::OutOfMemory,
            "cache read buffer",
        ));
    };
    let capacity = buf.layout.size();
    fill(&mut buf, &file, None, capacity)?;
    Ok(Bytes::from_owner(buf))
}

/// Reads exactly `len` bytes of `file` from `offset` into a pooled buffer (one of exactly
/// `len` bytes below [`POOLED_MIN`]). A file that ends first is `UnexpectedEof`.
pub fn read_exact_at(file: &File, offset: u64, len: usize) -> io::Result<Bytes> {
    if (len as u64) < POOLED_MIN {
        let mut buf = vec![0; len];
        std::os::unix::fs::FileExt::read_exact_at(file, &mut buf, offset)?;
        return Ok(Bytes::from(buf));
    }
    let Some(mut buf) = AlignedBuf::new(len) else {
        return Err(io::Error::new(
            io::ErrorKind::OutOfMemory,
            "store read buffer",
        ));
    };
    fill(&mut buf, file, Some(offset), len)?;
    if buf.len < len {
        return Err(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            format!("{} of {len} bytes before the end of the file", buf.len),
        ));
    }
    Ok(Bytes::from_owner(buf))
}

/// Reads into `buf` until it holds `until` bytes (at most its capacity) or the file ends:
/// sequentially, or from `offset` on with `pread`.
fn fill(buf: &mut AlignedBuf, file: &File, offset: Option<u64>, until: usize) -> io::Result<()> {
    let until = until.min(buf.layout.size());
    while buf.len < until {
        let at = buf.ptr.as_ptr().wrapping_add(buf.len).cast();
        let want = until - buf.len;
        // SAFETY: writes at most `until - buf.len` bytes from `buf.len` on, inside the
        // allocation (`until` is at most its size).
        let n = unsafe {
            match offset {
                None => libc::read(file.as_raw_fd(), at, want),
                Some(start) => {
                    let Ok(pos) = libc::off_t::try_from(start + buf.len as u64) else {
                        return Err(io::Error::new(
                            io::ErrorKind::InvalidInput,
                            "offset too large",
                        ));
                    };
                    libc::pread(file.as_raw_fd(), at, want, pos)
                }
            }
        };
        match n {
            0 => break,
            n if n > 0 => buf.len += n as usize,
            _ => {
                let e = io::Error::last_os_error();
                if e.kind() != io::ErrorKind::Interrupted {
                    return Err(e);
                }
            }
        }
    }
    Ok(())
}

// SAFETY: zstd writes through `as_mut_ptr` within `capacity` (the allocation's size) and
// then reports with `filled_until` how many bytes it wrote, which only then become
// readable through `as_slice`.
unsafe impl zstd::zstd_safe::WriteBuf for AlignedBuf {
    fn as_slice(&self) -> &[u8] {
        self.as_ref()
    }

    fn capacity(&self) -> usize {
        self.layout.size()
    }

    fn as_mut_ptr(&mut self) -> *mut u8 {
        self.ptr.as_ptr()
    }

    unsafe fn filled_until(&mut self, n: usize) {
        self.len = n;
    }
}

/// Decompresses one zstd chunk of `raw_len` bytes with `decompressor` into a pooled
/// buffer (one of exactly `raw_len` bytes below [`POOLED_MIN`]). A frame that holds more
/// than `raw_len` bytes may fill the pooled buffer's rounding too: the caller compares
/// the length with `raw_len`, as it must anyway.
pub fn decompress_pooled(
    decompressor: &mut zstd::bulk::Decompressor<'_>,
    stored: &[u8],
    raw_len: usize,
) -> io::Result<Bytes> {
    if (raw_len as u64) < POOLED_MIN {
        return decompressor.decompress(stored, raw_len).map(Bytes::from);
    }
    let Some(mut buf) = AlignedBuf::new(raw_len) else {
        return Err(io::Error::new(
            io::ErrorKind::OutOfMemory,
            "decompression buffer",
        ));
    };
    decompressor.decompress_to_buffer(stored, &mut buf)?;
    Ok(Bytes::from_owner(buf))
}

fn exact(path: &Path) -> io::Result<Bytes> {
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

    fn check_reads(dir: &Path) {
        for len in [
            0usize,
            1,
            4097,
            (256 << 10) - 1,
            256 << 10,
            (256 << 10) + 1,
            1 << 20,
            (1 << 20) + 3,
        ] {
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

    #[test]
    fn pooled_buffers_never_show_earlier_bytes() {
        let dir = tempfile::tempdir().unwrap();
        let big = dir.path().join("big");
        let small = dir.path().join("small");
        std::fs::write(&big, vec![0xaa; 330_000]).unwrap();
        std::fs::write(&small, vec![0x55; 300_000]).unwrap();
        for _ in 0..4 {
            // The big buffer is freed, then likely reused for the smaller file.
            drop(read_file(&big, 330_000).unwrap());
            let got = read_file(&small, 300_000).unwrap();
            assert_eq!(got.len(), 300_000);
            assert!(got.iter().all(|&b| b == 0x55));
        }
        let pool = POOL.lock().unwrap();
        assert!(pool.bytes <= POOL_BYTES);
        assert_eq!(
            pool.bytes,
            pool.free.iter().map(|(_, l)| l.size()).sum::<usize>()
        );
    }

    #[test]
    fn ranges_come_out_whole_in_reused_buffers_and_a_short_file_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("pack");
        let data: Vec<u8> = (0..3_000_000usize).map(|i| (i * 13 % 253) as u8).collect();
        std::fs::write(&path, &data).unwrap();
        let file = File::open(&path).unwrap();
        for (start, len) in [
            (0usize, 0usize),
            (5, 4097),
            (7, 256 << 10),
            (1 << 20, 1_900_000),
        ] {
            for _ in 0..3 {
                let got = read_exact_at(&file, start as u64, len).unwrap();
                assert_eq!(got, &data[start..start + len], "{start}+{len}");
            }
        }
        for len in [10usize, 1 << 20] {
            let e = read_exact_at(&file, (data.len() - 5) as u64, len).unwrap_err();
            assert_eq!(e.kind(), io::ErrorKind::UnexpectedEof, "{len}");
        }
    }

    #[test]
    fn decompressed_chunks_come_out_whole_in_reused_buffers() {
        let mut d = zstd::bulk::Decompressor::new().unwrap();
        for len in [1usize, 4097, (256 << 10) - 1, 256 << 10, (1 << 20) + 3] {
            let data: Vec<u8> = (0..len).map(|i| (i % 251) as u8 ^ (len as u8)).collect();
            let stored = zstd::bulk::compress(&data, 3).unwrap();
            for _ in 0..3 {
                let got = decompress_pooled(&mut d, &stored, len).unwrap();
                assert_eq!(got, data, "length {len}");
            }
            // A frame longer than the chunk's length does not fit an exact buffer; in a
            // pooled one it shows as a longer result.
            if len > 1 {
                match decompress_pooled(&mut d, &stored, len - 1) {
                    Ok(got) => assert_eq!(got.len(), len),
                    Err(_) => assert!(((len - 1) as u64) < POOLED_MIN),
                }
            }
        }
    }

    #[test]
    fn the_pool_takes_close_sizes_and_stays_bounded() {
        let mut pool = Pool {
            free: Vec::new(),
            bytes: 0,
        };
        let give = |pool: &mut Pool, size: usize| {
            let layout = Layout::from_size_align(size, ALIGN).unwrap();
            pool.give(NonNull::new(unsafe { alloc(layout) }).unwrap(), layout);
        };
        give(&mut pool, 1 << 20);
        give(&mut pool, 4 << 20);
        // 1 MiB is too small for 2 MiB; 4 MiB is more than a quarter over.
        assert!(pool.take(2 << 20).is_none());
        let (ptr, layout) = pool.take(900 << 10).unwrap();
        assert_eq!(layout.size(), 1 << 20);
        pool.give(ptr, layout);
        for _ in 0..20 {
            give(&mut pool, 4 << 20);
        }
        assert!(pool.bytes <= POOL_BYTES);
        // The oldest went first: the 1 MiB buffer is gone.
        assert!(pool.take(1 << 20).is_none());
        while let Some((p, l)) = pool.take(4 << 20) {
            unsafe { dealloc(p.as_ptr(), l) };
        }
        assert_eq!(pool.bytes, 0);
    }
}
