//! The fetcher: everything below the memory tier. One flight per batch of misses looks in
//! the disk cache, has the packs plan the GETs (fetch-around included) once, asks the
//! scheduler for a slot per GET, and hands each chunk to its waiters as soon as it is
//! verified; the cache writes come after. Nobody outside this module touches the
//! scheduler or the single-flight table.

use crate::error::{ReadError, SharedReadError};
use crate::pack::store::{FetchRun, PackStore, PlanOptions, MAX_COALESCED};
use crate::read::cache::Caches;
use crate::read::flight::{FlightGuard, Flights, Outcome};
use crate::read::inline;
use crate::read::policy::{FetchAround, FetchPolicy};
use crate::read::schedule::{
    FetchClass, FetchScheduler, Priority, SchedulerConfig, SchedulerStats,
};
use crate::read::stats::Counters;
use bytes::Bytes;
use futures::{FutureExt, StreamExt};
use std::collections::HashSet;
use std::sync::Arc;
use thaw_core::ChunkId;

mod decode;
mod uncached;

/// The cores this process may use (read once).
fn cores() -> usize {
    static CORES: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    *CORES.get_or_init(|| std::thread::available_parallelism().map_or(2, usize::from))
}

/// GETs one flight runs at once (each still needs a scheduler slot).
const GETS_PER_FLIGHT: usize = 8;
/// Disk cache reads one flight runs at once: one file per chunk gets no readahead across
/// chunks, so depth comes from parallelism.
const DISK_READS_IN_FLIGHT: usize = 4;

/// Fetches missing chunks, once each however many readers want them.
#[derive(Debug)]
pub struct Fetcher {
    packs: Arc<PackStore>,
    caches: Arc<Caches>,
    flights: Arc<Flights>,
    scheduler: FetchScheduler,
    counters: Arc<Counters>,
    policy: FetchPolicy,
    /// Every chunk comes from a local directory and stays there (see
    /// [`Fetcher::reads_local_store`]); fixed by the store and the caches, so found once.
    local_in_place: bool,
}

impl Fetcher {
    pub(crate) fn new(
        packs: Arc<PackStore>,
        caches: Arc<Caches>,
        counters: Arc<Counters>,
        fetch_around: FetchAround,
        scheduler: SchedulerConfig,
    ) -> Self {
        let local_in_place = packs.store().local_dir().is_some() && !caches.keeps_on_disk(false);
        Fetcher {
            packs,
            caches,
            flights: Arc::default(),
            scheduler: FetchScheduler::new(scheduler),
            counters,
            policy: FetchPolicy::new(fetch_around),
            local_in_place,
        }
    }

    /// Whether every chunk fetched comes from a local directory and stays there: the
    /// store is local and fetched chunks are not copied into a disk cache.
    pub fn reads_local_store(&self) -> bool {
        self.local_in_place
    }

    /// How far it fetches around a miss, and what that is chosen from.
    pub fn policy(&self) -> &FetchPolicy {
        &self.policy
    }

    /// Changes the scheduler's limits.
    pub fn configure(&self, config: SchedulerConfig) {
        self.scheduler.configure(config);
    }

    /// The scheduler's limits.
    pub fn scheduler_config(&self) -> SchedulerConfig {
        self.scheduler.config()
    }

    /// The scheduler's counters.
    pub fn scheduler_stats(&self) -> SchedulerStats {
        self.scheduler.stats()
    }

    /// Chunks being fetched now.
    pub fn flights_len(&self) -> usize {
        self.flights.len()
    }

    /// Fetches chunks missing from memory: joins fetches in flight, starts one flight for
    /// the rest (disk cache, then the store). One outcome per chunk, in order.
    pub async fn fetch(self: &Arc<Self>, ids: &[ChunkId], class: FetchClass) -> Vec<Outcome> {
        let claim = self.claim(ids, class);
        let waiting = futures::future::join_all(claim.waiters.into_iter().map(|w| w.wait()));
        match claim.guard {
            Some(guard) if class == FetchClass::OnDemand && self.flies_inline() => {
                Counters::add(&self.counters.inline_fetches, 1);
                // As a spawned flight's would, a panic ends this flight alone: its guard
                // releases the waiters, and the reader's thread goes on.
                let flight = std::panic::AssertUnwindSafe(self.clone().fly(guard, None, false));
                let fly = async {
                    if flight.catch_unwind().await.is_err() {
                        tracing::error!("an on-demand flight panicked");
                    }
                };
                futures::future::join(fly, waiting).await.1
            }
            Some(guard) => {
                tokio::spawn(self.clone().fly(guard, None, false));
                waiting.await
            }
            None => waiting.await,
        }
    }

