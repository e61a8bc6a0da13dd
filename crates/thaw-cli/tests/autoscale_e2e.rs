//! The autoscaler end to end: a real `redis-server`, `thaw autoscale run` with one
//! deployment, replicas started as containers under runc from the lazily mounted debootstrap
//! image (each running `thaw autoscale worker`). A burst takes the deployment from 0 to
//! its maximum and back to 0; every task is done exactly once (each task first asks the
//! daemon's weights socket, bind-mounted into the container, for the deployment's
//! resident weights); a replica killed in the middle of a task is replaced and its task
//! done again; scale-down drains.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::too_many_lines,
    reason = "end-to-end scenarios: a failed step panics with its message, and a scenario reads top to bottom"
)]

mod common;
use common::container::{debian_store, Node};
use common::daemon::Daemon;
use common::redis::Redis;

use std::path::Path;
use std::time::{Duration, Instant};
use thaw_api::api::DeploymentStatus;
use thaw_tests::images::have;
use thaw_tests::skip;

fn config(redis: &Redis, max: u32) -> String {
    config_with(redis, max, "")
}

/// The deployment `burst` with more policy parameters (`KEY = VALUE` lines).
fn config_with(redis: &Redis, max: u32, params: &str) -> String {
    format!(
        r#"tick_seconds = 0.5

[[deployment]]
name = "burst"
image = "debian"
weights = "burst-weights"
weights_files = ["model.safetensors"]
command = ["/bin/sh", "-c", "/usr/local/bin/thaw weights get \"$THAW_WEIGHTS_IMAGE\" \"$THAW_WEIGHTS_FILES\" --checksums > /dev/null && sleep 2"]
policy = "thaw-depth"
max_replicas = {max}
cold_start_seconds = 2
stop_grace_seconds = 5

[deployment.params]
keep_warm = 3
scale_down_delay = 1
predictive = 0
{params}

[deployment.source]
redis = "{}"
queue = "jobs"
"#,
        redis.url()
    )
}

/// Builds a small safetensors file into `store` as `burst-weights`, once per test
/// process: the tests share the store, and a second build (new file times, so a new
/// image id) would move the tag under a daemon already running with the first.
fn weights_image(store: &Path, dir: &Path) {
    static BUILT: std::sync::Once = std::sync::Once::new();
    BUILT.call_once(|| build_weights_image(store, dir));
}

fn build_weights_image(store: &Path, dir: &Path) {
    let data: Vec<u8> = (0..(1u32 << 20))
        .map(|i| (i.wrapping_mul(40_503) >> 7) as u8)
        .collect();
    let header = format!(
        r#"{{"w":{{"dtype":"U8","shape":[{n}],"data_offsets":[0,{n}]}}}}"#,
        n = data.len()
    );
    let src = dir.join("weights-src");
    std::fs::create_dir_all(&src).unwrap();
    let mut f = (header.len() as u64).to_le_bytes().to_vec();
    f.extend_from_slice(header.as_bytes());
    f.extend_from_slice(&data);
    std::fs::write(src.join("model.safetensors"), f).unwrap();
    common::thaw(
        store,
        &["build", src.to_str().unwrap(), "--tag", "burst-weights"],
    );
}

/// The daemon's flags for resident weights and their socket, under `dir`.
fn weights_flags(dir: &Path) -> [String; 4] {
    [
        "--resident-weights".into(),
        "268435456".into(),
        "--weights-socket".into(),
        dir.join("weights.sock").display().to_string(),
    ]
}

fn status(daemon: &Daemon) -> DeploymentStatus {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let all = rt.block_on(daemon.client().autoscale()).unwrap();
    assert_eq!(all.len(), 1, "{all:?}");
    all.into_iter().next().unwrap()
}

