//! The build driver: runs a source on a blocking thread, then stores manifest and tag.

use crate::image_config::ConfigEdits;
use crate::ingest::Ingest;
use crate::layout::DirFiles;
use crate::{docker_archive, oci, source_dir, source_tar, BuildError};
use sha2::{Digest, Sha256};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use thaw_core::{ChunkerConfig, ImageId};
use thaw_store::{PackWriter, Repository, WriterConfig, WriterStats};

/// Where an image comes from.
#[derive(Debug, Clone)]
pub enum BuildSource {
    /// A directory tree.
    Directory(PathBuf),
    /// A tar file, plain or compressed.
    TarFile(PathBuf),
    /// A tar stream on standard input.
    Stdin,
    /// An image in an OCI image layout directory: the one named `reference` in its
    /// `index.json`, or its only image.
    OciLayout {
        /// The layout's directory.
        dir: PathBuf,
        /// The image's `org.opencontainers.image.ref.name`, if the layout holds several.
        reference: Option<String>,
    },
    /// A `docker save` archive: the image tagged `reference` in it, or its only image.
    DockerArchive {
        /// The archive (an uncompressed tar).
        file: PathBuf,
        /// A `RepoTags` entry (`NAME:TAG`) naming the image, if the archive holds several.
        reference: Option<String>,
    },
}

impl BuildSource {
    /// `-` is stdin, `oci:DIR[:NAME]` an OCI image layout and `docker-archive:FILE[:NAME]`
    /// a `docker save` archive (as `skopeo` names them), a directory is a tree, anything
    /// else a tar file.
    pub fn from_arg(arg: &str) -> Self {
        let p = PathBuf::from(arg);
        if let Some(rest) = arg.strip_prefix("docker-archive:") {
            // As in skopeo: the path ends at the first ':'; the name (NAME:TAG) follows it.
            let (file, reference) = match rest.split_once(':') {
                Some((file, name)) if !name.is_empty() => (file, Some(name.to_string())),
                _ => (rest.trim_end_matches(':'), None),
            };
            BuildSource::DockerArchive {
                file: PathBuf::from(file),
                reference,
            }
        } else if let Some(rest) = arg.strip_prefix("oci:") {
            // The name follows the last ':' unless that ':' is part of the path.
            let (dir, reference) = match rest.rsplit_once(':') {
                Some((dir, name)) if !name.contains('/') && !name.is_empty() => {
                    (dir, Some(name.to_string()))
                }
                _ => (rest, None),
            };
            BuildSource::OciLayout {
                dir: PathBuf::from(dir),
                reference,
            }
        } else if arg == "-" {
            BuildSource::Stdin
        } else if p.is_dir() {
            BuildSource::Directory(p)
        } else {
            BuildSource::TarFile(p)
        }
    }
}

/// How to build.
#[derive(Debug, Clone, Default)]
pub struct BuildOptions {
    /// Tag the image with this name.
    pub tag: Option<String>,
    /// Chunk sizes.
    pub chunker: ChunkerConfig,
    /// Compression and packing.
    pub writer: WriterConfig,
    /// Updated with file bytes read, for a progress display.
    pub progress: Option<Arc<AtomicU64>>,
    /// Chunks in first-access order (from a start-up trace): those new to the store are
    /// packed together in this order, after the rest.
    pub first_access: Vec<thaw_core::ChunkId>,
    /// Changes to the image's run configuration (or a configuration for a tree that has
    /// none).
    pub config: ConfigEdits,
    /// For a layered source: also store the tree of every layer prefix and tag it by its
    /// chain id ([`thaw_core::tag::chain_tag`]), so the containerd snapshotter can serve
    /// each layer lazily. Costs manifests only: the chunks are shared.
    pub containerd: bool,
}

/// What a build did.
#[derive(Debug, Clone)]
pub struct BuildReport {
    /// The image built.
    pub image: ImageId,
    /// Its manifest's size.
    pub manifest_bytes: usize,
    /// File content bytes read from the source.
    pub bytes_read: u64,
    /// Regular files.
    pub files: u64,
    /// Directories.
    pub directories: u64,
    /// Symlinks, devices, fifos and sockets.
    pub others: u64,
    /// What the pack writer stored.
    pub writer: WriterStats,
    /// The layers of a layered source, in order (trees dropped).
    pub layers: Vec<crate::LayerPrefix>,
    /// The chain-id tags written (`containerd` builds).
    pub chain_tags: usize,
}

