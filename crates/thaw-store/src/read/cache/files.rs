//! Whole files on local disk, assembled from verified chunks, for the kernel to read
//! directly (FUSE passthrough).
//!
//! A file of an image is named by its [`FileKey`], the hash of its extent list (chunk ids
//! and zero runs), so the key fixes the content. Each entry is `DIR/KEY` holding exactly
//! the file's bytes (zero runs are holes), because the kernel serves passthrough reads
//! from it as it is: there is no room for a trailer. Integrity therefore comes from how
//! entries are made and when they are trusted:
//! - an entry is written under a temporary name from chunks the read path already
//!   verified, and renamed into place only when complete, so it is trusted at once by the
//!   process that wrote it;
//! - an entry found at open (left by an earlier process, perhaps cut short by a crash)
//!   is *unverified* until every chunk range in it has been hashed again and compared
//!   with its chunk id, and zero runs checked; one that fails is deleted.
//!
//! The directory holds at most `capacity` bytes (file sizes), evicting the least recently
//! opened; a file being written counts from its claim on, so the bound holds while it is
//! written too. Deleting an entry a passthrough open still uses is safe: the kernel holds the
//! file until its last user closes it.

use lru::LruCache;
use parking_lot::Mutex;
use std::collections::HashMap;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use thaw_core::manifest::FileExtent;

/// What names a whole file: the BLAKE3 hash of its extent list.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct FileKey(blake3::Hash);

impl FileKey {
    /// The key of a file with these extents (in order, contiguous from 0).
    pub fn of(extents: &[FileExtent]) -> Self {
        let mut h = blake3::Hasher::new();
        h.update(b"thaw whole file 1\0");
        for e in extents {
            h.update(&e.len.to_le_bytes());
            match e.chunk {
                Some(id) => h.update(&[1]).update(id.as_bytes()),
                None => h.update(&[0]),
            };
        }
        FileKey(h.finalize())
    }

    fn file_name(&self) -> String {
        self.0.to_hex().to_string()
    }

    fn parse(name: &str) -> Option<Self> {
        (name.len() == 64)
            .then(|| blake3::Hash::from_hex(name).ok())
            .flatten()
            .map(FileKey)
    }
}

impl std::fmt::Display for FileKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0.to_hex()[..12])
    }
}

/// Where a file stands in the cache.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FileState {
    /// Not there.
    Absent,
    /// There from an earlier process, not checked yet: never served until it is.
    Unverified,
    /// There and trusted.
    Ready,
    /// Being written or checked now.
    Busy,
}

/// Counters of the whole-file cache.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct FileCacheStats {
    /// Files written whole from cached chunks.
    pub materialised: u64,
    /// Files found at open and verified since.
    pub verified: u64,
    /// Entries deleted because their bytes did not match their chunks.
    pub rejected: u64,
    /// Entries evicted to stay within the bound.
    pub evicted: u64,
    /// Files not written because a chunk had left the caches or a write failed.
    pub failed: u64,
    /// Bytes held (file sizes).
    pub bytes: u64,
    /// The bound.
    pub capacity: u64,
    /// Files held.
    pub files: usize,
}

#[derive(Debug, Clone, Copy)]
struct Entry {
    len: u64,
    verified: bool,
}

#[derive(Debug)]
struct Inner {
    lru: LruCache<FileKey, Entry>,
    /// Bytes of the entries in `lru`.
    bytes: u64,
    /// Claimed keys, with the bytes each one's writer reserved (0 for a check).
    busy: HashMap<FileKey, u64>,
}

impl Inner {
    /// Bytes reserved by the writes in progress (a handful at most).
    fn reserved(&self) -> u64 {
        self.busy.values().sum()
    }
}

#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub materialised: AtomicU64,
    pub verified: AtomicU64,
    pub rejected: AtomicU64,
    pub evicted: AtomicU64,
    pub failed: AtomicU64,
}

