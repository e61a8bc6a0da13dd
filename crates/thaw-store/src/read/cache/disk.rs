//! A byte-bounded disk cache of chunks that survives restarts.
//!
//! Each chunk is one file, `DIR/ab/abcdef…` (the id in hex): the chunk's bytes followed by
//! a 16-byte trailer, the XXH3-64 checksum of those bytes and a magic number. Files are
//! written to a temporary name and renamed. Every read checks length, magic and checksum:
//! a torn or corrupt entry is deleted and reported as a miss, never served. Only chunks
//! whose BLAKE3 id was verified are ever inserted, so the checksum guards the local copy
//! against torn writes and bit rot at a fraction of BLAKE3's cost (see ARCHITECTURE.md).
//! Large entries are read into pooled buffers (see `buffers`).
//! Recency across restarts is approximated by file mtime (set on insert). A `VERSION` file
//! names the layout; a directory in another layout is emptied at open.

use bytes::Bytes;
use lru::LruCache;
use parking_lot::Mutex;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use thaw_core::ChunkId;
use xxhash_rust::xxh3::xxh3_64;

/// Ends every entry: XXH3-64 of the chunk (little endian), then this magic.
const TRAILER_MAGIC: &[u8; 8] = b"thawdc\x00\x01";
const TRAILER_LEN: u64 = 16;
/// The layout written to `DIR/VERSION`.
const LAYOUT: &str = "thaw disk cache 2\n";

#[derive(Debug)]
struct Inner {
    /// Chunk id to the entry's size on disk (chunk plus trailer).
    lru: LruCache<ChunkId, u64>,
    bytes: u64,
}

/// Chunks on disk, evicting the least recently used past `capacity` bytes.
#[derive(Debug)]
pub struct DiskCache {
    dir: PathBuf,
    capacity: u64,
    inner: Mutex<Inner>,
    write_errors: AtomicU64,
    full: AtomicBool,
}

impl DiskCache {
    /// Opens (creating if needed) a cache directory, indexing what is already there.
    pub fn open(dir: &Path, capacity: u64) -> std::io::Result<Self> {
        std::fs::create_dir_all(dir)?;
        let version = dir.join("VERSION");
        if std::fs::read_to_string(&version).ok().as_deref() != Some(LAYOUT) {
            clear_entries(dir)?;
            std::fs::write(&version, LAYOUT)?;
        }
        let mut found: Vec<(std::time::SystemTime, ChunkId, u64)> = Vec::new();
        for sub in entry_dirs(dir)? {
            for f in std::fs::read_dir(sub)? {
                let f = f?;
                let name = f.file_name();
                let name = name.to_string_lossy();
                match name.parse::<ChunkId>() {
                    Ok(id) => {
                        let m = f.metadata()?;
                        found.push((m.modified()?, id, m.len()));
                    }
                    // Leftovers of an interrupted write.
                    Err(_) => {
                        let _ = std::fs::remove_file(f.path());
                    }
                }
            }
        }
        found.sort_by_key(|(t, _, _)| *t);
        let cache = DiskCache {
            dir: dir.to_path_buf(),
            capacity,
            inner: Mutex::new(Inner {
                lru: LruCache::unbounded(),
                bytes: 0,
            }),
            write_errors: AtomicU64::new(0),
            full: AtomicBool::new(false),
        };
        {
            let mut g = cache.inner.lock();
            for (_, id, len) in found {
                g.lru.put(id, len);
                g.bytes += len;
            }
        }
        cache.evict();
        Ok(cache)
    }

    fn path_of(&self, id: &ChunkId) -> PathBuf {
        let hex = id.to_hex();
        self.dir.join(&hex[..2]).join(hex)
    }

