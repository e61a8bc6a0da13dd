//! The fetch policy: how many bytes to fetch around a miss, chosen from what this reader
//! has measured of its store (each GET's latency and bandwidth) and of its own decoding
//! (decompression and verification per byte), so that one default suits a local
//! directory, a same-zone store and a distant one.
//!
//! The model: a neighbour fetched around a miss costs its transfer and its decoding,
//! `bytes × (1/bandwidth + 1/decode_rate)`, and pays off, when it is read later, by saving
//! one round trip (`latency`). With `p` the chance that a neighbour is read (about half,
//! measured on a Debian start-up: 634 neighbours fetched for 15 MB read of 26 MB), the
//! extra bytes are worth it up to `p × latency / (1/bandwidth + 1/decode_rate)`. On a local
//! store (latency ~0.1 ms, decoding ~1 GB/s) that is under one chunk, so nothing is fetched
//! around; on a store 20 ms away at 1 Gbit/s it is about a megabyte.

use parking_lot::Mutex;

/// The chance a neighbour fetched around a miss is read later.
pub const NEIGHBOUR_READ_CHANCE: f64 = 0.5;
/// The most bytes fetched around one miss.
pub const MAX_FETCH_AROUND: u64 = 4 << 20;
/// Below this, fetching around is not worth it: each neighbour also costs its own
/// bookkeeping and disk-cache file, which the per-byte model leaves out (a few chunks).
pub const MIN_FETCH_AROUND: u64 = 64 << 10;
/// What is fetched around a miss until the store has been measured.
pub const UNMEASURED_FETCH_AROUND: u64 = 256 << 10;
/// GETs measured before the model is trusted.
const SAMPLES_TRUSTED: u64 = 4;
/// Weight of each new sample in the moving averages.
const ALPHA: f64 = 0.1;

/// How far to fetch around a miss.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum FetchAround {
    /// Chosen from the store's measured latency and bandwidth (the default).
    #[default]
    Auto,
    /// Always this many stored bytes (0: never).
    Fixed(u64),
}

impl std::str::FromStr for FetchAround {
    type Err = String;
    /// `auto`, or a byte count with an optional `K`, `M` or `G` suffix (powers of 1024).
    fn from_str(s: &str) -> Result<Self, String> {
        let t = s.trim();
        if t.eq_ignore_ascii_case("auto") {
            return Ok(FetchAround::Auto);
        }
        let (digits, shift) = match t.as_bytes().last().map(u8::to_ascii_uppercase) {
            Some(b'K') => (&t[..t.len() - 1], 10),
            Some(b'M') => (&t[..t.len() - 1], 20),
            Some(b'G') => (&t[..t.len() - 1], 30),
            _ => (t, 0),
        };
        digits
            .parse::<u64>()
            .ok()
            .and_then(|n| n.checked_mul(1 << shift))
            .map(FetchAround::Fixed)
            .ok_or_else(|| format!("{s:?}: expected auto or a number of bytes (like 512K)"))
    }
}

/// What the policy has measured and chosen, for stats and metrics.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct FetchPolicyStats {
    /// Bytes fetched around a miss now.
    pub fetch_around_bytes: u64,
    /// The store's measured latency per GET, microseconds (0: not measured yet).
    pub store_latency_us: u64,
    /// The store's measured bandwidth, bytes per second (0: not measured yet).
    pub store_bytes_per_second: u64,
    /// Measured decoding (decompression and verification) on one core, bytes per second.
    pub decode_bytes_per_second: u64,
    /// GETs measured.
    pub samples: u64,
}

/// Exponentially weighted moments of (bytes, seconds) of GETs: a least-squares line
/// `seconds = latency + bytes / bandwidth` over recent GETs.
#[derive(Debug, Default, Clone, Copy)]
struct Moments {
    n: u64,
    b: f64,
    t: f64,
    bb: f64,
    bt: f64,
}

