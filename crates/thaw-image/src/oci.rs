//! Reading an OCI image layout (a directory as `skopeo copy ... oci:DIR:TAG` or `umoci`
//! write it, or the same inside a `docker save` archive): `index.json`, the image
//! manifest, its config, and its layers applied in order, each blob checked against its
//! SHA-256 digest and size.
//!
//! Only the layout's JSON documents are parsed here; layers go through `source_tar`.

use crate::ingest::Ingest;
use crate::layout::LayoutFiles;
use crate::source_tar::{apply_layer, Whiteouts};
use crate::tree::Tree;
use crate::BuildError;
use serde::Deserialize;
use sha2::{Digest, Sha256};
use std::io::Read;
use std::path::{Path, PathBuf};
use thaw_core::ImageConfig;

/// The largest index or manifest read: real ones are a few kilobytes.
pub const MAX_DOCUMENT_BYTES: u64 = 4 << 20;
/// The annotation that names a manifest in an image layout's index.
const REF_NAME: &str = "org.opencontainers.image.ref.name";

/// An OCI image index.
pub const MEDIA_INDEX: &str = "application/vnd.oci.image.index.v1+json";
/// An OCI image manifest.
pub const MEDIA_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
/// A Docker v2 schema 2 manifest.
pub const MEDIA_DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
/// A Docker manifest list.
pub const MEDIA_DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
/// Layer media types thaw applies: tar, plain or compressed.
const LAYER_TYPES: &[&str] = &[
    "application/vnd.oci.image.layer.v1.tar",
    "application/vnd.oci.image.layer.v1.tar+gzip",
    "application/vnd.oci.image.layer.v1.tar+zstd",
    "application/vnd.docker.image.rootfs.diff.tar.gzip",
];

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
/// A content descriptor: what a blob is, its digest and size.
pub struct Descriptor {
    /// Its media type.
    pub media_type: String,
    /// `sha256:` and 64 hex digits.
    pub digest: String,
    /// Its size in bytes.
    pub size: u64,
    #[serde(default)]
    /// Annotations (`org.opencontainers.image.ref.name` names images in an index).
    pub annotations: std::collections::BTreeMap<String, String>,
    #[serde(default)]
    /// The platform, in an index of several.
    pub platform: Option<Platform>,
}

#[derive(Debug, Deserialize)]
/// An image's platform.
pub struct Platform {
    /// `amd64`, `arm64`, ...
    pub architecture: String,
    /// `linux`, ...
    pub os: String,
}

#[derive(Debug, Deserialize)]
/// `index.json`, or a multi-platform index.
pub struct Index {
    /// Its manifests.
    pub manifests: Vec<Descriptor>,
}

#[derive(Debug, Deserialize)]
/// An image manifest (the parts thaw reads).
pub struct ImageManifest {
    /// The image's configuration blob.
    pub config: Descriptor,
    /// Its layers, bottom first.
    pub layers: Vec<Descriptor>,
}

pub(crate) fn oci_err(layout: &dyn LayoutFiles, reason: impl Into<String>) -> BuildError {
    BuildError::Oci {
        layout: layout.describe(),
        reason: reason.into(),
    }
}

/// The architecture name OCI uses for the machine thaw runs on.
pub fn host_architecture() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => other,
    }
}

/// Applies the layers of image `reference` (or the layout's only image) in `layout` to a
/// new tree, and reads the image's run configuration.
pub fn build_tree(
    layout: &dyn LayoutFiles,
    reference: Option<&str>,
    ingest: &Ingest<'_>,
) -> Result<(Tree, ImageConfig), BuildError> {
    let marker = read_document(layout, "oci-layout")?;
    if !String::from_utf8_lossy(&marker).contains("imageLayoutVersion") {
        return Err(oci_err(
            layout,
            "oci-layout does not name an imageLayoutVersion",
        ));
    }
    let index: Index = parse(layout, "index.json", &read_document(layout, "index.json")?)?;
    let chosen = choose(layout, &index.manifests, reference)?;
    let (manifest, media_type, manifest_json) = resolve_manifest(layout, chosen, 0)?;
    let config_json = read_blob_document(layout, &manifest.config)?;
    ingest
        .layers
        .set_documents(&media_type, &manifest_json, &config_json);
    let config = crate::image_config::from_json(&config_json).map_err(|reason| {
        oci_err(
            layout,
            format!("config {}: {reason}", manifest.config.digest),
        )
    })?;
    let diff_ids = crate::layers::config_diff_ids(&config_json).map_err(|reason| {
        oci_err(
            layout,
            format!("config {}: rootfs: {reason}", manifest.config.digest),
        )
    })?;
    if diff_ids.len() != manifest.layers.len() {
        return Err(oci_err(
            layout,
            format!(
                "the manifest has {} layers but the config {} diff_ids",
                manifest.layers.len(),
                diff_ids.len()
            ),
        ));
    }
    let mut tree = Tree::new(crate::tree::dir_meta_default());
    for (layer, want) in manifest.layers.iter().zip(&diff_ids) {
        apply_checked(layout, layer, want, &mut tree, ingest)?;
    }
    Ok((tree, config))
}

