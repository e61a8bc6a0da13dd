//! Writing and checking the entries of the whole-file cache ([`FileCache`]) from the
//! chunk caches, or from the store again. Both are blocking file I/O and
//! hashing: callers run them on the runtime's blocking pool (`spawn_blocking`), one at a
//! time, below any on-demand read.

use crate::error::ReadError;
use crate::read::cache::{FileCache, FileKey};
use crate::read::reader::ChunkReader;
use std::os::unix::fs::{FileExt, PermissionsExt};
use std::path::Path;
use std::sync::atomic::Ordering::Relaxed;
use thaw_core::manifest::FileExtent;
use thaw_core::{ChunkId, MAX_CHUNK_LEN};

/// Zero runs are checked this many bytes at a time (a run can be as long as the file).
const ZERO_CHECK: u64 = 1 << 20;
/// Chunks read again from a local store are fetched this many bytes at a time.
const STORE_BATCH: u64 = 16 << 20;

/// Why a whole file was not written or not trusted.
#[derive(Debug, thiserror::Error)]
pub enum WholeFileError {
    /// The reader has no whole-file cache.
    #[error("the reader has no whole-file cache")]
    NoCache,
    /// The file is larger than the whole cache.
    #[error("a file of {0} bytes is larger than the whole-file cache")]
    TooLarge(u64),
    /// Another task is writing or checking this file, or the files being written leave no
    /// room for it yet.
    #[error("file {0} is being written or checked by another task, or has no room yet")]
    Busy(FileKey),
    /// A chunk of the file left the memory and disk caches.
    #[error("chunk {0} is no longer cached")]
    NotCached(ChunkId),
    /// Reading a chunk again from the store failed (or its bytes failed verification).
    #[error("reading a chunk from the store: {0}")]
    Store(#[source] ReadError),
    /// A chunk extent is longer than any chunk can be (a bad manifest).
    #[error("an extent of {0} bytes is longer than a chunk can be")]
    BadExtent(u64),
    /// Bytes on disk differ from their chunk (or a zero run is not zero).
    #[error("bytes at offset {offset} of file {key} do not match the image")]
    Mismatch {
        /// The file.
        key: FileKey,
        /// Where the extent starts.
        offset: u64,
    },
    /// Reading or writing the entry failed.
    #[error("{op} {path}: {source}")]
    Io {
        /// What was being done.
        op: &'static str,
        /// The file.
        path: String,
        /// The error.
        source: std::io::Error,
    },
}

fn io<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> WholeFileError + 'a {
    move |source| WholeFileError::Io {
        op,
        path: path.display().to_string(),
        source,
    }
}

impl ChunkReader {
    /// Whether every chunk of these extents is in memory or on disk (index lookups only).
    pub fn all_cached(&self, extents: &[FileExtent]) -> bool {
        extents
            .iter()
            .filter_map(|e| e.chunk)
            .all(|id| self.is_cached(&id))
    }

    /// Whether the file with these extents can be written whole now: every chunk is
    /// cached; or `read_whole` (its opens were served every byte: a file read whole is
    /// worth a local copy, a library a program read a part of is not) and the chunks
    /// missing can be read from the store again cheaply: a local store read in place
    /// (whose chunks are not copied into the disk cache), or at most an eighth of the
    /// file (chunks still on their way to the disk cache, or evicted).
    pub fn can_make_whole(&self, extents: &[FileExtent], read_whole: bool) -> bool {
        let missing: u64 = extents
            .iter()
            .filter(|e| e.chunk.is_some_and(|id| !self.is_cached(&id)))
            .map(|e| e.len)
            .sum();
        let size = extents.last().map_or(0, |e| e.offset + e.len);
        missing == 0 || (read_whole && (self.reads_store_in_place() || missing <= size / 8))
    }

    /// Writes the file of `size` bytes with these extents into the whole-file cache from
    /// the memory and disk caches; chunks neither holds are read again from the store,
    /// and verified (see [`Self::can_make_whole`] for when that is worth it). Blocking;
    /// on the runtime's blocking pool.
    pub fn materialise(
        &self,
        key: FileKey,
        size: u64,
        extents: &[FileExtent],
    ) -> Result<(), WholeFileError> {
        let files = self.files().ok_or(WholeFileError::NoCache)?;
        if !files.fits(size) {
            return Err(WholeFileError::TooLarge(size));
        }
        if !files.claim_space(&key, size) {
            return Err(WholeFileError::Busy(key));
        }
        let written = self.write_whole(files, &key, size, extents);
        if written.is_ok() {
            files.counters.materialised.fetch_add(1, Relaxed);
            files.settle(&key, Some(size));
        } else {
            files.counters.failed.fetch_add(1, Relaxed);
            files.settle(&key, None);
        }
        written
    }

    fn write_whole(
        &self,
        files: &FileCache,
        key: &FileKey,
        size: u64,
        extents: &[FileExtent],
    ) -> Result<(), WholeFileError> {
        let dir = files.dir();
        let tmp = temp_file_in(dir).map_err(io("create a file in", dir))?;
        let path = tmp.path().to_path_buf();
        let file = tmp.as_file();
        // Zero runs stay holes.
        file.set_len(size).map_err(io("size", &path))?;
        self.write_chunks(file, &path, extents)?;
        // Read-only: nothing should write an entry in place.
        file.set_permissions(std::fs::Permissions::from_mode(0o444))
            .map_err(io("chmod", &path))?;
        let target = files.path_of(key);
        tmp.persist(&target)
            .map_err(|e| io("rename into place", &target)(e.error))?;
        Ok(())
    }

