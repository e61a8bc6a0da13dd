//! Where each tensor goes in the destination: packed (the file's data region as it is) or
//! aligned (every tensor at a multiple of, say, 256 bytes, as CUDA kernels and zero-copy
//! views want). A piece of the file maps to one destination range per tensor it touches.

use crate::WeightsHeader;

/// The destination offsets of a file's tensors.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Layout {
    /// Per tensor, in data order: where it starts in the file's data region and in the
    /// destination, and its length.
    segments: Vec<Segment>,
    /// The destination's length.
    pub len: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Segment {
    src: u64,
    dst: u64,
    len: u64,
}

impl Layout {
    /// The data region as it is in the file.
    pub fn packed(header: &WeightsHeader) -> Self {
        Layout {
            segments: vec![Segment {
                src: 0,
                dst: 0,
                len: header.data_len,
            }],
            len: header.data_len,
        }
    }

    /// Every tensor at a multiple of `align` bytes (a power of two), in data order.
    pub fn aligned(header: &WeightsHeader, align: u64) -> Self {
        let align = align.max(1).next_power_of_two();
        let mut dst = 0u64;
        let segments = header
            .tensors
            .iter()
            .map(|t| {
                let s = Segment {
                    src: t.start,
                    dst,
                    len: t.end - t.start,
                };
                dst = (dst + s.len).next_multiple_of(align);
                s
            })
            .collect();
        Layout { segments, len: dst }
    }

    /// Where each tensor of the header starts in the destination.
    pub fn tensor_offsets(&self, header: &WeightsHeader) -> Vec<u64> {
        header
            .tensors
            .iter()
            .map(|t| self.dst_of(t.start))
            .collect()
    }

    fn dst_of(&self, src: u64) -> u64 {
        let i = self.segments.partition_point(|s| s.src + s.len <= src);
        self.segments
            .get(i)
            .map_or(self.len, |s| s.dst + src.saturating_sub(s.src))
    }

    /// The destination ranges of the data region's bytes `src..src + len`: (offset into
    /// those bytes, length, destination offset) per tensor touched.
    pub(crate) fn map(&self, src: u64, len: u64) -> Vec<(u64, u64, u64)> {
        let end = src + len;
        let first = self.segments.partition_point(|s| s.src + s.len <= src);
        self.segments[first..]
            .iter()
            .take_while(|s| s.src < end)
            .filter_map(|s| {
                let lo = s.src.max(src);
                let hi = (s.src + s.len).min(end);
                (hi > lo).then(|| (lo - src, hi - lo, s.dst + (lo - s.src)))
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Tensor;

    fn header(lens: &[u64]) -> WeightsHeader {
        let mut start = 0;
        let tensors = lens
            .iter()
            .enumerate()
            .map(|(i, &l)| {
                let t = Tensor {
                    name: format!("t{i}"),
                    dtype: "U8".into(),
                    shape: vec![l as usize],
                    start,
                    end: start + l,
                };
                start += l;
                t
            })
            .collect();
        WeightsHeader {
            data_offset: 8,
            data_len: start,
            tensors,
            json: String::new(),
        }
    }

    #[test]
    fn aligned_tensors_start_on_the_boundary_and_pieces_split_at_tensors() {
        let h = header(&[10, 300, 0, 5]);
        let l = Layout::aligned(&h, 256);
        assert_eq!(l.tensor_offsets(&h), vec![0, 256, 768, 768]);
        assert_eq!(l.len, 1024);
        // Bytes 5..20 of the data: 5 of t0, then 10 of t1.
        assert_eq!(l.map(5, 15), vec![(0, 5, 5), (5, 10, 256)]);
        // The whole region: one range per non-empty tensor.
        assert_eq!(
            l.map(0, 315),
            vec![(0, 10, 0), (10, 300, 256), (310, 5, 768)]
        );
        let p = Layout::packed(&h);
        assert_eq!(p.map(5, 15), vec![(0, 15, 5)]);
        assert_eq!(p.tensor_offsets(&h), vec![0, 10, 310, 310]);
    }
}
