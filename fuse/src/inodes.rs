//! Precomputed per-inode facts the hot paths need: attributes, parents, extents, paths.

use fuser::{FileAttr, FileType, INodeNo};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use thaw_core::manifest::FileExtent;
use thaw_core::{InodeKind, Manifest, Timestamp};

/// FUSE inode numbers are manifest inode indexes plus one (FUSE's root is 1).
pub fn to_fuse(ino: u32) -> INodeNo {
    INodeNo(u64::from(ino) + 1)
}

/// The manifest index of a FUSE inode number, if it is in range.
pub fn from_fuse(ino: INodeNo, count: usize) -> Option<u32> {
    let i = ino.0.checked_sub(1)?;
    (i < count as u64).then_some(i as u32)
}

fn time(t: Timestamp) -> SystemTime {
    if t.sec >= 0 {
        UNIX_EPOCH + Duration::new(t.sec as u64, t.nsec)
    } else {
        UNIX_EPOCH - Duration::from_secs(t.sec.unsigned_abs())
            + Duration::from_nanos(u64::from(t.nsec))
    }
}

/// glibc's 64-bit `dev_t` to the kernel's 32-bit `new_encode_dev`, which FUSE carries.
pub fn kernel_rdev(rdev: u64) -> u32 {
    let (major, minor) = (libc::major(rdev), libc::minor(rdev));
    (minor & 0xff) | ((major & 0xfff) << 8) | ((minor & !0xff) << 12)
}

pub fn file_type(kind: &InodeKind) -> FileType {
    match kind {
        InodeKind::Directory { .. } => FileType::Directory,
        InodeKind::File { .. } => FileType::RegularFile,
        InodeKind::Symlink { .. } => FileType::Symlink,
        InodeKind::CharDevice { .. } => FileType::CharDevice,
        InodeKind::BlockDevice { .. } => FileType::BlockDevice,
        InodeKind::Fifo => FileType::NamedPipe,
        InodeKind::Socket => FileType::Socket,
    }
}

/// Everything derived from the manifest once, at mount time. Kept small: a mount holds
/// one per image, for as long as it runs, and it grows with the image's file count
/// (attributes are computed from the manifest on each call rather than stored).
#[derive(Debug)]
pub struct InodeTable {
    /// Link count of every inode.
    links: Vec<u32>,
    pub parents: Vec<u32>,
    /// Where each inode's extents start in `extents` (one more entry than inodes).
    extent_starts: Vec<usize>,
    /// Every regular file's resolved extents, one after another.
    extents: Vec<FileExtent>,
    /// Total bytes of regular files (for statfs).
    pub total_bytes: u64,
}

impl InodeTable {
    pub fn new(m: &Manifest) -> Self {
        let mut parents = vec![0u32; m.inodes.len()];
        let mut total_bytes = 0;
        let mut extent_starts = Vec::with_capacity(m.inodes.len() + 1);
        let mut extents = Vec::new();
        for (ino, inode) in m.inodes.iter().enumerate() {
            extent_starts.push(extents.len());
            match &inode.kind {
                InodeKind::Directory { entries } => {
                    for e in entries {
                        parents[e.inode as usize] = ino as u32;
                    }
                }
                InodeKind::File { size, .. } => {
                    total_bytes += size;
                    extents.extend(m.file_extents(ino as u32));
                }
                _ => {}
            }
        }
        extent_starts.push(extents.len());
        extents.shrink_to_fit();
        InodeTable {
            links: m.link_counts(),
            parents,
            extent_starts,
            extents,
            total_bytes,
        }
    }

    /// The resolved extents of `ino` (empty unless it is a regular file).
    pub fn extents(&self, ino: u32) -> &[FileExtent] {
        let i = ino as usize;
        &self.extents[self.extent_starts[i]..self.extent_starts[i + 1]]
    }

    /// The attributes FUSE reports for `ino` of `m` (the manifest this table was made from).
    pub fn attr(&self, m: &Manifest, ino: u32) -> FileAttr {
        let inode = &m.inodes[ino as usize];
        let (size, rdev) = match &inode.kind {
            InodeKind::File { size, .. } => (*size, 0),
            InodeKind::Symlink { target } => (target.len() as u64, 0),
            InodeKind::Directory { entries } => (4096 + 32 * entries.len() as u64, 0),
            InodeKind::CharDevice { rdev } | InodeKind::BlockDevice { rdev } => {
                (0, kernel_rdev(*rdev))
            }
            InodeKind::Fifo | InodeKind::Socket => (0, 0),
        };
        let t = time(inode.meta.mtime);
        FileAttr {
            ino: to_fuse(ino),
            size,
            blocks: size.div_ceil(512),
            atime: t,
            mtime: t,
            ctime: t,
            crtime: t,
            kind: file_type(&inode.kind),
            perm: (inode.meta.mode & 0o7777) as u16,
            nlink: self.links[ino as usize],
            uid: inode.meta.uid,
            gid: inode.meta.gid,
            rdev,
            // Large enough that `cat` and friends read in big requests.
            blksize: 128 * 1024,
            flags: 0,
        }
    }
}

/// First path of every inode (for traces), computed on demand.
pub fn first_paths(m: &Manifest) -> Vec<Vec<u8>> {
    let mut paths = vec![Vec::new(); m.inodes.len()];
    let mut seen = vec![false; m.inodes.len()];
    m.walk(|path, ino| {
        if !seen[ino as usize] {
            seen[ino as usize] = true;
            paths[ino as usize] = path.join(&b'/');
        }
    });
    paths
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rdev_encoding_matches_the_kernel() {
        // /dev/null is 1:3 -> 0x103; a large minor uses the high bits.
        assert_eq!(kernel_rdev(libc::makedev(1, 3)), 0x103);
        assert_eq!(kernel_rdev(libc::makedev(7, 9)), 0x709);
        assert_eq!(
            kernel_rdev(libc::makedev(8, 0x12345)),
            0x45 | (8 << 8) | (0x12300 << 12)
        );
    }

    #[test]
    fn inode_numbers() {
        assert_eq!(to_fuse(0), INodeNo(1));
        assert_eq!(from_fuse(INodeNo(1), 3), Some(0));
        assert_eq!(from_fuse(INodeNo(4), 3), None);
        assert_eq!(from_fuse(INodeNo(0), 3), None);
    }
}
