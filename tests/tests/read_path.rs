//! The read path's failure modes through the real reader over a real store: a fetch that
//! panics, many readers of one chunk, and a pack that is gone.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "tests: a failed step panics with its message"
)]

use std::sync::Arc;
use thaw_core::ChunkId;
use thaw_store::blob::wrap::{FaultConfig, FaultyStore};
use thaw_store::pack::keys::pack_key;
use thaw_store::{BlobStore, ChunkReader, ObjectStoreBackend, ReadError, ReaderConfig, Repository};
use thaw_tests::built_small_store;

/// A reader over the built store behind a fault injector.
async fn faulty_reader(
    store: &std::path::Path,
) -> (Arc<FaultyStore>, Repository, Arc<ChunkReader>) {
    let local: Arc<dyn BlobStore> = Arc::new(ObjectStoreBackend::local(store).expect("store"));
    let config = FaultConfig {
        fail_rate: 0.0,
        seed: 1,
        ..FaultConfig::default()
    };
    let faulty = Arc::new(FaultyStore::new(local, config));
    let repo = Repository::open(faulty.clone()).await.expect("repo");
    let reader = ChunkReader::new(repo.packs().clone(), ReaderConfig::default()).expect("reader");
    (faulty, repo, reader)
}

/// Reads `id` from 32 tasks at once.
async fn read_from_32(
    reader: &Arc<ChunkReader>,
    id: ChunkId,
) -> Vec<Result<bytes::Bytes, Arc<ReadError>>> {
    let tasks: Vec<_> = (0..32)
        .map(|_| {
            let r = reader.clone();
            tokio::spawn(async move { r.read(id).await })
        })
        .collect();
    let mut out = Vec::new();
    for t in tasks {
        out.push(t.await.expect("reader task"));
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fetch_that_panics_does_not_make_later_reads_fail() {
    let (tmp, image) = built_small_store().await;
    let (faulty, repo, reader) = faulty_reader(&tmp.path().join("store")).await;
    let id = repo.get_manifest(&image).await.expect("manifest").chunks[0].id;
    faulty.set_panicking(true);
    for r in read_from_32(&reader, id).await {
        let e = r.expect_err("the fetch panicked");
        assert!(matches!(*e, ReadError::Abandoned(c) if c == id), "{e}");
    }
    assert!(faulty.injected() >= 1, "the store panicked");
    assert_eq!(reader.fetcher().flights_len(), 0, "no entry is left behind");
    faulty.set_panicking(false);
    for r in read_from_32(&reader, id).await {
        assert_eq!(ChunkId::of(&r.expect("the next reads succeed")), id);
    }
    assert_eq!(
        reader.stats().fetched_chunks,
        1,
        "32 readers shared one fetch"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_pack_is_a_permanent_error_and_the_next_read_tries_again() {
    let (tmp, image) = built_small_store().await;
    let (_faulty, repo, reader) = faulty_reader(&tmp.path().join("store")).await;
    let id = repo.get_manifest(&image).await.expect("manifest").chunks[0].id;
    let pack = repo.packs().location(&id).expect("located").pack;
    let path = tmp.path().join("store").join(pack_key(&pack));
    let saved = std::fs::read(&path).expect("pack");
    std::fs::remove_file(&path).expect("remove pack");
    let e = reader.read(id).await.expect_err("the pack is gone");
    match &*e {
        ReadError::Fetch {
            chunk,
            pack: p,
            source,
        } => {
            assert_eq!((*chunk, *p), (id, pack));
            assert!(
                !source.is_transient(),
                "a missing pack is not transient: {source}"
            );
        }
        other => panic!("expected a fetch error, got {other}"),
    }
    assert!(!e.is_transient());
    assert_eq!(reader.fetcher().flights_len(), 0);
    std::fs::write(&path, saved).expect("restore pack");
    assert_eq!(ChunkId::of(&reader.read(id).await.expect("read")), id);
}

/// The race behind a flaky fetch-around test: a reader misses memory just before a flight
/// puts the chunk there, and claims it just after that flight has ended. The fetcher must
/// look in memory once more rather than GET the chunk again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_chunk_that_reached_memory_after_a_miss_is_not_fetched_again() {
    let (tmp, image) = built_small_store().await;
    let local = Arc::new(ObjectStoreBackend::local(&tmp.path().join("store")).unwrap());
    let counting = Arc::new(thaw_store::blob::wrap::CountingStore::new(local));
    let counters = counting.counters();
    let repo = Repository::open(counting).await.unwrap();
    let reader = ChunkReader::new(repo.packs().clone(), ReaderConfig::default()).unwrap();
    let m = repo.get_manifest(&image).await.unwrap();
    let d = m.lookup(0, b"d").unwrap();
    let f0 = m.lookup(d, b"f0").unwrap();
    let id = m.file_extents(f0)[0].chunk.unwrap();
    reader.read(id).await.unwrap();
    let before = counters.snapshot().gets;
    // What the late reader does after its memory lookup missed: ask the fetcher.
    let got = reader
        .fetcher()
        .fetch(&[id], thaw_store::FetchClass::OnDemand)
        .await;
    assert_eq!(ChunkId::of(got[0].as_ref().unwrap()), id);
    assert_eq!(
        counters.snapshot().gets - before,
        0,
        "served from memory, no GET"
    );
    // The first read's flight may still be decoding the neighbours it fetched around;
    // every flight must end.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while reader.fetcher().flights_len() > 0 {
        assert!(std::time::Instant::now() < deadline, "a flight never ended");
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
}

/// A local-directory store on the disk cache's filesystem is read in place: fetched chunks
/// are not copied into the cache (a second write of every byte on the same disk), unless
/// asked; a store that is not a plain local directory is copied as before.
#[tokio::test]
async fn a_local_store_on_the_cache_s_filesystem_is_not_copied_into_it() {
    let (tmp, image) = built_small_store().await;
    let local = Arc::new(ObjectStoreBackend::local(&tmp.path().join("store")).unwrap());
    let repo = Repository::open(local.clone()).await.unwrap();
    let m = repo.get_manifest(&image).await.unwrap();
    let ids: Vec<ChunkId> = m.chunks.iter().map(|c| c.id).collect();
    let reader_with = |copy: bool, store: Arc<dyn thaw_store::BlobStore>, cache: &str| {
        let dir = tmp.path().join(cache);
        async move {
            let repo = Repository::open(store).await.unwrap();
            let config = ReaderConfig {
                disk: Some((dir, 1 << 30)),
                copy_local_store: copy,
                ..Default::default()
            };
            ChunkReader::new(repo.packs().clone(), config).unwrap()
        }
    };
    let plain = reader_with(false, local.clone(), "cache-plain").await;
    let copying = reader_with(true, local.clone(), "cache-copying").await;
    // Counting passes the store's directory on; a throttle models a remote store.
    let link = thaw_store::blob::wrap::ThrottleConfig::parse("0,100000").unwrap();
    let remote = Arc::new(thaw_store::blob::wrap::ThrottledStore::new(local, link));
    let throttled = reader_with(false, remote, "cache-throttled").await;
    assert!(!plain.copies_fetched());
    assert!(copying.copies_fetched() && throttled.copies_fetched());
    for reader in [&plain, &copying, &throttled] {
        for id in &ids {
            assert_eq!(ChunkId::of(&reader.read(*id).await.unwrap()), *id);
        }
    }
    assert_eq!(plain.disk().unwrap().len(), 0, "nothing copied");
    for reader in [&copying, &throttled] {
        let disk = reader.disk().unwrap();
        thaw_tests::eventually("the chunks written to the disk cache", || {
            disk.len() == ids.len()
        })
        .await;
    }
}

/// The built store, opened as a plain local directory.
async fn local_repo(store: &std::path::Path) -> Repository {
    let local: Arc<dyn BlobStore> = Arc::new(ObjectStoreBackend::local(store).expect("store"));
    Repository::open(local).await.expect("repo")
}

/// Reads `id` through `reader` from a thread outside the runtime, as a FUSE thread does:
/// marked as one that may do the fetch's blocking work itself, or not.
async fn read_from_a_reader_thread(
    reader: &Arc<ChunkReader>,
    id: ChunkId,
    marked: bool,
) -> bytes::Bytes {
    let (reader, rt) = (reader.clone(), tokio::runtime::Handle::current());
    tokio::task::spawn_blocking(move || {
        let read = || rt.block_on(reader.read(id));
        if marked {
            thaw_store::read::inline::on_this_thread(read)
        } else {
            read()
        }
    })
    .await
    .expect("reader thread")
    .expect("read")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reader_thread_fetches_from_a_local_store_itself_and_only_there() {
    let (tmp, image) = built_small_store().await;
    let store = tmp.path().join("store");
    let repo = local_repo(&store).await;
    let chunks = repo.get_manifest(&image).await.expect("manifest").chunks;
    assert!(chunks.len() >= 3, "{} chunks", chunks.len());
    let reader = ChunkReader::new(repo.packs().clone(), ReaderConfig::default()).expect("reader");
    let got = read_from_a_reader_thread(&reader, chunks[0].id, true).await;
    assert_eq!(ChunkId::of(&got), chunks[0].id);
    assert_eq!(
        reader.stats().inline_fetches,
        1,
        "the marked thread ran the flight"
    );
    // An unmarked thread, and a runtime task, hand the flight to the runtime.
    let got = read_from_a_reader_thread(&reader, chunks[1].id, false).await;
    assert_eq!(ChunkId::of(&got), chunks[1].id);
    let got = reader.read(chunks[2].id).await.expect("read");
    assert_eq!(ChunkId::of(&got), chunks[2].id);
    assert_eq!(reader.stats().inline_fetches, 1);
    assert_eq!(reader.stats().fetched_chunks, 3);
    // A store that is not a local directory (here: behind the fault injector) never
    // fetches on the reader's thread, marked or not.
    let (_faulty, repo, reader) = faulty_reader(&store).await;
    let id = repo.get_manifest(&image).await.expect("manifest").chunks[0].id;
    let got = read_from_a_reader_thread(&reader, id, true).await;
    assert_eq!(ChunkId::of(&got), id);
    assert_eq!(reader.stats().inline_fetches, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_damaged_chunk_read_on_the_reader_s_thread_is_an_integrity_error() {
    let (tmp, image) = built_small_store().await;
    let store = tmp.path().join("store");
    let repo = local_repo(&store).await;
    let id = repo.get_manifest(&image).await.expect("manifest").chunks[0].id;
    let loc = repo.packs().location(&id).expect("located");
    let path = store.join(pack_key(&loc.pack));
    let mut bytes = std::fs::read(&path).expect("pack");
    let at = usize::try_from(loc.entry.offset).expect("offset") + 7;
    bytes[at] ^= 0xff;
    std::fs::write(&path, bytes).expect("damage");
    let reader = ChunkReader::new(repo.packs().clone(), ReaderConfig::default()).expect("reader");
    let (r, rt) = (reader.clone(), tokio::runtime::Handle::current());
    let got = tokio::task::spawn_blocking(move || {
        thaw_store::read::inline::on_this_thread(|| rt.block_on(r.read(id)))
    })
    .await
    .expect("reader thread");
    let e = got.expect_err("damaged");
    assert!(matches!(*e, ReadError::Integrity { .. }), "{e}");
    assert_eq!(reader.stats().inline_fetches, 1);
    assert_eq!(reader.stats().integrity_failures, 1);
    assert_eq!(reader.fetcher().flights_len(), 0, "no entry is left behind");
}
