//! The fetch scheduler: every GET of chunk data asks it for a slot. On-demand reads go
//! first; prefetch uses what is left, within its own concurrency and bandwidth caps.
//!
//! A prefetch that an on-demand reader is waiting for is promoted ([`Priority::promote`]):
//! from then on it competes as on-demand and skips the bandwidth pacing, so joining a
//! prefetch never makes a reader wait behind the prefetch queue.

use crate::read::histogram::{HistogramSnapshot, LatencyHistogram};
use parking_lot::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Notify;
use tokio::time::Instant;

/// The classes of fetch, highest priority first.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FetchClass {
    /// A reader is waiting for these bytes.
    OnDemand,
    /// Background warming: nobody waits yet.
    Prefetch,
}

/// The priority of one fetch, shared with whoever may promote it.
#[derive(Debug)]
pub struct Priority {
    prefetch: bool,
    promoted: AtomicBool,
}

impl Priority {
    /// For a reader waiting now.
    pub fn on_demand() -> Arc<Self> {
        Arc::new(Priority {
            prefetch: false,
            promoted: AtomicBool::new(false),
        })
    }

    /// For background warming (may be promoted).
    pub fn prefetch() -> Arc<Self> {
        Arc::new(Priority {
            prefetch: true,
            promoted: AtomicBool::new(false),
        })
    }

    /// Marks a prefetch as awaited by a reader. Returns whether this call changed it.
    pub fn promote(&self) -> bool {
        self.prefetch && !self.promoted.swap(true, Relaxed)
    }

    /// The class the scheduler treats it as now.
    pub fn class(&self) -> FetchClass {
        if self.prefetch && !self.promoted.load(Relaxed) {
            FetchClass::Prefetch
        } else {
            FetchClass::OnDemand
        }
    }

    /// Whether this fetch started as a prefetch (even if promoted since).
    pub fn is_prefetch(&self) -> bool {
        self.prefetch
    }
}

/// Limits of the scheduler.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SchedulerConfig {
    /// GETs in flight at once, all classes together.
    pub max_in_flight: usize,
    /// Of those, at most this many prefetch GETs.
    pub prefetch_in_flight: usize,
    /// Prefetch bytes per second; `None` for no cap.
    pub prefetch_bandwidth: Option<u64>,
}

impl Default for SchedulerConfig {
    fn default() -> Self {
        SchedulerConfig {
            max_in_flight: 64,
            prefetch_in_flight: 4,
            prefetch_bandwidth: None,
        }
    }
}

/// Counters of the scheduler.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SchedulerStats {
    /// GETs granted as on-demand.
    pub on_demand_fetches: u64,
    /// GETs granted as prefetch.
    pub prefetch_fetches: u64,
    /// Prefetches promoted because a reader came to wait for them.
    pub promoted: u64,
    /// Bytes of on-demand GETs.
    pub on_demand_bytes: u64,
    /// Bytes of prefetch GETs.
    pub prefetch_bytes: u64,
    /// GETs waiting for a slot now, by class.
    pub waiting_on_demand: usize,
    /// Prefetch GETs waiting for a slot now.
    pub waiting_prefetch: usize,
    /// On-demand GETs in flight now.
    pub active_on_demand: usize,
    /// Prefetch GETs in flight now.
    pub active_prefetch: usize,
    /// Time from a slot being granted to the bytes arriving.
    pub fetch_latency: HistogramSnapshot,
}

#[derive(Debug)]
struct State {
    config: SchedulerConfig,
    active_on_demand: usize,
    active_prefetch: usize,
    /// When the prefetch bandwidth budget next allows a transfer to start.
    prefetch_free_at: Instant,
}

impl State {
    fn can_start(&self, class: FetchClass, waiting_on_demand: usize) -> bool {
        let active = self.active_on_demand + self.active_prefetch;
        match class {
            FetchClass::OnDemand => active < self.config.max_in_flight,
            FetchClass::Prefetch => {
                active < self.config.max_in_flight
                    && self.active_prefetch < self.config.prefetch_in_flight
                    && waiting_on_demand == 0
            }
        }
    }
}

/// Grants GET slots by priority.
#[derive(Debug)]
pub struct FetchScheduler {
    state: Mutex<State>,
    changed: Notify,
    waiting_on_demand: AtomicUsize,
    waiting_prefetch: AtomicUsize,
    on_demand_fetches: AtomicU64,
    prefetch_fetches: AtomicU64,
    promoted: AtomicU64,
    on_demand_bytes: AtomicU64,
    prefetch_bytes: AtomicU64,
    latency: LatencyHistogram,
}

impl Default for FetchScheduler {
    fn default() -> Self {
        Self::new(SchedulerConfig::default())
    }
}

/// Decrements a waiting counter when a wait ends, however it ends.
struct Waiting<'a>(&'a AtomicUsize);

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Relaxed);
    }
}

