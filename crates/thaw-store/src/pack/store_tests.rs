//! Decoding stored chunks: refusals that protect memory, and the reused zstd context.

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

fn zstd_entry(raw: &[u8], stored: &[u8]) -> PackEntry {
    PackEntry {
        id: ChunkId::of(raw),
        offset: 0,
        stored_len: stored.len() as u32,
        raw_len: raw.len() as u32,
        compression: Compression::Zstd,
    }
}

#[test]
fn a_damaged_frame_fails_and_the_thread_goes_on_decoding() {
    // Each thread reuses one zstd context: a failure must not leave it unusable.
    let pack = PackId([0; 32]);
    let raw: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
    let stored = zstd::bulk::compress(&raw, 3).unwrap();
    let entry = zstd_entry(&raw, &stored);
    for round in 0..3 {
        let good = decode_chunk(&pack, &entry, Bytes::from(stored.clone())).unwrap();
        assert_eq!(&good[..], &raw[..], "round {round}");
        let mut damaged = stored.clone();
        let mid = damaged.len() / 2;
        damaged.truncate(mid);
        let err = decode_chunk(&pack, &entry, Bytes::from(damaged)).unwrap_err();
        assert!(err.to_string().contains("zstd"), "{err}");
    }
    // A frame longer than its entry says is refused, not grown into.
    let short = zstd_entry(&raw[..1000], &stored);
    assert!(decode_chunk(&pack, &short, Bytes::from(stored)).is_err());
}
