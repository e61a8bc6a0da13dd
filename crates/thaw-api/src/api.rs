//! The wire format of the HTTP API (`/v1`): request and response bodies, the error body
//! with its stable codes, and the route table that `docs/openapi.yaml` must match.

use serde::{Deserialize, Serialize};

mod autoscale;
pub use autoscale::*;

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
    ("POST", "/v1/containers"),
    ("GET", "/v1/containers"),
    ("GET", "/v1/containers/{id}"),
    ("DELETE", "/v1/containers/{id}"),
    ("POST", "/v1/containers/{id}/stop"),
    ("GET", "/v1/containers/{id}/logs"),
    ("GET", "/v1/autoscale"),
    ("POST", "/v1/deployments/{name}/signals"),
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
    Paths {
        /// Absolute paths in the image, without `..`.
        paths: Vec<String>,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
/// The named scopes.
pub enum NamedScope {
    /// The image's merged start-up traces.
    Trace,
    /// Every chunk of the image.
    All,
}

impl Default for Scope {
    fn default() -> Self {
        Scope::Named(NamedScope::Trace)
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
/// `POST /v1/prewarm`.
pub struct PrewarmRequest {
    /// A tag, an image id, or an unambiguous id prefix.
    pub image: String,
    #[serde(default)]
    /// What to warm (default: the traces).
    pub scope: Scope,
    /// Safetensors files (or sharded checkpoints' `*.index.json`) of the image to load
    /// into the daemon's resident weights once the chunks are warm (at most 64).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub weights: Vec<String>,
}

/// The most weight files one prewarm names.
pub const MAX_PREWARM_WEIGHTS: usize = 64;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
/// Where a job is.
pub enum JobState {
    /// Warming.
    Running,
    /// Every chunk warmed.
    Done,
    /// Finished, but some chunks could not be warmed (`errors`, `last_error`).
    Failed,
    /// Cancelled by a client or at shutdown.
    Cancelled,
}

impl JobState {
    /// The state as the API writes it.
    pub fn as_str(self) -> &'static str {
        match self {
            JobState::Running => "running",
            JobState::Done => "done",
            JobState::Failed => "failed",
            JobState::Cancelled => "cancelled",
        }
    }

    /// Whether the job has ended (any state but running).
    pub fn is_finished(self) -> bool {
        self != JobState::Running
    }
}

/// A prewarm job as the API shows it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Job {
    /// The job's id.
    pub id: String,
    /// The image's id.
    pub image: String,
    /// What it warms.
    pub scope: Scope,
    /// Where it is.
    pub state: JobState,
    /// Chunks warmed so far.
    pub chunks_done: u64,
    /// Distinct chunks to warm.
    pub chunks_total: u64,
    /// Uncompressed bytes.
    pub bytes_done: u64,
    /// Their uncompressed bytes.
    pub bytes_total: u64,
    /// Of the done chunks, those already cached when the job reached them.
    pub chunks_cached: u64,
    /// Chunks that could not be warmed.
    pub errors: u64,
    /// The last of those errors.
    pub last_error: Option<String>,
    /// Bytes done per second since the job started.
    pub rate_bytes_per_second: f64,
    /// Seconds since it started (until it ended, once ended).
    pub elapsed_seconds: f64,
    /// Unix time of creation, in seconds.
    pub created: u64,
    /// The weight files it makes resident.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub weights: Vec<String>,
    /// Of those, how many are resident now.
    #[serde(default)]
    pub weights_resident: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
/// `POST /v1/mounts`.
pub struct MountRequest {
    /// A tag, an image id, or an unambiguous id prefix.
    pub image: String,
    /// A directory under the daemon's mount root: absolute, or relative to the root. It
    /// is created if missing; no component may be a symlink.
    pub mountpoint: String,
    #[serde(default)]
    /// Put an overlay with a fresh upper directory on top.
    pub writable: bool,
    /// Mount over a directory that has entries (refused by default: they would be
    /// hidden, and whatever relied on them would see the image instead).
    #[serde(default)]
    pub allow_non_empty: bool,
    /// `trace` (default): also start a prewarm of the image's start-up traces, if it has
    /// any, at the same moment as the mount; `none`: only what the container reads.
    #[serde(default)]
    pub prefetch: MountPrefetch,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
/// What a new mount warms at once.
pub enum MountPrefetch {
    #[default]
    /// The image's start-up traces (default).
    Trace,
    /// Nothing.
    None,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
/// A mount as the API shows it.
pub struct Mount {
    /// The mount's id.
    pub id: String,
    /// The image's id.
    pub image: String,
    /// Where it is mounted.
    pub mountpoint: String,
    /// Whether an overlay is on top.
    pub writable: bool,
    /// Where writes land (overlayfs upper directory), for writable mounts.
    pub upper: Option<String>,
    /// Unix time of creation, in seconds.
    pub created: u64,
    /// Bytes its reads returned.
    pub bytes_served: u64,
    /// Reads that failed.
    pub read_errors: u64,
    /// The prewarm job the mount started, if any.
    #[serde(default)]
    pub prefetch_job: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
/// An image of the store.
pub struct Image {
    /// Its id.
    pub id: String,
    /// Tags naming it.
    pub tags: Vec<String>,
    /// Its manifest's size.
    pub manifest_bytes: u64,
    /// Start-up traces pushed for it.
    pub traces: usize,
}

/// One cache tier.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Tier {
    /// Bytes held.
    pub bytes: u64,
    /// Its bound.
    pub capacity: u64,
    /// Chunks held.
    pub entries: usize,
    /// Lookups it served.
    pub hits: u64,
    /// Lookups it could not serve.
    pub misses: u64,
    /// hits / (hits + misses); null before any lookup.
    pub hit_ratio: Option<f64>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
/// What was fetched from the store.
pub struct StoreUsage {
    /// Chunks fetched and verified.
    pub fetched_chunks: u64,
    /// Their uncompressed bytes.
    pub fetched_bytes: u64,
    /// Of those, chunks a prefetch asked for.
    pub prefetched_chunks: u64,
    /// Their uncompressed bytes.
    pub prefetched_bytes: u64,
    /// Chunks the store returned that failed verification (never served).
    pub integrity_failures: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
/// `GET /v1/cache`.
pub struct Cache {
    /// The memory tier.
    pub memory: Tier,
    /// The disk tier.
    pub disk: Tier,
    /// Fetches from the store.
    pub store: StoreUsage,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
/// `GET /healthz`.
pub struct Health {
    /// `ok`.
    pub status: String,
    /// The daemon's version.
    pub version: String,
    /// Seconds since it started.
    pub uptime_seconds: f64,
}

/// Stable error codes: clients may match on these; messages may change.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// The request could not be parsed (400).
    BadRequest,
    /// No token, or a wrong one (401).
    Unauthorized,
    /// The caller is known but may not do this: a token without the scope, a local user
    /// outside the daemon's group (403).
    Forbidden,
    /// No such image, job, mount or path (404).
    NotFound,
    /// The route exists, the method does not (405).
    MethodNotAllowed,
    /// The body is over the limit (413).
    PayloadTooLarge,
    /// The body is not JSON (415).
    UnsupportedMediaType,
    /// A field is invalid (422).
    InvalidArgument,
    /// A trace prewarm of an image without traces (422).
    NoTrace,
    /// The mount point is in use (409).
    Conflict,
    /// Too many jobs or mounts (429).
    TooManyRequests,
    /// The object store failed (503).
    StoreUnavailable,
    /// A bug or an unexpected failure (500).
    Internal,
}

impl ErrorCode {
    /// Every code, for tests and documentation.
    pub const ALL: [ErrorCode; 13] = [
        ErrorCode::BadRequest,
        ErrorCode::Unauthorized,
        ErrorCode::Forbidden,
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

    /// The HTTP status the code comes with.
    pub fn status(self) -> u16 {
        match self {
            ErrorCode::BadRequest => 400,
            ErrorCode::Unauthorized => 401,
            ErrorCode::Forbidden => 403,
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
/// The inside of an error body.
pub struct ErrorDetail {
    /// The stable code.
    pub code: ErrorCode,
    /// A message for people (may change).
    pub message: String,
}

/// Every error response: `{"error": {"code": ..., "message": ...}}`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ErrorBody {
    /// The error.
    pub error: ErrorDetail,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
/// `POST /v1/containers`: a container the daemon starts and owns (`thaw run --detach`).
/// Needs the `admin` scope: a container may bind host paths.
pub struct ContainerRequest {
    /// A tag, an image id, or an unambiguous id prefix.
    pub image: String,
    /// Replaces the image's Cmd when not empty.
    #[serde(default)]
    pub command: Vec<String>,
    /// `KEY=VALUE`, overriding the image's.
    #[serde(default)]
    pub env: Vec<String>,
    /// The working directory.
    #[serde(default)]
    pub workdir: Option<String>,
    /// `USER[:GROUP]`.
    #[serde(default)]
    pub user: Option<String>,
    /// Its name (and host name); unique among the daemon's containers.
    #[serde(default)]
    pub name: Option<String>,
    /// `runc` (default) or `crun`.
    #[serde(default)]
    pub runtime: Option<String>,
    /// Run catatonit as PID 1.
    #[serde(default)]
    pub init: bool,
    /// Host paths to bind: `SRC:DST[:ro]`, as on the node.
    #[serde(default)]
    pub mounts: Vec<String>,
    /// Use the host's network (else a namespace with only loopback).
    #[serde(default)]
    pub host_network: bool,
    /// `/dev/shm`'s size in bytes.
    #[serde(default)]
    pub shm_size: Option<u64>,
    /// Memory limit in bytes.
    #[serde(default)]
    pub memory: Option<u64>,
    /// CPUs' worth of time.
    #[serde(default)]
    pub cpus: Option<f64>,
    /// Most processes and threads.
    #[serde(default)]
    pub pids_limit: Option<i64>,
    /// `all` or a count of GPUs, from the node's CDI specifications.
    #[serde(default)]
    pub gpus: Option<String>,
    /// `default`, `unconfined`, or a profile file on the node.
    #[serde(default)]
    pub seccomp: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
/// A container the daemon owns.
pub struct Container {
    /// Its id.
    pub id: String,
    /// Its name.
    pub name: String,
    /// The image's id.
    pub image: String,
    /// `runc` or `crun`.
    pub runtime: String,
    /// `running` or `exited`.
    pub state: String,
    /// Its init's host pid while it runs.
    pub pid: Option<u32>,
    /// Its exit code (128+N for signal N) once it has exited.
    pub exit_code: Option<i32>,
    /// Unix time of creation, in seconds.
    pub created: u64,
    /// Seconds from the request to the container's start (mount, bundle, create, start).
    pub start_seconds: f64,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
/// `POST /v1/containers/{id}/stop`.
pub struct StopRequest {
    /// Seconds between the image's stop signal (SIGTERM unless it says) and SIGKILL.
    #[serde(default)]
    pub timeout_seconds: Option<u64>,
}
