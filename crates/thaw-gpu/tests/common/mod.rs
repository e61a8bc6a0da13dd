//! Fixtures the thaw-gpu tests share: images built into local stores, and safetensors
//! files of every kind.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    dead_code,
    reason = "tests: a failed step panics with its message; each test file uses a subset"
)]

use std::path::Path;
use std::sync::Arc;
use thaw_image::{build, BuildOptions, BuildSource};
use thaw_store::{BlobStore, ChunkReader, ObjectStoreBackend, ReaderConfig, Repository};

/// Builds `dir` into a fresh local store; returns a reader and the manifest.
pub async fn image_of(dir: &Path, store: &Path) -> (Arc<ChunkReader>, thaw_core::Manifest) {
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

/// A reader over `store` (any wrapper) for an image already built there.
pub async fn reader_over(store: Arc<dyn BlobStore>) -> Arc<ChunkReader> {
    let repo = Repository::open(store).await.unwrap();
    ChunkReader::new(repo.packs().clone(), ReaderConfig::default()).unwrap()
}

/// One tensor of every dtype safetensors has whole bytes for, empty tensors, one tensor
/// spanning many chunks and thousands of tiny ones.
pub fn every_dtype(path: &Path) -> Vec<u8> {
    let dtypes = [
        ("BOOL", 1),
        ("U8", 1),
        ("I8", 1),
        ("F8_E5M2", 1),
        ("F8_E4M3", 1),
        ("I16", 2),
        ("U16", 2),
        ("F16", 2),
        ("BF16", 2),
        ("I32", 4),
        ("U32", 4),
        ("F32", 4),
        ("F64", 8),
        ("I64", 8),
        ("U64", 8),
    ];
    let mut tensors: Vec<(String, &str, Vec<usize>, Vec<u8>)> = Vec::new();
    for (i, (d, size)) in dtypes.iter().enumerate() {
        let n = 37 + i;
        let data = thaw_tests_bytes(n * size, i as u64);
        let data = if *d == "BOOL" {
            data.iter().map(|b| b & 1).collect()
        } else {
            data
        };
        tensors.push((format!("t.{d}"), d, vec![n], data));
        tensors.push((format!("empty.{d}"), d, vec![0, 3], Vec::new()));
    }
    tensors.push((
        "big".into(),
        "BF16",
        vec![12 << 20],
        thaw_tests_bytes(24 << 20, 7),
    ));
    for i in 0..3000 {
        tensors.push((
            format!("tiny.{i}"),
            "F32",
            vec![1],
            thaw_tests_bytes(4, 100 + i),
        ));
    }
    let mut header = String::from("{");
    let mut offset = 0usize;
    for (i, (name, d, shape, data)) in tensors.iter().enumerate() {
        if i > 0 {
            header.push(',');
        }
        header.push_str(&format!(
            r#""{name}":{{"dtype":"{d}","shape":{shape:?},"data_offsets":[{offset},{}]}}"#,
            offset + data.len()
        ));
        offset += data.len();
    }
    header.push('}');
    while header.len() % 8 != 0 {
        header.push(' ');
    }
    let mut f = (header.len() as u64).to_le_bytes().to_vec();
    f.extend_from_slice(header.as_bytes());
    for (_, _, _, data) in &tensors {
        f.extend_from_slice(data);
    }
    std::fs::write(path, &f).unwrap();
    f
}

/// Bytes that compress a little, as trained weights do.
pub fn thaw_tests_bytes(n: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..n)
        .map(|i| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            if i % 2 == 1 {
                0x3c | (x as u8 & 0x81)
            } else {
                x as u8
            }
        })
        .collect()
}
