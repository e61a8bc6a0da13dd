//! Builds and gc sharing one store: a build that gc races ends with a whole image or a
//! clean failure, never a manifest that points at deleted packs; two builds at once both
//! succeed. On a local store here and on S3 (moto) under `scripts/test.sh`.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "tests: a failed step panics with its message"
)]

use async_trait::async_trait;
use bytes::Bytes;
use futures::future::BoxFuture;
use std::ops::Range;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering::SeqCst};
use std::sync::Arc;
use std::time::Duration;
use thaw_core::ImageId;
use thaw_image::{build, export, BuildError, BuildOptions, BuildReport, BuildSource};
use thaw_store::blob::wrap::{FaultConfig, FaultyStore, RetryConfig, RetryStore};
use thaw_store::error::StoreError;
use thaw_store::{
    open_store, BlobStore, ChunkReader, ObjectInfo, ReaderConfig, RepoError, Repository,
};
use thaw_tests::{pseudo_random, skip, treediff};

/// Runs a hook, once, just before the first manifest is written: the moment between a
/// build's deduplication and its commit, where gc can take packs away.
struct BeforeManifest {
    inner: Arc<dyn BlobStore>,
    fired: AtomicBool,
    #[allow(clippy::type_complexity, reason = "a test hook")]
    hook: Box<dyn Fn() -> BoxFuture<'static, ()> + Send + Sync>,
}

impl std::fmt::Debug for BeforeManifest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BeforeManifest")
            .field("inner", &self.inner)
            .finish_non_exhaustive()
    }
}

#[async_trait]
impl BlobStore for BeforeManifest {
    async fn put(&self, key: &str, data: Bytes) -> Result<(), StoreError> {
        if key.starts_with("images/") && !self.fired.swap(true, SeqCst) {
            (self.hook)().await;
        }
        self.inner.put(key, data).await
    }
    async fn put_if_absent(&self, key: &str, data: Bytes) -> Result<bool, StoreError> {
        self.inner.put_if_absent(key, data).await
    }
    async fn get(&self, key: &str) -> Result<Bytes, StoreError> {
        self.inner.get(key).await
    }
    async fn get_range(&self, key: &str, range: Range<u64>) -> Result<Bytes, StoreError> {
        self.inner.get_range(key, range).await
    }
    async fn head(&self, key: &str) -> Result<ObjectInfo, StoreError> {
        self.inner.head(key).await
    }
    async fn list(&self, prefix: &str) -> Result<Vec<ObjectInfo>, StoreError> {
        self.inner.list(prefix).await
    }
    async fn delete(&self, key: &str) -> Result<(), StoreError> {
        self.inner.delete(key).await
    }
    fn describe(&self) -> String {
        self.inner.describe()
    }
}

/// Eight small files; `extra` adds a ninth, so a second build deduplicates the first
/// eight against the first build's packs.
fn tree(dir: &Path, seed: u64, extra: bool) {
    std::fs::create_dir_all(dir).unwrap();
    for i in 0..8 {
        std::fs::write(
            dir.join(format!("f{i}")),
            pseudo_random(40_000, seed * 100 + i),
        )
        .unwrap();
    }
    if extra {
        std::fs::write(dir.join("extra"), pseudo_random(50_000, seed * 100 + 99)).unwrap();
    }
}

async fn build_dir(repo: &Repository, dir: &Path) -> Result<BuildReport, BuildError> {
    build(
        repo,
        BuildSource::Directory(dir.to_path_buf()),
        BuildOptions::default(),
    )
    .await
}

/// Whether `image` exports, through a fresh repository, to exactly the tree at `src`.
async fn exports_exactly(store: &Arc<dyn BlobStore>, image: &ImageId, src: &Path) -> bool {
    let repo = Repository::open(store.clone()).await.unwrap();
    let Ok(m) = repo.get_manifest(image).await else {
        return false;
    };
    let out = tempfile::tempdir().unwrap();
    let dest = out.path().join("x");
    let reader = ChunkReader::new(repo.packs().clone(), ReaderConfig::default()).unwrap();
    export(&reader, &m, &dest).await.is_ok() && treediff::compare(src, &dest, &[]).is_empty()
}