/// Applies one layer blob: its digest checked against its descriptor, and the digest of
/// its uncompressed tar against the config's `diff_id`.
fn apply_checked(
    layout: &dyn LayoutFiles,
    layer: &Descriptor,
    diff_id: &str,
    tree: &mut Tree,
    ingest: &Ingest<'_>,
) -> Result<(), BuildError> {
    if !LAYER_TYPES.contains(&layer.media_type.as_str()) {
        return Err(oci_err(
            layout,
            format!(
                "layer {}: unsupported media type {}",
                layer.digest, layer.media_type
            ),
        ));
    }
    let rel = blob_rel(layout, &layer.digest)?;
    let mut checked = Checked::new(layout.open(&rel)?);
    let mut plain = Checked::new(crate::source_tar::open_stream(&mut checked)?);
    apply_layer(tree, &mut plain, ingest, Whiteouts::Apply)?;
    // A tar stream may end before its blob does (padding): hash all of both.
    drain(layout, &rel, &mut plain)?;
    let got = plain.digest();
    drain(layout, &rel, &mut checked)?;
    checked.verify(layout, layer)?;
    if got != diff_id {
        return Err(oci_err(
            layout,
            format!(
                "layer {}: uncompressed digest {got} does not match its diff_id {diff_id}",
                layer.digest
            ),
        ));
    }
    ingest.layers.layer_done(tree, diff_id);
    Ok(())
}

/// Reads what is left of a blob, so that its digest covers all of it.
pub(crate) fn drain(
    layout: &dyn LayoutFiles,
    rel: &str,
    r: &mut impl Read,
) -> Result<(), BuildError> {
    std::io::copy(r, &mut std::io::sink()).map_err(|source| BuildError::Io {
        op: "read",
        path: format!("{} in {}", rel, layout.describe()),
        source,
    })?;
    Ok(())
}

/// Picks the manifest named `reference` (the `ref.name` annotation), or the only one.
fn choose<'a>(
    layout: &dyn LayoutFiles,
    manifests: &'a [Descriptor],
    reference: Option<&str>,
) -> Result<&'a Descriptor, BuildError> {
    match reference {
        Some(r) => manifests
            .iter()
            .find(|d| d.annotations.get(REF_NAME).map(String::as_str) == Some(r))
            .ok_or_else(|| oci_err(layout, format!("no image named {r:?} in index.json"))),
        None => match manifests {
            [one] => Ok(one),
            [] => Err(oci_err(layout, "index.json lists no image")),
            _ => Err(oci_err(
                layout,
                "index.json lists several images: name one (oci:DIR:NAME)",
            )),
        },
    }
}

/// Follows nested indexes (multi-platform images) to the image manifest for this host;
/// returns it parsed, with its media type and bytes.
fn resolve_manifest(
    layout: &dyn LayoutFiles,
    d: &Descriptor,
    depth: u32,
) -> Result<(ImageManifest, String, Vec<u8>), BuildError> {
    if depth > 4 {
        return Err(oci_err(layout, "indexes nested too deep"));
    }
    let bytes = read_blob_document(layout, d)?;
    match d.media_type.as_str() {
        MEDIA_MANIFEST | MEDIA_DOCKER_MANIFEST => {
            let manifest = parse(layout, &d.digest, &bytes)?;
            Ok((manifest, d.media_type.clone(), bytes))
        }
        MEDIA_INDEX | MEDIA_DOCKER_LIST => {
            let index: Index = parse(layout, &d.digest, &bytes)?;
            let entry = for_this_host(&index).ok_or_else(|| {
                oci_err(
                    layout,
                    format!("{}: no image for linux/{}", d.digest, host_architecture()),
                )
            })?;
            resolve_manifest(layout, entry, depth + 1)
        }
        other => Err(oci_err(
            layout,
            format!("{}: unsupported media type {other}", d.digest),
        )),
    }
}

