//! Backends: the `object_store` crate's stores (local directory, memory, S3, GCS, Azure)
//! behind [`BlobStore`], and parsing of `--store` locations.

use crate::blob::open_files::OpenFiles;
use crate::blob::{BlobStore, ObjectInfo};
use crate::error::StoreError;
use async_trait::async_trait;
use bytes::Bytes;
use futures::TryStreamExt;
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt};
use std::ops::Range;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

/// Adapts any `object_store::ObjectStore` to [`BlobStore`].
#[derive(Debug)]
pub struct ObjectStoreBackend {
    inner: Arc<dyn ObjectStore>,
    description: String,
    /// The directory, for a local-directory store.
    local_dir: Option<std::path::PathBuf>,
    /// For a local-directory store: its range reads, through files kept open.
    local: Option<LocalFiles>,
}

/// A local-directory store's own range reads: object_store's local store opens the file
/// for every read, which costs an `open` and a `close` and hides a run of reads along a
/// pack from the kernel's readahead.
#[derive(Debug)]
struct LocalFiles {
    fs: Arc<object_store::local::LocalFileSystem>,
    open: Arc<OpenFiles>,
}

impl LocalFiles {
    fn path(&self, key: &str) -> Result<std::path::PathBuf, StoreError> {
        self.fs
            .path_to_filesystem(&path(key)?)
            .map_err(|e| map_err("get_range", key, e))
    }

    async fn get_range(&self, key: &str, range: Range<u64>) -> Result<Bytes, StoreError> {
        let file = self.path(key)?;
        let open = Arc::clone(&self.open);
        let want = range.end.saturating_sub(range.start);
        let read = tokio::task::spawn_blocking(move || open.read_range(&file, range))
            .await
            .unwrap_or_else(|e| Err(std::io::Error::other(e)));
        let key = key.to_string();
        match read {
            Ok(bytes) => Ok(bytes),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Err(StoreError::NotFound { key }),
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => Err(StoreError::ShortRead {
                op: "get_range",
                key,
                want,
                got: 0,
            }),
            Err(e) => Err(StoreError::Transient {
                op: "get_range",
                key,
                source: Box::new(e),
            }),
        }
    }

    /// The object of `key` was written or deleted: its open file, if any, is stale.
    fn forget(&self, key: &str) {
        if let Ok(file) = self.path(key) {
            self.open.forget(&file);
        }
    }
}

impl ObjectStoreBackend {
    /// Adapts an `object_store` store; `description` names it in messages.
    pub fn new(inner: Arc<dyn ObjectStore>, description: impl Into<String>) -> Self {
        ObjectStoreBackend {
            inner,
            description: description.into(),
            local_dir: None,
            local: None,
        }
    }

    /// An in-memory store (tests, benchmarks).
    pub fn memory() -> Self {
        Self::new(Arc::new(object_store::memory::InMemory::new()), "memory://")
    }

    /// A directory on the local filesystem, created if missing.
    pub fn local(dir: &std::path::Path) -> Result<Self, StoreError> {
        let bad = |reason: String| StoreError::BadLocation {
            spec: dir.display().to_string(),
            reason,
        };
        std::fs::create_dir_all(dir).map_err(|e| bad(e.to_string()))?;
        let dir = dir.canonicalize().map_err(|e| bad(e.to_string()))?;
        let fs = object_store::local::LocalFileSystem::new_with_prefix(&dir)
            .map_err(|e| bad(e.to_string()))?;
        let fs = Arc::new(fs);
        Ok(ObjectStoreBackend {
            local_dir: Some(dir.clone()),
            local: Some(LocalFiles {
                fs: Arc::clone(&fs),
                open: Arc::new(OpenFiles::default()),
            }),
            ..Self::new(fs, format!("file://{}", dir.display()))
        })
    }

    /// The object of `key` is being written or deleted: a local store's open file of it
    /// is stale.
    fn forget(&self, key: &str) {
        if let Some(local) = &self.local {
            local.forget(key);
        }
    }
}

fn path(key: &str) -> Result<Path, StoreError> {
    Path::parse(key).map_err(|e| StoreError::Permanent {
        op: "parse key",
        key: key.to_string(),
        source: Box::new(e),
    })
}