/// Builds an image into `repo` and tags it. A failed build stores no manifest and no tag;
/// one that gc raced ends with [`thaw_store::RepoError::GcConflict`] and can be run again.
pub async fn build(
    repo: &Repository,
    source: BuildSource,
    options: BuildOptions,
) -> Result<BuildReport, BuildError> {
    if let Some(tag) = &options.tag {
        thaw_core::tag::validate_tag(tag)?;
    }
    options.chunker.validate()?;
    // Before any chunk is deduplicated: packs gc is deleting are not reused.
    let ticket = repo.begin_build().await?;
    let writer = PackWriter::new(repo.packs().clone(), options.writer)
        .with_first_access(&options.first_access);
    let bytes_read = options.progress.clone().unwrap_or_default();
    let chunker = options.chunker;
    let containerd = options.containerd;
    let (tree, writer, mut layers, documents) = {
        let bytes_read = bytes_read.clone();
        tokio::task::spawn_blocking(move || {
            let ingest = Ingest {
                writer: &writer,
                chunker,
                bytes_read,
                layers: crate::layers::LayerLog::new(containerd),
            };
            let tree = build_from(source, &ingest);
            let layers = ingest.layers.take();
            let documents = ingest.layers.take_documents();
            drop(ingest);
            (tree, writer, layers, documents)
        })
        .await
        .map_err(|e| BuildError::Internal(e.to_string()))?
    };
    // Always drain the writer so no thread is left behind, then report the first error.
    let finished = writer.finish().await;
    let (tree, config) = tree?;
    let writer_stats = finished?;
    let mut manifest = tree.to_manifest();
    // Edited, the source's config no longer describes the image: keep no documents.
    let documents = documents.filter(|_| options.config.is_empty());
    manifest.config = options.config.apply(config).map_err(|reason| {
        BuildError::Format(thaw_core::FormatError::invalid("image config", reason))
    })?;
    let (image, manifest_bytes) = repo.commit_manifest(&ticket, &manifest).await?;
    let chain_tags = tag_chains(repo, &ticket, &mut layers).await?;
    if let Some(documents) = documents {
        record_documents(repo, &image, &documents, containerd).await?;
    }
    if let Some(tag) = &options.tag {
        repo.set_tag(tag, &image).await?;
    }
    let (files, directories, others) = count(&manifest);
    Ok(BuildReport {
        image,
        manifest_bytes,
        bytes_read: bytes_read.load(Relaxed),
        files,
        directories,
        others,
        writer: writer_stats,
        layers,
        chain_tags,
    })
}

/// Stores the tree of each recorded layer prefix and tags it by its chain id; drops the
/// trees from `layers`. Returns how many tags were written.
async fn tag_chains(
    repo: &Repository,
    ticket: &thaw_store::repo::BuildTicket,
    layers: &mut [crate::LayerPrefix],
) -> Result<usize, BuildError> {
    let mut tagged = 0;
    for layer in layers {
        let Some(manifest) = layer.manifest.take() else {
            continue;
        };
        let tag = thaw_core::tag::chain_tag(&layer.chain_id).ok_or_else(|| {
            BuildError::Format(thaw_core::FormatError::invalid(
                "layer chain id",
                format!("{:?} is not a sha256 digest", layer.chain_id),
            ))
        })?;
        let (id, _) = repo.commit_manifest(ticket, &manifest).await?;
        repo.set_tag(&tag, &id).await?;
        tagged += 1;
    }
    Ok(tagged)
}

/// Keeps a layered image's OCI manifest and config with it and, for the containerd
/// snapshotter, tags it by its manifest digest as well.
async fn record_documents(
    repo: &Repository,
    image: &ImageId,
    documents: &thaw_store::ImageDocuments,
    containerd: bool,
) -> Result<(), BuildError> {
    repo.put_documents(image, documents).await?;
    if containerd {
        let digest = Sha256::digest(documents.manifest.as_bytes());
        let tag = thaw_core::tag::manifest_tag(&hex::encode(digest));
        repo.set_tag(&tag, image).await?;
    }
    Ok(())
}

/// Reads `source` into a tree, with the run configuration its format carries.
fn build_from(
    source: BuildSource,
    ingest: &Ingest<'_>,
) -> Result<(crate::tree::Tree, Option<thaw_core::ImageConfig>), BuildError> {
    let plain = |tree| (tree, None);
    match source {
        BuildSource::Directory(dir) => source_dir::build_tree(&dir, ingest).map(plain),
        BuildSource::TarFile(path) => std::fs::File::open(&path)
            .map_err(crate::error::io_err("open", &path))
            .and_then(|f| source_tar::build_tree(f, ingest))
            .map(plain),
        BuildSource::Stdin => source_tar::build_tree(std::io::stdin().lock(), ingest).map(plain),
        BuildSource::OciLayout { dir, reference } => {
            oci::build_tree(&DirFiles(dir), reference.as_deref(), ingest)
                .map(|(tree, config)| (tree, Some(config)))
        }
        BuildSource::DockerArchive { file, reference } => {
            docker_archive::build_tree(&file, reference.as_deref(), ingest)
                .map(|(tree, config)| (tree, Some(config)))
        }
    }
}

fn count(m: &thaw_core::Manifest) -> (u64, u64, u64) {
    let (mut f, mut d, mut o) = (0, 0, 0);
    for i in &m.inodes {
        match i.kind {
            thaw_core::InodeKind::File { .. } => f += 1,
            thaw_core::InodeKind::Directory { .. } => d += 1,
            _ => o += 1,
        }
    }
    (f, d, o)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn oci_arguments() {
        let oci = |arg: &str| match BuildSource::from_arg(arg) {
            BuildSource::OciLayout { dir, reference } => (dir, reference),
            other => panic!("{arg}: {other:?}"),
        };
        assert_eq!(oci("oci:/l"), (PathBuf::from("/l"), None));
        assert_eq!(oci("oci:/l:v1"), (PathBuf::from("/l"), Some("v1".into())));
        // A ':' inside the path is not a name separator.
        assert_eq!(oci("oci:/a:b/l"), (PathBuf::from("/a:b/l"), None));
        assert_eq!(oci("oci:/l:"), (PathBuf::from("/l:"), None));
        assert!(matches!(BuildSource::from_arg("-"), BuildSource::Stdin));
        let archive = |arg: &str| match BuildSource::from_arg(arg) {
            BuildSource::DockerArchive { file, reference } => (file, reference),
            other => panic!("{arg}: {other:?}"),
        };
        assert_eq!(
            archive("docker-archive:/a.tar"),
            (PathBuf::from("/a.tar"), None)
        );
        assert_eq!(
            archive("docker-archive:/a.tar:debian:12"),
            (PathBuf::from("/a.tar"), Some("debian:12".into()))
        );
    }
}
