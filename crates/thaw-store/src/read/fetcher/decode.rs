//! Decoding a fetched run: decompression and verification, on the reader's thread where
//! it may block ([`crate::read::inline`]), else on the blocking pool, several parts side
//! by side for a reader that waits on many chunks.

use super::Fetcher;
use crate::pack::store::{decode_run_where, FetchRun};
use crate::read::flight::Outcome;
use crate::read::inline;
use bytes::Bytes;
use std::collections::HashSet;
use std::sync::Arc;
use thaw_core::ChunkId;

impl Fetcher {
    /// Decodes and verifies the chunks `ids` of `run` in up to `parts` tasks side by side
    /// (a read spanning several chunks then waits for the slowest part, not for their
    /// sum), timed for the fetch policy. Decompression and hashing are CPU work, done off
    /// the async workers; if a task dies, its chunks get no outcome and the flight's guard
    /// releases their waiters.
    pub(super) async fn decode(
        &self,
        run: &Arc<FetchRun>,
        bytes: &Bytes,
        ids: Vec<ChunkId>,
        parts: usize,
    ) -> Vec<(ChunkId, Outcome)> {
        let per_part = ids.len().div_ceil(parts.max(1)).max(1);
        let one_part = per_part >= ids.len();
        let tasks = ids.chunks(per_part).map(|part| {
            let part: HashSet<ChunkId> = part.iter().copied().collect();
            let (run, bytes) = (run.clone(), bytes.clone());
            let decode = move || {
                let started = std::time::Instant::now();
                let decoded = decode_run_where(&run, &bytes, |id| part.contains(id));
                (decoded, started.elapsed().as_secs_f64())
            };
            // One part decodes in place on a thread that may block; several share the cores.
            if one_part {
                futures::future::Either::Left(inline::blocking(decode))
            } else {
                futures::future::Either::Right(tokio::task::spawn_blocking(decode))
            }
        });
        let (mut raw, mut seconds) = (0u64, 0.0);
        let mut out = Vec::with_capacity(ids.len());
        for done in futures::future::join_all(tasks).await {
            match done {
                Ok((decoded, took)) => {
                    raw += decoded
                        .iter()
                        .filter_map(|(_, r)| r.as_ref().ok())
                        .map(|b| b.len() as u64)
                        .sum::<u64>();
                    seconds += took;
                    out.extend(decoded);
                }
                Err(e) => tracing::error!(error = %e, "decoding a fetched run failed"),
            }
        }
        if !out.is_empty() {
            self.policy.observe_decode(raw, seconds);
        }
        out.into_iter()
            .map(|(id, r)| (id, r.map_err(|e| self.shared(e))))
            .collect()
    }
}
