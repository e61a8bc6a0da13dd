//! The one error type of the format crate.

use thiserror::Error;

/// Why bytes could not be decoded, or a value is not valid.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum FormatError {
    /// Too short to hold even the envelope.
    #[error("{what}: input is {len} bytes, shorter than the {need}-byte envelope")]
    Truncated {
        /// What was being decoded.
        what: &'static str,
        /// The input's length.
        len: usize,
        /// The envelope's length.
        need: usize,
    },
    /// Not this kind of object.
    #[error("{what}: bad magic {found:02x?}")]
    BadMagic {
        /// What was being decoded.
        what: &'static str,
        /// The first bytes found.
        found: Vec<u8>,
    },
    /// Written by a newer (or unknown) format version.
    #[error("{what}: format version {found} is not supported (this build reads {supported})")]
    UnsupportedVersion {
        /// What was being decoded.
        what: &'static str,
        /// The version in the input.
        found: u16,
        /// The version this build reads.
        supported: u16,
    },
    /// The length field disagrees with the input (truncated or padded).
    #[error("{what}: body length field says {declared} bytes but {actual} are present")]
    LengthMismatch {
        /// What was being decoded.
        what: &'static str,
        /// The length field.
        declared: u64,
        /// The bytes present.
        actual: u64,
    },
    /// The BLAKE3 checksum does not match: the bytes are damaged.
    #[error("{what}: checksum mismatch (stored {stored}, computed {computed})")]
    ChecksumMismatch {
        /// What was being decoded.
        what: &'static str,
        /// The checksum in the input.
        stored: String,
        /// The checksum of the bytes.
        computed: String,
    },
    /// The body does not decode.
    #[error("{what}: malformed body: {reason}")]
    Malformed {
        /// What was being decoded.
        what: &'static str,
        /// The decoder's complaint.
        reason: String,
    },
    /// The body decodes but breaks an invariant.
    #[error("{what}: invalid: {reason}")]
    Invalid {
        /// What was being checked.
        what: &'static str,
        /// Which invariant.
        reason: String,
    },
    /// Not a hex id (or id prefix).
    #[error("invalid hex id {input:?}: {reason}")]
    BadId {
        /// The input.
        input: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// Not a valid tag name.
    #[error("invalid tag name {name:?}: {reason}")]
    BadTag {
        /// The name.
        name: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// Chunk size bounds that FastCDC cannot use.
    #[error("invalid chunker configuration: {0}")]
    BadChunkerConfig(String),
}

impl FormatError {
    /// A value that decoded but breaks a rule: `what` names it, `reason` says how.
    pub fn invalid(what: &'static str, reason: impl Into<String>) -> Self {
        FormatError::Invalid {
            what,
            reason: reason.into(),
        }
    }
}
