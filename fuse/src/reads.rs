//! The read path of the FUSE crate: which chunks a read needs, readahead for sequential
//! readers, and assembling the reply from chunks and zero runs (the one place replies
//! are put together).

use crate::errno::FsError;
use crate::fs::FsShared;
use bytes::Bytes;
use std::sync::atomic::Ordering::Relaxed;
use thaw_core::manifest::FileExtent;
use thaw_core::{ChunkId, InodeKind};

/// Readahead starts at this window once a reader looks sequential.
pub const MIN_READAHEAD: u64 = 1 << 20;

/// Per open file: where the last read ended, how far ahead we have fetched, and how many
/// bytes it was served.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct ReadState {
    next: u64,
    window: u64,
    prefetched_until: u64,
    served: u64,
}

impl ReadState {
    /// Bytes served through this open so far (a file re-read counts twice).
    pub fn served(&self) -> u64 {
        self.served
    }

    /// Updates the state for a read of `[offset, end)` and returns the range to read
    /// ahead, if any. Sequential readers double their window up to `max`; a seek resets it.
    pub fn plan(&mut self, offset: u64, end: u64, max: u64) -> Option<(u64, u64)> {
        self.served += end - offset;
        let sequential = offset == self.next;
        self.next = end;
        if !sequential || max == 0 {
            self.window = 0;
            self.prefetched_until = end;
            return None;
        }
        self.window = if self.window == 0 {
            MIN_READAHEAD.min(max)
        } else {
            (self.window * 2).min(max)
        };
        let from = self.prefetched_until.max(end);
        let to = end + self.window;
        if to <= from {
            return None;
        }
        self.prefetched_until = to;
        Some((from, to))
    }
}

/// Extents overlapping `[start, end)` (extents are sorted and contiguous).
pub fn overlapping(extents: &[FileExtent], start: u64, end: u64) -> &[FileExtent] {
    let first = extents.partition_point(|e| e.offset + e.len <= start);
    let last = extents.partition_point(|e| e.offset < end);
    &extents[first..last.max(first)]
}

/// Where a read's bytes are.
#[derive(Debug)]
pub enum ReadData {
    /// A slice of a cached chunk (or empty).
    Chunk(Bytes),
    /// Assembled in the caller's scratch buffer.
    Scratch,
}

/// What [`assemble`] produced: the reply, and how many of its bytes were zero runs.
#[derive(Debug)]
pub struct Assembled {
    /// The reply's bytes.
    pub data: ReadData,
    /// Bytes of it that came from zero runs (holes) rather than chunks.
    pub zero_bytes: u64,
}

/// The bytes `[offset, end)` of a file from the extents that overlap it and their chunks
/// (one per chunk extent, in order). A read inside one chunk is a slice of it, without a
/// copy; anything else is assembled in `scratch` (the caller's reused buffer: a fresh one
/// per read cost page faults on every large read).
pub fn assemble(
    needed: &[FileExtent],
    chunks: &[Bytes],
    offset: u64,
    end: u64,
    scratch: &mut Vec<u8>,
) -> Result<Assembled, FsError> {
    let part = |e: &FileExtent, data: &Bytes| {
        let (lo, hi) = (offset.max(e.offset), end.min(e.offset + e.len));
        let range = (lo - e.offset) as usize..(hi - e.offset) as usize;
        data.get(range.clone())
            .map(|_| data.slice(range))
            .ok_or(FsError::ShortChunk { extent: e.offset })
    };
    if let ([e], [data]) = (needed, chunks) {
        let data = ReadData::Chunk(part(e, data)?);
        return Ok(Assembled {
            data,
            zero_bytes: 0,
        });
    }
    scratch.clear();
    scratch.reserve((end - offset) as usize);
    let mut chunks = chunks.iter();
    let mut zero_bytes = 0;
    for e in needed {
        if e.chunk.is_some() {
            let data = chunks
                .next()
                .ok_or(FsError::ShortChunk { extent: e.offset })?;
            scratch.extend_from_slice(&part(e, data)?);
        } else {
            let (lo, hi) = (offset.max(e.offset), end.min(e.offset + e.len));
            scratch.resize(scratch.len() + (hi - lo) as usize, 0);
            zero_bytes += hi - lo;
        }
    }
    Ok(Assembled {
        data: ReadData::Scratch,
        zero_bytes,
    })
}

impl FsShared {
    /// Reads `[offset, offset + size)` of a file: see [`assemble`] for where the bytes go.
    pub(crate) fn read(
        &self,
        ino: u32,
        fh: u64,
        offset: u64,
        size: u32,
        scratch: &mut Vec<u8>,
    ) -> Result<ReadData, FsError> {
        let file_size = match &self.manifest.inodes[ino as usize].kind {
            InodeKind::File { size, .. } => *size,
            InodeKind::Directory { .. } => return Err(FsError::IsADirectory),
            _ => return Err(FsError::BadHandle),
        };
        if offset >= file_size || size == 0 {
            return Ok(ReadData::Chunk(Bytes::new()));
        }
        let end = (offset + u64::from(size)).min(file_size);
        let extents = self.table.extents(ino);
        let needed = overlapping(extents, offset, end);
        self.read_ahead(fh, extents, needed, (offset, end, file_size));
        let ids: Vec<ChunkId> = needed.iter().filter_map(|e| e.chunk).collect();
        let chunks = self.chunks(&ids)?;
        if let Some(t) = &self.trace {
            for e in needed {
                if let Some(id) = e.chunk {
                    t.record(ino, e.offset, id);
                }
            }
        }
        let reply = assemble(needed, &chunks, offset, end, scratch)?;
        self.stats.bytes_served.fetch_add(end - offset, Relaxed);
        self.stats
            .zero_bytes_served
            .fetch_add(reply.zero_bytes, Relaxed);
        Ok(reply.data)
    }

