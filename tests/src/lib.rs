//! Shared test support: the tree-comparison walker (the round-trip oracle), the
//! generated edge-case tree, and helpers to open stores and skip tests that need an
//! environment this machine may not have.

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

/// Prints why a test did not run; the test then returns early. Written to the stderr
/// handle itself, which the test harness does not capture, so the reason is always seen.
pub fn skip(test: &str, why: &str) {
    use std::io::Write;
    let _ = writeln!(std::io::stderr(), "SKIPPED {test}: {why}");
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