    /// Reads and verifies a chunk; `None` on a miss or a bad entry (which is removed).
    pub fn get(&self, id: &ChunkId) -> Option<Bytes> {
        let stored_len = *self.inner.lock().lru.peek(id)?;
        let path = self.path_of(id);
        match crate::buffers::read_file(&path, stored_len) {
            Ok(entry) => match check_entry(entry) {
                Some(data) => {
                    self.inner.lock().lru.get(id);
                    Some(data)
                }
                None => {
                    tracing::warn!(chunk = %id, path = %path.display(), "corrupt disk cache entry removed");
                    self.remove(id);
                    None
                }
            },
            Err(_) => {
                self.remove(id);
                None
            }
        }
    }

    /// Reads a chunk straight into `out` (no intermediate buffer) and checks it there;
    /// returns its length. `None` on a miss, an entry larger than `out`, or a bad entry
    /// (which is removed).
    pub fn read_into(&self, id: &ChunkId, out: &mut [u8]) -> Option<usize> {
        use std::io::Read;
        let stored_len = *self.inner.lock().lru.peek(id)?;
        let data_len = usize::try_from(stored_len.checked_sub(TRAILER_LEN)?).ok()?;
        let out = out.get_mut(..data_len)?;
        let path = self.path_of(id);
        let mut trailer = [0u8; TRAILER_LEN as usize];
        let read = std::fs::File::open(&path).and_then(|mut f| {
            f.read_exact(out)?;
            f.read_exact(&mut trailer)?;
            // A longer file is a corrupt one.
            Ok(f.read(&mut [0u8; 1])? == 0)
        });
        let (sum, magic) = trailer.split_at(8);
        let good =
            matches!(read, Ok(true)) && magic == TRAILER_MAGIC && xxh3_64(out).to_le_bytes() == sum;
        if good {
            self.inner.lock().lru.get(id);
            Some(data_len)
        } else {
            if read.is_ok() {
                tracing::warn!(chunk = %id, path = %path.display(), "corrupt disk cache entry removed");
            }
            self.remove(id);
            None
        }
    }

    /// Whether the cache holds an entry for `id` (not verified).
    pub fn contains(&self, id: &ChunkId) -> bool {
        self.inner.lock().lru.contains(id)
    }

    /// Stores a verified chunk. Errors are logged, not returned: the cache is best effort.
    pub fn insert(&self, id: &ChunkId, data: &[u8]) {
        let stored_len = data.len() as u64 + TRAILER_LEN;
        if stored_len > self.capacity || self.contains(id) {
            return;
        }
        let path = self.path_of(id);
        if let Err(e) = write_atomically(&path, data) {
            self.write_failed(&e);
            tracing::warn!(chunk = %id, path = %path.display(), error = %e, "disk cache write failed");
            return;
        }
        self.full.store(false, Relaxed);
        {
            let mut g = self.inner.lock();
            if g.lru.put(*id, stored_len).is_none() {
                g.bytes += stored_len;
            }
        }
        self.evict();
    }

    /// Counts a failed write; a full file system is remembered until a write succeeds.
    fn write_failed(&self, e: &std::io::Error) {
        self.write_errors.fetch_add(1, Relaxed);
        // By kind: the temporary file's errors carry their path, not a raw errno.
        let full = matches!(
            e.kind(),
            std::io::ErrorKind::StorageFull | std::io::ErrorKind::QuotaExceeded
        );
        self.full.store(full, Relaxed);
    }

    /// Writes that failed since the cache opened (each chunk was still served).
    pub fn write_errors(&self) -> u64 {
        self.write_errors.load(Relaxed)
    }

    /// Whether the last write failed because the cache's file system is full.
    pub fn is_full(&self) -> bool {
        self.full.load(Relaxed)
    }

    fn remove(&self, id: &ChunkId) {
        let mut g = self.inner.lock();
        if let Some(len) = g.lru.pop(id) {
            g.bytes -= len;
        }
        drop(g);
        let _ = std::fs::remove_file(self.path_of(id));
    }

