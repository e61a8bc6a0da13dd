//! The fetch policy over real stores: it measures a local store and a throttled one (the
//! stand-in for a distant object store) from the GETs reads make, and fetches around a
//! miss only as far as the measured latency pays for; neighbours fetched around never
//! evict what readers asked for.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "tests: a failed step panics with its message"
)]

use std::sync::Arc;
use std::time::Duration;
use thaw_core::ChunkId;
use thaw_store::blob::wrap::{ThrottleConfig, ThrottledStore};
use thaw_store::pack::store::PlanOptions;
use thaw_store::{
    BlobStore, ChunkReader, FetchAround, ObjectStoreBackend, ReaderConfig, Repository,
};
use thaw_tests::built_small_store;

/// Every chunk of the image, in pack order (the order fetch-around follows).
async fn chunks_in_pack_order(repo: &Repository, image: &thaw_core::ImageId) -> Vec<ChunkId> {
    let m = repo.get_manifest(image).await.unwrap();
    let all: Vec<ChunkId> = m.chunks.iter().map(|c| c.id).collect();
    let everything = PlanOptions {
        fetch_around: u64::MAX,
        max_run: u64::MAX,
    };
    let mut order = Vec::new();
    for run in repo.packs().plan(&all, everything, |_| false).runs {
        order.extend(run.entries.iter().map(|e| e.id));
    }
    assert_eq!(order.len(), all.len(), "one pack entry per chunk");
    order
}

/// Reads every chunk last to first, so each read is a miss whose followers are cached
/// already: one GET per chunk, of varied sizes. Returns the reader's stats after.
async fn read_backwards(
    store: Arc<dyn BlobStore>,
    image: &thaw_core::ImageId,
) -> thaw_store::ReaderStats {
    let repo = Repository::open(store).await.unwrap();
    let order = chunks_in_pack_order(&repo, image).await;
    let reader = ChunkReader::new(
        repo.packs().clone(),
        ReaderConfig {
            fetch_around: FetchAround::Auto,
            ..Default::default()
        },
    )
    .unwrap();
    assert_eq!(
        reader.stats().fetch_around_bytes,
        256 << 10,
        "unmeasured: a guess"
    );
    for id in order.iter().rev() {
        assert_eq!(ChunkId::of(&reader.read(*id).await.unwrap()), *id);
    }
    reader.stats()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fetch_around_follows_the_measured_store() {
    let (tmp, image) = built_small_store().await;
    let local: Arc<dyn BlobStore> =
        Arc::new(ObjectStoreBackend::local(&tmp.path().join("store")).unwrap());
    let near = read_backwards(local.clone(), &image).await;
    let distant: Arc<dyn BlobStore> = Arc::new(ThrottledStore::new(
        local,
        ThrottleConfig {
            latency: Duration::from_millis(20),
            bandwidth: Some(125_000_000),
        },
    ));
    let far = read_backwards(distant, &image).await;
    assert!(near.fetched_chunks > 20 && far.fetched_chunks == near.fetched_chunks);
    assert!(
        near.store_bytes_per_second > 0 && near.store_latency_us < 20_000,
        "measured, and near: {near:?}"
    );
    assert!(
        (19_000..60_000).contains(&far.store_latency_us),
        "the throttle's 20 ms: {far:?}"
    );
    assert!(far.decode_bytes_per_second > 0, "{far:?}");
    // 20 ms at 125 MB/s pays for about a megabyte of neighbours; a local store for
    // (much) less.
    assert!(far.fetch_around_bytes >= 256 << 10, "{far:?}");
    assert!(
        near.fetch_around_bytes < far.fetch_around_bytes,
        "{near:?} / {far:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn neighbours_fetched_around_do_not_evict_what_was_read() {
    let (tmp, image) = built_small_store().await;
    let local: Arc<dyn BlobStore> =
        Arc::new(ObjectStoreBackend::local(&tmp.path().join("store")).unwrap());
    let repo = Repository::open(local).await.unwrap();
    let order = chunks_in_pack_order(&repo, &image).await;
    let reader = ChunkReader::new(
        repo.packs().clone(),
        ReaderConfig {
            memory_bytes: 64 << 10,
            disk: Some((tmp.path().join("cache"), 1 << 30)),
            fetch_around: FetchAround::Fixed(4 << 20),
            // The disk cache keeps what memory cannot, as it would for a remote store.
            copy_local_store: true,
            ..Default::default()
        },
    )
    .unwrap();
    // The pack holds a 360 kB chunk (larger than memory), twenty files of about 10 kB,
    // then three large chunks. The working set: the last small chunk, read first.
    let mut last = None;
    for id in order.iter().rev() {
        if reader.read(*id).await.unwrap().len() <= 64 << 10 {
            last = Some(*id);
            break;
        }
    }
    let last = last.expect("a small chunk");
    assert!(reader.memory_get(&last).is_some());
    // The first small file brings its neighbours: far more than memory holds.
    let asked = order[1];
    let before = reader.stats().fetched_chunks;
    reader.read(asked).await.unwrap();
    assert!(reader.stats().fetched_around > 5, "{:?}", reader.stats());
    // They are decoded after the reader has its bytes; wait for them to land.
    thaw_tests::eventually("the neighbours decoded", || {
        let s = reader.stats();
        s.fetched_chunks >= before + 1 + s.fetched_around
    })
    .await;
    assert!(reader.memory_get(&asked).is_some(), "what was asked stays");
    assert!(
        reader.memory_get(&last).is_some(),
        "neighbours filled free memory only: {:?}",
        reader.cache_usage()
    );
    assert!(reader.cache_usage().memory_bytes <= 64 << 10);
}
