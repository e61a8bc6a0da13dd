//! Content-defined chunking of byte streams with FastCDC (2020).

use crate::{FormatError, MAX_CHUNK_LEN};
use fastcdc::v2020::{Normalization, StreamCDC};
use std::io::Read;

/// Chunk size bounds for content-defined chunking.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChunkerConfig {
    /// No chunk is shorter than this, except the last of a stream.
    pub min: u32,
    /// The size cuts aim for on average.
    pub avg: u32,
    /// No chunk is longer than this.
    pub max: u32,
}

impl Default for ChunkerConfig {
    /// 256 KiB / 1 MiB / 4 MiB.
    fn default() -> Self {
        ChunkerConfig {
            min: 256 * 1024,
            avg: 1024 * 1024,
            max: 4 * 1024 * 1024,
        }
    }
}

impl ChunkerConfig {
    /// Checks the bounds against FastCDC's limits and the format's chunk limit.
    pub fn validate(&self) -> Result<(), FormatError> {
        use fastcdc::v2020::{
            AVERAGE_MAX, AVERAGE_MIN, MAXIMUM_MAX, MAXIMUM_MIN, MINIMUM_MAX, MINIMUM_MIN,
        };
        let (min, avg, max) = (self.min as usize, self.avg as usize, self.max as usize);
        let err = |m: String| Err(FormatError::BadChunkerConfig(m));
        if !(MINIMUM_MIN..=MINIMUM_MAX).contains(&min) {
            return err(format!("min {min} outside {MINIMUM_MIN}..={MINIMUM_MAX}"));
        }
        if !(AVERAGE_MIN..=AVERAGE_MAX).contains(&avg) {
            return err(format!("avg {avg} outside {AVERAGE_MIN}..={AVERAGE_MAX}"));
        }
        if !(MAXIMUM_MIN..=MAXIMUM_MAX).contains(&max) || self.max > MAX_CHUNK_LEN {
            return err(format!("max {max} outside {MAXIMUM_MIN}..={MAXIMUM_MAX}"));
        }
        if !(min <= avg && avg <= max) {
            return err(format!("need min <= avg <= max, got {min}/{avg}/{max}"));
        }
        Ok(())
    }
}

/// One chunk cut from a stream.
#[derive(Debug)]
pub struct Chunk {
    /// Offset of the chunk in the stream.
    pub offset: u64,
    /// The chunk's bytes.
    pub data: Vec<u8>,
}

/// Iterator of chunks over any reader. Inputs shorter than `min` give one chunk; an empty
/// input gives none.
pub struct Chunker<R: Read> {
    inner: StreamCDC<R>,
}

impl<R: Read> std::fmt::Debug for Chunker<R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Chunker").finish_non_exhaustive()
    }
}

impl<R: Read> Chunker<R> {
    /// Chunks `source` with `config` (checked first).
    pub fn new(source: R, config: ChunkerConfig) -> Result<Self, FormatError> {
        config.validate()?;
        Ok(Chunker {
            inner: StreamCDC::with_level(
                source,
                config.min as usize,
                config.avg as usize,
                config.max as usize,
                Normalization::Level1,
            ),
        })
    }
}

impl<R: Read> Iterator for Chunker<R> {
    type Item = std::io::Result<Chunk>;

    fn next(&mut self) -> Option<Self::Item> {
        match self.inner.next()? {
            Ok(c) => Some(Ok(Chunk {
                offset: c.offset,
                data: c.data,
            })),
            Err(fastcdc::v2020::Error::IoError(e)) => Some(Err(e)),
            Err(e) => Some(Err(std::io::Error::other(e.to_string()))),
        }
    }
}

/// Cut points of an in-memory buffer, as ranges; the same boundaries [`Chunker`] finds
/// on a stream of the same bytes, without copying.
pub fn cut_ranges(
    data: &[u8],
    config: ChunkerConfig,
) -> Result<Vec<std::ops::Range<usize>>, FormatError> {
    config.validate()?;
    Ok(fastcdc::v2020::FastCDC::with_level(
        data,
        config.min as usize,
        config.avg as usize,
        config.max as usize,
        Normalization::Level1,
    )
    .map(|c| c.offset..c.offset + c.length)
    .collect())
}

