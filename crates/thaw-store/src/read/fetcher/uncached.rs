//! Fetches for callers that keep the chunks themselves (the whole-file writer): no cache,
//! no single-flight table, prefetch priority.

use super::Fetcher;
use crate::error::ReadError;
use crate::pack::store::{decode_run_where, PlanOptions, MAX_COALESCED};
use crate::read::schedule::Priority;
use crate::read::stats::Counters;
use bytes::Bytes;
use std::sync::Arc;
use thaw_core::ChunkId;

impl Fetcher {
    /// Fetches and verifies chunks for a caller that keeps them itself (the whole-file
    /// writer): at prefetch priority, in coalesced GETs, bypassing the caches and the
    /// single-flight table, and counted as prefetched. Every chunk in order, or the first
    /// error. Decoding runs on the calling thread: call it from a blocking one.
    pub async fn fetch_uncached(&self, ids: &[ChunkId]) -> Result<Vec<Bytes>, ReadError> {
        let options = PlanOptions {
            fetch_around: 0,
            max_run: MAX_COALESCED,
        };
        let plan = self.packs.plan(ids, options, |_| false);
        if let Some(id) = plan.unknown.first() {
            return Err(ReadError::UnknownChunk(*id));
        }
        let priority = Priority::prefetch();
        let mut got = std::collections::HashMap::with_capacity(ids.len());
        for run in &plan.runs {
            let Some(first) = run.entries.first() else {
                continue;
            };
            let range = run.range();
            let permit = self
                .scheduler
                .acquire(&priority, range.end - range.start)
                .await;
            let fetched = self.packs.get_run(run).await;
            drop(permit);
            let bytes = fetched.map_err(|e| ReadError::Fetch {
                chunk: first.id,
                pack: run.pack,
                source: Arc::new(e),
            })?;
            for (id, outcome) in decode_run_where(run, &bytes, |_| true) {
                let data = outcome?;
                self.count_fetched(&data, &priority);
                got.insert(id, data);
            }
        }
        ids.iter()
            .map(|id| got.get(id).cloned().ok_or(ReadError::UnknownChunk(*id)))
            .collect()
    }

    pub(super) fn count_fetched(&self, data: &Bytes, priority: &Priority) {
        let c = &self.counters;
        let len = data.len() as u64;
        Counters::add(&c.fetched_chunks, 1);
        Counters::add(&c.fetched_bytes, len);
        if priority.is_prefetch() {
            Counters::add(&c.prefetched_chunks, 1);
            Counters::add(&c.prefetched_bytes, len);
        }
    }
}
