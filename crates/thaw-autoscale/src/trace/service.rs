//! The service-time model for the Azure LLM trace, from Splitwise (Patel et al., ISCA
//! 2024, `perf_model.csv`, Llama-2-70B, tensor-parallel 8 on H100, vLLM): prefill time
//! interpolated from the prompt's tokens, plus a decode time per generated token at the
//! replica's batch size. Requests are served `concurrency` at a time, each decoding at the
//! per-token time of a full batch of that size (the pessimistic end).

/// Prefill, (prompt tokens, milliseconds).
const PREFILL_MS: &[(f64, f64)] = &[
    (0.0, 0.0),
    (512.0, 53.0),
    (1024.0, 78.0),
    (2048.0, 137.0),
    (4096.0, 390.0),
    (8192.0, 845.0),
];
/// Decode per token, (batch size, milliseconds).
const DECODE_MS: &[(f64, f64)] = &[(1.0, 30.0), (16.0, 34.0), (32.0, 39.0), (64.0, 50.0)];

/// Seconds to serve a request of `context` prompt tokens and `generated` output tokens on
/// a replica that batches `concurrency` requests.
#[must_use]
pub fn service_seconds(context: u64, generated: u64, concurrency: u32) -> f64 {
    let prefill = interpolate(PREFILL_MS, crate::policy::f(context));
    let decode = interpolate(DECODE_MS, f64::from(concurrency.max(1)));
    (prefill + crate::policy::f(generated) * decode) / 1000.0
}

/// Piecewise-linear through `points`, extended along the last segment past its end and
/// held at the first point before its start.
fn interpolate(points: &[(f64, f64)], x: f64) -> f64 {
    let (Some(&first), Some(&last)) = (points.first(), points.last()) else {
        return 0.0;
    };
    if x <= first.0 {
        return first.1;
    }
    for w in points.windows(2) {
        let (a, b) = (w[0], w[1]);
        if x <= b.0 || b == last {
            return a.1 + (x - a.0) / (b.0 - a.0) * (b.1 - a.1);
        }
    }
    last.1
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_the_splitwise_figures() {
        assert!((service_seconds(1024, 0, 1) - 0.078).abs() < 1e-9);
        assert!((service_seconds(2048, 1, 1) - 0.167).abs() < 1e-9);
        assert!((service_seconds(8192, 0, 64) - 0.845).abs() < 1e-9);
        // 50 ms per token at batch 64.
        assert!((service_seconds(0, 10, 64) - 0.5).abs() < 1e-9);
        // Past the table: the last segment continues.
        assert!(service_seconds(16384, 0, 1) > 1.5);
        // Between rows: 768 tokens is half-way between 53 and 78 ms.
        assert!((service_seconds(768, 0, 1) - 0.0655).abs() < 1e-9);
    }
}
