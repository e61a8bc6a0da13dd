//! Tar input: bad archives get clear errors and store no image or tag; duplicates,
//! implicit parents and non-UTF-8 names behave like `tar -x`.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "tests: a failed step panics with its message"
)]

use std::time::Duration;
use thaw_image::{build, BuildError, BuildOptions, BuildSource};
use thaw_store::Repository;
use thaw_tests::local_repo;

enum Kind {
    File(&'static [u8]),
    Dir,
    HardLink(&'static [u8]),
}

/// Writes a GNU tar by hand so names the `tar` crate would refuse can be tested.
fn tar_bytes(entries: &[(&[u8], Kind)]) -> Vec<u8> {
    let mut out = Vec::new();
    for (name, kind) in entries {
        let mut h = tar::Header::new_gnu();
        {
            let old = h.as_old_mut();
            old.name[..name.len()].copy_from_slice(name);
        }
        h.set_mode(0o644);
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(1_700_000_000);
        let data: &[u8] = match kind {
            Kind::File(d) => {
                h.set_entry_type(tar::EntryType::Regular);
                d
            }
            Kind::Dir => {
                h.set_entry_type(tar::EntryType::Directory);
                h.set_mode(0o755);
                b""
            }
            Kind::HardLink(target) => {
                h.set_entry_type(tar::EntryType::Link);
                h.as_old_mut().linkname[..target.len()].copy_from_slice(target);
                b""
            }
        };
        h.set_size(data.len() as u64);
        h.set_cksum();
        out.extend_from_slice(h.as_bytes());
        out.extend_from_slice(data);
        out.resize(out.len().div_ceil(512) * 512, 0);
    }
    out.extend_from_slice(&[0u8; 1024]);
    out
}

async fn build_bytes(
    repo: &Repository,
    bytes: &[u8],
) -> Result<thaw_image::BuildReport, BuildError> {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("in.tar");
    std::fs::write(&path, bytes).unwrap();
    build(
        repo,
        BuildSource::TarFile(path),
        BuildOptions {
            tag: Some("t".into()),
            ..Default::default()
        },
    )
    .await
}

async fn assert_rejected(bytes: &[u8], needle: &str) {
    let tmp = tempfile::tempdir().unwrap();
    let (_, repo) = local_repo(tmp.path()).await;
    let err = build_bytes(&repo, bytes)
        .await
        .expect_err("bad archive must fail");
    let msg = err.to_string();
    assert!(
        msg.contains(needle),
        "error {msg:?} should mention {needle:?}"
    );
    assert!(
        repo.list_images().await.unwrap().is_empty(),
        "no manifest after a failed build"
    );
    assert!(
        repo.list_tags().await.unwrap().is_empty(),
        "no tag after a failed build"
    );
    // Chunks uploaded before the failure are garbage for gc.
    repo.gc(true, Duration::ZERO).await.unwrap();
    let gc = repo.gc(true, Duration::ZERO).await.unwrap();
    assert!(
        repo.packs().packs().is_empty(),
        "gc left packs behind: {gc:?}"
    );
}

#[tokio::test]
async fn dot_dot_paths_are_rejected() {
    assert_rejected(
        &tar_bytes(&[
            (b"ok", Kind::File(b"data")),
            (b"a/../../etc/passwd", Kind::File(b"x")),
        ]),
        "'..'",
    )
    .await;
}

#[tokio::test]
async fn absolute_paths_are_rejected() {
    assert_rejected(
        &tar_bytes(&[(b"/etc/passwd", Kind::File(b"x"))]),
        "absolute",
    )
    .await;
}

#[tokio::test]
async fn hard_links_to_missing_or_escaping_targets_are_rejected() {
    assert_rejected(
        &tar_bytes(&[(b"link", Kind::HardLink(b"missing"))]),
        "does not exist",
    )
    .await;
    assert_rejected(
        &tar_bytes(&[(b"f", Kind::File(b"x")), (b"link", Kind::HardLink(b"../f"))]),
        "escapes",
    )
    .await;
    assert_rejected(
        &tar_bytes(&[(b"d", Kind::Dir), (b"link", Kind::HardLink(b"d"))]),
        "directory",
    )
    .await;
}

#[tokio::test]
async fn truncated_and_garbage_archives_are_rejected() {
    let mut t = tar_bytes(&[(b"big", Kind::File(&[7u8; 5000]))]);
    t.truncate(512 + 2000);
    assert_rejected(&t, "big").await;
    let garbage: Vec<u8> = (0..4096u32).map(|i| (i * 7919 % 251) as u8 | 1).collect();
    assert_rejected(&garbage, "tar entry").await;
}

#[tokio::test]
async fn later_duplicates_win_and_parents_are_implied() {
    let tmp = tempfile::tempdir().unwrap();
    let (_, repo) = local_repo(tmp.path()).await;
    let bytes = tar_bytes(&[
        (b"a/b/file", Kind::File(b"first")),
        (b"a/b/file", Kind::File(b"second")),
        (b"a/link", Kind::HardLink(b"a/b/file")),
        (b"name-\xff\xfe", Kind::File(b"raw bytes")),
    ]);
    let report = build_bytes(&repo, &bytes).await.expect("valid archive");
    let m = repo.get_manifest(&report.image).await.unwrap();
    let a = m.lookup(0, b"a").expect("implied directory a");
    let b = m.lookup(a, b"b").expect("implied directory b");
    let file = m.lookup(b, b"file").unwrap();
    assert_eq!(
        m.lookup(a, b"link"),
        Some(file),
        "the hard link names the same inode"
    );
    assert_eq!(m.link_counts()[file as usize], 2);
    let ext = m.file_extents(file);
    assert_eq!(ext.len(), 1);
    assert_eq!(
        ext[0].chunk,
        Some(thaw_core::ChunkId::of(b"second")),
        "last entry wins"
    );
    assert!(
        m.lookup(0, b"name-\xff\xfe").is_some(),
        "non-UTF-8 names survive as bytes"
    );
    assert_eq!(m.inodes[a as usize].meta.mode, 0o755);
}

#[tokio::test]
async fn bad_tags_fail_before_reading_anything() {
    let tmp = tempfile::tempdir().unwrap();
    let (_, repo) = local_repo(tmp.path()).await;
    let err = build(
        &repo,
        BuildSource::TarFile(tmp.path().join("missing.tar")),
        BuildOptions {
            tag: Some("bad tag".into()),
            ..Default::default()
        },
    )
    .await
    .unwrap_err();
    assert!(err.to_string().contains("invalid tag name"), "{err}");
}
