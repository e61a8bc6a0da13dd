//! Containers the daemon owns (`thaw run --detach`): each mounted through the node's one
//! shared reader with a writable overlay of its own, run under runc or crun with its
//! output and errors in a log file, waited for by the daemon (a child subreaper), and
//! recorded in the node's container records. A holder process keeps each root's FUSE
//! connection, so a container outlives a killed daemon and the next one adopts it
//! (`adopt`); what cannot be adopted is removed by the next daemon, `thaw run` or
//! `thaw umount`. An exited container keeps its directory (its log, its writes) until it
//! is removed.

use crate::container_request::{check_request, run_request, stop_signal};
use crate::error::ApiError;
use parking_lot::Mutex;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};
use thaw_api::api::{self, ErrorCode};
use thaw_core::{ImageId, Manifest};
use thaw_fuse::session::{Image, MountSession, SessionSpec};
use thaw_fuse::{FsConfig, MountOptions};
use thaw_run::{ContainerRecord, ContainerRegistry, RunRequest, Runtime};
use thaw_store::ChunkReader;

mod adopt;
mod life;
use life::{create_and_start, finish, wait_then_clean};

/// Cleans up after containers whose owner died (`ContainerRegistry::clean_dead`), except
/// those whose roots a holder keeps for the owner's successor to adopt; returns the
/// records cleaned.
pub fn clean_dead_unheld(
    records: &ContainerRegistry,
    mounts: &thaw_fuse::registry::MountRegistry,
) -> Vec<ContainerRecord> {
    let held = mounts.adoptable_ids();
    records.clean_dead(
        |r| held.contains(&r.id),
        || {
            mounts.clean_dead();
        },
    )
}

/// Containers one daemon owns at most (running or exited, until removed).
pub const MAX_CONTAINERS: usize = 256;
/// The most of a container's log `GET .../logs` returns: its end.
pub const MAX_LOG_BYTES: u64 = 1 << 20;

/// Where and how containers are made.
#[derive(Debug, Clone)]
pub struct ContainerSettings {
    /// Containers' directories (bundle, overlay, log), mode 0700.
    pub dir: PathBuf,
    /// The runtimes' state roots.
    pub runtime_root: PathBuf,
    /// The node's container records.
    pub records: ContainerRegistry,
    /// The node's mount records.
    pub mounts: thaw_fuse::registry::MountRegistry,
    /// This daemon's API address, for the mount records.
    pub api_address: Option<String>,
    /// How to start a holder of each container root's FUSE connection, so that the
    /// containers outlive the daemon and the next one adopts them (see `adopt`).
    pub holder: Option<thaw_fuse::takeover::HolderCommand>,
}

/// What a container is doing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Running { pid: u32 },
    Exited { code: i32 },
}

/// One container.
#[derive(Debug)]
pub struct ContainerEntry {
    id: String,
    name: String,
    image: ImageId,
    runtime: Runtime,
    dir: PathBuf,
    created: u64,
    start_seconds: f64,
    stop_signal: i32,
    state: tokio::sync::watch::Sender<State>,
    session: tokio::sync::Mutex<Option<MountSession>>,
    /// Left running for the next daemon at shutdown (see [`Containers::leave`]).
    left: std::sync::atomic::AtomicBool,
}

impl ContainerEntry {
    /// The container as the API shows it.
    pub fn view(&self) -> api::Container {
        let state = *self.state.borrow();
        let (state, pid, exit_code) = match state {
            State::Running { pid } => ("running", Some(pid), None),
            State::Exited { code } => ("exited", None, Some(code)),
        };
        api::Container {
            id: self.id.clone(),
            name: self.name.clone(),
            image: self.image.to_string(),
            runtime: self.runtime.name().to_string(),
            state: state.into(),
            pid,
            exit_code,
            created: self.created,
            start_seconds: self.start_seconds,
        }
    }

    fn log(&self) -> PathBuf {
        self.dir.join("container.log")
    }
}

/// The containers one daemon owns.
#[derive(Debug)]
pub struct Containers {
    settings: ContainerSettings,
    live: Mutex<BTreeMap<String, Arc<ContainerEntry>>>,
}

fn internal(what: &str) -> impl Fn(thaw_run::RunError) -> ApiError + '_ {
    move |e| match e {
        thaw_run::RunError::Io { .. }
        | thaw_run::RunError::Runtime { .. }
        | thaw_run::RunError::Spec(_) => ApiError::new(ErrorCode::Internal, format!("{what}: {e}")),
        other => ApiError::invalid(other.to_string()),
    }
}

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// What `create` has made so far, removed in reverse order if a later step fails.
struct Partial<'a> {
    settings: &'a ContainerSettings,
    id: String,
    dir: PathBuf,
    runtime: Runtime,
    session: Option<MountSession>,
    created: bool,
}

