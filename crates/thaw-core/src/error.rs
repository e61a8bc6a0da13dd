//! The one error type of the format crate.

use thiserror::Error;

/// Why bytes could not be decoded, or a value is not valid.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum FormatError {
    #[error("{what}: input is {len} bytes, shorter than the {need}-byte envelope")]
    Truncated {
        what: &'static str,
        len: usize,
        need: usize,
    },
    #[error("{what}: bad magic {found:02x?}")]
    BadMagic { what: &'static str, found: Vec<u8> },
    #[error("{what}: format version {found} is not supported (this build reads {supported})")]
    UnsupportedVersion {
        what: &'static str,
        found: u16,
        supported: u16,
    },
    #[error("{what}: body length field says {declared} bytes but {actual} are present")]
    LengthMismatch {
        what: &'static str,
        declared: u64,
        actual: u64,
    },
    #[error("{what}: checksum mismatch (stored {stored}, computed {computed})")]
    ChecksumMismatch {
        what: &'static str,
        stored: String,
        computed: String,
    },
    #[error("{what}: malformed body: {reason}")]
    Malformed { what: &'static str, reason: String },
    #[error("{what}: invalid: {reason}")]
    Invalid { what: &'static str, reason: String },
    #[error("invalid hex id {input:?}: {reason}")]
    BadId { input: String, reason: &'static str },
    #[error("invalid tag name {name:?}: {reason}")]
    BadTag { name: String, reason: &'static str },
    #[error("invalid chunker configuration: {0}")]
    BadChunkerConfig(String),
}

impl FormatError {
    pub(crate) fn invalid(what: &'static str, reason: impl Into<String>) -> Self {
        FormatError::Invalid {
            what,
            reason: reason.into(),
        }
    }
}
