//! The node's mount records: one small file per mount, in one format for `thaw mount` and
//! the daemon alike, naming the image, where it is mounted, its writable upper, the
//! process serving it and who asked for it. They let `thaw umount` find a mount's owner
//! (and ask a daemon to unmount instead of doing it behind its back), and let anyone clean
//! up after a serving process that died.
//!
//! A record is a file `DIR/<hash of the mount point>` of `key=value` lines after a version
//! line, written to a temporary file and renamed into place. The serving process is named
//! by its pid and its start time (so a reused pid is not mistaken for it).

use std::path::{Path, PathBuf};

/// The first line of every record.
const VERSION_LINE: &str = "thaw mount record 1";
/// Records larger than this are not records.
const MAX_RECORD_BYTES: u64 = 64 * 1024;

/// Why a record could not be written or read.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    /// A file operation failed.
    #[error("{op} {path}: {source}")]
    Io {
        /// What was being done.
        op: &'static str,
        /// On which file.
        path: String,
        /// The error.
        source: std::io::Error,
    },
    /// A record that is not in this format.
    #[error("mount record {path}: {reason}")]
    Malformed {
        /// The file.
        path: String,
        /// What is wrong with it.
        reason: String,
    },
}

/// A process, named so that a reused pid does not pass for it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProcessId {
    /// Its pid.
    pub pid: u32,
    /// Its start time in clock ticks after boot (`/proc/PID/stat`, field 22); 0 if unknown.
    pub start: u64,
}

impl ProcessId {
    /// This process.
    pub fn current() -> Self {
        Self::of(std::process::id())
    }

    /// The process with this pid now.
    pub fn of(pid: u32) -> Self {
        ProcessId {
            pid,
            start: start_time(pid).unwrap_or(0),
        }
    }

    /// Whether the process still runs (the same one: same pid and start time).
    pub fn is_alive(&self) -> bool {
        match start_time(self.pid) {
            Some(start) => self.start == 0 || start == self.start,
            None => false,
        }
    }
}

/// A process's start time from `/proc/PID/stat`; `None` if there is no such process, or
/// only its zombie (it has exited and waits to be reaped).
fn start_time(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) is in parentheses and may hold spaces: count after it.
    let mut fields = stat.rsplit_once(')')?.1.split_whitespace();
    if fields.next()? == "Z" {
        return None;
    }
    fields.nth(18)?.parse().ok()
}

/// One mount, as recorded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MountRecord {
    /// The mount's id (the daemon's API id, or a random one for `thaw mount`).
    pub id: String,
    /// The image mounted (its id, in hex).
    pub image: String,
    /// Where the image (or its overlay) is mounted.
    pub mountpoint: PathBuf,
    /// Where the read-only FUSE layer is mounted (the mount point unless writable).
    pub fuse_dir: PathBuf,
    /// The overlay's directory (holding `upper/`, `work/`, `lower/`), if writable.
    pub upper: Option<PathBuf>,
    /// The process serving the FUSE layer.
    pub owner: ProcessId,
    /// Who asked for the mount: for example `thaw mount (uid 0)` or `api`.
    pub requested_by: String,
    /// The API address of the daemon that owns the mount, if a daemon does: `thaw umount`
    /// asks it rather than unmounting behind its back.
    pub daemon: Option<String>,
    /// Seconds since the epoch when the mount was made.
    pub created: u64,
    /// The process keeping the FUSE connection open for a successor of the owner (see
    /// [`crate::takeover`]), if the mount is to outlive its owner.
    pub holder: Option<ProcessId>,
    /// Whether the kernel agreed to passthrough at the connection's `FUSE_INIT`.
    pub passthrough: bool,
}