fn map_err(op: &'static str, key: &str, e: object_store::Error) -> StoreError {
    use object_store::Error as E;
    let key = key.to_string();
    match e {
        E::NotFound { .. } => StoreError::NotFound { key },
        E::InvalidPath { .. }
        | E::NotSupported { .. }
        | E::AlreadyExists { .. }
        | E::Precondition { .. }
        | E::NotModified { .. }
        | E::NotImplemented { .. }
        | E::PermissionDenied { .. }
        | E::Unauthenticated { .. }
        | E::UnknownConfigurationKey { .. } => StoreError::Permanent {
            op,
            key,
            source: Box::new(e),
        },
        other => StoreError::Transient {
            op,
            key,
            source: Box::new(other),
        },
    }
}

fn info(meta: object_store::ObjectMeta, strip: &str) -> ObjectInfo {
    let secs = meta.last_modified.timestamp();
    let nanos = meta.last_modified.timestamp_subsec_nanos();
    let last_modified = if secs >= 0 {
        SystemTime::UNIX_EPOCH + Duration::new(secs as u64, nanos)
    } else {
        SystemTime::UNIX_EPOCH
    };
    let key = meta.location.to_string();
    let key = key.strip_prefix(strip).map(str::to_string).unwrap_or(key);
    ObjectInfo {
        key,
        size: meta.size,
        last_modified,
    }
}

#[async_trait]
impl BlobStore for ObjectStoreBackend {
    async fn put(&self, key: &str, data: Bytes) -> Result<(), StoreError> {
        self.forget(key);
        self.inner
            .put(&path(key)?, data.into())
            .await
            .map_err(|e| map_err("put", key, e))?;
        Ok(())
    }

    async fn put_if_absent(&self, key: &str, data: Bytes) -> Result<bool, StoreError> {
        self.forget(key);
        let options = object_store::PutOptions::from(object_store::PutMode::Create);
        match self.inner.put_opts(&path(key)?, data.into(), options).await {
            Ok(_) => Ok(true),
            Err(object_store::Error::AlreadyExists { .. }) => Ok(false),
            Err(e) => Err(map_err("put_if_absent", key, e)),
        }
    }

    async fn get(&self, key: &str) -> Result<Bytes, StoreError> {
        let r = self
            .inner
            .get(&path(key)?)
            .await
            .map_err(|e| map_err("get", key, e))?;
        r.bytes().await.map_err(|e| map_err("get", key, e))
    }

    async fn get_range(&self, key: &str, range: Range<u64>) -> Result<Bytes, StoreError> {
        let want = range.end.saturating_sub(range.start);
        if want == 0 {
            return Ok(Bytes::new());
        }
        if let Some(local) = &self.local {
            return local.get_range(key, range).await;
        }
        let b = self
            .inner
            .get_range(&path(key)?, range)
            .await
            .map_err(|e| map_err("get_range", key, e))?;
        if b.len() as u64 != want {
            return Err(StoreError::ShortRead {
                op: "get_range",
                key: key.to_string(),
                want,
                got: b.len() as u64,
            });
        }
        Ok(b)
    }

    async fn head(&self, key: &str) -> Result<ObjectInfo, StoreError> {
        let m = self
            .inner
            .head(&path(key)?)
            .await
            .map_err(|e| map_err("head", key, e))?;
        Ok(info(m, ""))
    }

    async fn list(&self, prefix: &str) -> Result<Vec<ObjectInfo>, StoreError> {
        let p = if prefix.is_empty() {
            None
        } else {
            Some(path(prefix)?)
        };
        let mut out: Vec<ObjectInfo> = self
            .inner
            .list(p.as_ref())
            .map_ok(|m| info(m, ""))
            .try_collect()
            .await
            .map_err(|e| map_err("list", prefix, e))?;
        out.sort_by(|a, b| a.key.cmp(&b.key));
        Ok(out)
    }

    async fn delete(&self, key: &str) -> Result<(), StoreError> {
        self.forget(key);
        match self.inner.delete(&path(key)?).await {
            Ok(()) => Ok(()),
            Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(map_err("delete", key, e)),
        }
    }

