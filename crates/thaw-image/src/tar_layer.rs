//! An image as one uncompressed tar layer, written the same way every time from its
//! manifest alone, so its digest (the layer's `diff_id`) names the image's tree and
//! `thaw export --tar` gives back exactly the blob containerd was told about.
//!
//! Entries come in the manifest's depth-first order: the root as `./`, then every name;
//! an inode met again is a hard link to its first name. Precise times and extended
//! attributes go in pax headers, as thaw's tar reader (and containerd's) read them.

use crate::ExportError;
use sha2::{Digest, Sha256};
use std::io::{Read, Write};
use std::sync::Arc;
use tar::{EntryType, Header};
use thaw_core::{ChunkId, Inode, InodeKind, Manifest, Metadata, Timestamp};
use thaw_store::ChunkReader;

/// Chunk bytes fetched per request while a file's content streams into the tar.
const FETCH_BYTES: u64 = 16 * 1024 * 1024;

/// What writing a layer produced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LayerTar {
    /// Bytes written.
    pub size: u64,
    /// Their sha256, as `sha256:HEX`: the layer's `diff_id`.
    pub digest: String,
}

/// Writes `manifest`'s tree as a tar stream into `out`, reading file content through
/// `reader` (every chunk verified), and returns its size and digest with `out`.
pub async fn write_layer_tar<W: Write + Send + 'static>(
    reader: Arc<ChunkReader>,
    manifest: Arc<Manifest>,
    out: W,
) -> Result<(LayerTar, W), ExportError> {
    let runtime = tokio::runtime::Handle::current();
    tokio::task::spawn_blocking(move || {
        let mut builder = tar::Builder::new(Hashing::new(out));
        let mut writer = EntryWriter {
            builder: &mut builder,
            reader: &reader,
            runtime: &runtime,
        };
        writer.write_all(&manifest)?;
        let hashing = builder.into_inner().map_err(tar_io)?;
        Ok(hashing.finish())
    })
    .await
    .map_err(|e| ExportError::Internal(e.to_string()))?
}

/// Writes entries into the tar builder.
struct EntryWriter<'a, W: Write> {
    builder: &'a mut tar::Builder<Hashing<W>>,
    reader: &'a Arc<ChunkReader>,
    runtime: &'a tokio::runtime::Handle,
}

impl<W: Write> EntryWriter<'_, W> {
    /// Every entry, in depth-first order.
    fn write_all(&mut self, manifest: &Manifest) -> Result<(), ExportError> {
        let mut first_path: Vec<Option<Vec<u8>>> = vec![None; manifest.inodes.len()];
        let mut entries: Vec<(Vec<u8>, u32)> = Vec::new();
        manifest.walk(|path, ino| {
            let mut name = b"./".to_vec();
            name.extend(path.join(&b'/'));
            entries.push((name, ino));
        });
        for (name, ino) in entries {
            let inode = manifest.inode(ino).ok_or_else(|| {
                ExportError::Internal(format!("inode {ino} is missing from the manifest"))
            })?;
            let is_dir = matches!(inode.kind, InodeKind::Directory { .. });
            let name = match is_dir && name != b"./" {
                true => [name.as_slice(), b"/"].concat(),
                false => name,
            };
            match first_path.get_mut(ino as usize) {
                Some(Some(target)) if !is_dir => {
                    let target = target.clone();
                    self.hard_link(&name, &target, &inode.meta)?;
                }
                Some(slot) => {
                    *slot = Some(name.clone());
                    self.entry(manifest, ino, inode, &name)?;
                }
                None => {}
            }
        }
        Ok(())
    }

    /// One inode's first name.
    fn entry(
        &mut self,
        manifest: &Manifest,
        ino: u32,
        inode: &Inode,
        name: &[u8],
    ) -> Result<(), ExportError> {
        let mut header = header_for(&inode.meta);
        self.pax(&inode.meta)?;
        let path = bytes_path(name);
        match &inode.kind {
            InodeKind::Directory { .. } => self.empty(header, EntryType::Directory, path),
            InodeKind::File { size, .. } => {
                header.set_entry_type(EntryType::Regular);
                header.set_size(*size);
                let content = FileContent::new(manifest, ino, self.reader, self.runtime);
                self.builder
                    .append_data(&mut header, path, content)
                    .map_err(tar_io)
            }
            InodeKind::Symlink { target } => {
                header.set_entry_type(EntryType::Symlink);
                self.builder
                    .append_link(&mut header, path, bytes_path(target))
                    .map_err(tar_io)
            }
            InodeKind::CharDevice { rdev } | InodeKind::BlockDevice { rdev } => {
                let kind = match inode.kind {
                    InodeKind::CharDevice { .. } => EntryType::Char,
                    _ => EntryType::Block,
                };
                let (major, minor) = (libc::major(*rdev), libc::minor(*rdev));
                header.set_device_major(major).map_err(tar_io)?;
                header.set_device_minor(minor).map_err(tar_io)?;
                self.empty(header, kind, path)
            }
            InodeKind::Fifo => self.empty(header, EntryType::Fifo, path),
            // tar has no socket type; like GNU tar, the layer leaves sockets out (a
            // socket in an image is a leftover of a process that ran while it was made).
            InodeKind::Socket => Ok(()),
        }
    }

    /// An entry with no content.
    fn empty(
        &mut self,
        mut header: Header,
        kind: EntryType,
        path: &std::path::Path,
    ) -> Result<(), ExportError> {
        header.set_entry_type(kind);
        header.set_size(0);
        self.builder
            .append_data(&mut header, path, std::io::empty())
            .map_err(tar_io)
    }

    /// A later name of an inode already written.
    fn hard_link(
        &mut self,
        name: &[u8],
        target: &[u8],
        meta: &Metadata,
    ) -> Result<(), ExportError> {
        let mut header = header_for(meta);
        header.set_entry_type(EntryType::Link);
        header.set_size(0);
        self.builder
            .append_link(&mut header, bytes_path(name), bytes_path(target))
            .map_err(tar_io)
    }

    /// A pax header for what the plain header cannot hold: sub-second or negative times,
    /// and extended attributes.
    fn pax(&mut self, meta: &Metadata) -> Result<(), ExportError> {
        let mut records: Vec<(String, Vec<u8>)> = Vec::new();
        if meta.mtime.nsec != 0 || meta.mtime.sec < 0 {
            records.push(("mtime".into(), pax_time(meta.mtime).into_bytes()));
        }
        for x in &meta.xattrs {
            let name = String::from_utf8_lossy(&x.name);
            records.push((format!("SCHILY.xattr.{name}"), x.value.clone()));
        }
        if records.is_empty() {
            return Ok(());
        }
        self.builder
            .append_pax_extensions(records.iter().map(|(k, v)| (k.as_str(), v.as_slice())))
            .map_err(tar_io)
    }
}