    /// The chunks of a read: from memory without entering the runtime when all are there
    /// (readahead usually got there first), else through the reader within the timeout.
    fn chunks(&self, ids: &[ChunkId]) -> Result<Vec<Bytes>, FsError> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let partial = match self.reader.lookup(ids).into_found() {
            Ok(all) => return Ok(all),
            Err(partial) => partial,
        };
        // The timer must be created inside the runtime, so inside the future.
        let fetch = async {
            tokio::time::timeout(self.config.read_timeout, self.reader.complete(partial)).await
        };
        // This thread only waits for the fetch: it may do the fetch's blocking work itself.
        match thaw_store::read::inline::on_this_thread(|| self.rt.block_on(fetch)) {
            Ok(r) => Ok(r?),
            Err(_) => Err(FsError::Timeout(self.config.read_timeout)),
        }
    }

    /// Starts readahead for a sequential reader: the next chunks are fetched in the
    /// background and never waited for here. `span` is (offset, end, file size).
    fn read_ahead(
        &self,
        fh: u64,
        extents: &[FileExtent],
        needed: &[FileExtent],
        span: (u64, u64, u64),
    ) {
        let (offset, end, file_size) = span;
        if fh == 0 {
            // No open: the mount stopped asking for them because a bulk fetch is reading
            // the whole image already, and there is no per-open state to plan with.
            return;
        }
        let ahead =
            self.handles
                .lock()
                .entry(fh)
                .or_default()
                .plan(offset, end, self.config.readahead_max);
        let Some((from, to)) = ahead else {
            return;
        };
        let ids: Vec<ChunkId> = overlapping(extents, from, to.min(file_size))
            .iter()
            .filter_map(|e| e.chunk)
            .filter(|c| !needed.iter().any(|n| n.chunk == Some(*c)))
            .collect();
        if ids.is_empty() {
            return;
        }
        self.stats
            .readahead_chunks
            .fetch_add(ids.len() as u64, Relaxed);
        let reader = self.reader.clone();
        self.rt.spawn(async move {
            let _ = reader.read_many(&ids).await;
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use thaw_core::ChunkId;

    #[test]
    fn sequential_readers_grow_their_window_and_seeks_reset_it() {
        let mut s = ReadState::default();
        assert_eq!(s.plan(0, 4096, 8 << 20), Some((4096, 4096 + (1 << 20))));
        // Next sequential read: the window doubles, only the new part is asked for.
        assert_eq!(
            s.plan(4096, 8192, 8 << 20),
            Some((4096 + (1 << 20), 8192 + (2 << 20)))
        );
        // A seek: no readahead.
        assert_eq!(s.plan(100 << 20, (100 << 20) + 4096, 8 << 20), None);
        assert_eq!(s.window, 0);
        // Readahead disabled.
        let mut s = ReadState::default();
        assert_eq!(s.plan(0, 10, 0), None);
    }

    #[test]
    fn window_is_capped() {
        let mut s = ReadState::default();
        let mut end = 0;
        for _ in 0..20 {
            s.plan(end, end + 4096, 4 << 20);
            end += 4096;
        }
        assert_eq!(s.window, 4 << 20);
    }

    #[test]
    fn replies_are_slices_or_assembled_and_short_chunks_are_errors() {
        let (a, b) = (ChunkId::of(b"a"), ChunkId::of(b"b"));
        let ext = |offset, len, chunk| FileExtent { offset, len, chunk };
        let extents = [ext(0, 4, Some(a)), ext(4, 2, None), ext(6, 4, Some(b))];
        let chunks = [Bytes::from_static(b"AAAA"), Bytes::from_static(b"BBBB")];
        let mut scratch = Vec::new();
        let one = assemble(&extents[..1], &chunks[..1], 1, 3, &mut scratch).unwrap();
        assert!(matches!(one.data, ReadData::Chunk(ref d) if d.as_ref() == b"AA"));
        let all = assemble(&extents, &chunks, 2, 8, &mut scratch).unwrap();
        assert!(matches!(all.data, ReadData::Scratch));
        assert_eq!((scratch.as_slice(), all.zero_bytes), (&b"AA\0\0BB"[..], 2));
        let short = [Bytes::from_static(b"AA")];
        assert!(assemble(&extents[..1], &short, 0, 4, &mut scratch).is_err());
        assert!(assemble(&extents, &chunks[..1], 0, 10, &mut scratch).is_err());
    }

    #[test]
    fn overlap_search() {
        let id = Some(ChunkId::of(b"x"));
        let ext = vec![
            FileExtent {
                offset: 0,
                len: 10,
                chunk: id,
            },
            FileExtent {
                offset: 10,
                len: 10,
                chunk: None,
            },
            FileExtent {
                offset: 20,
                len: 10,
                chunk: id,
            },
        ];
        assert_eq!(overlapping(&ext, 0, 5).len(), 1);
        assert_eq!(overlapping(&ext, 5, 15).len(), 2);
        assert_eq!(overlapping(&ext, 10, 30).len(), 2);
        assert_eq!(overlapping(&ext, 29, 100).len(), 1);
        assert!(overlapping(&ext, 30, 40).is_empty());
    }
}
