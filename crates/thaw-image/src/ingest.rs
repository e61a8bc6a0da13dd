//! Turns file contents into extents: cut, hash, drop all-zero chunks, and hand new
//! chunks to the pack writer.

use crate::tree::ExtentRef;
use crate::BuildError;
use bytes::Bytes;
use std::io::Read;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use thaw_core::chunker::{cut_ranges, Chunker};
use thaw_core::{ChunkId, ChunkerConfig};
use thaw_store::PackWriter;

/// Files up to this size are read whole and cut in memory; larger ones are streamed.
pub const IN_MEMORY_LIMIT: u64 = 32 * 1024 * 1024;

/// Shared by the sources while building.
#[derive(Debug)]
pub struct Ingest<'a> {
    pub writer: &'a PackWriter,
    pub chunker: ChunkerConfig,
    /// File content bytes read so far (also the progress counter).
    pub bytes_read: Arc<AtomicU64>,
    /// The layers applied so far, for a layered source.
    pub(crate) layers: crate::layers::LayerLog,
}

fn is_zero(data: &[u8]) -> bool {
    // Eight bytes at a time (the compiler vectorises this); the tail byte by byte.
    let words = data.chunks_exact(8);
    let tail = words.remainder();
    words
        .map(|w| {
            let mut word = [0u8; 8];
            word.copy_from_slice(w);
            u64::from_ne_bytes(word)
        })
        .all(|w| w == 0)
        && tail.iter().all(|&b| b == 0)
}

impl Ingest<'_> {
    fn chunk(&self, data: Bytes, out: &mut Vec<ExtentRef>) -> Result<(), BuildError> {
        if is_zero(&data) {
            out.push(ExtentRef::Zero(data.len() as u64));
            return Ok(());
        }
        let id = ChunkId::of(&data);
        let len = data.len() as u32;
        self.writer.add(id, data)?;
        out.push(ExtentRef::Chunk(id, len));
        Ok(())
    }

    /// Reads a file's contents (`size` is the size the source declares) and returns
    /// its size and extents. `what` names the file in errors.
    pub fn file(
        &self,
        mut reader: impl Read,
        size: u64,
        what: &str,
    ) -> Result<(u64, Vec<ExtentRef>), BuildError> {
        let io = |source| BuildError::Io {
            op: "read",
            path: what.to_string(),
            source,
        };
        let mut extents = Vec::new();
        let mut total = 0u64;
        if size <= IN_MEMORY_LIMIT {
            let mut buf = Vec::with_capacity(size as usize);
            reader
                .by_ref()
                .take(size + 1)
                .read_to_end(&mut buf)
                .map_err(io)?;
            let data = Bytes::from(buf);
            total = data.len() as u64;
            self.bytes_read.fetch_add(total, Relaxed);
            for r in cut_ranges(&data, self.chunker)? {
                self.chunk(data.slice(r), &mut extents)?;
            }
        } else {
            for c in Chunker::new(reader, self.chunker)? {
                let c = c.map_err(io)?;
                total += c.data.len() as u64;
                self.bytes_read.fetch_add(c.data.len() as u64, Relaxed);
                self.chunk(Bytes::from(c.data), &mut extents)?;
            }
        }
        Ok((total, extents))
    }

    /// Reads a sparse file by its data segments (`SEEK_DATA`/`SEEK_HOLE`): holes become
    /// zero runs without being read, data segments are chunked on their own.
    pub fn sparse_file(
        &self,
        file: &mut std::fs::File,
        size: u64,
        what: &str,
    ) -> Result<(u64, Vec<ExtentRef>), BuildError> {
        use std::io::{Seek, SeekFrom};
        let io = |source| BuildError::Io {
            op: "read sparse file",
            path: what.to_string(),
            source,
        };
        // SEEK_DATA / SEEK_HOLE; ENXIO means "none after this offset".
        let seek =
            |file: &std::fs::File, to: rustix::fs::SeekFrom| -> std::io::Result<Option<u64>> {
                match rustix::fs::seek(file, to) {
                    Ok(p) => Ok(Some(p)),
                    Err(rustix::io::Errno::NXIO) => Ok(None),
                    Err(e) => Err(e.into()),
                }
            };
        let mut extents = Vec::new();
        let mut pos = 0u64;
        while pos < size {
            let data = seek(file, rustix::fs::SeekFrom::Data(pos))
                .map_err(io)?
                .unwrap_or(size)
                .min(size);
            if data > pos {
                extents.push(ExtentRef::Zero(data - pos));
            }
            if data >= size {
                break;
            }
            let hole = seek(file, rustix::fs::SeekFrom::Hole(data))
                .map_err(io)?
                .unwrap_or(size)
                .min(size);
            file.seek(SeekFrom::Start(data)).map_err(io)?;
            let (n, mut segment) = self.file((&mut *file).take(hole - data), hole - data, what)?;
            if n != hole - data {
                return Err(io(std::io::Error::new(
                    std::io::ErrorKind::UnexpectedEof,
                    "file shrank while reading",
                )));
            }
            extents.append(&mut segment);
            pos = hole;
        }
        Ok((size, extents))
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn zero_detection() {
        assert!(super::is_zero(&[0u8; 1027]));
        let mut v = vec![0u8; 1027];
        v[1026] = 1;
        assert!(!super::is_zero(&v));
        v[1026] = 0;
        v[3] = 1;
        assert!(!super::is_zero(&v[1..]));
        assert!(super::is_zero(&[]));
    }
}
