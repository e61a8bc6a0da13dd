//! The node's container records: one small JSON file per container that a `thaw run`
//! process owns, written before anything is made for it, so that whatever a killed
//! process leaves behind (the runtime's container, the bundle and overlay directory) is
//! found and removed by the next `thaw run` or `thaw umount`. The owner is named by its
//! pid and start time, so a reused pid does not pass for it.

use crate::error::{io_err, RunError};
use serde::{Deserialize, Serialize};
use std::io::Read;
use std::path::{Path, PathBuf};

const VERSION: u32 = 1;
/// Records larger than this are not records.
const MAX_RECORD_BYTES: u64 = 64 * 1024;

/// Checks a container's name: letters, digits, `_`, `.` and `-`, starting with a letter
/// or digit, at most 63 bytes (it is also the host name).
pub fn check_name(name: &str) -> Result<(), RunError> {
    let valid = name
        .chars()
        .next()
        .is_some_and(|c| c.is_ascii_alphanumeric())
        && name.len() <= 63
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "_.-".contains(c));
    if valid {
        return Ok(());
    }
    Err(RunError::BadOption {
        option: "--name",
        reason: format!("{name:?}: letters, digits, '_', '.' and '-', starting with a letter or digit, at most 63"),
    })
}

/// One container, as recorded.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContainerRecord {
    /// The format's version.
    pub version: u32,
    /// The container's id (the runtime's name for it).
    pub id: String,
    /// Its name (`--name`, or the id).
    pub name: String,
    /// The image it runs (an id).
    pub image: String,
    /// The runtime's program.
    pub runtime: PathBuf,
    /// The runtime's state root.
    pub runtime_root: PathBuf,
    /// The container's directory (bundle, overlay, `/etc` files).
    pub dir: PathBuf,
    /// The owning process's pid.
    pub owner_pid: u32,
    /// Its start time in clock ticks after boot (0 if unknown).
    pub owner_start: u64,
    /// Seconds since the epoch when the container was made.
    pub created: u64,
}

/// A process's start time from `/proc/PID/stat`; `None` if there is no such process.
/// (thaw-fuse's mount records read the same field; this crate must not depend on FUSE.)
fn start_time(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) is in parentheses and may hold spaces: count after it.
    stat.rsplit_once(')')?
        .1
        .split_whitespace()
        .nth(19)?
        .parse()
        .ok()
}

impl ContainerRecord {
    /// A record owned by this process.
    pub fn new(id: &str, name: &str, image: &str, runtime: &crate::Runtime, dir: &Path) -> Self {
        let pid = std::process::id();
        ContainerRecord {
            version: VERSION,
            id: id.into(),
            name: name.into(),
            image: image.into(),
            runtime: runtime.program().to_path_buf(),
            runtime_root: runtime.root().to_path_buf(),
            dir: dir.to_path_buf(),
            owner_pid: pid,
            owner_start: start_time(pid).unwrap_or(0),
            created: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs()),
        }
    }

    /// The runtime the record names, with its state root.
    pub fn runtime(&self) -> Result<crate::Runtime, crate::RunError> {
        let root = self.runtime_root.parent().unwrap_or(Path::new("/"));
        crate::Runtime::find(&self.runtime.to_string_lossy(), root)
    }

    /// The same record, owned by this process (a daemon adopting the container).
    pub fn owned_here(&self) -> Self {
        let pid = std::process::id();
        ContainerRecord {
            owner_pid: pid,
            owner_start: start_time(pid).unwrap_or(0),
            ..self.clone()
        }
    }

    /// Whether the owning process still runs (the same one).
    pub fn owner_alive(&self) -> bool {
        start_time(self.owner_pid).is_some_and(|s| self.owner_start == 0 || s == self.owner_start)
    }
}

/// A directory of container records.
#[derive(Debug, Clone)]
pub struct ContainerRegistry {
    dir: PathBuf,
}

