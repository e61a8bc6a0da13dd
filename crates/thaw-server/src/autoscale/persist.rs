//! What the autoscaler keeps in the daemon's state directory, so a restarted daemon does
//! not start over: a policy's learned state (thaw's idle-time histograms),
//! `STATE/autoscale/DEPLOYMENT.json`, and the records of the replicas it runs (for the next
//! daemon to adopt). Written to a temporary file and renamed; read with a size limit;
//! anything unreadable is logged and ignored (the policy then learns from scratch, the
//! replicas are not adopted).

use std::collections::BTreeMap;
use std::io::Read;
use std::path::Path;
use thaw_autoscale::Policy;

/// The largest state file read (a histogram of 100 000 bins is well under this).
const MAX_STATE_BYTES: u64 = 16 << 20;

/// Writes `policy`'s state to `path`, if it has any.
pub(super) fn save(policy: &dyn Policy, path: &Path) {
    let Some(state) = policy.saved_state() else {
        return;
    };
    if let Err(e) = write_json(path, &state) {
        tracing::warn!(path = %path.display(), error = %e, "could not save the autoscaler's state");
    }
}

/// Writes `value` as JSON to `path` through a temporary file and a rename, so a reader
/// sees the old file or the new one, never half of one.
fn write_json<T: serde::Serialize + ?Sized>(path: &Path, value: &T) -> std::io::Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let tmp = path.with_extension("json.tmp");
    std::fs::write(
        &tmp,
        serde_json::to_vec(value).map_err(std::io::Error::other)?,
    )?;
    std::fs::rename(&tmp, path)
}

/// Gives `policy` the state saved at `path`, if there is one that fits.
pub(super) fn restore(policy: &mut dyn Policy, path: &Path) {
    let read = || -> std::io::Result<Vec<u8>> {
        let mut bytes = Vec::new();
        std::fs::File::open(path)?
            .take(MAX_STATE_BYTES + 1)
            .read_to_end(&mut bytes)?;
        if bytes.len() as u64 > MAX_STATE_BYTES {
            return Err(std::io::Error::other("larger than the limit"));
        }
        Ok(bytes)
    };
    let bytes = match read() {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return,
        Err(e) => {
            tracing::warn!(path = %path.display(), error = %e, "ignoring the autoscaler's saved state");
            return;
        }
    };
    let taken =
        serde_json::from_slice::<serde_json::Value>(&bytes).is_ok_and(|v| policy.restore_state(&v));
    if taken {
        tracing::info!(path = %path.display(), "restored the autoscaler's learned state");
    } else {
        tracing::warn!(path = %path.display(), "the autoscaler's saved state does not fit this policy; learning again");
    }
}

/// The largest replica records file read.
const MAX_RECORDS_BYTES: u64 = 4 << 20;

/// Writes a deployment's replica records to `path`. The lock is held through the write:
/// replicas started at once must not write the temporary file together, and the file
/// written last must hold the latest records.
pub(super) fn save_records<T: serde::Serialize>(
    path: &Path,
    records: &parking_lot::Mutex<BTreeMap<String, T>>,
) {
    let records = records.lock();
    let list: Vec<&T> = records.values().collect();
    if let Err(e) = write_json(path, &list) {
        tracing::warn!(path = %path.display(), error = %e, "could not save the replicas' records: a restarted daemon will not adopt them");
    }
}

/// Reads the replica records at `path` (none if there are none or they are unreadable).
pub(super) fn load_records<T: serde::de::DeserializeOwned>(path: &Path) -> Vec<T> {
    let mut text = Vec::new();
    let read =
        std::fs::File::open(path).and_then(|f| f.take(MAX_RECORDS_BYTES).read_to_end(&mut text));
    let unreadable = |e: &dyn std::fmt::Display| {
        tracing::warn!(path = %path.display(), error = %e, "unreadable replica records ignored");
        Vec::new()
    };
    match read {
        Ok(_) => serde_json::from_slice(&text).unwrap_or_else(|e| unreadable(&e)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
        Err(e) => unreadable(&e),
    }
}
