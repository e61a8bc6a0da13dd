//! Compares two directory trees in every property thaw promises to keep: paths, types,
//! modes (with setuid/setgid/sticky), uid/gid, mtime (ns), xattrs, symlink targets,
//! hard-link groups, device numbers and content hashes.

use std::collections::{BTreeMap, HashMap};
use std::io::Read;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

/// Everything compared about one path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// Permission bits.
    pub mode: u32,
    /// Owner.
    pub uid: u32,
    /// Group.
    pub gid: u32,
    /// Modification time: seconds and nanoseconds.
    pub mtime: (i64, i64),
    /// Size of a regular file.
    pub size: Option<u64>,
    /// Device number of a device.
    pub rdev: Option<u64>,
    /// Target of a symlink.
    pub symlink: Option<Vec<u8>>,
    /// Extended attributes, sorted.
    pub xattrs: Vec<(Vec<u8>, Vec<u8>)>,
    /// BLAKE3 of a regular file's content.
    pub content: Option<[u8; 32]>,
    /// Link count of a non-directory.
    pub nlink: Option<u64>,
    /// The first path (in walk order) of this path's hard-link group.
    pub link_group: Option<Vec<u8>>,
}

/// Walks `root` into a map from relative path bytes to entries. `skip` names relative
/// paths to leave out (with everything under them).
pub fn scan(root: &Path, skip: &[&str]) -> BTreeMap<Vec<u8>, Entry> {
    let mut out = BTreeMap::new();
    let mut groups: HashMap<(u64, u64), Vec<u8>> = HashMap::new();
    let mut stack: Vec<PathBuf> = vec![PathBuf::new()];
    while let Some(rel) = stack.pop() {
        let full = root.join(&rel);
        let m = std::fs::symlink_metadata(&full)
            .unwrap_or_else(|e| panic!("lstat {}: {e}", full.display()));
        let ft = m.file_type();
        let key = rel.as_os_str().as_bytes().to_vec();
        let mut xattrs: Vec<(Vec<u8>, Vec<u8>)> = xattr::list(&full)
            .map(|names| {
                names
                    .map(|n| {
                        (
                            n.as_bytes().to_vec(),
                            xattr::get(&full, &n).ok().flatten().unwrap_or_default(),
                        )
                    })
                    .collect()
            })
            .unwrap_or_default();
        xattrs.sort();
        let is_dir = ft.is_dir();
        let link_group = (!is_dir).then(|| {
            groups
                .entry((m.dev(), m.ino()))
                .or_insert_with(|| key.clone())
                .clone()
        });
        let content = ft.is_file().then(|| hash_file(&full));
        let symlink = ft.is_symlink().then(|| {
            std::fs::read_link(&full)
                .expect("readlink")
                .as_os_str()
                .as_bytes()
                .to_vec()
        });
        let is_dev =
            m.mode() & libc::S_IFMT == libc::S_IFCHR || m.mode() & libc::S_IFMT == libc::S_IFBLK;
        out.insert(
            key,
            Entry {
                mode: m.mode(),
                uid: m.uid(),
                gid: m.gid(),
                mtime: (m.mtime(), m.mtime_nsec()),
                size: (!is_dir).then(|| m.size()),
                rdev: is_dev.then(|| m.rdev()),
                symlink,
                xattrs,
                content,
                nlink: (!is_dir).then(|| m.nlink()),
                link_group,
            },
        );
        if is_dir {
            let mut children: Vec<_> = std::fs::read_dir(&full)
                .expect("read_dir")
                .map(|e| e.expect("dirent").file_name())
                .collect();
            children.sort();
            for c in children.into_iter().rev() {
                let r = rel.join(&c);
                if !skip.iter().any(|s| r == Path::new(s)) {
                    stack.push(r);
                }
            }
        }
    }
    out
}

fn hash_file(path: &Path) -> [u8; 32] {
    let mut h = blake3::Hasher::new();
    let mut f =
        std::fs::File::open(path).unwrap_or_else(|e| panic!("open {}: {e}", path.display()));
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf).expect("read");
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    *h.finalize().as_bytes()
}

/// Differences between two trees, one line each; empty when they match.
pub fn compare(a: &Path, b: &Path, skip: &[&str]) -> Vec<String> {
    let (ta, tb) = (scan(a, skip), scan(b, skip));
    let mut diffs = Vec::new();
    for (k, ea) in &ta {
        let name = String::from_utf8_lossy(k);
        match tb.get(k) {
            None => diffs.push(format!("{name}: missing in {}", b.display())),
            Some(eb) if ea != eb => diffs.push(format!("{name}: {ea:?} != {eb:?}")),
            Some(_) => {}
        }
    }
    for k in tb.keys().filter(|k| !ta.contains_key(*k)) {
        diffs.push(format!(
            "{}: extra in {}",
            String::from_utf8_lossy(k),
            b.display()
        ));
    }
    diffs
}

/// Panics with the first differences when the trees differ; returns the entry count.
pub fn assert_same(a: &Path, b: &Path, skip: &[&str]) -> usize {
    let diffs = compare(a, b, skip);
    assert!(
        diffs.is_empty(),
        "{} differences between {} and {}, first ones:\n{}",
        diffs.len(),
        a.display(),
        b.display(),
        diffs
            .iter()
            .take(15)
            .cloned()
            .collect::<Vec<_>>()
            .join("\n")
    );
    scan(a, skip).len()
}