/// Polls until `done` holds, or fails after `secs` seconds with the last status.
fn wait_for(
    daemon: &Daemon,
    secs: u64,
    what: &str,
    done: impl Fn(&DeploymentStatus) -> bool,
) -> DeploymentStatus {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        let s = status(daemon);
        if done(&s) {
            return s;
        }
        assert!(
            Instant::now() < deadline,
            "waiting for {what}: {s:?}\n{}",
            daemon.log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn ready(test: &str) -> Option<&'static Path> {
    if !have("redis-server") || !have("redis-cli") || !have("runc") {
        skip(
            test,
            "needs redis-server, redis-cli and runc (scripts/test.sh installs them)",
        );
        return None;
    }
    debian_store(test)
}

/// One test's node: Redis, the weights image, the daemon's directory and its config.
struct Scene {
    node: Node,
    redis: Redis,
    store: &'static Path,
    cfg: std::path::PathBuf,
    dir: std::path::PathBuf,
}

impl Scene {
    /// Sets the scene over `store`, with the config `config` makes for its Redis.
    fn new(store: &'static Path, config: impl Fn(&Redis) -> String) -> Scene {
        let node = Node::new(store);
        let redis = Redis::start(node.tmp.path());
        let cfg = node.tmp.path().join("autoscale.toml");
        std::fs::write(&cfg, config(&redis)).unwrap();
        let dir = node.tmp.path().join("daemon");
        std::fs::create_dir_all(&dir).unwrap();
        weights_image(store, node.tmp.path());
        Scene {
            node,
            redis,
            store,
            cfg,
            dir,
        }
    }

    /// Starts `thaw autoscale run` with resident weights and more environment `env`.
    fn daemon(&self, env: &[(&str, &str)]) -> Daemon {
        let flags = weights_flags(&self.dir);
        let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
        let run_dir = self.node.tmp.path().join("run");
        let mut env = env.to_vec();
        env.push(("THAW_RUN_DIR", run_dir.to_str().unwrap()));
        let store = self.store.to_str().unwrap();
        Daemon::autoscale_with(&self.dir, store, &self.cfg, &flags, &env)
    }
}

#[test]
fn a_burst_scales_from_zero_to_max_and_back_with_every_task_done_once() {
    let test = "a_burst_scales_from_zero_to_max_and_back_with_every_task_done_once";
    let Some(store) = ready(test) else { return };
    let scene = Scene::new(store, |redis| config(redis, 4));
    let (node, redis, dir) = (&scene.node, &scene.redis, &scene.dir);
    let daemon = scene.daemon(&[]);
    let idle = wait_for(&daemon, 20, "the first decision", |s| s.decisions > 0);
    assert_eq!(
        (idle.desired, idle.ready, idle.starts),
        (0, 0, 0),
        "nothing runs before work"
    );

    let tasks: Vec<String> = (0..12).map(|i| format!("task-{i}")).collect();
    for t in &tasks {
        redis.cli(&["LPUSH", "jobs", t]);
    }
    let busy = wait_for(&daemon, 60, "four ready replicas", |s| s.ready == 4);
    assert_eq!(busy.peak_replicas, 4, "never above max_replicas");
    // Kill one replica in the middle of its task.
    let victim = busy_replica(redis, &daemon);
    let drained = wait_for(&daemon, 120, "every task done and back to zero", |s| {
        s.completed >= 12 && s.ready + s.starting + s.draining == 0 && s.desired == 0
    });

    let mut done: Vec<String> = redis
        .cli(&["LRANGE", "jobs:done", "0", "-1"])
        .lines()
        .map(str::to_string)
        .collect();
    done.sort();
    let mut want = tasks.clone();
    want.sort();
    // The killed replica's task was requeued and done by another: at least once, and
    // here exactly once, since the victim never reached its `done`.
    assert_eq!(done, want, "every task done exactly once");
    assert_eq!(redis.cli(&["LLEN", "jobs"]), "0");
    assert!(
        redis.cli(&["KEYS", "jobs:processing:*"]).is_empty(),
        "no task left on a processing list"
    );
    assert_eq!(
        drained.requeued, 1,
        "the killed replica's task went back: {drained:?} ({victim})"
    );
    assert_eq!(drained.crashes, 1, "{drained:?}");
    assert!(drained.starts >= 5, "four, then a replacement: {drained:?}");
    assert_eq!(
        drained.prewarms, drained.starts,
        "a prewarm before every start: {drained:?}"
    );
    assert!(
        !drained.start_seconds.is_empty()
            && drained.start_seconds.iter().all(|&s| s > 0.0 && s < 60.0),
        "{drained:?}"
    );
    // Scale-down drained: no replica but the victim was stopped in the middle of a task;
    // and every task got the resident weights through the socket in its container.
    assert_eq!(redis.cli(&["LLEN", "jobs:failed"]), "0");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let metrics = rt.block_on(daemon.metrics());
    assert!(
        metrics.contains("thaw_autoscale_desired_replicas{deployment=\"burst\"} 0"),
        "{metrics}"
    );
    assert!(
        metrics.contains("thaw_weights_resident_models 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains(&format!(
            "thaw_autoscale_starts_total{{deployment=\"burst\"}} {}",
            drained.starts
        )),
        "{metrics}"
    );
    daemon.stop();
    // The policy's idle-time histogram outlives the daemon, for the next one.
    let saved = std::fs::read(dir.join("state/autoscale/burst.json")).unwrap();
    let state: serde_json::Value = serde_json::from_slice(&saved).unwrap();
    assert!(
        state["counts"].as_array().is_some_and(|c| !c.is_empty()),
        "{state}"
    );
    node.assert_clean("after the daemon stopped");

    // A replica of a daemon that died holds a task on its processing list, and its
    // heartbeat (the ready key) is gone: the next daemon requeues the task at start, and
    // takes the learned histogram back.
    redis.cli(&["LPUSH", "jobs:processing:ghost-1", "task-orphan"]);
    let daemon = scene.daemon(&[("RUST_LOG", "warn,thaw_server::autoscale=info")]);
    let after = wait_for(
        &daemon,
        90,
        "the orphaned task done and back to zero",
        |s| s.completed >= 1 && s.ready + s.starting + s.draining == 0 && s.desired == 0,
    );
    assert_eq!(after.requeued, 1, "{after:?}");
    let done = redis.cli(&["LRANGE", "jobs:done", "0", "-1"]);
    assert_eq!(
        done.lines().filter(|t| *t == "task-orphan").count(),
        1,
        "{done}"
    );
    assert!(
        daemon
            .log()
            .contains("restored the autoscaler's learned state"),
        "{}",
        daemon.log()
    );
    daemon.stop();
    node.assert_clean("after the second daemon stopped");
}