impl Partial<'_> {
    async fn undo(mut self) {
        if self.created {
            let _ = self.runtime.delete(&self.id);
        }
        if let Some(s) = self.session.take() {
            let _ = s.end().await;
        }
        let _ = thaw_run::record::remove_container_dir(&self.dir);
        self.settings.records.remove(&self.id);
    }
}

impl Containers {
    /// Opens the container table: this process becomes a subreaper (so it can wait for
    /// containers' inits), and what dead owners left is removed.
    pub fn open(settings: ContainerSettings) -> std::io::Result<Self> {
        crate::confine::prepare_root(&settings.dir)?;
        thaw_run::process::become_subreaper().map_err(std::io::Error::other)?;
        // Those whose roots a holder keeps are adopted (or cleaned up) by `adopt_orphans`.
        for r in clean_dead_unheld(&settings.records, &settings.mounts) {
            tracing::info!(container = %r.id, "cleaned up after a dead owner");
        }
        Ok(Containers {
            settings,
            live: Mutex::default(),
        })
    }

    /// Every container, running or exited.
    pub fn list(&self) -> Vec<Arc<ContainerEntry>> {
        self.live.lock().values().cloned().collect()
    }

    /// A container by id or name.
    pub fn get(&self, key: &str) -> Result<Arc<ContainerEntry>, ApiError> {
        let live = self.live.lock();
        live.get(key)
            .or_else(|| live.values().find(|c| c.name == key))
            .cloned()
            .ok_or_else(|| ApiError::not_found(format!("no container {key:?}")))
    }

    fn reserve(&self, name: &str) -> Result<(), ApiError> {
        let live = self.live.lock();
        if live.len() >= MAX_CONTAINERS {
            return Err(ApiError::new(
                ErrorCode::TooManyRequests,
                format!("this daemon already owns {MAX_CONTAINERS} containers"),
            ));
        }
        if live.values().any(|c| c.name == name) {
            return Err(ApiError::new(
                ErrorCode::Conflict,
                format!("a container is named {name:?}: remove it first"),
            ));
        }
        Ok(())
    }

    /// Starts a container from `image` through `reader`; returns once it runs.
    pub async fn create(
        self: &Arc<Self>,
        manifest: Arc<Manifest>,
        reader: &Arc<ChunkReader>,
        image: ImageId,
        req: &api::ContainerRequest,
    ) -> Result<Arc<ContainerEntry>, ApiError> {
        let begin = Instant::now();
        check_request(req)?;
        let id = format!("{:016x}", rand::random::<u64>());
        let name = req.name.clone().unwrap_or_else(|| id[..12].to_string());
        self.reserve(&name)?;
        let request = run_request(req, &name)?;
        let runtime = Runtime::find(
            req.runtime.as_deref().unwrap_or("runc"),
            &self.settings.runtime_root,
        )
        .map_err(|e| ApiError::invalid(e.to_string()))?;
        let dir = self.settings.dir.join(&id);
        std::fs::create_dir(&dir)
            .map_err(|e| ApiError::internal(format!("creating {}: {e}", dir.display())))?;
        let record = ContainerRecord::new(&id, &name, &image.to_string(), &runtime, &dir);
        self.settings
            .records
            .write(&record)
            .map_err(internal("recording the container"))?;
        let mut partial = Partial {
            settings: &self.settings,
            id,
            dir,
            runtime,
            session: None,
            created: false,
        };
        let stop = stop_signal(
            manifest
                .config
                .as_ref()
                .and_then(|c| c.stop_signal.as_deref()),
        );
        match self
            .start(&mut partial, manifest, reader, image, &request)
            .await
        {
            Ok(pid) => {
                let entry = Arc::new(ContainerEntry {
                    id: partial.id.clone(),
                    name,
                    image,
                    runtime: partial.runtime.clone(),
                    dir: partial.dir.clone(),
                    created: unix_now(),
                    start_seconds: begin.elapsed().as_secs_f64(),
                    stop_signal: stop,
                    state: tokio::sync::watch::Sender::new(State::Running {
                        pid: pid.as_raw_nonzero().get().unsigned_abs(),
                    }),
                    session: tokio::sync::Mutex::new(partial.session.take()),
                    left: std::sync::atomic::AtomicBool::new(false),
                });
                self.live.lock().insert(entry.id.clone(), entry.clone());
                tokio::spawn(wait_then_clean(entry.clone(), pid));
                tracing::info!(container = %entry.id, name = %entry.name, image = %image, "started");
                Ok(entry)
            }
            Err(e) => {
                partial.undo().await;
                Err(e)
            }
        }
    }
}