/// The entry of a multi-platform index for linux on this machine's architecture.
pub fn for_this_host(index: &Index) -> Option<&Descriptor> {
    let arch = host_architecture();
    index.manifests.iter().find(|m| {
        m.platform
            .as_ref()
            .is_some_and(|p| p.os == "linux" && p.architecture == arch)
    })
}

pub(crate) fn parse<T: for<'de> Deserialize<'de>>(
    layout: &dyn LayoutFiles,
    what: &str,
    bytes: &[u8],
) -> Result<T, BuildError> {
    serde_json::from_slice(bytes).map_err(|e| oci_err(layout, format!("{what}: {e}")))
}

/// `blobs/sha256/<hex>` for a digest, refusing anything but a well-formed SHA-256 digest
/// (the digest comes from the layout and becomes a path).
fn blob_rel(layout: &dyn LayoutFiles, digest: &str) -> Result<String, BuildError> {
    sha256_hex(digest)
        .map(|hex| format!("blobs/sha256/{hex}"))
        .ok_or_else(|| {
            oci_err(
                layout,
                format!("unsupported or malformed digest {digest:?}"),
            )
        })
}

/// The 64 lowercase hex digits of a `sha256:` digest, or `None`.
pub(crate) fn sha256_hex(digest: &str) -> Option<&str> {
    digest
        .strip_prefix("sha256:")
        .filter(|h| h.len() == 64 && h.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')))
}

/// `DIR/blobs/sha256/<hex>`, or `None` unless `digest` is `sha256:` and 64 lowercase hex
/// digits (so it can never name a path outside `DIR`).
pub fn blob_file(dir: &Path, digest: &str) -> Option<PathBuf> {
    Some(dir.join("blobs").join("sha256").join(sha256_hex(digest)?))
}

/// A JSON document of the layout, read up to [`MAX_DOCUMENT_BYTES`].
pub(crate) fn read_document(layout: &dyn LayoutFiles, rel: &str) -> Result<Vec<u8>, BuildError> {
    let mut bytes = Vec::new();
    layout
        .open(rel)?
        .take(MAX_DOCUMENT_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(|source| BuildError::Io {
            op: "read",
            path: format!("{rel} in {}", layout.describe()),
            source,
        })?;
    if bytes.len() as u64 > MAX_DOCUMENT_BYTES {
        return Err(oci_err(
            layout,
            format!("{rel} is larger than {MAX_DOCUMENT_BYTES} bytes"),
        ));
    }
    Ok(bytes)
}

/// A manifest or index blob, checked against its descriptor.
fn read_blob_document(layout: &dyn LayoutFiles, d: &Descriptor) -> Result<Vec<u8>, BuildError> {
    if d.size > MAX_DOCUMENT_BYTES {
        return Err(oci_err(
            layout,
            format!("{}: {} bytes is too large", d.digest, d.size),
        ));
    }
    let bytes = read_document(layout, &blob_rel(layout, &d.digest)?)?;
    let digest = format!("sha256:{}", hex::encode(Sha256::digest(&bytes)));
    check_blob(layout, d, bytes.len() as u64, &digest)?;
    Ok(bytes)
}

/// A blob of `size` bytes with digest `got` must match its descriptor.
fn check_blob(
    layout: &dyn LayoutFiles,
    d: &Descriptor,
    size: u64,
    got: &str,
) -> Result<(), BuildError> {
    if size != d.size || got != d.digest {
        return Err(oci_err(
            layout,
            format!(
                "blob {} does not match its descriptor: {size} bytes with digest {got}, expected {} bytes",
                d.digest, d.size
            ),
        ));
    }
    Ok(())
}

/// A reader that hashes and counts what passes through it.
pub(crate) struct Checked<R> {
    inner: R,
    hasher: Sha256,
    bytes: u64,
}

impl<R: Read> Checked<R> {
    pub(crate) fn new(inner: R) -> Self {
        Checked {
            inner,
            hasher: Sha256::new(),
            bytes: 0,
        }
    }

    fn verify(self, layout: &dyn LayoutFiles, d: &Descriptor) -> Result<(), BuildError> {
        let bytes = self.bytes;
        let got = self.digest();
        check_blob(layout, d, bytes, &got)
    }

    /// `sha256:` and the hex digest of everything read so far.
    pub(crate) fn digest(self) -> String {
        format!("sha256:{}", hex::encode(self.hasher.finalize()))
    }
}

impl<R: Read> Read for Checked<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        self.bytes += n as u64;
        Ok(n)
    }
}
