//! Reading an OCI image layout (a directory as `skopeo copy ... oci:DIR:TAG` or `umoci`
//! write it): `index.json`, the image manifest, and its layers applied in order, each
//! blob checked against its SHA-256 digest and size.
//!
//! Only the layout's JSON documents are parsed here; layers go through `source_tar`.

use crate::ingest::Ingest;
use crate::source_tar::{apply_layer, Whiteouts};
use crate::tree::Tree;
use crate::BuildError;
use serde::Deserialize;
use sha2::{Digest, Sha256};
use std::io::Read;
use std::path::{Path, PathBuf};

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
    /// Its layers, bottom first.
    pub layers: Vec<Descriptor>,
}

fn oci_err(layout: &Path, reason: impl Into<String>) -> BuildError {
    BuildError::Oci {
        layout: layout.display().to_string(),
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
/// new tree.
pub fn build_tree(
    layout: &Path,
    reference: Option<&str>,
    ingest: &Ingest<'_>,
) -> Result<Tree, BuildError> {
    let marker = read_document(layout, &layout.join("oci-layout"))?;
    if !String::from_utf8_lossy(&marker).contains("imageLayoutVersion") {
        return Err(oci_err(
            layout,
            "oci-layout does not name an imageLayoutVersion",
        ));
    }
    let index: Index = parse(
        layout,
        "index.json",
        &read_document(layout, &layout.join("index.json"))?,
    )?;
    let chosen = choose(layout, &index.manifests, reference)?;
    let manifest = resolve_manifest(layout, chosen, 0)?;
    let mut tree = Tree::new(crate::tree::dir_meta_default());
    for layer in &manifest.layers {
        if !LAYER_TYPES.contains(&layer.media_type.as_str()) {
            return Err(oci_err(
                layout,
                format!(
                    "layer {}: unsupported media type {}",
                    layer.digest, layer.media_type
                ),
            ));
        }
        let path = blob_path(layout, &layer.digest)?;
        let file = std::fs::File::open(&path).map_err(crate::error::io_err("open", &path))?;
        let mut checked = Checked::new(file);
        apply_layer(&mut tree, &mut checked, ingest, Whiteouts::Apply)?;
        // A tar stream may end before its blob does (padding): hash all of it.
        std::io::copy(&mut checked, &mut std::io::sink())
            .map_err(crate::error::io_err("read", &path))?;
        checked.verify(layout, layer)?;
    }
    Ok(tree)
}

/// Picks the manifest named `reference` (the `ref.name` annotation), or the only one.
fn choose<'a>(
    layout: &Path,
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

/// Follows nested indexes (multi-platform images) to the image manifest for this host.
fn resolve_manifest(
    layout: &Path,
    d: &Descriptor,
    depth: u32,
) -> Result<ImageManifest, BuildError> {
    if depth > 4 {
        return Err(oci_err(layout, "indexes nested too deep"));
    }
    let bytes = read_blob_document(layout, d)?;
    match d.media_type.as_str() {
        MEDIA_MANIFEST | MEDIA_DOCKER_MANIFEST => parse(layout, &d.digest, &bytes),
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

fn parse<T: for<'de> Deserialize<'de>>(
    layout: &Path,
    what: &str,
    bytes: &[u8],
) -> Result<T, BuildError> {
    serde_json::from_slice(bytes).map_err(|e| oci_err(layout, format!("{what}: {e}")))
}

/// `blobs/sha256/<hex>` for a digest, refusing anything but a well-formed SHA-256 digest
/// (the digest comes from the layout and becomes a path).
fn blob_path(layout: &Path, digest: &str) -> Result<PathBuf, BuildError> {
    blob_file(layout, digest).ok_or_else(|| {
        oci_err(
            layout,
            format!("unsupported or malformed digest {digest:?}"),
        )
    })
}

/// `DIR/blobs/sha256/<hex>`, or `None` unless `digest` is `sha256:` and 64 lowercase hex
/// digits (so it can never name a path outside `DIR`).
pub fn blob_file(dir: &Path, digest: &str) -> Option<PathBuf> {
    let hex = digest
        .strip_prefix("sha256:")
        .filter(|h| h.len() == 64 && h.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')))?;
    Some(dir.join("blobs").join("sha256").join(hex))
}

fn read_document(layout: &Path, path: &Path) -> Result<Vec<u8>, BuildError> {
    let file = std::fs::File::open(path).map_err(crate::error::io_err("open", path))?;
    let mut bytes = Vec::new();
    file.take(MAX_DOCUMENT_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(crate::error::io_err("read", path))?;
    if bytes.len() as u64 > MAX_DOCUMENT_BYTES {
        return Err(oci_err(
            layout,
            format!(
                "{} is larger than {MAX_DOCUMENT_BYTES} bytes",
                path.display()
            ),
        ));
    }
    Ok(bytes)
}

/// A manifest or index blob, checked against its descriptor.
fn read_blob_document(layout: &Path, d: &Descriptor) -> Result<Vec<u8>, BuildError> {
    if d.size > MAX_DOCUMENT_BYTES {
        return Err(oci_err(
            layout,
            format!("{}: {} bytes is too large", d.digest, d.size),
        ));
    }
    let path = blob_path(layout, &d.digest)?;
    let bytes = read_document(layout, &path)?;
    let digest = format!("sha256:{}", hex::encode(Sha256::digest(&bytes)));
    check_blob(layout, d, bytes.len() as u64, &digest)?;
    Ok(bytes)
}

/// A blob of `size` bytes with digest `got` must match its descriptor.
fn check_blob(layout: &Path, d: &Descriptor, size: u64, got: &str) -> Result<(), BuildError> {
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
struct Checked<R> {
    inner: R,
    hasher: Sha256,
    bytes: u64,
}

impl<R: Read> Checked<R> {
    fn new(inner: R) -> Self {
        Checked {
            inner,
            hasher: Sha256::new(),
            bytes: 0,
        }
    }

    fn verify(self, layout: &Path, d: &Descriptor) -> Result<(), BuildError> {
        let got = format!("sha256:{}", hex::encode(self.hasher.finalize()));
        check_blob(layout, d, self.bytes, &got)
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