    /// Whether an on-demand flight runs on the reader's thread ([`crate::read::inline`]):
    /// one that may block, reading a local store that nothing is copied from (so the
    /// flight ends when its chunks are delivered, with no cache write to wait for).
    fn flies_inline(&self) -> bool {
        self.local_in_place && inline::allowed()
    }

    /// Fetches one planned run of a prefetch (its chunks known to be neither in memory nor
    /// on disk), joining fetches already in flight for some of them. Returns once every
    /// chunk's fetch has settled, its disk-cache write included. `to_memory`: the whole
    /// prefetch fits in half of memory, so from a local store read in place its chunks
    /// wait in memory alone (a disk-cache file per chunk costs a new inode each, and the
    /// store's pack is as local as the cache if one is evicted).
    pub async fn fetch_run(
        self: &Arc<Self>,
        run: FetchRun,
        class: FetchClass,
        to_memory: bool,
    ) -> Vec<Outcome> {
        let ids: Vec<ChunkId> = run.entries.iter().map(|e| e.id).collect();
        let claim = self.claim(&ids, class);
        if let Some(guard) = claim.guard {
            tokio::spawn(self.clone().fly(guard, Some(run), to_memory));
        }
        futures::future::join_all(claim.waiters.into_iter().map(|w| w.wait_settled())).await
    }

    fn claim(&self, ids: &[ChunkId], class: FetchClass) -> crate::read::flight::Claim {
        let priority = match class {
            FetchClass::OnDemand => Priority::on_demand(),
            FetchClass::Prefetch => Priority::prefetch(),
        };
        let claim = self
            .flights
            .claim(ids, &priority, |p| self.scheduler.promote(p));
        Counters::add(&self.counters.joined_fetches, claim.joined as u64);
        claim
    }

    /// One flight: the disk cache (unless the run was planned already), then the store.
    /// Every path out of here drops `guard`, which releases whoever still waits.
    /// `to_memory`: a prefetch that fits in half of memory (see [`Fetcher::fetch_run`]).
    async fn fly(self: Arc<Self>, mut guard: FlightGuard, run: Option<FetchRun>, to_memory: bool) {
        let missing = self.serve_from_memory(&guard);
        let (runs, around) = match run {
            Some(mut run) => {
                let ours: HashSet<ChunkId> = missing.into_iter().collect();
                run.retain(|id| ours.contains(id));
                (vec![run], HashSet::new())
            }
            None => {
                let misses = self.serve_from_disk(&guard, missing).await;
                self.plan(&mut guard, &misses)
            }
        };
        let mut fetched = self.fetch_from_store(&guard, runs, &around).await;
        if to_memory && !self.caches.copy_fetched {
            // A local store read in place, and a prefetch that fits in half of memory:
            // a chunk memory holds waits there; evicted, it is read from the store's pack
            // again, as local as the cache. Writing it too cost a third of the CPU of a
            // bulk fetch (a new cache file, so a new inode, per chunk). A larger prefetch
            // is written: in memory alone a start-up trace of 0.7 GB was fetched twice.
            let memory = &self.caches.memory;
            fetched.retain(|(id, _)| !memory.contains(id));
        }
        let keep = self.caches.keeps_on_disk(guard.priority().is_prefetch());
        if keep && !fetched.is_empty() {
            // After the waiters have their bytes; the entries stay in flight (so late
            // readers join instead of fetching again) until the files are written.
            let caches = self.caches.clone();
            let written = tokio::task::spawn_blocking(move || {
                if let Some(d) = &caches.disk {
                    fetched.iter().for_each(|(id, b)| d.insert(id, b));
                }
            });
            if let Err(e) = written.await {
                tracing::error!(error = %e, "writing fetched chunks to the disk cache failed");
            }
        }
        drop(guard);
    }

