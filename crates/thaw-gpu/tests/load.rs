//! Loading safetensors from an image: into host memory always, into GPU memory where a
//! CUDA driver exists, and from real model weights where scripts/test.sh fetched them.
//! Every load compares every tensor with the source file; every failed load must leave
//! no allocation behind (the host sink counts them).
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "tests: a failed step panics with its message"
)]

mod common;
use common::{every_dtype, image_of, reader_over};
use std::path::Path;
use std::sync::Arc;
use thaw_gpu::cuda::{cuda_available, CudaSink};
use thaw_gpu::{load, tensor_checksums, Allocations, HostSink, LoadError, LoadOptions};
use thaw_store::blob::wrap::{FaultConfig, FaultyStore, RetryConfig, RetryStore};
use thaw_store::{BlobStore, ChunkReader, ObjectStoreBackend};

fn skip(test: &str, why: &str) {
    use std::io::Write;
    let _ = writeln!(std::io::stderr(), "SKIPPED {test}: {why}");
}

/// A safetensors file: a random F32 tensor, an all-zero tensor (stored as a zero run),
/// and a small I64 one.
fn synthetic(path: &Path) -> Vec<u8> {
    let a = 3 << 20; // bytes
    let z = 13 << 20; // past two of the largest chunks: whole zero chunks
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

/// Small slots, two workers, three slots each: pieces land out of order and slots wrap.
fn options() -> LoadOptions {
    LoadOptions {
        workers: 2,
        slots: 3,
        slot_bytes: 1 << 20,
        align: 0,
    }
}

/// Loads `path` into a counted host sink; the loaded data region, or the error (after
/// checking that the failed load left no allocation behind).
async fn load_host(
    reader: Arc<ChunkReader>,
    manifest: &thaw_core::Manifest,
    path: &str,
) -> Result<(Vec<u8>, thaw_gpu::LoadReport), LoadError> {
    let allocations = Allocations::default();
    let got = load(
        reader,
        manifest,
        path,
        HostSink::new(allocations.clone()),
        options(),
    )
    .await;
    match got {
        Ok((sink, report)) => {
            assert!(
                allocations.live() == 1,
                "only the destination outlives the load"
            );
            Ok((sink.into_data(), report))
        }
        Err(e) => {
            assert_eq!(allocations.live(), 0, "a failed load leaked: {e}");
            Err(e)
        }
    }
}

/// Every tensor of the loaded data (at the offsets the load reported) equals the file's.
fn assert_tensors_equal(file: &[u8], data: &[u8], report: &thaw_gpu::LoadReport) {
    let src = &file[report.header.data_offset as usize..];
    assert_eq!(data.len() as u64, report.destination_len);
    for (t, &at) in report.header.tensors.iter().zip(&report.offsets) {
        let len = (t.end - t.start) as usize;
        let got = &data[at as usize..at as usize + len];
        assert!(
            got == &src[t.start as usize..t.end as usize],
            "tensor {} differs",
            t.name
        );
    }
    let want: Vec<String> = report
        .header
        .tensors
        .iter()
        .map(|t| {
            blake3::hash(&src[t.start as usize..t.end as usize])
                .to_hex()
                .to_string()
        })
        .collect();
    let got: Vec<String> = tensor_checksums(report, data)
        .into_iter()
        .map(|c| c.blake3)
        .collect();
    assert_eq!(got, want);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_synthetic_file_loads_exactly_through_small_slots() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    std::fs::create_dir_all(src.join("model")).unwrap();
    let bytes = synthetic(&src.join("model/w.safetensors"));
    let (reader, manifest) = image_of(&src, &tmp.path().join("store")).await;
    let (data, report) = load_host(reader.clone(), &manifest, "/model/w.safetensors")
        .await
        .unwrap();
    assert_tensors_equal(&bytes, &data, &report);
    let names: Vec<&str> = report
        .header
        .tensors
        .iter()
        .map(|t| t.name.as_str())
        .collect();
    assert_eq!(names, ["a", "zeros", "c"]);
    assert_eq!(report.workers, 2);
    assert!(
        report.zero_bytes >= 4 << 20,
        "zero runs are set, not sent: {report:?}"
    );
    assert!(
        report.store_bytes > 0 && report.disk_bytes == 0,
        "{report:?}"
    );
    // Host memory: pieces that land in one range are decoded in place; those that start
    // in the header go through a slot.
    assert!(
        report.in_place_bytes > 0 && report.in_place_bytes < report.bytes,
        "{report:?}"
    );
    // A second load finds the chunks the reader cached in memory? No: the fast path
    // decodes into slots and caches nothing in memory; it reads the store again.
    let (again, _) = load_host(reader, &manifest, "model/w.safetensors")
        .await
        .unwrap();
    assert!(again == data);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_dtype_empty_tensors_a_huge_one_and_thousands_of_tiny_ones_load_exactly() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    std::fs::create_dir_all(&src).unwrap();
    let bytes = every_dtype(&src.join("all.safetensors"));
    let (reader, manifest) = image_of(&src, &tmp.path().join("store")).await;
    assert!(
        manifest.chunks.len() > 5,
        "the big tensor spans many chunks"
    );
    let (data, report) = load_host(reader.clone(), &manifest, "all.safetensors")
        .await
        .unwrap();
    assert_eq!(report.header.tensors.len(), 15 * 2 + 1 + 3000);
    assert_tensors_equal(&bytes, &data, &report);
    // Aligned: every tensor at a multiple of 256 bytes, the same bytes.
    let (aligned, report) = load(
        reader,
        &manifest,
        "all.safetensors",
        HostSink::new(Allocations::default()),
        LoadOptions {
            align: 256,
            ..options()
        },
    )
    .await
    .unwrap();
    assert!(report.offsets.iter().all(|o| o % 256 == 0));
    assert!(report.destination_len >= 256 * 3000);
    // Padding breaks the tiny tensors' pieces apart (staged); the huge one's are not.
    assert!(
        report.in_place_bytes > 0 && report.in_place_bytes < report.bytes,
        "{report:?}"
    );
    assert_tensors_equal(&bytes, aligned.data(), &report);
}

/// Bad safetensors files: (name, bytes, what the error must say).
fn bad_files() -> Vec<(&'static str, Vec<u8>, &'static str)> {
    let good = r#"{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}}"#;
    let file = |header: &str, data: usize| {
        let mut v = (header.len() as u64).to_le_bytes().to_vec();
        v.extend_from_slice(header.as_bytes());
        v.extend(std::iter::repeat_n(1u8, data));
        v
    };
    vec![
        (
            "notes.txt",
            b"not a safetensors file at all".to_vec(),
            "header",
        ),
        ("truncated", file(good, 4), "data"),
        ("short", vec![1, 2, 3], "8 bytes"),
        (
            "past-end",
            {
                let mut v = 5000u64.to_le_bytes().to_vec();
                v.extend_from_slice(b"{}");
                v
            },
            "5008",
        ),
        (
            "huge-header",
            {
                let mut v = (200u64 << 20).to_le_bytes().to_vec();
                v.extend_from_slice(b"{}");
                v
            },
            "at most",
        ),
        (
            "overlap",
            file(
                r#"{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"b":{"dtype":"F32","shape":[2],"data_offsets":[4,12]}}"#,
                12,
            ),
            "offset",
        ),
        (
            "out-of-range",
            file(
                r#"{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"b":{"dtype":"F32","shape":[2],"data_offsets":[8,16]}}"#,
                8,
            ),
            "data",
        ),
        (
            "unknown-dtype",
            file(
                r#"{"a":{"dtype":"Q7","shape":[2],"data_offsets":[0,8]}}"#,
                8,
            ),
            "Q7",
        ),
        (
            "wrong-shape",
            file(
                r#"{"a":{"dtype":"F32","shape":[3],"data_offsets":[0,8]}}"#,
                8,
            ),
            "shape",
        ),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_files_and_paths_are_clear_errors_and_leave_nothing_allocated() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    std::fs::create_dir_all(src.join("d")).unwrap();
    let cases = bad_files();
    for (name, bytes, _) in &cases {
        std::fs::write(src.join(name), bytes).unwrap();
    }
    let (reader, manifest) = image_of(&src, &tmp.path().join("store")).await;
    for (name, _, says) in &cases {
        let err = load_host(reader.clone(), &manifest, name)
            .await
            .unwrap_err();
        let text = err.to_string();
        assert!(matches!(err, LoadError::BadHeader { .. }), "{name}: {text}");
        assert!(text.contains(name), "the error names the file: {text}");
        assert!(text.contains(says), "{name}: {text} (wanted {says:?})");
    }
    for path in ["d", "missing", "d/missing"] {
        let err = load_host(reader.clone(), &manifest, path)
            .await
            .unwrap_err();
        assert!(matches!(err, LoadError::NotAFile(_)), "{err}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_faulty_store_gives_the_right_bytes_and_a_dead_one_a_clean_error() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    std::fs::create_dir_all(&src).unwrap();
    let bytes = every_dtype(&src.join("w.safetensors"));
    let store = tmp.path().join("store");
    let (_, manifest) = image_of(&src, &store).await;
    let local: Arc<dyn BlobStore> = Arc::new(ObjectStoreBackend::local(&store).unwrap());
    // A fifth of the requests fail; the retry wrapper (as thaw opens every store) and the
    // loader's own second try get every chunk right.
    let faulty = Arc::new(FaultyStore::new(
        local.clone(),
        FaultConfig {
            fail_rate: 0.2,
            seed: 7,
            ..FaultConfig::default()
        },
    ));
    let retrying = Arc::new(RetryStore::new(faulty.clone(), RetryConfig::default()));
    let reader = reader_over(retrying).await;
    let (data, report) = load_host(reader, &manifest, "w.safetensors").await.unwrap();
    assert_tensors_equal(&bytes, &data, &report);
    assert!(faulty.injected() > 0, "faults were injected");
    // The store goes down after the header was read: the load fails, nothing leaks.
    let dead = Arc::new(FaultyStore::new(
        local,
        FaultConfig {
            fail_rate: 0.0,
            seed: 1,
            ..FaultConfig::default()
        },
    ));
    let reader = reader_over(dead.clone()).await;
    let ino = manifest.lookup(0, b"w.safetensors").unwrap();
    let header_chunk = manifest.file_extents(ino)[0].chunk.unwrap();
    reader.read(header_chunk).await.unwrap();
    dead.set_down(true);
    let err = load_host(reader, &manifest, "w.safetensors")
        .await
        .unwrap_err();
    assert!(matches!(err, LoadError::Chunk { .. }), "{err}");
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
    let (data, report) = load_host(reader, &manifest, "model.safetensors")
        .await
        .unwrap();
    let file = std::fs::read(&weights).unwrap();
    assert_tensors_equal(&file, &data, &report);
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
async fn weights_reach_gpu_memory_intact_and_a_failed_load_frees_the_device() {
    if !cuda_available() {
        return skip(
            "weights_reach_gpu_memory_intact_and_a_failed_load_frees_the_device",
            "no CUDA driver on this machine",
        );
    }
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    std::fs::create_dir_all(&src).unwrap();
    let bytes = every_dtype(&src.join("w.safetensors"));
    std::fs::write(src.join("bad.safetensors"), &bytes[..bytes.len() - 1]).unwrap();
    let store = tmp.path().join("store");
    let (reader, manifest) = image_of(&src, &store).await;
    let sink = CudaSink::new(0).unwrap();
    let ctx = sink.context().clone();
    let (sink, report) = load(reader.clone(), &manifest, "w.safetensors", sink, options())
        .await
        .unwrap();
    let back = sink.to_host().unwrap();
    assert_tensors_equal(&bytes, &back, &report);
    drop(sink);
    let (free_before, _) = thaw_gpu::cuda::memory_info(&ctx).unwrap();
    // A load that fails in the middle (the store goes down) frees its device memory.
    let local: Arc<dyn BlobStore> = Arc::new(ObjectStoreBackend::local(&store).unwrap());
    let dead = Arc::new(FaultyStore::new(
        local,
        FaultConfig {
            fail_rate: 0.0,
            seed: 1,
            ..FaultConfig::default()
        },
    ));
    let cold = reader_over(dead.clone()).await;
    let ino = manifest.lookup(0, b"w.safetensors").unwrap();
    cold.read(manifest.file_extents(ino)[0].chunk.unwrap())
        .await
        .unwrap();
    dead.set_down(true);
    let err = load(
        cold,
        &manifest,
        "w.safetensors",
        CudaSink::new(0).unwrap(),
        options(),
    )
    .await
    .unwrap_err();
    assert!(matches!(err, LoadError::Chunk { .. }), "{err}");
    let (free_after, _) = thaw_gpu::cuda::memory_info(&ctx).unwrap();
    assert_eq!(free_after, free_before, "device memory as it was");
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
    let reader = reader_over(Arc::new(counting)).await;
    let before = counters.snapshot().gets;
    let (data, report) = load_host(reader, &manifest, "w.safetensors").await.unwrap();
    assert_tensors_equal(&bytes, &data, &report);
    let gets = counters.snapshot().gets - before;
    assert!(chunks >= 3, "{chunks} chunks");
    assert!(
        (gets as usize) < chunks,
        "{gets} GETs for {chunks} chunks: neighbours were not coalesced"
    );
}
