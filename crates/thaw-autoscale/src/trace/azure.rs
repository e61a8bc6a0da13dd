//! The Azure LLM inference trace 2023 (Patel et al., "Splitwise", ISCA 2024; CC-BY 4.0):
//! `TIMESTAMP,ContextTokens,GeneratedTokens`, one request per line, timestamps like
//! `2023-11-16 18:17:03.9799600`. Arrivals become seconds after the first request.

use std::path::Path;

use super::service::service_seconds;
use super::Request;
use crate::TraceError;

/// Parses the trace; a malformed line is an error naming it.
pub fn parse_azure(path: &Path, text: &str, concurrency: u32) -> Result<Vec<Request>, TraceError> {
    let mut requests = Vec::new();
    let mut origin = None;
    let mut last = f64::NEG_INFINITY;
    for (i, line) in text.lines().enumerate().skip(1) {
        if line.trim().is_empty() {
            continue;
        }
        let bad = |reason: String| TraceError::Line {
            path: path.to_owned(),
            line: i + 1,
            reason,
        };
        let mut fields = line.split(',');
        let (Some(ts), Some(ctx), Some(gen), None) =
            (fields.next(), fields.next(), fields.next(), fields.next())
        else {
            return Err(bad(format!(
                "{line:?} is not TIMESTAMP,ContextTokens,GeneratedTokens"
            )));
        };
        let at = parse_timestamp(ts.trim()).ok_or_else(|| bad(format!("bad timestamp {ts:?}")))?;
        let ctx: u64 = ctx
            .trim()
            .parse()
            .map_err(|_| bad(format!("bad ContextTokens {ctx:?}")))?;
        let gen: u64 = gen
            .trim()
            .parse()
            .map_err(|_| bad(format!("bad GeneratedTokens {gen:?}")))?;
        if at < last {
            return Err(bad("timestamps must not go back in time".into()));
        }
        last = at;
        let origin = *origin.get_or_insert(at);
        requests.push(Request {
            arrival: at - origin,
            service: service_seconds(ctx, gen, concurrency),
        });
    }
    Ok(requests)
}

/// `YYYY-MM-DD HH:MM:SS[.fraction]` as seconds since 1970 (UTC, proleptic Gregorian).
fn parse_timestamp(ts: &str) -> Option<f64> {
    let (date, time) = ts.split_once(' ')?;
    let mut d = date.split('-').map(|p| p.parse::<i64>().ok());
    let (year, month, day) = (d.next()??, d.next()??, d.next()??);
    if d.next().is_some() || !(1..=12).contains(&month) || !(1..=31).contains(&day) {
        return None;
    }
    let mut t = time.split(':');
    let (h, m, s) = (
        t.next()?.parse::<u32>().ok()?,
        t.next()?.parse::<u32>().ok()?,
        t.next()?,
    );
    if t.next().is_some() || h > 23 || m > 59 || !s.bytes().all(|b| b.is_ascii_digit() || b == b'.')
    {
        return None;
    }
    let secs: f64 = s.parse().ok()?;
    if !(0.0..61.0).contains(&secs) {
        return None;
    }
    let days = days_from_civil(year, month, day);
    #[allow(clippy::cast_precision_loss)]
    let base = (days * 86_400) as f64;
    Some(base + f64::from(h * 3600 + m * 60) + secs)
}

/// Days since 1970-01-01 (Howard Hinnant's algorithm).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

#[cfg(test)]
mod tests {
    use super::*;

    const HEADER: &str = "TIMESTAMP,ContextTokens,GeneratedTokens\n";

    #[test]
    fn parses_arrivals_relative_to_the_first_request() {
        let text =
            format!("{HEADER}2023-11-16 23:59:59.5000000,1024,0\n2023-11-17 00:00:01.0,2048,1\n");
        let r = parse_azure(Path::new("a.csv"), &text, 1).unwrap();
        assert_eq!(r.len(), 2);
        assert!((r[1].arrival - 1.5).abs() < 1e-6, "{}", r[1].arrival);
        assert!((r[0].service - 0.078).abs() < 1e-9);
        assert_eq!(days_from_civil(1970, 1, 1), 0);
        assert_eq!(days_from_civil(2000, 3, 1), 11_017);
    }

    #[test]
    fn malformed_lines_name_the_line() {
        for (body, what) in [
            ("2023-11-16 18:00:00,12\n", "is not TIMESTAMP"),
            ("2023-11-16 18:00:00,x,1\n", "ContextTokens"),
            ("2023-11-16 18:00:00,1,-1\n", "GeneratedTokens"),
            ("2023-13-16 18:00:00,1,1\n", "timestamp"),
            ("2023-11-16T18:00:00,1,1\n", "timestamp"),
            ("2023-11-16 18:00:00,1,1,1\n", "is not TIMESTAMP"),
        ] {
            let text = format!("{HEADER}2023-11-16 17:00:00,1,1\n{body}");
            let e = parse_azure(Path::new("a.csv"), &text, 1)
                .unwrap_err()
                .to_string();
            assert!(e.starts_with("a.csv:3:") && e.contains(what), "{body}: {e}");
        }
        let back = format!("{HEADER}2023-11-16 18:00:00,1,1\n2023-11-16 17:00:00,1,1\n");
        let e = parse_azure(Path::new("a.csv"), &back, 1)
            .unwrap_err()
            .to_string();
        assert!(e.contains("back in time"), "{e}");
    }
}
