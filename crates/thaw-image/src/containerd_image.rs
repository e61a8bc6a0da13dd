//! What containerd is told an image in the store is: its OCI manifest and config and the
//! chain ids of its layer prefixes, each of which thaw's snapshotter serves from a tagged
//! flattened image. A layered build with `--containerd` kept all of these; any other
//! image is made one layer here: the tar [`crate::write_layer_tar`] writes of its tree,
//! whose digest is the layer's `diff_id`, with a config made from the image's run
//! configuration. `thaw export --tar` gives that layer back byte for byte.

use crate::oci::{host_architecture, ImageManifest, MEDIA_DOCKER_MANIFEST, MEDIA_MANIFEST};
use crate::ExportError;
use serde_json::{json, Map, Value};
use sha2::{Digest, Sha256};
use std::sync::Arc;
use thaw_core::{ImageConfig, ImageId};
use thaw_store::{ChunkReader, ImageDocuments, RepoError, Repository};

/// The media type of an uncompressed OCI layer.
pub const MEDIA_LAYER_TAR: &str = "application/vnd.oci.image.layer.v1.tar";
/// The media type of an OCI image config.
pub const MEDIA_CONFIG: &str = "application/vnd.oci.image.config.v1+json";

/// An image as containerd will know it.
#[derive(Debug, Clone)]
pub struct ContainerdImage {
    /// The manifest's media type.
    pub manifest_media_type: String,
    /// The manifest document.
    pub manifest: Vec<u8>,
    /// The config document.
    pub config: Vec<u8>,
    /// The config's media type, as the manifest names it.
    pub config_media_type: String,
    /// The layer blobs' digests, bottom first (containerd never receives them).
    pub layer_digests: Vec<String>,
    /// The chain id of every layer prefix, bottom first; each is tagged in the store.
    pub chain_ids: Vec<String>,
    /// Whether the image was made one layer here (it had no recorded layer prefixes).
    pub flattened: bool,
}

impl ContainerdImage {
    /// `sha256:HEX` of the manifest.
    pub fn manifest_digest(&self) -> String {
        sha256_digest(&self.manifest)
    }

    /// `sha256:HEX` of the config.
    pub fn config_digest(&self) -> String {
        sha256_digest(&self.config)
    }
}

