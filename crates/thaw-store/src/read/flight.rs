//! Single-flight: concurrent reads of one missing chunk share one fetch. A fetch that
//! fails, panics or is cancelled releases every waiter and leaves no entry behind.
//!
//! The table maps a chunk to the sending half of a `watch` channel; waiters hold only
//! receivers. The fetch owns a [`FlightGuard`]; whichever way the fetch ends, dropping the
//! guard removes its entries (and so their senders), and a waiter still without a value
//! sees the channel close and gets [`ReadError::Abandoned`]. Nothing a waiter does (giving
//! up on its own deadline, say) affects the fetch or the other waiters.

use crate::error::{ReadError, SharedReadError};
use crate::read::schedule::Priority;
use bytes::Bytes;
use parking_lot::Mutex;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use thaw_core::ChunkId;
use tokio::sync::watch;

/// What a fetch delivers for one chunk.
pub type Outcome = Result<Bytes, SharedReadError>;

#[derive(Debug)]
struct Entry {
    flight: u64,
    tx: watch::Sender<Option<Outcome>>,
    priority: Arc<Priority>,
}

/// The chunks being fetched now.
#[derive(Debug, Default)]
pub struct Flights {
    table: Mutex<HashMap<ChunkId, Entry>>,
    next_flight: AtomicU64,
}

/// One waiter's claim on a chunk's fetch.
#[derive(Debug)]
pub struct Waiter {
    id: ChunkId,
    rx: watch::Receiver<Option<Outcome>>,
}

impl Waiter {
    /// Waits for the chunk. Cancel-safe: dropping the future only gives up this wait.
    pub async fn wait(mut self) -> Outcome {
        let abandoned = || Err(Arc::new(ReadError::Abandoned(self.id)));
        match self.rx.wait_for(Option::is_some).await {
            Ok(v) => v.clone().unwrap_or_else(abandoned),
            Err(_) => abandoned(),
        }
    }
}

impl Waiter {
    /// Waits for the chunk and then for its fetch to settle (its cache writes done and
    /// its entry gone): what a prefetch waits for, so "warmed" means "on disk".
    pub async fn wait_settled(mut self) -> Outcome {
        let id = self.id;
        let outcome = match self.rx.wait_for(Option::is_some).await {
            Ok(v) => v.clone(),
            Err(_) => None,
        };
        // The sender is dropped with the flight's guard; until then nothing else is sent.
        while self.rx.changed().await.is_ok() {}
        outcome.unwrap_or_else(|| Err(Arc::new(ReadError::Abandoned(id))))
    }
}

/// What [`Flights::claim`] found for each chunk asked.
#[derive(Debug)]
pub struct Claim {
    /// One waiter per chunk asked, in order.
    pub waiters: Vec<Waiter>,
    /// Chunks nobody was fetching: the caller must fetch these through the guard. `None`
    /// when every chunk was already in flight.
    pub guard: Option<FlightGuard>,
    /// How many chunks joined a fetch already in flight.
    pub joined: usize,
}

impl Flights {
    /// Whether a fetch of `id` is in flight.
    pub fn contains(&self, id: &ChunkId) -> bool {
        self.table.lock().contains_key(id)
    }

    /// Chunks in flight now.
    pub fn len(&self) -> usize {
        self.table.lock().len()
    }

    /// Whether nothing is in flight.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Joins the fetches in flight for `ids` and starts one flight, at `priority`, for the
    /// rest. Joining a prefetch with an on-demand priority promotes it (`promote` is called
    /// with the flight's priority).
    pub fn claim(
        self: &Arc<Self>,
        ids: &[ChunkId],
        priority: &Arc<Priority>,
        promote: impl Fn(&Priority),
    ) -> Claim {
        let flight = self.next_flight.fetch_add(1, Relaxed);
        let mut table = self.table.lock();
        let mut started = Vec::new();
        let mut joined = 0;
        let waiters = ids
            .iter()
            .map(|id| {
                let rx = match table.get(id) {
                    Some(e) => {
                        if e.flight != flight {
                            joined += 1;
                            if !priority.is_prefetch() {
                                promote(&e.priority);
                            }
                        }
                        e.tx.subscribe()
                    }
                    None => {
                        started.push(*id);
                        let (tx, rx) = watch::channel(None);
                        let priority = priority.clone();
                        table.insert(
                            *id,
                            Entry {
                                flight,
                                tx,
                                priority,
                            },
                        );
                        rx
                    }
                };
                Waiter { id: *id, rx }
            })
            .collect();
        let guard = (!started.is_empty()).then(|| FlightGuard {
            flights: self.clone(),
            flight,
            ids: started,
            priority: priority.clone(),
        });
        Claim {
            waiters,
            guard,
            joined,
        }
    }
}

/// The right, and the duty, to fetch some chunks. Dropping it (done, failed, panicked or
/// cancelled) removes its chunks from the table and releases every waiter.
#[derive(Debug)]
pub struct FlightGuard {
    flights: Arc<Flights>,
    flight: u64,
    ids: Vec<ChunkId>,
    priority: Arc<Priority>,
}

