//! The open table of a held mount: for each inode whose opens the kernel ties to an I/O
//! mode (files that passthrough may serve), how many opens are live and with which
//! backing id, written through to a file beside the mount's record. The kernel fails an
//! open (EIO) whose mode or backing file differs from the inode's live opens, so a
//! successor that takes the connection over (see [`crate::takeover`]) must answer as its
//! predecessor did; this file is how it knows.
//!
//! Each inode has a fixed 8-byte slot (live opens, then the raw backing id, 0 for plain
//! opens; little-endian), written with one `pwrite` per change. An open is recorded
//! before its reply and a release after, so a predecessor that dies in between leaves a
//! count too high, never too low: the inode then keeps its mode until the mount ends,
//! which is harmless; a count too low would let a successor mix modes.

use std::os::unix::fs::FileExt;
use std::path::Path;

/// The bytes of one inode's slot.
const SLOT: u64 = 8;

/// One inode's live opens as recorded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OpenSlot {
    /// The inode (its index in the image's manifest).
    pub ino: u32,
    /// Opens live (at least, see the module's note).
    pub count: u32,
    /// The kernel's backing id the opens were answered with; 0 for plain opens.
    pub backing: u32,
}

/// The open table of one mount.
#[derive(Debug)]
pub struct OpenTable {
    file: std::fs::File,
    inodes: u32,
}

impl OpenTable {
    /// Creates (or empties) the table at `path` for an image of `inodes` inodes.
    pub fn create(path: &Path, inodes: usize) -> std::io::Result<Self> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let inodes = u32::try_from(inodes).map_err(std::io::Error::other)?;
        let file = std::fs::File::options()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(path)?;
        file.set_len(u64::from(inodes) * SLOT)?;
        Ok(OpenTable { file, inodes })
    }

    /// Opens the table a predecessor left at `path` and reads its live slots; slots past
    /// `inodes` (a table of another image) are an error.
    pub fn resume(path: &Path, inodes: usize) -> std::io::Result<(Self, Vec<OpenSlot>)> {
        let inodes = u32::try_from(inodes).map_err(std::io::Error::other)?;
        let file = std::fs::File::options().read(true).write(true).open(path)?;
        let len = file.metadata()?.len();
        if len != u64::from(inodes) * SLOT {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!("an open table of {len} bytes for {inodes} inodes"),
            ));
        }
        let mut bytes = vec![0u8; usize::try_from(len).map_err(std::io::Error::other)?];
        file.read_exact_at(&mut bytes, 0)?;
        let live = (0..inodes)
            .zip(bytes.chunks_exact(SLOT as usize))
            .filter_map(|(ino, slot)| {
                let word =
                    |i: usize| u32::from_le_bytes([slot[i], slot[i + 1], slot[i + 2], slot[i + 3]]);
                let (count, backing) = (word(0), word(4));
                (count > 0).then_some(OpenSlot {
                    ino,
                    count,
                    backing,
                })
            })
            .collect();
        Ok((OpenTable { file, inodes }, live))
    }

    /// Records inode `ino`'s live opens; a failure is logged (a successor may then fail
    /// some opens of this inode with EIO until they are released).
    pub fn store(&self, ino: u32, count: u32, backing: u32) {
        if ino >= self.inodes {
            return;
        }
        let mut slot = [0u8; SLOT as usize];
        slot[..4].copy_from_slice(&count.to_le_bytes());
        slot[4..].copy_from_slice(&backing.to_le_bytes());
        if let Err(e) = self.file.write_all_at(&slot, u64::from(ino) * SLOT) {
            tracing::warn!(ino, error = %e, "could not record an inode's opens for a successor");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn live_slots_survive_for_a_successor_and_a_wrong_size_is_refused() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let path = tmp.path().join("opens/x");
        let table = OpenTable::create(&path, 10).expect("create");
        table.store(3, 2, 7);
        table.store(5, 1, 0);
        table.store(5, 0, 0);
        table.store(9, 1, 0);
        table.store(10, 1, 1); // past the image: ignored
        drop(table);
        let (_, live) = OpenTable::resume(&path, 10).expect("resume");
        let want = [
            OpenSlot {
                ino: 3,
                count: 2,
                backing: 7,
            },
            OpenSlot {
                ino: 9,
                count: 1,
                backing: 0,
            },
        ];
        assert_eq!(live, want);
        assert!(
            OpenTable::resume(&path, 11).is_err(),
            "another image's table"
        );
        OpenTable::create(&path, 10).expect("create again");
        assert!(
            OpenTable::resume(&path, 10).expect("resume").1.is_empty(),
            "emptied"
        );
    }
}
