//! The reliable Redis queue a deployment's tasks travel through. Producers `LPUSH` tasks
//! onto the queue; a worker moves one at a time onto its own processing list
//! (`BLMOVE`), runs it, and in one transaction records it done and removes it; the
//! control loop counts the queue and the processing lists (the queue depth and the work
//! in flight, and who is busy), and moves a dead replica's list back onto the queue.
//! Delivery is at least once, exactly once when no replica dies.

use redis::aio::MultiplexedConnection;
use redis::AsyncCommands;

/// A queue that cannot be reached or answered strangely.
#[derive(Debug, thiserror::Error)]
#[error("redis queue {queue}: {source}")]
pub struct QueueError {
    /// The queue's key.
    pub queue: String,
    /// What Redis said.
    #[source]
    pub source: redis::RedisError,
}

/// Seconds a worker's ready key lives without a heartbeat.
pub const READY_TTL_SECS: u64 = 15;
/// Seconds between a worker's heartbeats.
pub const HEARTBEAT_SECS: u64 = 3;
/// The most processing lists one orphan scan looks at.
const MAX_ORPHAN_SCAN: usize = 10_000;

/// The keys of one queue.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Keys {
    queue: String,
}

impl Keys {
    /// The keys around the list `queue`.
    #[must_use]
    pub fn new(queue: &str) -> Self {
        Keys {
            queue: queue.to_owned(),
        }
    }
    /// The list producers push onto.
    #[must_use]
    pub fn queue(&self) -> &str {
        &self.queue
    }
    /// A replica's processing list.
    #[must_use]
    pub fn processing(&self, replica: &str) -> String {
        format!("{}:processing:{replica}", self.queue)
    }
    /// Set by a replica once it takes tasks.
    #[must_use]
    pub fn ready(&self, replica: &str) -> String {
        format!("{}:ready:{replica}", self.queue)
    }
    /// Set by the loop to tell a replica to finish its task and stop.
    #[must_use]
    pub fn drain(&self, replica: &str) -> String {
        format!("{}:drain:{replica}", self.queue)
    }
    /// Tasks done (a list, in completion order).
    #[must_use]
    pub fn done(&self) -> String {
        format!("{}:done", self.queue)
    }
    /// Tasks whose command failed.
    #[must_use]
    pub fn failed(&self) -> String {
        format!("{}:failed", self.queue)
    }
    /// Counters: tasks completed, and their service time in milliseconds.
    #[must_use]
    pub fn stats(&self) -> (String, String) {
        (
            format!("{}:completed", self.queue),
            format!("{}:service_ms", self.queue),
        )
    }
}

/// What the loop reads at each decision.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct QueueSample {
    /// Tasks waiting.
    pub queued: u64,
    /// Tasks completed since the queue was made.
    pub completed: u64,
    /// Their service time, milliseconds.
    pub service_ms: u64,
    /// Per replica asked about: tasks on its processing list, and whether it is ready.
    pub replicas: Vec<(u64, bool)>,
}

/// One connection to one queue.
#[derive(Clone)]
pub struct Queue {
    conn: MultiplexedConnection,
    keys: Keys,
}

impl std::fmt::Debug for Queue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Queue")
            .field("keys", &self.keys)
            .finish_non_exhaustive()
    }
}

impl Queue {
    /// Connects to `url` for the list `queue`.
    pub async fn connect(url: &str, queue: &str) -> Result<Self, QueueError> {
        let err = |source| QueueError {
            queue: queue.to_owned(),
            source,
        };
        let client = redis::Client::open(url).map_err(err)?;
        // A worker's BLMOVE blocks for up to its own timeout: longer than the default
        // response timeout would allow. Connecting still has its limit.
        let config = redis::AsyncConnectionConfig::new()
            .set_response_timeout(Some(std::time::Duration::from_secs(30)))
            .set_connection_timeout(Some(std::time::Duration::from_secs(10)));
        let conn = client
            .get_multiplexed_async_connection_with_config(&config)
            .await
            .map_err(err)?;
        Ok(Queue {
            conn,
            keys: Keys::new(queue),
        })
    }

    /// The queue's keys.
    #[must_use]
    pub fn keys(&self) -> &Keys {
        &self.keys
    }

