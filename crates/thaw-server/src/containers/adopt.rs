//! Containers a dead (or stopped) daemon left running: their roots' FUSE connections were
//! kept by holder processes, so the next daemon serves each root again from the shared
//! reader and owns the container as if it had started it, except that it is not the
//! init's parent: it learns of the exit through a pidfd, without the exit status.

use super::{finish, ContainerEntry, Containers, State};
use crate::Node;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::Arc;
use thaw_core::ImageId;
use thaw_fuse::registry::MountRecord;
use thaw_fuse::session::{Image, MountSession};
use thaw_fuse::{FsConfig, MountOptions};
use thaw_run::ContainerRecord;

/// The exit code recorded for an adopted container: the daemon is not its init's parent,
/// so the real status went to whoever reaped it.
pub const UNKNOWN_EXIT: i32 = -1;

impl Containers {
    /// Adopts every container a dead predecessor left running whose root's connection a
    /// holder kept, and cleans up after the rest (and after held mounts no container
    /// claims). Run once at start, before anything starts containers. Returns how many
    /// were adopted.
    pub async fn adopt_orphans(self: &Arc<Self>, node: &Node) -> usize {
        let mut adopted = 0;
        for record in self.settings.records.dead() {
            match self.adopt_one(node, &record).await {
                Ok(entry) => {
                    adopted += 1;
                    tracing::info!(container = %entry.id, name = %entry.name, "adopted a running container from a dead daemon");
                }
                Err(why) => {
                    tracing::info!(container = %record.id, why, "not adopted: cleaning up");
                    self.clean_orphan(&record);
                }
            }
        }
        let ours = self.settings.api_address.as_deref();
        for m in self.settings.mounts.clean_orphans(ours) {
            tracing::info!(mount = %m.id, mountpoint = %m.mountpoint.display(), "cleaned up a held mount no container claims");
        }
        adopted
    }

    /// Whether containers can outlive this daemon (their roots' connections are held).
    pub fn outlive_daemon(&self) -> bool {
        self.settings.holder.is_some()
    }

    /// Marks a running container to be left running when the daemon stops (its root
    /// stays mounted, held for the next daemon); false if it cannot outlive the daemon.
    pub async fn leave(&self, key: &str) -> bool {
        let Ok(c) = self.get(key) else {
            return false;
        };
        let held = c
            .session
            .lock()
            .await
            .as_ref()
            .is_some_and(|s| s.record().holder.is_some());
        if held {
            c.left.store(true, Relaxed);
        }
        held
    }

    async fn adopt_one(
        self: &Arc<Self>,
        node: &Node,
        record: &ContainerRecord,
    ) -> Result<Arc<ContainerEntry>, String> {
        let mount = self
            .settings
            .mounts
            .list()
            .into_iter()
            .find(|m| m.id == record.id && m.adoptable())
            .ok_or("no holder kept its root's connection")?;
        let runtime = record.runtime().map_err(|e| e.to_string())?;
        let pid = runtime
            .running_pid(&record.id)
            .map_err(|e| e.to_string())?
            .ok_or("the runtime says it is not running")?;
        let image: ImageId = record.image.parse().map_err(|e| format!("{e}"))?;
        let manifest = node.manifest(&image).await.map_err(|e| e.message)?;
        let stop_signal = super::stop_signal(
            manifest
                .config
                .as_ref()
                .and_then(|c| c.stop_signal.as_deref()),
        );
        let session = self
            .adopt_mount(
                node,
                Image {
                    id: image,
                    manifest,
                },
                mount,
            )
            .await?;
        self.settings
            .records
            .write(&record.owned_here())
            .map_err(|e| e.to_string())?;
        let entry = Arc::new(ContainerEntry {
            id: record.id.clone(),
            name: record.name.clone(),
            image,
            runtime,
            dir: record.dir.clone(),
            created: record.created,
            start_seconds: 0.0,
            stop_signal,
            state: tokio::sync::watch::Sender::new(State::Running { pid }),
            session: tokio::sync::Mutex::new(Some(session)),
            left: AtomicBool::new(false),
        });
        self.live.lock().insert(entry.id.clone(), entry.clone());
        tokio::spawn(wait_adopted(entry.clone(), pid));
        Ok(entry)
    }

    async fn adopt_mount(
        &self,
        node: &Node,
        image: Image,
        mount: MountRecord,
    ) -> Result<MountSession, String> {
        let options = MountOptions {
            writable: mount.upper.clone(),
            holder: self.settings.holder.clone(),
            ..Default::default()
        };
        MountSession::adopt(
            node.reader.clone(),
            image,
            mount,
            FsConfig::default(),
            options,
            self.settings.mounts.clone(),
        )
        .await
        .map_err(|e| e.to_string())
    }

    /// Removes what a dead daemon's container left: the runtime's container, its held
    /// mount (stopping the holder), its directory and its record.
    fn clean_orphan(&self, record: &ContainerRecord) {
        if let Ok(rt) = record.runtime() {
            if let Err(e) = rt.delete(&record.id) {
                tracing::warn!(container = %record.id, error = %e, "a dead daemon's container stays");
            }
        }
        for m in self.settings.mounts.list() {
            if m.id == record.id && !m.owner.is_alive() {
                thaw_fuse::registry::clean_up(&m);
                self.settings.mounts.remove(&m.mountpoint);
            }
        }
        if let Err(e) = thaw_run::record::remove_container_dir(&record.dir) {
            tracing::warn!(dir = %record.dir.display(), error = %e, "a dead daemon's container directory stays");
        }
        self.settings.records.remove(&record.id);
    }
}

/// Waits for an adopted container's init (not this process's child) to exit, through a
/// pidfd, then cleans up as for a container this daemon started.
async fn wait_adopted(c: Arc<ContainerEntry>, pid: u32) {
    let waited = tokio::task::spawn_blocking(move || wait_pid_exit(pid)).await;
    if let Ok(Err(e)) = waited {
        tracing::warn!(container = %c.id, error = %e, "lost track of an adopted container's init");
    }
    finish(c, UNKNOWN_EXIT).await;
}

/// Blocks until process `pid` exits (at once if it is gone).
fn wait_pid_exit(pid: u32) -> std::io::Result<()> {
    use rustix::event::{poll, PollFd, PollFlags};
    use rustix::process::{pidfd_open, Pid, PidfdFlags};
    let Some(pid) = i32::try_from(pid).ok().and_then(Pid::from_raw) else {
        return Ok(());
    };
    let pidfd = match pidfd_open(pid, PidfdFlags::empty()) {
        Ok(fd) => fd,
        Err(rustix::io::Errno::SRCH) => return Ok(()),
        Err(e) => return Err(e.into()),
    };
    loop {
        let mut fds = [PollFd::new(&pidfd, PollFlags::IN)];
        match poll(&mut fds, None) {
            Ok(_) if fds[0].revents().intersects(PollFlags::IN | PollFlags::HUP) => return Ok(()),
            Ok(_) | Err(rustix::io::Errno::INTR) => {}
            Err(e) => return Err(e.into()),
        }
    }
}
