//! Prewarm jobs: turn a scope into a chunk list, run it through the reader's prefetch,
//! report progress, cancel on request, and share one job between identical requests.

use crate::api::{self, JobState, NamedScope, Scope};
use crate::error::ApiError;
use parking_lot::Mutex;
use std::collections::{BTreeMap, HashSet};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::{Instant, SystemTime, UNIX_EPOCH};
use thaw_core::{ChunkId, ImageId, InodeKind, Manifest};
use thaw_store::PrefetchProgress;
use tokio_util::sync::CancellationToken;

/// Jobs running at once; more get 429.
pub const MAX_RUNNING_JOBS: usize = 64;
/// Finished jobs remembered for `GET /v1/jobs`.
pub const KEEP_FINISHED_JOBS: usize = 256;

#[derive(Debug)]
pub struct Job {
    pub id: String,
    pub image: ImageId,
    pub scope: Scope,
    pub progress: Arc<PrefetchProgress>,
    pub cancel: CancellationToken,
    state: Mutex<(JobState, Option<Instant>)>,
    started: Instant,
    created: u64,
    seq: u64,
}

impl Job {
    pub fn state(&self) -> JobState {
        self.state.lock().0
    }

    fn finish(&self, state: JobState) {
        let mut s = self.state.lock();
        if !s.0.is_finished() {
            *s = (state, Some(Instant::now()));
        }
    }

    pub fn view(&self) -> api::Job {
        let p = &self.progress;
        let (state, finished) = *self.state.lock();
        let elapsed = finished
            .unwrap_or_else(Instant::now)
            .duration_since(self.started)
            .as_secs_f64();
        let bytes_done = p.done_bytes.load(Relaxed);
        api::Job {
            id: self.id.clone(),
            image: self.image.to_string(),
            scope: self.scope.clone(),
            state,
            chunks_done: p.done_chunks.load(Relaxed),
            chunks_total: p.total_chunks.load(Relaxed),
            bytes_done,
            bytes_total: p.total_bytes.load(Relaxed),
            chunks_cached: p.cached_chunks.load(Relaxed),
            errors: p.errors.load(Relaxed),
            last_error: p.last_error.lock().clone(),
            rate_bytes_per_second: if elapsed > 0.0 {
                bytes_done as f64 / elapsed
            } else {
                0.0
            },
            elapsed_seconds: elapsed,
            created: self.created,
        }
    }
}

/// All jobs of the daemon.
#[derive(Debug, Default)]
pub struct Jobs {
    jobs: Mutex<BTreeMap<String, Arc<Job>>>,
    next_seq: std::sync::atomic::AtomicU64,
}

fn now_unix() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

impl Jobs {
    pub fn get(&self, id: &str) -> Option<Arc<Job>> {
        self.jobs.lock().get(id).cloned()
    }

    /// Every job, oldest first.
    pub fn list(&self) -> Vec<Arc<Job>> {
        let mut v: Vec<Arc<Job>> = self.jobs.lock().values().cloned().collect();
        v.sort_by_key(|j| j.seq);
        v
    }

    /// Chunks still to do and their bytes, over running jobs.
    pub fn queued(&self) -> (u64, u64) {
        self.list()
            .iter()
            .filter(|j| j.state() == JobState::Running)
            .fold((0, 0), |(c, b), j| {
                let p = &j.progress;
                (
                    c + p
                        .total_chunks
                        .load(Relaxed)
                        .saturating_sub(p.done_chunks.load(Relaxed)),
                    b + p
                        .total_bytes
                        .load(Relaxed)
                        .saturating_sub(p.done_bytes.load(Relaxed)),
                )
            })
    }

    /// Starts a prewarm of `image`, or returns the running job that already does the
    /// same. The bool is whether a new job was made.
    pub async fn start(
        self: &Arc<Self>,
        node: &crate::Node,
        image: ImageId,
        scope: Scope,
    ) -> Result<(Arc<Job>, bool), ApiError> {
        let running_like = |jobs: &BTreeMap<String, Arc<Job>>| {
            jobs.values()
                .find(|j| j.state() == JobState::Running && j.image == image && j.scope == scope)
                .cloned()
        };
        if let Some(j) = running_like(&self.jobs.lock()) {
            return Ok((j, false));
        }
        let reader = &node.reader;
        let list = chunk_list(node, &image, &scope).await?;
        let mut jobs = self.jobs.lock();
        // Checked again under the lock: two identical requests may have raced here.
        if let Some(j) = running_like(&jobs) {
            return Ok((j, false));
        }
        let running = jobs
            .values()
            .filter(|j| j.state() == JobState::Running)
            .count();
        if running >= MAX_RUNNING_JOBS {
            return Err(ApiError::new(
                api::ErrorCode::TooManyRequests,
                format!("{running} prewarm jobs are running; at most {MAX_RUNNING_JOBS}"),
            ));
        }
        let seq = self.next_seq.fetch_add(1, Relaxed);
        let job = Arc::new(Job {
            id: format!("{:016x}", rand::random::<u64>()),
            image,
            scope,
            progress: Arc::default(),
            cancel: CancellationToken::new(),
            state: Mutex::new((JobState::Running, None)),
            started: Instant::now(),
            created: now_unix(),
            seq,
        });
        reader.count_prefetch(&list, &job.progress);
        jobs.insert(job.id.clone(), job.clone());
        Self::forget_old(&mut jobs);
        drop(jobs);
        let (j, reader) = (job.clone(), reader.clone());
        tokio::spawn(async move {
            let completed = reader.prefetch(&list, &j.progress, &j.cancel).await;
            let state = if !completed {
                JobState::Cancelled
            } else if j.progress.errors.load(Relaxed) > 0 {
                JobState::Failed
            } else {
                JobState::Done
            };
            j.finish(state);
            tracing::info!(job = %j.id, image = %j.image, ?state, "prewarm finished");
        });
        Ok((job, true))
    }

