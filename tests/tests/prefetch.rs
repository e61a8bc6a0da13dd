//! Prefetch against a throttled store: on-demand reads overtake a long prefetch queue,
//! prefetches can be cancelled, and a reader waiting on a prefetched chunk promotes it.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "tests: a failed step panics with its message"
)]

use bytes::Bytes;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Duration;
use thaw_core::ChunkId;
use thaw_store::blob::wrap::{ThrottleConfig, ThrottledStore};
use thaw_store::{
    BlobStore, ChunkReader, ObjectStoreBackend, PackStore, PackWriter, PrefetchProgress,
    ReaderConfig, SchedulerConfig, WriterConfig,
};
use thaw_tests::pseudo_random;
use tokio_util::sync::CancellationToken;

const CHUNKS: usize = 120;
const CHUNK: usize = 64 * 1024;

/// A memory store holding `CHUNKS` incompressible chunks, one pack each so that every
/// chunk costs its own GET; returns the store and the chunk ids in write order.
async fn one_chunk_per_pack() -> (Arc<dyn BlobStore>, Vec<ChunkId>) {
    let store: Arc<dyn BlobStore> = Arc::new(ObjectStoreBackend::memory());
    let packs = PackStore::open(store.clone()).await.unwrap();
    let writer = PackWriter::new(
        packs,
        WriterConfig {
            target_pack_size: 1,
            threads: 1,
            ..Default::default()
        },
    );
    let (writer, ids) = tokio::task::spawn_blocking(move || {
        let ids: Vec<ChunkId> = (0..CHUNKS)
            .map(|i| {
                let data = Bytes::from(pseudo_random(CHUNK, 1000 + i as u64));
                let id = ChunkId::of(&data);
                writer.add(id, data).unwrap();
                id
            })
            .collect();
        (writer, ids)
    })
    .await
    .unwrap();
    writer.finish().await.unwrap();
    (store, ids)
}

/// A reader over the store behind a 20 ms link, prefetching 2 GETs at a time.
async fn throttled_reader(store: Arc<dyn BlobStore>, disk: &std::path::Path) -> Arc<ChunkReader> {
    let link = ThrottleConfig::parse("20,1000").unwrap();
    let remote: Arc<dyn BlobStore> = Arc::new(ThrottledStore::new(store, link));
    let packs = PackStore::open(remote).await.unwrap();
    ChunkReader::new(
        packs,
        ReaderConfig {
            memory_bytes: 1 << 30,
            disk: Some((disk.to_path_buf(), 1 << 30)),
            fetch_around: thaw_store::FetchAround::Fixed(0),
            scheduler: SchedulerConfig {
                max_in_flight: 64,
                prefetch_in_flight: 2,
                prefetch_bandwidth: None,
            },
            whole_files: 0,
            copy_local_store: false,
        },
    )
    .unwrap()
}

