//! A byte-bounded in-memory LRU of chunks.

use bytes::Bytes;
use lru::LruCache;
use parking_lot::Mutex;
use thaw_core::ChunkId;

#[derive(Debug)]
struct Inner {
    lru: LruCache<ChunkId, Bytes>,
    bytes: u64,
}

/// Chunks in memory, evicting the least recently used past `capacity` bytes.
#[derive(Debug)]
pub struct MemoryCache {
    inner: Mutex<Inner>,
    capacity: u64,
}

impl MemoryCache {
    /// An empty cache of at most `capacity` bytes.
    pub fn new(capacity: u64) -> Self {
        MemoryCache {
            inner: Mutex::new(Inner {
                lru: LruCache::unbounded(),
                bytes: 0,
            }),
            capacity,
        }
    }

    /// A chunk, marked as recently used.
    pub fn get(&self, id: &ChunkId) -> Option<Bytes> {
        self.inner.lock().lru.get(id).cloned()
    }

    /// Whether `id` is cached, without touching its recency.
    pub fn contains(&self, id: &ChunkId) -> bool {
        self.inner.lock().lru.contains(id)
    }

    /// Keeps a chunk, evicting the least recently used past the capacity (a chunk larger than the whole cache is not kept).
    pub fn insert(&self, id: ChunkId, data: Bytes) {
        let len = data.len() as u64;
        if len > self.capacity {
            return;
        }
        let mut g = self.inner.lock();
        if let Some(old) = g.lru.put(id, data) {
            g.bytes -= old.len() as u64;
        }
        g.bytes += len;
        while g.bytes > self.capacity {
            match g.lru.pop_lru() {
                Some((_, old)) => g.bytes -= old.len() as u64,
                None => break,
            }
        }
    }

    /// Inserts only if the chunk fits without evicting anything (for prefetched data,
    /// which must never push out what readers use). Returns whether it was inserted.
    pub fn insert_if_room(&self, id: ChunkId, data: Bytes) -> bool {
        let len = data.len() as u64;
        let mut g = self.inner.lock();
        if g.lru.contains(&id) || g.bytes + len > self.capacity {
            return false;
        }
        // Least recently used position: a prefetched chunk nobody has read yet goes
        // first when room is needed.
        g.lru.push(id, data);
        g.lru.demote(&id);
        g.bytes += len;
        true
    }

    /// Entries held now.
    pub fn len(&self) -> usize {
        self.inner.lock().lru.len()
    }

    /// Whether the cache holds nothing.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Its bound in bytes.
    pub fn capacity(&self) -> u64 {
        self.capacity
    }

    /// Bytes held now.
    pub fn bytes(&self) -> u64 {
        self.inner.lock().bytes
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn evicts_least_recently_used_by_bytes() {
        let c = MemoryCache::new(10);
        let ids: Vec<ChunkId> = (0..3u8).map(|i| ChunkId::of(&[i])).collect();
        c.insert(ids[0], Bytes::from(vec![0; 4]));
        c.insert(ids[1], Bytes::from(vec![1; 4]));
        assert!(c.get(&ids[0]).is_some()); // 0 is now the most recent
        c.insert(ids[2], Bytes::from(vec![2; 4]));
        assert!(c.get(&ids[1]).is_none());
        assert!(c.get(&ids[0]).is_some());
        assert_eq!(c.bytes(), 8);
        c.insert(ChunkId::of(b"big"), Bytes::from(vec![0; 11]));
        assert_eq!(c.bytes(), 8, "an entry larger than the cache is not kept");
    }

    #[test]
    fn prefetched_entries_never_evict_and_go_first() {
        let c = MemoryCache::new(10);
        let ids: Vec<ChunkId> = (0..4u8).map(|i| ChunkId::of(&[i])).collect();
        c.insert(ids[0], Bytes::from(vec![0; 4]));
        assert!(c.insert_if_room(ids[1], Bytes::from(vec![1; 4])));
        assert!(
            !c.insert_if_room(ids[2], Bytes::from(vec![2; 4])),
            "no room without evicting"
        );
        assert!(c.get(&ids[0]).is_some() && c.get(&ids[2]).is_none());
        // A later insert evicts the unread prefetched entry, not the used one.
        c.insert(ids[3], Bytes::from(vec![3; 4]));
        assert!(c.contains(&ids[0]) && c.contains(&ids[3]) && !c.contains(&ids[1]));
    }
}