    /// Serves the flight's chunks that memory holds after all; returns the rest. A reader
    /// can miss memory just before another flight puts a chunk there and claim it just
    /// after that flight ends: without this look the chunk would be fetched again.
    fn serve_from_memory(&self, guard: &FlightGuard) -> Vec<ChunkId> {
        let mut missing = Vec::with_capacity(guard.ids().len());
        for id in guard.ids() {
            match self.caches.memory.get(id) {
                Some(data) => guard.deliver(id, Ok(data)),
                None => missing.push(*id),
            }
        }
        missing
    }

    /// Serves the chunks of `ids` the disk cache holds; returns the rest.
    async fn serve_from_disk(&self, guard: &FlightGuard, ids: Vec<ChunkId>) -> Vec<ChunkId> {
        let Some(disk) = &self.caches.disk else {
            return ids;
        };
        // A cold miss (and every miss of a local store read in place, which keeps no
        // chunk there) goes to the store without a blocking task that only finds the
        // index empty: one thread hand-off fewer on the reader's path.
        if !ids.iter().any(|id| disk.contains(id)) {
            Counters::add(&self.counters.disk_misses, ids.len() as u64);
            return ids;
        }
        let per = ids.len().div_ceil(DISK_READS_IN_FLIGHT).max(1);
        let reads: Vec<_> = ids
            .chunks(per)
            .map(|group| {
                let (caches, group) = (self.caches.clone(), group.to_vec());
                let task = tokio::task::spawn_blocking({
                    let group = group.clone();
                    move || {
                        let disk = caches.disk.as_ref();
                        group
                            .iter()
                            .map(|id| disk.and_then(|d| d.get(id)))
                            .collect()
                    }
                });
                (group, task)
            })
            .collect();
        let mut misses = Vec::new();
        for (group, task) in reads {
            // A failed read task leaves its chunks to the store.
            let found: Vec<Option<Bytes>> = task.await.unwrap_or_default();
            for (k, id) in group.into_iter().enumerate() {
                match found.get(k).cloned().flatten() {
                    Some(data) => {
                        Counters::add(&self.counters.disk_hits, 1);
                        self.caches.memory.insert(id, data.clone());
                        guard.deliver(&id, Ok(data));
                    }
                    None => misses.push(id),
                }
            }
        }
        Counters::add(&self.counters.disk_misses, misses.len() as u64);
        misses
    }

    /// Plans the GETs for `misses`, with the neighbours fetch-around adds claimed into this
    /// flight (returned apart); chunks no pack holds get their error now.
    fn plan(
        &self,
        guard: &mut FlightGuard,
        misses: &[ChunkId],
    ) -> (Vec<FetchRun>, HashSet<ChunkId>) {
        let options = PlanOptions {
            fetch_around: self.policy.fetch_around(),
            max_run: MAX_COALESCED,
        };
        let skip = |id: &ChunkId| self.caches.contains(id) || self.flights.contains(id);
        let mut plan = self.packs.plan(misses, options, skip);
        for id in plan.unknown {
            guard.deliver(&id, Err(Arc::new(ReadError::UnknownChunk(id))));
        }
        let mut ours: HashSet<ChunkId> = misses.iter().copied().collect();
        let added: HashSet<ChunkId> = guard.extend(&plan.around).into_iter().collect();
        Counters::add(&self.counters.fetched_around, added.len() as u64);
        ours.extend(added.iter().copied());
        for run in &mut plan.runs {
            run.retain(|id| ours.contains(id));
        }
        plan.runs.retain(|r| !r.entries.is_empty());
        (plan.runs, added)
    }

    /// Runs the GETs, delivering each chunk as it is verified; returns what was fetched.
    async fn fetch_from_store(
        &self,
        guard: &FlightGuard,
        runs: Vec<FetchRun>,
        around: &HashSet<ChunkId>,
    ) -> Vec<(ChunkId, Bytes)> {
        let mut results = futures::stream::iter(runs)
            .map(|run| self.get_and_deliver(guard, run, around))
            .buffer_unordered(GETS_PER_FLIGHT);
        let mut fetched = Vec::new();
        while let Some(got) = results.next().await {
            fetched.extend(got);
        }
        fetched
    }

