//! The tree being built: an arena of nodes that becomes a [`Manifest`].

use crate::BuildError;
use std::collections::{BTreeMap, HashMap};
use thaw_core::{ChunkId, ChunkInfo, DirEntry, Extent, Inode, InodeKind, Manifest, Metadata};

/// A piece of a file while building.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExtentRef {
    Chunk(ChunkId, u32),
    Zero(u64),
}

#[derive(Debug, Clone)]
pub enum NodeKind {
    Dir(BTreeMap<Vec<u8>, usize>),
    File { size: u64, extents: Vec<ExtentRef> },
    Symlink(Vec<u8>),
    CharDevice(u64),
    BlockDevice(u64),
    Fifo,
    Socket,
}

#[derive(Debug, Clone)]
pub struct Node {
    pub meta: Metadata,
    pub kind: NodeKind,
}

/// Nodes by index; node 0 is the root directory. Hard links are several directory
/// entries naming one node.
#[derive(Debug)]
pub struct Tree {
    nodes: Vec<Node>,
}

pub fn dir_meta_default() -> Metadata {
    Metadata {
        mode: 0o755,
        uid: 0,
        gid: 0,
        mtime: Default::default(),
        xattrs: vec![],
    }
}

impl Tree {
    pub fn new(root: Metadata) -> Self {
        Tree {
            nodes: vec![Node {
                meta: root,
                kind: NodeKind::Dir(BTreeMap::new()),
            }],
        }
    }

    pub fn set_meta(&mut self, i: usize, meta: Metadata) {
        self.nodes[i].meta = meta;
    }

    pub fn is_dir(&self, i: usize) -> bool {
        matches!(self.nodes[i].kind, NodeKind::Dir(_))
    }

    /// Adds a node under `parent` as `name`, replacing whatever had that name.
    pub fn add(&mut self, parent: usize, name: Vec<u8>, node: Node) -> usize {
        let i = self.nodes.len();
        self.nodes.push(node);
        self.link(parent, name, i);
        i
    }

    /// Names an existing node under `parent` (a hard link, or a re-link).
    pub fn link(&mut self, parent: usize, name: Vec<u8>, node: usize) {
        match &mut self.nodes[parent].kind {
            NodeKind::Dir(entries) => {
                entries.insert(name, node);
            }
            _ => unreachable!("callers resolve parents to directories"),
        }
    }

    /// Removes the entry `name` from directory `dir`, if there is one (the node stays
    /// reachable through its other hard links, if any).
    pub fn unlink(&mut self, dir: usize, name: &[u8]) {
        if let NodeKind::Dir(entries) = &mut self.nodes[dir].kind {
            entries.remove(name);
        }
    }

    /// Keeps only the entries of directory `dir` for which `keep` holds.
    pub fn retain(&mut self, dir: usize, mut keep: impl FnMut(&[u8]) -> bool) {
        if let NodeKind::Dir(entries) = &mut self.nodes[dir].kind {
            entries.retain(|name, _| keep(name));
        }
    }

    pub fn child(&self, dir: usize, name: &[u8]) -> Option<usize> {
        match &self.nodes[dir].kind {
            NodeKind::Dir(entries) => entries.get(name).copied(),
            _ => None,
        }
    }

    /// Finds the directory holding `components[..last]`, creating missing directories
    /// (as `tar -x` does) when `create` is set.
    pub fn parent_of(
        &mut self,
        components: &[Vec<u8>],
        path: &str,
        create: bool,
    ) -> Result<usize, BuildError> {
        let mut cur = 0;
        for c in &components[..components.len().saturating_sub(1)] {
            cur = match self.child(cur, c) {
                Some(next) if self.is_dir(next) => next,
                Some(_) => {
                    return Err(BuildError::NotADirectory {
                        path: path.to_string(),
                    })
                }
                None if create => self.add(
                    cur,
                    c.clone(),
                    Node {
                        meta: dir_meta_default(),
                        kind: NodeKind::Dir(BTreeMap::new()),
                    },
                ),
                None => {
                    return Err(BuildError::NotADirectory {
                        path: path.to_string(),
                    })
                }
            };
        }
        Ok(cur)
    }

    /// Resolves a full path to a node.
    pub fn lookup(&self, components: &[Vec<u8>]) -> Option<usize> {
        let mut cur = 0;
        for c in components {
            cur = self.child(cur, c)?;
        }
        Some(cur)
    }

    /// Numbers reachable nodes in depth-first order and emits the manifest. Nodes
    /// replaced during the build are unreachable and dropped.
    pub fn to_manifest(&self) -> Manifest {
        let mut inode_of: HashMap<usize, u32> = HashMap::new();
        let mut order: Vec<usize> = Vec::new();
        let mut stack = vec![0usize];
        inode_of.insert(0, 0);
        order.push(0);
        // Pre-order numbering so a directory's children follow it.
        while let Some(n) = stack.pop() {
            if let NodeKind::Dir(entries) = &self.nodes[n].kind {
                let mut subdirs = Vec::new();
                for &child in entries.values() {
                    if let std::collections::hash_map::Entry::Vacant(slot) = inode_of.entry(child) {
                        slot.insert(order.len() as u32);
                        order.push(child);
                        if self.is_dir(child) {
                            subdirs.push(child);
                        }
                    }
                }
                stack.extend(subdirs.into_iter().rev());
            }
        }
        let mut chunk_index: HashMap<ChunkId, u32> = HashMap::new();
        let mut chunks: Vec<ChunkInfo> = Vec::new();
        let inodes = order
            .iter()
            .map(|&n| {
                let node = &self.nodes[n];
                let kind = match &node.kind {
                    NodeKind::Dir(entries) => InodeKind::Directory {
                        entries: entries
                            .iter()
                            .map(|(name, c)| DirEntry {
                                name: name.clone(),
                                inode: inode_of[c],
                            })
                            .collect(),
                    },
                    NodeKind::File { size, extents } => {
                        let mut out: Vec<Extent> = Vec::with_capacity(extents.len());
                        for e in extents {
                            match *e {
                                ExtentRef::Chunk(id, len) => {
                                    let i = *chunk_index.entry(id).or_insert_with(|| {
                                        chunks.push(ChunkInfo { id, len });
                                        (chunks.len() - 1) as u32
                                    });
                                    out.push(Extent::Chunk(i));
                                }
                                ExtentRef::Zero(len) => match out.last_mut() {
                                    Some(Extent::Zero(prev)) => *prev += len,
                                    _ => out.push(Extent::Zero(len)),
                                },
                            }
                        }
                        InodeKind::File {
                            size: *size,
                            extents: out,
                        }
                    }
                    NodeKind::Symlink(t) => InodeKind::Symlink { target: t.clone() },
                    NodeKind::CharDevice(r) => InodeKind::CharDevice { rdev: *r },
                    NodeKind::BlockDevice(r) => InodeKind::BlockDevice { rdev: *r },
                    NodeKind::Fifo => InodeKind::Fifo,
                    NodeKind::Socket => InodeKind::Socket,
                };
                Inode {
                    meta: node.meta.clone(),
                    kind,
                }
            })
            .collect();
        Manifest {
            chunks,
            inodes,
            config: None,
        }
    }
}