    fn evict(&self) {
        loop {
            let victim = {
                let mut g = self.inner.lock();
                if g.bytes <= self.capacity {
                    return;
                }
                match g.lru.pop_lru() {
                    Some((id, len)) => {
                        g.bytes -= len;
                        id
                    }
                    None => return,
                }
            };
            let _ = std::fs::remove_file(self.path_of(&victim));
        }
    }

    /// Bytes held now.
    pub fn capacity(&self) -> u64 {
        self.capacity
    }

    /// Bytes held on disk (entries with their trailers).
    pub fn bytes(&self) -> u64 {
        self.inner.lock().bytes
    }

    /// Entries held.
    pub fn len(&self) -> usize {
        self.inner.lock().lru.len()
    }

    /// Whether the cache holds nothing.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Writes an entry to a temporary file in its directory and renames it into place, so a
/// reader never sees a partial entry (a crash leaves a temporary file, removed at open).
/// Writes `data` and its checksummed trailer to `path` through a temporary file and a
/// rename: a crash leaves the old file or the new one, never half of one.
pub(crate) fn write_atomically(path: &Path, data: &[u8]) -> std::io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir)?;
    let mut trailer = [0u8; TRAILER_LEN as usize];
    trailer[..8].copy_from_slice(&xxh3_64(data).to_le_bytes());
    trailer[8..].copy_from_slice(TRAILER_MAGIC);
    let mut tmp = tempfile::Builder::new().prefix(".tmp.").tempfile_in(dir)?;
    tmp.write_all(data)?;
    tmp.write_all(&trailer)?;
    tmp.persist(path).map_err(|e| e.error)?;
    Ok(())
}

/// The chunk in a whole entry, if its trailer is intact and its checksum matches.
pub(crate) fn check_entry(entry: Bytes) -> Option<Bytes> {
    let data_len = entry.len().checked_sub(TRAILER_LEN as usize)?;
    let (sum, magic) = entry[data_len..].split_at(8);
    if magic != TRAILER_MAGIC || xxh3_64(&entry[..data_len]).to_le_bytes() != sum {
        return None;
    }
    Some(entry.slice(..data_len))
}

/// The entry directories under `dir`: those named by two hex digits. Anything else there
/// is not ours and is left alone.
fn entry_dirs(dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    let mut dirs = Vec::new();
    for sub in std::fs::read_dir(dir)? {
        let sub = sub?;
        let name = sub.file_name();
        let ours = name.len() == 2
            && name
                .as_encoded_bytes()
                .iter()
                .all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));
        if ours && sub.file_type()?.is_dir() {
            dirs.push(sub.path());
        }
    }
    Ok(dirs)
}