/// A header with the metadata every entry carries.
fn header_for(meta: &Metadata) -> Header {
    let mut header = Header::new_gnu();
    header.set_mode(meta.mode & 0o7777);
    header.set_uid(u64::from(meta.uid));
    header.set_gid(u64::from(meta.gid));
    header.set_mtime(u64::try_from(meta.mtime.sec).unwrap_or(0));
    header.set_size(0);
    header
}

/// A time as pax writes it: seconds, a point and nine digits; a negative time counts
/// back from zero (the reader's convention).
fn pax_time(t: Timestamp) -> String {
    if t.sec < 0 && t.nsec > 0 {
        format!("-{}.{:09}", -(t.sec + 1), 1_000_000_000 - t.nsec)
    } else {
        format!("{}.{:09}", t.sec, t.nsec)
    }
}

fn bytes_path(bytes: &[u8]) -> &std::path::Path {
    std::path::Path::new(<std::ffi::OsStr as std::os::unix::ffi::OsStrExt>::from_bytes(bytes))
}

fn tar_io(source: std::io::Error) -> ExportError {
    ExportError::Io {
        op: "write tar",
        path: "layer".into(),
        source,
    }
}

/// A file's bytes as a reader: zero runs, and chunks fetched a batch at a time.
struct FileContent<'a> {
    extents: std::collections::VecDeque<(u64, Option<ChunkId>)>,
    ready: std::collections::VecDeque<bytes::Bytes>,
    zeros: u64,
    reader: &'a Arc<ChunkReader>,
    runtime: &'a tokio::runtime::Handle,
}

impl<'a> FileContent<'a> {
    fn new(
        manifest: &Manifest,
        ino: u32,
        reader: &'a Arc<ChunkReader>,
        runtime: &'a tokio::runtime::Handle,
    ) -> Self {
        FileContent {
            extents: manifest
                .file_extents(ino)
                .into_iter()
                .map(|e| (e.len, e.chunk))
                .collect(),
            ready: Default::default(),
            zeros: 0,
            reader,
            runtime,
        }
    }

    /// Fetches the next run of chunks, up to [`FETCH_BYTES`], or sets up the next zero run.
    fn refill(&mut self) -> std::io::Result<bool> {
        let mut ids = Vec::new();
        let mut bytes = 0;
        while let Some(&(len, chunk)) = self.extents.front() {
            match chunk {
                Some(id) if ids.is_empty() || bytes + len <= FETCH_BYTES => {
                    ids.push(id);
                    bytes += len;
                    self.extents.pop_front();
                }
                None if ids.is_empty() => {
                    self.zeros = len;
                    self.extents.pop_front();
                    return Ok(true);
                }
                _ => break,
            }
        }
        if ids.is_empty() {
            return Ok(false);
        }
        let chunks = self
            .runtime
            .block_on(self.reader.read_many(&ids))
            .map_err(std::io::Error::other)?;
        self.ready.extend(chunks);
        Ok(true)
    }
}

impl Read for FileContent<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        loop {
            if self.zeros > 0 {
                let n = buf
                    .len()
                    .min(usize::try_from(self.zeros).unwrap_or(usize::MAX));
                buf[..n].fill(0);
                self.zeros -= n as u64;
                return Ok(n);
            }
            if let Some(front) = self.ready.front_mut() {
                let n = buf.len().min(front.len());
                buf[..n].copy_from_slice(&front[..n]);
                bytes::Buf::advance(front, n);
                if front.is_empty() {
                    self.ready.pop_front();
                }
                return Ok(n);
            }
            if !self.refill()? {
                return Ok(0);
            }
        }
    }
}

/// A writer that hashes and counts what passes through.
struct Hashing<W> {
    inner: W,
    hasher: Sha256,
    size: u64,
}

impl<W: Write> Hashing<W> {
    fn new(inner: W) -> Self {
        Hashing {
            inner,
            hasher: Sha256::new(),
            size: 0,
        }
    }

    fn finish(self) -> (LayerTar, W) {
        let digest = format!("sha256:{}", hex::encode(self.hasher.finalize()));
        (
            LayerTar {
                size: self.size,
                digest,
            },
            self.inner,
        )
    }
}

impl<W: Write> Write for Hashing<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        self.size += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pax_times_read_back_as_written() {
        let cases = [
            (12, 0),
            (1_700_000_000, 500_000_000),
            (-2, 750_000_000),
            (-1, 1),
        ];
        for (sec, nsec) in cases {
            let t = Timestamp { sec, nsec };
            assert_eq!(crate::source_tar::pax_time(&pax_time(t)), Some(t), "{t:?}");
        }
    }
}