    fn err(&self) -> impl Fn(redis::RedisError) -> QueueError + '_ {
        move |source| QueueError {
            queue: self.keys.queue.clone(),
            source,
        }
    }

    /// Reads the queue's depth, its counters and each replica's list, in one round trip.
    pub async fn sample(&mut self, replicas: &[String]) -> Result<QueueSample, QueueError> {
        let (completed, service) = self.keys.stats();
        let mut pipe = redis::pipe();
        pipe.llen(self.keys.queue()).get(&completed).get(&service);
        for r in replicas {
            pipe.llen(self.keys.processing(r))
                .exists(self.keys.ready(r));
        }
        let values: Vec<redis::Value> =
            pipe.query_async(&mut self.conn).await.map_err(self.err())?;
        let num = |v: Option<&redis::Value>| {
            v.and_then(|v| redis::from_redis_value::<Option<u64>>(v.clone()).ok())
                .flatten()
                .unwrap_or(0)
        };
        let mut sample = QueueSample {
            queued: num(values.first()),
            completed: num(values.get(1)),
            service_ms: num(values.get(2)),
            replicas: Vec::new(),
        };
        for pair in values.get(3..).unwrap_or_default().chunks(2) {
            sample
                .replicas
                .push((num(pair.first()), num(pair.get(1)) > 0));
        }
        Ok(sample)
    }

    /// Moves everything on `replica`'s processing list back to the front of the queue
    /// (the end workers take from) and forgets the replica's keys; returns the tasks moved.
    pub async fn requeue(&mut self, replica: &str) -> Result<u64, QueueError> {
        let processing = self.keys.processing(replica);
        let mut moved = 0;
        loop {
            let task: Option<String> = redis::cmd("LMOVE")
                .arg(&processing)
                .arg(self.keys.queue())
                .arg("LEFT")
                .arg("RIGHT")
                .query_async(&mut self.conn)
                .await
                .map_err(self.err())?;
            if task.is_none() {
                break;
            }
            moved += 1;
        }
        let keys = [
            self.keys.ready(replica),
            self.keys.drain(replica),
            processing,
        ];
        let _: () = self.conn.del(&keys).await.map_err(self.err())?;
        Ok(moved)
    }

    /// Tells `replica` to finish its task and stop.
    pub async fn drain(&mut self, replica: &str) -> Result<(), QueueError> {
        let key = self.keys.drain(replica);
        let _: () = self.conn.set_ex(key, 1, 3600).await.map_err(self.err())?;
        Ok(())
    }

    /// Worker side: says this replica takes tasks (and is alive) for the next
    /// [`READY_TTL_SECS`]; the worker repeats it every [`HEARTBEAT_SECS`].
    pub async fn announce_ready(&mut self, replica: &str) -> Result<(), QueueError> {
        let key = self.keys.ready(replica);
        let _: () = self
            .conn
            .set_ex(key, 1, READY_TTL_SECS)
            .await
            .map_err(self.err())?;
        Ok(())
    }

    /// Replicas whose processing list still holds tasks but whose ready key has expired:
    /// their worker is gone (a replica of a daemon that died, on this node or another).
    pub async fn orphans(&mut self) -> Result<Vec<String>, QueueError> {
        let prefix = self.keys.processing("");
        let queue = self.keys.queue.clone();
        let err = move |source| QueueError {
            queue: queue.clone(),
            source,
        };
        let mut lists: Vec<String> = Vec::new();
        {
            let mut iter: redis::AsyncIter<String> = self
                .conn
                .scan_match(format!("{prefix}*"))
                .await
                .map_err(&err)?;
            while let Some(item) = futures::StreamExt::next(&mut iter).await {
                lists.push(item.map_err(&err)?);
                if lists.len() >= MAX_ORPHAN_SCAN {
                    break;
                }
            }
        }
        let mut dead = Vec::new();
        for list in lists {
            let replica = list[prefix.len()..].to_string();
            let alive: bool = self
                .conn
                .exists(self.keys.ready(&replica))
                .await
                .map_err(self.err())?;
            if !alive {
                dead.push(replica);
            }
        }
        Ok(dead)
    }

    /// Worker side: whether the loop asked this replica to stop.
    pub async fn draining(&mut self, replica: &str) -> Result<bool, QueueError> {
        let key = self.keys.drain(replica);
        self.conn.exists(key).await.map_err(self.err())
    }

    /// Worker side: waits up to `timeout` seconds for a task and moves it onto this
    /// replica's processing list.
    pub async fn take(
        &mut self,
        replica: &str,
        timeout: f64,
    ) -> Result<Option<String>, QueueError> {
        redis::cmd("BLMOVE")
            .arg(self.keys.queue())
            .arg(self.keys.processing(replica))
            .arg("RIGHT")
            .arg("LEFT")
            .arg(timeout)
            .query_async(&mut self.conn)
            .await
            .map_err(self.err())
    }

    /// Worker side: records `task` done (or failed) and takes it off the processing list,
    /// in one transaction.
    pub async fn finish(
        &mut self,
        replica: &str,
        task: &str,
        ok: bool,
        service_ms: u64,
    ) -> Result<(), QueueError> {
        let (completed, service) = self.keys.stats();
        let _: () = redis::pipe()
            .atomic()
            .rpush(
                if ok {
                    self.keys.done()
                } else {
                    self.keys.failed()
                },
                task,
            )
            .lrem(self.keys.processing(replica), 1, task)
            .incr(&completed, 1)
            .incr(&service, service_ms)
            .query_async(&mut self.conn)
            .await
            .map_err(self.err())?;
        Ok(())
    }
}

/// Calls `wake` whenever something is pushed onto `queue`, through Redis keyspace
/// notifications (which it switches on for lists, `Kl`), until the connection ends. The
/// first task at zero is then seen at once, not at the next tick.
pub async fn watch(
    url: &str,
    queue: &str,
    wake: impl Fn() + Send + 'static,
) -> Result<(), QueueError> {
    use futures::StreamExt;
    let err = |source| QueueError {
        queue: queue.to_owned(),
        source,
    };
    let client = redis::Client::open(url).map_err(err)?;
    let mut conn = client
        .get_multiplexed_async_connection()
        .await
        .map_err(err)?;
    let _: () = redis::cmd("CONFIG")
        .arg("SET")
        .arg("notify-keyspace-events")
        .arg("Kl")
        .query_async(&mut conn)
        .await
        .map_err(err)?;
    let db = client.get_connection_info().redis_settings().db();
    let mut pubsub = client.get_async_pubsub().await.map_err(err)?;
    pubsub
        .subscribe(format!("__keyspace@{db}__:{queue}"))
        .await
        .map_err(err)?;
    let mut messages = pubsub.into_on_message();
    while messages.next().await.is_some() {
        wake();
    }
    Ok(())
}
