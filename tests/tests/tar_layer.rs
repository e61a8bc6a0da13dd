//! An image written as one tar layer (what `thaw snapshotter import` tells containerd an
//! unlayered image is) builds back into the same image, and the same manifest always
//! gives the same bytes, so the layer's digest names the tree.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "tests: a failed step panics with its message"
)]

use sha2::{Digest, Sha256};
use std::sync::Arc;
use thaw_image::{build, write_layer_tar, BuildOptions, BuildSource};
use thaw_store::{ChunkReader, ReaderConfig};
use thaw_tests::{fixtures, is_root, local_repo, skip};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_image_written_as_a_tar_layer_builds_back_into_the_same_image() {
    if !is_root() {
        return skip(
            "an_image_written_as_a_tar_layer_builds_back_into_the_same_image",
            "needs root for device nodes, ownership and trusted xattrs",
        );
    }
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    std::fs::create_dir(&src).unwrap();
    fixtures::make_edge_tree(&src);
    // A tar cannot hold a socket, and the 5 GiB sparse file would be 5 GiB of zeros.
    std::fs::remove_file(src.join("socket")).unwrap();
    std::fs::remove_file(src.join("sparse.img")).unwrap();
    let (_, repo) = local_repo(&tmp.path().join("store")).await;
    let built = build(&repo, BuildSource::Directory(src), BuildOptions::default())
        .await
        .expect("build the tree");
    let manifest = Arc::new(repo.get_manifest(&built.image).await.unwrap());
    let reader = ChunkReader::new(repo.packs().clone(), ReaderConfig::default()).unwrap();

    let (layer, bytes) = write_layer_tar(reader.clone(), manifest.clone(), Vec::new())
        .await
        .expect("write the layer");
    assert_eq!(layer.size, bytes.len() as u64);
    let digest = format!("sha256:{}", hex::encode(Sha256::digest(&bytes)));
    assert_eq!(
        layer.digest, digest,
        "the reported digest is the bytes' digest"
    );
    let (again, _) = write_layer_tar(reader, manifest, std::io::sink())
        .await
        .expect("write the layer again");
    assert_eq!(again, layer, "the same manifest gives the same layer");

    let tar_file = tmp.path().join("layer.tar");
    std::fs::write(&tar_file, &bytes).unwrap();
    let rebuilt = build(
        &repo,
        BuildSource::TarFile(tar_file),
        BuildOptions::default(),
    )
    .await
    .expect("build the layer");
    if rebuilt.image != built.image {
        let a = repo.get_manifest(&built.image).await.unwrap();
        let b = repo.get_manifest(&rebuilt.image).await.unwrap();
        for (i, (x, y)) in a.inodes.iter().zip(&b.inodes).enumerate() {
            assert_eq!(x, y, "inode {i} differs");
        }
        assert_eq!(a.inodes.len(), b.inodes.len(), "inode counts differ");
    }
    assert_eq!(rebuilt.image, built.image, "the layer is the image's tree");
}