impl MountRecord {
    fn encode(&self) -> String {
        let path = |p: &Path| p.display().to_string();
        let mut lines = vec![
            VERSION_LINE.to_string(),
            format!("id={}", self.id),
            format!("image={}", self.image),
            format!("mountpoint={}", path(&self.mountpoint)),
            format!("fuse_dir={}", path(&self.fuse_dir)),
            format!("owner_pid={}", self.owner.pid),
            format!("owner_start={}", self.owner.start),
            format!("requested_by={}", self.requested_by),
            format!("created={}", self.created),
        ];
        if let Some(u) = &self.upper {
            lines.push(format!("upper={}", path(u)));
        }
        if let Some(d) = &self.daemon {
            lines.push(format!("daemon={d}"));
        }
        if let Some(h) = &self.holder {
            lines.push(format!("holder_pid={}", h.pid));
            lines.push(format!("holder_start={}", h.start));
        }
        if self.passthrough {
            lines.push("passthrough=1".into());
        }
        lines.join("\n") + "\n"
    }

    fn decode(text: &str) -> Result<Self, String> {
        let mut lines = text.lines();
        if lines.next() != Some(VERSION_LINE) {
            return Err(format!(
                "not a mount record (first line is not {VERSION_LINE:?})"
            ));
        }
        let pairs: Vec<(&str, &str)> = lines.filter_map(|l| l.split_once('=')).collect();
        let get = |k: &str| pairs.iter().find(|(key, _)| *key == k).map(|(_, v)| *v);
        let need = |k: &str| get(k).ok_or_else(|| format!("no {k}"));
        let number = |k: &str| need(k)?.parse::<u64>().map_err(|e| format!("{k}: {e}"));
        let text_field = |k: &str| need(k).map(str::to_string);
        Ok(MountRecord {
            id: text_field("id")?,
            image: text_field("image")?,
            mountpoint: PathBuf::from(need("mountpoint")?),
            fuse_dir: PathBuf::from(need("fuse_dir")?),
            upper: get("upper").map(PathBuf::from),
            owner: ProcessId {
                pid: u32::try_from(number("owner_pid")?).map_err(|e| e.to_string())?,
                start: number("owner_start")?,
            },
            requested_by: text_field("requested_by")?,
            daemon: get("daemon").map(str::to_string),
            created: number("created")?,
            holder: match get("holder_pid") {
                None => None,
                Some(_) => Some(ProcessId {
                    pid: u32::try_from(number("holder_pid")?).map_err(|e| e.to_string())?,
                    start: number("holder_start")?,
                }),
            },
            passthrough: get("passthrough") == Some("1"),
        })
    }
}

/// The directory of mount records.
#[derive(Debug, Clone)]
pub struct MountRegistry {
    dir: PathBuf,
}

