//! Request traces for the simulator: the Azure LLM inference trace (token counts turned
//! into service times by [`service`]), a plain `arrival,service` CSV, and seeded synthetic
//! traces. A trace may hold several tenants (deployments scaled independently).

mod azure;
pub mod service;
mod synthetic;

use std::path::Path;

pub use azure::parse_azure;
pub use synthetic::{synthetic, SYNTHETIC_NAMES};

use crate::TraceError;

/// One request: when it arrives (seconds from the trace's start) and how long a replica
/// takes to serve it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Request {
    /// Arrival, seconds from the start of the trace.
    pub arrival: f64,
    /// Service time, seconds.
    pub service: f64,
}

/// A named trace: one request list per tenant, each sorted by arrival.
#[derive(Debug, Clone, PartialEq)]
pub struct Trace {
    /// What it is (file name or synthetic name).
    pub name: String,
    /// Requests per tenant.
    pub tenants: Vec<Vec<Request>>,
}

impl Trace {
    /// Requests over all tenants.
    #[must_use]
    pub fn len(&self) -> usize {
        self.tenants.iter().map(Vec::len).sum()
    }

    /// Whether there are no requests at all.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The mean service time over all requests (0 when empty).
    #[must_use]
    pub fn mean_service(&self) -> f64 {
        let n = self.len();
        if n == 0 {
            return 0.0;
        }
        let total: f64 = self.tenants.iter().flatten().map(|r| r.service).sum();
        total / crate::policy::f(n as u64)
    }

    /// Keeps the requests that arrive within the first `secs` seconds.
    #[must_use]
    pub fn truncated(mut self, secs: f64) -> Self {
        for t in &mut self.tenants {
            t.retain(|r| r.arrival < secs);
        }
        self
    }
}

/// Loads `spec`: `synthetic:NAME[:SEED]`, or a file: the Azure CSV (its header is
/// `TIMESTAMP,ContextTokens,GeneratedTokens`) or `arrival,service` seconds per line.
/// `concurrency` picks the decode speed of the service-time model.
pub fn load(spec: &str, concurrency: u32) -> Result<Trace, TraceError> {
    if let Some(rest) = spec.strip_prefix("synthetic:") {
        let (name, seed) = match rest.split_once(':') {
            Some((name, seed)) => (
                name,
                seed.parse::<u64>()
                    .map_err(|_| TraceError::UnknownSynthetic {
                        name: rest.to_owned(),
                        known: "NAME[:SEED] with a numeric seed".into(),
                    })?,
            ),
            None => (rest, 1),
        };
        return synthetic(name, seed);
    }
    let path = Path::new(spec);
    let text = std::fs::read_to_string(path).map_err(|source| TraceError::Io {
        path: path.to_owned(),
        source,
    })?;
    let requests = parse_requests(path, &text, concurrency)?;
    if requests.is_empty() {
        return Err(TraceError::Empty(path.to_owned()));
    }
    let name = path
        .file_name()
        .map_or_else(|| spec.to_owned(), |n| n.to_string_lossy().into_owned());
    Ok(Trace {
        name,
        tenants: vec![requests],
    })
}

/// A trace file's text, read from `path`: the Azure CSV (its header is
/// `TIMESTAMP,ContextTokens,GeneratedTokens`) or `arrival,service` seconds per line.
pub fn parse_requests(
    path: &Path,
    text: &str,
    concurrency: u32,
) -> Result<Vec<Request>, TraceError> {
    if text.starts_with("TIMESTAMP") {
        parse_azure(path, text, concurrency)
    } else {
        parse_plain(path, text)
    }
}

/// `arrival,service` seconds per line; `#` comments and blank lines are skipped.
fn parse_plain(path: &Path, text: &str) -> Result<Vec<Request>, TraceError> {
    let mut requests = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let bad = |reason: String| TraceError::Line {
            path: path.to_owned(),
            line: i + 1,
            reason,
        };
        let (a, s) = line
            .split_once(',')
            .ok_or_else(|| bad(format!("{line:?} is not ARRIVAL,SERVICE")))?;
        let arrival = parse_seconds(a).map_err(|e| bad(format!("arrival: {e}")))?;
        let service = parse_seconds(s).map_err(|e| bad(format!("service: {e}")))?;
        if requests
            .last()
            .is_some_and(|r: &Request| r.arrival > arrival)
        {
            return Err(bad("arrivals must not go back in time".into()));
        }
        requests.push(Request { arrival, service });
    }
    Ok(requests)
}

fn parse_seconds(text: &str) -> Result<f64, String> {
    let v: f64 = text
        .trim()
        .parse()
        .map_err(|_| format!("{:?} is not a number", text.trim()))?;
    if !v.is_finite() || v < 0.0 {
        return Err(format!("{v} is not a non-negative number of seconds"));
    }
    Ok(v)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_traces_parse_and_bad_lines_name_their_line() {
        let p = Path::new("t.csv");
        let r = parse_plain(p, "# arrivals\n0,1\n0.5,2\n\n3,0.25\n").unwrap();
        assert_eq!(r.len(), 3);
        assert_eq!(
            r[2],
            Request {
                arrival: 3.0,
                service: 0.25
            }
        );
        let e = parse_plain(p, "0,1\n1,x\n").unwrap_err().to_string();
        assert!(e.contains("t.csv:2:") && e.contains("service"), "{e}");
        let e = parse_plain(p, "5,1\n1,1\n").unwrap_err().to_string();
        assert!(e.contains("t.csv:2:") && e.contains("back in time"), "{e}");
        let e = parse_plain(p, "0,-1\n").unwrap_err().to_string();
        assert!(e.contains("t.csv:1:"), "{e}");
        let e = parse_plain(p, "0;1\n").unwrap_err().to_string();
        assert!(e.contains("not ARRIVAL,SERVICE"), "{e}");
    }

    #[test]
    fn load_reads_files_and_synthetic_names() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("x.csv");
        std::fs::write(&f, "0,1\n").unwrap();
        assert_eq!(load(f.to_str().unwrap(), 4).unwrap().len(), 1);
        std::fs::write(&f, "# nothing\n").unwrap();
        assert!(matches!(
            load(f.to_str().unwrap(), 4),
            Err(TraceError::Empty(_))
        ));
        assert!(load("synthetic:poisson:7", 4).unwrap().len() > 100);
        assert!(load("synthetic:nope", 4).is_err());
        assert!(load("synthetic:poisson:x", 4).is_err());
        assert!(matches!(
            load("/nonexistent/trace", 4),
            Err(TraceError::Io { .. })
        ));
    }
}
