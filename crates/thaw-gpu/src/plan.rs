//! The work of one load: the file's data region cut into pieces that each fill one
//! staging slot (consecutive chunks, so each piece lands at one known offset of the
//! destination) and zero runs (set on the destination, never sent).

use std::collections::{HashMap, HashSet};
use thaw_core::manifest::FileExtent;
use thaw_core::ChunkId;

/// One chunk of a piece.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct PieceChunk {
    /// The chunk.
    pub id: ChunkId,
    /// Its length.
    pub len: u32,
    /// Its extent's index in the file (for errors).
    pub index: usize,
}

/// One piece of work.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Work {
    /// Consecutive chunks of the file: decoded one after another into a slot, whose bytes
    /// from `skip` on (the first chunk may start in the header) go to `offset`.
    Chunks {
        /// Where the bytes land in the data region.
        offset: u64,
        /// Bytes at the start of the slot that lie before the data region.
        skip: usize,
        /// The chunks, in file order.
        chunks: Vec<PieceChunk>,
    },
    /// `len` zero bytes at `offset` in the data region.
    Zeros {
        /// Where in the data region.
        offset: u64,
        /// How many.
        len: u64,
    },
}

impl Work {
    /// Bytes this piece puts in the destination.
    pub(crate) fn bytes(&self) -> u64 {
        match self {
            Work::Chunks { skip, chunks, .. } => {
                chunks.iter().map(|c| u64::from(c.len)).sum::<u64>() - *skip as u64
            }
            Work::Zeros { len, .. } => *len,
        }
    }
}

/// The chunks of a file that hold only zeros. Zeros deduplicate and compress to almost
/// nothing, so only chunks that occur more than once or that `stored_len` says shrank
/// over 256 times are candidates; each is compared with the id of a zero buffer of its
/// length (one hash per distinct length).
pub(crate) fn zero_chunks(
    extents: &[FileExtent],
    stored_len: impl Fn(&ChunkId) -> Option<u32>,
) -> HashSet<ChunkId> {
    let mut seen: HashMap<(ChunkId, u64), u32> = HashMap::new();
    for e in extents {
        if let Some(id) = e.chunk {
            *seen.entry((id, e.len)).or_default() += 1;
        }
    }
    let mut zero_ids: HashMap<u64, ChunkId> = HashMap::new();
    seen.into_iter()
        .filter(|((id, len), n)| {
            *n > 1 || stored_len(id).is_some_and(|s| u64::from(s) * 256 < *len)
        })
        .filter(|((id, len), _)| {
            let zero = *zero_ids
                .entry(*len)
                .or_insert_with(|| ChunkId::of(&vec![0u8; usize::try_from(*len).unwrap_or(0)]));
            zero == *id
        })
        .map(|((id, _), _)| id)
        .collect()
}

/// Cuts the extents of a file into work for slots of `slot_bytes` (which must hold the
/// largest chunk). The pieces cover the data region (from `data_offset`) exactly once;
/// holes and chunks in `zeros` become zero runs.
pub(crate) fn plan(
    extents: &[FileExtent],
    data_offset: u64,
    slot_bytes: usize,
    zeros: &HashSet<ChunkId>,
) -> Vec<Work> {
    let mut work: Vec<Work> = Vec::new();
    let mut fill = 0usize;
    for (index, e) in extents.iter().enumerate() {
        let end = e.offset + e.len;
        if end <= data_offset {
            continue;
        }
        let offset = e.offset.saturating_sub(data_offset);
        let skip = data_offset.saturating_sub(e.offset);
        let Some(id) = e.chunk.filter(|id| !zeros.contains(id)) else {
            let len = end - data_offset.max(e.offset);
            if let Some(Work::Zeros { offset: o, len: l }) = work.last_mut() {
                if *o + *l == offset {
                    *l += len;
                    fill = 0;
                    continue;
                }
            }
            work.push(Work::Zeros { offset, len });
            fill = 0;
            continue;
        };
        let chunk = PieceChunk {
            id,
            len: u32::try_from(e.len).unwrap_or(u32::MAX),
            index,
        };
        let len = chunk.len as usize;
        match work.last_mut() {
            Some(Work::Chunks { chunks, .. }) if fill > 0 && fill + len <= slot_bytes => {
                chunks.push(chunk);
                fill += len;
            }
            _ => {
                work.push(Work::Chunks {
                    offset,
                    skip: skip as usize,
                    chunks: vec![chunk],
                });
                fill = len;
            }
        }
    }
    work
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chunk(offset: u64, len: u64, n: u8) -> FileExtent {
        FileExtent {
            offset,
            len,
            chunk: Some(ChunkId::of(&[n])),
        }
    }

    #[test]
    fn pieces_fill_slots_skip_the_header_and_cover_the_data_once() {
        let extents = vec![
            chunk(0, 100, 1), // header (90 bytes) and 10 of data
            chunk(100, 100, 2),
            chunk(200, 100, 3),
            FileExtent {
                offset: 300,
                len: 50,
                chunk: None,
            },
            chunk(350, 150, 4),
            chunk(500, 100, 5),
        ];
        let work = plan(&extents, 90, 250, &HashSet::new());
        let offsets: Vec<(u64, u64)> = work
            .iter()
            .map(|w| match w {
                Work::Chunks { offset, .. } | Work::Zeros { offset, .. } => (*offset, w.bytes()),
            })
            .collect();
        // Slot of 250: chunks 1+2 (200), then 3; zeros; 4 (150) + 5 (100).
        assert_eq!(offsets, vec![(0, 110), (110, 100), (210, 50), (260, 250)]);
        let total: u64 = work.iter().map(Work::bytes).sum();
        assert_eq!(total, 600 - 90);
        assert!(matches!(&work[0], Work::Chunks { skip: 90, chunks, .. } if chunks.len() == 2));
    }

    #[test]
    fn repeated_zero_chunks_become_one_zero_run() {
        let zero = |offset| FileExtent {
            offset,
            len: 64,
            chunk: Some(ChunkId::of(&[0u8; 64])),
        };
        let extents = vec![
            chunk(0, 64, 1),
            zero(64),
            zero(128),
            zero(192),
            chunk(256, 64, 2),
        ];
        let zeros = zero_chunks(&extents, |_| None);
        assert_eq!(zeros.len(), 1);
        let work = plan(&extents, 0, 1 << 20, &zeros);
        assert_eq!(work.len(), 3, "{work:?}");
        assert_eq!(
            work[1],
            Work::Zeros {
                offset: 64,
                len: 192
            }
        );
        // A zero chunk that occurs once is fetched like any other.
        assert!(zero_chunks(&extents[..2], |_| None).is_empty());
        // Unless the store says it compressed to almost nothing.
        assert_eq!(zero_chunks(&extents[..2], |_| Some(0)).len(), 1);
    }

    #[test]
    fn a_header_spanning_chunks_is_skipped_whole() {
        let extents = vec![chunk(0, 50, 1), chunk(50, 50, 2), chunk(100, 50, 3)];
        let work = plan(&extents, 120, 1000, &HashSet::new());
        assert_eq!(
            work,
            vec![Work::Chunks {
                offset: 0,
                skip: 20,
                chunks: vec![PieceChunk {
                    id: ChunkId::of(&[3]),
                    len: 50,
                    index: 2
                }]
            }]
        );
    }
}