/// Whole files on disk, least recently opened evicted past `capacity` bytes.
#[derive(Debug)]
pub struct FileCache {
    dir: PathBuf,
    capacity: u64,
    inner: Mutex<Inner>,
    pub(crate) counters: Counters,
}

impl FileCache {
    /// Opens (creating if needed) a directory of whole files; what is there is indexed
    /// as unverified and leftovers of interrupted writes are removed.
    pub fn open(dir: &Path, capacity: u64) -> std::io::Result<Self> {
        std::fs::create_dir_all(dir)?;
        let mut found = Vec::new();
        for f in std::fs::read_dir(dir)? {
            let f = f?;
            let name = f.file_name();
            match FileKey::parse(&name.to_string_lossy()) {
                Some(key) if f.file_type()?.is_file() => {
                    let m = f.metadata()?;
                    found.push((m.modified()?, key, m.len()));
                }
                Some(_) => {}
                None if name.to_string_lossy().starts_with(".tmp.") => {
                    let _ = std::fs::remove_file(f.path());
                }
                None => {}
            }
        }
        found.sort_by_key(|(t, _, _)| *t);
        let mut inner = Inner {
            lru: LruCache::unbounded(),
            bytes: 0,
            busy: HashMap::new(),
        };
        for (_, key, len) in found {
            inner.lru.put(
                key,
                Entry {
                    len,
                    verified: false,
                },
            );
            inner.bytes += len;
        }
        let cache = FileCache {
            dir: dir.to_path_buf(),
            capacity,
            inner: Mutex::new(inner),
            counters: Counters::default(),
        };
        cache.evict();
        Ok(cache)
    }

