//! Builds a tree from a tar stream (plain, gzip or zstd, detected from the first bytes).
//!
//! Semantics follow `tar -x`: a later entry with the same path replaces the earlier one
//! (a directory entry over a directory only updates its metadata), and missing parent
//! directories are created with mode 0755, owner 0:0. Absolute paths and `..` are
//! rejected, as are hard links to missing, escaping or directory targets.
//!
//! Container image layers ([`apply_layer`] with [`Whiteouts::Apply`]) are applied one
//! over another with the OCI whiteouts: `.wh.NAME` removes `NAME` of the layers below,
//! `.wh..wh..opq` empties its directory of what the layers below put there.

use crate::ingest::Ingest;
use crate::tree::{Node, NodeKind, Tree};
use crate::BuildError;
use std::collections::{BTreeMap, HashSet};
use std::io::{BufRead, BufReader, Read};
use tar::EntryType;
use thaw_core::{Metadata, Timestamp, Xattr};

/// Opens a possibly compressed tar stream.
pub fn open_stream<'a>(input: impl Read + 'a) -> Result<Box<dyn Read + 'a>, BuildError> {
    let mut r = BufReader::with_capacity(1 << 20, input);
    let head = r.fill_buf().map_err(|source| BuildError::Io {
        op: "read",
        path: "tar stream".into(),
        source,
    })?;
    Ok(if head.starts_with(&[0x1f, 0x8b]) {
        Box::new(flate2::read::MultiGzDecoder::new(r))
    } else if head.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
        Box::new(
            zstd::stream::read::Decoder::with_buffer(r).map_err(|source| BuildError::Io {
                op: "open zstd stream",
                path: "tar stream".into(),
                source,
            })?,
        )
    } else {
        Box::new(r)
    })
}

/// Splits an archive path into safe components. The empty path (or `.`, `./`) is the root.
/// With whiteouts applied, a last component `.wh.NAME` may exceed 255 bytes by its prefix:
/// it creates nothing, and the name it hides is what must fit.
fn components(raw: &[u8], shown: &str, whiteouts: Whiteouts) -> Result<Vec<Vec<u8>>, BuildError> {
    if raw.first() == Some(&b'/') {
        return Err(BuildError::UnsafePath {
            path: shown.to_string(),
            reason: "absolute path",
        });
    }
    let parts: Vec<&[u8]> = raw
        .split(|&b| b == b'/')
        .filter(|c| !c.is_empty() && *c != b".")
        .collect();
    let mut out = Vec::new();
    for (i, &c) in parts.iter().enumerate() {
        let hides_a_name_that_fits = whiteouts == Whiteouts::Apply
            && i + 1 == parts.len()
            && c.starts_with(WHITEOUT_PREFIX)
            && c.len() - WHITEOUT_PREFIX.len() <= 255;
        match c {
            b".." => {
                return Err(BuildError::UnsafePath {
                    path: shown.to_string(),
                    reason: "'..' component",
                })
            }
            c if c.contains(&0) => {
                return Err(BuildError::UnsafePath {
                    path: shown.to_string(),
                    reason: "NUL in name",
                })
            }
            c if c.len() > 255 && !hides_a_name_that_fits => {
                return Err(BuildError::UnsafePath {
                    path: shown.to_string(),
                    reason: "name longer than 255 bytes",
                })
            }
            c => out.push(c.to_vec()),
        }
    }
    Ok(out)
}

pub(crate) fn pax_time(v: &str) -> Option<Timestamp> {
    let (s, frac) = v.split_once('.').unwrap_or((v, ""));
    let sec: i64 = s.parse().ok()?;
    let digits: String = frac.chars().take(9).collect();
    let nsec = if digits.is_empty() {
        0
    } else {
        digits.parse::<u32>().ok()? * 10u32.pow(9 - digits.len() as u32)
    };
    // A negative time with a fraction counts back from the whole second ("-0.5" too).
    if s.starts_with('-') && nsec > 0 {
        return Some(Timestamp {
            sec: sec - 1,
            nsec: 1_000_000_000 - nsec,
        });
    }
    Some(Timestamp { sec, nsec })
}

/// Whether `.wh.` entries are whiteouts (image layers) or plain files (a tar archive).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Whiteouts {
    Ignore,
    Apply,
}

const WHITEOUT_PREFIX: &[u8] = b".wh.";
const OPAQUE_WHITEOUT: &[u8] = b".wh..wh..opq";

pub fn build_tree(input: impl Read, ingest: &Ingest<'_>) -> Result<Tree, BuildError> {
    let mut tree = Tree::new(crate::tree::dir_meta_default());
    apply_layer(&mut tree, input, ingest, Whiteouts::Ignore)?;
    Ok(tree)
}

fn tar_err(entry: &str, e: &dyn std::fmt::Display) -> BuildError {
    BuildError::Tar {
        entry: entry.to_string(),
        reason: e.to_string(),
    }
}

/// Entries a layer put in place, by (directory, name): whiteouts hide only what the layers
/// below put there.
type Added = HashSet<(usize, Vec<u8>)>;

