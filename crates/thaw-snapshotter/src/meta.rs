//! Snapshot records, kept in one JSON file in the state directory and rewritten
//! atomically after every change, so the snapshotter survives restarts.

use crate::remote::RemoteLayer;
use crate::SnapshotError;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// A snapshot's kind, as containerd names them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    /// A read-only view of a committed snapshot.
    View,
    /// A writable snapshot (a layer being unpacked, a container's root).
    Active,
    /// An immutable snapshot other snapshots can use as their parent.
    Committed,
}

impl Kind {
    /// The name containerd's filters use (`kind==committed`).
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::View => "view",
            Kind::Active => "active",
            Kind::Committed => "committed",
        }
    }
}

/// What `Stat`, `List` and `Update` report about a snapshot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Info {
    /// Its key (active, view) or name (committed).
    pub name: String,
    /// Its parent's name, empty for none.
    pub parent: String,
    /// Its kind.
    pub kind: Kind,
    /// When it was created.
    pub created: SystemTime,
    /// When its labels last changed.
    pub updated: SystemTime,
    /// Its labels.
    pub labels: BTreeMap<String, String>,
}

/// One snapshot as stored.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct Record {
    /// Names its directory (`snapshots/ID`); kept when an active snapshot is committed.
    pub id: u64,
    pub kind: Kind,
    pub parent: Option<String>,
    pub labels: BTreeMap<String, String>,
    /// Nanoseconds since the epoch.
    pub created_ns: u64,
    pub updated_ns: u64,
    /// Set on a committed snapshot that a thaw image serves instead of a directory.
    #[serde(default)]
    pub remote: Option<RemoteLayer>,
    /// Disk use recorded at commit.
    #[serde(default)]
    pub usage: Option<(i64, i64)>,
}

impl Record {
    pub fn info(&self, name: &str) -> Info {
        Info {
            name: name.to_string(),
            parent: self.parent.clone().unwrap_or_default(),
            kind: self.kind,
            created: UNIX_EPOCH + Duration::from_nanos(self.created_ns),
            updated: UNIX_EPOCH + Duration::from_nanos(self.updated_ns),
            labels: self.labels.clone(),
        }
    }
}

/// Nanoseconds since the epoch, now.
pub(crate) fn now_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
}

/// Every snapshot by key or name, and the next directory id.
#[derive(Debug, Default, Serialize, Deserialize)]
pub(crate) struct Meta {
    pub next_id: u64,
    pub snapshots: BTreeMap<String, Record>,
}

/// The metadata file's largest accepted size: far above any real node's snapshots.
const MAX_METADATA_BYTES: u64 = 256 * 1024 * 1024;

impl Meta {
    /// Reads the metadata file; a missing one is an empty snapshotter.
    pub fn load(path: &Path) -> Result<Meta, SnapshotError> {
        let bad = |reason: String| SnapshotError::Metadata {
            path: path.to_path_buf(),
            reason,
        };
        let file = match std::fs::File::open(path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Meta::default()),
            Err(e) => return Err(bad(e.to_string())),
        };
        let len = file.metadata().map_err(|e| bad(e.to_string()))?.len();
        if len > MAX_METADATA_BYTES {
            return Err(bad(format!("{len} bytes, more than {MAX_METADATA_BYTES}")));
        }
        let meta: Meta = serde_json::from_reader(std::io::BufReader::new(file))
            .map_err(|e| bad(format!("damaged: {e}")))?;
        if let Some((name, r)) = meta.snapshots.iter().find(|(_, r)| r.id >= meta.next_id) {
            return Err(bad(format!("snapshot {name:?} has id {} ≥ next id", r.id)));
        }
        Ok(meta)
    }

    /// Writes the metadata file atomically: a temporary file, synced, renamed over it.
    pub fn save(&self, path: &Path) -> Result<(), SnapshotError> {
        let bad = |reason: String| SnapshotError::Metadata {
            path: path.to_path_buf(),
            reason,
        };
        let tmp = temp_path(path);
        let write = || -> std::io::Result<()> {
            let mut f = std::fs::File::create(&tmp)?;
            f.write_all(&serde_json::to_vec(self).map_err(std::io::Error::other)?)?;
            f.sync_all()?;
            std::fs::rename(&tmp, path)
        };
        write().map_err(|e| {
            let _ = std::fs::remove_file(&tmp);
            bad(e.to_string())
        })
    }

    /// The names of the snapshots whose parent is `name`.
    pub fn children<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a String> + 'a {
        self.snapshots
            .iter()
            .filter(move |(_, r)| r.parent.as_deref() == Some(name))
            .map(|(k, _)| k)
    }
}

fn temp_path(path: &Path) -> PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(".tmp");
    path.with_file_name(name)
}

#[cfg(test)]
#[path = "meta_tests.rs"]
mod tests;
