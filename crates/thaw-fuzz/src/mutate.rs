//! Seeded mutation on stable: what `cargo test` feeds each target between nightly fuzzing
//! runs. Byte flips, insertions, deletions, copies of a run inside the input, splices
//! with another corpus input, and interesting numbers, as libFuzzer's mutators do, from a
//! fixed seed so a failure replays.

/// A xorshift generator: deterministic, fast, good enough to pick mutations.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    /// A generator from `seed` (any value).
    pub fn new(seed: u64) -> Self {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    /// The next value.
    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    /// A value below `n` (0 when `n` is 0).
    pub fn below(&mut self, n: usize) -> usize {
        if n == 0 {
            return 0;
        }
        (self.next_u64() % n as u64) as usize
    }
}

/// Numbers that find edge cases in length fields.
const INTERESTING: &[u64] = &[
    0,
    1,
    0x7f,
    0x80,
    0xff,
    0x100,
    0xffff,
    0x1_0000,
    0x7fff_ffff,
    0xffff_ffff,
    u64::MAX,
];

/// The largest input a mutation makes.
pub const MAX_INPUT: usize = 64 * 1024;

/// `input` changed by one to four mutations; `other` is another corpus input to splice.
pub fn mutate(input: &[u8], other: &[u8], rng: &mut Rng) -> Vec<u8> {
    let mut out = input.to_vec();
    for _ in 0..=rng.below(4) {
        mutate_once(&mut out, other, rng);
    }
    out.truncate(MAX_INPUT);
    out
}

fn mutate_once(out: &mut Vec<u8>, other: &[u8], rng: &mut Rng) {
    let len = out.len();
    match rng.below(7) {
        0 if len > 0 => {
            let i = rng.below(len);
            out[i] ^= 1 << rng.below(8);
        }
        1 => {
            let i = rng.below(len + 1);
            let b = (rng.next_u64() & 0xff) as u8;
            out.insert(i, b);
        }
        2 if len > 0 => {
            let i = rng.below(len);
            let n = rng.below(len - i).max(1);
            out.drain(i..i + n);
        }
        3 if len > 1 => {
            let from = rng.below(len);
            let n = rng.below(len - from).clamp(1, 64);
            let run: Vec<u8> = out[from..from + n].to_vec();
            let to = rng.below(len + 1);
            out.splice(to..to, run);
        }
        4 if !other.is_empty() => {
            let cut = rng.below(len + 1);
            let from = rng.below(other.len());
            out.truncate(cut);
            out.extend_from_slice(&other[from..]);
        }
        5 if len > 0 => {
            let value = INTERESTING[rng.below(INTERESTING.len())];
            let width = [1, 2, 4, 8][rng.below(4)];
            let at = rng.below(len);
            let bytes = value.to_le_bytes();
            let n = width.min(len - at);
            out[at..at + n].copy_from_slice(&bytes[..n]);
        }
        _ => {
            // An ASCII digit or quote where JSON and text formats are sensitive to one.
            let i = rng.below(len + 1);
            let b = b"0123456789\"{}[],:-.\n \\"[rng.below(22)];
            out.insert(i, b);
        }
    }
}
