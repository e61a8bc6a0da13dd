//! Image manifests: the whole file tree of an image, with metadata and chunk lists.
//!
//! Inodes live in one table; inode 0 is the root directory. Directory entries name
//! inodes, so hard links are several entries naming one inode. Regular files are lists
//! of extents: a chunk from the manifest's chunk table, or a run of zeros that costs no
//! storage and no fetch (sparse files).

use crate::codec::Envelope;
use crate::config::ImageConfig;
use crate::{ChunkId, FormatError, ImageId, MAX_CHUNK_LEN};
use serde::{Deserialize, Serialize};
use std::collections::HashSet;

/// Version 1: chunks and inodes. Still written for images without a run configuration,
/// so their ids do not change.
const ENVELOPE_V1: Envelope = Envelope {
    what: "manifest",
    magic: *b"THAWMAN\0",
    version: 1,
};
/// Version 2: version 1 followed by the image's run configuration.
const ENVELOPE_V2: Envelope = Envelope {
    version: 2,
    ..ENVELOPE_V1
};

/// The root directory's inode number.
pub const ROOT_INODE: u32 = 0;
/// Longest file name (Linux NAME_MAX).
pub const MAX_NAME_LEN: usize = 255;
/// Longest symlink target (Linux PATH_MAX - 1).
pub const MAX_SYMLINK_LEN: usize = 4095;

/// A point in time: seconds since the epoch and nanoseconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Timestamp {
    /// Seconds since the Unix epoch (negative before it).
    pub sec: i64,
    /// Nanoseconds, below one billion.
    pub nsec: u32,
}

/// One extended attribute; names and values are raw bytes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Xattr {
    #[serde(with = "serde_bytes")]
    /// The attribute's name, with its namespace (`user.`, `trusted.`, `security.`).
    pub name: Vec<u8>,
    #[serde(with = "serde_bytes")]
    /// Its value, any bytes.
    pub value: Vec<u8>,
}

/// Metadata every inode has.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Metadata {
    /// Permission bits including setuid, setgid and sticky (`mode & 0o7777`).
    pub mode: u32,
    /// Owner user id.
    pub uid: u32,
    /// Owner group id.
    pub gid: u32,
    /// Modification time.
    pub mtime: Timestamp,
    /// Extended attributes, sorted by name, names unique.
    pub xattrs: Vec<Xattr>,
}

/// A name in a directory. Names are raw bytes (not necessarily UTF-8).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DirEntry {
    #[serde(with = "serde_bytes")]
    /// The entry's name: 1 to 255 bytes, no `/` or NUL, not `.` or `..`.
    pub name: Vec<u8>,
    /// The inode it names (an index into `Manifest::inodes`).
    pub inode: u32,
}

/// A piece of a regular file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Extent {
    /// A chunk, by index into [`Manifest::chunks`].
    Chunk(u32),
    /// This many zero bytes.
    Zero(u64),
}

/// What an inode is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum InodeKind {
    /// Entries sorted by name, bytewise, without duplicates.
    Directory {
        /// Its entries, strictly sorted by name.
        entries: Vec<DirEntry>,
    },
    /// A regular file.
    File {
        /// Its size in bytes.
        size: u64,
        /// Its content: chunks and zero runs, in order, adding up to `size`.
        extents: Vec<Extent>,
    },
    /// A symbolic link.
    Symlink {
        #[serde(with = "serde_bytes")]
        /// What it points to (not interpreted).
        target: Vec<u8>,
    },
    /// A character device.
    CharDevice {
        /// Its device number (`makedev(major, minor)`).
        rdev: u64,
    },
    /// A block device.
    BlockDevice {
        /// Its device number (`makedev(major, minor)`).
        rdev: u64,
    },
    /// A named pipe.
    Fifo,
    /// A Unix socket (recreated as an inert node).
    Socket,
}

/// One inode of the tree.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Inode {
    /// Ownership, mode, times, xattrs.
    pub meta: Metadata,
    /// What kind of file it is, with its content.
    pub kind: InodeKind,
}

/// A chunk the image uses, with its uncompressed length.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChunkInfo {
    /// The chunk's id (BLAKE3 of its uncompressed bytes).
    pub id: ChunkId,
    /// Its uncompressed length.
    pub len: u32,
}

