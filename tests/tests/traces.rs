//! Start-up traces stored with images, merged into prefetch lists, and used to lay out
//! packs in first-access order.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "tests: a failed step panics with its message"
)]

use thaw_core::trace::{Trace, TraceRecord};
use thaw_core::{ChunkId, ImageId};
use thaw_image::{build, BuildOptions, BuildSource};
use thaw_store::{RepoError, Repository};
use thaw_tests::{local_repo, pseudo_random};

fn tree(dir: &std::path::Path) {
    std::fs::create_dir_all(dir).unwrap();
    for i in 0..40u64 {
        std::fs::write(
            dir.join(format!("f{i:02}")),
            pseudo_random(300_000 + i as usize * 1000, i),
        )
        .unwrap();
    }
}

async fn build_into(repo: &Repository, src: &std::path::Path, order: Vec<ChunkId>) -> ImageId {
    build(
        repo,
        BuildSource::Directory(src.to_path_buf()),
        BuildOptions {
            first_access: order,
            writer: thaw_store::WriterConfig {
                target_pack_size: 8 << 20,
                ..Default::default()
            },
            ..Default::default()
        },
    )
    .await
    .unwrap()
    .image
}

/// A trace that touches every fifth file, last file first.
fn trace_of(repo_manifest: &thaw_core::Manifest, image: ImageId) -> Trace {
    let mut records = Vec::new();
    let mut files: Vec<(Vec<u8>, ChunkId)> = Vec::new();
    repo_manifest.walk(|path, ino| {
        if let Some(chunk) = repo_manifest.file_extents(ino).iter().find_map(|e| e.chunk) {
            files.push((path.join(&b'/'), chunk));
        }
    });
    for (k, (path, chunk)) in files.iter().rev().step_by(5).enumerate() {
        records.push(TraceRecord {
            elapsed_us: 100 * k as u64,
            chunk: *chunk,
            offset: 0,
            path: path.clone(),
        });
    }
    Trace { image, records }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn traces_are_stored_checked_and_merged() {
    let tmp = tempfile::tempdir().unwrap();
    tree(&tmp.path().join("src"));
    let (_, repo) = local_repo(&tmp.path().join("store")).await;
    let image = build_into(&repo, &tmp.path().join("src"), Vec::new()).await;
    let m = repo.get_manifest(&image).await.unwrap();
    let t = trace_of(&m, image);
    assert!(t.records.len() >= 8);

    let key = repo.put_trace(&t).await.unwrap();
    assert_eq!(
        repo.put_trace(&t).await.unwrap(),
        key,
        "same trace, same key"
    );
    // A second trace that reaches the last record first.
    let mut t2 = t.clone();
    let last = t2.records.len() - 1;
    t2.records[last].elapsed_us = 1;
    repo.put_trace(&t2).await.unwrap();
    assert_eq!(repo.traces(&image).await.unwrap().len(), 2);
    let merged = repo.prefetch_list(&image).await.unwrap();
    assert_eq!(merged.len(), t.records.len(), "each chunk once");
    assert_eq!(merged[0].chunk, t.records[0].chunk);
    assert_eq!(
        merged[1].chunk, t.records[last].chunk,
        "earliest access wins"
    );

    // A trace of another image, or naming chunks the image lacks, is refused.
    let mut foreign = t.clone();
    foreign.image = ImageId::of(b"another image");
    assert!(matches!(
        repo.put_trace(&foreign).await.unwrap_err(),
        RepoError::MissingManifest(_)
    ));
    let mut stray = t.clone();
    stray.records[0].chunk = ChunkId::of(b"not in the image");
    let err = repo.put_trace(&stray).await.unwrap_err();
    assert!(
        matches!(err, RepoError::TraceChunkNotInImage { .. }),
        "{err}"
    );
    // Removing the image removes its traces.
    repo.remove_image(&image).await.unwrap();
    assert!(repo.traces(&image).await.unwrap().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn order_by_packs_the_working_set_together_in_trace_order() {
    let tmp = tempfile::tempdir().unwrap();
    tree(&tmp.path().join("src"));
    let (_, first) = local_repo(&tmp.path().join("first")).await;
    let image = build_into(&first, &tmp.path().join("src"), Vec::new()).await;
    let m = first.get_manifest(&image).await.unwrap();
    let t = trace_of(&m, image);
    let order: Vec<ChunkId> = t.records.iter().map(|r| r.chunk).collect();

    // Unordered, the traced chunks are spread over the packs in path order.
    let spread: std::collections::HashSet<_> = order
        .iter()
        .map(|c| first.packs().location(c).unwrap().pack)
        .collect();
    assert!(spread.len() > 1, "the fixture spreads the working set");

    let (_, second) = local_repo(&tmp.path().join("second")).await;
    let again = build_into(&second, &tmp.path().join("src"), order.clone()).await;
    assert_eq!(again, image, "the layout does not change the image");
    let locs: Vec<_> = order
        .iter()
        .map(|c| second.packs().location(c).unwrap())
        .collect();
    assert!(
        locs.iter().all(|l| l.pack == locs[0].pack),
        "the working set shares one pack"
    );
    let index = second
        .packs()
        .packs()
        .into_iter()
        .find(|(p, _)| *p == locs[0].pack)
        .unwrap()
        .1;
    let ids_in_pack: Vec<ChunkId> = index.entries.iter().map(|e| e.id).collect();
    assert_eq!(
        ids_in_pack, order,
        "the pack holds exactly the working set, in order"
    );
    // One coalesced GET fetches it all.
    let plan = second.packs().plan(&order, Default::default(), |_| false);
    assert!(plan.unknown.is_empty());
    assert_eq!(plan.runs.len(), 1);
}