impl ContainerRegistry {
    /// Records under `dir`.
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        ContainerRegistry { dir: dir.into() }
    }

    /// The node's registry: `$THAW_RUN_DIR/containers`, by default `/run/thaw/containers`.
    pub fn node() -> Self {
        let run = std::env::var_os("THAW_RUN_DIR")
            .map_or_else(|| PathBuf::from("/run/thaw"), PathBuf::from);
        Self::new(run.join("containers"))
    }

    fn path(&self, id: &str) -> PathBuf {
        self.dir.join(format!("{id}.json"))
    }

    /// Writes (or replaces) a record, atomically.
    pub fn write(&self, r: &ContainerRecord) -> Result<(), RunError> {
        std::fs::create_dir_all(&self.dir).map_err(io_err("create", &self.dir))?;
        let path = self.path(&r.id);
        let tmp = self.dir.join(format!(".{}.tmp", r.id));
        let text = serde_json::to_vec_pretty(r).map_err(|e| RunError::Spec(e.to_string()))?;
        std::fs::write(&tmp, text).map_err(io_err("write", &tmp))?;
        std::fs::rename(&tmp, &path).map_err(io_err("rename", &path))
    }

    /// Removes a record.
    pub fn remove(&self, id: &str) {
        let _ = std::fs::remove_file(self.path(id));
    }

    /// Every readable record; a file that is not one is logged and skipped.
    pub fn list(&self) -> Vec<ContainerRecord> {
        let Ok(entries) = std::fs::read_dir(&self.dir) else {
            return Vec::new();
        };
        let mut records = Vec::new();
        for e in entries.flatten() {
            let path = e.path();
            if path.extension().is_none_or(|x| x != "json") {
                continue;
            }
            match read_record(&path) {
                Ok(r) => records.push(r),
                Err(reason) => {
                    tracing::warn!(path = %path.display(), reason, "not a container record")
                }
            }
        }
        records.sort_by(|a, b| a.created.cmp(&b.created).then_with(|| a.id.cmp(&b.id)));
        records
    }

    /// Records whose owner has died.
    pub fn dead(&self) -> Vec<ContainerRecord> {
        self.list()
            .into_iter()
            .filter(|r| !r.owner_alive())
            .collect()
    }

    /// Removes what containers of dead owners left: the runtime's container (its
    /// processes killed), then whatever `unmount_dead` unmounts (the caller's mounts of
    /// dead owners: this crate knows no mounts), then each container's directory (unless
    /// something is still mounted in it) and its record. Records `keep` holds back stay
    /// (a container whose root a daemon's successor may still adopt). Returns the records
    /// cleaned.
    pub fn clean_dead(
        &self,
        keep: impl Fn(&ContainerRecord) -> bool,
        unmount_dead: impl FnOnce(),
    ) -> Vec<ContainerRecord> {
        let dead: Vec<ContainerRecord> = self.dead().into_iter().filter(|r| !keep(r)).collect();
        if dead.is_empty() {
            return dead;
        }
        for r in &dead {
            let deleted = r.runtime().and_then(|rt| rt.delete(&r.id));
            if let Err(e) = deleted {
                tracing::warn!(id = %r.id, error = %e, "a dead owner's container stays");
            }
        }
        unmount_dead();
        for r in &dead {
            if let Err(e) = remove_container_dir(&r.dir) {
                tracing::warn!(dir = %r.dir.display(), error = %e, "a dead owner's directory stays");
            }
            self.remove(&r.id);
        }
        dead
    }
}

/// Removes a container's directory, unless something is still mounted under it.
pub fn remove_container_dir(dir: &Path) -> Result<(), RunError> {
    if !dir.exists() {
        return Ok(());
    }
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    // Field 5 of mountinfo is the mount point.
    let busy = mounts
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .any(|m| Path::new(m).starts_with(dir));
    if busy {
        return Err(RunError::Io {
            op: "remove",
            path: dir.to_path_buf(),
            source: std::io::Error::other("something is still mounted in it"),
        });
    }
    std::fs::remove_dir_all(dir).map_err(io_err("remove", dir))
}

fn read_record(path: &Path) -> Result<ContainerRecord, String> {
    let mut bytes = Vec::new();
    std::fs::File::open(path)
        .and_then(|f| f.take(MAX_RECORD_BYTES + 1).read_to_end(&mut bytes))
        .map_err(|e| e.to_string())?;
    if bytes.len() as u64 > MAX_RECORD_BYTES {
        return Err("larger than a record may be".into());
    }
    let r: ContainerRecord = serde_json::from_slice(&bytes).map_err(|e| e.to_string())?;
    if r.version != VERSION {
        return Err(format!("version {} (this thaw reads {VERSION})", r.version));
    }
    Ok(r)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_round_trip_and_a_dead_owner_is_found() {
        let dir = tempfile::tempdir().unwrap();
        let reg = ContainerRegistry::new(dir.path());
        let rt = crate::Runtime::find("sh", Path::new("/tmp/rt")).unwrap();
        let mine = ContainerRecord::new("a1", "web", "img", &rt, Path::new("/c/a1"));
        assert!(mine.owner_alive());
        let mut gone = ContainerRecord::new("b2", "b2", "img", &rt, Path::new("/c/b2"));
        gone.owner_start += 1; // this pid, another start: a reused pid
        reg.write(&mine).unwrap();
        reg.write(&gone).unwrap();
        std::fs::write(dir.path().join("junk.json"), b"{").unwrap();
        assert_eq!(reg.list().len(), 2);
        assert_eq!(reg.dead(), vec![gone]);
        reg.remove("b2");
        assert_eq!(reg.list(), vec![mine]);
    }
}
