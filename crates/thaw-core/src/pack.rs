//! Pack indexes: where each chunk lives inside a pack object, and how it is stored.

use crate::codec::Envelope;
use crate::{ChunkId, FormatError, MAX_CHUNK_LEN};
use serde::{Deserialize, Serialize};
use std::collections::HashSet;

const ENVELOPE: Envelope = Envelope {
    what: "pack index",
    magic: *b"THAWIDX\0",
    version: 1,
};

/// How a chunk's bytes are stored in a pack.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Compression {
    /// Stored as is (compression did not pay).
    None,
    /// Compressed with zstd.
    Zstd,
}

/// One chunk inside a pack.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct PackEntry {
    /// The chunk's id.
    pub id: ChunkId,
    /// Byte offset of the stored bytes in the pack object.
    pub offset: u64,
    /// Length of the stored (possibly compressed) bytes.
    pub stored_len: u32,
    /// Length of the chunk once decompressed.
    pub raw_len: u32,
    /// How the stored bytes are compressed.
    pub compression: Compression,
}

impl PackEntry {
    /// Where the stored bytes end in the pack.
    pub fn end(&self) -> u64 {
        self.offset + u64::from(self.stored_len)
    }
}

/// The index of one pack object: its length and its chunks, in offset order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PackIndex {
    /// The pack object's length in bytes.
    pub pack_len: u64,
    /// Its chunks, by offset.
    pub entries: Vec<PackEntry>,
}

impl PackIndex {
    /// The index in its envelope (see docs/format.md).
    pub fn encode(&self) -> Vec<u8> {
        ENVELOPE.encode(self)
    }

    /// Decodes and validates: entries in offset order, inside the pack, not overlapping,
    /// ids unique, lengths within the format's limits.
    pub fn decode(bytes: &[u8]) -> Result<PackIndex, FormatError> {
        let index: PackIndex = ENVELOPE.decode(bytes)?;
        index.validate()?;
        Ok(index)
    }

    /// Checks that entries are sorted, in bounds, non-overlapping and sized within limits.
    pub fn validate(&self) -> Result<(), FormatError> {
        let what = "pack index";
        let mut seen = HashSet::with_capacity(self.entries.len());
        let mut cursor = 0u64;
        for (i, e) in self.entries.iter().enumerate() {
            if e.raw_len == 0 || e.raw_len > MAX_CHUNK_LEN {
                return Err(FormatError::invalid(
                    what,
                    format!("entry {i}: raw length {} out of range", e.raw_len),
                ));
            }
            if e.stored_len == 0 {
                return Err(FormatError::invalid(
                    what,
                    format!("entry {i}: empty stored bytes"),
                ));
            }
            if e.compression == Compression::None && e.stored_len != e.raw_len {
                return Err(FormatError::invalid(
                    what,
                    format!("entry {i}: uncompressed but lengths differ"),
                ));
            }
            // zstd never needs more than a small frame overhead over the input.
            if u64::from(e.stored_len) > u64::from(e.raw_len) + 1024 {
                return Err(FormatError::invalid(
                    what,
                    format!("entry {i}: stored length exceeds raw length"),
                ));
            }
            if e.offset < cursor {
                return Err(FormatError::invalid(
                    what,
                    format!("entry {i}: overlaps or is out of order"),
                ));
            }
            cursor = e.end();
            if cursor > self.pack_len {
                return Err(FormatError::invalid(
                    what,
                    format!(
                        "entry {i}: ends at {cursor}, past the pack's {}",
                        self.pack_len
                    ),
                ));
            }
            if !seen.insert(e.id) {
                return Err(FormatError::invalid(
                    what,
                    format!("entry {i}: duplicate chunk {}", e.id),
                ));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(offset: u64, len: u32, tag: u8) -> PackEntry {
        PackEntry {
            id: ChunkId::of(&[tag]),
            offset,
            stored_len: len,
            raw_len: len,
            compression: Compression::None,
        }
    }

    #[test]
    fn round_trip_and_validation() {
        let idx = PackIndex {
            pack_len: 30,
            entries: vec![entry(0, 10, 1), entry(10, 20, 2)],
        };
        assert_eq!(PackIndex::decode(&idx.encode()).unwrap(), idx);
        let overlapping = PackIndex {
            pack_len: 30,
            entries: vec![entry(0, 10, 1), entry(5, 10, 2)],
        };
        assert!(PackIndex::decode(&overlapping.encode()).is_err());
        let past_end = PackIndex {
            pack_len: 15,
            entries: vec![entry(0, 10, 1), entry(10, 10, 2)],
        };
        assert!(PackIndex::decode(&past_end.encode()).is_err());
        let dup = PackIndex {
            pack_len: 30,
            entries: vec![entry(0, 10, 1), entry(10, 10, 1)],
        };
        assert!(PackIndex::decode(&dup.encode()).is_err());
    }

    #[test]
    fn corrupt_bytes_are_rejected() {
        let idx = PackIndex {
            pack_len: 10,
            entries: vec![entry(0, 10, 1)],
        };
        let mut bytes = idx.encode();
        let n = bytes.len();
        bytes[n / 2] ^= 1;
        assert!(matches!(
            PackIndex::decode(&bytes),
            Err(FormatError::ChecksumMismatch { .. })
        ));
    }
}
