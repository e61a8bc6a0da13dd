//! Disk use of a snapshot directory, as containerd's `fs.DiskUsage` counts it: blocks
//! and inodes, each hard-linked inode once.

use crate::SnapshotError;
use std::collections::HashSet;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

/// Bytes (allocated blocks) and inodes under `root`, not following symlinks.
pub(crate) fn disk_usage(root: &Path) -> Result<(i64, i64), SnapshotError> {
    let mut seen = HashSet::new();
    let (mut size, mut inodes) = (0i64, 0i64);
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let md = std::fs::symlink_metadata(&dir).map_err(SnapshotError::io("stat", &dir))?;
        count(&md, &mut seen, &mut size, &mut inodes);
        if !md.is_dir() {
            continue;
        }
        for entry in std::fs::read_dir(&dir).map_err(SnapshotError::io("read directory", &dir))? {
            let entry = entry.map_err(SnapshotError::io("read directory", &dir))?;
            let path = entry.path();
            let md = entry.metadata().map_err(SnapshotError::io("stat", &path))?;
            if md.is_dir() {
                stack.push(path);
            } else {
                count(&md, &mut seen, &mut size, &mut inodes);
            }
        }
    }
    Ok((size, inodes))
}

fn count(md: &std::fs::Metadata, seen: &mut HashSet<(u64, u64)>, size: &mut i64, inodes: &mut i64) {
    if seen.insert((md.dev(), md.ino())) {
        *inodes += 1;
        *size += i64::try_from(md.blocks() * 512).unwrap_or(i64::MAX);
    }
}