/// A whole image.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    /// Every chunk referenced by a file, each once.
    pub chunks: Vec<ChunkInfo>,
    /// Inode 0 is the root directory.
    pub inodes: Vec<Inode>,
    /// How containers started from the image run, when its source said (OCI and registry
    /// images, or `thaw build --config`); `None` for plain trees.
    #[serde(default)]
    pub config: Option<ImageConfig>,
}

/// The body of a version 1 manifest, borrowed for encoding.
#[derive(Serialize)]
struct BodyV1<'a> {
    chunks: &'a [ChunkInfo],
    inodes: &'a [Inode],
}

/// The body of a version 2 manifest, borrowed for encoding.
#[derive(Serialize)]
struct BodyV2<'a> {
    chunks: &'a [ChunkInfo],
    inodes: &'a [Inode],
    config: &'a ImageConfig,
}

/// The body of a version 1 manifest, decoded.
#[derive(Deserialize)]
struct OwnedV1 {
    chunks: Vec<ChunkInfo>,
    inodes: Vec<Inode>,
}

/// The body of a version 2 manifest, decoded.
#[derive(Deserialize)]
struct OwnedV2 {
    chunks: Vec<ChunkInfo>,
    inodes: Vec<Inode>,
    config: ImageConfig,
}

/// A resolved extent of a file: where it sits and what backs it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FileExtent {
    /// Where the extent starts in its file.
    pub offset: u64,
    /// Its length in bytes.
    pub len: u64,
    /// `None` for a run of zeros.
    pub chunk: Option<ChunkId>,
}

impl Manifest {
    /// Encodes into the versioned envelope. The image id is the hash of these bytes.
    /// Version 1 without a configuration, version 2 with one.
    pub fn encode(&self) -> Vec<u8> {
        let (chunks, inodes) = (self.chunks.as_slice(), self.inodes.as_slice());
        match &self.config {
            None => ENVELOPE_V1.encode(&BodyV1 { chunks, inodes }),
            Some(config) => ENVELOPE_V2.encode(&BodyV2 {
                chunks,
                inodes,
                config,
            }),
        }
    }

    /// Decodes and fully validates a manifest of either version.
    pub fn decode(bytes: &[u8]) -> Result<Manifest, FormatError> {
        let m = if crate::codec::peek_version(bytes) == Some(ENVELOPE_V1.version) {
            let b: OwnedV1 = ENVELOPE_V1.decode(bytes)?;
            Manifest {
                chunks: b.chunks,
                inodes: b.inodes,
                config: None,
            }
        } else {
            let b: OwnedV2 = ENVELOPE_V2.decode(bytes)?;
            Manifest {
                chunks: b.chunks,
                inodes: b.inodes,
                config: Some(b.config),
            }
        };
        m.validate()?;
        Ok(m)
    }

    /// The id of an encoded manifest.
    pub fn id_of(encoded: &[u8]) -> ImageId {
        ImageId::of(encoded)
    }

    /// The root directory (inode 0; `validate` checks it is a directory).
    pub fn root(&self) -> &Inode {
        &self.inodes[ROOT_INODE as usize]
    }

    /// An inode by number, if it exists.
    pub fn inode(&self, ino: u32) -> Option<&Inode> {
        self.inodes.get(ino as usize)
    }

    /// Looks a name up in a directory inode (binary search; entries are sorted).
    pub fn lookup(&self, dir: u32, name: &[u8]) -> Option<u32> {
        match &self.inode(dir)?.kind {
            InodeKind::Directory { entries } => entries
                .binary_search_by(|e| e.name.as_slice().cmp(name))
                .ok()
                .map(|i| entries[i].inode),
            _ => None,
        }
    }

    /// The file's extents with offsets, in order. Empty for non-files.
    pub fn file_extents(&self, ino: u32) -> Vec<FileExtent> {
        let Some(Inode {
            kind: InodeKind::File { extents, .. },
            ..
        }) = self.inode(ino)
        else {
            return Vec::new();
        };
        let mut offset = 0;
        extents
            .iter()
            .map(|e| {
                let (len, chunk) = match *e {
                    Extent::Chunk(i) => {
                        let c = self.chunks[i as usize];
                        (u64::from(c.len), Some(c.id))
                    }
                    Extent::Zero(n) => (n, None),
                };
                let fe = FileExtent { offset, len, chunk };
                offset += len;
                fe
            })
            .collect()
    }

