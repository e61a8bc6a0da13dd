//! Mounts that outlive the process serving them: a small holder process keeps each FUSE
//! connection's `/dev/fuse` descriptor open, so that when the daemon dies the kernel keeps
//! the mount and queues its requests instead of failing them; the next daemon takes a
//! copy of the descriptor (`pidfd_getfd(2)`), serves it again without a new `FUSE_INIT`
//! (which the kernel sends once per connection), and asks the kernel to resend what the
//! dead daemon had read but not answered (`FUSE_NOTIFY_RESEND`, Linux 6.9).
//!
//! A holder does nothing but wait: it exits by itself once its connection ends (the mount
//! is unmounted or aborted), or on SIGTERM.

use crate::registry::ProcessId;
use std::ffi::OsString;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::path::PathBuf;

/// The descriptor number at which a holder keeps its connection.
pub const HOLDER_FD: RawFd = 3;

/// `FUSE_NOTIFY_RESEND` from the kernel's `fuse.h` (protocol 7.40).
const FUSE_NOTIFY_RESEND: i32 = 7;

/// How to start a holder: a program (thaw's own binary) and the arguments that make it
/// call [`hold`] with the descriptor at [`HOLDER_FD`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HolderCommand {
    /// The program.
    pub program: PathBuf,
    /// Its arguments.
    pub args: Vec<OsString>,
}

/// Why a connection could not be held or taken over.
#[derive(Debug, thiserror::Error)]
pub enum TakeoverError {
    /// The holder could not be started.
    #[error("starting the FUSE holder {program}: {source}")]
    Spawn {
        /// The program.
        program: String,
        /// The error.
        source: std::io::Error,
    },
    /// The holder is gone (or its pid belongs to another process now).
    #[error("the FUSE holder (pid {0}) is not running")]
    HolderGone(u32),
    /// Its descriptor could not be copied.
    #[error("taking the FUSE descriptor from pid {pid}: {source}")]
    Take {
        /// The holder's pid.
        pid: u32,
        /// The error.
        source: std::io::Error,
    },
}

/// Starts a holder of `fuse` (a dup of the connection's descriptor) in a session of its
/// own, with no other descriptors and its output discarded.
pub fn spawn_holder(
    fuse: BorrowedFd<'_>,
    command: &HolderCommand,
) -> Result<ProcessId, TakeoverError> {
    use std::os::unix::process::CommandExt;
    let spawn_err = |source| TakeoverError::Spawn {
        program: command.program.display().to_string(),
        source,
    };
    let raw = fuse.as_raw_fd();
    let mut cmd = std::process::Command::new(&command.program);
    cmd.args(&command.args)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null());
    // SAFETY: between fork and exec the closure only makes async-signal-safe calls
    // (dup2, fcntl, setsid) on descriptors and allocates nothing.
    unsafe {
        cmd.pre_exec(move || {
            if raw == HOLDER_FD {
                if libc::fcntl(HOLDER_FD, libc::F_SETFD, 0) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
            } else if libc::dup2(raw, HOLDER_FD) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            if libc::setsid() < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let child = cmd.spawn().map_err(spawn_err)?;
    let holder = ProcessId::of(child.id());
    // Reaped by a thread of its own when it exits, so that it does not linger as a zombie
    // (which would pass for a live holder); if this process dies first, init reaps it.
    let mut child = child;
    let waiter = std::thread::Builder::new()
        .name("fuse-holder".into())
        .stack_size(64 * 1024)
        .spawn(move || {
            let _ = child.wait();
        });
    if let Err(e) = waiter {
        tracing::warn!(error = %e, "no thread to reap a FUSE holder: it stays a zombie when it exits");
    }
    Ok(holder)
}

/// The holder's body: keeps `fuse` open until its connection ends (then returns), or
/// until a signal ends the process.
pub fn hold(fuse: OwnedFd) {
    use rustix::event::{poll, PollFd, PollFlags};
    loop {
        // No events asked for: only an error (the connection is gone) or a hang-up wakes
        // it, not the requests that queue while no daemon serves the mount.
        let mut fds = [PollFd::new(&fuse, PollFlags::empty())];
        match poll(&mut fds, None) {
            Ok(_) => {
                let got = fds[0].revents();
                if got.intersects(PollFlags::ERR | PollFlags::HUP | PollFlags::NVAL) {
                    return;
                }
            }
            Err(rustix::io::Errno::INTR) => {}
            Err(_) => return,
        }
    }
}

/// Takes a copy of the connection a live holder keeps at `fd`.
pub fn take(holder: ProcessId, fd: RawFd) -> Result<OwnedFd, TakeoverError> {
    use rustix::process::{pidfd_getfd, pidfd_open, Pid, PidfdFlags, PidfdGetfdFlags};
    let gone = || TakeoverError::HolderGone(holder.pid);
    let raw = i32::try_from(holder.pid).map_err(|_| gone())?;
    let pid = Pid::from_raw(raw).ok_or_else(gone)?;
    let pidfd = pidfd_open(pid, PidfdFlags::empty()).map_err(|_| gone())?;
    // Checked after the pidfd is open, so the pid cannot be reused in between.
    if !holder.is_alive() {
        return Err(gone());
    }
    let take = |source: std::io::Error| TakeoverError::Take {
        pid: holder.pid,
        source,
    };
    let fuse = pidfd_getfd(&pidfd, fd, PidfdGetfdFlags::empty()).map_err(|e| take(e.into()))?;
    // Only ever serve a FUSE connection (`/dev/fuse` is character device 10:229).
    let stat = rustix::fs::fstat(&fuse).map_err(|e| take(e.into()))?;
    let is_fuse = rustix::fs::FileType::from_raw_mode(stat.st_mode)
        == rustix::fs::FileType::CharacterDevice
        && stat.st_rdev == rustix::fs::makedev(10, 229);
    if !is_fuse {
        return Err(take(std::io::Error::other(
            "the holder's descriptor is not /dev/fuse",
        )));
    }
    Ok(fuse)
}

/// Asks the kernel to queue again every request of the connection that was read but not
/// answered (by a daemon that died); they reach the new server as new requests.
pub fn resend_pending(fuse: BorrowedFd<'_>) -> std::io::Result<()> {
    // A notification is a `fuse_out_header` with unique 0 and the notification's code in
    // the error field; this one has no body.
    let mut header = [0u8; 16];
    header[0..4].copy_from_slice(&16u32.to_ne_bytes());
    header[4..8].copy_from_slice(&FUSE_NOTIFY_RESEND.to_ne_bytes());
    let written = rustix::io::write(fuse.as_fd(), &header)?;
    if written != header.len() {
        return Err(std::io::Error::other("short write of a FUSE notification"));
    }
    Ok(())
}

/// Stops a holder (its connection then ends with it, unless someone serves it).
pub fn stop_holder(holder: ProcessId) {
    if !holder.is_alive() {
        return;
    }
    if let Some(pid) = i32::try_from(holder.pid)
        .ok()
        .and_then(rustix::process::Pid::from_raw)
    {
        let _ = rustix::process::kill_process(pid, rustix::process::Signal::TERM);
    }
}
