//! The versioned binary envelope shared by manifests and pack indexes.
//!
//! Layout (little-endian):
//! `magic[8] | version u16 | flags u16 (0) | body_len u64 | body | blake3(header ‖ body)[32]`.
//! The body is `postcard`. Decoding checks the envelope before touching the body, and
//! postcard only ever allocates what the (already length-checked) input can fill.

use crate::FormatError;
use serde::{de::DeserializeOwned, Serialize};

const HEADER_LEN: usize = 8 + 2 + 2 + 8;
const CHECKSUM_LEN: usize = 32;

/// Describes one kind of enveloped object.
#[derive(Debug, Clone, Copy)]
pub struct Envelope {
    /// What the object is, for error messages.
    pub what: &'static str,
    /// The first eight bytes of every such object.
    pub magic: [u8; 8],
    /// The format version this build writes and reads.
    pub version: u16,
}

/// The version field of what looks like an envelope, before any check: lets a type that
/// reads several versions pick the one to decode with.
pub fn peek_version(bytes: &[u8]) -> Option<u16> {
    Some(u16::from_le_bytes([*bytes.get(8)?, *bytes.get(9)?]))
}

impl Envelope {
    /// Serialises `value` into an envelope: header, postcard body, BLAKE3 checksum.
    pub fn encode<T: Serialize>(&self, value: &T) -> Vec<u8> {
        #[allow(
            clippy::expect_used,
            reason = "postcard fails only for unsupported serde types, none of which thaw encodes; not reachable from input"
        )]
        let body = postcard::to_stdvec(value).expect("serializing into a Vec cannot fail");
        let mut out = Vec::with_capacity(HEADER_LEN + body.len() + CHECKSUM_LEN);
        out.extend_from_slice(&self.magic);
        out.extend_from_slice(&self.version.to_le_bytes());
        out.extend_from_slice(&0u16.to_le_bytes());
        out.extend_from_slice(&(body.len() as u64).to_le_bytes());
        out.extend_from_slice(&body);
        let sum = blake3::hash(&out);
        out.extend_from_slice(sum.as_bytes());
        out
    }

    /// Checks the envelope (length, magic, version, checksum) and decodes the body.
    pub fn decode<T: DeserializeOwned>(&self, bytes: &[u8]) -> Result<T, FormatError> {
        let what = self.what;
        let need = HEADER_LEN + CHECKSUM_LEN;
        if bytes.len() < need {
            return Err(FormatError::Truncated {
                what,
                len: bytes.len(),
                need,
            });
        }
        if bytes[..8] != self.magic {
            return Err(FormatError::BadMagic {
                what,
                found: bytes[..8].to_vec(),
            });
        }
        let version = u16::from_le_bytes([bytes[8], bytes[9]]);
        if version != self.version {
            return Err(FormatError::UnsupportedVersion {
                what,
                found: version,
                supported: self.version,
            });
        }
        let flags = u16::from_le_bytes([bytes[10], bytes[11]]);
        if flags != 0 {
            return Err(FormatError::Malformed {
                what,
                reason: format!("unknown flags {flags:#x}"),
            });
        }
        let mut len = [0u8; 8];
        len.copy_from_slice(&bytes[12..20]);
        let declared = u64::from_le_bytes(len);
        let actual = (bytes.len() - need) as u64;
        if declared != actual {
            return Err(FormatError::LengthMismatch {
                what,
                declared,
                actual,
            });
        }
        let (covered, stored) = bytes.split_at(bytes.len() - CHECKSUM_LEN);
        let computed = blake3::hash(covered);
        if computed.as_bytes() != stored {
            return Err(FormatError::ChecksumMismatch {
                what,
                stored: hex::encode(stored),
                computed: computed.to_hex().to_string(),
            });
        }
        let body = &covered[HEADER_LEN..];
        let (value, rest) =
            postcard::take_from_bytes::<T>(body).map_err(|e| FormatError::Malformed {
                what,
                reason: e.to_string(),
            })?;
        if !rest.is_empty() {
            return Err(FormatError::Malformed {
                what,
                reason: format!("{} trailing bytes", rest.len()),
            });
        }
        Ok(value)
    }
}
