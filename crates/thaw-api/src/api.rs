//! The wire format of the HTTP API (`/v1`): request and response bodies, the error body
//! with its stable codes, and the route table that `docs/openapi.yaml` must match.

use serde::{Deserialize, Serialize};

/// Every route: (method, path). The router is built from the same handlers; a test
/// checks this table against the router and against `docs/openapi.yaml`.
pub const ROUTES: &[(&str, &str)] = &[
    ("GET", "/healthz"),
    ("GET", "/metrics"),
    ("GET", "/v1/images"),
    ("GET", "/v1/cache"),
    ("POST", "/v1/prewarm"),
    ("GET", "/v1/jobs"),
    ("GET", "/v1/jobs/{id}"),
    ("DELETE", "/v1/jobs/{id}"),
    ("POST", "/v1/mounts"),
    ("GET", "/v1/mounts"),
    ("DELETE", "/v1/mounts/{id}"),
];

/// The largest request body accepted, in bytes.
pub const MAX_BODY_BYTES: usize = 64 * 1024;
/// The most paths one prewarm may name.
pub const MAX_SCOPE_PATHS: usize = 1024;
/// The longest image reference or path accepted.
pub const MAX_NAME_BYTES: usize = 4096;

/// What to warm.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Scope {
    /// `"trace"`: the image's merged start-up traces; `"all"`: every chunk.
    Named(NamedScope),
    /// `{"paths": [...]}`: these files, and everything under these directories.
    Paths { paths: Vec<String> },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum NamedScope {
    Trace,
    All,
}

impl Default for Scope {
    fn default() -> Self {
        Scope::Named(NamedScope::Trace)
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PrewarmRequest {
    pub image: String,
    #[serde(default)]
    pub scope: Scope,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum JobState {
    Running,
    Done,
    Failed,
    Cancelled,
}

impl JobState {
    pub fn as_str(self) -> &'static str {
        match self {
            JobState::Running => "running",
            JobState::Done => "done",
            JobState::Failed => "failed",
            JobState::Cancelled => "cancelled",
        }
    }

    pub fn is_finished(self) -> bool {
        self != JobState::Running
    }
}

/// A prewarm job as the API shows it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Job {
    pub id: String,
    pub image: String,
    pub scope: Scope,
    pub state: JobState,
    pub chunks_done: u64,
    pub chunks_total: u64,
    /// Uncompressed bytes.
    pub bytes_done: u64,
    pub bytes_total: u64,
    /// Of the done chunks, those already cached when the job reached them.
    pub chunks_cached: u64,
    pub errors: u64,
    pub last_error: Option<String>,
    /// Bytes done per second since the job started.
    pub rate_bytes_per_second: f64,
    pub elapsed_seconds: f64,
    /// Unix time of creation, in seconds.
    pub created: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MountRequest {
    pub image: String,
    pub mountpoint: String,
    #[serde(default)]
    pub writable: bool,
    /// `trace` (default): also start a prewarm of the image's start-up traces, if it has
    /// any, at the same moment as the mount; `none`: only what the container reads.
    #[serde(default)]
    pub prefetch: MountPrefetch,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MountPrefetch {
    #[default]
    Trace,
    None,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Mount {
    pub id: String,
    pub image: String,
    pub mountpoint: String,
    pub writable: bool,
    /// Where writes land (overlayfs upper directory), for writable mounts.
    pub upper: Option<String>,
    pub created: u64,
    pub bytes_served: u64,
    pub read_errors: u64,
    /// The prewarm job the mount started, if any.
    #[serde(default)]
    pub prefetch_job: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Image {
    pub id: String,
    pub tags: Vec<String>,
    pub manifest_bytes: u64,
    pub traces: usize,
}

/// One cache tier.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Tier {
    pub bytes: u64,
    pub capacity: u64,
    pub entries: usize,
    pub hits: u64,
    pub misses: u64,
    /// hits / (hits + misses); null before any lookup.
    pub hit_ratio: Option<f64>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StoreUsage {
    pub fetched_chunks: u64,
    pub fetched_bytes: u64,
    pub prefetched_chunks: u64,
    pub prefetched_bytes: u64,
    pub integrity_failures: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Cache {
    pub memory: Tier,
    pub disk: Tier,
    pub store: StoreUsage,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Health {
    pub status: String,
    pub version: String,
    pub uptime_seconds: f64,
}

/// Stable error codes: clients may match on these; messages may change.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    BadRequest,
    Unauthorized,
    NotFound,
    MethodNotAllowed,
    PayloadTooLarge,
    UnsupportedMediaType,
    InvalidArgument,
    NoTrace,
    Conflict,
    TooManyRequests,
    StoreUnavailable,
    Internal,
}

impl ErrorCode {
    pub const ALL: [ErrorCode; 12] = [
        ErrorCode::BadRequest,
        ErrorCode::Unauthorized,
        ErrorCode::NotFound,
        ErrorCode::MethodNotAllowed,
        ErrorCode::PayloadTooLarge,
        ErrorCode::UnsupportedMediaType,
        ErrorCode::InvalidArgument,
        ErrorCode::NoTrace,
        ErrorCode::Conflict,
        ErrorCode::TooManyRequests,
        ErrorCode::StoreUnavailable,
        ErrorCode::Internal,
    ];

    pub fn status(self) -> u16 {
        match self {
            ErrorCode::BadRequest => 400,
            ErrorCode::Unauthorized => 401,
            ErrorCode::NotFound => 404,
            ErrorCode::MethodNotAllowed => 405,
            ErrorCode::Conflict => 409,
            ErrorCode::PayloadTooLarge => 413,
            ErrorCode::UnsupportedMediaType => 415,
            ErrorCode::InvalidArgument | ErrorCode::NoTrace => 422,
            ErrorCode::TooManyRequests => 429,
            ErrorCode::Internal => 500,
            ErrorCode::StoreUnavailable => 503,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ErrorDetail {
    pub code: ErrorCode,
    pub message: String,
}

/// Every error response: `{"error": {"code": ..., "message": ...}}`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}
