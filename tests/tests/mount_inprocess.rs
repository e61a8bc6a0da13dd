//! The FUSE filesystem mounted in this process over wrapped stores: injected failures,
//! a store that goes down, a corrupt pack, and single-flight of concurrent cold reads.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "tests: a failed step panics with its message"
)]

use std::io::Read;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use thaw_fuse::{FsConfig, MountHandle, MountOptions, ThawFs};
use thaw_image::{build, BuildOptions, BuildSource};
use thaw_store::blob::wrap::{
    CountingStore, FaultConfig, FaultyStore, RetryConfig, RetryStore, StoreCounters,
    ThrottleConfig, ThrottledStore,
};
use thaw_store::pack::keys::pack_key;
use thaw_store::{BlobStore, ChunkReader, ObjectStoreBackend, ReaderConfig, Repository};
use thaw_tests::{can_mount, pseudo_random, treediff};

/// A source tree of files with several chunks each.
fn make_tree(dir: &Path) {
    std::fs::create_dir_all(dir.join("sub")).unwrap();
    for i in 0..12u64 {
        std::fs::write(
            dir.join(format!("sub/file{i}")),
            pseudo_random(((i as usize) + 1) * 700_000, i),
        )
        .unwrap();
    }
    std::fs::write(dir.join("small"), b"small file").unwrap();
}

struct Fixture {
    tmp: tempfile::TempDir,
    src: PathBuf,
    image: thaw_core::ImageId,
}

async fn fixture() -> Fixture {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    make_tree(&src);
    let (_, repo) = thaw_tests::local_repo(&tmp.path().join("store")).await;
    let r = build(
        &repo,
        BuildSource::Directory(src.clone()),
        BuildOptions::default(),
    )
    .await
    .unwrap();
    Fixture {
        tmp,
        src,
        image: r.image,
    }
}

/// Mounts the fixture's image over `store` (already wrapped as the test wants).
async fn mount(
    f: &Fixture,
    store: Arc<dyn BlobStore>,
    read_timeout: Duration,
    name: &str,
) -> (MountHandle, PathBuf) {
    let repo = Repository::open(store).await.unwrap();
    let manifest = Arc::new(repo.get_manifest(&f.image).await.unwrap());
    let reader = ChunkReader::new(repo.packs().clone(), ReaderConfig::default()).unwrap();
    let config = FsConfig {
        read_timeout,
        ..Default::default()
    };
    let fs = ThawFs::new(
        manifest,
        f.image,
        reader,
        config,
        None,
        tokio::runtime::Handle::current(),
    );
    let mp = f.tmp.path().join(name);
    std::fs::create_dir_all(&mp).unwrap();
    let options = MountOptions {
        auto_unmount: Some(false),
        ..Default::default()
    };
    let mp2 = mp.clone();
    let handle = tokio::task::spawn_blocking(move || thaw_fuse::mount(fs, &mp2, &options))
        .await
        .unwrap()
        .expect("mount");
    (handle, mp)
}

fn local(f: &Fixture) -> Arc<dyn BlobStore> {
    Arc::new(ObjectStoreBackend::local(&f.tmp.path().join("store")).unwrap())
}