impl Containers {
    /// Mounts, writes the bundle, creates and starts; returns the init's pid.
    async fn start(
        &self,
        p: &mut Partial<'_>,
        manifest: Arc<Manifest>,
        reader: &Arc<ChunkReader>,
        image: ImageId,
        request: &RunRequest,
    ) -> Result<rustix::process::Pid, ApiError> {
        let config = manifest.config.clone();
        let spec = SessionSpec {
            id: p.id.clone(),
            mountpoint: p.dir.join("rootfs"),
            fs: FsConfig::default(),
            options: MountOptions {
                writable: Some(p.dir.join("overlay")),
                holder: self.settings.holder.clone(),
                ..Default::default()
            },
            record_trace: None,
            requested_by: format!("api container {}", p.id),
            daemon: self.settings.api_address.clone(),
        };
        std::fs::create_dir_all(&spec.mountpoint).map_err(|e| ApiError::internal(e.to_string()))?;
        let session = MountSession::start(
            reader.clone(),
            Image {
                id: image,
                manifest,
            },
            spec,
            self.settings.mounts.clone(),
            None,
        )
        .await
        .map_err(|e| ApiError::internal(format!("mounting {image}: {e}")))?;
        let rootfs = session.mountpoint().to_path_buf();
        p.session = Some(session);
        let (dir, id, runtime) = (p.dir.clone(), p.id.clone(), p.runtime.clone());
        let request = request.clone();
        p.created = true;
        tokio::task::spawn_blocking(move || {
            create_and_start(&dir, &id, &runtime, &rootfs, config.as_ref(), &request)
        })
        .await
        .map_err(|e| ApiError::internal(e.to_string()))?
    }

    /// Sends the image's stop signal, then SIGKILL after `timeout`; returns once the
    /// container has exited.
    pub async fn stop(
        &self,
        key: &str,
        timeout: Duration,
    ) -> Result<Arc<ContainerEntry>, ApiError> {
        let c = self.get(key)?;
        let mut state = c.state.subscribe();
        if matches!(*state.borrow(), State::Exited { .. }) {
            return Ok(c);
        }
        let exited = |s: &State| matches!(s, State::Exited { .. });
        let _ = c.runtime.kill(&c.id, c.stop_signal);
        if tokio::time::timeout(timeout, state.wait_for(exited))
            .await
            .is_err()
        {
            let _ = c.runtime.kill(&c.id, libc::SIGKILL);
            let _ = tokio::time::timeout(Duration::from_secs(30), state.wait_for(exited)).await;
        }
        Ok(c)
    }

    /// The end of a container's log.
    pub fn logs(&self, key: &str) -> Result<String, ApiError> {
        use std::io::{Read, Seek, SeekFrom};
        let c = self.get(key)?;
        let mut f = std::fs::File::open(c.log())
            .map_err(|e| ApiError::internal(format!("{}: {e}", c.log().display())))?;
        let len = f.metadata().map(|m| m.len()).unwrap_or(0);
        let _ = f.seek(SeekFrom::Start(len.saturating_sub(MAX_LOG_BYTES)));
        let mut bytes = Vec::new();
        f.take(MAX_LOG_BYTES)
            .read_to_end(&mut bytes)
            .map_err(|e| ApiError::internal(e.to_string()))?;
        Ok(String::from_utf8_lossy(&bytes).into_owned())
    }

    /// Forgets an exited container and removes its directory.
    pub async fn remove(&self, key: &str) -> Result<Arc<ContainerEntry>, ApiError> {
        let c = self.get(key)?;
        if matches!(*c.state.borrow(), State::Running { .. }) {
            return Err(ApiError::new(
                ErrorCode::Conflict,
                format!("container {} is running: stop it first", c.name),
            ));
        }
        // The waiter ends the mount just after the exit: wait for it.
        let _ = c.session.lock().await;
        thaw_run::record::remove_container_dir(&c.dir)
            .map_err(internal("removing the container"))?;
        self.settings.records.remove(&c.id);
        self.live.lock().remove(&c.id);
        Ok(c)
    }

    /// Stops and removes every container (at shutdown), except those left running for
    /// the next daemon.
    pub async fn remove_all(&self) {
        for c in self.list() {
            if c.left.load(std::sync::atomic::Ordering::Relaxed) {
                // Not unmounted: the holder keeps the root's connection, and the record
                // tells the next daemon to adopt it.
                if let Some(session) = c.session.lock().await.take() {
                    std::mem::forget(session);
                }
                tracing::info!(container = %c.id, "left running for the next daemon");
                continue;
            }
            let _ = self.stop(&c.id, Duration::from_secs(10)).await;
            if let Err(e) = self.remove(&c.id).await {
                tracing::warn!(container = %c.id, error = %e.message, "removing at shutdown failed");
            }
        }
    }
}
