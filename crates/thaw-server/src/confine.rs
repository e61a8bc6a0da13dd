//! Mount points confined to the daemon's mount root: a client names a directory under the
//! root; the daemon resolves it with `openat2` (beneath the root, no symlinks, no magic
//! links, no crossing into other mounts) to an `O_PATH` descriptor, refuses a non-empty
//! directory unless asked, and mounts on the descriptor, so a path swapped after the check
//! cannot redirect the mount (see `thaw_fuse::mount::MountTarget`).

use crate::error::ApiError;
use rustix::fs::{Mode, OFlags, ResolveFlags};
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Component, Path, PathBuf};
use std::time::{Duration, Instant};

/// Set to a directory, the daemon pauses between checking a mount point and mounting on
/// it: it creates `paused` there and waits for `resume` (tests make a race deterministic
/// with it). Never set in production.
pub const PAUSE_VAR: &str = "THAW_TEST_PAUSE_BEFORE_MOUNT";

/// A mount point resolved under the mount root.
#[derive(Debug)]
pub struct Confined {
    /// The directory, held open.
    pub dir: OwnedFd,
    /// Its path as the kernel sees it now (inside the root).
    pub path: PathBuf,
}

/// Opens (creating what is missing, mode 0755) the mount point `requested` under `root`:
/// absolute and under the root, or relative to it. Refuses `..`, symlinks anywhere on
/// the way, other mounts and, unless `allow_non_empty`, a directory with entries.
pub fn mount_point(
    root: &Path,
    requested: &str,
    allow_non_empty: bool,
) -> Result<Confined, ApiError> {
    let relative = relative_to_root(root, requested)?;
    // One component at a time, each created if missing and opened without following
    // symlinks: a directory that a component names is the one the next step starts from.
    let mut dir = open_root(root)?;
    for name in relative.iter() {
        match rustix::fs::mkdirat(&dir, name, Mode::from_raw_mode(0o755)) {
            Ok(()) | Err(rustix::io::Errno::EXIST) => {}
            Err(e) => return Err(ApiError::invalid(format!("mountpoint {requested:?}: {e}"))),
        }
        dir = beneath(&dir, Path::new(name), requested)?;
    }
    if !allow_non_empty && !is_empty(&dir)? {
        return Err(ApiError::new(
            thaw_api::api::ErrorCode::Conflict,
            format!("mountpoint {requested:?} is not empty (set allow_non_empty to mount over it)"),
        ));
    }
    pause_for_tests();
    let path = std::fs::read_link(fd_path(&dir))
        .map_err(|e| ApiError::invalid(format!("mountpoint {requested:?}: {e}")))?;
    let canonical_root = root.canonicalize().unwrap_or_else(|_| root.to_path_buf());
    if !path.starts_with(&canonical_root) || path == canonical_root {
        return Err(ApiError::invalid(format!(
            "mountpoint {requested:?} was moved out of the mount root {}",
            root.display()
        )));
    }
    Ok(Confined { dir, path })
}

/// `/proc/self/fd/N` of a descriptor.
fn fd_path(fd: &impl AsFd) -> PathBuf {
    use std::os::fd::AsRawFd;
    PathBuf::from(format!("/proc/self/fd/{}", fd.as_fd().as_raw_fd()))
}

/// The request's path relative to the root, checked lexically: no `..`, no `.`.
fn relative_to_root(root: &Path, requested: &str) -> Result<PathBuf, ApiError> {
    if requested.is_empty() || requested.len() > 4096 || requested.contains('\0') {
        return Err(ApiError::invalid("mountpoint empty, too long or with NUL"));
    }
    let path = Path::new(requested);
    let relative = if path.is_absolute() {
        path.strip_prefix(root).map_err(|_| {
            ApiError::invalid(format!(
                "mountpoint {requested:?} is not under the daemon's mount root {}",
                root.display()
            ))
        })?
    } else {
        path
    };
    if relative.as_os_str().is_empty() {
        return Err(ApiError::invalid(format!(
            "mountpoint {requested:?} names the mount root itself"
        )));
    }
    if relative
        .components()
        .any(|c| !matches!(c, Component::Normal(_)))
    {
        return Err(ApiError::invalid(format!(
            "mountpoint {requested:?} must be a plain path under the mount root (no '..' or '.')"
        )));
    }
    Ok(relative.to_path_buf())
}