    /// Link counts: names per inode for non-directories, 2 + subdirectories for directories.
    pub fn link_counts(&self) -> Vec<u32> {
        let mut counts = vec![0u32; self.inodes.len()];
        for (ino, inode) in self.inodes.iter().enumerate() {
            if let InodeKind::Directory { entries } = &inode.kind {
                counts[ino] += 2;
                for e in entries {
                    let child = e.inode as usize;
                    if matches!(self.inodes[child].kind, InodeKind::Directory { .. }) {
                        counts[ino] += 1;
                    } else {
                        counts[child] += 1;
                    }
                }
            }
        }
        counts
    }

    /// Visits every path in depth-first pre-order: `(path components, inode)`. The root is
    /// visited first with an empty path.
    pub fn walk(&self, mut visit: impl FnMut(&[&[u8]], u32)) {
        fn go<'a>(
            m: &'a Manifest,
            ino: u32,
            path: &mut Vec<&'a [u8]>,
            visit: &mut dyn FnMut(&[&[u8]], u32),
        ) {
            visit(path, ino);
            if let InodeKind::Directory { entries } = &m.inodes[ino as usize].kind {
                for e in entries {
                    path.push(&e.name);
                    go(m, e.inode, path, visit);
                    path.pop();
                }
            }
        }
        go(self, ROOT_INODE, &mut Vec::new(), &mut visit);
    }

    /// Checks every invariant the rest of thaw relies on.
    pub fn validate(&self) -> Result<(), FormatError> {
        self.check()
            .map_err(|reason| FormatError::invalid("manifest", reason))?;
        match &self.config {
            Some(config) => config.validate(),
            None => Ok(()),
        }
    }

    fn check(&self) -> Result<(), String> {
        let n = self.inodes.len();
        if n == 0 {
            return Err("no inodes".into());
        }
        if n > u32::MAX as usize {
            return Err("too many inodes".into());
        }
        if !matches!(self.root().kind, InodeKind::Directory { .. }) {
            return Err("inode 0 (the root) is not a directory".into());
        }
        self.check_chunk_table()?;
        let mut refs = vec![0u32; n];
        for (ino, inode) in self.inodes.iter().enumerate() {
            let at = |r: String| format!("inode {ino}: {r}");
            check_meta(&inode.meta).map_err(at)?;
            match &inode.kind {
                InodeKind::Directory { entries } => {
                    check_entries(entries, &mut refs).map_err(at)?
                }
                InodeKind::File { size, extents } => {
                    self.check_extents(*size, extents).map_err(at)?
                }
                InodeKind::Symlink { target } => {
                    if target.is_empty() || target.len() > MAX_SYMLINK_LEN || target.contains(&0) {
                        return Err(at("bad symlink target".into()));
                    }
                }
                InodeKind::CharDevice { .. }
                | InodeKind::BlockDevice { .. }
                | InodeKind::Fifo
                | InodeKind::Socket => {}
            }
        }
        self.check_parents(&refs)?;
        self.check_reachable()
    }

    fn check_chunk_table(&self) -> Result<(), String> {
        let mut seen = HashSet::with_capacity(self.chunks.len());
        for (i, c) in self.chunks.iter().enumerate() {
            if c.len == 0 || c.len > MAX_CHUNK_LEN {
                return Err(format!("chunk table entry {i} has length {}", c.len));
            }
            if !seen.insert(c.id) {
                return Err(format!("chunk {} appears twice in the chunk table", c.id));
            }
        }
        Ok(())
    }

    /// A file's extents must name chunks of the table, and add up to its size.
    fn check_extents(&self, size: u64, extents: &[Extent]) -> Result<(), String> {
        let mut total: u64 = 0;
        for e in extents {
            let len = match *e {
                Extent::Chunk(i) => match self.chunks.get(i as usize) {
                    Some(c) => u64::from(c.len),
                    None => return Err(format!("chunk reference {i} is not in the chunk table")),
                },
                Extent::Zero(0) => return Err("empty zero extent".into()),
                Extent::Zero(len) => len,
            };
            total = total.checked_add(len).ok_or("extent lengths overflow")?;
        }
        if total != size {
            return Err(format!("extents add up to {total} bytes, size says {size}"));
        }
        Ok(())
    }

    /// Every directory but the root has exactly one parent; every other inode at least one.
    fn check_parents(&self, refs: &[u32]) -> Result<(), String> {
        for (ino, inode) in self.inodes.iter().enumerate().skip(1) {
            let is_dir = matches!(inode.kind, InodeKind::Directory { .. });
            if is_dir && refs[ino] != 1 {
                return Err(format!("directory inode {ino} has {} parents", refs[ino]));
            }
            if !is_dir && refs[ino] == 0 {
                return Err(format!("inode {ino} is not named by any directory"));
            }
        }
        Ok(())
    }

    /// Every directory has exactly one parent and the root none, so the tree is a tree if
    /// and only if every inode is reachable from the root.
    fn check_reachable(&self) -> Result<(), String> {
        let n = self.inodes.len();
        let mut reached = vec![false; n];
        let mut stack = vec![ROOT_INODE as usize];
        reached[0] = true;
        let mut count = 1usize;
        while let Some(d) = stack.pop() {
            let InodeKind::Directory { entries } = &self.inodes[d].kind else {
                continue;
            };
            for e in entries {
                let c = e.inode as usize;
                if !reached[c] {
                    reached[c] = true;
                    count += 1;
                    if matches!(self.inodes[c].kind, InodeKind::Directory { .. }) {
                        stack.push(c);
                    }
                }
            }
        }
        if count != n {
            return Err(format!(
                "{} inodes are not reachable from the root (a directory cycle?)",
                n - count
            ));
        }
        Ok(())
    }
}

