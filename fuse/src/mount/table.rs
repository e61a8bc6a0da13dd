//! The mount table: which paths are mounted (from `/proc/self/mountinfo`), and unmounting.

use super::MountError;
use std::path::{Path, PathBuf};

/// Reads the mount points of this mount namespace.
pub fn mount_points() -> Vec<PathBuf> {
    let text = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    text.lines()
        .filter_map(|l| l.split(' ').nth(4))
        .map(|p| PathBuf::from(unescape_mountinfo(p)))
        .collect()
}

fn unescape_mountinfo(s: &str) -> String {
    // Spaces, tabs, newlines and backslashes are written as \ooo.
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && i + 3 < b.len()
            && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c))
        {
            out.push(((b[i + 1] - b'0') << 6) | ((b[i + 2] - b'0') << 3) | (b[i + 3] - b'0'));
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Whether `path` is a mount point (compared without resolving it: a dead FUSE mount
/// cannot be resolved).
pub fn is_mounted(path: &Path) -> bool {
    let path = absolute(path);
    mount_points().contains(&path)
}

/// `path` made absolute and normalised lexically (no symlink resolution).
pub fn absolute(path: &Path) -> PathBuf {
    let joined = if path.is_absolute() {
        path.to_path_buf()
    } else {
        std::env::current_dir().unwrap_or_default().join(path)
    };
    let mut out = PathBuf::from("/");
    for c in joined.components() {
        match c {
            std::path::Component::ParentDir => {
                out.pop();
            }
            std::path::Component::Normal(n) => out.push(n),
            _ => {}
        }
    }
    out
}

/// How an unmount went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unmounted {
    /// Gone from the mount table and not in use.
    Clean,
    /// Busy: detached from the tree, freed by the kernel when the last user leaves.
    Detached,
}

/// Unmounts whatever is mounted at `path`; a busy or dead mount is detached lazily.
pub fn unmount(path: &Path) -> Result<Unmounted, MountError> {
    let path = absolute(path);
    if !is_mounted(&path) {
        return Err(MountError::NotMounted(path.display().to_string()));
    }
    use rustix::mount::{unmount as umount2, UnmountFlags};
    let first = match umount2(&path, UnmountFlags::empty()) {
        Ok(()) => return Ok(Unmounted::Clean),
        Err(e) => e,
    };
    tracing::warn!(path = %path.display(), error = %first, "unmount failed; detaching lazily");
    match umount2(&path, UnmountFlags::DETACH) {
        Ok(()) => Ok(Unmounted::Detached),
        Err(e) => Err(super::io("unmount", &path)(e.into())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mountinfo_escapes() {
        assert_eq!(unescape_mountinfo(r"/mnt/with\040space"), "/mnt/with space");
        assert_eq!(unescape_mountinfo("/plain"), "/plain");
    }

    #[test]
    fn absolute_paths() {
        assert_eq!(
            absolute(Path::new("/a/b/../c/./d")),
            PathBuf::from("/a/c/d")
        );
        assert!(absolute(Path::new("rel")).is_absolute());
    }
}
