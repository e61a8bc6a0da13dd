//! The errors of starting and running a container, each naming what failed.

use std::path::PathBuf;

/// Why a container could not be prepared, started or cleaned up.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// Neither the command line nor the image names a program to run.
    #[error("no command: the image sets no Entrypoint or Cmd; give one after `--`")]
    NoCommand,
    /// The program is not in the image.
    #[error("command {command:?} not found in the image{}", searched_in(.path))]
    CommandNotFound {
        /// The program as given.
        command: String,
        /// The `PATH` searched, when the program was a bare name.
        path: Option<String>,
    },
    /// The user (from the image's config or `--user`) is not in the image's `/etc/passwd`.
    #[error("user {user:?} not found in the image's /etc/passwd")]
    UserNotFound {
        /// The user as given.
        user: String,
    },
    /// The group is not in the image's `/etc/group`.
    #[error("group {group:?} not found in the image's /etc/group")]
    GroupNotFound {
        /// The group as given.
        group: String,
    },
    /// An option that cannot be used as given.
    #[error("{option}: {reason}")]
    BadOption {
        /// The option (`--mount`, `--memory`, ...).
        option: &'static str,
        /// What is wrong with it.
        reason: String,
    },
    /// The OCI runtime is not installed.
    #[error("OCI runtime {runtime:?} not found: install it (Debian: apt-get install {runtime}) or pick another with --runtime")]
    RuntimeMissing {
        /// `runc` or `crun`, or the path given.
        runtime: String,
    },
    /// The runtime refused or failed an operation.
    #[error("{runtime} {op} failed ({status}){}", log_tail(.log))]
    Runtime {
        /// The runtime.
        runtime: String,
        /// `create`, `start`, `kill`, `delete`.
        op: &'static str,
        /// Its exit status.
        status: String,
        /// The last lines it logged, with a hint when one is known.
        log: String,
    },
    /// A file operation failed.
    #[error("{op} {}: {source}", .path.display())]
    Io {
        /// What was being done.
        op: &'static str,
        /// On which path.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// The runtime configuration could not be formed (a bug, or an option out of range).
    #[error("runtime configuration: {0}")]
    Spec(String),
    /// The seccomp profile could not be read.
    #[error("seccomp profile {}: {reason}", .path.display())]
    Seccomp {
        /// The profile's file.
        path: PathBuf,
        /// What went wrong.
        reason: String,
    },
    /// A CDI device could not be resolved.
    #[error("--gpus: {0}")]
    Gpus(String),
}

fn searched_in(path: &Option<String>) -> String {
    match path {
        Some(p) => format!(" (searched PATH={p})"),
        None => String::new(),
    }
}

fn log_tail(log: &str) -> String {
    if log.is_empty() {
        String::new()
    } else {
        format!(": {log}")
    }
}

/// `map_err` helper: an I/O error on `path` while doing `op`.
pub(crate) fn io_err(
    op: &'static str,
    path: impl Into<PathBuf>,
) -> impl FnOnce(std::io::Error) -> RunError {
    let path = path.into();
    move |source| RunError::Io { op, path, source }
}
