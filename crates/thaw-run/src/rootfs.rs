//! Reading a container's root file system from outside it, as the container would see it:
//! every path resolves inside the root (`openat2` with `RESOLVE_IN_ROOT`), so an image's
//! absolute symlink (`/etc/passwd -> /host/...`) never reaches a host file.

use crate::error::{io_err, RunError};
use rustix::fs::{Mode, OFlags, ResolveFlags};
use std::io::Read;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};

/// Files larger than this (`/etc/passwd`, `/etc/group`) are not read past it.
const MAX_ACCOUNT_FILE: u64 = 4 << 20;

/// A root file system, opened once.
#[derive(Debug)]
pub struct RootFs {
    dir: OwnedFd,
    path: PathBuf,
}

impl RootFs {
    /// Opens the root at `path`.
    pub fn open(path: &Path) -> Result<Self, RunError> {
        let dir = rustix::fs::open(
            path,
            OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .map_err(|e| io_err("open", path)(e.into()))?;
        Ok(RootFs {
            dir,
            path: path.to_path_buf(),
        })
    }

    fn open_in(&self, rel: &str, flags: OFlags) -> std::io::Result<OwnedFd> {
        let rel = rel.trim_start_matches('/');
        let rel = if rel.is_empty() { "." } else { rel };
        rustix::fs::openat2(
            &self.dir,
            rel,
            flags | OFlags::CLOEXEC,
            Mode::empty(),
            ResolveFlags::IN_ROOT,
        )
        .map_err(Into::into)
    }

    /// A small file's text, or `None` if it does not exist. Reads at most
    /// [`MAX_ACCOUNT_FILE`] bytes.
    pub fn read_small(&self, rel: &str) -> Result<Option<String>, RunError> {
        let fd = match self.open_in(rel, OFlags::RDONLY) {
            Ok(fd) => fd,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => {
                return Err(io_err("open", self.path.join(rel.trim_start_matches('/')))(
                    e,
                ))
            }
        };
        let mut text = Vec::new();
        std::fs::File::from(fd)
            .take(MAX_ACCOUNT_FILE)
            .read_to_end(&mut text)
            .map_err(io_err("read", self.path.join(rel.trim_start_matches('/'))))?;
        Ok(Some(String::from_utf8_lossy(&text).into_owned()))
    }

    /// Whether `rel` is a regular file with an execute bit (following symlinks inside the root).
    pub fn is_executable(&self, rel: &str) -> bool {
        let Ok(fd) = self.open_in(rel, OFlags::PATH) else {
            return false;
        };
        rustix::fs::fstat(&fd).is_ok_and(|st| {
            let mode = st.st_mode;
            (mode & libc::S_IFMT) == libc::S_IFREG && mode & 0o111 != 0
        })
    }

    /// Whether `rel` exists (following symlinks inside the root).
    pub fn exists(&self, rel: &str) -> bool {
        self.open_in(rel, OFlags::PATH).is_ok()
    }
}

/// Checks that the container's program exists: a path as is, a bare name along `PATH`
/// (from the container's environment), as the runtime will look for it. Fails early with a
/// clear error rather than after the runtime has made the container.
/// A relative path with a `/` is taken from the working directory `cwd`.
pub fn find_command(root: &RootFs, argv0: &str, env: &[String], cwd: &str) -> Result<(), RunError> {
    if argv0.contains('/') {
        let rel = if argv0.starts_with('/') {
            argv0.to_string()
        } else {
            format!("{cwd}/{argv0}")
        };
        if root.is_executable(&rel) {
            return Ok(());
        }
        return Err(RunError::CommandNotFound {
            command: argv0.into(),
            path: None,
        });
    }
    let path = env
        .iter()
        .rev()
        .find_map(|e| e.strip_prefix("PATH="))
        .unwrap_or(crate::defaults::DEFAULT_PATH);
    let found = path
        .split(':')
        .filter(|d| !d.is_empty())
        .any(|dir| root.is_executable(&format!("{dir}/{argv0}")));
    if found {
        Ok(())
    } else {
        Err(RunError::CommandNotFound {
            command: argv0.into(),
            path: Some(path.into()),
        })
    }
}
