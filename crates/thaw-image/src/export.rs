//! Materializes an image as a directory tree, exactly: contents (with holes for zero
//! runs), types, modes, owners, mtimes, xattrs, symlinks, hard links and devices.

use crate::sys;
use crate::ExportError;
use futures::{stream, StreamExt, TryStreamExt};
use std::fs::{File, Permissions};
use std::io::{Seek, SeekFrom, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use thaw_core::{ChunkId, InodeKind, Manifest, Metadata};
use thaw_store::ChunkReader;

/// Chunks read per batch: neighbours in a pack are fetched with one request.
const BATCH_BYTES: u64 = 32 * 1024 * 1024;
/// Batches in flight.
const BATCHES_IN_FLIGHT: usize = 4;

#[derive(Debug, Default, Clone, Copy)]
/// What an export wrote.
pub struct ExportReport {
    /// Regular files.
    pub files: u64,
    /// Their bytes.
    pub bytes: u64,
    /// Inodes (hard links count once).
    pub inodes: u64,
}

fn io<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> ExportError + 'a {
    move |source| ExportError::Io {
        op,
        path: path.display().to_string(),
        source,
    }
}

/// One file's worth of work in a batch: where it goes and what it is made of.
struct FileJob {
    path: PathBuf,
    size: u64,
    extents: Vec<(u64, u64, Option<ChunkId>)>,
}

impl FileJob {
    /// Bytes of the file that come from chunks (zero runs need no fetch).
    fn chunk_bytes(&self) -> u64 {
        self.extents
            .iter()
            .filter(|e| e.2.is_some())
            .map(|e| e.1)
            .sum()
    }
}

/// Exports `manifest` into `dest`, which must be missing or an empty directory.
pub async fn export(
    reader: &Arc<ChunkReader>,
    manifest: &Manifest,
    dest: &Path,
) -> Result<ExportReport, ExportError> {
    prepare_destination(dest)?;
    let layout = Layout::of(manifest, dest);
    let (files, report) = create_entries(manifest, &layout)?;
    stream::iter(batches(files))
        .map(|batch| write_batch(reader, batch))
        .buffer_unordered(BATCHES_IN_FLIGHT)
        .try_collect::<Vec<()>>()
        .await?;
    for (path, ino) in &layout.links {
        std::fs::hard_link(layout.path_of(*ino)?, path).map_err(io("hard link", path))?;
    }
    // Metadata: non-directories now; directories last, children before parents, so
    // creating entries does not disturb a directory's mtime after it is set.
    let is_dir = |ino: u32| {
        matches!(
            manifest.inodes[ino as usize].kind,
            InodeKind::Directory { .. }
        )
    };
    for &ino in layout.order.iter().filter(|&&i| !is_dir(i)) {
        let inode = &manifest.inodes[ino as usize];
        let symlink = matches!(inode.kind, InodeKind::Symlink { .. });
        apply_metadata(layout.path_of(ino)?, &inode.meta, symlink)?;
    }
    for &ino in layout.order.iter().rev().filter(|&&i| is_dir(i)) {
        apply_metadata(
            layout.path_of(ino)?,
            &manifest.inodes[ino as usize].meta,
            false,
        )?;
    }
    Ok(report)
}

/// Creates `dest`, or checks that it is an empty directory.
fn prepare_destination(dest: &Path) -> Result<(), ExportError> {
    match std::fs::read_dir(dest) {
        Ok(mut d) => match d.next() {
            Some(_) => Err(ExportError::DestinationNotEmpty(dest.display().to_string())),
            None => Ok(()),
        },
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            std::fs::create_dir_all(dest).map_err(io("create", dest))
        }
        Err(e) => Err(io("open", dest)(e)),
    }
}

/// Where each inode goes: its first name in depth-first pre-order; later names are hard
/// links to it.
struct Layout {
    first: Vec<Option<PathBuf>>,
    links: Vec<(PathBuf, u32)>,
    order: Vec<u32>,
}

impl Layout {
    fn of(manifest: &Manifest, dest: &Path) -> Self {
        let mut layout = Layout {
            first: vec![None; manifest.inodes.len()],
            links: Vec::new(),
            order: Vec::new(),
        };
        manifest.walk(|path, ino| {
            let mut p = dest.to_path_buf();
            for c in path {
                p.push(std::ffi::OsStr::from_bytes(c));
            }
            match layout.first.get_mut(ino as usize) {
                Some(slot @ None) => {
                    *slot = Some(p);
                    layout.order.push(ino);
                }
                _ => layout.links.push((p, ino)),
            }
        });
        layout
    }

    fn path_of(&self, ino: u32) -> Result<&Path, ExportError> {
        self.first
            .get(ino as usize)
            .and_then(Option::as_deref)
            .ok_or_else(|| {
                ExportError::Internal(format!("inode {ino} is not reachable from the root"))
            })
    }
}

