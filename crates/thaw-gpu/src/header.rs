//! The safetensors header: parsed and validated with the `safetensors` crate from the
//! first bytes of the file alone, so loading can start before the rest arrives.

use crate::LoadError;

/// The largest header accepted (the `safetensors` crate's own limit).
pub const MAX_HEADER_BYTES: u64 = 100_000_000;

/// One tensor: where its bytes lie in the data region (after the header).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tensor {
    /// The tensor's name.
    pub name: String,
    /// Its dtype as safetensors writes it (`F32`, `BF16`, ...).
    pub dtype: String,
    /// Its shape.
    pub shape: Vec<usize>,
    /// Where its bytes start in the data region.
    pub start: u64,
    /// Where they end.
    pub end: u64,
}

/// What a safetensors file holds.
#[derive(Debug, Clone)]
pub struct WeightsHeader {
    /// Bytes before the data region: the 8-byte length plus the JSON header.
    pub data_offset: u64,
    /// The data region's length.
    pub data_len: u64,
    /// Tensors in data order.
    pub tensors: Vec<Tensor>,
    /// The JSON header as the file has it (metadata included), for whoever maps the data.
    pub json: String,
}

impl WeightsHeader {
    /// The length of the header to read: from the first 8 bytes.
    pub fn header_len(prefix: &[u8], path: &str) -> Result<u64, LoadError> {
        let bad = |reason: String| LoadError::BadHeader {
            path: path.to_string(),
            reason,
        };
        let n: [u8; 8] = prefix
            .get(..8)
            .and_then(|b| b.try_into().ok())
            .ok_or_else(|| bad("shorter than 8 bytes".into()))?;
        let n = u64::from_le_bytes(n);
        if n > MAX_HEADER_BYTES {
            return Err(bad(format!(
                "header of {n} bytes; at most {MAX_HEADER_BYTES}"
            )));
        }
        Ok(8 + n)
    }

    /// Parses `header` (the first `header_len` bytes) of a file of `file_size` bytes.
    pub fn parse(header: &[u8], file_size: u64, path: &str) -> Result<Self, LoadError> {
        let bad = |reason: String| LoadError::BadHeader {
            path: path.to_string(),
            reason,
        };
        let len = Self::header_len(header, path)?;
        let json = header.get(8..len as usize).ok_or_else(|| {
            bad(format!(
                "header needs {len} bytes, file has {}",
                header.len()
            ))
        })?;
        let text = std::str::from_utf8(json).map_err(|e| bad(format!("header: {e}")))?;
        // Deserialising validates: offsets contiguous from 0, sizes match dtype x shape.
        let meta: safetensors::tensor::Metadata =
            serde_json::from_str(text).map_err(|e| bad(format!("header: {e}")))?;
        let data_len = meta.data_len() as u64;
        if len + data_len != file_size {
            return Err(bad(format!(
                "header says {} bytes of data, the file has {}",
                data_len,
                file_size.saturating_sub(len)
            )));
        }
        let tensors = meta
            .offset_keys()
            .into_iter()
            .filter_map(|name| {
                let info = meta.info(&name)?;
                Some(Tensor {
                    dtype: format!("{:?}", info.dtype),
                    shape: info.shape.clone(),
                    start: info.data_offsets.0 as u64,
                    end: info.data_offsets.1 as u64,
                    name,
                })
            })
            .collect();
        Ok(WeightsHeader {
            data_offset: len,
            data_len,
            tensors,
            json: text.to_owned(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(header: &str, data: usize) -> Vec<u8> {
        let mut v = (header.len() as u64).to_le_bytes().to_vec();
        v.extend_from_slice(header.as_bytes());
        v.extend(std::iter::repeat_n(0u8, data));
        v
    }

    #[test]
    fn parses_and_validates() {
        let h = r#"{"b":{"dtype":"F32","shape":[2],"data_offsets":[16,24]},"a":{"dtype":"I32","shape":[2,2],"data_offsets":[0,16]}}"#;
        let f = file(h, 24);
        let w = WeightsHeader::parse(&f, f.len() as u64, "m").unwrap();
        assert_eq!(w.data_len, 24);
        assert_eq!(w.data_offset, 8 + h.len() as u64);
        let names: Vec<&str> = w.tensors.iter().map(|t| t.name.as_str()).collect();
        assert_eq!(names, ["a", "b"]);
        assert_eq!((w.tensors[1].start, w.tensors[1].end), (16, 24));
    }

    #[test]
    fn rejects_bad_files() {
        let ok = r#"{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}}"#;
        // Wrong data length, a gap in offsets, a size that disagrees with the shape,
        // garbage, a huge length field.
        for (h, data) in [
            (ok, 4),
            (
                r#"{"a":{"dtype":"F32","shape":[2],"data_offsets":[4,12]}}"#,
                12,
            ),
            (
                r#"{"a":{"dtype":"F32","shape":[3],"data_offsets":[0,8]}}"#,
                8,
            ),
            ("not json", 0),
        ] {
            let f = file(h, data);
            assert!(
                WeightsHeader::parse(&f, f.len() as u64, "m").is_err(),
                "{h}"
            );
        }
        let mut huge = u64::MAX.to_le_bytes().to_vec();
        huge.extend_from_slice(b"{}");
        assert!(WeightsHeader::header_len(&huge, "m").is_err());
        assert!(WeightsHeader::header_len(b"abc", "m").is_err());
    }
}
