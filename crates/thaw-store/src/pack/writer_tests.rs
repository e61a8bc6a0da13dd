//! The writer packs chunks in the order they were added, across batches and packs.

use super::*;
use crate::blob::backend::ObjectStoreBackend;

fn chunk(i: u32, len: usize) -> (ChunkId, Bytes) {
    // Distinct, poorly compressible bytes, so chunk sizes in packs stay predictable.
    let mut state = u64::from(i).wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let data: Vec<u8> = (0..len)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state as u8
        })
        .collect();
    (ChunkId::of(&data), Bytes::from(data))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chunks_are_packed_in_the_order_added_across_batches_and_packs() {
    let packs = PackStore::open(Arc::new(ObjectStoreBackend::memory()))
        .await
        .unwrap_or_else(|e| panic!("open: {e}"));
    let config = WriterConfig {
        target_pack_size: 3 * BATCH_BYTES,
        threads: 2,
        ..WriterConfig::default()
    };
    // About 8 batches and 3 packs; the last batch is not full and is sent by `finish`.
    let chunks: Vec<_> = (0..130)
        .map(|i| chunk(i, 64 * 1024 + 7 * i as usize))
        .collect();
    let writer = PackWriter::new(packs.clone(), config);
    let added = tokio::task::spawn_blocking(move || {
        for (id, data) in &chunks {
            assert!(writer.add(*id, data.clone()).unwrap_or(false), "new chunk");
        }
        // Added twice: deduplicated, not packed again.
        assert!(!writer.add(chunks[3].0, chunks[3].1.clone()).unwrap_or(true));
        (writer, chunks)
    });
    let (writer, chunks) = added.await.unwrap_or_else(|e| panic!("adder: {e}"));
    let stats = writer
        .finish()
        .await
        .unwrap_or_else(|e| panic!("finish: {e}"));
    assert_eq!((stats.chunks_new, stats.chunks_dedup), (130, 1));
    assert!(stats.packs >= 3, "{} packs", stats.packs);
    // Every chunk is found, and in add order: by pack in publish order, then by offset.
    let order: Vec<_> = chunks
        .iter()
        .map(|(id, _)| {
            let at = packs
                .location(id)
                .unwrap_or_else(|| panic!("chunk {id} not packed"));
            (at.pack, at.entry.offset)
        })
        .collect();
    let packs_in_order: Vec<_> = {
        let mut seen = Vec::new();
        for (pack, _) in &order {
            if !seen.contains(pack) {
                seen.push(*pack);
            }
        }
        seen
    };
    assert_eq!(
        packs_in_order.len() as u64,
        stats.packs,
        "a pack's chunks interleave with another's"
    );
    let rank = |p: &thaw_core::PackId| packs_in_order.iter().position(|q| q == p);
    let sorted = {
        let mut s = order.clone();
        s.sort_by_key(|(p, off)| (rank(p), *off));
        s
    };
    assert_eq!(order, sorted, "chunks are not in the order they were added");
}

/// Writes `count` chunks in packs of about `BATCH_BYTES` through `store`, then checks
/// that every chunk reads back whole from its pack. Returns the writer's stats.
async fn write_and_read_back(store: Arc<dyn crate::blob::BlobStore>, count: u32) -> WriterStats {
    let packs = PackStore::open(store)
        .await
        .unwrap_or_else(|e| panic!("open: {e}"));
    let config = WriterConfig {
        target_pack_size: BATCH_BYTES,
        threads: 2,
        ..WriterConfig::default()
    };
    let chunks: Vec<_> = (0..count)
        .map(|i| chunk(i, 100 * 1024 + i as usize))
        .collect();
    let writer = PackWriter::new(packs.clone(), config);
    let (writer, chunks) = tokio::task::spawn_blocking(move || {
        for (id, data) in &chunks {
            writer
                .add(*id, data.clone())
                .unwrap_or_else(|e| panic!("add: {e}"));
        }
        (writer, chunks)
    })
    .await
    .unwrap_or_else(|e| panic!("adder: {e}"));
    let stats = writer
        .finish()
        .await
        .unwrap_or_else(|e| panic!("finish: {e}"));
    for (id, data) in &chunks {
        let at = packs
            .location(id)
            .unwrap_or_else(|| panic!("{id} not packed"));
        let r = at.entry.offset..at.entry.offset + u64::from(at.entry.stored_len);
        let stored = packs
            .store()
            .get_range(&crate::pack::keys::pack_key(&at.pack), r)
            .await
            .unwrap_or_else(|e| panic!("read {id}: {e}"));
        let got = crate::pack::store::decode_chunk(&at.pack, &at.entry, stored)
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(&got, data, "chunk {id} changed after its pack was written");
    }
    stats
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_written_pack_s_buffer_is_refilled_and_no_pack_changes() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("tempdir: {e}"));
    let store = ObjectStoreBackend::local(dir.path()).unwrap_or_else(|e| panic!("local: {e}"));
    let stats = write_and_read_back(Arc::new(store), 120).await;
    assert!(stats.packs >= 8, "{} packs", stats.packs);
    assert!(
        stats.buffers_reused >= 1,
        "no pack buffer was reused: {stats:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_buffer_a_memory_store_keeps_is_never_refilled() {
    let stats = write_and_read_back(Arc::new(ObjectStoreBackend::memory()), 120).await;
    assert!(stats.packs >= 8, "{} packs", stats.packs);
    assert_eq!(
        stats.buffers_reused, 0,
        "a kept pack's buffer was written over"
    );
}
