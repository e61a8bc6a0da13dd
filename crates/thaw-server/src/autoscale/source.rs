//! Where a deployment's work is read from: the seam between the loop and a Redis queue or
//! a gateway's pushed signals. A source says how much work waits and is in flight, who is
//! busy, and, where it can, who is ready; it takes back what a dead replica held.

use super::queue::{Queue, QueueError};
use async_trait::async_trait;

/// A source that could not be read.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    /// The Redis queue failed.
    #[error(transparent)]
    Queue(#[from] QueueError),
}

/// What the loop reads at each decision.
#[derive(Debug, Clone, Default, PartialEq)]
pub(super) struct Sample {
    /// Work waiting.
    pub queued: u64,
    /// Work in hand.
    pub in_flight: u64,
    /// Work completed, a counter that only grows.
    pub completed: u64,
    /// The mean service time, seconds, once known.
    pub service_seconds: Option<f64>,
    /// Per replica asked about: work in hand, and whether it is ready (`None`: the
    /// source cannot tell).
    pub replicas: Vec<(u64, Option<bool>)>,
    /// Seconds since the source last heard from its producer (push sources).
    pub age_seconds: Option<f64>,
    /// The source has heard nothing since the daemon started (a push source before the
    /// gateway's first push): the zeros above mean "unknown", not "idle".
    pub unheard: bool,
}

/// One deployment's source of work.
#[async_trait]
pub(super) trait Source: Send {
    /// `redis` or `push`.
    fn kind(&self) -> &'static str;
    /// Reads the work waiting and in flight, and each of `replicas`.
    async fn sample(&mut self, replicas: &[String]) -> Result<Sample, SourceError>;
    /// Puts back what `replica` held; returns how much.
    async fn requeue(&mut self, replica: &str) -> Result<u64, SourceError>;
    /// Asks `replica` to stop after the work in hand. False when the source cannot: the
    /// loop then stops the replica itself once it is idle.
    async fn drain(&mut self, replica: &str) -> Result<bool, SourceError>;
    /// Replicas that hold work but that nothing answers for (a dead daemon's).
    async fn orphans(&mut self) -> Result<Vec<String>, SourceError>;
}

#[async_trait]
impl Source for Queue {
    fn kind(&self) -> &'static str {
        "redis"
    }

    async fn sample(&mut self, replicas: &[String]) -> Result<Sample, SourceError> {
        let s = Queue::sample(self, replicas).await?;
        Ok(Sample {
            queued: s.queued,
            in_flight: s.replicas.iter().map(|&(n, _)| n).sum(),
            completed: s.completed,
            service_seconds: (s.completed > 0).then(|| {
                thaw_autoscale::as_f64(s.service_ms) / 1000.0 / thaw_autoscale::as_f64(s.completed)
            }),
            replicas: s.replicas.iter().map(|&(n, r)| (n, Some(r))).collect(),
            age_seconds: None,
            unheard: false,
        })
    }

    async fn requeue(&mut self, replica: &str) -> Result<u64, SourceError> {
        Ok(Queue::requeue(self, replica).await?)
    }

    async fn drain(&mut self, replica: &str) -> Result<bool, SourceError> {
        Queue::drain(self, replica).await?;
        Ok(true)
    }

    async fn orphans(&mut self) -> Result<Vec<String>, SourceError> {
        Ok(Queue::orphans(self).await?)
    }
}
