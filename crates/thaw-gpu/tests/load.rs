//! Loading safetensors from an image: into host memory always, into GPU memory where a
//! CUDA driver exists, and from real model weights where scripts/test.sh fetched them.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "tests: a failed step panics with its message"
)]

use std::path::Path;
use std::sync::Arc;
use thaw_gpu::cuda::{cuda_available, CudaSink};
use thaw_gpu::{load, HostSink, LoadError, LoadOptions};
use thaw_image::{build, BuildOptions, BuildSource};
use thaw_store::{BlobStore, ChunkReader, ObjectStoreBackend, ReaderConfig, Repository};

fn skip(test: &str, why: &str) {
    use std::io::Write;
    let _ = writeln!(std::io::stderr(), "SKIPPED {test}: {why}");
}

/// A safetensors file: a random F32 tensor, an all-zero tensor (stored as a zero run),
/// and a small I64 one.
fn synthetic(path: &Path) -> Vec<u8> {
    let a = 3 << 20; // bytes
    let z = 5 << 20;
    let c = 64;
    let header = format!(
        r#"{{"__metadata__":{{"format":"pt"}},"a":{{"dtype":"F32","shape":[{}],"data_offsets":[0,{a}]}},"zeros":{{"dtype":"F32","shape":[{}],"data_offsets":[{a},{}]}},"c":{{"dtype":"I64","shape":[8],"data_offsets":[{},{}]}}}}"#,
        a / 4,
        z / 4,
        a + z,
        a + z,
        a + z + c
    );
    let mut f = (header.len() as u64).to_le_bytes().to_vec();
    f.extend_from_slice(header.as_bytes());
    let mut x = 0x9E37_79B9_7F4A_7C15u64;
    for _ in 0..a {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        f.push(x as u8);
    }
    f.extend(std::iter::repeat_n(0u8, z));
    f.extend((0..c).map(|i| i as u8));
    std::fs::write(path, &f).unwrap();
    f
}

/// Builds `dir` into a fresh local store; returns a reader and the manifest.
async fn image_of(dir: &Path, store: &Path) -> (Arc<ChunkReader>, thaw_core::Manifest) {
    let backend: Arc<dyn BlobStore> = Arc::new(ObjectStoreBackend::local(store).unwrap());
    let repo = Repository::open(backend).await.unwrap();
    let r = build(
        &repo,
        BuildSource::Directory(dir.to_path_buf()),
        BuildOptions::default(),
    )
    .await
    .unwrap();
    let manifest = repo.get_manifest(&r.image).await.unwrap();
    let reader = ChunkReader::new(repo.packs().clone(), ReaderConfig::default()).unwrap();
    (reader, manifest)
}