    /// The directory the files are in.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub(crate) fn path_of(&self, key: &FileKey) -> PathBuf {
        self.dir.join(key.file_name())
    }

    /// Where `key` stands.
    pub fn state(&self, key: &FileKey) -> FileState {
        let g = self.inner.lock();
        if g.busy.contains_key(key) {
            return FileState::Busy;
        }
        match g.lru.peek(key) {
            None => FileState::Absent,
            Some(e) if e.verified => FileState::Ready,
            Some(_) => FileState::Unverified,
        }
    }

    /// Opens a trusted entry of `size` bytes for reading, marking it recently used.
    /// `None` if it is absent, unverified or busy, or gone or of another size on disk (then
    /// it is forgotten).
    pub fn open_ready(&self, key: &FileKey, size: u64) -> Option<File> {
        {
            let mut g = self.inner.lock();
            let ready = !g.busy.contains_key(key) && g.lru.get(key).is_some_and(|e| e.verified);
            if !ready {
                return None;
            }
        }
        let file = File::open(self.path_of(key)).ok();
        match file {
            Some(f) if f.metadata().is_ok_and(|m| m.len() == size) => Some(f),
            _ => {
                tracing::warn!(file = %key, "whole-file cache entry missing or resized; dropped");
                self.remove(key);
                None
            }
        }
    }

    /// Marks `key` busy for one checker of an entry already on disk; `false` if it is busy
    /// or ready already.
    pub(crate) fn claim(&self, key: &FileKey) -> bool {
        self.claim_reserving(key, 0)
    }

    /// Marks `key` busy for one writer of `size` bytes and reserves them, evicting older
    /// entries to make room; `false` if it is busy or ready already, or if the writes in
    /// progress leave no room for it.
    pub(crate) fn claim_space(&self, key: &FileKey, size: u64) -> bool {
        if !self.claim_reserving(key, size) {
            return false;
        }
        self.evict();
        true
    }

    fn claim_reserving(&self, key: &FileKey, size: u64) -> bool {
        let mut g = self.inner.lock();
        let ready = g.lru.peek(key).is_some_and(|e| e.verified);
        let room = g.reserved().saturating_add(size) <= self.capacity;
        if ready || !room || g.busy.contains_key(key) {
            return false;
        }
        g.busy.insert(*key, size);
        true
    }

    /// Ends a claim: `Some(len)` records a trusted entry of that size, `None` forgets it.
    pub(crate) fn settle(&self, key: &FileKey, trusted: Option<u64>) {
        let mut g = self.inner.lock();
        g.busy.remove(key);
        let old = match trusted {
            Some(len) => g.lru.put(
                *key,
                Entry {
                    len,
                    verified: true,
                },
            ),
            None => g.lru.pop(key),
        };
        g.bytes -= old.map_or(0, |e| e.len);
        g.bytes += trusted.unwrap_or(0);
        drop(g);
        if trusted.is_some() {
            self.evict();
        }
    }

    /// Whether a file of `size` bytes may be stored at all.
    pub fn fits(&self, size: u64) -> bool {
        size <= self.capacity
    }

    fn remove(&self, key: &FileKey) {
        let mut g = self.inner.lock();
        if let Some(e) = g.lru.pop(key) {
            g.bytes -= e.len;
        }
        drop(g);
        let _ = std::fs::remove_file(self.path_of(key));
    }

    fn evict(&self) {
        loop {
            let victim = {
                let mut g = self.inner.lock();
                if g.bytes + g.reserved() <= self.capacity {
                    return;
                }
                // Busy entries are not in the index yet (or are being checked): skip none
                // of the others.
                match g.lru.pop_lru() {
                    Some((key, e)) => {
                        g.bytes -= e.len;
                        key
                    }
                    None => return,
                }
            };
            self.counters.evicted.fetch_add(1, Relaxed);
            let _ = std::fs::remove_file(self.path_of(&victim));
        }
    }

    /// The counters and how full the cache is.
    pub fn stats(&self) -> FileCacheStats {
        let g = self.inner.lock();
        let c = &self.counters;
        FileCacheStats {
            materialised: c.materialised.load(Relaxed),
            verified: c.verified.load(Relaxed),
            rejected: c.rejected.load(Relaxed),
            evicted: c.evicted.load(Relaxed),
            failed: c.failed.load(Relaxed),
            bytes: g.bytes,
            capacity: self.capacity,
            files: g.lru.len(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use thaw_core::ChunkId;

    fn key(n: u8) -> FileKey {
        FileKey::of(&[FileExtent {
            offset: 0,
            len: u64::from(n) + 1,
            chunk: Some(ChunkId::of(&[n])),
        }])
    }

    /// Writes an entry as a materialisation would, and records it trusted.
    fn put(c: &FileCache, k: &FileKey, len: usize) {
        assert!(c.claim(k));
        std::fs::write(c.path_of(k), vec![7u8; len]).unwrap();
        c.settle(k, Some(len as u64));
    }

    #[test]
    fn keys_name_the_extent_list() {
        let a = FileExtent {
            offset: 0,
            len: 4,
            chunk: Some(ChunkId::of(b"abcd")),
        };
        let hole = FileExtent {
            offset: 4,
            len: 4,
            chunk: None,
        };
        assert_eq!(FileKey::of(&[a, hole]), FileKey::of(&[a, hole]));
        assert_ne!(FileKey::of(&[a, hole]), FileKey::of(&[a]));
        assert_ne!(FileKey::of(&[a]), FileKey::of(&[hole]));
        let k = FileKey::of(&[a]);
        assert_eq!(FileKey::parse(&k.file_name()), Some(k));
        assert_eq!(FileKey::parse("not a key"), None);
    }

    #[test]
    fn one_claim_at_a_time_and_trusted_entries_open() {
        let dir = tempfile::tempdir().unwrap();
        let c = FileCache::open(dir.path(), 1 << 20).unwrap();
        let k = key(1);
        assert_eq!(c.state(&k), FileState::Absent);
        assert!(c.claim(&k));
        assert!(!c.claim(&k), "a second writer is refused");
        assert_eq!(c.state(&k), FileState::Busy);
        assert!(c.open_ready(&k, 10).is_none(), "busy: not served");
        c.settle(&k, None);
        assert_eq!(c.state(&k), FileState::Absent);
        put(&c, &k, 10);
        assert_eq!(c.state(&k), FileState::Ready);
        assert!(!c.claim(&k), "ready: nothing to do");
        assert!(c.open_ready(&k, 10).is_some());
        // Another size on disk than the image says: dropped.
        assert!(c.open_ready(&k, 11).is_none());
        assert_eq!(c.state(&k), FileState::Absent);
        assert!(!c.path_of(&k).exists());
    }

    #[test]
    fn a_reopened_cache_trusts_nothing_and_cleans_leftovers() {
        let dir = tempfile::tempdir().unwrap();
        let k = key(2);
        {
            let c = FileCache::open(dir.path(), 1 << 20).unwrap();
            put(&c, &k, 10);
        }
        std::fs::write(dir.path().join(".tmp.torn"), b"x").unwrap();
        std::fs::write(dir.path().join("README"), b"not ours").unwrap();
        let c = FileCache::open(dir.path(), 1 << 20).unwrap();
        assert_eq!(c.state(&k), FileState::Unverified);
        assert!(c.open_ready(&k, 10).is_none(), "unverified: not served");
        assert!(!dir.path().join(".tmp.torn").exists());
        assert!(dir.path().join("README").exists());
        assert_eq!((c.stats().files, c.stats().bytes), (1, 10));
        // A check that passes makes it trusted.
        assert!(c.claim(&k));
        c.settle(&k, Some(10));
        assert!(c.open_ready(&k, 10).is_some());
    }

    #[test]
    fn evicts_the_least_recently_opened_past_the_bound() {
        let dir = tempfile::tempdir().unwrap();
        let c = FileCache::open(dir.path(), 25).unwrap();
        let (a, b, d) = (key(3), key(4), key(5));
        put(&c, &a, 10);
        put(&c, &b, 10);
        assert!(c.open_ready(&a, 10).is_some(), "a is now the most recent");
        put(&c, &d, 10);
        assert_eq!(c.state(&b), FileState::Absent, "b was evicted");
        assert!(!c.path_of(&b).exists());
        assert_eq!(c.state(&a), FileState::Ready);
        let s = c.stats();
        assert_eq!((s.files, s.bytes, s.evicted), (2, 20, 1));
        assert!(!c.fits(26));
    }

    #[test]
    fn a_file_being_written_counts_against_the_bound() {
        let dir = tempfile::tempdir().unwrap();
        let c = FileCache::open(dir.path(), 30).unwrap();
        let (a, b, w, x) = (key(6), key(7), key(8), key(9));
        put(&c, &a, 10);
        put(&c, &b, 10);
        // 20 held + 15 reserved > 30: the oldest goes before a byte is written.
        assert!(c.claim_space(&w, 15));
        assert_eq!(c.state(&a), FileState::Absent, "a made room");
        assert_eq!(c.state(&b), FileState::Ready);
        // 15 already reserved: no room for 20 more, whatever is evicted.
        assert!(!c.claim_space(&x, 20), "refused while the first write runs");
        assert_eq!(c.state(&b), FileState::Ready, "and nothing evicted for it");
        std::fs::write(c.path_of(&w), vec![1u8; 15]).unwrap();
        c.settle(&w, Some(15));
        let s = c.stats();
        assert_eq!((s.files, s.bytes), (2, 25));
        // A failed write gives its reservation back: 25 held + 5 fit, twice.
        assert!(c.claim_space(&x, 5));
        c.settle(&x, None);
        assert!(c.claim_space(&x, 5));
        assert_eq!(
            c.state(&b),
            FileState::Ready,
            "nothing evicted: 5 were given back"
        );
        c.settle(&x, None);
        assert_eq!(c.stats().bytes, 25);
    }
}