/// A prefetch of `list` running in the background, with its progress and cancel token.
fn spawn_prefetch(
    reader: &Arc<ChunkReader>,
    list: Vec<ChunkId>,
) -> (
    Arc<PrefetchProgress>,
    CancellationToken,
    tokio::task::JoinHandle<bool>,
) {
    let progress = Arc::new(PrefetchProgress::default());
    let cancel = CancellationToken::new();
    let job = {
        let (reader, progress, cancel) = (reader.clone(), progress.clone(), cancel.clone());
        tokio::spawn(async move { reader.prefetch(&list, &progress, &cancel).await })
    };
    (progress, cancel, job)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_on_demand_read_overtakes_a_long_prefetch() {
    let (store, ids) = one_chunk_per_pack().await;
    let tmp = tempfile::tempdir().unwrap();
    let reader = throttled_reader(store, tmp.path()).await;
    // Prefetch all but the last chunk: 119 GETs of 20 ms, two at a time, about 1.2 s.
    let (progress, _cancel, job) = spawn_prefetch(&reader, ids[..CHUNKS - 1].to_vec());
    while progress.done_chunks.load(Relaxed) < 10 {
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let before = progress.done_chunks.load(Relaxed);
    let want = ids[CHUNKS - 1];
    let data = reader.read(want).await.unwrap();
    let after = progress.done_chunks.load(Relaxed);
    assert_eq!(ChunkId::of(&data), want);
    // While the read ran, the prefetch could finish only the GETs it had in flight plus
    // about one more round; the read did not wait for the queue to drain.
    assert!(
        after - before <= 8,
        "{} prefetch chunks finished during one on-demand read",
        after - before
    );
    assert!(
        after < (CHUNKS as u64 - 1) / 2,
        "prefetch had done {after} chunks"
    );
    let s = reader.scheduler_stats();
    assert_eq!(s.on_demand_fetches, 1);
    assert!(s.active_prefetch <= 2, "prefetch cap exceeded: {s:?}");
    assert!(job.await.unwrap(), "the prefetch runs to completion");
    assert_eq!(progress.done_chunks.load(Relaxed), CHUNKS as u64 - 1);
    assert_eq!(progress.errors.load(Relaxed), 0);
    assert_eq!(
        reader.stats().prefetched_chunks,
        CHUNKS as u64 - 1,
        "every prefetched chunk was fetched once"
    );
    // Everything is now on disk: reading it all fetches nothing more.
    let fetched = reader.stats().fetched_chunks;
    reader.read_many(&ids).await.unwrap();
    assert_eq!(reader.stats().fetched_chunks, fetched);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancelled_prefetch_stops_soon() {
    let (store, ids) = one_chunk_per_pack().await;
    let tmp = tempfile::tempdir().unwrap();
    let reader = throttled_reader(store, tmp.path()).await;
    let (progress, cancel, job) = spawn_prefetch(&reader, ids);
    while progress.done_chunks.load(Relaxed) < 4 {
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    cancel.cancel();
    assert!(!job.await.unwrap(), "a cancelled prefetch says so");
    // Fetches already granted finish; nothing new starts.
    let fetcher = reader.fetcher().clone();
    thaw_tests::eventually("the granted fetches to finish", || {
        fetcher.flights_len() == 0
    })
    .await;
    let settled = reader.stats().prefetched_chunks;
    assert!(settled < 20, "{settled} chunks fetched after cancelling");
    tokio::task::yield_now().await;
    assert_eq!(
        reader.stats().prefetched_chunks,
        settled,
        "nothing new started"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reader_joining_a_paced_prefetch_promotes_it() {
    let (store, ids) = one_chunk_per_pack().await;
    let tmp = tempfile::tempdir().unwrap();
    let reader = throttled_reader(store, tmp.path()).await;
    // 64 KiB/s for prefetch: after the first chunk, each waits about a second.
    reader.configure_scheduler(SchedulerConfig {
        max_in_flight: 64,
        prefetch_in_flight: 2,
        prefetch_bandwidth: Some(CHUNK as u64),
    });
    let (progress, cancel, job) = spawn_prefetch(&reader, ids.clone());
    while reader.scheduler_stats().active_prefetch < 2 {
        tokio::task::yield_now().await;
    }
    // ids[1] holds a prefetch slot but waits for bandwidth; a reader needs it now.
    let data = reader.read(ids[1]).await.unwrap();
    assert_eq!(ChunkId::of(&data), ids[1]);
    let done = progress.done_chunks.load(Relaxed);
    assert!(done <= 2, "the read waited for {done} paced prefetches");
    let s = reader.scheduler_stats();
    assert_eq!(s.promoted, 1, "{s:?}");
    let r = reader.stats();
    assert_eq!(r.joined_fetches, 1, "the reader joined the prefetch");
    cancel.cancel();
    assert!(!job.await.unwrap());
}

/// [`one_chunk_per_pack`] copied into a local-directory store in a fresh directory.
async fn local_chunks() -> (tempfile::TempDir, Arc<dyn BlobStore>, Vec<ChunkId>) {
    let tmp = tempfile::tempdir().unwrap();
    let (memory_store, ids) = one_chunk_per_pack().await;
    let local: Arc<dyn BlobStore> =
        Arc::new(ObjectStoreBackend::local(&tmp.path().join("store")).unwrap());
    for o in memory_store.list("").await.unwrap() {
        let bytes = memory_store.get(&o.key).await.unwrap();
        local.put(&o.key, bytes).await.unwrap();
    }
    (tmp, local, ids)
}

/// A local-directory store on the disk cache's filesystem, read in place, with a memory
/// cache of `memory_bytes`: prefetches all its chunks; returns the reader (and its
/// directory).
async fn local_prefetch(memory_bytes: u64) -> (tempfile::TempDir, Arc<ChunkReader>) {
    let (tmp, local, ids) = local_chunks().await;
    let reader = ChunkReader::new(
        PackStore::open(local).await.unwrap(),
        ReaderConfig {
            memory_bytes,
            disk: Some((tmp.path().join("cache"), 1 << 30)),
            ..Default::default()
        },
    )
    .unwrap();
    assert!(reader.reads_store_in_place());
    let progress = PrefetchProgress::default();
    assert!(
        reader
            .prefetch(&ids, &progress, &CancellationToken::new())
            .await
    );
    assert_eq!(progress.done_chunks.load(Relaxed), CHUNKS as u64);
    assert!(ids.iter().all(|id| reader.is_cached(id)));
    (tmp, reader)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_local_stores_prefetch_waits_in_memory_while_it_has_room() {
    // 120 chunks of 64 KiB (7.5 MiB): with 64 MiB of memory, none is also written to
    // the disk cache (a new file each); with 4 MiB, most must wait on disk.
    let (_tmp, roomy) = local_prefetch(64 << 20).await;
    assert_eq!(roomy.disk().unwrap().len(), 0);
    let (_tmp, tight) = local_prefetch(4 << 20).await;
    thaw_tests::eventually("most chunks on disk", || {
        tight.disk().unwrap().len() >= CHUNKS / 2
    })
    .await;
}

/// Prefetches every chunk of `store` through 2 MiB of memory and no disk cache; returns
/// how many chunks the prefetch took on, and the reader.
async fn memory_only_prefetch(
    store: Arc<dyn BlobStore>,
    ids: &[ChunkId],
) -> (u64, Arc<ChunkReader>) {
    let reader = ChunkReader::new(
        PackStore::open(store).await.unwrap(),
        ReaderConfig {
            memory_bytes: 2 << 20,
            ..Default::default()
        },
    )
    .unwrap();
    let progress = PrefetchProgress::default();
    assert!(
        reader
            .prefetch(ids, &progress, &CancellationToken::new())
            .await
    );
    assert_eq!(
        reader.stats().prefetched_chunks,
        progress.total_chunks.load(Relaxed)
    );
    (progress.total_chunks.load(Relaxed), reader)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_disk_cache_a_local_stores_prefetch_stops_at_half_of_memory() {
    // 120 chunks of 64 KiB through 2 MiB of memory: from a local store, chunks past the
    // first megabyte would evict earlier ones and be decoded again.
    let (_tmp, local, ids) = local_chunks().await;
    let (taken, reader) = memory_only_prefetch(local, &ids).await;
    let half = (1 << 20) / CHUNK as u64;
    assert_eq!(taken, half);
    assert!(ids[..half as usize].iter().all(|id| reader.is_cached(id)));
    assert!(!reader.is_cached(&ids[half as usize]));
    // From a store that is not a local directory, fetching ahead pays even so.
    let (remote, ids) = one_chunk_per_pack().await;
    let (taken, _) = memory_only_prefetch(remote, &ids).await;
    assert_eq!(taken, CHUNKS as u64);
}
