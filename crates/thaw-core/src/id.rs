//! Content ids: BLAKE3-256 digests of chunks, manifests and packs.

use crate::FormatError;
use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;

macro_rules! digest_id {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        pub struct $name(pub [u8; 32]);

        impl $name {
            /// The id of `data`: its BLAKE3-256 digest.
            pub fn of(data: &[u8]) -> Self {
                Self(*blake3::hash(data).as_bytes())
            }
            /// The raw 32 bytes.
            pub fn as_bytes(&self) -> &[u8; 32] {
                &self.0
            }
            /// All 64 hex digits.
            pub fn to_hex(&self) -> String {
                hex::encode(self.0)
            }
            /// The first 12 hex digits, for humans.
            pub fn short(&self) -> String {
                hex::encode(&self.0[..6])
            }
        }
        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.to_hex())
            }
        }
        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}({})", stringify!($name), self.short())
            }
        }
        impl FromStr for $name {
            type Err = FormatError;
            fn from_str(s: &str) -> Result<Self, FormatError> {
                if s.len() != 64 {
                    return Err(FormatError::BadId { input: s.to_string(), reason: "expected 64 hex digits" });
                }
                let mut out = [0u8; 32];
                hex::decode_to_slice(s, &mut out)
                    .map_err(|_| FormatError::BadId { input: s.to_string(), reason: "not hexadecimal" })?;
                Ok(Self(out))
            }
        }
    };
}

digest_id!(
    /// BLAKE3-256 of a chunk's uncompressed bytes.
    ChunkId
);
digest_id!(
    /// BLAKE3-256 of an encoded manifest.
    ImageId
);
digest_id!(
    /// BLAKE3-256 of a pack object's bytes.
    PackId
);

/// Is `s` a plausible (possibly partial) hex id, for prefix lookups?
pub fn is_hex_prefix(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && s.bytes()
            .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_round_trip() {
        let id = ChunkId::of(b"hello");
        assert_eq!(id.to_hex().parse::<ChunkId>().unwrap(), id);
        assert_eq!(id.to_hex(), blake3::hash(b"hello").to_hex().as_str());
    }

    #[test]
    fn bad_hex_is_an_error() {
        assert!("zz".parse::<ImageId>().is_err());
        assert!("g".repeat(64).parse::<ImageId>().is_err());
        assert!(is_hex_prefix("abc1"));
        assert!(!is_hex_prefix("ABC"));
        assert!(!is_hex_prefix(""));
    }
}