async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    tokio::task::spawn_blocking(f).await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_read_succeeds_with_twenty_percent_of_requests_failing() {
    if !can_mount("every_read_succeeds_with_twenty_percent_of_requests_failing") {
        return;
    }
    let f = fixture().await;
    let faulty = Arc::new(FaultyStore::new(
        local(&f),
        FaultConfig {
            fail_rate: 0.2,
            seed: 7,
            ..FaultConfig::default()
        },
    ));
    let store = Arc::new(RetryStore::new(
        faulty.clone(),
        RetryConfig {
            initial_backoff: Duration::from_millis(1),
            ..Default::default()
        },
    ));
    let (handle, mp) = mount(&f, store, Duration::from_secs(30), "mnt").await;
    let src = f.src.clone();
    let diffs = blocking(move || treediff::compare(&src, &mp, &[])).await;
    assert!(
        diffs.iter().all(|d| d.starts_with(": ")),
        "only the root's own metadata may differ: {diffs:?}"
    );
    assert!(faulty.injected() > 0, "faults were injected");
    assert_eq!(handle.stats().read_errors, 0);
    blocking(move || handle.unmount().unwrap()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_down_store_gives_eio_within_the_deadline_and_cached_files_stay_readable() {
    if !can_mount("a_down_store_gives_eio_within_the_deadline_and_cached_files_stay_readable") {
        return;
    }
    let f = fixture().await;
    let faulty = Arc::new(FaultyStore::new(
        local(&f),
        FaultConfig {
            fail_rate: 0.0,
            seed: 1,
            ..FaultConfig::default()
        },
    ));
    let deadline = Duration::from_millis(1500);
    let retry = RetryConfig {
        deadline,
        initial_backoff: Duration::from_millis(10),
        max_attempts: 1000,
        ..Default::default()
    };
    let store = Arc::new(RetryStore::new(faulty.clone(), retry));
    let (handle, mp) = mount(&f, store, Duration::from_secs(5), "mnt").await;
    let warm = mp.join("sub/file0");
    let expected = std::fs::read(f.src.join("sub/file0")).unwrap();
    let w = warm.clone();
    assert_eq!(blocking(move || std::fs::read(w).unwrap()).await, expected);
    faulty.set_down(true);
    let cold = mp.join("sub/file11");
    let err = blocking(move || std::fs::read(cold))
        .await
        .expect_err("the store is down");
    assert_eq!(err.raw_os_error(), Some(libc::EIO), "{err}");
    // The retry deadline ended it, not the attempt cap (counted, not timed).
    let attempts = faulty.injected();
    assert!(attempts > 0 && attempts < 1000, "{attempts} attempts");
    // Already-read data is served without the store.
    assert_eq!(
        blocking(move || std::fs::read(warm).unwrap()).await,
        expected
    );
    assert!(handle.stats().read_errors > 0);
    blocking(move || handle.unmount().unwrap()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_corrupt_pack_gives_eio_never_wrong_bytes() {
    if !can_mount("a_corrupt_pack_gives_eio_never_wrong_bytes") {
        return;
    }
    let f = fixture().await;
    let repo = Repository::open(local(&f)).await.unwrap();
    let m = repo.get_manifest(&f.image).await.unwrap();
    let sub = m.lookup(0, b"sub").unwrap();
    let victim_file = m.lookup(sub, b"file3").unwrap();
    let ext = m.file_extents(victim_file);
    let victim = ext[1].chunk.unwrap();
    let loc = repo.packs().location(&victim).unwrap();
    let pack = f.tmp.path().join("store").join(pack_key(&loc.pack));
    let mut bytes = std::fs::read(&pack).unwrap();
    bytes[(loc.entry.offset + 100) as usize] ^= 0xff;
    std::fs::write(&pack, bytes).unwrap();

    let (handle, mp) = mount(&f, local(&f), Duration::from_secs(10), "mnt").await;
    let path = mp.join("sub/file3");
    let (off, len) = (ext[1].offset, ext[1].len as usize);
    let p = path.clone();
    let r = blocking(move || {
        let file = std::fs::File::open(p).unwrap();
        let mut buf = vec![0u8; len];
        file.read_exact_at(&mut buf, off)
    })
    .await;
    assert_eq!(
        r.expect_err("corrupt chunk").raw_os_error(),
        Some(libc::EIO)
    );
    // The intact first chunk of the same file still reads correctly, up to the last page
    // that does not reach into the corrupt chunk (the kernel reads whole pages).
    let expected = std::fs::read(f.src.join("sub/file3")).unwrap();
    let first_len = ext[0].len as usize / 4096 * 4096;
    let got = blocking(move || {
        let mut buf = vec![0u8; first_len];
        std::fs::File::open(path)
            .unwrap()
            .read_exact(&mut buf)
            .map(|_| buf)
    })
    .await
    .unwrap();
    assert_eq!(got, expected[..first_len]);
    blocking(move || handle.unmount().unwrap()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_cold_reads_of_one_chunk_cause_one_fetch() {
    if !can_mount("concurrent_cold_reads_of_one_chunk_cause_one_fetch") {
        return;
    }
    let f = fixture().await;
    let slow: Arc<dyn BlobStore> = Arc::new(ThrottledStore::new(
        local(&f),
        ThrottleConfig {
            latency: Duration::from_millis(100),
            bandwidth: None,
        },
    ));
    let counting = Arc::new(CountingStore::new(slow));
    let counters: Arc<StoreCounters> = counting.counters();
    let (handle, mp) = mount(&f, counting, Duration::from_secs(10), "mnt").await;
    let path = mp.join("sub/file5");
    let expected = std::fs::read(f.src.join("sub/file5")).unwrap();
    let before = counters.snapshot().gets;
    // 32 threads read different 4 KiB pages inside the file's first chunk at once.
    let threads: Vec<_> = (0..32u64)
        .map(|i| {
            let p = path.clone();
            std::thread::spawn(move || {
                let mut buf = vec![0u8; 4096];
                std::fs::File::open(p)
                    .unwrap()
                    .read_exact_at(&mut buf, i * 8192)
                    .unwrap();
                buf
            })
        })
        .collect();
    for (i, t) in threads.into_iter().enumerate() {
        let got = blocking(move || t.join().unwrap()).await;
        assert_eq!(got, expected[i * 8192..i * 8192 + 4096]);
    }
    assert_eq!(
        counters.snapshot().gets - before,
        1,
        "one backend GET for one cold chunk"
    );
    blocking(move || handle.unmount().unwrap()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_mount_asks_the_kernel_for_its_readahead_window() {
    if !can_mount("the_mount_asks_the_kernel_for_its_readahead_window") {
        return;
    }
    let f = fixture().await;
    let (handle, mp) = mount(&f, local(&f), Duration::from_secs(10), "mnt").await;
    let file = thaw_fuse::mount::readahead_file(&mp).unwrap();
    let kib = std::fs::read_to_string(&file).unwrap();
    assert_eq!(
        kib.trim().parse::<u64>().unwrap() * 1024,
        thaw_fuse::DEFAULT_KERNEL_READAHEAD,
        "{}",
        file.display()
    );
    // A sequential reader gets large requests: a 4.9 MB file in far fewer than the
    // 38 requests that 128 KiB of readahead would need.
    let data = blocking({
        let p = mp.join("sub/file6");
        move || std::fs::read(p).unwrap()
    })
    .await;
    assert_eq!(data, std::fs::read(f.src.join("sub/file6")).unwrap());
    let stats = handle.stats();
    let reads = stats.ops.iter().find(|(op, _)| *op == "read").unwrap().1;
    assert!(
        reads <= 12,
        "{reads} read requests for {} bytes",
        data.len()
    );
    blocking(move || handle.unmount().unwrap()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn directories_are_listed_with_one_opendir_for_the_whole_mount() {
    if !can_mount("directories_are_listed_with_one_opendir_for_the_whole_mount") {
        return;
    }
    let f = fixture().await;
    let (handle, mp) = mount(&f, local(&f), Duration::from_secs(10), "mnt").await;
    let listings = blocking(move || {
        let list = |dir: &Path| {
            let mut names: Vec<String> = std::fs::read_dir(dir)
                .unwrap()
                .map(|e| e.unwrap().file_name().into_string().unwrap())
                .collect();
            names.sort();
            names
        };
        let mut all = Vec::new();
        for _ in 0..3 {
            all.push(list(&mp));
            all.push(list(&mp.join("sub")));
        }
        all
    })
    .await;
    assert_eq!(listings[0], ["small", "sub"]);
    assert_eq!(listings[1].len(), 12);
    assert!(listings.chunks(2).all(|pair| pair == &listings[0..2]));
    // The first opendir is answered "not implemented": the kernel then opens
    // directories itself, so six listings cost one opendir, not six.
    let stats = handle.stats();
    let opendirs = stats.ops.iter().find(|(op, _)| *op == "opendir").unwrap().1;
    assert_eq!(opendirs, 1);
    blocking(move || handle.unmount().unwrap()).await;
}