/// Removes every entry directory (a layout this version does not read).
fn clear_entries(dir: &Path) -> std::io::Result<()> {
    for sub in entry_dirs(dir)? {
        std::fs::remove_dir_all(sub)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry_path(dir: &Path, id: &ChunkId) -> PathBuf {
        dir.join(&id.to_hex()[..2]).join(id.to_hex())
    }

    #[test]
    fn a_failed_write_is_counted_and_the_chunk_is_not_indexed() {
        let dir = tempfile::tempdir().unwrap();
        let cache = DiskCache::open(dir.path(), 1 << 20).unwrap();
        let data = b"chunk that cannot be written".to_vec();
        let id = ChunkId::of(&data);
        // A file where the entry's shard directory should be: the write fails.
        std::fs::write(dir.path().join(&id.to_hex()[..2]), b"in the way").unwrap();
        cache.insert(&id, &data);
        assert_eq!(cache.write_errors(), 1);
        assert!(!cache.is_full(), "not a full disk");
        assert!(!cache.contains(&id));
        assert_eq!(cache.bytes(), 0);
    }

    #[test]
    fn survives_restart_and_rejects_corruption() {
        let dir = tempfile::tempdir().unwrap();
        let a = b"chunk a".to_vec();
        let ida = ChunkId::of(&a);
        {
            let c = DiskCache::open(dir.path(), 1 << 20).unwrap();
            c.insert(&ida, &a);
            assert_eq!(c.get(&ida).unwrap(), &a[..]);
            assert_eq!(c.bytes(), a.len() as u64 + TRAILER_LEN);
        }
        // A leftover temporary file is cleaned up on open.
        let sub = dir.path().join(&ida.to_hex()[..2]);
        std::fs::write(sub.join(".tmp.1.2"), b"torn").unwrap();
        let c = DiskCache::open(dir.path(), 1 << 20).unwrap();
        assert_eq!(c.len(), 1);
        assert!(!sub.join(".tmp.1.2").exists());
        assert_eq!(c.get(&ida).unwrap(), &a[..]);
        // Replace the entry with other bytes: dropped, not served.
        let path = entry_path(dir.path(), &ida);
        std::fs::write(&path, b"chunk b").unwrap();
        assert!(c.get(&ida).is_none());
        assert!(!path.exists());
        assert_eq!(c.bytes(), 0);
    }

    #[test]
    fn every_kind_of_damage_is_a_miss() {
        let dir = tempfile::tempdir().unwrap();
        let c = DiskCache::open(dir.path(), 1 << 30).unwrap();
        let chunk: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
        let id = ChunkId::of(&chunk);
        let path = entry_path(dir.path(), &id);
        type Damage = fn(&mut Vec<u8>);
        let damages: [(&str, Damage); 5] = [
            ("one bit flipped in the chunk", |f| f[4321] ^= 1),
            ("one bit flipped in the checksum", |f| {
                let n = f.len();
                f[n - 12] ^= 0x80
            }),
            ("magic overwritten", |f| {
                let n = f.len();
                f[n - 1] = 0
            }),
            ("cut short (a torn write)", |f| f.truncate(f.len() / 2)),
            ("empty", |f| f.clear()),
        ];
        for (what, damage) in damages {
            c.insert(&id, &chunk);
            assert_eq!(c.get(&id).unwrap(), chunk, "{what}: intact before");
            let mut file = std::fs::read(&path).unwrap();
            damage(&mut file);
            std::fs::write(&path, &file).unwrap();
            assert!(c.get(&id).is_none(), "{what}: must not be served");
            assert!(!path.exists(), "{what}: must be removed");
            assert_eq!(c.bytes(), 0, "{what}");
        }
    }

    #[test]
    fn another_layout_is_cleared_and_foreign_files_are_kept() {
        let dir = tempfile::tempdir().unwrap();
        // An entry of the first layout (the bare chunk, no trailer, no VERSION file).
        let chunk = b"old layout".to_vec();
        let id = ChunkId::of(&chunk);
        let old = entry_path(dir.path(), &id);
        std::fs::create_dir_all(old.parent().unwrap()).unwrap();
        std::fs::write(&old, &chunk).unwrap();
        std::fs::create_dir(dir.path().join("not-ours")).unwrap();
        std::fs::write(dir.path().join("not-ours/keep"), b"x").unwrap();
        let c = DiskCache::open(dir.path(), 1 << 20).unwrap();
        assert!(c.is_empty() && !old.exists());
        assert!(dir.path().join("not-ours/keep").exists());
        // The new layout survives the next open.
        c.insert(&id, &chunk);
        drop(c);
        let c = DiskCache::open(dir.path(), 1 << 20).unwrap();
        assert_eq!(c.get(&id).unwrap(), chunk);
    }

    #[test]
    fn evicts_past_capacity() {
        let dir = tempfile::tempdir().unwrap();
        // Room for two entries of 4 + 16 bytes, not three.
        let c = DiskCache::open(dir.path(), 50).unwrap();
        let chunks: Vec<Vec<u8>> = (0..3u8).map(|i| vec![i; 4]).collect();
        for ch in &chunks {
            c.insert(&ChunkId::of(ch), ch);
        }
        assert_eq!(c.bytes(), 40);
        assert!(c.get(&ChunkId::of(&chunks[0])).is_none());
        assert!(c.get(&ChunkId::of(&chunks[2])).is_some());
    }
}
