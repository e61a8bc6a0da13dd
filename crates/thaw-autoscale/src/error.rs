//! The autoscaler's typed errors: bad policy parameters and malformed traces.

use std::path::PathBuf;

/// A policy parameter that cannot be used.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum ParamError {
    /// No policy has this name.
    #[error("unknown policy {name:?} (known: {known})")]
    UnknownPolicy {
        /// The name asked for.
        name: String,
        /// The names that exist, comma-separated.
        known: String,
    },
    /// The policy has no parameter of this name.
    #[error("policy {policy} has no parameter {key:?} (it has: {known})")]
    UnknownKey {
        /// The policy.
        policy: String,
        /// The key given.
        key: String,
        /// The keys the policy takes, comma-separated.
        known: String,
    },
    /// A value that is not a number, or out of its range.
    #[error("parameter {key}: {reason}")]
    BadValue {
        /// The key.
        key: String,
        /// Why the value is refused.
        reason: String,
    },
    /// A `KEY=VALUE` argument without `=`.
    #[error("parameter {0:?} is not KEY=VALUE")]
    NotKeyValue(String),
}

/// A trace that cannot be read.
#[derive(Debug, thiserror::Error)]
pub enum TraceError {
    /// The file could not be read.
    #[error("{path}: {source}")]
    Io {
        /// The trace file.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// A line that does not parse.
    #[error("{path}:{line}: {reason}")]
    Line {
        /// The trace file.
        path: PathBuf,
        /// 1-based line number.
        line: usize,
        /// What is wrong with it.
        reason: String,
    },
    /// A trace with no requests.
    #[error("{0}: the trace holds no requests")]
    Empty(PathBuf),
    /// An unknown synthetic trace name.
    #[error("unknown synthetic trace {name:?} (known: {known})")]
    UnknownSynthetic {
        /// The name asked for.
        name: String,
        /// The names that exist.
        known: String,
    },
}

/// Any error of this crate.
#[derive(Debug, thiserror::Error)]
pub enum AutoscaleError {
    /// See [`ParamError`].
    #[error(transparent)]
    Param(#[from] ParamError),
    /// See [`TraceError`].
    #[error(transparent)]
    Trace(#[from] TraceError),
}
