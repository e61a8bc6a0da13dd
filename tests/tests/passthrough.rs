//! FUSE passthrough: files whose chunks are all cached, or read whole from a local store
//! read in place, are written whole into the whole-file cache after their last open, and
//! later opens are answered with the local
//! file, so the kernel reads it without one `read` request reaching thaw; under an
//! overlay too (copy-up included); an entry left by an earlier process is verified before
//! it is used and a damaged one is deleted; the cache's directory removed under a mount
//! is made again; and no passthrough while a trace is recorded.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "tests: a failed step panics with its message"
)]

use std::path::{Path, PathBuf};
use std::sync::Arc;
use thaw_core::{ImageId, Manifest};
use thaw_fuse::registry::MountRegistry;
use thaw_fuse::session::{Image, MountSession, SessionSpec};
use thaw_fuse::{FsConfig, MountOptions, StatsSnapshot};
use thaw_store::read::cache::FileKey;
use thaw_store::{ChunkReader, ReaderConfig};
use thaw_tests::{built_small_store, can_mount, eventually, local_repo};

struct Setup {
    tmp: tempfile::TempDir,
    image: ImageId,
    manifest: Arc<Manifest>,
    repo: thaw_store::Repository,
}

async fn setup() -> Setup {
    let (tmp, image) = built_small_store().await;
    let (_, repo) = local_repo(&tmp.path().join("store")).await;
    let manifest = Arc::new(repo.get_manifest(&image).await.expect("manifest"));
    Setup {
        tmp,
        image,
        manifest,
        repo,
    }
}

impl Setup {
    /// A reader with a disk cache and a whole-file cache in `cache/` (a new reader over
    /// the same directory is what a restarted process sees).
    fn reader(&self) -> Arc<ChunkReader> {
        ChunkReader::new(
            self.repo.packs().clone(),
            ReaderConfig {
                disk: Some((self.tmp.path().join("cache"), 1 << 30)),
                whole_files: 1 << 30,
                ..Default::default()
            },
        )
        .expect("reader")
    }

    /// A reader like [`Self::reader`] whose memory tier keeps nothing: chunks of the local
    /// store (on the cache's filesystem, read in place) are then cached nowhere.
    fn reader_without_memory(&self) -> Arc<ChunkReader> {
        ChunkReader::new(
            self.repo.packs().clone(),
            ReaderConfig {
                memory_bytes: 1,
                disk: Some((self.tmp.path().join("cache"), 1 << 30)),
                whole_files: 1 << 30,
                ..Default::default()
            },
        )
        .expect("reader")
    }

    fn extents(&self, file: &str) -> Vec<thaw_core::manifest::FileExtent> {
        let ino = file
            .split('/')
            .try_fold(0, |dir, name| self.manifest.lookup(dir, name.as_bytes()))
            .expect("in the image");
        self.manifest.file_extents(ino)
    }

    async fn mount(
        &self,
        reader: &Arc<ChunkReader>,
        name: &str,
        upper: Option<&Path>,
        trace: Option<PathBuf>,
    ) -> (MountSession, PathBuf) {
        let mnt = self.tmp.path().join(name);
        std::fs::create_dir_all(&mnt).expect("mkdir");
        let spec = SessionSpec {
            id: "0123456789abcdef".into(),
            mountpoint: mnt.clone(),
            fs: FsConfig {
                bulk_after: None,
                ..Default::default()
            },
            options: MountOptions {
                threads: 2,
                auto_unmount: Some(false),
                writable: upper.map(Path::to_path_buf),
                ..Default::default()
            },
            record_trace: trace,
            requested_by: "test".into(),
            daemon: None,
        };
        let image = Image {
            id: self.image,
            manifest: self.manifest.clone(),
        };
        let registry = MountRegistry::new(self.tmp.path().join("mounts"));
        let session = MountSession::start(reader.clone(), image, spec, registry, None)
            .await
            .expect("mount");
        (session, mnt)
    }

    /// Reads `files` through a first mount and waits until they are whole in the cache;
    /// `false` (after saying why) where the kernel has no passthrough.
    async fn make_whole(&self, reader: &Arc<ChunkReader>, files: &[&str], test: &str) -> bool {
        let (first, mnt) = self.mount(reader, "first", None, None).await;
        for f in files {
            assert_eq!(read(mnt.join(f)).await, self.source(f), "{f}");
        }
        if !kernel_has_passthrough(&first.stats(), test) {
            return false;
        }
        eventually("the files written whole", || {
            first.stats().passthrough.files.materialised == files.len() as u64
        })
        .await;
        first.end().await.expect("end");
        true
    }

