//! The mount session in this process: its record is written at start and removed at the
//! end, and a mount whose serving process died is cleaned up from its record.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "tests: a failed step panics with its message"
)]

use std::path::Path;
use std::sync::Arc;
use thaw_fuse::mount::is_mounted;
use thaw_fuse::registry::{MountRegistry, ProcessId};
use thaw_fuse::session::{Image, MountSession, ReaderSource, SessionSpec};
use thaw_fuse::{FsConfig, MountOptions};
use thaw_store::{ChunkReader, ReaderConfig};
use thaw_tests::{built_small_store, can_mount, local_repo};

fn spec(mnt: &Path, upper: Option<&Path>) -> SessionSpec {
    SessionSpec {
        id: "0123456789abcdef".into(),
        mountpoint: mnt.to_path_buf(),
        fs: FsConfig::default(),
        options: MountOptions {
            threads: 2,
            auto_unmount: Some(false),
            writable: upper.map(Path::to_path_buf),
            ..Default::default()
        },
        record_trace: None,
        requested_by: "test".into(),
        daemon: None,
    }
}

/// A process id that no longer runs.
fn dead_process() -> ProcessId {
    let mut child = std::process::Command::new("true").spawn().expect("spawn");
    let id = ProcessId {
        pid: child.id(),
        start: 0,
    };
    child.wait().expect("wait");
    id
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_records_its_mount_and_cleans_up_after_a_dead_owner() {
    if !can_mount("a_session_records_its_mount_and_cleans_up_after_a_dead_owner") {
        return;
    }
    let (tmp, image) = built_small_store().await;
    let (_, repo) = local_repo(&tmp.path().join("store")).await;
    let manifest = Arc::new(repo.get_manifest(&image).await.expect("manifest"));
    let reader = ChunkReader::new(repo.packs().clone(), ReaderConfig::default()).expect("reader");
    let registry = MountRegistry::new(tmp.path().join("mounts"));
    let mnt = tmp.path().join("mnt");
    std::fs::create_dir(&mnt).expect("mkdir");

    // Opened by name (an id prefix), resolved, with the trace prefetch asked for (the
    // image has no trace: nothing to warm) and the shared reader.
    let prefix = &image.to_string()[..12];
    let shared = ReaderSource::Shared(reader.clone());
    let session = MountSession::open(
        &repo,
        prefix,
        shared,
        true,
        spec(&mnt, None),
        registry.clone(),
    )
    .await
    .expect("mount");
    let record = registry
        .find(&mnt)
        .expect("read")
        .expect("the mount is recorded");
    assert_eq!(
        (record.owner, record.image.as_str()),
        (ProcessId::current(), image.to_string().as_str())
    );
    assert_eq!(
        std::fs::read(mnt.join("text")).expect("read"),
        std::fs::read(tmp.path().join("src/text")).expect("src")
    );
    let end = session.end().await.expect("unmount");
    assert!(end.stats.bytes_served > 0);
    assert!(
        registry.find(&mnt).expect("read").is_none(),
        "the record is removed"
    );
    assert!(!is_mounted(&mnt));

    // A writable mount whose serving process "died": its record names a dead process.
    let upper = tmp.path().join("upper");
    let image_ref = Image {
        id: image,
        manifest,
    };
    let session = MountSession::start(
        reader,
        image_ref,
        spec(&mnt, Some(&upper)),
        registry.clone(),
        None,
    )
    .await
    .expect("mount");
    std::fs::write(mnt.join("new"), b"written").expect("write through the overlay");
    let mut record = session.record().clone();
    assert_eq!(record.upper.as_deref(), Some(upper.as_path()));
    assert_ne!(
        record.fuse_dir, record.mountpoint,
        "an overlay over a FUSE layer"
    );
    record.owner = dead_process();
    registry.write(&record).expect("rewrite");
    // Leave the mount up, as a killed process would.
    std::mem::forget(session);
    let cleaned = registry.clean_dead();
    assert_eq!(cleaned.len(), 1);
    assert!(
        !is_mounted(&mnt) && !is_mounted(&record.fuse_dir),
        "both layers unmounted"
    );
    assert!(registry.list().is_empty());
    assert_eq!(
        std::fs::read(upper.join("upper/new")).expect("kept"),
        b"written",
        "the upper keeps the writes"
    );
}

/// Mounts the small image through a reader with a disk cache, reads `files`, ends the
/// session; returns the reader (for what it fetched and cached).
async fn read_then_end(
    files: &[&str],
    bulk_after: Option<f64>,
    wait_for_all: bool,
) -> Arc<ChunkReader> {
    let (tmp, image) = built_small_store().await;
    let (_, repo) = local_repo(&tmp.path().join("store")).await;
    let manifest = Arc::new(repo.get_manifest(&image).await.expect("manifest"));
    let reader = ChunkReader::new(
        repo.packs().clone(),
        ReaderConfig {
            disk: Some((tmp.path().join("cache"), 1 << 30)),
            // The bulk fetch needs a disk cache that keeps what it fetches, as it does
            // for a remote store (from a local one it would not run at all).
            copy_local_store: true,
            ..Default::default()
        },
    )
    .expect("reader");
    let mnt = tmp.path().join("mnt");
    std::fs::create_dir(&mnt).expect("mkdir");
    let mut spec = spec(&mnt, None);
    spec.fs.bulk_after = bulk_after;
    let session = MountSession::start(
        reader.clone(),
        Image {
            id: image,
            manifest: manifest.clone(),
        },
        spec,
        MountRegistry::new(tmp.path().join("mounts")),
        None,
    )
    .await
    .expect("mount");
    for f in files {
        let path = mnt.join(f);
        tokio::task::spawn_blocking(move || std::fs::read(path).expect("read"))
            .await
            .expect("read task");
    }
    if wait_for_all {
        thaw_tests::eventually("every chunk of the image cached", || {
            manifest.chunks.iter().all(|c| reader.is_cached(&c.id))
        })
        .await;
    }
    session.end().await.expect("end");
    reader
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reading_most_of_an_image_fetches_the_rest_in_bulk() {
    if !can_mount("reading_most_of_an_image_fetches_the_rest_in_bulk") {
        return;
    }
    // d/random is 3 MiB of the image's 3.8 MB: past a quarter, so the rest (text and
    // the twenty small files) arrives without being read, as a prefetch.
    let reader = read_then_end(&["d/random"], Some(0.25), true).await;
    let s = reader.stats();
    assert!(s.prefetched_chunks >= 20, "{s:?}");
    // A small read stays below the threshold: nothing is fetched in bulk.
    let reader = read_then_end(&["d/f0"], Some(0.25), false).await;
    assert_eq!(reader.stats().prefetched_chunks, 0, "{:?}", reader.stats());
    // Turned off, the large read fetches nothing more either.
    let reader = read_then_end(&["d/random"], None, false).await;
    assert_eq!(reader.stats().prefetched_chunks, 0, "{:?}", reader.stats());
}

/// 400 small files in ten directories (and one empty file), built into a local store.
async fn built_many_files() -> (tempfile::TempDir, thaw_core::ImageId) {
    let tmp = tempfile::tempdir().expect("tempdir");
    let src = tmp.path().join("src");
    for i in 0..400u64 {
        let dir = src.join(format!("dir{}", i % 10));
        std::fs::create_dir_all(&dir).expect("mkdir");
        let data = thaw_tests::pseudo_random(2_000 + i as usize * 7, i);
        std::fs::write(dir.join(format!("file{i}")), data).expect("write");
    }
    std::fs::write(src.join("empty"), b"").expect("write");
    let (_, repo) = local_repo(&tmp.path().join("store")).await;
    let r = thaw_image::build(
        &repo,
        thaw_image::BuildSource::Directory(src),
        thaw_image::BuildOptions::default(),
    )
    .await
    .expect("build");
    (tmp, r.image)
}

fn op(session: &MountSession, name: &str) -> u64 {
    session
        .stats()
        .ops
        .iter()
        .find(|(op, _)| *op == name)
        .expect("op")
        .1
}

/// Starts a session over [`built_many_files`] with a disk cache and the default memory
/// cache (so the bulk fetch runs).
async fn many_files_session(tmp: &tempfile::TempDir, image: thaw_core::ImageId) -> MountSession {
    let config = ReaderConfig {
        disk: Some((tmp.path().join("cache"), 1 << 30)),
        ..Default::default()
    };
    let reader = reader_for(tmp, config).await;
    many_files_session_with(tmp, image, reader).await
}

/// A reader of the local store under `tmp`.
async fn reader_for(tmp: &tempfile::TempDir, config: ReaderConfig) -> Arc<ChunkReader> {
    let (_, repo) = local_repo(&tmp.path().join("store")).await;
    ChunkReader::new(repo.packs().clone(), config).expect("reader")
}

/// Starts a session over [`built_many_files`] reading through `reader`.
async fn many_files_session_with(
    tmp: &tempfile::TempDir,
    image: thaw_core::ImageId,
    reader: Arc<ChunkReader>,
) -> MountSession {
    let (_, repo) = local_repo(&tmp.path().join("store")).await;
    let manifest = Arc::new(repo.get_manifest(&image).await.expect("manifest"));
    let mnt = tmp.path().join("mnt");
    std::fs::create_dir(&mnt).expect("mkdir");
    let image = Image {
        id: image,
        manifest,
    };
    let registry = MountRegistry::new(tmp.path().join("mounts"));
    MountSession::start(reader, image, spec(&mnt, None), registry, None)
        .await
        .expect("mount")
}

/// Reads the files numbered `range` (but those in `dir{skip}`) through the mount under
/// `tmp` and checks their bytes against the source.
fn read_files(
    tmp: &tempfile::TempDir,
    range: std::ops::Range<u64>,
    skip: Option<u64>,
) -> tokio::task::JoinHandle<()> {
    let (src, mnt) = (tmp.path().join("src"), tmp.path().join("mnt"));
    tokio::task::spawn_blocking(move || {
        for i in range.filter(|i| Some(i % 10) != skip) {
            let rel = format!("dir{}/file{i}", i % 10);
            let got = std::fs::read(mnt.join(&rel)).expect("read");
            assert_eq!(got, std::fs::read(src.join(&rel)).expect("source"), "{rel}");
        }
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_workload_opening_most_files_is_then_served_by_the_kernels_caches() {
    if !can_mount("a_workload_opening_most_files_is_then_served_by_the_kernels_caches") {
        return;
    }
    let (tmp, image) = built_many_files().await;
    let session = many_files_session(&tmp, image).await;
    // 320 of 400 files: past the 150 distinct files (and a tenth of the files) that mark
    // a workload reading most of the image.
    assert_eq!(thaw_fuse::session::opens_to_warm(401), 150);
    read_files(&tmp, 0..320, None).await.expect("first reads");
    let opens = warmed_then_opened_by_the_kernel(&tmp, &session).await;
    // The warming begins at the 150th distinct file while the workload still reads. Its
    // threads' first opens, up to one each, are answered "not implemented"; from the first
    // such answer the kernel sends no open for any file, so the workload's opens of its
    // last files may go uncounted (CI once counted 310).
    let warming = thaw_fuse::session::WARM_THREADS as u64;
    assert!((150..=320 + warming).contains(&opens), "{opens} opens");
    session.end().await.expect("end");
}

/// Waits until the warming has read all 400 non-empty files of [`built_many_files`], then
/// reads the last 80 through the mount: from then on the kernel opens files itself, so
/// they cost no open request, their bytes come from its page cache (no read request),
/// and they are right. Returns the opens counted.
async fn warmed_then_opened_by_the_kernel(tmp: &tempfile::TempDir, session: &MountSession) -> u64 {
    thaw_tests::eventually("every non-empty file read into the kernel's caches", || {
        session.stats().warmed_files == 400
    })
    .await;
    let (opens, reads) = (op(session, "open"), op(session, "read"));
    read_files(tmp, 320..400, None).await.expect("last reads");
    assert_eq!(op(session, "open"), opens, "the kernel opens files itself");
    // The warming spliced the files to /dev/null: their pages are in the kernel's cache.
    assert_eq!(
        op(session, "read"),
        reads,
        "the kernel serves the bytes itself"
    );
    opens
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn opening_the_same_files_again_and_again_does_not_warm_the_image() {
    if !can_mount("opening_the_same_files_again_and_again_does_not_warm_the_image") {
        return;
    }
    let (tmp, image) = built_many_files().await;
    let session = many_files_session(&tmp, image).await;
    // A server opening the same ten files for every request: 400 opens, ten files.
    for _ in 0..40 {
        read_files(&tmp, 0..10, None).await.expect("reads");
    }
    assert_eq!(op(&session, "open"), 400);
    assert_eq!(session.stats().files_opened, 10);
    // Only distinct files count: the warming starts once 150 have been opened.
    let mnt = tmp.path().join("mnt");
    let mut opened_when_warming_seen = None;
    for i in 10..400u64 {
        let rel = format!("dir{}/file{i}", i % 10);
        let path = mnt.join(rel);
        tokio::task::spawn_blocking(move || std::fs::read(path))
            .await
            .expect("join")
            .expect("read");
        let stats = session.stats();
        if stats.warmed_files > 0 {
            opened_when_warming_seen = Some(stats.files_opened);
            break;
        }
    }
    thaw_tests::eventually("every non-empty file warmed", || {
        session.stats().warmed_files == 400
    })
    .await;
    if let Some(opened) = opened_when_warming_seen {
        assert!(opened >= 150, "warming began after {opened} distinct files");
    }
    session.end().await.expect("end");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_local_image_larger_than_half_of_memory_is_warmed_without_a_copy_in_the_disk_cache() {
    let name =
        "a_local_image_larger_than_half_of_memory_is_warmed_without_a_copy_in_the_disk_cache";
    if !can_mount(name) {
        return;
    }
    let (tmp, image) = built_many_files().await;
    // The 400 files hold about 2 MB: a 1 MiB memory cache cannot keep a bulk fetch, and
    // the disk cache is on the store's filesystem (read in place), so a bulk fetch could
    // only copy the store into it.
    let config = ReaderConfig {
        disk: Some((tmp.path().join("cache"), 1 << 30)),
        memory_bytes: 1 << 20,
        ..Default::default()
    };
    let reader = reader_for(&tmp, config).await;
    assert!(reader.reads_local_store());
    let session = many_files_session_with(&tmp, image, reader.clone()).await;
    read_files(&tmp, 0..320, None).await.expect("first reads");
    warmed_then_opened_by_the_kernel(&tmp, &session).await;
    let stats = reader.stats();
    assert_eq!(stats.prefetched_chunks, 0, "no bulk fetch: {stats:?}");
    assert_eq!(
        reader.cache_usage().disk_entries,
        0,
        "nothing copied to the disk cache"
    );
    session.end().await.expect("end");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_kernel_warming_leaves_a_directory_mounted_over_alone() {
    if !can_mount("the_kernel_warming_leaves_a_directory_mounted_over_alone") {
        return;
    }
    let (tmp, image) = built_many_files().await;
    let session = many_files_session(&tmp, image).await;
    // Another filesystem over dir3, holding a regular file and a FIFO under names of
    // the image's files there: the warming must neither read them nor block on the FIFO.
    let host = tmp.path().join("host");
    std::fs::create_dir(&host).expect("mkdir");
    std::fs::write(host.join("file3"), b"not the image").expect("write");
    let mkfifo = std::process::Command::new("mkfifo")
        .arg(host.join("file13"))
        .status();
    assert!(mkfifo.expect("mkfifo").success());
    let over = tmp.path().join("mnt/dir3");
    let bind = std::process::Command::new("mount")
        .args(["--bind".as_ref(), host.as_os_str(), over.as_os_str()])
        .status();
    assert!(bind.expect("mount --bind").success());
    read_files(&tmp, 0..350, Some(3)).await.expect("reads");
    thaw_tests::eventually("the 360 files outside dir3 warmed", || {
        session.stats().warmed_files == 360
    })
    .await;
    let unbind = std::process::Command::new("umount").arg(&over).status();
    assert!(unbind.expect("umount").success());
    session.end().await.expect("end");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_name_is_looked_up_once() {
    if !can_mount("a_missing_name_is_looked_up_once") {
        return;
    }
    let (tmp, image) = built_many_files().await;
    let session = many_files_session(&tmp, image).await;
    let mnt = tmp.path().join("mnt");
    let before = op(&session, "lookup");
    // A dynamic loader or an interpreter probes the same missing paths again and again.
    for _ in 0..5 {
        let missing = mnt.join("dir1/not-in-the-image.so");
        let err = tokio::task::spawn_blocking(move || std::fs::metadata(missing))
            .await
            .expect("join")
            .expect_err("a missing name");
        assert_eq!(err.kind(), std::io::ErrorKind::NotFound);
    }
    // dir1 itself, then the missing name: once each, the kernel remembers both.
    assert_eq!(op(&session, "lookup") - before, 2);
    // Names the image has are still found next to it.
    assert!(mnt.join("dir1/file1").is_file());
    session.end().await.expect("end");
}