impl Moments {
    fn add(&mut self, bytes: f64, seconds: f64) {
        let a = if self.n == 0 { 1.0 } else { ALPHA };
        self.n += 1;
        self.b += a * (bytes - self.b);
        self.t += a * (seconds - self.t);
        self.bb += a * (bytes * bytes - self.bb);
        self.bt += a * (bytes * seconds - self.bt);
    }

    /// (latency seconds, seconds per byte); when GETs were all about the same size the
    /// slope is unknown and `fallback_slope` stands in for it.
    fn line(&self, fallback_slope: f64) -> (f64, f64) {
        let var = self.bb - self.b * self.b;
        let cov = self.bt - self.b * self.t;
        // Sizes that vary by less than a few KiB say nothing about bandwidth.
        let slope = if var > (4096.0 * 4096.0) && cov > 0.0 {
            cov / var
        } else {
            fallback_slope
        };
        ((self.t - slope * self.b).max(0.0), slope.max(0.0))
    }
}

#[derive(Debug, Default)]
struct Model {
    gets: Moments,
    /// Seconds per raw byte decoded, moving average.
    decode: Option<f64>,
}

/// The policy, shared by a reader's flights.
#[derive(Debug, Default)]
pub struct FetchPolicy {
    mode: FetchAround,
    model: Mutex<Model>,
}

impl FetchPolicy {
    /// A policy in `mode`.
    pub fn new(mode: FetchAround) -> Self {
        FetchPolicy {
            mode,
            model: Mutex::default(),
        }
    }

    /// Records one GET: `bytes` transferred in `seconds`.
    pub fn observe_get(&self, bytes: u64, seconds: f64) {
        if seconds.is_finite() && seconds >= 0.0 {
            self.model.lock().gets.add(bytes as f64, seconds);
        }
    }

    /// Records decoding `bytes` (raw) in `seconds` on one thread.
    pub fn observe_decode(&self, bytes: u64, seconds: f64) {
        if bytes == 0 || !seconds.is_finite() || seconds < 0.0 {
            return;
        }
        let per_byte = seconds / bytes as f64;
        let mut m = self.model.lock();
        m.decode = Some(m.decode.map_or(per_byte, |d| d + ALPHA * (per_byte - d)));
    }

    /// Stored bytes to fetch around a miss now.
    pub fn fetch_around(&self) -> u64 {
        self.stats().fetch_around_bytes
    }

    /// What it has measured, and what it chooses from that.
    pub fn stats(&self) -> FetchPolicyStats {
        let m = self.model.lock();
        // Until decoding is measured, assume 1 GB/s on one core; until bandwidth is, the
        // same for the store (a guess only used when GET sizes have not varied).
        let decode = m.decode.unwrap_or(1e-9);
        let (latency, per_byte) = m.gets.line(1e-9);
        let measured = m.gets.n >= SAMPLES_TRUSTED;
        let chosen = match self.mode {
            FetchAround::Fixed(n) => n,
            FetchAround::Auto if !measured => UNMEASURED_FETCH_AROUND,
            FetchAround::Auto => auto_fetch_around(latency, per_byte, decode),
        };
        let rate = |seconds_per_byte: f64| {
            if seconds_per_byte > 0.0 {
                (1.0 / seconds_per_byte) as u64
            } else {
                0
            }
        };
        FetchPolicyStats {
            fetch_around_bytes: chosen,
            store_latency_us: if measured { (latency * 1e6) as u64 } else { 0 },
            store_bytes_per_second: if measured { rate(per_byte) } else { 0 },
            decode_bytes_per_second: m.decode.map_or(0, rate),
            samples: m.gets.n,
        }
    }
}

