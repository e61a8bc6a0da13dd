//! What a shared store holds, read back by every node: manifests, pack indexes, stored
//! chunks and start-up traces.

use bytes::Bytes;
use thaw_core::pack::{Compression, PackEntry, PackIndex};
use thaw_core::trace::Trace;
use thaw_core::{ChunkId, Manifest, PackId};

/// `Manifest::decode`; a manifest it accepts walks, yields every file's extents and
/// encodes back to itself.
pub fn manifest(data: &[u8]) {
    let Ok(m) = Manifest::decode(data) else {
        return;
    };
    let mut files = Vec::new();
    m.walk(|_, ino| files.push(ino));
    for ino in files {
        let _ = m.file_extents(ino);
    }
    let again = Manifest::decode(&m.encode());
    assert_eq!(
        again.ok().as_ref(),
        Some(&m),
        "a manifest changed in a round trip"
    );
}

/// `PackIndex::decode`, and its round trip.
pub fn pack_index(data: &[u8]) {
    let Ok(index) = PackIndex::decode(data) else {
        return;
    };
    let again = PackIndex::decode(&index.encode());
    assert_eq!(
        again.ok().as_ref(),
        Some(&index),
        "a pack index changed in a round trip"
    );
}

/// `decode_chunk`: stored bytes (zstd or plain) claimed to be a chunk of some length.
/// The first byte picks the compression and whether the id is the stored bytes' own
/// (so plain chunks can verify), the next four the claimed length.
pub fn pack_chunk(data: &[u8]) {
    let Some((&flags, rest)) = data.split_first() else {
        return;
    };
    let Some((len, stored)) = rest.split_first_chunk::<4>() else {
        return;
    };
    let raw_len = u32::from_le_bytes(*len);
    let id = if flags & 2 == 0 {
        ChunkId::of(stored)
    } else {
        ChunkId([flags; 32])
    };
    let entry = PackEntry {
        id,
        offset: 0,
        stored_len: u32::try_from(stored.len()).unwrap_or(u32::MAX),
        raw_len,
        compression: if flags & 1 == 0 {
            Compression::None
        } else {
            Compression::Zstd
        },
    };
    let pack = PackId([0; 32]);
    if let Ok(chunk) =
        thaw_store::pack::store::decode_chunk(&pack, &entry, Bytes::copy_from_slice(stored))
    {
        assert_eq!(
            chunk.len(),
            raw_len as usize,
            "a chunk of the wrong length was served"
        );
        assert_eq!(ChunkId::of(&chunk), id, "an unverified chunk was served");
    }
}

/// `Trace::decode`, and its round trip.
pub fn trace(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(t) = Trace::decode(text) else {
        return;
    };
    let again = Trace::decode(&t.encode());
    assert_eq!(
        again.ok().as_ref(),
        Some(&t),
        "a trace changed in a round trip"
    );
}
