//! Prewarm jobs: turn a scope into a chunk list, run it through the reader's prefetch,
//! report progress, cancel on request, and share one job between identical requests.

use crate::error::ApiError;
use parking_lot::Mutex;
use std::collections::{BTreeMap, HashSet};
use std::sync::atomic::AtomicU64;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::{Instant, SystemTime, UNIX_EPOCH};
use thaw_api::api::{self, JobState, Scope};
use thaw_core::{ChunkId, ImageId, InodeKind, Manifest};
use thaw_gpu::resident::ResidentTier;
use thaw_store::{ChunkReader, PrefetchProgress};
use tokio_util::sync::CancellationToken;

/// Jobs running at once; more get 429.
pub const MAX_RUNNING_JOBS: usize = 64;
/// Finished jobs remembered for `GET /v1/jobs`.
pub const KEEP_FINISHED_JOBS: usize = 256;

#[derive(Debug)]
/// One prewarm job.
pub struct Job {
    /// Its id.
    pub id: String,
    /// The image it warms.
    pub image: ImageId,
    /// What it warms.
    pub scope: Scope,
    /// How far it has got.
    pub progress: Arc<PrefetchProgress>,
    /// Cancels it.
    pub cancel: CancellationToken,
    /// Weights to make resident once the chunks are warm.
    weights: Option<WeightsStep>,
    weights_resident: AtomicU64,
    state: Mutex<(JobState, Option<Instant>)>,
    started: Instant,
    created: u64,
    seq: u64,
}

/// The weights step of a prewarm: files loaded into the resident tier.
#[derive(Debug, Clone)]
pub struct WeightsStep {
    /// The tier.
    pub tier: Arc<ResidentTier>,
    /// The image's manifest.
    pub manifest: Arc<Manifest>,
    /// The files (or checkpoint indexes).
    pub paths: Vec<String>,
}

impl Job {
    fn weight_paths(&self) -> Vec<String> {
        self.weights
            .as_ref()
            .map(|w| w.paths.clone())
            .unwrap_or_default()
    }

    /// Where it is now.
    pub fn state(&self) -> JobState {
        self.state.lock().0
    }

    fn finish(&self, state: JobState) {
        let mut s = self.state.lock();
        if !s.0.is_finished() {
            *s = (state, Some(Instant::now()));
        }
    }

    /// The job as the API shows it.
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
            weights: self
                .weights
                .as_ref()
                .map(|w| w.paths.clone())
                .unwrap_or_default(),
            weights_resident: self.weights_resident.load(Relaxed),
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
    /// A job by id (running, or among the finished ones kept).
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

    /// The running job that prewarms `scope` of `image`, if there is one.
    pub fn running(&self, image: &ImageId, scope: &Scope) -> Option<Arc<Job>> {
        running_like(&self.jobs.lock(), image, scope)
    }

    /// Starts prewarming `list` (the chunks `scope` names in `image`) through `reader`, or
    /// returns the running job that already does the same. The bool is whether a new job
    /// was made. At most [`MAX_RUNNING_JOBS`] run at once.
    pub fn start(
        self: &Arc<Self>,
        reader: &Arc<ChunkReader>,
        image: ImageId,
        scope: Scope,
        list: Vec<ChunkId>,
    ) -> Result<(Arc<Job>, bool), ApiError> {
        self.start_with(reader, image, scope, list, None)
    }

