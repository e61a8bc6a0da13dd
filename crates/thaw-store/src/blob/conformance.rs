//! The conformance suite every [`BlobStore`] must pass: in-memory and local backends in
//! `cargo test`, S3 (a moto server) in `scripts/test.sh`. It panics with a message on
//! the first violation, so call it from a test.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "a test suite: a failed check panics with its message"
)]

use crate::blob::BlobStore;
use crate::error::StoreError;
use bytes::Bytes;

/// Runs every check under a fresh key prefix, and cleans up after itself.
pub async fn run(store: &dyn BlobStore) {
    let base = format!("conformance-{:016x}", rand::random::<u64>());
    put_get_round_trip(store, &base).await;
    missing_objects(store, &base).await;
    ranges(store, &base).await;
    overwrite_is_atomic_replace(store, &base).await;
    create_if_absent(store, &base).await;
    listing(store, &base).await;
    delete(store, &base).await;
    large_object(store, &base).await;
    for o in store.list(&base).await.expect("list for cleanup") {
        store.delete(&o.key).await.expect("cleanup delete");
    }
}

async fn put_get_round_trip(s: &dyn BlobStore, base: &str) {
    let key = format!("{base}/a/b/object");
    s.put(&key, Bytes::from_static(b"hello world"))
        .await
        .expect("put");
    assert_eq!(s.get(&key).await.expect("get"), &b"hello world"[..]);
    let h = s.head(&key).await.expect("head");
    assert_eq!(h.size, 11, "head size");
    let empty = format!("{base}/empty");
    s.put(&empty, Bytes::new()).await.expect("put empty");
    assert!(s.get(&empty).await.expect("get empty").is_empty());
}

async fn missing_objects(s: &dyn BlobStore, base: &str) {
    let key = format!("{base}/does-not-exist");
    assert!(
        matches!(s.get(&key).await, Err(StoreError::NotFound { .. })),
        "get of a missing key is NotFound"
    );
    assert!(
        matches!(s.head(&key).await, Err(StoreError::NotFound { .. })),
        "head of a missing key is NotFound"
    );
    assert!(
        matches!(
            s.get_range(&key, 0..1).await,
            Err(StoreError::NotFound { .. })
        ),
        "range of a missing key is NotFound"
    );
}

async fn ranges(s: &dyn BlobStore, base: &str) {
    let key = format!("{base}/ranges");
    let data: Vec<u8> = (0..10_000u32).map(|i| (i % 251) as u8).collect();
    s.put(&key, Bytes::from(data.clone())).await.expect("put");
    for r in [0..1, 0..10_000, 9_999..10_000, 1234..5678] {
        let got = s
            .get_range(&key, r.start as u64..r.end as u64)
            .await
            .expect("get_range");
        assert_eq!(&got[..], &data[r.clone()], "range {r:?}");
    }
    assert!(s
        .get_range(&key, 5..5)
        .await
        .expect("empty range")
        .is_empty());
    assert!(
        s.get_range(&key, 9_000..20_000).await.is_err(),
        "a range past the end is an error, not short data"
    );
}

async fn overwrite_is_atomic_replace(s: &dyn BlobStore, base: &str) {
    let key = format!("{base}/overwrite");
    s.put(&key, Bytes::from_static(b"first version"))
        .await
        .expect("put 1");
    s.put(&key, Bytes::from_static(b"second"))
        .await
        .expect("put 2");
    assert_eq!(s.get(&key).await.expect("get"), &b"second"[..]);
    assert_eq!(s.head(&key).await.expect("head").size, 6);
}

/// Of 8 writers racing to create one key exactly one wins, and the winner's bytes stay.
async fn create_if_absent(s: &dyn BlobStore, base: &str) {
    let key = format!("{base}/create");
    let created = s
        .put_if_absent(&key, Bytes::from_static(b"first"))
        .await
        .expect("create");
    assert!(created, "a missing key is created");
    let again = s
        .put_if_absent(&key, Bytes::from_static(b"second"))
        .await
        .expect("create again");
    assert!(!again, "an existing key is not replaced");
    assert_eq!(s.get(&key).await.expect("get"), &b"first"[..]);
    let race = format!("{base}/race");
    let attempts = (0..8u8).map(|i| s.put_if_absent(&race, Bytes::from(vec![i; 4])));
    let results = futures::future::join_all(attempts).await;
    let winners: Vec<usize> = (0..8)
        .filter(|&i| *results[i].as_ref().expect("racing create"))
        .collect();
    assert_eq!(winners.len(), 1, "exactly one racing create wins");
    let winner = u8::try_from(winners[0]).expect("small");
    assert_eq!(s.get(&race).await.expect("get"), vec![winner; 4]);
}

