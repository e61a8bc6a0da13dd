//! Builds a tree from a directory on the local filesystem.

use crate::error::io_err;
use crate::ingest::Ingest;
use crate::tree::{Node, NodeKind, Tree};
use crate::BuildError;
use std::collections::{BTreeMap, HashMap};
use std::fs::Metadata as FsMeta;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::Path;
use thaw_core::{Metadata, Timestamp, Xattr};

pub fn metadata_of(path: &Path, m: &FsMeta) -> Result<Metadata, BuildError> {
    Ok(Metadata {
        mode: m.mode() & 0o7777,
        uid: m.uid(),
        gid: m.gid(),
        mtime: Timestamp {
            sec: m.mtime(),
            nsec: m.mtime_nsec() as u32,
        },
        xattrs: read_xattrs(path)?,
    })
}

fn read_xattrs(path: &Path) -> Result<Vec<Xattr>, BuildError> {
    let names = match xattr::list(path) {
        Ok(n) => n,
        // Filesystems without xattr support have none.
        Err(e) if e.raw_os_error() == Some(libc::ENOTSUP) => return Ok(vec![]),
        Err(e) => return Err(io_err("list xattrs of", path)(e)),
    };
    let mut out = Vec::new();
    for name in names {
        if let Some(value) = xattr::get(path, &name).map_err(io_err("read xattr of", path))? {
            out.push(Xattr {
                name: name.as_bytes().to_vec(),
                value,
            });
        }
    }
    out.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(out)
}

/// Walks `root` (not following symlinks) into a tree; hard links keep one node.
pub fn build_tree(root: &Path, ingest: &Ingest<'_>) -> Result<Tree, BuildError> {
    let m = std::fs::symlink_metadata(root).map_err(io_err("stat", root))?;
    if !m.is_dir() {
        return Err(BuildError::NotADirectory {
            path: root.display().to_string(),
        });
    }
    let mut tree = Tree::new(metadata_of(root, &m)?);
    let mut links: HashMap<(u64, u64), usize> = HashMap::new();
    let mut stack = vec![(root.to_path_buf(), 0usize)];
    while let Some((dir, node)) = stack.pop() {
        let mut entries: Vec<_> = std::fs::read_dir(&dir)
            .map_err(io_err("read directory", &dir))?
            .collect::<Result<_, _>>()
            .map_err(io_err("read directory", &dir))?;
        entries.sort_by_key(|e| e.file_name());
        // Directories are visited in name order, so chunks land in packs in the same
        // depth-first order an export reads them in.
        let mut subdirs = Vec::new();
        for e in entries {
            let path = e.path();
            let name = e.file_name().as_bytes().to_vec();
            let m = std::fs::symlink_metadata(&path).map_err(io_err("stat", &path))?;
            let ft = m.file_type();
            if !ft.is_dir() && m.nlink() > 1 {
                if let Some(&existing) = links.get(&(m.dev(), m.ino())) {
                    tree.link(node, name, existing);
                    continue;
                }
            }
            let meta = metadata_of(&path, &m)?;
            let kind = if ft.is_dir() {
                NodeKind::Dir(BTreeMap::new())
            } else if ft.is_file() {
                let mut f = std::fs::File::open(&path).map_err(io_err("open", &path))?;
                let shown = path.display().to_string();
                // Sparse files (fewer blocks than bytes) are read by data segment only.
                let sparse = m.len() > crate::ingest::IN_MEMORY_LIMIT && m.blocks() * 512 < m.len();
                let (size, extents) = if sparse {
                    ingest.sparse_file(&mut f, m.len(), &shown)?
                } else {
                    ingest.file(f, m.len(), &shown)?
                };
                NodeKind::File { size, extents }
            } else if ft.is_symlink() {
                let t = std::fs::read_link(&path).map_err(io_err("read link", &path))?;
                NodeKind::Symlink(t.as_os_str().as_bytes().to_vec())
            } else if ft.is_char_device() {
                NodeKind::CharDevice(m.rdev())
            } else if ft.is_block_device() {
                NodeKind::BlockDevice(m.rdev())
            } else if ft.is_fifo() {
                NodeKind::Fifo
            } else if ft.is_socket() {
                NodeKind::Socket
            } else {
                return Err(BuildError::Unsupported {
                    path: path.display().to_string(),
                    kind: format!("{ft:?}"),
                });
            };
            let is_dir = matches!(kind, NodeKind::Dir(_));
            let child = tree.add(node, name, Node { meta, kind });
            if is_dir {
                subdirs.push((path, child));
            } else if m.nlink() > 1 {
                links.insert((m.dev(), m.ino()), child);
            }
        }
        stack.extend(subdirs.into_iter().rev());
    }
    Ok(tree)
}