/// Waits until some replica holds a task, kills its container's init (SIGKILL), and
/// returns the replica's name.
fn busy_replica(redis: &Redis, daemon: &Daemon) -> String {
    let deadline = Instant::now() + Duration::from_secs(30);
    let name = loop {
        let keys = redis.cli(&["KEYS", "jobs:processing:*"]);
        if let Some(k) = keys.lines().find(|k| redis.cli(&["LLEN", k]) == "1") {
            break k.trim_start_matches("jobs:processing:").to_string();
        }
        assert!(
            Instant::now() < deadline,
            "no replica took a task; failed: {}\n{}",
            redis.cli(&["LRANGE", "jobs:failed", "0", "-1"]),
            daemon.log()
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let containers = rt.block_on(daemon.client().containers()).unwrap();
    let c = containers.iter().find(|c| c.name == name).unwrap();
    let pid = i32::try_from(c.pid.unwrap()).unwrap();
    // SAFETY: kill(2) with a pid the daemon reported and a valid signal.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGKILL) }, 0);
    name
}

/// The daemon's containers: (name, id), sorted.
fn containers(daemon: &Daemon) -> Vec<(String, String)> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let mut all: Vec<_> = rt
        .block_on(daemon.client().containers())
        .unwrap()
        .into_iter()
        .filter(|c| c.state == "running")
        .map(|c| (c.name, c.id))
        .collect();
    all.sort();
    all
}

#[test]
fn a_killed_daemon_s_successor_adopts_its_container_replicas() {
    let test = "a_killed_daemon_s_successor_adopts_its_container_replicas";
    let Some(store) = ready(test) else { return };
    // Two replicas even when idle, so that they run when the daemon dies.
    let scene = Scene::new(store, |redis| config_with(redis, 3, "min_replicas = 2"));
    let (node, redis, dir) = (&scene.node, &scene.redis, &scene.dir);
    let daemon = scene.daemon(&[]);
    wait_for(&daemon, 60, "two ready replicas", |s| s.ready == 2);
    let before = containers(&daemon);
    assert_eq!(before.len(), 2, "{before:?}");
    daemon.kill9();

    let daemon = scene.daemon(&[]);
    let adopted = wait_for(&daemon, 30, "the replicas adopted", |s| s.decisions > 0);
    assert_eq!(
        (adopted.adopted, adopted.starts),
        (2, 0),
        "adopted, not started again: {adopted:?}"
    );
    assert_eq!(containers(&daemon), before, "the same containers");
    // They work for the new daemon: their roots are served again, and each task gets
    // the resident weights through the new daemon's socket.
    let tasks: Vec<String> = (0..6).map(|i| format!("task-{i}")).collect();
    for t in &tasks {
        redis.cli(&["LPUSH", "jobs", t]);
    }
    let done = wait_for(&daemon, 120, "every task done", |s| s.completed >= 6);
    let mut finished: Vec<String> = redis
        .cli(&["LRANGE", "jobs:done", "0", "-1"])
        .lines()
        .map(str::to_string)
        .collect();
    finished.sort();
    assert_eq!(
        finished,
        tasks,
        "every task done exactly once: {done:?} failed {}\n{}",
        redis.cli(&["LRANGE", "jobs:failed", "0", "-1"]),
        replica_logs(dir)
    );
    assert_eq!(redis.cli(&["LLEN", "jobs:failed"]), "0");
    assert_eq!(done.crashes, 0, "{done:?}");
    daemon.stop();
    node.assert_clean("after the second daemon stopped");
}

/// The end of every container's log under the daemon's state directory `dir`.
fn replica_logs(dir: &Path) -> String {
    let containers = std::fs::read_dir(dir.join("state/containers"))
        .into_iter()
        .flatten();
    containers
        .flatten()
        .filter_map(|e| std::fs::read_to_string(e.path().join("container.log")).ok())
        .map(|log| {
            let lines: Vec<&str> = log.lines().collect();
            lines[lines.len().saturating_sub(20)..].join("\n")
        })
        .collect::<Vec<_>>()
        .join("\n--\n")
}