    fn source(&self, file: &str) -> Vec<u8> {
        std::fs::read(self.tmp.path().join("src").join(file)).expect("source")
    }

    /// The whole-file cache entry of `file` (a path in the image).
    fn entry(&self, file: &str) -> PathBuf {
        let key = FileKey::of(&self.extents(file));
        let name = self
            .tmp
            .path()
            .join("cache/files")
            .read_dir()
            .expect("files dir")
            .map(|e| e.expect("entry").path())
            .find(|p| key.to_string() == p.file_name().unwrap().to_string_lossy()[..12]);
        name.expect("the file is whole in the cache")
    }
}

async fn read(path: PathBuf) -> Vec<u8> {
    tokio::task::spawn_blocking(move || std::fs::read(&path).expect("read"))
        .await
        .expect("read task")
}

fn reads(s: &StatsSnapshot) -> u64 {
    s.ops.iter().find(|(n, _)| *n == "read").map_or(0, |o| o.1)
}

/// Passthrough needs the kernel's support (Linux 6.9+, `CONFIG_FUSE_PASSTHROUGH`); say
/// so and stop where it has none, after checking that everything was still served.
fn kernel_has_passthrough(s: &StatsSnapshot, test: &str) -> bool {
    if !s.passthrough.active {
        thaw_tests::skip(test, "the kernel did not accept FUSE passthrough");
        return false;
    }
    true
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cached_files_are_read_by_the_kernel_without_reaching_thaw() {
    let test = "cached_files_are_read_by_the_kernel_without_reaching_thaw";
    if !can_mount(test) {
        return;
    }
    let s = setup().await;
    let reader = s.reader();
    let (first, mnt) = s.mount(&reader, "mnt1", None, None).await;
    // d/random is 3 MiB in several chunks; d/f0 is under the 128 KiB minimum.
    assert_eq!(read(mnt.join("d/random")).await, s.source("d/random"));
    assert_eq!(read(mnt.join("d/f0")).await, s.source("d/f0"));
    if !kernel_has_passthrough(&first.stats(), test) {
        return;
    }
    eventually("d/random written whole", || {
        first.stats().passthrough.files.materialised == 1
    })
    .await;
    assert_eq!(
        first.stats().passthrough.files.files,
        1,
        "d/f0 is too small"
    );
    first.end().await.expect("end");

    // A fresh mount (no page cache of its own): the open is passed through and the
    // kernel reads every byte from the local file.
    let (second, mnt) = s.mount(&reader, "mnt2", None, None).await;
    assert_eq!(read(mnt.join("d/random")).await, s.source("d/random"));
    let stats = second.stats();
    assert_eq!(stats.passthrough.opens, 1, "{}", stats.render());
    assert_eq!(reads(&stats), 0, "no read reached thaw: {}", stats.render());
    // A file not whole in the cache is still served through reads.
    assert_eq!(read(mnt.join("text")).await, s.source("text"));
    assert!(reads(&second.stats()) > 0);
    // Two opens at once share the one backing file.
    let path = mnt.join("d/random");
    let both = tokio::task::spawn_blocking(move || {
        let a = std::fs::File::open(&path).expect("open a");
        let b = std::fs::read(&path).expect("read b");
        drop(a);
        b
    })
    .await
    .expect("task");
    assert_eq!(both, s.source("d/random"));
    assert_eq!(second.stats().passthrough.opens, 2);
    assert_eq!(second.stats().passthrough.refused, 0);
    second.end().await.expect("end");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn files_read_whole_from_a_local_store_read_in_place_are_passed_through() {
    let test = "files_read_whole_from_a_local_store_read_in_place_are_passed_through";
    if !can_mount(test) {
        return;
    }
    let s = setup().await;
    let reader = s.reader_without_memory();
    assert!(
        reader.reads_store_in_place(),
        "store and cache share a disk"
    );
    let (first, mnt) = s.mount(&reader, "mnt1", None, None).await;
    // A part of d/random only, as a program reads a library: not worth a whole copy.
    let part = tokio::task::spawn_blocking({
        let path = mnt.join("d/random");
        move || {
            use std::io::Read;
            let mut buf = vec![0; 4096];
            std::fs::File::open(path)
                .and_then(|mut f| f.read_exact(&mut buf))
                .expect("read a part");
            buf
        }
    });
    assert_eq!(part.await.expect("task"), s.source("d/random")[..4096]);
    // `text` read whole; whole-file jobs run in order, so once it is whole any job the
    // partial read had queued is done too.
    assert_eq!(read(mnt.join("text")).await, s.source("text"));
    if !kernel_has_passthrough(&first.stats(), test) {
        return;
    }
    eventually("text written whole", || {
        first.stats().passthrough.files.materialised == 1
    })
    .await;
    assert!(s.entry("text").exists());
    assert_eq!(
        first.stats().passthrough.files.files,
        1,
        "d/random was only read in part"
    );
    // Read whole, d/random is written whole from the store: its chunks are cached nowhere.
    assert_eq!(read(mnt.join("d/random")).await, s.source("d/random"));
    eventually("d/random written whole", || {
        first.stats().passthrough.files.materialised == 2
    })
    .await;
    assert!(!reader.all_cached(&s.extents("d/random")));
    assert_eq!(
        std::fs::read(s.entry("d/random")).expect("entry"),
        s.source("d/random")
    );
    first.end().await.expect("end");

    let (second, mnt) = s.mount(&reader, "mnt2", None, None).await;
    assert_eq!(read(mnt.join("d/random")).await, s.source("d/random"));
    let stats = second.stats();
    assert_eq!(stats.passthrough.opens, 1, "{}", stats.render());
    assert_eq!(reads(&stats), 0, "no read reached thaw: {}", stats.render());
    second.end().await.expect("end");
}

/// No mount needed: the whole-file writer itself, with a chunk that left the disk cache.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_chunk_gone_from_the_disk_cache_is_read_from_the_store_again() {
    let s = setup().await;
    let reader = ChunkReader::new(
        s.repo.packs().clone(),
        ReaderConfig {
            memory_bytes: 1,
            disk: Some((s.tmp.path().join("cache"), 1 << 30)),
            whole_files: 1 << 30,
            copy_local_store: true,
            ..Default::default()
        },
    )
    .expect("reader");
    let extents = s.extents("d/random");
    let ids: Vec<_> = extents.iter().filter_map(|e| e.chunk).collect();
    assert!(ids.len() > 1, "d/random is several chunks");
    reader.read_many(&ids).await.expect("read");
    eventually("the chunks in the disk cache", || {
        reader.all_cached(&extents)
    })
    .await;
    assert!(reader.can_make_whole(&extents, false));
    let hex = ids[0].to_string();
    std::fs::remove_file(s.tmp.path().join("cache").join(&hex[..2]).join(&hex)).expect("rm");
    let key = FileKey::of(&extents);
    let size = s.source("d/random").len() as u64;
    let (r, e) = (reader.clone(), extents.clone());
    tokio::task::spawn_blocking(move || r.materialise(key, size, &e))
        .await
        .expect("task")
        .expect("written whole");
    assert_eq!(
        std::fs::read(s.entry("d/random")).expect("entry"),
        s.source("d/random")
    );
    assert_eq!(
        reader.stats().fetched_chunks,
        ids.len() as u64 + 1,
        "one chunk again"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn passthrough_works_under_an_overlay_with_copy_up() {
    let test = "passthrough_works_under_an_overlay_with_copy_up";
    if !can_mount(test) {
        return;
    }
    let s = setup().await;
    let reader = s.reader();
    if !s.make_whole(&reader, &["d/random"], test).await {
        return;
    }

    let upper = s.tmp.path().join("upper");
    let (session, mnt) = s.mount(&reader, "rw", Some(&upper), None).await;
    assert_eq!(read(mnt.join("d/random")).await, s.source("d/random"));
    let stats = session.stats();
    assert_eq!(
        (stats.passthrough.opens, reads(&stats)),
        (1, 0),
        "{}",
        stats.render()
    );
    // Copy-up reads the lower file (through passthrough) and keeps every byte.
    let path = mnt.join("d/random");
    tokio::task::spawn_blocking(move || {
        use std::io::{Seek, Write};
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .open(&path)
            .expect("open for writing");
        f.seek(std::io::SeekFrom::Start(100)).expect("seek");
        f.write_all(b"changed").expect("write");
    })
    .await
    .expect("task");
    let mut want = s.source("d/random");
    want[100..107].copy_from_slice(b"changed");
    assert_eq!(read(mnt.join("d/random")).await, want);
    assert_eq!(read(upper.join("upper/d/random")).await, want);
    session.end().await.expect("end");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn entries_of_an_earlier_process_are_verified_and_damaged_ones_deleted() {
    let test = "entries_of_an_earlier_process_are_verified_and_damaged_ones_deleted";
    if !can_mount(test) {
        return;
    }
    let s = setup().await;
    let reader = s.reader();
    if !s.make_whole(&reader, &["d/random", "text"], test).await {
        return;
    }
    drop(reader);
    // One bit flipped in text's entry, as bit rot or a torn write would.
    let damaged = s.entry("text");
    let mut bytes = std::fs::read(&damaged).expect("entry");
    bytes[1000] ^= 1;
    std::fs::set_permissions(
        &damaged,
        std::os::unix::fs::PermissionsExt::from_mode(0o644),
    )
    .expect("chmod");
    std::fs::write(&damaged, &bytes).expect("damage");

    // A new reader (a restarted process): both entries are unverified, so the first
    // opens are served through reads and queue a check.
    let reader = s.reader();
    let (second, mnt) = s.mount(&reader, "mnt2", None, None).await;
    for f in ["d/random", "text"] {
        assert_eq!(read(mnt.join(f)).await, s.source(f), "{f}");
    }
    assert_eq!(second.stats().passthrough.opens, 0);
    eventually("one entry verified, one rejected", || {
        let f = second.stats().passthrough.files;
        (f.verified, f.rejected) == (1, 1)
    })
    .await;
    // The damaged entry is gone; text may have been written whole again since, from
    // its verified chunks, after its read was released.
    let now = std::fs::read(&damaged).ok();
    assert!(
        now.is_none_or(|b| b == s.source("text")),
        "the damaged bytes are never kept"
    );
    // The verified one is passed through now.
    for f in ["d/random", "text"] {
        assert_eq!(read(mnt.join(f)).await, s.source(f), "{f}");
    }
    let stats = second.stats();
    assert!(stats.passthrough.opens >= 1, "{}", stats.render());
    second.end().await.expect("end");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn whole_files_are_written_again_after_their_directory_is_removed() {
    let test = "whole_files_are_written_again_after_their_directory_is_removed";
    if !can_mount(test) {
        return;
    }
    let s = setup().await;
    let reader = s.reader();
    let (session, mnt) = s.mount(&reader, "mnt", None, None).await;
    assert_eq!(read(mnt.join("d/random")).await, s.source("d/random"));
    if !kernel_has_passthrough(&session.stats(), test) {
        return;
    }
    eventually("d/random written whole", || {
        session.stats().passthrough.files.materialised == 1
    })
    .await;
    // An operator clears the cache under the running mount.
    std::fs::remove_dir_all(s.tmp.path().join("cache/files")).expect("rm");
    assert_eq!(read(mnt.join("text")).await, s.source("text"));
    eventually("text written whole into a new directory", || {
        session.stats().passthrough.files.materialised == 2
    })
    .await;
    assert!(s.entry("text").exists());
    // The vanished entry is dropped, served through reads, and written whole again.
    assert_eq!(read(mnt.join("d/random")).await, s.source("d/random"));
    eventually("d/random written whole again", || {
        session.stats().passthrough.files.materialised == 3
    })
    .await;
    let stats = session.stats();
    assert_eq!(stats.passthrough.files.failed, 0, "{}", stats.render());
    session.end().await.expect("end");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_passthrough_while_a_trace_is_recorded_or_without_a_whole_file_cache() {
    let test = "no_passthrough_while_a_trace_is_recorded_or_without_a_whole_file_cache";
    if !can_mount(test) {
        return;
    }
    let s = setup().await;
    let reader = s.reader();
    let trace = s.tmp.path().join("trace");
    let (session, mnt) = s.mount(&reader, "traced", None, Some(trace)).await;
    assert_eq!(read(mnt.join("d/random")).await, s.source("d/random"));
    let stats = session.stats();
    assert!(!stats.passthrough.active, "{}", stats.render());
    assert!(reads(&stats) > 0);
    let end = session.end().await.expect("end");
    assert!(
        end.trace_records.unwrap_or(0) > 0,
        "the trace saw the reads"
    );
    assert_eq!(reader.files().unwrap().stats().materialised, 0);

    let plain = ChunkReader::new(s.repo.packs().clone(), ReaderConfig::default()).unwrap();
    let (session, mnt) = s.mount(&plain, "plain", None, None).await;
    assert_eq!(read(mnt.join("d/random")).await, s.source("d/random"));
    assert!(!session.stats().passthrough.active);
    session.end().await.expect("end");
}