impl MountRegistry {
    /// The registry in `dir` (created when the first record is written).
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        MountRegistry { dir: dir.into() }
    }

    /// The node's registry: `$THAW_RUN_DIR/mounts`, by default `/run/thaw/mounts`.
    pub fn node() -> Self {
        let run = std::env::var_os("THAW_RUN_DIR")
            .map_or_else(|| PathBuf::from("/run/thaw"), PathBuf::from);
        MountRegistry::new(run.join("mounts"))
    }

    /// Its directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The file of the record for a mount point.
    pub fn path_for(&self, mountpoint: &Path) -> PathBuf {
        let key = blake3::hash(
            crate::mount::absolute(mountpoint)
                .as_os_str()
                .as_encoded_bytes(),
        );
        self.dir.join(&key.to_hex()[..32])
    }

    /// Writes (or replaces) a mount's record atomically.
    pub fn write(&self, record: &MountRecord) -> Result<(), RegistryError> {
        let io = |op, path: &Path| {
            let path = path.display().to_string();
            move |source| RegistryError::Io { op, path, source }
        };
        std::fs::create_dir_all(&self.dir).map_err(io("create", &self.dir))?;
        let target = self.path_for(&record.mountpoint);
        crate::files::write_atomically(&target, record.encode().as_bytes())
            .map_err(io("write", &target))
    }

    /// The record of a mount point, if there is one.
    pub fn find(&self, mountpoint: &Path) -> Result<Option<MountRecord>, RegistryError> {
        read_record(&self.path_for(mountpoint))
    }

    /// Removes the record of a mount point and its open table (no error if there is none).
    pub fn remove(&self, mountpoint: &Path) {
        if let Ok(Some(r)) = self.find(mountpoint) {
            let _ = std::fs::remove_file(self.open_table_for(&r.id));
        }
        let _ = std::fs::remove_file(self.path_for(mountpoint));
    }

    /// Where the held mount `id` keeps its open table ([`crate::opens`]).
    pub fn open_table_for(&self, id: &str) -> PathBuf {
        let key = blake3::hash(id.as_bytes());
        self.dir.join("opens").join(&key.to_hex()[..32])
    }

    /// Every readable record; files that are not records are skipped with a warning.
    pub fn list(&self) -> Vec<MountRecord> {
        let Ok(entries) = std::fs::read_dir(&self.dir) else {
            return Vec::new();
        };
        entries
            .flatten()
            .filter(|e| e.file_type().is_ok_and(|t| t.is_file()))
            .filter_map(|e| match read_record(&e.path()) {
                Ok(r) => r,
                Err(err) => {
                    tracing::warn!(error = %err, "skipping a file in the mount registry");
                    None
                }
            })
            .collect()
    }

    /// Unmounts what a dead serving process left (the overlay, then the FUSE layer) and
    /// removes its record; returns the records cleaned. Records of live processes stay,
    /// and so do those [`MountRecord::adoptable`]: their connection waits for the owner's
    /// successor (which adopts them or calls [`MountRegistry::clean_orphans`]).
    pub fn clean_dead(&self) -> Vec<MountRecord> {
        self.clean(|r| !r.owner.is_alive() && !r.adoptable())
    }

    /// The ids of mounts whose owner died while a holder keeps their connection for a
    /// successor.
    pub fn adoptable_ids(&self) -> std::collections::HashSet<String> {
        self.list()
            .into_iter()
            .filter(MountRecord::adoptable)
            .map(|r| r.id)
            .collect()
    }

    /// Cleans up after every dead owner, and after the held connections of the daemon
    /// `daemon` (its API address) that its successor did not adopt: their holders are
    /// stopped. Another daemon's held mounts on the same node wait for that daemon's
    /// successor. Returns the records cleaned.
    pub fn clean_orphans(&self, daemon: Option<&str>) -> Vec<MountRecord> {
        self.clean(|r| !r.owner.is_alive() && (!r.adoptable() || r.daemon.as_deref() == daemon))
    }

    fn clean(&self, which: impl Fn(&MountRecord) -> bool) -> Vec<MountRecord> {
        let dead: Vec<MountRecord> = self.list().into_iter().filter(|r| which(r)).collect();
        for r in &dead {
            clean_up(r);
            self.remove(&r.mountpoint);
        }
        dead
    }
}

impl MountRecord {
    /// Whether its owner died and a holder keeps its connection for a successor.
    pub fn adoptable(&self) -> bool {
        !self.owner.is_alive() && self.holder.is_some_and(|h| h.is_alive())
    }
}

/// Unmounts whatever is still mounted of a record (the overlay first, then the FUSE
/// layer) and stops its holder.
pub fn clean_up(record: &MountRecord) {
    if let Some(h) = record.holder {
        crate::takeover::stop_holder(h);
    }
    let mut dirs = vec![record.mountpoint.clone()];
    if record.fuse_dir != record.mountpoint {
        dirs.push(record.fuse_dir.clone());
    }
    for dir in dirs {
        if crate::mount::is_mounted(&dir) {
            match crate::mount::unmount(&dir) {
                Ok(how) => tracing::info!(path = %dir.display(), ?how, "cleaned up a stale mount"),
                Err(e) => tracing::warn!(path = %dir.display(), error = %e, "a stale mount stays"),
            }
        }
    }
}

fn read_record(path: &Path) -> Result<Option<MountRecord>, RegistryError> {
    let io = |source| RegistryError::Io {
        op: "read",
        path: path.display().to_string(),
        source,
    };
    let file = match std::fs::File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(io(e)),
    };
    let mut text = String::new();
    std::io::Read::read_to_string(&mut std::io::Read::take(file, MAX_RECORD_BYTES), &mut text)
        .map_err(io)?;
    MountRecord::decode(&text)
        .map(Some)
        .map_err(|reason| RegistryError::Malformed {
            path: path.display().to_string(),
            reason,
        })
}

#[cfg(test)]
mod tests;