    /// One ranged GET under a scheduler slot. The chunks asked for are decoded (off the
    /// async workers) and handed to their waiters first; only then are the neighbours
    /// fetch-around added decoded, so a reader never waits for bytes it did not ask for.
    async fn get_and_deliver(
        &self,
        guard: &FlightGuard,
        run: FetchRun,
        around: &HashSet<ChunkId>,
    ) -> Vec<(ChunkId, Bytes)> {
        let Some(bytes) = self.get(guard, &run).await else {
            return Vec::new();
        };
        let mut extra: HashSet<ChunkId> = run
            .entries
            .iter()
            .map(|e| e.id)
            .filter(|id| around.contains(id))
            .collect();
        let run = Arc::new(run);
        let mut fetched = Vec::new();
        for stage_is_extra in [false, true] {
            if stage_is_extra {
                self.drop_guesses_under_pressure(guard, &mut extra);
                if extra.is_empty() {
                    break;
                }
            }
            let ids: Vec<ChunkId> = run
                .entries
                .iter()
                .map(|e| e.id)
                .filter(|id| extra.contains(id) == stage_is_extra)
                .collect();
            // A reader waits for the chunks it asked for: decode them on every core.
            let parts = if stage_is_extra || guard.priority().is_prefetch() {
                1
            } else {
                cores()
            };
            let decoded = self.decode(&run, &bytes, ids, parts).await;
            for (id, outcome) in decoded {
                if let Ok(data) = &outcome {
                    self.keep(id, data, guard.priority(), stage_is_extra);
                    fetched.push((id, data.clone()));
                }
                guard.deliver(&id, outcome);
            }
        }
        fetched
    }

    /// Neighbours fetched around a miss are guesses: while on-demand GETs wait for a slot,
    /// or as many run as there are cores, the ones no reader waits for yet are not
    /// decoded, verified or written at all; they leave the flight and a reader that wants
    /// one later fetches it. The asked chunks were delivered before this.
    fn drop_guesses_under_pressure(&self, guard: &FlightGuard, extra: &mut HashSet<ChunkId>) {
        let s = self.scheduler_stats();
        if s.waiting_on_demand == 0 && s.active_on_demand < cores() {
            return;
        }
        let ids: Vec<ChunkId> = extra.iter().copied().collect();
        let dropped = guard.release_unwaited(&ids);
        Counters::add(&self.counters.dropped_around, dropped.len() as u64);
        for id in &dropped {
            extra.remove(id);
        }
    }

    /// The run's stored bytes, timed for the fetch policy; on failure every chunk of the
    /// run gets the error and `None` comes back.
    async fn get(&self, guard: &FlightGuard, run: &FetchRun) -> Option<Bytes> {
        let range = run.range();
        let permit = self
            .scheduler
            .acquire(guard.priority(), range.end - range.start)
            .await;
        let started = std::time::Instant::now();
        let got = self.packs.get_run(run).await;
        drop(permit);
        match got {
            Ok(b) => {
                self.policy
                    .observe_get(b.len() as u64, started.elapsed().as_secs_f64());
                Some(b)
            }
            Err(e) => {
                let source = Arc::new(e);
                for e in &run.entries {
                    let err = ReadError::Fetch {
                        chunk: e.id,
                        pack: run.pack,
                        source: source.clone(),
                    };
                    guard.deliver(&e.id, Err(Arc::new(err)));
                }
                None
            }
        }
    }

    fn shared(&self, e: ReadError) -> SharedReadError {
        if let ReadError::Integrity { .. } = &e {
            Counters::add(&self.counters.integrity_failures, 1);
            tracing::error!(error = %e, "chunk failed verification");
        }
        Arc::new(e)
    }

    /// Counts a fetched chunk and puts it in memory. A prefetch nobody waits for, and a
    /// neighbour fetch-around added, fill free memory but never evict when they also land
    /// on disk: guesses must not push the working set out.
    fn keep(&self, id: ChunkId, data: &Bytes, priority: &Priority, guessed: bool) {
        self.count_fetched(data, priority);
        // Without a disk cache that keeps them, memory is the only place a prefetched
        // chunk can wait for its reader: it is kept as any other.
        if !self.caches.keeps_on_disk(priority.is_prefetch())
            || !(priority.is_prefetch() || guessed)
        {
            self.caches.memory.insert(id, data.clone());
        } else {
            self.caches.memory.insert_if_room(id, data.clone());
        }
    }
}