/// Cuts an in-memory buffer; a convenience over [`Chunker`].
pub fn chunk_slice(data: &[u8], config: ChunkerConfig) -> Result<Vec<Chunk>, FormatError> {
    Chunker::new(data, config)?
        .map(|c| {
            c.map_err(|e| FormatError::Malformed {
                what: "chunk_slice",
                reason: e.to_string(),
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn small() -> ChunkerConfig {
        ChunkerConfig {
            min: 1024,
            avg: 4096,
            max: 16384,
        }
    }

    fn pseudo_random(len: usize, seed: u64) -> Vec<u8> {
        let mut x = seed | 1;
        (0..len)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                (x >> 24) as u8
            })
            .collect()
    }

    #[test]
    fn empty_input_has_no_chunks() {
        assert!(chunk_slice(&[], small()).unwrap().is_empty());
    }

    #[test]
    fn short_input_is_one_chunk() {
        let c = chunk_slice(b"tiny", ChunkerConfig::default()).unwrap();
        assert_eq!(c.len(), 1);
        assert_eq!(c[0].data, b"tiny");
    }

    #[test]
    fn bad_configs_are_rejected() {
        assert!(ChunkerConfig {
            min: 10,
            avg: 4096,
            max: 16384
        }
        .validate()
        .is_err());
        assert!(ChunkerConfig {
            min: 8192,
            avg: 4096,
            max: 16384
        }
        .validate()
        .is_err());
        assert!(ChunkerConfig {
            min: 1024,
            avg: 4096,
            max: 64 * 1024 * 1024
        }
        .validate()
        .is_err());
        assert!(ChunkerConfig::default().validate().is_ok());
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(32))]

        #[test]
        fn chunks_reassemble_to_input(len in 0usize..200_000, seed in any::<u64>()) {
            let data = pseudo_random(len, seed);
            let chunks = chunk_slice(&data, small()).unwrap();
            let mut joined = Vec::new();
            let mut expect_offset = 0u64;
            for c in &chunks {
                prop_assert_eq!(c.offset, expect_offset);
                prop_assert!(c.data.len() <= 16384);
                expect_offset += c.data.len() as u64;
                joined.extend_from_slice(&c.data);
            }
            prop_assert_eq!(joined, data);
        }

        #[test]
        fn slice_and_stream_cut_alike(len in 0usize..100_000, seed in any::<u64>()) {
            let data = pseudo_random(len, seed);
            let streamed: Vec<_> = chunk_slice(&data, small()).unwrap().iter().map(|c| c.offset as usize..c.offset as usize + c.data.len()).collect();
            prop_assert_eq!(cut_ranges(&data, small()).unwrap(), streamed);
        }

        #[test]
        fn boundaries_are_stable_under_a_far_insertion(seed in any::<u64>(), insert in 1usize..5000) {
            // Insert bytes near the start; boundaries well after it must be unchanged.
            let data = pseudo_random(300_000, seed);
            let mut edited = pseudo_random(insert, seed ^ 0xdead_beef);
            edited.extend_from_slice(&data);
            let cut = |d: &[u8]| -> Vec<(u64, crate::ChunkId)> {
                chunk_slice(d, small()).unwrap().iter().map(|c| (c.offset, crate::ChunkId::of(&c.data))).collect()
            };
            let before = cut(&data);
            let after: std::collections::HashSet<crate::ChunkId> = cut(&edited).into_iter().map(|(_, id)| id).collect();
            // Every chunk that starts 64 KiB or more after the edit is cut identically.
            for (offset, id) in before.iter().filter(|(o, _)| *o >= 64 * 1024) {
                prop_assert!(after.contains(id), "chunk at {} changed after a {}-byte insertion at 0", offset, insert);
            }
        }
    }
}