/// An inode's metadata: permission bits only, good xattr names, nanoseconds in range.
fn check_meta(m: &Metadata) -> Result<(), String> {
    if m.mode & !0o7777 != 0 {
        return Err(format!("mode {:#o} has bits outside 0o7777", m.mode));
    }
    for x in &m.xattrs {
        if x.name.is_empty() || x.name.contains(&0) || x.name.len() > 255 {
            return Err(format!(
                "bad xattr name {:?}",
                String::from_utf8_lossy(&x.name)
            ));
        }
    }
    if m.mtime.nsec >= 1_000_000_000 {
        return Err(format!("mtime nanoseconds {} out of range", m.mtime.nsec));
    }
    Ok(())
}

/// A directory's entries: valid names, strictly sorted, naming existing non-root inodes;
/// counts each child's parents in `refs`.
fn check_entries(entries: &[DirEntry], refs: &mut [u32]) -> Result<(), String> {
    let mut prev: Option<&[u8]> = None;
    for e in entries {
        let shown = || String::from_utf8_lossy(&e.name).into_owned();
        validate_name(&e.name)?;
        if prev.is_some_and(|p| p >= e.name.as_slice()) {
            return Err(format!("entries not strictly sorted at {:?}", shown()));
        }
        prev = Some(&e.name);
        let child = e.inode as usize;
        match refs.get_mut(child).filter(|_| child != ROOT_INODE as usize) {
            Some(r) => *r = r.saturating_add(1),
            None => return Err(format!("entry {:?} names inode {child}", shown())),
        }
    }
    Ok(())
}

/// A valid directory entry name: 1 to 255 bytes, no `/` or NUL, not `.` or `..`.
pub fn validate_name(name: &[u8]) -> Result<(), String> {
    if name.is_empty() || name.len() > MAX_NAME_LEN {
        return Err(format!("name of {} bytes", name.len()));
    }
    if name == b"." || name == b".." {
        return Err("name is '.' or '..'".into());
    }
    if name.contains(&b'/') || name.contains(&0) {
        return Err(format!(
            "name {:?} contains '/' or NUL",
            String::from_utf8_lossy(name)
        ));
    }
    Ok(())
}

mod summary;
pub use summary::TreeSummary;

#[cfg(test)]
mod tests;