    /// Writes every chunk extent into `file`: from the caches, else from the store, a
    /// batch at a time.
    fn write_chunks(
        &self,
        file: &std::fs::File,
        path: &Path,
        extents: &[FileExtent],
    ) -> Result<(), WholeFileError> {
        let mut buf = Vec::new();
        let mut from_store: Vec<FileExtent> = Vec::new();
        let mut batch = 0;
        for e in extents {
            let Some(id) = e.chunk else { continue };
            if e.len > u64::from(MAX_CHUNK_LEN) {
                return Err(WholeFileError::BadExtent(e.len));
            }
            match self.cached_chunk(&id, e.len as usize, &mut buf) {
                Ok(bytes) => file
                    .write_all_at(bytes, e.offset)
                    .map_err(io("write", path))?,
                Err(WholeFileError::NotCached(_)) => {
                    from_store.push(*e);
                    batch += e.len;
                    if batch >= STORE_BATCH {
                        self.write_from_store(file, path, &from_store)?;
                        from_store.clear();
                        batch = 0;
                    }
                }
                Err(e) => return Err(e),
            }
        }
        self.write_from_store(file, path, &from_store)
    }

    /// Reads these chunk extents from the store (verified) and writes them into `file`.
    fn write_from_store(
        &self,
        file: &std::fs::File,
        path: &Path,
        extents: &[FileExtent],
    ) -> Result<(), WholeFileError> {
        let ids: Vec<ChunkId> = extents.iter().filter_map(|e| e.chunk).collect();
        let Some(first) = ids.first() else {
            return Ok(());
        };
        // Only ever called on the runtime's blocking pool; elsewhere the chunk is missing.
        let rt =
            tokio::runtime::Handle::try_current().map_err(|_| WholeFileError::NotCached(*first))?;
        let chunks = rt
            .block_on(self.fetcher().fetch_uncached(&ids))
            .map_err(WholeFileError::Store)?;
        for (e, data) in extents.iter().zip(&chunks) {
            if data.len() as u64 != e.len {
                return Err(WholeFileError::BadExtent(e.len));
            }
            file.write_all_at(data, e.offset)
                .map_err(io("write", path))?;
        }
        Ok(())
    }

    /// A chunk of `len` bytes from memory, or read from disk into `buf`.
    fn cached_chunk<'a>(
        &self,
        id: &ChunkId,
        len: usize,
        buf: &'a mut Vec<u8>,
    ) -> Result<&'a [u8], WholeFileError> {
        if let Some(data) = self.caches().memory.get(id) {
            if data.len() != len {
                return Err(WholeFileError::NotCached(*id));
            }
            buf.clear();
            buf.extend_from_slice(&data);
            return Ok(&buf[..]);
        }
        let disk = self
            .caches()
            .disk
            .as_ref()
            .ok_or(WholeFileError::NotCached(*id))?;
        buf.resize(len, 0);
        match disk.read_into(id, buf) {
            Some(n) if n == len => Ok(&buf[..]),
            _ => Err(WholeFileError::NotCached(*id)),
        }
    }

    /// Checks an entry left by an earlier process against the file's chunks (every range
    /// hashed again, zero runs read back); trusts it if it matches, deletes it if not.
    /// Blocking.
    pub fn verify_whole(
        &self,
        key: FileKey,
        size: u64,
        extents: &[FileExtent],
    ) -> Result<(), WholeFileError> {
        let files = self.files().ok_or(WholeFileError::NoCache)?;
        if !files.claim(&key) {
            return Err(WholeFileError::Busy(key));
        }
        let path = files.path_of(&key);
        let checked = check_whole(&path, &key, size, extents);
        if checked.is_ok() {
            files.counters.verified.fetch_add(1, Relaxed);
            files.settle(&key, Some(size));
        } else {
            tracing::warn!(file = %key, path = %path.display(), "whole-file cache entry does not match the image; deleted");
            files.counters.rejected.fetch_add(1, Relaxed);
            let _ = std::fs::remove_file(&path);
            files.settle(&key, None);
        }
        checked
    }
}

/// A temporary file in `dir`, which is made again if it was removed under the running
/// process (an operator clearing the cache must not end whole files for good).
fn temp_file_in(dir: &Path) -> std::io::Result<tempfile::NamedTempFile> {
    let make = || tempfile::Builder::new().prefix(".tmp.").tempfile_in(dir);
    match make() {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            std::fs::create_dir_all(dir)?;
            make()
        }
        other => other,
    }
}

fn check_whole(
    path: &Path,
    key: &FileKey,
    size: u64,
    extents: &[FileExtent],
) -> Result<(), WholeFileError> {
    let file = std::fs::File::open(path).map_err(io("open", path))?;
    let len = file.metadata().map_err(io("stat", path))?.len();
    let mismatch = |offset| WholeFileError::Mismatch { key: *key, offset };
    if len != size {
        return Err(mismatch(len.min(size)));
    }
    let mut buf = Vec::new();
    for e in extents {
        match e.chunk {
            Some(id) => {
                if e.len > u64::from(MAX_CHUNK_LEN) {
                    return Err(WholeFileError::BadExtent(e.len));
                }
                buf.resize(e.len as usize, 0);
                file.read_exact_at(&mut buf, e.offset)
                    .map_err(io("read", path))?;
                if ChunkId::of(&buf) != id {
                    return Err(mismatch(e.offset));
                }
            }
            None => {
                let mut at = e.offset;
                while at < e.offset + e.len {
                    let n = ZERO_CHECK.min(e.offset + e.len - at);
                    buf.resize(n as usize, 0);
                    file.read_exact_at(&mut buf, at).map_err(io("read", path))?;
                    if buf.iter().any(|b| *b != 0) {
                        return Err(mismatch(e.offset));
                    }
                    at += n;
                }
            }
        }
    }
    Ok(())
}
