//! What a build reads from outside: tar streams, `docker save` archives (with the OCI
//! layout inside them), OCI documents and registry references.

use std::sync::Arc;
use thaw_image::{BuildOptions, BuildSource};
use thaw_store::{ObjectStoreBackend, Repository};

/// Builds `data` as a tar file into a fresh memory store. Whatever it accepts must read
/// back as a valid manifest.
pub fn tar_build(data: &[u8]) {
    build_file(data, BuildSource::TarFile);
}

/// Builds `data` as a `docker save` archive (legacy, or with an OCI layout inside, whose
/// index, manifests, configs and layers are then checked as `oci:` layouts are).
pub fn docker_archive(data: &[u8]) {
    build_file(data, |file| BuildSource::DockerArchive {
        file,
        reference: None,
    });
}

/// Writes `data` to a temporary file and builds what `source` makes of it.
fn build_file(data: &[u8], source: impl FnOnce(std::path::PathBuf) -> BuildSource) {
    let Some(rt) = crate::runtime() else {
        return;
    };
    let Ok(dir) = tempfile::tempdir() else {
        return;
    };
    let file = dir.path().join("input");
    if std::fs::write(&file, data).is_err() {
        return;
    }
    rt.block_on(async {
        let store: Arc<dyn thaw_store::BlobStore> = Arc::new(ObjectStoreBackend::memory());
        let Ok(repo) = Repository::open(store).await else {
            return;
        };
        let options = BuildOptions {
            containerd: true,
            ..Default::default()
        };
        if let Ok(report) = thaw_image::build(&repo, source(file), options).await {
            let manifest = repo.get_manifest(&report.image).await;
            assert!(
                manifest.is_ok(),
                "a built image does not read back: {manifest:?}"
            );
        }
    });
}

/// OCI documents as thaw reads them: the input split at its first NUL into a manifest
/// and a config, each parsed every way thaw parses one, and then checked together as
/// `thaw snapshotter import` checks stored documents.
pub fn oci_documents(data: &[u8]) {
    let (manifest, config) = crate::split2(data);
    for doc in [manifest, config] {
        let _ = thaw_image::image_config::from_json(doc);
        if let Ok(index) = serde_json::from_slice::<thaw_image::oci::Index>(doc) {
            let _ = thaw_image::oci::for_this_host(&index);
        }
        let _ = serde_json::from_slice::<thaw_image::oci::ImageManifest>(doc);
    }
    let (Ok(manifest), Ok(config)) = (std::str::from_utf8(manifest), std::str::from_utf8(config))
    else {
        return;
    };
    let documents = thaw_store::ImageDocuments {
        manifest_media_type: thaw_image::oci::MEDIA_MANIFEST.into(),
        manifest: manifest.into(),
        config: config.into(),
    };
    let image = thaw_core::ImageId([0; 32]);
    if let Ok(made) = thaw_image::containerd_image::from_documents(image, &documents) {
        assert_eq!(made.chain_ids.len(), made.layer_digests.len());
    }
}

/// A registry reference, as `thaw build docker://...` and the daemon read one.
pub fn registry_reference(data: &[u8]) {
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = thaw_registry::ImageRef::parse(text);
    }
}