async fn listing(s: &dyn BlobStore, base: &str) {
    let dir = format!("{base}/list");
    for k in ["x/1", "x/2", "x/deep/3", "y/4"] {
        s.put(&format!("{dir}/{k}"), Bytes::from(k.to_string()))
            .await
            .expect("put");
    }
    // A sibling whose name merely starts with the prefix must not be listed.
    s.put(&format!("{dir}/xx"), Bytes::from_static(b"no"))
        .await
        .expect("put");
    let keys: Vec<String> = s
        .list(&format!("{dir}/x"))
        .await
        .expect("list")
        .into_iter()
        .map(|o| o.key)
        .collect();
    assert_eq!(
        keys,
        vec![
            format!("{dir}/x/1"),
            format!("{dir}/x/2"),
            format!("{dir}/x/deep/3")
        ]
    );
    let all = s.list(&dir).await.expect("list all");
    assert_eq!(all.len(), 5);
    assert!(all.iter().all(|o| o.size > 0));
    assert!(s
        .list(&format!("{base}/nothing-here"))
        .await
        .expect("empty list")
        .is_empty());
}

async fn delete(s: &dyn BlobStore, base: &str) {
    let key = format!("{base}/delete-me");
    s.put(&key, Bytes::from_static(b"x")).await.expect("put");
    s.delete(&key).await.expect("delete");
    assert!(matches!(
        s.get(&key).await,
        Err(StoreError::NotFound { .. })
    ));
    s.delete(&key)
        .await
        .expect("deleting a missing key succeeds");
}

async fn large_object(s: &dyn BlobStore, base: &str) {
    let key = format!("{base}/large");
    let data: Vec<u8> = (0..6 * 1024 * 1024u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 24) as u8)
        .collect();
    s.put(&key, Bytes::from(data.clone()))
        .await
        .expect("put large");
    assert_eq!(s.get(&key).await.expect("get large").len(), data.len());
    let r = 5 * 1024 * 1024..5 * 1024 * 1024 + 4096;
    assert_eq!(
        &s.get_range(&key, r.start as u64..r.end as u64)
            .await
            .expect("range")[..],
        &data[r]
    );
}

#[cfg(test)]
mod tests {
    use crate::blob::backend::ObjectStoreBackend;
    use crate::blob::wrap::{CountingStore, RetryConfig, RetryStore};
    use std::sync::Arc;

    #[tokio::test]
    async fn memory_backend_conforms() {
        super::run(&ObjectStoreBackend::memory()).await;
    }

    #[tokio::test]
    async fn local_backend_conforms() {
        let dir = tempfile::tempdir().unwrap();
        super::run(&ObjectStoreBackend::local(dir.path()).unwrap()).await;
    }

    #[tokio::test]
    async fn wrapped_stores_conform() {
        let dir = tempfile::tempdir().unwrap();
        let local = Arc::new(ObjectStoreBackend::local(dir.path()).unwrap());
        let s = RetryStore::new(Arc::new(CountingStore::new(local)), RetryConfig::default());
        super::run(&s).await;
    }

    #[tokio::test]
    async fn open_store_parses_locations() {
        let dir = tempfile::tempdir().unwrap();
        let plain = crate::open_store(dir.path().to_str().unwrap()).unwrap();
        assert!(plain.describe().starts_with("file://"));
        let url = format!("file://{}", dir.path().join("sub").display());
        super::run(&*crate::open_store(&url).unwrap()).await;
        assert!(crate::open_store("ftp://x/y").is_err());
        assert!(crate::open_store("memory://").is_ok());
    }
}