/// The model's choice (see the module's documentation), within
/// [`MIN_FETCH_AROUND`]..=[`MAX_FETCH_AROUND`] or 0.
pub fn auto_fetch_around(latency: f64, store_per_byte: f64, decode_per_byte: f64) -> u64 {
    let cost_per_byte = store_per_byte + decode_per_byte;
    if cost_per_byte <= 0.0 || latency <= 0.0 {
        return 0;
    }
    let worth = NEIGHBOUR_READ_CHANCE * latency / cost_per_byte;
    if worth < MIN_FETCH_AROUND as f64 {
        0
    } else {
        (worth as u64).min(MAX_FETCH_AROUND)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, reason = "tests")]
    use super::*;

    /// GETs of a store with `latency` seconds and `bandwidth` bytes per second, of sizes
    /// from one chunk to a coalesced run.
    fn feed(p: &FetchPolicy, latency: f64, bandwidth: f64) {
        for i in 0..40u64 {
            let bytes = 16_384 + (i % 8) * 131_072;
            p.observe_get(bytes, latency + bytes as f64 / bandwidth);
        }
    }

    #[test]
    fn a_local_store_gets_no_fetch_around_and_a_distant_one_about_a_megabyte() {
        let local = FetchPolicy::new(FetchAround::Auto);
        feed(&local, 100e-6, 3e9);
        local.observe_decode(1 << 20, 1e-3);
        let s = local.stats();
        assert_eq!(s.fetch_around_bytes, 0, "{s:?}");
        assert!((90..=110).contains(&s.store_latency_us), "{s:?}");

        let distant = FetchPolicy::new(FetchAround::Auto);
        feed(&distant, 20e-3, 125e6);
        distant.observe_decode(1 << 20, 1e-3);
        let s = distant.stats();
        assert!((19_000..=21_000).contains(&s.store_latency_us), "{s:?}");
        assert!(
            (110e6..140e6).contains(&(s.store_bytes_per_second as f64)),
            "{s:?}"
        );
        // 0.5 × 20 ms / (8 ns + 0.95 ns per byte) ≈ 1.1 MB.
        assert!(
            (900_000..1_300_000).contains(&s.fetch_around_bytes),
            "{s:?}"
        );
        // Farther still: capped.
        let far = FetchPolicy::new(FetchAround::Auto);
        feed(&far, 200e-3, 1e9);
        assert_eq!(far.fetch_around(), MAX_FETCH_AROUND);
    }

    #[test]
    fn before_measuring_it_guesses_and_a_fixed_setting_always_wins() {
        let p = FetchPolicy::new(FetchAround::Auto);
        assert_eq!(p.fetch_around(), UNMEASURED_FETCH_AROUND);
        assert_eq!(p.stats().store_latency_us, 0);
        let fixed = FetchPolicy::new(FetchAround::Fixed(12345));
        feed(&fixed, 100e-6, 3e9);
        assert_eq!(fixed.fetch_around(), 12345);
        // Nonsense samples are ignored, and GETs of one size still give a latency.
        let same = FetchPolicy::new(FetchAround::Auto);
        same.observe_get(1000, f64::NAN);
        same.observe_get(1000, -1.0);
        for _ in 0..10 {
            same.observe_get(65_536, 0.010);
        }
        let s = same.stats();
        assert_eq!(s.samples, 10);
        assert!((9_900..=10_000).contains(&s.store_latency_us), "{s:?}");
    }

    #[test]
    fn fetch_around_parses_auto_and_sizes() {
        assert_eq!("auto".parse::<FetchAround>(), Ok(FetchAround::Auto));
        assert_eq!("0".parse::<FetchAround>(), Ok(FetchAround::Fixed(0)));
        assert_eq!(
            "512K".parse::<FetchAround>(),
            Ok(FetchAround::Fixed(512 << 10))
        );
        assert_eq!("2m".parse::<FetchAround>(), Ok(FetchAround::Fixed(2 << 20)));
        assert_eq!("4096".parse::<FetchAround>(), Ok(FetchAround::Fixed(4096)));
        for bad in ["", "K", "-1", "1.5M", "99999999999999999999G", "lots"] {
            assert!(bad.parse::<FetchAround>().is_err(), "{bad}");
        }
    }
}