    fn forget_old(jobs: &mut BTreeMap<String, Arc<Job>>) {
        let mut finished: Vec<(u64, String)> = jobs
            .values()
            .filter(|j| j.state().is_finished())
            .map(|j| (j.seq, j.id.clone()))
            .collect();
        if finished.len() > KEEP_FINISHED_JOBS {
            finished.sort();
            for (_, id) in &finished[..finished.len() - KEEP_FINISHED_JOBS] {
                jobs.remove(id);
            }
        }
    }

    /// Cancels a job (a finished one stays as it was).
    pub fn cancel(&self, id: &str) -> Option<Arc<Job>> {
        let job = self.get(id)?;
        job.cancel.cancel();
        job.finish(JobState::Cancelled);
        Some(job)
    }

    /// Cancels every running job (at shutdown).
    pub fn cancel_all(&self) {
        for j in self.list() {
            j.cancel.cancel();
            j.finish(JobState::Cancelled);
        }
    }
}

/// The chunks a scope names, in the order to fetch them.
async fn chunk_list(
    node: &crate::Node,
    image: &ImageId,
    scope: &Scope,
) -> Result<Vec<ChunkId>, ApiError> {
    match scope {
        Scope::Named(NamedScope::All) => Ok(node
            .manifest(image)
            .await?
            .chunks
            .iter()
            .map(|c| c.id)
            .collect()),
        Scope::Named(NamedScope::Trace) => {
            // No manifest needed: the list names chunks, and the store checks the image
            // exists by holding its traces.
            let list = node.repo.prefetch_list(image).await?;
            if list.is_empty() {
                node.manifest(image).await?; // an unknown image is a 404, not "no trace"
            }
            if list.iter().any(|r| !node.repo.packs().contains(&r.chunk)) {
                node.repo.packs().reload().await?;
            }
            if list.is_empty() {
                return Err(ApiError::new(
                    api::ErrorCode::NoTrace,
                    format!("image {image} has no start-up trace; push one with `thaw trace push`, or prewarm with scope \"all\""),
                ));
            }
            Ok(list.into_iter().map(|r| r.chunk).collect())
        }
        Scope::Paths { paths } => paths_chunks(&*node.manifest(image).await?, paths),
    }
}

/// The chunks of the files at `paths`, and of every file under directories among them.
fn paths_chunks(manifest: &Manifest, paths: &[String]) -> Result<Vec<ChunkId>, ApiError> {
    if paths.is_empty() || paths.len() > api::MAX_SCOPE_PATHS {
        return Err(ApiError::invalid(format!(
            "a prewarm names 1 to {} paths, not {}",
            api::MAX_SCOPE_PATHS,
            paths.len()
        )));
    }
    let mut inodes: Vec<u32> = Vec::new();
    for p in paths {
        let components = crate::validate::image_path(p)?;
        let mut ino = 0u32;
        for c in &components {
            ino = manifest.lookup(ino, c.as_bytes()).ok_or_else(|| {
                ApiError::new(api::ErrorCode::NotFound, format!("no {p:?} in the image"))
            })?;
        }
        inodes.push(ino);
    }
    // Every inode is visited at most once however the paths overlap, so the work is
    // bounded by the image's size.
    let mut seen: HashSet<u32> = HashSet::new();
    let mut chunks: Vec<ChunkId> = Vec::new();
    let mut stack: Vec<u32> = inodes.into_iter().rev().collect();
    while let Some(ino) = stack.pop() {
        if !seen.insert(ino) {
            continue;
        }
        match &manifest.inodes[ino as usize].kind {
            InodeKind::File { .. } => {
                chunks.extend(manifest.file_extents(ino).iter().filter_map(|e| e.chunk))
            }
            InodeKind::Directory { entries } => {
                stack.extend(entries.iter().rev().map(|e| e.inode));
            }
            _ => {}
        }
    }
    Ok(chunks)
}
