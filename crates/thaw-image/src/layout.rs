//! Where an image's files (an OCI layout's `index.json` and blobs, a `docker save`
//! archive's `manifest.json` and layers) are read from: a directory, or an uncompressed tar
//! archive indexed once and read in place (no extraction, so a multi-gigabyte archive
//! costs no second copy on disk).

use crate::BuildError;
use std::collections::HashMap;
use std::fs::File;
use std::io::Read;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

/// Files of an image source, by path relative to its top (`index.json`, `blobs/sha256/..`).
pub trait LayoutFiles {
    /// What the source is, for error messages: its path, and `(archive)` for an archive.
    fn describe(&self) -> String;
    /// Whether the file exists.
    fn exists(&self, rel: &str) -> bool;
    /// Opens a file for reading from its start.
    fn open(&self, rel: &str) -> Result<Box<dyn Read + '_>, BuildError>;
}

/// A layout in a directory.
#[derive(Debug)]
pub struct DirFiles(pub PathBuf);

impl LayoutFiles for DirFiles {
    fn describe(&self) -> String {
        self.0.display().to_string()
    }

    fn exists(&self, rel: &str) -> bool {
        self.0.join(rel).is_file()
    }

    fn open(&self, rel: &str) -> Result<Box<dyn Read + '_>, BuildError> {
        let path = self.0.join(rel);
        let file = File::open(&path).map_err(crate::error::io_err("open", &path))?;
        Ok(Box::new(file))
    }
}

/// The regular files of a tar archive, by normalised path: where each one's data starts in
/// the archive and how long it is. Later entries of the same path win, as `tar -x` does.
#[derive(Debug)]
pub struct ArchiveFiles {
    path: PathBuf,
    file: File,
    entries: HashMap<String, (u64, u64)>,
}

/// Archives with more entries than this are not image archives (they hold a few per layer).
const MAX_ARCHIVE_ENTRIES: usize = 1 << 20;

impl ArchiveFiles {
    /// Indexes the archive at `path` (one pass over its headers, skipping file data).
    pub fn open(path: &Path) -> Result<Self, BuildError> {
        let file = File::open(path).map_err(crate::error::io_err("open", path))?;
        let mut magic = [0u8; 4];
        let n = file
            .read_at(&mut magic, 0)
            .map_err(crate::error::io_err("read", path))?;
        if magic[..n].starts_with(&[0x1f, 0x8b]) || magic[..n].starts_with(&[0x28, 0xb5]) {
            return Err(archive_err(
                path,
                "the archive is compressed: decompress it first (docker save writes a plain tar)",
            ));
        }
        let reader = file
            .try_clone()
            .map_err(crate::error::io_err("open", path))?;
        let mut archive = tar::Archive::new(reader);
        let mut entries = HashMap::new();
        let iter = archive
            .entries_with_seek()
            .map_err(|e| archive_err(path, &e.to_string()))?;
        for entry in iter {
            let entry = entry.map_err(|e| archive_err(path, &e.to_string()))?;
            if entries.len() >= MAX_ARCHIVE_ENTRIES {
                return Err(archive_err(path, "too many entries for an image archive"));
            }
            if !entry.header().entry_type().is_file() {
                continue;
            }
            let name = String::from_utf8_lossy(&entry.path_bytes()).into_owned();
            let size = entry.size();
            entries.insert(normalise(&name), (entry.raw_file_position(), size));
        }
        Ok(ArchiveFiles {
            path: path.to_path_buf(),
            file,
            entries,
        })
    }
}

/// `./a//b` and `a/b` name the same entry.
fn normalise(name: &str) -> String {
    name.split('/')
        .filter(|c| !c.is_empty() && *c != ".")
        .collect::<Vec<_>>()
        .join("/")
}

fn archive_err(path: &Path, reason: &str) -> BuildError {
    BuildError::Oci {
        layout: path.display().to_string(),
        reason: reason.to_string(),
    }
}

impl LayoutFiles for ArchiveFiles {
    fn describe(&self) -> String {
        format!("{} (archive)", self.path.display())
    }

    fn exists(&self, rel: &str) -> bool {
        self.entries.contains_key(&normalise(rel))
    }

    fn open(&self, rel: &str) -> Result<Box<dyn Read + '_>, BuildError> {
        let &(start, len) = self.entries.get(&normalise(rel)).ok_or_else(|| {
            archive_err(&self.path, &format!("the archive holds no file {rel:?}"))
        })?;
        Ok(Box::new(Slice {
            file: &self.file,
            pos: start,
            end: start + len,
        }))
    }
}

/// One file's bytes inside the archive, read with positioned reads (no shared cursor).
struct Slice<'a> {
    file: &'a File,
    pos: u64,
    end: u64,
}

impl Read for Slice<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let left = self.end.saturating_sub(self.pos);
        let want = buf.len().min(usize::try_from(left).unwrap_or(usize::MAX));
        if want == 0 {
            return Ok(0);
        }
        let n = self.file.read_at(&mut buf[..want], self.pos)?;
        if n == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        self.pos += n as u64;
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_archive_serves_its_files_in_place_and_later_entries_win() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.tar");
        let mut b = tar::Builder::new(File::create(&path).unwrap());
        for (name, data) in [
            ("./x/one", &b"first"[..]),
            ("two", b"22"),
            ("x/one", b"second"),
        ] {
            let mut h = tar::Header::new_gnu();
            h.set_size(data.len() as u64);
            h.set_mode(0o644);
            h.set_cksum();
            b.append_data(&mut h, name, data).unwrap();
        }
        b.finish().unwrap();
        drop(b);
        let files = ArchiveFiles::open(&path).unwrap();
        let read = |rel: &str| {
            let mut s = String::new();
            files.open(rel).unwrap().read_to_string(&mut s).unwrap();
            s
        };
        assert_eq!(read("x/one"), "second");
        assert_eq!(read("./two"), "22");
        assert!(files.exists("two") && !files.exists("three"));
        assert!(files.open("three").is_err());
    }

    #[test]
    fn a_compressed_archive_is_refused_with_a_reason() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.tar.gz");
        std::fs::write(&path, [0x1f, 0x8b, 8, 0]).unwrap();
        let err = ArchiveFiles::open(&path).unwrap_err();
        assert!(err.to_string().contains("compressed"), "{err}");
    }
}
