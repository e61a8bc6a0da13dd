//! Replicas as plain processes on the node (the fallback when a replica needs no image of
//! its own, or runs under another supervisor's container tooling): each the deployment's
//! command in its own process group, its output appended to a log, recorded in
//! `STATE/autoscale/DEPLOYMENT.replicas.json` with its start time, so that a daemon that
//! restarts adopts the replicas still running rather than starting them again.

use super::actuator::{replica_env, Actuator, Handle, ReplicaSpec};
use async_trait::async_trait;
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::PathBuf;
use thaw_core::ImageId;
use tokio::process::Child;

/// One running replica, as kept on disk.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Record {
    name: String,
    slot: u32,
    gpus: Option<String>,
    port: Option<u16>,
    pid: u32,
    /// The process's start time (clock ticks since boot, `/proc/PID/stat` field 22):
    /// with the pid, it names the process even after the pid is reused.
    started: u64,
}

/// Replicas as processes of the node.
#[derive(Debug)]
pub(super) struct ProcessActuator {
    deployment: String,
    /// More environment for every replica (where its resident weights are).
    env: Vec<(String, String)>,
    records_path: PathBuf,
    logs: PathBuf,
    children: Mutex<BTreeMap<String, Child>>,
    records: Mutex<BTreeMap<String, Record>>,
}

impl ProcessActuator {
    /// An actuator keeping its records and logs under `state_dir/autoscale`.
    pub(super) fn new(
        deployment: &str,
        state_dir: &std::path::Path,
        env: Vec<(String, String)>,
    ) -> Self {
        let dir = state_dir.join("autoscale");
        ProcessActuator {
            deployment: deployment.to_owned(),
            env,
            records_path: dir.join(format!("{deployment}.replicas.json")),
            logs: dir.join("logs"),
            children: Mutex::new(BTreeMap::new()),
            records: Mutex::new(BTreeMap::new()),
        }
    }

    fn save(&self) {
        super::persist::save_records(&self.records_path, &self.records);
    }

    fn load(&self) -> Vec<Record> {
        super::persist::load_records(&self.records_path)
    }

    fn open_log(&self, name: &str) -> std::io::Result<std::fs::File> {
        std::fs::create_dir_all(&self.logs)?;
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.logs.join(format!("{name}.log")))
    }
}

/// A process's start time, `None` when it is gone or a zombie.
fn start_ticks(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may hold spaces and parentheses: split after its end.
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split(' ').collect();
    if fields.first() == Some(&"Z") {
        return None;
    }
    fields.get(19)?.parse().ok()
}

