//! The autoscaler's control loop inside the daemon: one loop per configured deployment,
//! reading a source (a Redis queue, or signals a gateway pushes), deciding through a
//! `thaw_autoscale` policy, and running replicas through an actuator (containers the
//! daemon owns, prewarmed and lazily mounted; plain processes; or an orchestrator behind a
//! webhook); `GET /v1/autoscale` and `/metrics` show what each loop last saw and decided.

mod actuator;
mod control;
mod persist;
mod probe;
mod process;
pub mod push;
pub mod queue;
mod replica;
mod source;
mod status;
mod webhook;
pub mod worker;

pub use push::{PushError, SignalBoard};
pub use status::StatusBoard;
pub use webhook::WebhookError;

use crate::Node;
use control::{Fleet, Loop, Parts};
use std::path::Path;
use std::sync::Arc;
use thaw_autoscale::build_policy;
use thaw_autoscale::config::{ActuatorKind, AutoscaleConfig, DeploymentConfig};
use tokio::sync::Notify;
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
    /// Its webhook's token could not be read.
    #[error("deployment {0}: webhook token {1}: {2}")]
    WebhookToken(String, std::path::PathBuf, std::io::Error),
    /// Its weights socket could not be made.
    #[error("deployment {0}: weights socket {1}: {2}")]
    WeightsSocket(String, std::path::PathBuf, std::io::Error),
}

/// Starts one loop per deployment; they run until `shutdown`, and the returned set ends
/// once each has drained and removed its replicas. Policies keep what they learn, and
/// process replicas their records, in `state_dir/autoscale/`.
pub async fn start(
    node: &Arc<Node>,
    config: &AutoscaleConfig,
    state_dir: &Path,
    shutdown: &CancellationToken,
) -> Result<tokio::task::JoinSet<()>, AutoscaleStartError> {
    let mut loops = tokio::task::JoinSet::new();
    let gpus = node_gpus();
    for d in &config.deployments {
        let name = d.name.get_ref().clone();
        let policy = build_policy(d.policy.get_ref(), &d.policy_params(), d.deployment())
            .map_err(|e| AutoscaleStartError::Policy(name.clone(), e))?;
        let wake = Arc::new(Notify::new());
        let source: Box<dyn source::Source> = match d.source.get_ref().redis() {
            Some((url, key)) => {
                let q = queue::Queue::connect(url, key)
                    .await
                    .map_err(|e| AutoscaleStartError::Queue(name.clone(), e))?;
                watch_queue(&name, url, key, wake.clone(), shutdown.clone());
                Box::new(q)
            }
            None => Box::new(node.signals.register(&name, wake.clone())),
        };
        let socket = weights_socket(node, d, state_dir, shutdown)?;
        let l = Loop::new(Parts {
            node: node.clone(),
            config: d.clone(),
            policy,
            source,
            fleet: fleet(node, d, state_dir, socket.as_deref())?,
            tick: config.tick_seconds,
            board: node.autoscale.clone(),
            slots: slots(d, gpus),
            wake,
            state_file: Some(state_dir.join("autoscale").join(format!("{name}.json"))),
            leave_running: config.leave_running_on_exit,
        });
        loops.spawn(l.run(shutdown.clone()));
    }
    Ok(loops)
}

/// A deployment's own weights socket, served until `shutdown`, where it keeps weights
/// resident (`weights_files`, and a daemon with a resident tier).
fn weights_socket(
    node: &Arc<Node>,
    d: &DeploymentConfig,
    state_dir: &Path,
    shutdown: &CancellationToken,
) -> Result<Option<std::path::PathBuf>, AutoscaleStartError> {
    let files = d.weights_files.get_ref();
    let (Some(image), false, true) = (&d.weights, files.is_empty(), node.resident.is_some()) else {
        return Ok(None);
    };
    let name = d.name.get_ref();
    let path = state_dir
        .join("autoscale")
        .join("weights")
        .join(name)
        .join(replica::WEIGHTS_SOCKET_NAME);
    crate::weights::serve_deployment(node, &path, image, files, shutdown)
        .map_err(|e| AutoscaleStartError::WeightsSocket(name.clone(), path.clone(), e))?;
    Ok(Some(path))
}

fn fleet(
    node: &Arc<Node>,
    d: &DeploymentConfig,
    state_dir: &Path,
    weights_socket: Option<&Path>,
) -> Result<Fleet, AutoscaleStartError> {
    let name = d.name.get_ref();
    Ok(match d.actuator.get_ref() {
        ActuatorKind::Containers => Fleet::Local(Arc::new(replica::ContainerActuator {
            node: node.clone(),
            config: d.clone(),
            weights_socket: weights_socket.map(Path::to_path_buf),
            records_path: state_dir
                .join("autoscale")
                .join(format!("{name}.containers.json")),
            records: parking_lot::Mutex::default(),
        })),
        ActuatorKind::Process => {
            let socket = weights_socket.map(|s| s.display().to_string());
            let env = replica::weights_env(d, socket.as_deref());
            Fleet::Local(Arc::new(process::ProcessActuator::new(
                name, state_dir, env,
            )))
        }
        ActuatorKind::Webhook => {
            let token = match &d.webhook_token_file {
                Some(path) => Some(
                    std::fs::read_to_string(path)
                        .map_err(|e| {
                            AutoscaleStartError::WebhookToken(name.clone(), path.clone(), e)
                        })?
                        .trim()
                        .to_owned(),
                ),
                None => None,
            };
            let url = d
                .webhook
                .as_ref()
                .map(|u| u.get_ref().as_str())
                .unwrap_or_default();
            Fleet::External(webhook::Webhook::new(url, token))
        }
    })
}

/// Wakes the loop the moment work lands in an empty queue (keyspace notifications).
fn watch_queue(name: &str, url: &str, key: &str, wake: Arc<Notify>, shutdown: CancellationToken) {
    let (name, url, key) = (name.to_owned(), url.to_owned(), key.to_owned());
    tokio::spawn(async move {
        tokio::select! {
            () = shutdown.cancelled() => {}
            r = queue::watch(&url, &key, move || wake.notify_one()) => {
                if let Err(e) = r {
                    tracing::warn!(deployment = %name, error = %e, "no keyspace notifications: new work waits for the next tick");
                }
            }
        }
    });
}

/// The replicas the node has room for: `max_replicas`, and no more than its GPUs give
/// shares of `gpus_per_replica`.
fn slots(d: &DeploymentConfig, node_gpus: u32) -> u32 {
    let max = *d.max_replicas.get_ref();
    match d.gpus_per_replica {
        0 => max,
        per => max.min(node_gpus / per),
    }
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

#[cfg(test)]
mod tests {
    use thaw_autoscale::config::parse;

    #[test]
    fn the_node_gpus_bound_the_replicas() {
        let text = "[[deployment]]\nname = \"a\"\ncommand = [\"x\"]\nactuator = \"process\"\nmax_replicas = 6\ngpus_per_replica = 2\n[deployment.source]\npush = true\n";
        let c = parse(std::path::Path::new("a.toml"), text).unwrap();
        let d = &c.deployments[0];
        assert_eq!(super::slots(d, 8), 4);
        assert_eq!(super::slots(d, 1), 0);
        assert_eq!(super::slots(d, 64), 6);
    }
}
