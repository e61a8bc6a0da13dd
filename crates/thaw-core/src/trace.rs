//! Start-up traces: the order in which a container first touched each (file, chunk) of
//! an image. `thaw mount --record-trace` writes them; prefetching reads them.
//!
//! Text, one record a line, so traces diff and merge with ordinary tools:
//!
//! ```text
//! thaw-trace 1
//! image <image id hex>
//! <elapsed µs> <chunk id hex> <offset of the chunk in the file> <path, %-escaped>
//! ```
//!
//! Paths are relative to the image root; bytes outside printable ASCII, `%` and space are
//! written as `%XX`. Records are in first-access order.

use crate::{ChunkId, FormatError, ImageId};

const MAGIC: &str = "thaw-trace 1";
/// The longest line accepted (a 4095-byte path escaped, plus the fixed fields).
const MAX_LINE: usize = 3 * 4096 + 200;

/// One first access.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TraceRecord {
    /// Microseconds since the mount started.
    pub elapsed_us: u64,
    /// The chunk read.
    pub chunk: ChunkId,
    /// Where the chunk starts in its file.
    pub offset: u64,
    /// The file's path in the image (its first name).
    pub path: Vec<u8>,
}

/// A whole trace.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Trace {
    /// The image the trace was recorded on.
    pub image: ImageId,
    /// Its records, by first access.
    pub records: Vec<TraceRecord>,
}

fn escape(path: &[u8], out: &mut String) {
    for &b in path {
        if b.is_ascii_graphic() && b != b'%' {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
}

fn unescape(s: &str) -> Option<Vec<u8>> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = s.get(i + 1..i + 3)?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    Some(out)
}

impl Trace {
    /// The trace as text (one record a line after a header; see docs/format.md).
    pub fn encode(&self) -> String {
        let mut out = format!("{MAGIC}\nimage {}\n", self.image);
        for r in &self.records {
            out.push_str(&format!("{} {} {} ", r.elapsed_us, r.chunk, r.offset));
            escape(&r.path, &mut out);
            out.push('\n');
        }
        out
    }

    /// Parses a trace written by `encode`; every line is checked.
    pub fn decode(text: &str) -> Result<Trace, FormatError> {
        let bad = |line: usize, reason: &str| FormatError::Malformed {
            what: "trace",
            reason: format!("line {line}: {reason}"),
        };
        let mut lines = text.lines().enumerate().map(|(i, l)| (i + 1, l));
        match lines.next() {
            Some((_, MAGIC)) => {}
            Some((n, other)) if other.starts_with("thaw-trace ") => {
                return Err(bad(n, "unsupported trace version"));
            }
            _ => return Err(bad(1, "not a thaw trace (expected 'thaw-trace 1')")),
        }
        let image = match lines.next() {
            Some((n, l)) => l
                .strip_prefix("image ")
                .ok_or_else(|| bad(n, "expected 'image <id>'"))?
                .parse()?,
            None => return Err(bad(2, "missing image line")),
        };
        let mut records = Vec::new();
        for (n, line) in lines {
            if line.is_empty() {
                continue;
            }
            if line.len() > MAX_LINE {
                return Err(bad(n, "line too long"));
            }
            let mut f = line.splitn(4, ' ');
            let (Some(t), Some(c), Some(o), Some(p)) = (f.next(), f.next(), f.next(), f.next())
            else {
                return Err(bad(n, "expected 4 fields"));
            };
            records.push(TraceRecord {
                elapsed_us: t.parse().map_err(|_| bad(n, "bad elapsed time"))?,
                chunk: c.parse()?,
                offset: o.parse().map_err(|_| bad(n, "bad offset"))?,
                path: unescape(p).ok_or_else(|| bad(n, "bad %-escape in path"))?,
            });
        }
        Ok(Trace { image, records })
    }
}

/// Merges traces of one image into one prefetch list: each chunk once, ordered by the
/// earliest time any trace first touched it (ties keep the order of the inputs).
pub fn merge(traces: &[Trace]) -> Vec<TraceRecord> {
    let mut best: std::collections::HashMap<ChunkId, (u64, usize, usize)> =
        std::collections::HashMap::new();
    for (t, trace) in traces.iter().enumerate() {
        for (i, r) in trace.records.iter().enumerate() {
            let key = (r.elapsed_us, t, i);
            best.entry(r.chunk)
                .and_modify(|k| *k = (*k).min(key))
                .or_insert(key);
        }
    }
    let mut keys: Vec<(u64, usize, usize)> = best.into_values().collect();
    keys.sort_unstable();
    keys.into_iter()
        .map(|(_, t, i)| traces[t].records[i].clone())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn rec(elapsed_us: u64, chunk: &str) -> TraceRecord {
        TraceRecord {
            elapsed_us,
            chunk: ChunkId::of(chunk.as_bytes()),
            offset: 0,
            path: chunk.as_bytes().to_vec(),
        }
    }

    #[test]
    fn merge_orders_by_earliest_first_access_and_dedups() {
        let image = ImageId::of(b"img");
        let a = Trace {
            image,
            records: vec![rec(10, "libc"), rec(20, "bash"), rec(90, "status")],
        };
        let b = Trace {
            image,
            records: vec![rec(5, "ld"), rec(30, "libc"), rec(40, "apt")],
        };
        let merged: Vec<Vec<u8>> = merge(&[a, b]).into_iter().map(|r| r.path).collect();
        let names: Vec<&str> = merged
            .iter()
            .map(|p| std::str::from_utf8(p).unwrap())
            .collect();
        assert_eq!(names, ["ld", "libc", "bash", "apt", "status"]);
        assert!(merge(&[]).is_empty());
    }

    proptest! {
        #[test]
        fn round_trips(paths in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 1..40), 0..20)) {
            let t = Trace {
                image: ImageId::of(b"img"),
                records: paths.into_iter().enumerate().map(|(i, path)| TraceRecord {
                    elapsed_us: i as u64 * 10, chunk: ChunkId::of(&path), offset: (i as u64) << 20, path,
                }).collect(),
            };
            prop_assert_eq!(Trace::decode(&t.encode()).unwrap(), t);
        }

        #[test]
        fn garbage_never_panics(s in ".{0,300}") {
            let _ = Trace::decode(&s);
            let _ = Trace::decode(&format!("thaw-trace 1\nimage {}\n{s}", ImageId::of(b"x")));
        }
    }

    #[test]
    fn rejects_bad_input() {
        assert!(Trace::decode("hello").is_err());
        assert!(Trace::decode("thaw-trace 2\nimage x")
            .unwrap_err()
            .to_string()
            .contains("version"));
        let head = format!("thaw-trace 1\nimage {}\n", ImageId::of(b"x"));
        assert!(Trace::decode(&format!("{head}1 2 3")).is_err());
        assert!(Trace::decode(&format!("{head}1 {} 0 bad%zz", ChunkId::of(b"c"))).is_err());
    }
}