#[async_trait]
impl Actuator for ProcessActuator {
    fn kind(&self) -> &'static str {
        "process"
    }

    async fn start(
        &self,
        spec: &ReplicaSpec,
        _image: Option<ImageId>,
        command: Vec<String>,
    ) -> Result<Handle, String> {
        let (program, args) = command.split_first().ok_or("no command to run")?;
        let log = self
            .open_log(&spec.name)
            .map_err(|e| format!("opening its log: {e}"))?;
        let err_log = log
            .try_clone()
            .map_err(|e| format!("opening its log: {e}"))?;
        let child = tokio::process::Command::new(program)
            .args(args)
            .envs(replica_env(&self.deployment, spec))
            .envs(self.env.iter().cloned())
            .stdin(std::process::Stdio::null())
            .stdout(log)
            .stderr(err_log)
            // Its own group: stopped as a whole, untouched by the daemon's terminal.
            .process_group(0)
            .spawn()
            .map_err(|e| format!("starting {program}: {e}"))?;
        let pid = child.id().ok_or("the replica exited at once")?;
        let record = Record {
            name: spec.name.clone(),
            slot: spec.slot,
            gpus: spec.gpus.clone(),
            port: spec.port,
            pid,
            started: start_ticks(pid).unwrap_or(0),
        };
        self.children.lock().insert(spec.name.clone(), child);
        self.records.lock().insert(spec.name.clone(), record);
        self.save();
        Ok(Handle {
            id: pid.to_string(),
            pid: Some(pid),
        })
    }

    fn exited(&self, handle: &Handle) -> bool {
        let Some(pid) = handle.pid else { return true };
        let mut children = self.children.lock();
        if let Some((_, child)) = children.iter_mut().find(|(_, c)| c.id() == Some(pid)) {
            return !matches!(child.try_wait(), Ok(None));
        }
        // Adopted: not this daemon's child, so known by pid and start time.
        let records = self.records.lock();
        let started = records.values().find(|r| r.pid == pid).map(|r| r.started);
        started.is_none() || start_ticks(pid) != started
    }

    async fn stop(&self, handle: &Handle, grace: f64) {
        let Some(pid) = handle.pid else { return };
        let group = rustix::process::Pid::from_raw(i32::try_from(pid).unwrap_or(0));
        if let Some(group) = group.filter(|_| !self.exited(handle)) {
            let _ = rustix::process::kill_process_group(group, rustix::process::Signal::TERM);
            let deadline = tokio::time::Instant::now()
                + std::time::Duration::from_secs_f64(grace.clamp(0.0, 3600.0));
            while !self.exited(handle) && tokio::time::Instant::now() < deadline {
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            }
            let _ = rustix::process::kill_process_group(group, rustix::process::Signal::KILL);
        }
        let name = self
            .records
            .lock()
            .iter()
            .find(|(_, r)| r.pid == pid)
            .map(|(n, _)| n.clone());
        if let Some(name) = name {
            let child = self.children.lock().remove(&name);
            if let Some(mut child) = child {
                let _ = child.wait().await;
            }
            self.records.lock().remove(&name);
            self.save();
        }
    }

    fn outlives_daemon(&self) -> bool {
        true
    }

    async fn adopt(&self) -> Vec<(ReplicaSpec, Handle)> {
        let alive: Vec<Record> = self
            .load()
            .into_iter()
            .filter(|r| r.started != 0 && start_ticks(r.pid) == Some(r.started))
            .collect();
        let mut records = self.records.lock();
        for r in &alive {
            records.insert(r.name.clone(), r.clone());
        }
        drop(records);
        self.save();
        alive
            .into_iter()
            .map(|r| {
                let handle = Handle {
                    id: r.pid.to_string(),
                    pid: Some(r.pid),
                };
                let spec = ReplicaSpec {
                    name: r.name,
                    slot: r.slot,
                    gpus: r.gpus,
                    port: r.port,
                };
                (spec, handle)
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::Ordering::Relaxed;

    fn spec(name: &str) -> ReplicaSpec {
        ReplicaSpec {
            name: name.into(),
            slot: 3,
            gpus: Some("6,7".into()),
            port: Some(18103),
        }
    }

    #[test]
    fn saves_racing_from_many_threads_leave_the_latest_records_whole() {
        // Replicas start and stop concurrently, each saving the records: every file a
        // reader finds must parse (CI once read one with another save's tail), and the
        // last must hold the latest records.
        let dir = tempfile::tempdir().unwrap();
        let a = ProcessActuator::new("web", dir.path(), Vec::new());
        let writing = std::sync::atomic::AtomicUsize::new(4);
        let torn = std::thread::scope(|s| {
            for t in 0..4u32 {
                let (a, writing) = (&a, &writing);
                s.spawn(move || {
                    for i in 0..300u32 {
                        let name = format!("web-{t}-{}", i % 7);
                        if i % 3 == 2 {
                            a.records.lock().remove(&name);
                        } else {
                            a.records
                                .lock()
                                .insert(name.clone(), record(&name, t * 1000 + i));
                        }
                        a.save();
                    }
                    writing.fetch_sub(1, Relaxed);
                });
            }
            let mut torn = 0;
            while writing.load(Relaxed) > 0 {
                if let Ok(text) = std::fs::read(&a.records_path) {
                    torn += usize::from(serde_json::from_slice::<Vec<Record>>(&text).is_err());
                }
            }
            torn
        });
        assert_eq!(torn, 0, "records read half-written");
        assert_eq!(
            a.load(),
            a.records.lock().values().cloned().collect::<Vec<_>>()
        );
    }

    fn record(name: &str, slot: u32) -> Record {
        Record {
            name: name.into(),
            slot,
            gpus: None,
            port: None,
            pid: 1,
            started: 0,
        }
    }

    #[tokio::test]
    async fn a_process_replica_runs_stops_and_is_adopted_by_the_next_actuator() {
        let dir = tempfile::tempdir().unwrap();
        let first = ProcessActuator::new("web", dir.path(), Vec::new());
        let command = [
            "/bin/sh",
            "-c",
            "echo $THAW_REPLICA $CUDA_VISIBLE_DEVICES $THAW_PORT; exec sleep 600",
        ];
        let h = first
            .start(&spec("web-1"), None, command.map(String::from).to_vec())
            .await
            .unwrap();
        assert!(!first.exited(&h));
        let log_path = dir.path().join("autoscale/logs/web-1.log");
        let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
        while std::fs::read_to_string(&log_path).unwrap().is_empty()
            && tokio::time::Instant::now() < deadline
        {
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        // A new daemon (this actuator's successor) finds it running, with its slot.
        let second = ProcessActuator::new("web", dir.path(), Vec::new());
        let adopted = second.adopt().await;
        assert_eq!(adopted, vec![(spec("web-1"), h.clone())]);
        assert!(!second.exited(&h));
        second.stop(&h, 5.0).await;
        assert!(second.exited(&h));
        // Reaped by its parent (the first actuator here), then gone for good.
        assert!(first.exited(&h));
        assert!(ProcessActuator::new("web", dir.path(), Vec::new())
            .adopt()
            .await
            .is_empty());
        let log = std::fs::read_to_string(&log_path).unwrap();
        assert_eq!(log, "web-1 6,7 18103\n");
    }

    #[tokio::test]
    async fn a_dead_or_reused_pid_is_not_adopted() {
        let dir = tempfile::tempdir().unwrap();
        let a = ProcessActuator::new("web", dir.path(), Vec::new());
        let h = a
            .start(&spec("web-1"), None, vec!["/bin/true".into()])
            .await
            .unwrap();
        let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
        while !a.exited(&h) && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        assert!(a.exited(&h));
        assert!(ProcessActuator::new("web", dir.path(), Vec::new())
            .adopt()
            .await
            .is_empty());
        // A record naming a live pid (this test's) with another start time: pid reuse.
        let me = std::process::id();
        let wrong = Record {
            name: "web-2".into(),
            slot: 0,
            gpus: None,
            port: None,
            pid: me,
            started: start_ticks(me).unwrap() + 1,
        };
        std::fs::write(&a.records_path, serde_json::to_vec(&[wrong]).unwrap()).unwrap();
        assert!(ProcessActuator::new("web", dir.path(), Vec::new())
            .adopt()
            .await
            .is_empty());
        std::fs::write(&a.records_path, b"{not json").unwrap();
        assert!(ProcessActuator::new("web", dir.path(), Vec::new())
            .adopt()
            .await
            .is_empty());
    }
}
