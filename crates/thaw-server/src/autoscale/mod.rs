//! The autoscaler's control loop inside the daemon: one loop per configured deployment,
//! reading a Redis queue, deciding through a `thaw_autoscale` policy, and running replicas
//! as containers the daemon owns (prewarmed, lazily mounted); `GET /v1/autoscale` and
//! `/metrics` show what each loop last saw and decided.

mod control;
mod persist;
pub mod queue;
mod replica;
mod status;
pub mod worker;

pub use status::StatusBoard;

use crate::Node;
use std::sync::Arc;
use thaw_autoscale::build_policy;
use thaw_autoscale::config::AutoscaleConfig;
use tokio_util::sync::CancellationToken;

/// Why the loops could not start.
#[derive(Debug, thiserror::Error)]
pub enum AutoscaleStartError {
    /// A deployment's policy could not be built.
    #[error("deployment {0}: {1}")]
    Policy(String, thaw_autoscale::ParamError),
    /// Its queue could not be reached.
    #[error("deployment {0}: {1}")]
    Queue(String, queue::QueueError),
}

/// Starts one loop per deployment; they run until `shutdown`, and the returned set ends
/// once each has drained and removed its replicas. Policies keep what they learn in
/// `state_dir/autoscale/DEPLOYMENT.json`.
pub async fn start(
    node: &Arc<Node>,
    config: &AutoscaleConfig,
    state_dir: &std::path::Path,
    shutdown: &CancellationToken,
) -> Result<tokio::task::JoinSet<()>, AutoscaleStartError> {
    let mut loops = tokio::task::JoinSet::new();
    let gpus = node_gpus();
    for d in &config.deployments {
        let name = d.name.get_ref().clone();
        let policy = build_policy(d.policy.get_ref(), &d.policy_params(), d.deployment())
            .map_err(|e| AutoscaleStartError::Policy(name.clone(), e))?;
        let q = queue::Queue::connect(&d.source.redis, &d.source.queue)
            .await
            .map_err(|e| AutoscaleStartError::Queue(name.clone(), e))?;
        let slots = gpu_slots(gpus, d.gpus_per_replica);
        let mut l = control::Loop::new(
            node.clone(),
            d.clone(),
            policy,
            q,
            config.tick_seconds,
            node.autoscale.clone(),
            slots,
        );
        l.state_file = Some(state_dir.join("autoscale").join(format!("{name}.json")));
        let wake = l.wake.clone();
        let (url, key) = (d.source.redis.clone(), d.source.queue.clone());
        let watching = shutdown.clone();
        tokio::spawn(async move {
            tokio::select! {
                () = watching.cancelled() => {}
                r = queue::watch(&url, &key, move || wake.notify_one()) => {
                    if let Err(e) = r {
                        tracing::warn!(deployment = %name, error = %e, "no keyspace notifications: new work waits for the next tick");
                    }
                }
            }
        });
        loops.spawn(l.run(shutdown.clone()));
    }
    Ok(loops)
}

/// The node's GPUs: `THAW_NODE_GPUS`, else the `/dev/nvidiaN` devices.
fn node_gpus() -> u32 {
    if let Some(n) = std::env::var("THAW_NODE_GPUS")
        .ok()
        .and_then(|v| v.parse().ok())
    {
        return n;
    }
    let n = std::fs::read_dir("/dev").map_or(0, |d| {
        d.flatten()
            .filter(|e| {
                e.file_name()
                    .to_str()
                    .and_then(|n| n.strip_prefix("nvidia"))
                    .is_some_and(|rest| {
                        !rest.is_empty() && rest.bytes().all(|b| b.is_ascii_digit())
                    })
            })
            .count()
    });
    u32::try_from(n).unwrap_or(u32::MAX)
}

/// The node's GPUs cut into shares of `per` (`CUDA_VISIBLE_DEVICES` values); one free
/// slot per share. Without GPUs per replica, no slots (and no limit from them).
fn gpu_slots(gpus: u32, per: u32) -> Vec<Option<String>> {
    if per == 0 {
        return Vec::new();
    }
    (0..gpus / per)
        .map(|i| {
            Some(
                (i * per..(i + 1) * per)
                    .map(|g| g.to_string())
                    .collect::<Vec<_>>()
                    .join(","),
            )
        })
        .collect()
}

#[cfg(test)]
mod tests {
    #[test]
    fn gpu_slots_cut_the_node() {
        assert_eq!(
            super::gpu_slots(8, 2),
            [
                Some("0,1".to_string()),
                Some("2,3".into()),
                Some("4,5".into()),
                Some("6,7".into())
            ]
        );
        assert!(super::gpu_slots(1, 2).is_empty());
        assert!(super::gpu_slots(8, 0).is_empty());
    }
}
