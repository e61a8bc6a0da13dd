//! The chunk store under stress: corruption, single-flight, injected faults, a store
//! that is down, dedup across builds, and garbage collection.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "tests: a failed step panics with its message"
)]

use std::sync::Arc;
use std::time::Duration;
use thaw_core::ChunkId;
use thaw_image::{build, export, BuildOptions, BuildSource};
use thaw_store::blob::wrap::{
    CountingStore, FaultConfig, FaultyStore, MetaCacheStore, RetryConfig, RetryStore,
    ThrottleConfig, ThrottledStore,
};
use thaw_store::pack::{keys::pack_key, store::PlanOptions};
use thaw_store::{
    BlobStore, ChunkReader, ObjectStoreBackend, ReadError, ReaderConfig, RepoError, Repository,
};
use thaw_tests::{built_small_store, eventually, local_repo, pseudo_random, small_tree, treediff};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flipped_byte_in_a_pack_is_an_integrity_error_and_never_cached() {
    let (tmp, image) = built_small_store().await;
    let (_, repo) = local_repo(&tmp.path().join("store")).await;
    let m = repo.get_manifest(&image).await.unwrap();
    let (victim, other) = (m.chunks[0].id, m.chunks[1].id);
    let loc = repo.packs().location(&victim).unwrap();
    assert_eq!(
        repo.packs().location(&other).unwrap().pack,
        loc.pack,
        "both chunks share a pack"
    );
    let pack_path = tmp.path().join("store").join(pack_key(&loc.pack));
    let mut bytes = std::fs::read(&pack_path).unwrap();
    bytes[(loc.entry.offset + u64::from(loc.entry.stored_len) / 2) as usize] ^= 0x20;
    std::fs::write(&pack_path, bytes).unwrap();

    let cache = tmp.path().join("cache");
    let (_, repo) = local_repo(&tmp.path().join("store")).await;
    let reader = ChunkReader::new(
        repo.packs().clone(),
        ReaderConfig {
            memory_bytes: 1 << 30,
            disk: Some((cache.clone(), 1 << 30)),
            fetch_around: thaw_store::FetchAround::Fixed(0),
            // The disk cache keeps chunks as it would for a remote store.
            copy_local_store: true,
            ..Default::default()
        },
    )
    .unwrap();
    for attempt in 0..2 {
        let err = reader
            .read(victim)
            .await
            .expect_err("corrupt chunk must not be returned");
        match &*err {
            ReadError::Integrity { chunk, pack, .. } => {
                assert_eq!(*chunk, victim);
                assert_eq!(*pack, loc.pack);
            }
            other => panic!("attempt {attempt}: expected an integrity error, got {other}"),
        }
        let msg = err.to_string();
        assert!(
            msg.contains(&victim.to_hex()) && msg.contains(&loc.pack.to_hex()),
            "{msg}"
        );
    }
    assert!(
        !reader.disk().unwrap().contains(&victim),
        "the disk cache must not hold the corrupt chunk"
    );
    assert!(!cache
        .join(&victim.to_hex()[..2])
        .join(victim.to_hex())
        .exists());
    // The rest of the pack is still good.
    let good = reader
        .read(other)
        .await
        .expect("an intact neighbour reads fine");
    assert_eq!(ChunkId::of(&good), other);
    // The reader gets its bytes before the disk-cache write, which follows.
    let disk = reader.disk().unwrap();
    eventually("the neighbour on disk", || disk.contains(&other)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thirty_two_concurrent_readers_of_a_cold_chunk_cause_one_get() {
    let (tmp, image) = built_small_store().await;
    let local: Arc<dyn BlobStore> =
        Arc::new(ObjectStoreBackend::local(&tmp.path().join("store")).unwrap());
    // A little latency so all readers arrive while the fetch is in flight.
    let slow: Arc<dyn BlobStore> = Arc::new(ThrottledStore::new(
        local,
        ThrottleConfig {
            latency: Duration::from_millis(50),
            bandwidth: None,
        },
    ));
    let counting = Arc::new(CountingStore::new(slow));
    let counters = counting.counters();
    let repo = Repository::open(counting).await.unwrap();
    let m = repo.get_manifest(&image).await.unwrap();
    let id = m.chunks.iter().max_by_key(|c| c.len).unwrap().id;
    let reader = ChunkReader::new(repo.packs().clone(), ReaderConfig::default()).unwrap();
    let before = counters.snapshot().gets;
    let tasks: Vec<_> = (0..32)
        .map(|_| {
            let r = reader.clone();
            tokio::spawn(async move { r.read(id).await.map(|b| ChunkId::of(&b)) })
        })
        .collect();
    for t in tasks {
        assert_eq!(t.await.unwrap().unwrap(), id);
    }
    assert_eq!(
        counters.snapshot().gets - before,
        1,
        "exactly one backend GET"
    );
    assert_eq!(reader.stats().fetched_chunks, 1);
}

/// An on-demand read of neighbouring chunks is one GET whose chunks are decoded in parts
/// side by side (one per core): every chunk still arrives, verified, each to its reader.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_of_neighbouring_chunks_is_one_get_decoded_in_parts() {
    let (tmp, image) = built_small_store().await;
    let local: Arc<dyn BlobStore> =
        Arc::new(ObjectStoreBackend::local(&tmp.path().join("store")).unwrap());
    let counting = Arc::new(CountingStore::new(local));
    let counters = counting.counters();
    let repo = Repository::open(counting).await.unwrap();
    let m = repo.get_manifest(&image).await.unwrap();
    let pack = repo.packs().location(&m.chunks[0].id).unwrap().pack;
    let ids: Vec<ChunkId> = m
        .chunks
        .iter()
        .map(|c| c.id)
        .filter(|id| repo.packs().location(id).unwrap().pack == pack)
        .take(7)
        .collect();
    assert!(ids.len() >= 3, "several chunks in one pack");
    let reader = ChunkReader::new(repo.packs().clone(), ReaderConfig::default()).unwrap();
    let before = counters.snapshot().gets;
    let got = reader.read_many(&ids).await.unwrap();
    assert_eq!(counters.snapshot().gets - before, 1, "one GET");
    let got: Vec<ChunkId> = got.iter().map(|b| ChunkId::of(b)).collect();
    assert_eq!(got, ids, "every chunk, in order");
    assert_eq!(reader.stats().fetched_chunks, ids.len() as u64);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_survive_twenty_percent_failures() {
    let (tmp, image) = built_small_store().await;
    let local: Arc<dyn BlobStore> =
        Arc::new(ObjectStoreBackend::local(&tmp.path().join("store")).unwrap());
    let faulty = Arc::new(FaultyStore::new(
        local,
        FaultConfig {
            fail_rate: 0.2,
            seed: 42,
            ..FaultConfig::default()
        },
    ));
    let retry = Arc::new(RetryStore::new(
        faulty.clone(),
        RetryConfig {
            initial_backoff: Duration::from_millis(1),
            ..Default::default()
        },
    ));
    let repo = Repository::open(retry).await.unwrap();
    let m = repo.get_manifest(&image).await.unwrap();
    // Each chunk on its own (no cache shared between reads), then a whole export.
    for c in &m.chunks {
        let reader = ChunkReader::new(repo.packs().clone(), ReaderConfig::default()).unwrap();
        assert_eq!(
            ChunkId::of(&reader.read(c.id).await.expect("retried read")),
            c.id
        );
    }
    let out = tmp.path().join("out");
    let reader = ChunkReader::new(repo.packs().clone(), ReaderConfig::default()).unwrap();
    export(&reader, &m, &out)
        .await
        .expect("export through faults");
    let diffs = treediff::compare(&tmp.path().join("src"), &out, &[]);
    assert!(diffs.is_empty(), "{diffs:?}");
    assert!(
        faulty.injected() > 3,
        "faults were injected: {}",
        faulty.injected()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_down_store_fails_within_the_deadline_and_cached_chunks_still_read() {
    let (tmp, image) = built_small_store().await;
    let local: Arc<dyn BlobStore> =
        Arc::new(ObjectStoreBackend::local(&tmp.path().join("store")).unwrap());
    let faulty = Arc::new(FaultyStore::new(
        local,
        FaultConfig {
            fail_rate: 0.0,
            seed: 1,
            ..FaultConfig::default()
        },
    ));
    let deadline = Duration::from_millis(800);
    let retry = Arc::new(RetryStore::new(
        faulty.clone(),
        RetryConfig {
            deadline,
            initial_backoff: Duration::from_millis(10),
            max_attempts: 100,
            ..Default::default()
        },
    ));
    let repo = Repository::open(retry).await.unwrap();
    let m = repo.get_manifest(&image).await.unwrap();
    let reader = ChunkReader::new(repo.packs().clone(), ReaderConfig::default()).unwrap();
    let cached = m.chunks[0].id;
    reader.read(cached).await.unwrap();
    faulty.set_down(true);
    let err = reader
        .read(m.chunks[1].id)
        .await
        .expect_err("the store is down");
    // The deadline ended the retries, not the attempt cap (counted, not timed).
    assert!(err.to_string().contains("gave up"), "{err}");
    let attempts = faulty.injected();
    assert!(attempts > 0 && attempts < 100, "{attempts} attempts");
    assert_eq!(
        ChunkId::of(&reader.read(cached).await.expect("cached chunk")),
        cached
    );
}

/// Dry run, mark, wait within the safety period, delete: one unreferenced pack.
async fn two_phase_gc_deletes_one_pack(repo: &Repository) {
    let dry = repo.gc(false, Duration::ZERO).await.unwrap();
    assert_eq!(dry.newly_marked.len(), 1, "{dry:?}");
    assert!(!dry.applied);
    assert!(
        repo.deletion_marks().await.unwrap().is_empty(),
        "a dry run writes nothing"
    );
    let hour = Duration::from_secs(3600);
    let fresh = repo.gc(true, hour).await.unwrap();
    assert!(
        fresh.young == 1 && fresh.newly_marked.is_empty(),
        "a pack younger than the safety period is not marked: {fresh:?}"
    );
    let marked = repo.gc(true, Duration::ZERO).await.unwrap();
    assert_eq!(marked.newly_marked.len(), 1, "{marked:?}");
    assert!(
        marked.deletable.is_empty(),
        "a pass never deletes what it marks"
    );
    let young = repo.gc(true, hour).await.unwrap();
    assert!(
        young.deletable.is_empty() && young.waiting.len() == 1,
        "a mark younger than the safety period waits: {young:?}"
    );
    assert_eq!(repo.packs().packs().len(), 2, "nothing deleted yet");
    let applied = repo.gc(true, Duration::ZERO).await.unwrap();
    assert!(
        applied.applied && applied.deletable.len() == 1,
        "{applied:?}"
    );
    assert!(
        repo.deletion_marks().await.unwrap().is_empty(),
        "the mark goes with the pack"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dedup_across_builds_and_gc_of_removed_images() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    small_tree(&src);
    let (store, repo) = local_repo(&tmp.path().join("store")).await;
    let a = build(
        &repo,
        BuildSource::Directory(src.clone()),
        BuildOptions {
            tag: Some("a".into()),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    let again = build(
        &repo,
        BuildSource::Directory(src.clone()),
        BuildOptions::default(),
    )
    .await
    .unwrap();
    assert_eq!((again.writer.stored_bytes, again.writer.chunks_new), (0, 0));
    assert_eq!(again.image, a.image);

    // One new file: only its bytes are new.
    std::fs::write(src.join("extra"), pseudo_random(1 << 20, 99)).unwrap();
    let b = build(
        &repo,
        BuildSource::Directory(src.clone()),
        BuildOptions {
            tag: Some("b".into()),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    assert_eq!(b.writer.raw_bytes_new, 1 << 20);
    assert!(b.writer.stored_bytes <= (1 << 20) + 4096, "{:?}", b.writer);

    // Nothing is garbage while both images exist.
    let dry = repo.gc(false, Duration::ZERO).await.unwrap();
    assert_eq!(dry.reclaimable_bytes(), 0, "{dry:?}");
    assert_eq!(dry.orphans, 0, "{dry:?}");

    // Remove b: the pack holding only the extra file's chunk becomes garbage.
    repo.remove_image(&b.image).await.unwrap();
    assert!(repo.get_tag("b").await.unwrap().is_none());
    two_phase_gc_deletes_one_pack(&repo).await;
    assert_eq!(
        store.list("packs").await.unwrap().len(),
        2,
        "one pack and its index remain"
    );

    // Image a is intact after gc, read through a fresh repository.
    let repo = Repository::open(store).await.unwrap();
    let m = repo.get_manifest(&a.image).await.unwrap();
    let out = tmp.path().join("out");
    std::fs::remove_file(src.join("extra")).unwrap();
    let reader = ChunkReader::new(repo.packs().clone(), ReaderConfig::default()).unwrap();
    export(&reader, &m, &out).await.unwrap();
    // Adding and removing `extra` changed the source root's mtime; everything else matches.
    let diffs: Vec<String> = treediff::compare(&src, &out, &[])
        .into_iter()
        .filter(|d| !d.starts_with(": "))
        .collect();
    assert!(diffs.is_empty(), "{diffs:?}");
}

#[tokio::test]
async fn image_references_resolve_and_bad_manifests_are_refused() {
    let (tmp, image) = built_small_store().await;
    let (store, repo) = local_repo(&tmp.path().join("store")).await;
    assert_eq!(repo.resolve(&image.to_hex()).await.unwrap(), image);
    assert_eq!(repo.resolve(&image.to_hex()[..8]).await.unwrap(), image);
    assert!(matches!(
        repo.resolve("nope").await,
        Err(RepoError::NoSuchImage(_))
    ));
    // A manifest naming a chunk the store lacks is refused.
    let mut m = repo.get_manifest(&image).await.unwrap();
    m.chunks[0].id = ChunkId::of(b"not stored anywhere");
    assert!(matches!(
        repo.put_manifest(&m).await,
        Err(RepoError::UnknownChunk(_))
    ));
    // A manifest object whose bytes do not hash to its name is refused.
    let key = format!("images/{image}");
    let mut bytes = store.get(&key).await.unwrap().to_vec();
    let n = bytes.len();
    bytes[n - 1] ^= 1;
    store.put(&key, bytes.into()).await.unwrap();
    assert!(matches!(
        repo.get_manifest(&image).await,
        Err(RepoError::ImageIdMismatch { .. })
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fetch_around_brings_the_following_chunks_in_the_same_get() {
    let (tmp, image) = built_small_store().await;
    let counting = Arc::new(CountingStore::new(Arc::new(
        ObjectStoreBackend::local(&tmp.path().join("store")).unwrap(),
    )));
    let counters = counting.counters();
    let repo = Repository::open(counting).await.unwrap();
    let m = repo.get_manifest(&image).await.unwrap();
    // The small files d/f0..d/f19 sit next to each other in the pack, in path order
    // (bytewise: f0, f1, f10, f11, ...).
    let d = m.lookup(0, b"d").unwrap();
    let ids: Vec<ChunkId> = (0..20)
        .map(|i| {
            m.file_extents(m.lookup(d, format!("f{i}").as_bytes()).unwrap())[0]
                .chunk
                .unwrap()
        })
        .collect();
    let options = PlanOptions {
        fetch_around: 64 * 1024,
        ..Default::default()
    };
    let plan = repo.packs().plan(&ids[..1], options, |_| false);
    assert_eq!(
        plan.runs.len(),
        1,
        "one GET for the chunk and its neighbours"
    );
    let following = plan.around;
    assert!(
        following.len() >= 3 && following.len() <= 6,
        "about 64 KiB of 10 KiB neighbours: {following:?}"
    );
    assert_eq!(
        following[0], ids[1],
        "the next chunk in the pack is the next file's"
    );

    let reader = ChunkReader::new(
        repo.packs().clone(),
        ReaderConfig {
            fetch_around: thaw_store::FetchAround::Fixed(64 * 1024),
            ..Default::default()
        },
    )
    .unwrap();
    let before = counters.snapshot().gets;
    reader.read(ids[0]).await.unwrap();
    assert_eq!(
        counters.snapshot().gets - before,
        1,
        "one GET for the chunk and its neighbours"
    );
    assert_eq!(reader.stats().fetched_around, following.len() as u64);
    // The neighbours (f1, f10, f11, ...: path order) are now served from memory.
    for id in &following {
        assert_eq!(ChunkId::of(&reader.read(*id).await.unwrap()), *id);
    }
    assert_eq!(counters.snapshot().gets - before, 1, "no further GETs");
    // Without fetch-around, each chunk costs its own GET.
    let plain = ChunkReader::new(repo.packs().clone(), ReaderConfig::default()).unwrap();
    let before = counters.snapshot().gets;
    plain.read(ids[0]).await.unwrap();
    plain.read(ids[1]).await.unwrap();
    assert_eq!(counters.snapshot().gets - before, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_open_of_an_image_by_id_makes_no_store_request() {
    let (tmp, image) = built_small_store().await;
    let local: Arc<dyn BlobStore> =
        Arc::new(ObjectStoreBackend::local(&tmp.path().join("store")).unwrap());
    let meta = tmp.path().join("cache/meta");
    let open = || async {
        let counting = Arc::new(CountingStore::new(local.clone()));
        let cached = Arc::new(MetaCacheStore::new(counting.clone(), &meta).unwrap());
        let repo = Repository::open(cached.clone()).await.unwrap();
        (counting, cached, repo)
    };
    let (first, first_cache, repo) = open().await;
    let packs = repo.packs().packs().len() as u64;
    assert!(packs >= 1);
    assert_eq!(first_cache.counts(), (0, packs));
    let s = first.counters().snapshot();
    assert_eq!((s.lists, s.gets), (1, packs), "one LIST, one GET per index");
    repo.get_manifest(&image).await.unwrap();
    // What a mount does, by id: resolve, open, load the manifest, check its packs.
    let (second, second_cache, repo) = open().await;
    let id = repo.resolve(&image.to_string()).await.unwrap();
    let m = repo.get_manifest(&id).await.unwrap();
    repo.ensure_packs_for(m.chunks.iter().map(|c| c.id))
        .await
        .unwrap();
    assert_eq!(
        second_cache.counts(),
        (packs + 2, 0),
        "listing, indexes, manifest"
    );
    let s = second.counters().snapshot();
    assert_eq!((s.lists, s.gets, s.heads), (0, 0, 0), "no request: {s:?}");
    // The same repository: every chunk of the image is found, and reads right.
    let reader = ChunkReader::new(repo.packs().clone(), ReaderConfig::default()).unwrap();
    for c in &m.chunks {
        assert_eq!(ChunkId::of(&reader.read(c.id).await.unwrap()), c.id);
    }
}
