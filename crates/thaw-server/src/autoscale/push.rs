//! Signals a gateway pushes (`POST /v1/deployments/{name}/signals`): the latest per
//! deployment, kept on the node for the loop to read; a push wakes the loop at once, so
//! the first request at zero starts a replica without waiting for a tick.

use super::source::{Sample, Source, SourceError};
use async_trait::async_trait;
use parking_lot::Mutex;
use std::collections::BTreeMap;
use std::sync::Arc;
use thaw_api::api::{Signals, MAX_SIGNAL_REPLICAS};
use tokio::sync::Notify;
use tokio::time::Instant;

/// Why a push was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PushError {
    /// No deployment of that name takes pushed signals.
    #[error("no deployment {0:?} takes pushed signals (push = true)")]
    NoSuchDeployment(String),
    /// The signals do not make sense.
    #[error("{0}")]
    Invalid(String),
}

#[derive(Debug)]
struct Channel {
    latest: Option<(Signals, Instant)>,
    wake: Arc<Notify>,
}

/// The latest signals of every push deployment, shared by the API and the loops.
#[derive(Debug, Clone, Default)]
pub struct SignalBoard {
    inner: Arc<Mutex<BTreeMap<String, Channel>>>,
}

impl SignalBoard {
    /// Opens `name` to pushes; each one wakes `wake`.
    pub(super) fn register(&self, name: &str, wake: Arc<Notify>) -> PushSource {
        self.inner
            .lock()
            .insert(name.to_owned(), Channel { latest: None, wake });
        PushSource {
            board: self.clone(),
            name: name.to_owned(),
        }
    }

    /// Records `signals` for `name` and wakes its loop.
    pub fn push(&self, name: &str, signals: Signals) -> Result<(), PushError> {
        check(&signals)?;
        let mut all = self.inner.lock();
        let ch = all
            .get_mut(name)
            .ok_or_else(|| PushError::NoSuchDeployment(name.to_owned()))?;
        ch.latest = Some((signals, Instant::now()));
        ch.wake.notify_one();
        Ok(())
    }

    fn latest(&self, name: &str) -> Option<(Signals, Instant)> {
        self.inner.lock().get(name).and_then(|c| c.latest.clone())
    }
}

fn check(s: &Signals) -> Result<(), PushError> {
    if s.replicas.len() > MAX_SIGNAL_REPLICAS {
        return Err(PushError::Invalid(format!(
            "replicas: {} entries, at most {MAX_SIGNAL_REPLICAS}",
            s.replicas.len()
        )));
    }
    if let Some(t) = s.service_seconds {
        if !(t.is_finite() && t >= 0.0) {
            return Err(PushError::Invalid(format!(
                "service_seconds: {t} is not a non-negative number"
            )));
        }
    }
    Ok(())
}

/// One deployment's pushed signals, as a [`Source`].
#[derive(Debug)]
pub(super) struct PushSource {
    board: SignalBoard,
    name: String,
}

#[async_trait]
impl Source for PushSource {
    fn kind(&self) -> &'static str {
        "push"
    }

    async fn sample(&mut self, replicas: &[String]) -> Result<Sample, SourceError> {
        let Some((s, at)) = self.board.latest(&self.name) else {
            return Ok(Sample {
                replicas: replicas.iter().map(|_| (0, None)).collect(),
                unheard: true,
                ..Sample::default()
            });
        };
        Ok(Sample {
            queued: s.queued,
            in_flight: s.in_flight,
            completed: s.completed.unwrap_or(0),
            service_seconds: s.service_seconds,
            replicas: replicas
                .iter()
                .map(|r| (s.replicas.get(r).copied().unwrap_or(0), None))
                .collect(),
            age_seconds: Some(at.elapsed().as_secs_f64()),
            unheard: false,
        })
    }

    async fn requeue(&mut self, _replica: &str) -> Result<u64, SourceError> {
        // The gateway holds the requests; it retries them on another replica.
        Ok(0)
    }

    async fn drain(&mut self, _replica: &str) -> Result<bool, SourceError> {
        Ok(false)
    }

    async fn orphans(&mut self) -> Result<Vec<String>, SourceError> {
        Ok(Vec::new())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_push_is_read_by_its_deployment_and_wakes_it() {
        let board = SignalBoard::default();
        let wake = Arc::new(Notify::new());
        let mut source = board.register("web", wake.clone());
        let empty = source.sample(&["web-1".into()]).await.unwrap();
        assert_eq!((empty.queued, empty.replicas.clone()), (0, vec![(0, None)]));
        let signals = Signals {
            queued: 5,
            in_flight: 2,
            completed: Some(40),
            service_seconds: Some(0.5),
            replicas: [("web-1".to_string(), 2)].into(),
        };
        board.push("web", signals).unwrap();
        // The wake-up is stored: the loop's next `notified()` returns at once.
        tokio::time::timeout(std::time::Duration::from_secs(5), wake.notified())
            .await
            .unwrap();
        let s = source
            .sample(&["web-1".into(), "web-2".into()])
            .await
            .unwrap();
        assert_eq!((s.queued, s.completed), (5, 40));
        assert_eq!(s.replicas, vec![(2, None), (0, None)]);
        assert!(s.age_seconds.is_some());
        assert!(!source.drain("web-1").await.unwrap());
    }

    #[test]
    fn bad_pushes_are_refused() {
        let board = SignalBoard::default();
        let _source = board.register("web", Arc::new(Notify::new()));
        assert_eq!(
            board.push("nope", Signals::default()),
            Err(PushError::NoSuchDeployment("nope".into()))
        );
        let bad = Signals {
            service_seconds: Some(f64::NAN),
            ..Signals::default()
        };
        assert!(matches!(board.push("web", bad), Err(PushError::Invalid(_))));
        let many = Signals {
            replicas: (0..=MAX_SIGNAL_REPLICAS)
                .map(|i| (i.to_string(), 1))
                .collect(),
            ..Signals::default()
        };
        assert!(matches!(
            board.push("web", many),
            Err(PushError::Invalid(_))
        ));
    }
}
