//! The store against a real S3 API. `scripts/test.sh` starts a moto server on
//! 127.0.0.1, creates a bucket and sets `THAW_TEST_S3_URL` and the `AWS_*` variables.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "tests: a failed step panics with its message"
)]

use thaw_image::{build, export, BuildOptions, BuildSource};
use thaw_store::{open_store, ChunkReader, ReaderConfig, Repository};
use thaw_tests::{fixtures, is_root, skip, treediff};

fn s3_url() -> Option<String> {
    std::env::var("THAW_TEST_S3_URL").ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s3_backend_conforms() {
    let Some(url) = s3_url() else {
        return skip(
            "s3_backend_conforms",
            "THAW_TEST_S3_URL is not set (scripts/test.sh starts moto and sets it)",
        );
    };
    let store = open_store(&format!("{url}/conformance")).expect("open s3 store");
    thaw_store::blob::conformance::run(&*store).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn edge_tree_round_trips_through_s3() {
    let Some(url) = s3_url() else {
        return skip(
            "edge_tree_round_trips_through_s3",
            "THAW_TEST_S3_URL is not set",
        );
    };
    if !is_root() {
        return skip("edge_tree_round_trips_through_s3", "needs root");
    }
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    std::fs::create_dir(&src).unwrap();
    fixtures::make_edge_tree(&src);
    let store = open_store(&format!("{url}/roundtrip-{:x}", rand_suffix())).unwrap();
    let repo = Repository::open(store.clone()).await.unwrap();
    let r = build(
        &repo,
        BuildSource::Directory(src.clone()),
        BuildOptions {
            tag: Some("edge".into()),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    // A second client sees the image, and reads it back verified.
    let repo2 = Repository::open(open_store(&store.describe()).unwrap())
        .await
        .unwrap();
    let id = repo2.resolve("edge").await.unwrap();
    assert_eq!(id, r.image);
    let m = repo2.get_manifest(&id).await.unwrap();
    let reader = ChunkReader::new(repo2.packs().clone(), ReaderConfig::default()).unwrap();
    let out = tmp.path().join("out");
    export(&reader, &m, &out).await.unwrap();
    treediff::assert_same(&src, &out, &[]);
}

fn rand_suffix() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64
}
