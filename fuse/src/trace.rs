//! Records the first access of every (file, chunk) during a mount, for prefetch lists.

use parking_lot::Mutex;
use std::collections::HashSet;
use std::path::PathBuf;
use std::time::Instant;
use thaw_core::trace::{Trace, TraceRecord};
use thaw_core::{ChunkId, ImageId, Manifest};

#[derive(Debug)]
struct Seen {
    keys: HashSet<(u32, u64)>,
    records: Vec<(u64, u32, u64, ChunkId)>,
}

/// First-access recorder; cheap enough to sit on the read path.
#[derive(Debug)]
pub struct TraceRecorder {
    start: Instant,
    image: ImageId,
    path: PathBuf,
    seen: Mutex<Seen>,
}

impl TraceRecorder {
    pub fn new(image: ImageId, path: PathBuf) -> Self {
        TraceRecorder {
            start: Instant::now(),
            image,
            path,
            seen: Mutex::new(Seen {
                keys: HashSet::new(),
                records: Vec::new(),
            }),
        }
    }

    /// Notes that `ino` read its chunk at `offset`.
    pub fn record(&self, ino: u32, offset: u64, chunk: ChunkId) {
        let mut s = self.seen.lock();
        if s.keys.insert((ino, offset)) {
            let t = self.start.elapsed().as_micros() as u64;
            s.records.push((t, ino, offset, chunk));
        }
    }

    /// Writes the trace (atomically: temporary file, then rename).
    pub fn write(&self, manifest: &Manifest) -> std::io::Result<usize> {
        let paths = crate::inodes::first_paths(manifest);
        let records: Vec<TraceRecord> = self
            .seen
            .lock()
            .records
            .iter()
            .map(|&(elapsed_us, ino, offset, chunk)| TraceRecord {
                elapsed_us,
                chunk,
                offset,
                path: paths[ino as usize].clone(),
            })
            .collect();
        let n = records.len();
        let text = Trace {
            image: self.image,
            records,
        }
        .encode();
        crate::files::write_atomically(&self.path, text.as_bytes())?;
        Ok(n)
    }
}
