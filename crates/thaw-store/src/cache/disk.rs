//! A byte-bounded disk cache of chunks that survives restarts.
//!
//! Each chunk is one file, `DIR/ab/abcdef…` (the id in hex). Files are written to a
//! temporary name and renamed, and every read re-hashes the file: a torn or corrupt
//! entry is deleted and reported as a miss, never served. Recency across restarts is
//! approximated by file mtime (set on insert).

use bytes::Bytes;
use lru::LruCache;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use thaw_core::ChunkId;

#[derive(Debug)]
struct Inner {
    lru: LruCache<ChunkId, u64>,
    bytes: u64,
}

/// Chunks on disk, evicting the least recently used past `capacity` bytes.
#[derive(Debug)]
pub struct DiskCache {
    dir: PathBuf,
    capacity: u64,
    inner: Mutex<Inner>,
}

impl DiskCache {
    /// Opens (creating if needed) a cache directory, indexing what is already there.
    pub fn open(dir: &Path, capacity: u64) -> std::io::Result<Self> {
        std::fs::create_dir_all(dir)?;
        let mut found: Vec<(std::time::SystemTime, ChunkId, u64)> = Vec::new();
        for sub in std::fs::read_dir(dir)? {
            let sub = sub?;
            if !sub.file_type()?.is_dir() {
                continue;
            }
            for f in std::fs::read_dir(sub.path())? {
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
        };
        {
            let mut g = cache.inner.lock().expect("disk cache lock");
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
        if !self.inner.lock().expect("disk cache lock").lru.contains(id) {
            return None;
        }
        let path = self.path_of(id);
        match std::fs::read(&path) {
            Ok(data) if ChunkId::of(&data) == *id => {
                self.inner.lock().expect("disk cache lock").lru.get(id);
                Some(Bytes::from(data))
            }
            Ok(_) => {
                tracing::warn!(chunk = %id, path = %path.display(), "corrupt disk cache entry removed");
                self.remove(id);
                None
            }
            Err(_) => {
                self.remove(id);
                None
            }
        }
    }

    /// Whether the cache holds an entry for `id` (not verified).
    pub fn contains(&self, id: &ChunkId) -> bool {
        self.inner.lock().expect("disk cache lock").lru.contains(id)
    }

    /// Stores a verified chunk. Errors are logged, not returned: the cache is best effort.
    pub fn insert(&self, id: &ChunkId, data: &[u8]) {
        if data.len() as u64 > self.capacity || self.contains(id) {
            return;
        }
        let path = self.path_of(id);
        if let Err(e) = write_atomically(&path, data) {
            tracing::warn!(chunk = %id, path = %path.display(), error = %e, "disk cache write failed");
            return;
        }
        {
            let mut g = self.inner.lock().expect("disk cache lock");
            if g.lru.put(*id, data.len() as u64).is_none() {
                g.bytes += data.len() as u64;
            }
        }
        self.evict();
    }

    fn remove(&self, id: &ChunkId) {
        let mut g = self.inner.lock().expect("disk cache lock");
        if let Some(len) = g.lru.pop(id) {
            g.bytes -= len;
        }
        drop(g);
        let _ = std::fs::remove_file(self.path_of(id));
    }

    fn evict(&self) {
        loop {
            let victim = {
                let mut g = self.inner.lock().expect("disk cache lock");
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

    pub fn bytes(&self) -> u64 {
        self.inner.lock().expect("disk cache lock").bytes
    }

    pub fn len(&self) -> usize {
        self.inner.lock().expect("disk cache lock").lru.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

fn write_atomically(path: &Path, data: &[u8]) -> std::io::Result<()> {
    let dir = path.parent().expect("cache entries live in a subdirectory");
    std::fs::create_dir_all(dir)?;
    let tmp = dir.join(format!(
        ".tmp.{}.{:x}",
        std::process::id(),
        rand::random::<u64>()
    ));
    let result = (|| {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(data)?;
        std::fs::rename(&tmp, path)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn survives_restart_and_rejects_corruption() {
        let dir = tempfile::tempdir().unwrap();
        let a = b"chunk a".to_vec();
        let ida = ChunkId::of(&a);
        {
            let c = DiskCache::open(dir.path(), 1 << 20).unwrap();
            c.insert(&ida, &a);
            assert_eq!(c.get(&ida).unwrap(), &a[..]);
        }
        // A leftover temporary file is cleaned up on open.
        let sub = dir.path().join(&ida.to_hex()[..2]);
        std::fs::write(sub.join(".tmp.1.2"), b"torn").unwrap();
        let c = DiskCache::open(dir.path(), 1 << 20).unwrap();
        assert_eq!(c.len(), 1);
        assert!(!sub.join(".tmp.1.2").exists());
        assert_eq!(c.get(&ida).unwrap(), &a[..]);
        // Flip a byte on disk: the entry is dropped, not served.
        let path = sub.join(ida.to_hex());
        std::fs::write(&path, b"chunk b").unwrap();
        assert!(c.get(&ida).is_none());
        assert!(!path.exists());
        assert_eq!(c.bytes(), 0);
    }

    #[test]
    fn evicts_past_capacity() {
        let dir = tempfile::tempdir().unwrap();
        let c = DiskCache::open(dir.path(), 10).unwrap();
        let chunks: Vec<Vec<u8>> = (0..3u8).map(|i| vec![i; 4]).collect();
        for ch in &chunks {
            c.insert(&ChunkId::of(ch), ch);
        }
        assert_eq!(c.bytes(), 8);
        assert!(c.get(&ChunkId::of(&chunks[0])).is_none());
        assert!(c.get(&ChunkId::of(&chunks[2])).is_some());
    }
}
