//! Per-tensor checksums of loaded bytes: the BLAKE3 of each tensor's bytes as they ended
//! up in the destination, to compare with hashes computed from the source file by anyone.

use crate::WeightsHeader;

/// One tensor's checksum.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TensorChecksum {
    /// The tensor's name.
    pub name: String,
    /// BLAKE3 of its bytes, hex.
    pub blake3: String,
}

/// The checksum of every tensor of `header` over `data` (the data region), in the
/// header's data order. A tensor outside `data` hashes what there is of it.
pub fn tensor_checksums(header: &WeightsHeader, data: &[u8]) -> Vec<TensorChecksum> {
    header
        .tensors
        .iter()
        .map(|t| {
            let lo = usize::try_from(t.start)
                .unwrap_or(usize::MAX)
                .min(data.len());
            let hi = usize::try_from(t.end)
                .unwrap_or(usize::MAX)
                .clamp(lo, data.len());
            TensorChecksum {
                name: t.name.clone(),
                blake3: blake3::hash(&data[lo..hi]).to_hex().to_string(),
            }
        })
        .collect()
}