/// Applies one tar stream over `tree`.
pub fn apply_layer(
    tree: &mut Tree,
    input: impl Read,
    ingest: &Ingest<'_>,
    whiteouts: Whiteouts,
) -> Result<(), BuildError> {
    let mut archive = tar::Archive::new(open_stream(input)?);
    let mut added = Added::new();
    let entries = archive.entries().map_err(|e| tar_err("(archive)", &e))?;
    let mut last = String::from("(start of archive)");
    for entry in entries {
        let mut entry = entry.map_err(|e| tar_err(&format!("after {last}"), &e))?;
        let raw_path = entry.path_bytes().into_owned();
        let shown = String::from_utf8_lossy(&raw_path).into_owned();
        last = shown.clone();
        let kind = entry.header().entry_type();
        if matches!(kind, EntryType::XGlobalHeader) {
            continue;
        }
        let meta = entry_meta(&mut entry, &shown)?;
        let comps = components(&raw_path, &shown, whiteouts)?;
        let Some(name) = comps.last().cloned() else {
            if kind.is_dir() {
                tree.set_meta(0, meta);
                continue;
            }
            return Err(BuildError::UnsafePath {
                path: shown,
                reason: "a non-directory at the archive root",
            });
        };
        if whiteouts == Whiteouts::Apply && name.starts_with(WHITEOUT_PREFIX) {
            apply_whiteout(tree, &comps, &name, &shown, &added);
            continue;
        }
        let parent = tree.parent_of(&comps, &shown, true)?;
        if whiteouts == Whiteouts::Apply {
            added.insert((parent, name.clone()));
        }
        let at = Place {
            parent,
            name: &name,
            shown: &shown,
        };
        if let Some(kind) = node_kind(tree, &mut entry, ingest, &at, &meta)? {
            tree.add(parent, name, Node { meta, kind });
        }
    }
    Ok(())
}

/// Where an entry goes: its directory, its name, and its path as shown in errors.
struct Place<'a> {
    parent: usize,
    name: &'a [u8],
    shown: &'a str,
}

/// An entry's metadata from its header and pax extensions (xattrs, precise mtime, large
/// uid and gid).
fn entry_meta<R: Read>(entry: &mut tar::Entry<'_, R>, shown: &str) -> Result<Metadata, BuildError> {
    let header = entry.header();
    let err = |e: &dyn std::fmt::Display| tar_err(shown, e);
    let mut meta = Metadata {
        mode: header.mode().map_err(|e| err(&e))? & 0o7777,
        uid: header.uid().map_err(|e| err(&e))? as u32,
        gid: header.gid().map_err(|e| err(&e))? as u32,
        mtime: Timestamp {
            sec: header.mtime().map_err(|e| err(&e))? as i64,
            nsec: 0,
        },
        xattrs: vec![],
    };
    let Some(pax) = entry.pax_extensions().map_err(|e| err(&e))? else {
        return Ok(meta);
    };
    for ext in pax {
        let ext = ext.map_err(|e| err(&e))?;
        let key = ext.key_bytes();
        if let Some(name) = key.strip_prefix(b"SCHILY.xattr.") {
            let value = ext.value_bytes().to_vec();
            meta.xattrs.push(Xattr {
                name: name.to_vec(),
                value,
            });
        } else if key == b"mtime" {
            meta.mtime = ext
                .value()
                .ok()
                .and_then(pax_time)
                .ok_or_else(|| err(&"bad pax mtime"))?;
        } else if key == b"uid" || key == b"gid" {
            let v: u32 = ext
                .value()
                .ok()
                .and_then(|v| v.parse().ok())
                .ok_or_else(|| err(&"bad pax uid/gid"))?;
            if key == b"uid" {
                meta.uid = v;
            } else {
                meta.gid = v;
            }
        }
    }
    meta.xattrs.sort_by(|a, b| a.name.cmp(&b.name));
    meta.xattrs.dedup_by(|a, b| a.name == b.name);
    Ok(meta)
}

/// An OCI whiteout: `.wh..wh..opq` empties its directory of lower entries, `.wh.NAME`
/// hides a lower `NAME`; neither touches what this layer added. A whiteout in a directory
/// no layer below has hides nothing.
fn apply_whiteout(tree: &mut Tree, comps: &[Vec<u8>], name: &[u8], shown: &str, added: &Added) {
    let Ok(parent) = tree.parent_of(comps, shown, false) else {
        return;
    };
    if name == OPAQUE_WHITEOUT {
        tree.retain(parent, |n| added.contains(&(parent, n.to_vec())));
    } else {
        let hidden = &name[WHITEOUT_PREFIX.len()..];
        if !added.contains(&(parent, hidden.to_vec())) {
            tree.unlink(parent, hidden);
        }
    }
}