impl FlightGuard {
    /// The chunks this flight fetches.
    pub fn ids(&self) -> &[ChunkId] {
        &self.ids
    }

    /// The flight's priority (promoted when an on-demand reader joins).
    pub fn priority(&self) -> &Arc<Priority> {
        &self.priority
    }

    /// Gives up the chunks of `ids` this flight holds that no reader waits for: they
    /// leave the table (a later reader fetches them afresh) and are returned. For guesses
    /// (neighbours fetched around a miss) not worth decoding when on-demand work waits.
    pub fn release_unwaited(&self, ids: &[ChunkId]) -> Vec<ChunkId> {
        let mut table = self.flights.table.lock();
        ids.iter()
            .copied()
            .filter(|id| {
                let unwaited = table
                    .get(id)
                    .is_some_and(|e| e.flight == self.flight && e.tx.receiver_count() == 0);
                if unwaited {
                    table.remove(id);
                }
                unwaited
            })
            .collect()
    }

    /// Adds the chunks of `ids` nobody is fetching to this flight (neighbours fetched in
    /// the same request); returns those added.
    pub fn extend(&mut self, ids: &[ChunkId]) -> Vec<ChunkId> {
        let mut table = self.flights.table.lock();
        let added: Vec<ChunkId> = ids
            .iter()
            .copied()
            .filter(|id| {
                if table.contains_key(id) {
                    return false;
                }
                let (tx, _) = watch::channel(None);
                let priority = self.priority.clone();
                let flight = self.flight;
                table.insert(
                    *id,
                    Entry {
                        flight,
                        tx,
                        priority,
                    },
                );
                true
            })
            .collect();
        self.ids.extend_from_slice(&added);
        added
    }

    /// Hands a chunk's outcome to its waiters (present and future, until the guard drops).
    pub fn deliver(&self, id: &ChunkId, outcome: Outcome) {
        if let Some(e) = self.flights.table.lock().get(id) {
            if e.flight == self.flight {
                e.tx.send_replace(Some(outcome));
            }
        }
    }
}