/// A store holding one image built from `old` and then removed: its packs are garbage
/// that the next build of `new` (a superset) deduplicates against.
async fn store_with_garbage(store: &Arc<dyn BlobStore>, old: &Path) {
    let repo = Repository::open(store.clone()).await.unwrap();
    let a = build_dir(&repo, old).await.unwrap();
    repo.remove_image(&a.image).await.unwrap();
}

fn is_gc_conflict(e: &BuildError) -> bool {
    matches!(e, BuildError::Chunk(RepoError::GcConflict { .. }))
}

/// gc passes run between a build's deduplication and its commit: with one pass the old
/// packs are marked, with two they are deleted. Either way the build must fail cleanly
/// (no manifest) and the next build must export exactly.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gc_between_dedup_and_commit_fails_the_build_cleanly() {
    for passes in [1, 2] {
        let tmp = tempfile::tempdir().unwrap();
        let (old, new) = (tmp.path().join("old"), tmp.path().join("new"));
        tree(&old, 1, false);
        tree(&new, 1, true);
        let store: Arc<dyn BlobStore> =
            Arc::new(thaw_store::ObjectStoreBackend::local(&tmp.path().join("store")).unwrap());
        store_with_garbage(&store, &old).await;
        let gc_store = store.clone();
        let hooked = Arc::new(BeforeManifest {
            inner: store.clone(),
            fired: AtomicBool::new(false),
            hook: Box::new(move || {
                let s = gc_store.clone();
                Box::pin(async move {
                    let gc = Repository::open(s).await.unwrap();
                    for _ in 0..passes {
                        gc.gc(true, Duration::ZERO).await.unwrap();
                    }
                })
            }),
        });
        let repo = Repository::open(hooked).await.unwrap();
        let err = build_dir(&repo, &new).await.expect_err("gc took the packs");
        assert!(is_gc_conflict(&err), "{passes} pass(es): {err}");
        let repo = Repository::open(store.clone()).await.unwrap();
        assert!(
            repo.list_images().await.unwrap().is_empty(),
            "the manifest is withdrawn"
        );
        let again = build_dir(&repo, &new).await.unwrap();
        assert!(
            exports_exactly(&store, &again.image, &new).await,
            "{passes} pass(es)"
        );
    }
}

/// `store` as the build and the gc loop see it: with `faults`, 20% of requests fail
/// (transient) under the retry layer the CLI uses, so failures fall between any requests.
fn as_seen(store: &Arc<dyn BlobStore>, faults: bool, seed: u64) -> Arc<dyn BlobStore> {
    if !faults {
        return store.clone();
    }
    let config = FaultConfig {
        fail_rate: 0.2,
        seed,
        ..FaultConfig::default()
    };
    let faulty = Arc::new(FaultyStore::new(store.clone(), config));
    let retry = RetryConfig {
        initial_backoff: Duration::from_millis(1),
        max_backoff: Duration::from_millis(20),
        ..Default::default()
    };
    Arc::new(RetryStore::new(faulty, retry))
}