/// A granted slot; released on drop.
#[derive(Debug)]
pub struct FetchPermit<'a> {
    scheduler: &'a FetchScheduler,
    class: FetchClass,
    granted: Instant,
    bytes: u64,
}

impl FetchPermit<'_> {
    /// The class the slot was granted as.
    pub fn class(&self) -> FetchClass {
        self.class
    }
}

impl Drop for FetchPermit<'_> {
    fn drop(&mut self) {
        let s = self.scheduler;
        {
            let mut st = s.state.lock();
            match self.class {
                FetchClass::OnDemand => st.active_on_demand -= 1,
                FetchClass::Prefetch => st.active_prefetch -= 1,
            }
        }
        s.latency.observe(self.granted.elapsed());
        let (n, b) = match self.class {
            FetchClass::OnDemand => (&s.on_demand_fetches, &s.on_demand_bytes),
            FetchClass::Prefetch => (&s.prefetch_fetches, &s.prefetch_bytes),
        };
        n.fetch_add(1, Relaxed);
        b.fetch_add(self.bytes, Relaxed);
        s.changed.notify_waiters();
    }
}

impl FetchScheduler {
    /// A scheduler with these limits.
    pub fn new(config: SchedulerConfig) -> Self {
        FetchScheduler {
            state: Mutex::new(State {
                config,
                active_on_demand: 0,
                active_prefetch: 0,
                prefetch_free_at: Instant::now(),
            }),
            changed: Notify::new(),
            waiting_on_demand: AtomicUsize::new(0),
            waiting_prefetch: AtomicUsize::new(0),
            on_demand_fetches: AtomicU64::new(0),
            prefetch_fetches: AtomicU64::new(0),
            promoted: AtomicU64::new(0),
            on_demand_bytes: AtomicU64::new(0),
            prefetch_bytes: AtomicU64::new(0),
            latency: LatencyHistogram::default(),
        }
    }

    /// Its limits now.
    pub fn config(&self) -> SchedulerConfig {
        self.state.lock().config
    }

    /// Changes the limits; waiting fetches see the new ones at once.
    pub fn configure(&self, config: SchedulerConfig) {
        self.state.lock().config = SchedulerConfig {
            max_in_flight: config.max_in_flight.max(1),
            prefetch_in_flight: config.prefetch_in_flight.max(1),
            ..config
        };
        self.changed.notify_waiters();
    }

    /// Promotes a prefetch (see [`Priority::promote`]) and wakes it if it waits.
    pub fn promote(&self, priority: &Priority) {
        if priority.promote() {
            self.promoted.fetch_add(1, Relaxed);
            self.changed.notify_waiters();
        }
    }

