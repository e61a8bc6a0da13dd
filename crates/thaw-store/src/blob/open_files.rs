//! Range reads from a local-directory store through files kept open between reads, so
//! that a run of reads along one pack is one file to the kernel and its readahead follows
//! them (a file opened afresh for every read looks random to the kernel and is read chunk
//! by chunk from the disk), and no read pays for an `open` and a `close`.

use bytes::Bytes;
use lru::LruCache;
use std::fs::File;
use std::io;
use std::num::NonZeroUsize;
use std::ops::Range;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

/// How many files stay open at once: a few hundred packs cover a large image, and the
/// least recently read are closed first.
pub const OPEN_FILES: usize = 256;

/// One open file and the identity it had when opened.
#[derive(Debug)]
struct OpenFile {
    file: File,
    dev: u64,
    ino: u64,
    len: u64,
}

/// Open files by path, least recently read closed first.
#[derive(Debug)]
pub struct OpenFiles {
    files: Mutex<LruCache<PathBuf, Arc<OpenFile>>>,
}

impl Default for OpenFiles {
    fn default() -> Self {
        Self::new(OPEN_FILES)
    }
}

impl OpenFiles {
    /// Keeps at most `capacity` files open (at least one).
    pub fn new(capacity: usize) -> Self {
        let capacity = NonZeroUsize::new(capacity).unwrap_or(NonZeroUsize::MIN);
        OpenFiles {
            files: Mutex::new(LruCache::new(capacity)),
        }
    }

    /// Reads exactly `range` of the file at `path`. A file replaced or removed since it was
    /// opened is noticed (its path names another inode, or none) and opened again, so a
    /// read sees what a fresh `open` would. A range past the end is `UnexpectedEof`, found
    /// before any buffer is allocated.
    ///
    /// The bytes land in a pooled buffer: a fresh one per read cost a page fault and a
    /// cleared page per 4 KiB.
    pub fn read_range(&self, path: &Path, range: Range<u64>) -> io::Result<Bytes> {
        let file = self.file(path)?;
        if range.end > file.len || range.start > range.end {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!("range {range:?} of a {} byte file", file.len),
            ));
        }
        let len = usize::try_from(range.end - range.start)
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "range too large"))?;
        crate::buffers::read_exact_at(&file.file, range.start, len)
    }

    /// Forgets the open file of `path`, if any (the object was written or deleted).
    pub fn forget(&self, path: &Path) {
        self.lock().pop(path);
    }

    /// How many files are open now.
    pub fn open_count(&self) -> usize {
        self.lock().len()
    }

    fn file(&self, path: &Path) -> io::Result<Arc<OpenFile>> {
        // One `stat` of the path (cheaper than an `open` and a `close`) tells whether the
        // file kept open is still the one the path names.
        let now = std::fs::metadata(path)?;
        if let Some(open) = self.lock().get(path) {
            if open.dev == now.dev() && open.ino == now.ino() {
                return Ok(Arc::clone(open));
            }
        }
        let file = File::open(path)?;
        let meta = file.metadata()?;
        let open = Arc::new(OpenFile {
            file,
            dev: meta.dev(),
            ino: meta.ino(),
            len: meta.len(),
        });
        self.lock().put(path.to_path_buf(), Arc::clone(&open));
        Ok(open)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, LruCache<PathBuf, Arc<OpenFile>>> {
        // A panic while the map was held leaves it whole: every operation on it is one
        // call of the lru crate.
        self.files.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dir() -> tempfile::TempDir {
        tempfile::tempdir().expect("tempdir")
    }

    #[test]
    fn reads_a_range_and_keeps_the_file_open() {
        let d = dir();
        let p = d.path().join("a");
        std::fs::write(&p, b"0123456789").unwrap();
        let files = OpenFiles::new(4);
        assert_eq!(&files.read_range(&p, 2..5).unwrap()[..], b"234");
        assert_eq!(&files.read_range(&p, 0..10).unwrap()[..], b"0123456789");
        assert_eq!(files.open_count(), 1);
    }

    #[test]
    fn a_range_past_the_end_is_an_error_without_a_buffer() {
        let d = dir();
        let p = d.path().join("a");
        std::fs::write(&p, b"0123").unwrap();
        let files = OpenFiles::new(4);
        let e = files.read_range(&p, 2..u64::MAX).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::UnexpectedEof);
        let reversed = std::ops::Range { start: 3, end: 2 };
        let e = files.read_range(&p, reversed).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::UnexpectedEof);
    }

    #[test]
    fn a_replaced_file_is_read_anew_and_a_removed_one_is_not_found() {
        let d = dir();
        let p = d.path().join("a");
        std::fs::write(&p, b"old bytes").unwrap();
        let files = OpenFiles::new(4);
        assert_eq!(&files.read_range(&p, 0..3).unwrap()[..], b"old");
        // Replaced the way object_store writes: a new file renamed over the old.
        let tmp = d.path().join("a.tmp");
        std::fs::write(&tmp, b"new bytes").unwrap();
        std::fs::rename(&tmp, &p).unwrap();
        assert_eq!(&files.read_range(&p, 0..3).unwrap()[..], b"new");
        std::fs::remove_file(&p).unwrap();
        let e = files.read_range(&p, 0..3).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::NotFound);
    }

    #[test]
    fn at_most_capacity_files_stay_open() {
        let d = dir();
        let files = OpenFiles::new(2);
        for name in ["a", "b", "c"] {
            let p = d.path().join(name);
            std::fs::write(&p, name).unwrap();
            assert_eq!(files.read_range(&p, 0..1).unwrap(), name.as_bytes());
        }
        assert_eq!(files.open_count(), 2);
        files.forget(&d.path().join("c"));
        assert_eq!(files.open_count(), 1);
    }
}
