//! Decoding stored chunks: refusals that protect memory.

use super::*;

#[test]
fn a_raw_length_above_the_largest_chunk_is_refused_before_any_allocation() {
    // From fuzzing (fuzz/regressions/pack_chunk): a zstd frame claiming 4 GiB made
    // the decoder reserve that much before it read a byte.
    let entry = PackEntry {
        id: ChunkId([1; 32]),
        offset: 0,
        stored_len: 9,
        raw_len: thaw_core::MAX_CHUNK_LEN + 1,
        compression: Compression::Zstd,
    };
    let err = decode_chunk(
        &PackId([0; 32]),
        &entry,
        Bytes::from_static(b"\x28\xb5\x2f\xfd\0\0\0\0\0"),
    )
    .unwrap_err();
    assert!(err.to_string().contains("above the largest chunk"), "{err}");
}
