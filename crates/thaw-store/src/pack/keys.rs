//! Every object key of a store, in one place: packs and their indexes, image manifests,
//! tags, start-up traces and merged prefetch lists. The layout is documented in
//! docs/format.md.

use thaw_core::{ImageId, PackId};

/// Packs (`<id>.pack`) and their indexes (`<id>.idx`).
pub const PACKS_PREFIX: &str = "packs";
/// Image manifests, named by image id.
pub const IMAGES_PREFIX: &str = "images";
/// Tags, named by the hex of the tag's name; each holds an image id.
pub const TAGS_PREFIX: &str = "tags";
/// Start-up traces, under the image's id.
pub const TRACES_PREFIX: &str = "traces";
/// Each image's traces merged by first access, rewritten at every push, so a prewarm
/// costs one GET.
pub const PREFETCH_PREFIX: &str = "prefetch";

/// Each layered image's OCI manifest and config, as its source gave them (or as
/// `thaw snapshotter import` made them), under the image's id.
pub const DOCUMENTS_PREFIX: &str = "oci";

/// gc's deletion marks (`gc/marks/<pack>`) and its clock object.
pub const GC_PREFIX: &str = "gc";
/// Deletion marks, one per pack gc found unreferenced.
pub const MARKS_PREFIX: &str = "gc/marks";
/// The object gc writes and reads back to learn the store's time.
pub const CLOCK_KEY: &str = "gc/clock";

/// The deletion mark of a pack.
pub fn mark_key(pack: &PackId) -> String {
    format!("{MARKS_PREFIX}/{pack}")
}

/// The pack a mark key names, if it is one.
pub fn pack_of_mark_key(key: &str) -> Option<PackId> {
    key.strip_prefix("gc/marks/")?.parse().ok()
}

/// The pack object.
pub fn pack_key(pack: &PackId) -> String {
    format!("{PACKS_PREFIX}/{pack}.pack")
}

/// The pack's index object (written after the pack).
pub fn index_key(pack: &PackId) -> String {
    format!("{PACKS_PREFIX}/{pack}.idx")
}

/// The pack an index key names, if it is one.
pub fn pack_of_index_key(key: &str) -> Option<PackId> {
    key.strip_prefix("packs/")?
        .strip_suffix(".idx")?
        .parse()
        .ok()
}

/// An image's manifest.
pub fn image_key(id: &ImageId) -> String {
    format!("{IMAGES_PREFIX}/{id}")
}

/// The image a manifest key names, if it is one.
pub fn image_of_key(key: &str) -> Option<ImageId> {
    key.strip_prefix("images/")?.parse().ok()
}

/// A tag (its name hex-encoded, so any valid tag is a safe key).
pub fn tag_key(name: &str) -> String {
    format!("{TAGS_PREFIX}/{}", hex::encode(name))
}

/// The directory of an image's traces.
pub fn traces_dir(image: &ImageId) -> String {
    format!("{TRACES_PREFIX}/{image}")
}

/// One trace of an image, named by a hash of its content.
pub fn trace_key(image: &ImageId, hash: &str) -> String {
    format!("{TRACES_PREFIX}/{image}/{hash}")
}

/// An image's OCI documents.
pub fn documents_key(image: &ImageId) -> String {
    format!("{DOCUMENTS_PREFIX}/{image}")
}

/// An image's merged prefetch list.
pub fn prefetch_key(image: &ImageId) -> String {
    format!("{PREFETCH_PREFIX}/{image}")
}
