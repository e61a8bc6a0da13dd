//! A policy's learned state (thaw's idle-time histograms) in the daemon's state directory,
//! `STATE/autoscale/DEPLOYMENT.json`, so a restarted daemon does not learn again. Written
//! to a temporary file and renamed; read with a size limit; anything unreadable is logged
//! and ignored (the policy then learns from scratch).

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
    let write = || -> std::io::Result<()> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let tmp = path.with_extension("json.tmp");
        std::fs::write(
            &tmp,
            serde_json::to_vec(&state).map_err(std::io::Error::other)?,
        )?;
        std::fs::rename(&tmp, path)
    };
    if let Err(e) = write() {
        tracing::warn!(path = %path.display(), error = %e, "could not save the autoscaler's state");
    }
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