/// 20 rounds of a build that deduplicates against garbage while `gc --apply` (safety
/// period 0) loops. Each ends exporting exactly, also after two more gc passes, or fails
/// leaving no manifest: a clean GcConflict, or (with `faults`) a store error.
async fn builds_while_gc_loops(base: &str, faults: bool) {
    let (mut whole, mut conflicts) = (0, 0);
    for round in 0..20u64 {
        let tmp = tempfile::tempdir().unwrap();
        let (old, new) = (tmp.path().join("old"), tmp.path().join("new"));
        tree(&old, round, false);
        tree(&new, round, true);
        let store = open_store(&format!("{base}/round-{round}")).unwrap();
        store_with_garbage(&store, &old).await;
        let stop = Arc::new(AtomicBool::new(false));
        let gc_loop = tokio::spawn({
            let (store, stop) = (as_seen(&store, faults, round + 1000), stop.clone());
            async move {
                let gc = Repository::open(store).await.unwrap();
                while !stop.load(SeqCst) {
                    // A failed pass is harmless: it stops before or between whole steps.
                    let pass = gc.gc(true, Duration::ZERO).await;
                    assert!(faults || pass.is_ok(), "{pass:?}");
                }
            }
        });
        let result = match Repository::open(as_seen(&store, faults, round)).await {
            Ok(repo) => build_dir(&repo, &new).await,
            Err(e) => Err(BuildError::Chunk(e)),
        };
        stop.store(true, SeqCst);
        gc_loop.await.unwrap();
        match result {
            Ok(r) => {
                let gc = Repository::open(store.clone()).await.unwrap();
                gc.gc(true, Duration::ZERO).await.unwrap();
                gc.gc(true, Duration::ZERO).await.unwrap();
                assert!(
                    exports_exactly(&store, &r.image, &new).await,
                    "round {round}"
                );
                whole += 1;
            }
            Err(e) if is_gc_conflict(&e) || faults => {
                let repo = Repository::open(store.clone()).await.unwrap();
                assert!(
                    repo.list_images().await.unwrap().is_empty(),
                    "round {round}: {e}"
                );
                conflicts += 1;
            }
            Err(e) => panic!("round {round}: {e}"),
        }
    }
    eprintln!("builds racing gc (faults: {faults}): {whole} whole, {conflicts} clean failures");
    assert_eq!(whole + conflicts, 20);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn builds_racing_gc_on_a_local_store_end_whole_or_cleanly() {
    let tmp = tempfile::tempdir().unwrap();
    builds_while_gc_loops(tmp.path().to_str().unwrap(), false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn builds_racing_gc_on_s3_end_whole_or_cleanly() {
    let Ok(url) = std::env::var("THAW_TEST_S3_URL") else {
        return skip(
            "builds_racing_gc_on_s3_end_whole_or_cleanly",
            "THAW_TEST_S3_URL is not set (scripts/test.sh starts moto and sets it)",
        );
    };
    builds_while_gc_loops(
        &format!("{url}/gc-race-{:016x}", rand::random::<u64>()),
        false,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn builds_racing_gc_on_a_failing_s3_end_whole_or_cleanly() {
    let Ok(url) = std::env::var("THAW_TEST_S3_URL") else {
        return skip(
            "builds_racing_gc_on_a_failing_s3_end_whole_or_cleanly",
            "THAW_TEST_S3_URL is not set (scripts/test.sh starts moto and sets it)",
        );
    };
    let base = format!("{url}/gc-faults-{:016x}", rand::random::<u64>());
    builds_while_gc_loops(&base, true).await;
}

/// Two builds of different trees into one store at once, as from two machines.
async fn two_builds_at_once(base: &str) {
    let tmp = tempfile::tempdir().unwrap();
    let (a, b) = (tmp.path().join("a"), tmp.path().join("b"));
    tree(&a, 7, true);
    tree(&b, 8, true);
    // Some shared content, so both may write the same chunks.
    std::fs::write(b.join("shared"), pseudo_random(60_000, 700)).unwrap();
    std::fs::write(a.join("shared"), pseudo_random(60_000, 700)).unwrap();
    let store = open_store(base).unwrap();
    let (ra, rb) = (
        Repository::open(store.clone()).await.unwrap(),
        Repository::open(store.clone()).await.unwrap(),
    );
    let (x, y) = tokio::join!(build_dir(&ra, &a), build_dir(&rb, &b));
    let (x, y) = (x.unwrap(), y.unwrap());
    assert!(exports_exactly(&store, &x.image, &a).await);
    assert!(exports_exactly(&store, &y.image, &b).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_builds_at_once_both_export_exactly() {
    let tmp = tempfile::tempdir().unwrap();
    two_builds_at_once(tmp.path().join("store").to_str().unwrap()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_builds_at_once_on_s3_both_export_exactly() {
    let Ok(url) = std::env::var("THAW_TEST_S3_URL") else {
        return skip(
            "two_builds_at_once_on_s3_both_export_exactly",
            "THAW_TEST_S3_URL is not set (scripts/test.sh starts moto and sets it)",
        );
    };
    two_builds_at_once(&format!("{url}/two-builds-{:016x}", rand::random::<u64>())).await;
}
