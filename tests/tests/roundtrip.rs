//! Build then export reproduces the generated edge-case tree exactly, from a directory
//! and from tar, tar.gz and tar.zst made by GNU tar. The debootstrap root filesystem
//! round trip goes through the CLI, in crates/thaw-cli/tests/cli.rs.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "tests: a failed step panics with its message"
)]

use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::process::Command;
use thaw_image::{build, export, BuildOptions, BuildSource};
use thaw_store::{ChunkReader, ReaderConfig, Repository};
use thaw_tests::{fixtures, is_root, local_repo, skip, treediff};

async fn round_trip(repo: &Repository, source: BuildSource, out: &Path) -> thaw_image::BuildReport {
    let report = build(
        repo,
        source,
        BuildOptions {
            tag: Some("t".into()),
            ..Default::default()
        },
    )
    .await
    .expect("build");
    let id = repo.resolve("t").await.expect("tag resolves");
    assert_eq!(id, report.image);
    let manifest = repo.get_manifest(&id).await.expect("manifest");
    let reader = ChunkReader::new(repo.packs().clone(), ReaderConfig::default()).unwrap();
    export(&reader, &manifest, out).await.expect("export");
    report
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn edge_case_tree_round_trips_through_a_directory_build() {
    if !is_root() {
        return skip(
            "edge_case_tree_round_trips_through_a_directory_build",
            "needs root for device nodes, ownership and trusted xattrs",
        );
    }
    let tmp = tempfile::tempdir().unwrap();
    let (src, out) = (tmp.path().join("src"), tmp.path().join("out"));
    std::fs::create_dir(&src).unwrap();
    fixtures::make_edge_tree(&src);
    let (_, repo) = local_repo(&tmp.path().join("store")).await;
    let report = round_trip(&repo, BuildSource::Directory(src.clone()), &out).await;
    let n = treediff::assert_same(&src, &out, &[]);
    assert!(n > 90, "compared {n} paths");
    // The duplicate 5 MiB file and the sparse file's 3 GiB of zeros cost (almost) nothing:
    // what is stored is about the 5 MiB + 1 MiB of random data.
    assert!(
        report.writer.stored_bytes < 7 * 1024 * 1024,
        "{:?}",
        report.writer
    );
    // Every chunk of the 5 MiB copy was already stored by the first copy.
    let m = repo.get_manifest(&report.image).await.unwrap();
    let random = m
        .lookup(m.lookup(0, b"dir").unwrap(), b"random.bin")
        .unwrap();
    let copy_chunks = m.file_extents(random).len() as u64;
    assert!(
        report.writer.chunks_dedup >= copy_chunks,
        "{:?}, copy has {copy_chunks} chunks",
        report.writer
    );
    // The exported sparse file has holes.
    let blocks = std::fs::metadata(out.join("sparse.img")).unwrap().blocks() * 512;
    assert!(blocks < 16 << 20, "sparse file allocates {blocks} bytes");
    assert_eq!(
        std::fs::metadata(out.join("sparse.img")).unwrap().len(),
        fixtures::SPARSE_LEN
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn edge_case_tree_round_trips_through_tar_streams() {
    if !is_root() {
        return skip(
            "edge_case_tree_round_trips_through_tar_streams",
            "needs root",
        );
    }
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    std::fs::create_dir(&src).unwrap();
    fixtures::make_edge_tree(&src);
    // tar cannot hold sockets, and a 3 GiB sparse file would be written out in full.
    let skipped = ["socket", "sparse.img"];
    for (flag, ext) in [("", "tar"), ("-z", "tar.gz"), ("--zstd", "tar.zst")] {
        let archive = tmp.path().join(format!("edge.{ext}"));
        let mut cmd = Command::new("tar");
        cmd.args([
            "--xattrs",
            "--xattrs-include=*",
            "--format=pax",
            "--numeric-owner",
            "-C",
        ])
        .arg(&src);
        for s in skipped {
            cmd.arg(format!("--exclude=./{s}"));
        }
        if !flag.is_empty() {
            cmd.arg(flag);
        }
        let status = cmd
            .arg("-cf")
            .arg(&archive)
            .arg(".")
            .status()
            .expect("run tar");
        assert!(status.success(), "tar -c {ext}");
        let out = tmp.path().join(format!("out-{ext}"));
        let (_, repo) = local_repo(&tmp.path().join(format!("store-{ext}"))).await;
        round_trip(&repo, BuildSource::TarFile(archive), &out).await;
        let diffs = treediff::compare(&src, &out, &skipped);
        assert!(
            diffs.is_empty(),
            "{ext}: {}",
            diffs
                .iter()
                .take(10)
                .cloned()
                .collect::<Vec<_>>()
                .join("\n")
        );
    }
}
