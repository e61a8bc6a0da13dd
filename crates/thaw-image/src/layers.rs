//! Layer bookkeeping while a layered image is built: each layer's `diff_id` (the digest
//! of its uncompressed tar), checked against the image config, the chain ids containerd
//! names layer prefixes by, and, when asked, the tree of every prefix.

use crate::tree::Tree;
use sha2::{Digest, Sha256};
use std::sync::Mutex;
use thaw_core::Manifest;
use thaw_store::ImageDocuments;

/// One layer prefix of a built image: layers 1..=i.
#[derive(Debug, Clone)]
pub struct LayerPrefix {
    /// Layer i's `diff_id`.
    pub diff_id: String,
    /// The chain id of layers 1..=i.
    pub chain_id: String,
    /// The tree of layers 1..=i, when the build records prefixes.
    pub manifest: Option<Manifest>,
}

/// The `rootfs.diff_ids` of an image config document.
pub(crate) fn config_diff_ids(config: &[u8]) -> Result<Vec<String>, String> {
    #[derive(serde::Deserialize)]
    struct RootFs {
        rootfs: DiffIds,
    }
    #[derive(serde::Deserialize)]
    struct DiffIds {
        diff_ids: Vec<String>,
    }
    let parsed: RootFs = serde_json::from_slice(config).map_err(|e| e.to_string())?;
    Ok(parsed.rootfs.diff_ids)
}

/// containerd's chain id: the first layer's `diff_id`, then
/// `sha256(parent_chain + " " + diff_id)`.
pub fn chain_id(parent: Option<&str>, diff_id: &str) -> String {
    match parent {
        None => diff_id.to_string(),
        Some(p) => format!(
            "sha256:{}",
            hex::encode(Sha256::digest(format!("{p} {diff_id}").as_bytes()))
        ),
    }
}

/// What the sources report as they apply layers.
#[derive(Debug, Default)]
pub(crate) struct LayerLog {
    /// Keep each prefix's tree (for the containerd snapshotter).
    pub record_trees: bool,
    prefixes: Mutex<Vec<LayerPrefix>>,
    documents: Mutex<Option<ImageDocuments>>,
}

impl LayerLog {
    /// A log that keeps each prefix's tree when `record_trees` is set.
    pub fn new(record_trees: bool) -> Self {
        LayerLog {
            record_trees,
            prefixes: Mutex::default(),
            documents: Mutex::default(),
        }
    }

    /// The source's manifest (of `media_type`) and config, kept when both are UTF-8 (JSON
    /// always is; anything else cannot be handed on).
    pub fn set_documents(&self, media_type: &str, manifest: &[u8], config: &[u8]) {
        let (Ok(manifest), Ok(config)) = (
            String::from_utf8(manifest.to_vec()),
            String::from_utf8(config.to_vec()),
        ) else {
            return;
        };
        *lock(&self.documents) = Some(ImageDocuments {
            manifest_media_type: media_type.to_string(),
            manifest,
            config,
        });
    }

    /// The documents recorded, if the source had them.
    pub fn take_documents(&self) -> Option<ImageDocuments> {
        lock(&self.documents).take()
    }

    /// Layer `diff_id` was applied, giving `tree`.
    pub fn layer_done(&self, tree: &Tree, diff_id: &str) {
        let mut prefixes = lock(&self.prefixes);
        let chain = chain_id(prefixes.last().map(|p| p.chain_id.as_str()), diff_id);
        prefixes.push(LayerPrefix {
            diff_id: diff_id.to_string(),
            chain_id: chain,
            manifest: self.record_trees.then(|| tree.to_manifest()),
        });
    }

    /// The prefixes recorded, in layer order.
    pub fn take(&self) -> Vec<LayerPrefix> {
        std::mem::take(&mut *lock(&self.prefixes))
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chain_ids_as_containerd_computes_them() {
        // A two-layer image pulled by containerd 1.6 here: `ctr snapshots ls` named its
        // layers' snapshots by these chain ids.
        let one = "sha256:5d5ca7df7e03a499401b14860097ff52670ccea3f9ceb3cb48e0326bed58a961";
        let two = "sha256:ef012aff3b5f9235f8b372f7ab798be420035e46e696fe005c53c6073fe4cee5";
        assert_eq!(chain_id(None, one), one);
        assert_eq!(
            chain_id(Some(one), two),
            "sha256:634cf384d4e1b8f4945e908075a268e708053a5bcf72348f960b1b9c45211c05"
        );
    }
}
