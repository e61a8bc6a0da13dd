//! Builds images from directory trees, tar streams, OCI image layouts and `docker save`
//! archives (keeping the image's run configuration), and exports
//! them back to directories.
//!
//! Building reads files on a blocking thread, cuts them with content-defined chunking,
//! hands new chunks to the store's [`thaw_store::PackWriter`] (which compresses and
//! uploads in the background) and finally stores the manifest and tag.

mod build;
pub mod containerd_image;
mod docker_archive;
mod error;
mod export;
pub mod image_config;
mod ingest;
mod layers;
pub mod layout;
pub mod oci;
mod source_dir;
mod source_tar;
mod sys;
mod tar_layer;
mod tree;

pub use build::{build, BuildOptions, BuildReport, BuildSource};
pub use error::{BuildError, ExportError};
pub use export::{export, ExportReport};
pub use image_config::ConfigEdits;
pub use layers::{chain_id, LayerPrefix};
pub use tar_layer::{write_layer_tar, LayerTar};
