//! The worker a replica runs (`thaw autoscale worker`): it says it is ready, then takes
//! one task at a time from the queue, runs the deployment's command with the task in
//! `THAW_TASK`, and records it done; asked to drain (or sent SIGTERM) it finishes the
//! task in hand and exits.

use super::queue::{Queue, QueueError};
use std::future::Future;
use std::time::Instant;

/// What a worker is told.
#[derive(Debug, Clone)]
pub struct WorkerConfig {
    /// The Redis URL.
    pub redis: String,
    /// The queue's key.
    pub queue: String,
    /// This replica's name.
    pub replica: String,
    /// The command run per task.
    pub command: Vec<String>,
}

/// Runs until drained or `shutdown`; returns the tasks it ran.
pub async fn run(
    config: &WorkerConfig,
    shutdown: impl Future<Output = ()>,
) -> Result<u64, QueueError> {
    let mut queue = Queue::connect(&config.redis, &config.queue).await?;
    queue.announce_ready(&config.replica).await?;
    // A heartbeat beside the work, so a long task does not let the ready key expire: a
    // key that expires means a dead worker, whose tasks the loop requeues.
    let mut beat = queue.clone();
    let replica = config.replica.clone();
    let heartbeat = tokio::spawn(async move {
        let mut every =
            tokio::time::interval(std::time::Duration::from_secs(super::queue::HEARTBEAT_SECS));
        loop {
            every.tick().await;
            if let Err(e) = beat.announce_ready(&replica).await {
                tracing::warn!(error = %e, "heartbeat failed");
            }
        }
    });
    let result = work(&mut queue, config, shutdown).await;
    heartbeat.abort();
    result
}

async fn work(
    queue: &mut Queue,
    config: &WorkerConfig,
    shutdown: impl Future<Output = ()>,
) -> Result<u64, QueueError> {
    tokio::pin!(shutdown);
    let mut ran = 0;
    loop {
        if queue.draining(&config.replica).await? {
            break;
        }
        let task = tokio::select! {
            () = &mut shutdown => break,
            t = queue.take(&config.replica, 1.0) => t?,
        };
        let Some(task) = task else { continue };
        let began = Instant::now();
        let ok = run_task(&config.command, &task).await;
        let ms = u64::try_from(began.elapsed().as_millis()).unwrap_or(u64::MAX);
        queue.finish(&config.replica, &task, ok, ms).await?;
        ran += 1;
    }
    Ok(ran)
}

async fn run_task(command: &[String], task: &str) -> bool {
    let Some((program, args)) = command.split_first() else {
        return false;
    };
    match tokio::process::Command::new(program)
        .args(args)
        .env("THAW_TASK", task)
        .status()
        .await
    {
        Ok(status) => status.success(),
        Err(e) => {
            tracing::warn!(%program, error = %e, "could not run the task's command");
            false
        }
    }
}