/// What an entry becomes; `None` when it is already applied (an existing directory's new
/// metadata, a hard link).
fn node_kind<R: Read>(
    tree: &mut Tree,
    entry: &mut tar::Entry<'_, R>,
    ingest: &Ingest<'_>,
    at: &Place<'_>,
    meta: &Metadata,
) -> Result<Option<NodeKind>, BuildError> {
    let shown = at.shown;
    let header = entry.header().clone();
    let rdev = || -> Result<u64, BuildError> {
        let major = header
            .device_major()
            .map_err(|e| tar_err(shown, &e))?
            .unwrap_or(0);
        let minor = header
            .device_minor()
            .map_err(|e| tar_err(shown, &e))?
            .unwrap_or(0);
        Ok(libc::makedev(major, minor))
    };
    let kind = match header.entry_type() {
        EntryType::Directory => {
            if let Some(existing) = tree.child(at.parent, at.name).filter(|&c| tree.is_dir(c)) {
                tree.set_meta(existing, meta.clone());
                return Ok(None);
            }
            NodeKind::Dir(BTreeMap::new())
        }
        EntryType::Regular | EntryType::Continuous | EntryType::GNUSparse => {
            let declared = entry.size();
            let (size, extents) = ingest.file(entry, declared, shown)?;
            if size != declared {
                return Err(tar_err(
                    shown,
                    &format!("truncated: {size} of {declared} bytes"),
                ));
            }
            NodeKind::File { size, extents }
        }
        EntryType::Symlink => {
            let target = entry
                .link_name_bytes()
                .ok_or_else(|| tar_err(shown, &"symlink without target"))?
                .into_owned();
            if target.is_empty() || target.contains(&0) {
                return Err(tar_err(shown, &"empty symlink target"));
            }
            NodeKind::Symlink(target)
        }
        EntryType::Link => {
            hard_link(tree, entry, at)?;
            return Ok(None);
        }
        EntryType::Char => NodeKind::CharDevice(rdev()?),
        EntryType::Block => NodeKind::BlockDevice(rdev()?),
        EntryType::Fifo => NodeKind::Fifo,
        other => {
            return Err(BuildError::Unsupported {
                path: shown.to_string(),
                kind: format!("tar entry type {other:?}"),
            })
        }
    };
    Ok(Some(kind))
}

/// A hard link must name an earlier non-directory entry inside the archive.
fn hard_link<R: Read>(
    tree: &mut Tree,
    entry: &tar::Entry<'_, R>,
    at: &Place<'_>,
) -> Result<(), BuildError> {
    let raw_target = entry
        .link_name_bytes()
        .ok_or_else(|| tar_err(at.shown, &"hard link without target"))?
        .into_owned();
    let target_shown = String::from_utf8_lossy(&raw_target).into_owned();
    let hl = |reason| BuildError::HardLink {
        path: at.shown.to_string(),
        target: target_shown.clone(),
        reason,
    };
    let target_comps = components(&raw_target, &target_shown, Whiteouts::Ignore)
        .map_err(|_| hl("target is absolute or escapes the archive"))?;
    let target = tree
        .lookup(&target_comps)
        .ok_or_else(|| hl("target does not exist (yet) in the archive"))?;
    if tree.is_dir(target) {
        return Err(hl("target is a directory"));
    }
    tree.link(at.parent, at.name.to_vec(), target);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn path_components() {
        assert_eq!(
            components(b"./a//b/", "", Whiteouts::Ignore).unwrap(),
            vec![b"a".to_vec(), b"b".to_vec()]
        );
        assert!(components(b"", "", Whiteouts::Ignore).unwrap().is_empty());
        assert!(components(b"/etc/passwd", "", Whiteouts::Ignore).is_err());
        assert!(components(b"a/../../b", "", Whiteouts::Ignore).is_err());
        // A whiteout of a 252- to 255-byte name is longer than a name may be, and valid.
        for len in [252usize, 255] {
            let whiteout = [b"d/.wh.".as_slice(), &vec![b'n'; len]].concat();
            assert_eq!(
                components(&whiteout, "", Whiteouts::Apply).unwrap().len(),
                2
            );
            assert!(
                components(&whiteout, "", Whiteouts::Ignore).is_err(),
                "a plain file"
            );
        }
        let too_long = [b".wh.".as_slice(), &[b'n'; 256]].concat();
        assert!(components(&too_long, "", Whiteouts::Apply).is_err());
        let not_last = [b".wh.".as_slice(), &[b'n'; 252], b"/x"].concat();
        assert!(components(&not_last, "", Whiteouts::Apply).is_err());
    }

    #[test]
    fn pax_times() {
        assert_eq!(
            pax_time("1700000000.5"),
            Some(Timestamp {
                sec: 1_700_000_000,
                nsec: 500_000_000
            })
        );
        assert_eq!(pax_time("12"), Some(Timestamp { sec: 12, nsec: 0 }));
        assert_eq!(
            pax_time("-1.25"),
            Some(Timestamp {
                sec: -2,
                nsec: 750_000_000
            })
        );
        assert_eq!(
            pax_time("-0.25"),
            Some(Timestamp {
                sec: -1,
                nsec: 750_000_000
            })
        );
        assert_eq!(pax_time("x"), None);
    }
}
