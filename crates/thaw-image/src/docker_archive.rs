//! Reading a `docker save` archive (`docker-archive:FILE[:NAME]`): an OCI layout inside the
//! archive when it holds one (Docker 25 and later), else the legacy form, a `manifest.json`
//! naming a config file and layer tars. Legacy layers are checked against the config's
//! `rootfs.diff_ids` (the SHA-256 of each uncompressed layer), the config against its
//! file name when that is a digest; the OCI form gets every check of `oci:`.

use crate::ingest::Ingest;
use crate::layout::{ArchiveFiles, LayoutFiles};
use crate::oci::{drain, oci_err, parse, read_document, sha256_hex, Checked};
use crate::source_tar::{apply_layer, open_stream, Whiteouts};
use crate::tree::Tree;
use crate::BuildError;
use serde::Deserialize;
use std::path::Path;
use thaw_core::ImageConfig;

/// One image of a legacy archive's `manifest.json`.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct ArchiveImage {
    config: String,
    #[serde(default)]
    repo_tags: Option<Vec<String>>,
    layers: Vec<String>,
}

impl ArchiveImage {
    /// Whether one of its `RepoTags` is `reference`, Docker Hub's short and long forms
    /// being the same name (`debian:12`, `docker.io/library/debian:12`).
    fn tagged(&self, reference: &str) -> bool {
        let wanted = familiar(reference);
        self.repo_tags
            .iter()
            .flatten()
            .any(|t| familiar(t) == wanted)
    }
}

/// A reference in Docker's familiar form: without `docker.io/` and `library/`.
fn familiar(reference: &str) -> &str {
    let r = reference.strip_prefix("docker.io/").unwrap_or(reference);
    r.strip_prefix("library/").unwrap_or(r)
}

/// The config's layer digests.
#[derive(Debug, Deserialize)]
struct RootFs {
    rootfs: DiffIds,
}

#[derive(Debug, Deserialize)]
struct DiffIds {
    diff_ids: Vec<String>,
}

/// Builds the image `reference` (a `RepoTags` entry, or in the OCI form a `ref.name`) or
/// the archive's only image.
pub fn build_tree(
    archive: &Path,
    reference: Option<&str>,
    ingest: &Ingest<'_>,
) -> Result<(Tree, ImageConfig), BuildError> {
    let files = ArchiveFiles::open(archive)?;
    if files.exists("index.json") && files.exists("oci-layout") {
        if let Some(tagged) = reference.and_then(|r| legacy_tag_target(&files, r)) {
            // Docker names images in manifest.json; its index.json may not.
            return build_legacy(&files, Some(&tagged), ingest);
        }
        return crate::oci::build_tree(&files, reference, ingest);
    }
    build_legacy(&files, reference, ingest)
}

/// In an archive with both forms, a reference found in `manifest.json`.
fn legacy_tag_target(files: &ArchiveFiles, reference: &str) -> Option<String> {
    let images = read_manifest(files).ok()?;
    images
        .iter()
        .any(|i| i.tagged(reference))
        .then(|| reference.to_string())
}

fn read_manifest(files: &dyn LayoutFiles) -> Result<Vec<ArchiveImage>, BuildError> {
    let bytes = read_document(files, "manifest.json")?;
    parse(files, "manifest.json", &bytes)
}

fn build_legacy(
    files: &dyn LayoutFiles,
    reference: Option<&str>,
    ingest: &Ingest<'_>,
) -> Result<(Tree, ImageConfig), BuildError> {
    let images = read_manifest(files)?;
    let image = choose(files, &images, reference)?;
    let config_bytes = read_document(files, &image.config)?;
    check_config_name(files, &image.config, &config_bytes)?;
    let config = crate::image_config::from_json(&config_bytes)
        .map_err(|reason| oci_err(files, format!("config {}: {reason}", image.config)))?;
    let diff_ids: RootFs = parse(files, &image.config, &config_bytes)?;
    let diff_ids = diff_ids.rootfs.diff_ids;
    if diff_ids.len() != image.layers.len() {
        return Err(oci_err(
            files,
            format!(
                "manifest.json names {} layers but the config has {} diff_ids",
                image.layers.len(),
                diff_ids.len()
            ),
        ));
    }
    let mut tree = Tree::new(crate::tree::dir_meta_default());
    for (layer, want) in image.layers.iter().zip(&diff_ids) {
        if sha256_hex(want).is_none() {
            return Err(oci_err(files, format!("malformed diff_id {want:?}")));
        }
        // diff_ids hash the uncompressed layer: decompress before hashing.
        let mut checked = Checked::new(open_stream(files.open(layer)?)?);
        apply_layer(&mut tree, &mut checked, ingest, Whiteouts::Apply)?;
        drain(files, layer, &mut checked)?;
        let got = checked.digest();
        if &got != want {
            return Err(oci_err(
                files,
                format!("layer {layer}: digest {got} does not match its diff_id {want}"),
            ));
        }
        ingest.layers.layer_done(&tree, want);
    }
    Ok((tree, config))
}

/// A config named by its digest (`HEX.json`, `blobs/sha256/HEX`) must hash to it.
fn check_config_name(files: &dyn LayoutFiles, name: &str, bytes: &[u8]) -> Result<(), BuildError> {
    use sha2::{Digest, Sha256};
    let stem = name.rsplit('/').next().unwrap_or(name);
    let stem = stem.strip_suffix(".json").unwrap_or(stem);
    let named = format!("sha256:{stem}");
    if sha256_hex(&named).is_none() {
        return Ok(());
    }
    let got = format!("sha256:{}", hex::encode(Sha256::digest(bytes)));
    if got != named {
        return Err(oci_err(
            files,
            format!("config {name}: its digest is {got}"),
        ));
    }
    Ok(())
}

fn choose<'a>(
    files: &dyn LayoutFiles,
    images: &'a [ArchiveImage],
    reference: Option<&str>,
) -> Result<&'a ArchiveImage, BuildError> {
    match reference {
        Some(r) => images
            .iter()
            .find(|i| i.tagged(r))
            .ok_or_else(|| oci_err(files, format!("no image tagged {r:?} in manifest.json"))),
        None => match images {
            [one] => Ok(one),
            [] => Err(oci_err(files, "manifest.json lists no image")),
            _ => Err(oci_err(
                files,
                "manifest.json lists several images: name one (docker-archive:FILE:NAME)",
            )),
        },
    }
}