    fn describe(&self) -> String {
        self.description.clone()
    }

    fn local_dir(&self) -> Option<std::path::PathBuf> {
        self.local_dir.clone()
    }
}

/// object_store's own retries, turned off: thaw retries every request in one layer,
/// [`crate::wrap::RetryStore`] (backoff, per-attempt timeout, overall deadline). Two layers
/// would compound: up to 10 internal retries for each of RetryStore's attempts.
fn single_attempt() -> object_store::RetryConfig {
    object_store::RetryConfig {
        max_retries: 0,
        ..Default::default()
    }
}

/// Opens a store from a `--store` location.
///
/// * a plain path or `file:///path`: a local directory (created if missing);
/// * `memory://`: a fresh in-memory store;
/// * `s3://bucket/prefix`: S3, configured from the `AWS_*` environment variables
///   (`AWS_ENDPOINT`, `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, `AWS_REGION`, ...);
///   plain http is allowed when the endpoint is on the loopback interface;
/// * `gs://bucket/prefix` and `az://container/prefix`: Google Cloud Storage and Azure,
///   configured from their usual environment variables.
pub fn open_store(spec: &str) -> Result<Arc<dyn BlobStore>, StoreError> {
    let bad = |reason: String| StoreError::BadLocation {
        spec: spec.to_string(),
        reason,
    };
    if spec == "memory://" {
        return Ok(Arc::new(ObjectStoreBackend::memory()));
    }
    if !spec.contains("://") {
        return Ok(Arc::new(ObjectStoreBackend::local(std::path::Path::new(
            spec,
        ))?));
    }
    let url = url::Url::parse(spec).map_err(|e| bad(e.to_string()))?;
    let prefix = url.path().trim_matches('/').to_string();
    let store: Arc<dyn ObjectStore> = match url.scheme() {
        "file" => {
            let p = url
                .to_file_path()
                .map_err(|()| bad("not a local path".into()))?;
            return Ok(Arc::new(ObjectStoreBackend::local(&p)?));
        }
        "s3" => {
            let mut b = object_store::aws::AmazonS3Builder::from_env()
                .with_url(spec)
                .with_retry(single_attempt());
            if std::env::var_os("AWS_CONDITIONAL_PUT").is_none() {
                // S3's native create-if-absent (If-None-Match: *), which gc's deletion
                // marks rely on; AWS_CONDITIONAL_PUT chooses another for S3-like stores.
                b = b.with_conditional_put(object_store::aws::S3ConditionalPut::ETagMatch);
            }
            if let Ok(endpoint) =
                std::env::var("AWS_ENDPOINT").or_else(|_| std::env::var("AWS_ENDPOINT_URL"))
            {
                let loopback = endpoint.starts_with("http://127.")
                    || endpoint.starts_with("http://localhost")
                    || endpoint.starts_with("http://[::1]");
                b = b.with_endpoint(endpoint.clone()).with_allow_http(loopback);
            }
            Arc::new(b.build().map_err(|e| bad(e.to_string()))?)
        }
        "gs" => Arc::new(
            object_store::gcp::GoogleCloudStorageBuilder::from_env()
                .with_url(spec)
                .with_retry(single_attempt())
                .build()
                .map_err(|e| bad(e.to_string()))?,
        ),
        "az" | "azure" | "abfs" | "abfss" => Arc::new(
            object_store::azure::MicrosoftAzureBuilder::from_env()
                .with_url(spec)
                .with_retry(single_attempt())
                .build()
                .map_err(|e| bad(e.to_string()))?,
        ),
        other => {
            return Err(bad(format!(
                "unknown scheme {other:?} (use a path, file://, memory://, s3://, gs:// or az://)"
            )))
        }
    };
    let store: Arc<dyn ObjectStore> = if prefix.is_empty() {
        store
    } else {
        let p = Path::parse(&prefix).map_err(|e| bad(e.to_string()))?;
        Arc::new(object_store::prefix::PrefixStore::new(store, p))
    };
    Ok(Arc::new(ObjectStoreBackend::new(store, spec.to_string())))
}
