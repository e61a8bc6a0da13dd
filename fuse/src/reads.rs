//! The read path: which chunks a read needs, readahead for sequential readers, and
//! assembling the reply from chunks and zero runs.

use thaw_core::manifest::FileExtent;

/// Readahead starts at this window once a reader looks sequential.
pub const MIN_READAHEAD: u64 = 1 << 20;

/// Per open file: where the last read ended and how far ahead we have fetched.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct ReadState {
    next: u64,
    window: u64,
    prefetched_until: u64,
}

impl ReadState {
    /// Updates the state for a read of `[offset, end)` and returns the range to read
    /// ahead, if any. Sequential readers double their window up to `max`; a seek resets it.
    pub fn plan(&mut self, offset: u64, end: u64, max: u64) -> Option<(u64, u64)> {
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