    /// Waits for a slot to GET `bytes` bytes at `priority`. Cancel-safe: dropping the
    /// future gives up the place in the queue.
    pub async fn acquire(&self, priority: &Priority, bytes: u64) -> FetchPermit<'_> {
        let class = loop {
            let class = priority.class();
            let counter = match class {
                FetchClass::OnDemand => &self.waiting_on_demand,
                FetchClass::Prefetch => &self.waiting_prefetch,
            };
            counter.fetch_add(1, Relaxed);
            let _waiting = Waiting(counter);
            let notified = self.changed.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            {
                let mut st = self.state.lock();
                // Our own registration is in the on-demand count; others' are what matter.
                let others = self
                    .waiting_on_demand
                    .load(Relaxed)
                    .saturating_sub(usize::from(class == FetchClass::OnDemand));
                if st.can_start(class, others) {
                    match class {
                        FetchClass::OnDemand => st.active_on_demand += 1,
                        FetchClass::Prefetch => st.active_prefetch += 1,
                    }
                    break class;
                }
            }
            // A prefetch waiting for its turn looks again when a slot frees, the limits
            // change, or it is promoted.
            notified.await;
        };
        // Built before pacing, so a cancelled wait still gives the slot back.
        let mut permit = FetchPermit {
            scheduler: self,
            class,
            granted: Instant::now(),
            bytes,
        };
        if class == FetchClass::Prefetch {
            self.pace(priority, bytes).await;
            permit.granted = Instant::now();
        }
        permit
    }

    /// Holds a prefetch until its bytes fit the prefetch bandwidth, unless promoted.
    async fn pace(&self, priority: &Priority, bytes: u64) {
        let start = {
            let mut st = self.state.lock();
            let Some(bw) = st.config.prefetch_bandwidth.filter(|b| *b > 0) else {
                return;
            };
            let start = st.prefetch_free_at.max(Instant::now());
            st.prefetch_free_at = start + Duration::from_secs_f64(bytes as f64 / bw as f64);
            start
        };
        loop {
            let notified = self.changed.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if priority.class() == FetchClass::OnDemand {
                return;
            }
            tokio::select! {
                _ = tokio::time::sleep_until(start) => return,
                _ = notified => {}
            }
        }
    }

    /// Its counters now.
    pub fn stats(&self) -> SchedulerStats {
        let st = self.state.lock();
        SchedulerStats {
            on_demand_fetches: self.on_demand_fetches.load(Relaxed),
            prefetch_fetches: self.prefetch_fetches.load(Relaxed),
            promoted: self.promoted.load(Relaxed),
            on_demand_bytes: self.on_demand_bytes.load(Relaxed),
            prefetch_bytes: self.prefetch_bytes.load(Relaxed),
            waiting_on_demand: self.waiting_on_demand.load(Relaxed),
            waiting_prefetch: self.waiting_prefetch.load(Relaxed),
            active_on_demand: st.active_on_demand,
            active_prefetch: st.active_prefetch,
            fetch_latency: self.latency.snapshot(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(max: usize, prefetch: usize) -> SchedulerConfig {
        SchedulerConfig {
            max_in_flight: max,
            prefetch_in_flight: prefetch,
            prefetch_bandwidth: None,
        }
    }

    #[tokio::test]
    async fn prefetch_is_capped_and_on_demand_is_not() {
        let s = FetchScheduler::new(config(8, 2));
        let p = Priority::prefetch();
        let a = s.acquire(&p, 1).await;
        let _b = s.acquire(&p, 1).await;
        // A third prefetch must wait; on-demand fetches still start.
        let third = s.acquire(&p, 1);
        tokio::pin!(third);
        assert!(futures::poll!(third.as_mut()).is_pending());
        let d = Priority::on_demand();
        let _d1 = s.acquire(&d, 1).await;
        assert_eq!(s.stats().active_on_demand, 1);
        assert_eq!(s.stats().active_prefetch, 2);
        drop(a);
        let c = third.await;
        assert_eq!(c.class(), FetchClass::Prefetch);
    }

    #[tokio::test]
    async fn waiting_on_demand_goes_before_waiting_prefetch() {
        let s = Arc::new(FetchScheduler::new(config(1, 1)));
        let first = s.acquire(&Priority::on_demand(), 1).await;
        let order = Arc::new(Mutex::new(Vec::new()));
        let spawn = |name: &'static str, p: Arc<Priority>| {
            let (s, order) = (s.clone(), order.clone());
            tokio::spawn(async move {
                let _permit = s.acquire(&p, 1).await;
                order.lock().push(name);
                tokio::task::yield_now().await;
            })
        };
        let pf = spawn("prefetch", Priority::prefetch());
        tokio::task::yield_now().await;
        let od = spawn("on-demand", Priority::on_demand());
        while s.stats().waiting_on_demand == 0 {
            tokio::task::yield_now().await;
        }
        drop(first);
        od.await.unwrap();
        pf.await.unwrap();
        assert_eq!(*order.lock(), vec!["on-demand", "prefetch"]);
    }

    #[tokio::test]
    async fn promotion_lets_a_queued_prefetch_start() {
        let s = FetchScheduler::new(config(8, 1));
        let held = s.acquire(&Priority::prefetch(), 1).await;
        let queued = Priority::prefetch();
        let fut = s.acquire(&queued, 1);
        tokio::pin!(fut);
        assert!(futures::poll!(fut.as_mut()).is_pending());
        s.promote(&queued);
        let permit = fut.await;
        assert_eq!(permit.class(), FetchClass::OnDemand);
        assert_eq!(s.stats().promoted, 1);
        drop(held);
    }

    #[tokio::test(start_paused = true)]
    async fn prefetch_bandwidth_is_paced() {
        let s = FetchScheduler::new(SchedulerConfig {
            prefetch_bandwidth: Some(1_000_000),
            ..config(8, 8)
        });
        let p = Priority::prefetch();
        let start = Instant::now();
        for _ in 0..5 {
            drop(s.acquire(&p, 500_000).await);
        }
        // Five half-megabyte prefetches at 1 MB/s: the fifth may start at 2 s.
        let took = start.elapsed();
        assert!(
            took >= Duration::from_millis(2000) && took < Duration::from_millis(2100),
            "{took:?}"
        );
        // On-demand fetches are never paced.
        let t = Instant::now();
        drop(s.acquire(&Priority::on_demand(), 10_000_000).await);
        assert!(t.elapsed() < Duration::from_millis(1));
    }

    #[tokio::test]
    async fn cancelled_waits_leave_no_trace() {
        let s = FetchScheduler::new(config(1, 1));
        let held = s.acquire(&Priority::on_demand(), 1).await;
        {
            let p = Priority::on_demand();
            let fut = s.acquire(&p, 1);
            tokio::pin!(fut);
            assert!(futures::poll!(fut.as_mut()).is_pending());
            assert_eq!(s.stats().waiting_on_demand, 1);
        }
        assert_eq!(s.stats().waiting_on_demand, 0);
        drop(held);
        let st = s.stats();
        assert_eq!((st.active_on_demand, st.on_demand_fetches), (0, 1));
        assert_eq!(st.fetch_latency.total(), 1);
    }
}