fn options() -> LoadOptions {
    LoadOptions {
        chunks_in_flight: 4,
        hash: true,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_synthetic_file_loads_exactly_through_a_small_ring() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    std::fs::create_dir_all(src.join("model")).unwrap();
    let bytes = synthetic(&src.join("model/w.safetensors"));
    let (reader, manifest) = image_of(&src, &tmp.path().join("store")).await;
    // Three staging buffers of 1 MiB: the ring wraps many times.
    let (sink, report) = load(
        reader,
        &manifest,
        "/model/w.safetensors",
        HostSink::new(3, 1 << 20),
        options(),
    )
    .await
    .unwrap();
    let data = &bytes[report.header.data_offset as usize..];
    assert_eq!(sink.data.len(), data.len());
    assert!(sink.data == data, "loaded bytes differ from the file's");
    assert_eq!(
        report.blake3.unwrap(),
        blake3::hash(data).to_hex().to_string()
    );
    let names: Vec<&str> = report
        .header
        .tensors
        .iter()
        .map(|t| t.name.as_str())
        .collect();
    assert_eq!(names, ["a", "zeros", "c"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_files_and_paths_are_clear_errors() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    std::fs::create_dir_all(src.join("d")).unwrap();
    std::fs::write(src.join("notes.txt"), "not a safetensors file at all").unwrap();
    let (reader, manifest) = image_of(&src, &tmp.path().join("store")).await;
    let err = load(
        reader.clone(),
        &manifest,
        "notes.txt",
        HostSink::new(2, 1024),
        options(),
    )
    .await
    .unwrap_err();
    assert!(matches!(err, LoadError::BadHeader { .. }), "{err}");
    for path in ["d", "missing"] {
        let err = load(
            reader.clone(),
            &manifest,
            path,
            HostSink::new(2, 1024),
            options(),
        )
        .await
        .unwrap_err();
        assert!(matches!(err, LoadError::NotAFile(_)), "{err}");
    }
}

/// Real weights: `THAW_WEIGHTS` names a model.safetensors (scripts/test.sh fetches one).
fn real_weights(test: &str) -> Option<std::path::PathBuf> {
    match std::env::var_os("THAW_WEIGHTS") {
        Some(p) if Path::new(&p).is_file() => Some(p.into()),
        _ => {
            skip(test, "THAW_WEIGHTS is not set (scripts/test.sh sets it)");
            None
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn real_model_weights_load_exactly() {
    let Some(weights) = real_weights("real_model_weights_load_exactly") else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    std::fs::create_dir_all(&src).unwrap();
    std::fs::copy(&weights, src.join("model.safetensors")).unwrap();
    let (reader, manifest) = image_of(&src, &tmp.path().join("store")).await;
    let (sink, report) = load(
        reader,
        &manifest,
        "model.safetensors",
        HostSink::new(4, 8 << 20),
        options(),
    )
    .await
    .unwrap();
    let file = std::fs::read(&weights).unwrap();
    assert!(sink.data[..] == file[report.header.data_offset as usize..]);
    assert!(
        report.header.tensors.len() > 50,
        "a transformer has many tensors"
    );
    assert!(report
        .header
        .tensors
        .iter()
        .any(|t| t.name.contains("embeddings")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn weights_reach_gpu_memory_intact() {
    if !cuda_available() {
        return skip(
            "weights_reach_gpu_memory_intact",
            "no CUDA driver on this machine",
        );
    }
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    std::fs::create_dir_all(&src).unwrap();
    let bytes = synthetic(&src.join("w.safetensors"));
    let (reader, manifest) = image_of(&src, &tmp.path().join("store")).await;
    let sink = CudaSink::new(0, 3, 1 << 20).unwrap();
    let (sink, report) = load(reader, &manifest, "w.safetensors", sink, options())
        .await
        .unwrap();
    let back = sink.to_host().unwrap();
    assert!(back[..] == bytes[report.header.data_offset as usize..]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn neighbouring_chunks_share_requests() {
    use thaw_store::blob::wrap::CountingStore;
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    std::fs::create_dir_all(&src).unwrap();
    let bytes = synthetic(&src.join("w.safetensors"));
    let store = tmp.path().join("store");
    let (_, manifest) = image_of(&src, &store).await;
    let chunks = manifest.chunks.len();
    // A fresh reader over a counting store: every GET is seen.
    let counting = CountingStore::new(Arc::new(ObjectStoreBackend::local(&store).unwrap()));
    let counters = counting.counters();
    let repo = Repository::open(Arc::new(counting)).await.unwrap();
    let reader = ChunkReader::new(repo.packs().clone(), ReaderConfig::default()).unwrap();
    let before = counters.snapshot().gets;
    let (sink, report) = load(
        reader,
        &manifest,
        "w.safetensors",
        HostSink::new(2, 1 << 20),
        options(),
    )
    .await
    .unwrap();
    assert!(sink.data[..] == bytes[report.header.data_offset as usize..]);
    let gets = counters.snapshot().gets - before;
    assert!(chunks >= 3, "{chunks} chunks");
    assert!(
        (gets as usize) < chunks,
        "{gets} GETs for {chunks} chunks: batches were not coalesced"
    );
}