impl Drop for FlightGuard {
    fn drop(&mut self) {
        // Runs during unwinding too; the lock cannot be poisoned (parking_lot).
        let mut table = self.flights.table.lock();
        for id in &self.ids {
            if table.get(id).is_some_and(|e| e.flight == self.flight) {
                table.remove(id);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn ids(n: u8) -> Vec<ChunkId> {
        (0..n).map(|i| ChunkId::of(&[i])).collect()
    }

    fn claim(f: &Arc<Flights>, ids: &[ChunkId]) -> Claim {
        f.claim(ids, &Priority::on_demand(), |p| {
            p.promote();
        })
    }

    /// 32 waiters on one chunk, one fetch.
    fn waiters_on(f: &Arc<Flights>, id: ChunkId) -> (FlightGuard, Vec<Waiter>) {
        let first = claim(f, &[id]);
        let guard = first.guard.expect("the first claim starts the flight");
        let mut waiters = first.waiters;
        for _ in 1..32 {
            let c = claim(f, &[id]);
            assert!(c.guard.is_none(), "later claims join");
            assert_eq!(c.joined, 1);
            waiters.extend(c.waiters);
        }
        (guard, waiters)
    }

    async fn all(waiters: Vec<Waiter>) -> Vec<Outcome> {
        futures::future::join_all(waiters.into_iter().map(Waiter::wait)).await
    }

    #[tokio::test]
    async fn only_chunks_nobody_waits_for_are_released() {
        let f = Arc::new(Flights::default());
        let all_ids = ids(3);
        let first = claim(&f, &all_ids[..1]);
        let mut guard = first.guard.expect("flight");
        // Two neighbours join the flight with no waiter; a reader then waits for one.
        assert_eq!(guard.extend(&all_ids[1..]), all_ids[1..].to_vec());
        let late = claim(&f, &all_ids[1..2]);
        assert!(late.guard.is_none() && late.joined == 1);
        // The asked chunk has its reader's waiter, the second a late reader's: kept.
        assert_eq!(guard.release_unwaited(&all_ids), vec![all_ids[2]]);
        assert!(f.contains(&all_ids[1]) && !f.contains(&all_ids[2]));
        assert!(
            claim(&f, &all_ids[2..]).guard.is_some(),
            "a released chunk is fetched afresh"
        );
        guard.deliver(&all_ids[1], Ok(Bytes::from_static(b"n")));
        assert_eq!(
            all(late.waiters).await[0].as_ref().expect("ok").as_ref(),
            b"n"
        );
    }

    #[tokio::test]
    async fn thirty_two_waiters_share_one_fetch() {
        let f = Arc::new(Flights::default());
        let id = ids(1)[0];
        let (guard, waiters) = waiters_on(&f, id);
        let task = tokio::spawn(async move {
            tokio::task::yield_now().await;
            guard.deliver(&id, Ok(Bytes::from_static(b"data")));
        });
        for r in all(waiters).await {
            assert_eq!(r.expect("delivered").as_ref(), b"data");
        }
        task.await.expect("task");
        assert!(f.is_empty(), "the table is empty after the fetch");
    }

    #[tokio::test]
    async fn an_error_reaches_every_waiter_and_leaves_no_entry() {
        let f = Arc::new(Flights::default());
        let id = ids(1)[0];
        let (guard, waiters) = waiters_on(&f, id);
        guard.deliver(&id, Err(Arc::new(ReadError::UnknownChunk(id))));
        drop(guard);
        for r in all(waiters).await {
            assert!(matches!(
                r.as_ref().map_err(|e| &**e),
                Err(ReadError::UnknownChunk(_))
            ));
        }
        assert!(f.is_empty());
        assert!(
            claim(&f, &[id]).guard.is_some(),
            "the next read fetches again"
        );
    }

    #[tokio::test]
    async fn a_panicking_fetch_releases_every_waiter() {
        let f = Arc::new(Flights::default());
        let id = ids(1)[0];
        let (guard, waiters) = waiters_on(&f, id);
        let task = tokio::spawn(async move {
            let _guard = guard;
            panic!("injected panic in a fetch");
        });
        assert!(task.await.is_err(), "the task panicked");
        for r in all(waiters).await {
            assert!(matches!(
                r.as_ref().map_err(|e| &**e),
                Err(ReadError::Abandoned(_))
            ));
        }
        assert!(f.is_empty());
        assert!(claim(&f, &[id]).guard.is_some());
    }

    #[tokio::test]
    async fn a_cancelled_fetch_releases_every_waiter() {
        let f = Arc::new(Flights::default());
        let id = ids(1)[0];
        let (guard, waiters) = waiters_on(&f, id);
        let task = tokio::spawn(async move {
            let _guard = guard;
            std::future::pending::<()>().await;
        });
        task.abort();
        assert!(task.await.is_err_and(|e| e.is_cancelled()));
        for r in all(waiters).await {
            assert!(matches!(
                r.as_ref().map_err(|e| &**e),
                Err(ReadError::Abandoned(_))
            ));
        }
        assert!(f.is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn one_waiters_deadline_does_not_cancel_the_others() {
        let f = Arc::new(Flights::default());
        let id = ids(1)[0];
        let (guard, mut waiters) = waiters_on(&f, id);
        let impatient = waiters.pop().expect("32 waiters");
        let gave_up = tokio::time::timeout(Duration::from_millis(10), impatient.wait()).await;
        assert!(gave_up.is_err(), "the impatient waiter timed out");
        assert!(f.contains(&id), "the fetch goes on");
        guard.deliver(&id, Ok(Bytes::from_static(b"late")));
        drop(guard);
        let results = all(waiters).await;
        assert_eq!(results.len(), 31);
        assert!(results.iter().all(|r| r.is_ok()));
    }

    #[tokio::test]
    async fn settled_waiters_return_only_after_the_guard_drops() {
        let f = Arc::new(Flights::default());
        let id = ids(1)[0];
        let claim = claim(&f, &[id]);
        let guard = claim.guard.expect("started");
        let settled = claim
            .waiters
            .into_iter()
            .next()
            .expect("one")
            .wait_settled();
        tokio::pin!(settled);
        guard.deliver(&id, Ok(Bytes::from_static(b"x")));
        assert!(
            futures::poll!(settled.as_mut()).is_pending(),
            "not settled yet"
        );
        drop(guard);
        assert_eq!(settled.await.expect("value").as_ref(), b"x");
    }

    #[tokio::test]
    async fn late_joiners_get_a_delivered_value_until_the_guard_drops() {
        let f = Arc::new(Flights::default());
        let id = ids(1)[0];
        let guard = claim(&f, &[id]).guard.expect("started");
        guard.deliver(&id, Ok(Bytes::from_static(b"x")));
        // The fetch is still writing its cache entries: a new reader joins and gets the
        // value at once instead of fetching again.
        let late = claim(&f, &[id]);
        assert!(late.guard.is_none());
        drop(guard);
        let got = all(late.waiters).await;
        assert_eq!(got[0].as_ref().expect("value").as_ref(), b"x");
    }

    #[tokio::test]
    async fn neighbours_join_the_flight_and_prefetch_is_promoted() {
        let f = Arc::new(Flights::default());
        let c = ids(3);
        let mut guard = f
            .claim(&c[..1], &Priority::prefetch(), |_| {})
            .guard
            .expect("started");
        assert_eq!(guard.extend(&c), vec![c[1], c[2]], "c[0] is already ours");
        assert_eq!(f.len(), 3);
        let promoted = std::sync::atomic::AtomicBool::new(false);
        let joined = f.claim(&c[2..], &Priority::on_demand(), |p| {
            promoted.store(p.promote(), Relaxed);
        });
        assert_eq!(joined.joined, 1);
        assert!(
            promoted.load(Relaxed),
            "an on-demand reader promotes a prefetch"
        );
        drop(guard);
        assert!(f.is_empty());
    }
}