/// Creates every entry but the root: directories (writable for now), symlinks, devices,
/// fifos and sockets; returns the regular files to write, and the report.
fn create_entries(
    manifest: &Manifest,
    layout: &Layout,
) -> Result<(Vec<FileJob>, ExportReport), ExportError> {
    let mut files: Vec<FileJob> = Vec::new();
    let mut report = ExportReport {
        inodes: layout.order.len() as u64,
        ..Default::default()
    };
    for &ino in layout.order.iter().skip(1) {
        let path = layout.path_of(ino)?;
        let node = |mode, rdev, what| sys::mknod(path, mode | 0o600, rdev).map_err(io(what, path));
        match &manifest.inodes[ino as usize].kind {
            InodeKind::Directory { .. } => {
                std::fs::create_dir(path).map_err(io("create directory", path))?
            }
            InodeKind::File { size, .. } => {
                let extents = manifest
                    .file_extents(ino)
                    .into_iter()
                    .map(|e| (e.offset, e.len, e.chunk))
                    .collect();
                files.push(FileJob {
                    path: path.to_path_buf(),
                    size: *size,
                    extents,
                });
                report.files += 1;
                report.bytes += size;
            }
            InodeKind::Symlink { target } => {
                std::os::unix::fs::symlink(std::ffi::OsStr::from_bytes(target), path)
                    .map_err(io("create symlink", path))?
            }
            InodeKind::CharDevice { rdev } => node(libc::S_IFCHR, *rdev, "mknod")?,
            InodeKind::BlockDevice { rdev } => node(libc::S_IFBLK, *rdev, "mknod")?,
            InodeKind::Fifo => node(libc::S_IFIFO, 0, "mkfifo")?,
            InodeKind::Socket => node(libc::S_IFSOCK, 0, "mknod socket")?,
        }
    }
    Ok((files, report))
}

/// Groups files into batches of about [`BATCH_BYTES`] of neighbouring chunks.
fn batches(files: Vec<FileJob>) -> Vec<Vec<FileJob>> {
    let mut batches = Vec::new();
    let mut batch: Vec<FileJob> = Vec::new();
    let mut batch_bytes = 0u64;
    for job in files {
        let chunk_bytes = job.chunk_bytes();
        if batch_bytes + chunk_bytes > BATCH_BYTES && !batch.is_empty() {
            batches.push(std::mem::take(&mut batch));
            batch_bytes = 0;
        }
        batch_bytes += chunk_bytes;
        batch.push(job);
    }
    batches.push(batch);
    batches
}

/// Writes the files of one batch. Large files are split into several reads so a batch
/// never holds more than about `BATCH_BYTES` of chunks.
async fn write_batch(reader: &Arc<ChunkReader>, batch: Vec<FileJob>) -> Result<(), ExportError> {
    let mut ids: Vec<ChunkId> = Vec::new();
    let mut pending: Vec<FileJob> = Vec::new();
    for job in batch {
        if job.chunk_bytes() > BATCH_BYTES {
            write_large(reader, job).await?;
            continue;
        }
        ids.extend(job.extents.iter().filter_map(|e| e.2));
        pending.push(job);
    }
    let data = reader.read_many(&ids).await.map_err(ExportError::Chunk)?;
    tokio::task::spawn_blocking(move || {
        let mut chunks = data.into_iter();
        for job in pending {
            let mut f = File::create(&job.path).map_err(io("create", &job.path))?;
            for (offset, len, chunk) in &job.extents {
                match chunk {
                    Some(_) => {
                        let data = chunks.next().ok_or_else(|| {
                            ExportError::Internal(
                                "the reader returned fewer chunks than asked".into(),
                            )
                        })?;
                        f.write_all(&data).map_err(io("write", &job.path))?;
                    }
                    None => {
                        f.seek(SeekFrom::Start(offset + len))
                            .map_err(io("seek", &job.path))?;
                    }
                }
            }
            f.set_len(job.size).map_err(io("truncate", &job.path))?;
        }
        Ok(())
    })
    .await
    .map_err(|e| ExportError::Internal(e.to_string()))?
}

async fn write_large(reader: &Arc<ChunkReader>, job: FileJob) -> Result<(), ExportError> {
    let path = job.path.clone();
    let mut f = File::create(&path).map_err(io("create", &path))?;
    let mut group: Vec<(u64, ChunkId)> = Vec::new();
    let mut group_bytes = 0u64;
    for (offset, len, chunk) in &job.extents {
        if let Some(id) = chunk {
            group.push((*offset, *id));
            group_bytes += len;
            if group_bytes >= BATCH_BYTES {
                write_group(reader, &mut f, &path, std::mem::take(&mut group)).await?;
                group_bytes = 0;
            }
        }
    }
    write_group(reader, &mut f, &path, group).await?;
    f.set_len(job.size).map_err(io("truncate", &path))?;
    Ok(())
}

async fn write_group(
    reader: &Arc<ChunkReader>,
    f: &mut File,
    path: &Path,
    group: Vec<(u64, ChunkId)>,
) -> Result<(), ExportError> {
    let ids: Vec<ChunkId> = group.iter().map(|g| g.1).collect();
    let data = reader.read_many(&ids).await.map_err(ExportError::Chunk)?;
    for ((offset, _), d) in group.iter().zip(data) {
        f.seek(SeekFrom::Start(*offset)).map_err(io("seek", path))?;
        f.write_all(&d).map_err(io("write", path))?;
    }
    Ok(())
}

fn apply_metadata(path: &Path, meta: &Metadata, is_symlink: bool) -> Result<(), ExportError> {
    std::os::unix::fs::lchown(path, Some(meta.uid), Some(meta.gid)).map_err(io("chown", path))?;
    for x in &meta.xattrs {
        xattr::set(path, std::ffi::OsStr::from_bytes(&x.name), &x.value)
            .map_err(io("set xattr on", path))?;
    }
    // After chown, which clears setuid and setgid bits.
    if !is_symlink {
        std::fs::set_permissions(path, Permissions::from_mode(meta.mode))
            .map_err(io("chmod", path))?;
    }
    sys::set_times_nofollow(path, meta.mtime).map_err(io("set times on", path))?;
    Ok(())
}