fn open_root(root: &Path) -> Result<OwnedFd, ApiError> {
    let flags = OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC | OFlags::NOFOLLOW;
    rustix::fs::open(root, flags, Mode::empty())
        .map_err(|e| ApiError::internal(format!("opening the mount root {}: {e}", root.display())))
}

/// Opens `path` beneath `dir` as an `O_PATH` directory without following any symlink.
fn beneath(dir: &OwnedFd, path: &Path, requested: &str) -> Result<OwnedFd, ApiError> {
    let resolve = ResolveFlags::BENEATH
        | ResolveFlags::NO_SYMLINKS
        | ResolveFlags::NO_MAGICLINKS
        | ResolveFlags::NO_XDEV;
    let flags = OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC;
    rustix::fs::openat2(dir, path, flags, Mode::empty(), resolve).map_err(|e| match e {
        rustix::io::Errno::XDEV => ApiError::new(
            thaw_api::api::ErrorCode::Conflict,
            format!("mountpoint {requested:?} is, or lies in, another mount"),
        ),
        rustix::io::Errno::LOOP => ApiError::invalid(format!(
            "mountpoint {requested:?} refused: a symlink is on the way"
        )),
        other => ApiError::invalid(format!("mountpoint {requested:?} refused: {other}")),
    })
}

fn is_empty(dir: &OwnedFd) -> Result<bool, ApiError> {
    let read = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC;
    let opened = rustix::fs::openat(dir, ".", read, Mode::empty())
        .map_err(|e| ApiError::internal(format!("reading the mountpoint: {e}")))?;
    let entries = rustix::fs::Dir::read_from(&opened)
        .map_err(|e| ApiError::internal(format!("reading the mountpoint: {e}")))?;
    for entry in entries {
        let entry =
            entry.map_err(|e| ApiError::internal(format!("reading the mountpoint: {e}")))?;
        let name = entry.file_name().to_bytes();
        if name != b"." && name != b".." {
            return Ok(false);
        }
    }
    Ok(true)
}

/// See [`PAUSE_VAR`].
fn pause_for_tests() {
    let Some(dir) = std::env::var_os(PAUSE_VAR).map(PathBuf::from) else {
        return;
    };
    let _ = std::fs::write(dir.join("paused"), b"");
    let deadline = Instant::now() + Duration::from_secs(60);
    while !dir.join("resume").exists() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    let _ = std::fs::remove_file(dir.join("resume"));
}

/// Prepares the mount root: created if missing, a real directory (not a symlink) owned by
/// this process's user, mode 0700, so nobody else can change what lies under it.
pub fn prepare_root(root: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    std::fs::create_dir_all(root)?;
    let meta = std::fs::symlink_metadata(root)?;
    if !meta.is_dir() {
        return Err(std::io::Error::other(format!(
            "{} is not a directory",
            root.display()
        )));
    }
    if meta.uid() != rustix::process::geteuid().as_raw() {
        return Err(std::io::Error::other(format!(
            "{} is owned by uid {}, not by the daemon's user",
            root.display(),
            meta.uid()
        )));
    }
    std::fs::set_permissions(root, std::fs::Permissions::from_mode(0o700))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_are_checked_lexically() {
        let root = Path::new("/run/thaw/mnt");
        assert_eq!(relative_to_root(root, "a/b").unwrap(), Path::new("a/b"));
        assert_eq!(
            relative_to_root(root, "/run/thaw/mnt/a").unwrap(),
            Path::new("a")
        );
        for bad in [
            "/etc/cron.d",
            "a/../../etc",
            "./a",
            "",
            "/run/thaw/mnt",
            "/run/thaw/mntx/a",
            "a\0b",
        ] {
            assert!(relative_to_root(root, bad).is_err(), "{bad:?}");
        }
    }
}