    /// [`Jobs::start`], then the weights step.
    pub fn start_with(
        self: &Arc<Self>,
        reader: &Arc<ChunkReader>,
        image: ImageId,
        scope: Scope,
        list: Vec<ChunkId>,
        weights: Option<WeightsStep>,
    ) -> Result<(Arc<Job>, bool), ApiError> {
        let mut jobs = self.jobs.lock();
        let paths = weights
            .as_ref()
            .map(|w| w.paths.clone())
            .unwrap_or_default();
        if let Some(j) = running_like(&jobs, &image, &scope).filter(|j| j.weight_paths() == paths) {
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
        let job = Arc::new(Job {
            id: format!("{:016x}", rand::random::<u64>()),
            image,
            scope,
            progress: Arc::default(),
            cancel: CancellationToken::new(),
            weights,
            weights_resident: AtomicU64::new(0),
            state: Mutex::new((JobState::Running, None)),
            started: Instant::now(),
            created: now_unix(),
            seq: self.next_seq.fetch_add(1, Relaxed),
        });
        reader.count_prefetch(&list, &job.progress);
        jobs.insert(job.id.clone(), job.clone());
        Self::forget_old(&mut jobs);
        drop(jobs);
        tokio::spawn(run(job.clone(), reader.clone(), list));
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

fn running_like(
    jobs: &BTreeMap<String, Arc<Job>>,
    image: &ImageId,
    scope: &Scope,
) -> Option<Arc<Job>> {
    jobs.values()
        .find(|j| j.state() == JobState::Running && j.image == *image && j.scope == *scope)
        .cloned()
}

/// Runs one job to its end: done, failed (some chunk could not be warmed) or cancelled.
async fn run(job: Arc<Job>, reader: Arc<ChunkReader>, list: Vec<ChunkId>) {
    let mut completed = reader.prefetch(&list, &job.progress, &job.cancel).await;
    if completed {
        if let Some(step) = &job.weights {
            completed = make_resident(&job, &reader, step).await;
        }
    }
    let state = if !completed {
        JobState::Cancelled
    } else if job.progress.errors.load(Relaxed) > 0 {
        JobState::Failed
    } else {
        JobState::Done
    };
    job.finish(state);
    tracing::info!(job = %job.id, image = %job.image, ?state, "prewarm finished");
}

/// Loads the step's files into the resident tier; false if cancelled. A file that fails
/// counts as an error of the job.
async fn make_resident(job: &Job, reader: &Arc<ChunkReader>, step: &WeightsStep) -> bool {
    for path in &step.paths {
        let load = step
            .tier
            .get_or_load(reader.clone(), &step.manifest, job.image, path);
        let loaded = tokio::select! {
            () = job.cancel.cancelled() => return false,
            loaded = load => loaded,
        };
        match loaded {
            Ok(_) => {
                job.weights_resident.fetch_add(1, Relaxed);
            }
            Err(e) => {
                tracing::warn!(job = %job.id, %path, error = %e, "weights not made resident");
                job.progress.errors.fetch_add(1, Relaxed);
                *job.progress.last_error.lock() = Some(format!("{path}: {e}"));
            }
        }
    }
    true
}

/// The chunks of the files at `paths`, and of every file under directories among them,
/// each inode visited once: the work is bounded by the image's size.
pub fn paths_chunks(manifest: &Manifest, paths: &[String]) -> Result<Vec<ChunkId>, ApiError> {
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

#[cfg(test)]
mod tests {
    use super::*;
    use thaw_store::{ObjectStoreBackend, PackStore, ReaderConfig};

    /// A reader over an empty store: every chunk asked for is unknown, so a job that runs
    /// ends failed; one with nothing to do ends done. Jobs run only when the test yields.
    async fn reader() -> Arc<ChunkReader> {
        let packs = PackStore::open(Arc::new(ObjectStoreBackend::memory()))
            .await
            .unwrap();
        ChunkReader::new(packs, ReaderConfig::default()).unwrap()
    }

    fn scope(path: &str) -> Scope {
        Scope::Paths {
            paths: vec![path.to_string()],
        }
    }

    async fn finished(job: &Job) -> JobState {
        while !job.state().is_finished() {
            tokio::task::yield_now().await;
        }
        job.state()
    }

    #[tokio::test]
    async fn identical_requests_share_a_running_job_and_others_do_not() {
        let (jobs, r) = (Arc::new(Jobs::default()), reader().await);
        let image = ImageId::of(b"i");
        let list = vec![ChunkId::of(b"unknown")];
        let (a, new) = jobs.start(&r, image, scope("/a"), list.clone()).unwrap();
        assert!(new);
        let (again, new) = jobs.start(&r, image, scope("/a"), list.clone()).unwrap();
        assert!(!new && again.id == a.id, "shared");
        assert_eq!(
            jobs.running(&image, &scope("/a")).map(|j| j.id.clone()),
            Some(a.id.clone())
        );
        let (b, new) = jobs.start(&r, image, scope("/b"), list.clone()).unwrap();
        assert!(new && b.id != a.id, "another scope is another job");
        let (c, _) = jobs
            .start(&r, ImageId::of(b"j"), scope("/a"), list.clone())
            .unwrap();
        assert!(c.id != a.id, "another image is another job");
        assert_eq!(finished(&a).await, JobState::Failed, "the chunk is unknown");
        let (d, new) = jobs.start(&r, image, scope("/a"), Vec::new()).unwrap();
        assert!(new && d.id != a.id, "a finished job is not shared");
        assert_eq!(finished(&d).await, JobState::Done);
        assert_eq!(jobs.list().len(), 4, "oldest first, all kept");
    }

    #[tokio::test]
    async fn running_jobs_are_capped() {
        let (jobs, r) = (Arc::new(Jobs::default()), reader().await);
        let image = ImageId::of(b"i");
        for k in 0..MAX_RUNNING_JOBS {
            jobs.start(&r, image, scope(&format!("/{k}")), vec![ChunkId::of(b"x")])
                .unwrap();
        }
        let err = jobs
            .start(&r, image, scope("/one-more"), Vec::new())
            .unwrap_err();
        assert_eq!(err.code, api::ErrorCode::TooManyRequests);
        for j in jobs.list() {
            finished(&j).await;
        }
        assert!(
            jobs.start(&r, image, scope("/one-more"), Vec::new())
                .is_ok(),
            "room again"
        );
    }

    #[tokio::test]
    async fn cancelled_jobs_stay_cancelled_and_old_finished_jobs_are_forgotten() {
        let (jobs, r) = (Arc::new(Jobs::default()), reader().await);
        let image = ImageId::of(b"i");
        let (a, _) = jobs
            .start(&r, image, scope("/a"), vec![ChunkId::of(b"x")])
            .unwrap();
        assert_eq!(
            jobs.cancel(&a.id).map(|j| j.state()),
            Some(JobState::Cancelled)
        );
        for _ in 0..10 {
            tokio::task::yield_now().await;
        }
        assert_eq!(
            a.state(),
            JobState::Cancelled,
            "the task's end does not overwrite it"
        );
        assert!(jobs.cancel("no such job").is_none());
        for k in 0..KEEP_FINISHED_JOBS + 10 {
            let (j, _) = jobs
                .start(&r, image, scope(&format!("/{k}")), Vec::new())
                .unwrap();
            finished(&j).await;
        }
        jobs.start(&r, image, scope("/last"), Vec::new()).unwrap();
        assert!(
            jobs.list().len() <= KEEP_FINISHED_JOBS + 1,
            "{}",
            jobs.list().len()
        );
        assert!(
            jobs.get(&a.id).is_none(),
            "the oldest finished job is forgotten"
        );
    }
}
