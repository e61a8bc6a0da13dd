//! Per-tensor checksums of loaded bytes: the BLAKE3 of each tensor's bytes as they ended
//! up in the destination, to compare with hashes computed from the source file by anyone.

use crate::LoadReport;

/// One tensor's checksum.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TensorChecksum {
    /// The tensor's name.
    pub name: String,
    /// BLAKE3 of its bytes, hex.
    pub blake3: String,
}

/// The checksum of every tensor a load put in `data` (its destination), in the header's
/// data order, at the offsets the load reported. A tensor outside `data` hashes what
/// there is of it.
pub fn tensor_checksums(report: &LoadReport, data: &[u8]) -> Vec<TensorChecksum> {
    report
        .header
        .tensors
        .iter()
        .zip(&report.offsets)
        .map(|(t, &at)| {
            let lo = usize::try_from(at).unwrap_or(usize::MAX).min(data.len());
            let len = usize::try_from(t.end - t.start).unwrap_or(usize::MAX);
            let hi = lo.saturating_add(len).min(data.len());
            TensorChecksum {
                name: t.name.clone(),
                blake3: blake3::hash(&data[lo..hi]).to_hex().to_string(),
            }
        })
        .collect()
}