/// Why an image cannot be handed to containerd.
#[derive(Debug, thiserror::Error)]
pub enum ContainerdImageError {
    /// The store failed, or holds damaged data.
    #[error(transparent)]
    Repo(#[from] RepoError),
    /// Writing the flattened layer failed (a chunk could not be read and verified).
    #[error("writing the image as a layer: {0}")]
    Layer(#[from] ExportError),
    /// The stored documents contradict each other.
    #[error("the OCI documents of image {image}: {reason}")]
    BadDocuments {
        /// The image.
        image: ImageId,
        /// What is wrong.
        reason: String,
    },
}

/// Makes `image` ready for containerd: uses its recorded layers when every prefix is
/// tagged, and otherwise makes it one layer (reading every chunk once), tags that
/// layer's chain and stores the documents made, so the next import reads nothing.
pub async fn prepare(
    repo: &Repository,
    reader: Arc<ChunkReader>,
    image: ImageId,
) -> Result<ContainerdImage, ContainerdImageError> {
    if let Some(documents) = repo.get_documents(&image).await? {
        let layered = from_documents(image, &documents)?;
        if all_chains_tagged(repo, &layered.chain_ids).await? {
            return Ok(layered);
        }
    }
    flatten(repo, reader, image).await
}

/// Whether each chain id is tagged (the snapshotter serves each prefix from its tag;
/// the top one names the image's tree without its run configuration).
async fn all_chains_tagged(repo: &Repository, chain_ids: &[String]) -> Result<bool, RepoError> {
    for chain in chain_ids {
        let Some(tag) = thaw_core::tag::chain_tag(chain) else {
            return Ok(false);
        };
        if repo.get_tag(&tag).await?.is_none() {
            return Ok(false);
        }
    }
    Ok(!chain_ids.is_empty())
}

/// The image as its stored documents describe it, after checking that they agree.
pub fn from_documents(
    image: ImageId,
    documents: &ImageDocuments,
) -> Result<ContainerdImage, ContainerdImageError> {
    let bad = |reason: String| ContainerdImageError::BadDocuments { image, reason };
    if ![MEDIA_MANIFEST, MEDIA_DOCKER_MANIFEST].contains(&documents.manifest_media_type.as_str()) {
        return Err(bad(format!(
            "unsupported manifest media type {}",
            documents.manifest_media_type
        )));
    }
    let manifest: ImageManifest =
        serde_json::from_str(&documents.manifest).map_err(|e| bad(format!("manifest: {e}")))?;
    let config = documents.config.as_bytes();
    if manifest.config.digest != sha256_digest(config)
        || manifest.config.size != config.len() as u64
    {
        return Err(bad(
            "the config does not match the manifest's descriptor".into()
        ));
    }
    let diff_ids =
        crate::layers::config_diff_ids(config).map_err(|e| bad(format!("config: {e}")))?;
    if diff_ids.len() != manifest.layers.len() {
        return Err(bad(format!(
            "{} layers but {} diff_ids",
            manifest.layers.len(),
            diff_ids.len()
        )));
    }
    Ok(ContainerdImage {
        manifest_media_type: documents.manifest_media_type.clone(),
        manifest: documents.manifest.clone().into_bytes(),
        config: config.to_vec(),
        config_media_type: manifest.config.media_type.clone(),
        layer_digests: manifest.layers.iter().map(|l| l.digest.clone()).collect(),
        chain_ids: chain_ids(&diff_ids),
        flattened: false,
    })
}

/// The chain id of every prefix of `diff_ids`.
fn chain_ids(diff_ids: &[String]) -> Vec<String> {
    let mut out: Vec<String> = Vec::with_capacity(diff_ids.len());
    for d in diff_ids {
        let chain = crate::chain_id(out.last().map(String::as_str), d);
        out.push(chain);
    }
    out
}

/// Makes the image one layer: writes its tar to learn the digest, tags the chain and
/// stores the documents.
async fn flatten(
    repo: &Repository,
    reader: Arc<ChunkReader>,
    image: ImageId,
) -> Result<ContainerdImage, ContainerdImageError> {
    let manifest = Arc::new(repo.get_manifest(&image).await?);
    let run = manifest.config.clone().unwrap_or_default();
    let (layer, _) = crate::write_layer_tar(reader, manifest, std::io::sink()).await?;
    let config = config_document(&run, &layer.digest);
    let documents = ImageDocuments {
        manifest_media_type: MEDIA_MANIFEST.into(),
        manifest: manifest_document(&config, &layer),
        config,
    };
    let tag = thaw_core::tag::chain_tag(&layer.digest).ok_or_else(|| {
        ContainerdImageError::BadDocuments {
            image,
            reason: format!("layer digest {} is not sha256", layer.digest),
        }
    })?;
    repo.set_tag(&tag, &image).await?;
    repo.put_documents(&image, &documents).await?;
    let mut made = from_documents(image, &documents)?;
    made.flattened = true;
    Ok(made)
}

/// An OCI image config for one layer with digest `diff_id` and the run configuration
/// `run`. No creation time: the same image always gives the same config.
fn config_document(run: &ImageConfig, diff_id: &str) -> String {
    let mut section = Map::new();
    let mut put = |key: &str, value: Value| {
        section.insert(key.to_string(), value);
    };
    if let Some(e) = &run.entrypoint {
        put("Entrypoint", json!(e));
    }
    if let Some(c) = &run.cmd {
        put("Cmd", json!(c));
    }
    if !run.env.is_empty() {
        put("Env", json!(run.env));
    }
    if !run.working_dir.is_empty() {
        put("WorkingDir", json!(run.working_dir));
    }
    if !run.user.is_empty() {
        put("User", json!(run.user));
    }
    if !run.exposed_ports.is_empty() {
        let ports: Map<String, Value> = run
            .exposed_ports
            .iter()
            .map(|p| (p.clone(), json!({})))
            .collect();
        put("ExposedPorts", Value::Object(ports));
    }
    if !run.labels.is_empty() {
        let labels: Map<String, Value> = run
            .labels
            .iter()
            .map(|(k, v)| (k.clone(), json!(v)))
            .collect();
        put("Labels", Value::Object(labels));
    }
    if let Some(s) = &run.stop_signal {
        put("StopSignal", json!(s));
    }
    json!({
        "architecture": host_architecture(),
        "os": "linux",
        "config": section,
        "rootfs": { "type": "layers", "diff_ids": [diff_id] },
        "history": [{ "created_by": "thaw snapshotter import (the image flattened to one layer)" }],
    })
    .to_string()
}

/// An OCI manifest for `config` and the one uncompressed layer.
fn manifest_document(config: &str, layer: &crate::LayerTar) -> String {
    json!({
        "schemaVersion": 2,
        "mediaType": MEDIA_MANIFEST,
        "config": {
            "mediaType": MEDIA_CONFIG,
            "digest": sha256_digest(config.as_bytes()),
            "size": config.len(),
        },
        "layers": [{
            "mediaType": MEDIA_LAYER_TAR,
            "digest": layer.digest,
            "size": layer.size,
        }],
    })
    .to_string()
}

fn sha256_digest(bytes: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(bytes)))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, reason = "tests")]
    use super::*;

    fn made(run: &ImageConfig) -> ImageDocuments {
        let layer = crate::LayerTar {
            size: 10240,
            digest: format!("sha256:{}", "ab".repeat(32)),
        };
        let config = config_document(run, &layer.digest);
        ImageDocuments {
            manifest_media_type: MEDIA_MANIFEST.into(),
            manifest: manifest_document(&config, &layer),
            config,
        }
    }

    #[test]
    fn a_made_image_reads_back_with_its_run_configuration_and_one_chain() {
        let run = ImageConfig {
            cmd: Some(vec!["cat".into(), "/etc/msg".into()]),
            env: vec!["A=1".into()],
            working_dir: "/srv".into(),
            exposed_ports: vec!["80/tcp".into()],
            ..Default::default()
        };
        let docs = made(&run);
        assert_eq!(docs, made(&run), "the same image gives the same documents");
        let image = from_documents(ImageId([1; 32]), &docs).unwrap();
        assert_eq!(image.chain_ids, vec![format!("sha256:{}", "ab".repeat(32))]);
        assert_eq!(image.layer_digests, image.chain_ids);
        assert_eq!(image.config_media_type, MEDIA_CONFIG);
        let back = crate::image_config::from_json(&image.config).unwrap();
        assert_eq!(back, run);
    }

    #[test]
    fn documents_that_disagree_are_refused() {
        let id = ImageId([2; 32]);
        let mut docs = made(&ImageConfig::default());
        docs.config.push(' ');
        let err = from_documents(id, &docs).unwrap_err().to_string();
        assert!(err.contains("does not match the manifest"), "{err}");

        let mut docs = made(&ImageConfig::default());
        docs.manifest_media_type = "application/vnd.oci.image.index.v1+json".into();
        let err = from_documents(id, &docs).unwrap_err().to_string();
        assert!(err.contains("unsupported manifest media type"), "{err}");

        let mut docs = made(&ImageConfig::default());
        docs.manifest = docs.manifest.replace(
            "\"layers\":[",
            "\"layers\":[{\"mediaType\":\"x\",\"digest\":\"sha256:00\",\"size\":1},",
        );
        let err = from_documents(id, &docs).unwrap_err().to_string();
        assert!(err.contains("2 layers but 1 diff_ids"), "{err}");
    }
}
