//! Shared test support: the tree-comparison walker (the round-trip oracle), the
//! generated edge-case tree, and helpers to open stores and skip tests that need an
//! environment this machine may not have.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "test support: a failed setup step panics the test with its message"
)]

/// The Kubernetes CRI API (`runtime.v1`): its generated client, for the CRI test.
#[allow(
    missing_docs,
    missing_debug_implementations,
    clippy::all,
    clippy::pedantic
)]
pub mod cri {
    include!(concat!(env!("OUT_DIR"), "/runtime.v1.rs"));
}
pub mod fixtures;
pub mod images;
pub mod treediff;

use std::sync::Arc;
use thaw_store::{BlobStore, ObjectStoreBackend, Repository};

/// Whether we run as root (device nodes, ownership and trusted xattrs need it).
pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// The variable under which a test that cannot run here fails instead of skipping.
/// `scripts/test.sh` (and so CI) sets it; plain `cargo test` on a laptop does not.
pub const STRICT_VAR: &str = "THAW_TESTS_STRICT";

/// Prints why a test did not run; the test then returns early. Written to the stderr
/// handle itself, which the test harness does not capture, so the reason is always seen.
/// Under [`STRICT_VAR`] it panics instead: there, a test that needs root, `/dev/fuse`
/// or a service the script starts must run.
pub fn skip(test: &str, why: &str) {
    use std::io::Write;
    if std::env::var_os(STRICT_VAR).is_some_and(|v| !v.is_empty() && v != "0") {
        panic!("{test} cannot run: {why} ({STRICT_VAR} is set, so this fails instead of skipping)");
    }
    let _ = writeln!(std::io::stderr(), "SKIPPED {test}: {why}");
}

/// Whether FUSE mounts can run here (root and `/dev/fuse`); says why not otherwise (and
/// fails under [`STRICT_VAR`]).
pub fn can_mount(test: &str) -> bool {
    if !is_root() || !std::path::Path::new("/dev/fuse").exists() {
        skip(test, "needs root and /dev/fuse");
        return false;
    }
    true
}

/// A repository on a fresh local directory store.
pub async fn local_repo(dir: &std::path::Path) -> (Arc<dyn BlobStore>, Repository) {
    let store: Arc<dyn BlobStore> = Arc::new(ObjectStoreBackend::local(dir).expect("local store"));
    let repo = Repository::open(store.clone())
        .await
        .expect("open repository");
    (store, repo)
}

/// Deterministic pseudo-random bytes (xorshift), fast enough for hundreds of MiB.
pub fn pseudo_random(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.truncate(len);
    out
}

/// A tree of a few files: compressible text, incompressible bytes, several chunks, and
/// twenty small neighbours (`d/f0`..`d/f19`) that share a pack in path order.
pub fn small_tree(dir: &std::path::Path) {
    std::fs::create_dir_all(dir.join("d")).expect("mkdir");
    std::fs::write(dir.join("text"), "compressible line\n".repeat(20_000)).expect("write");
    std::fs::write(dir.join("d/random"), pseudo_random(3 << 20, 11)).expect("write");
    for i in 0..20 {
        let data = pseudo_random(10_000 + i * 100, i as u64);
        std::fs::write(dir.join(format!("d/f{i}")), data).expect("write");
    }
}

/// [`small_tree`] under `src/` of a fresh temporary directory, built into a local store
/// under `store/` of it.
pub async fn built_small_store() -> (tempfile::TempDir, thaw_core::ImageId) {
    let tmp = tempfile::tempdir().expect("tempdir");
    small_tree(&tmp.path().join("src"));
    let (_, repo) = local_repo(&tmp.path().join("store")).await;
    let source = thaw_image::BuildSource::Directory(tmp.path().join("src"));
    let r = thaw_image::build(&repo, source, thaw_image::BuildOptions::default())
        .await
        .expect("build");
    (tmp, r.image)
}

/// Polls `done` every few milliseconds until it holds, or panics naming `what` after a
/// generous deadline: for effects that happen in the background (a cache write after the
/// reader got its bytes, a daemon's file), instead of a sleep.
pub async fn eventually(what: &str, done: impl Fn() -> bool) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while !done() {
        assert!(
            std::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
}
