//! What an image holds, counted: `thaw inspect`'s figures, computed where a test can
//! reach them.

use super::{Extent, InodeKind, Manifest};

/// Counts of an image's tree and chunk table.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct TreeSummary {
    /// Every inode (hard links count once).
    pub inodes: u64,
    /// Regular files.
    pub files: u64,
    /// Directories, the root included.
    pub directories: u64,
    /// Symbolic links.
    pub symlinks: u64,
    /// Character and block devices.
    pub devices: u64,
    /// Fifos and sockets.
    pub other: u64,
    /// Regular files with more than one name.
    pub hard_linked_files: u64,
    /// The regular files' sizes added up.
    pub file_bytes: u64,
    /// Of those, bytes in zero runs (holes, stored as no chunk).
    pub zero_bytes: u64,
    /// Distinct chunks in the chunk table.
    pub chunks: u64,
    /// Their uncompressed bytes.
    pub chunk_bytes: u64,
}

impl Manifest {
    /// Counts the tree and the chunk table.
    pub fn summary(&self) -> TreeSummary {
        let links = self.link_counts();
        let mut s = TreeSummary {
            inodes: self.inodes.len() as u64,
            chunks: self.chunks.len() as u64,
            chunk_bytes: self.chunks.iter().map(|c| u64::from(c.len)).sum(),
            ..Default::default()
        };
        for (ino, inode) in self.inodes.iter().enumerate() {
            match &inode.kind {
                InodeKind::File { size, extents } => {
                    s.files += 1;
                    s.file_bytes += size;
                    s.zero_bytes += extents
                        .iter()
                        .map(|e| if let Extent::Zero(n) = e { *n } else { 0 })
                        .sum::<u64>();
                    if links.get(ino).is_some_and(|&n| n > 1) {
                        s.hard_linked_files += 1;
                    }
                }
                InodeKind::Directory { .. } => s.directories += 1,
                InodeKind::Symlink { .. } => s.symlinks += 1,
                InodeKind::CharDevice { .. } | InodeKind::BlockDevice { .. } => s.devices += 1,
                InodeKind::Fifo | InodeKind::Socket => s.other += 1,
            }
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::super::{ChunkInfo, DirEntry, Inode, Metadata};
    use super::*;
    use crate::ChunkId;

    #[test]
    fn counts_every_kind_hard_links_and_zero_runs() {
        let meta = Metadata {
            mode: 0o644,
            uid: 0,
            gid: 0,
            mtime: Default::default(),
            xattrs: vec![],
        };
        let entry = |name: &str, inode| DirEntry {
            name: name.as_bytes().to_vec(),
            inode,
        };
        let node = |kind| Inode {
            meta: meta.clone(),
            kind,
        };
        let m = Manifest {
            chunks: vec![ChunkInfo {
                id: ChunkId::of(b"c"),
                len: 10,
            }],
            inodes: vec![
                node(InodeKind::Directory {
                    entries: vec![entry("a", 1), entry("b", 1), entry("d", 2), entry("f", 3)],
                }),
                node(InodeKind::File {
                    size: 14,
                    extents: vec![Extent::Chunk(0), Extent::Zero(4)],
                }),
                node(InodeKind::CharDevice { rdev: 0 }),
                node(InodeKind::Fifo),
            ],
            config: None,
        };
        let s = m.summary();
        assert_eq!(
            (s.inodes, s.files, s.directories, s.devices, s.other),
            (4, 1, 1, 1, 1)
        );
        assert_eq!(
            (s.hard_linked_files, s.file_bytes, s.zero_bytes),
            (1, 14, 4)
        );
        assert_eq!((s.chunks, s.chunk_bytes, s.symlinks), (1, 10, 0));
    }
}
