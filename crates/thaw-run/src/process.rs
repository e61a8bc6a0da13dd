//! A container's init as a process of ours: the runtime's `create` exits and leaves the
//! init behind; a child subreaper becomes its parent and can wait for its real exit
//! status (its code, or 128+N when signal N killed it).

use crate::error::{io_err, RunError};
use rustix::process::{Pid, WaitOptions, WaitStatus};
use std::path::Path;

/// Makes this process the reaper of orphans below it.
pub fn become_subreaper() -> Result<(), RunError> {
    rustix::process::set_child_subreaper(Some(rustix::process::getpid()))
        .map_err(|e| io_err("PR_SET_CHILD_SUBREAPER", "/proc/self")(e.into()))
}

/// Reads the init's pid from the runtime's pid file.
pub fn read_pid(path: &Path) -> Result<Pid, RunError> {
    let text = std::fs::read_to_string(path).map_err(io_err("read", path))?;
    text.trim()
        .parse::<i32>()
        .ok()
        .and_then(Pid::from_raw)
        .ok_or_else(|| RunError::Spec(format!("pid file {} holds {text:?}", path.display())))
}

fn code_of(status: WaitStatus) -> Option<i32> {
    status
        .exit_status()
        .or_else(|| status.terminating_signal().map(|s| 128 + s))
}

/// Waits (blocking) for the init to exit: its exit code, or 128 + N for signal N.
pub fn wait_exit(pid: Pid) -> Result<i32, RunError> {
    let waited = loop {
        match rustix::process::waitpid(Some(pid), WaitOptions::empty()) {
            Err(rustix::io::Errno::INTR) => continue,
            other => break other,
        }
    };
    let failed = |why: String| {
        RunError::Spec(format!(
            "waiting for the container's init {}: {why}",
            pid.as_raw_nonzero()
        ))
    };
    match waited {
        Ok(Some((_, status))) => code_of(status).ok_or_else(|| failed("no exit status".into())),
        Ok(None) => Err(failed("no status".into())),
        Err(e) => Err(failed(e.to_string())),
    }
}

/// The init's exit code if it has exited already (without waiting otherwise).
pub fn exited_already(pid: Pid) -> Option<i32> {
    let (_, status) = rustix::process::waitpid(Some(pid), WaitOptions::NOHANG).ok()??;
    code_of(status)
}
