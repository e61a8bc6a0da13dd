//! Queueing formulas for the latency policy: Erlang C (M/M/c) for the chance that a task
//! waits, and from it the wait at a percentile and the fewest servers that meet a target.

/// The probability that an arriving task waits in an M/M/`servers` queue with offered
/// load `load` = arrival rate × service time (Erlangs). 1 when the queue is unstable.
#[must_use]
pub fn erlang_c(servers: u32, load: f64) -> f64 {
    if servers == 0 || load >= f64::from(servers) {
        return 1.0;
    }
    if load <= 0.0 {
        return 0.0;
    }
    // Erlang B by its stable recursion, then C from B.
    let mut b = 1.0;
    for k in 1..=servers {
        b = load * b / (f64::from(k) + load * b);
    }
    let n = f64::from(servers);
    n * b / (n - load * (1.0 - b))
}

/// The `percentile` (0..1) of the wait in an M/M/`servers` queue with arrival rate
/// `rate` per second and mean service `service` seconds; infinite when unstable.
#[must_use]
pub fn wait_quantile(servers: u32, rate: f64, service: f64, percentile: f64) -> f64 {
    if rate <= 0.0 {
        return 0.0;
    }
    let load = rate * service;
    if servers == 0 || load >= f64::from(servers) || service <= 0.0 {
        return f64::INFINITY;
    }
    let p_wait = erlang_c(servers, load);
    let tail = 1.0 - percentile;
    if p_wait <= tail {
        return 0.0;
    }
    // P(W > t) = C · exp(-(c·μ − λ)·t).
    let drain = f64::from(servers) / service - rate;
    (p_wait / tail).ln() / drain
}

/// The fewest replicas (each working on `concurrency` tasks) whose wait at `percentile`
/// plus the mean service stays within `target` seconds, at `rate` tasks per second; `cap`
/// when even that many cannot.
#[must_use]
pub fn replicas_for_latency(
    rate: f64,
    service: f64,
    concurrency: u32,
    target: f64,
    percentile: f64,
    cap: u32,
) -> u32 {
    if rate <= 0.0 {
        return 0;
    }
    let budget = target - service;
    if budget < 0.0 {
        return cap;
    }
    let per = concurrency.max(1);
    // Start from what merely keeps the queue stable.
    let mut n = super::ceil_div(rate * service, f64::from(per)).max(1);
    while n < cap {
        if wait_quantile(n.saturating_mul(per), rate, service, percentile) <= budget {
            return n;
        }
        n += 1;
    }
    cap
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn erlang_c_matches_known_values() {
        // M/M/1: P(wait) = ρ.
        assert!((erlang_c(1, 0.5) - 0.5).abs() < 1e-12);
        // Textbook: 2 servers, 1 Erlang: C = 1/3.
        assert!((erlang_c(2, 1.0) - 1.0 / 3.0).abs() < 1e-12);
        assert!((erlang_c(3, 3.0) - 1.0).abs() < 1e-12);
        assert!(erlang_c(4, 0.0).abs() < 1e-12);
    }

    #[test]
    fn wait_quantile_of_mm1() {
        // M/M/1, λ=0.5, S=1: P(W>t) = 0.5·e^{-0.5t}; the 95th percentile is ln(10)/0.5.
        let q = wait_quantile(1, 0.5, 1.0, 0.95);
        assert!((q - 10f64.ln() / 0.5).abs() < 1e-9, "{q}");
        assert!(wait_quantile(1, 1.0, 1.0, 0.95).is_infinite());
        assert!(wait_quantile(3, 0.0, 1.0, 0.95).abs() < 1e-12);
    }

    #[test]
    fn replicas_for_latency_is_the_fewest_that_meet_the_target() {
        let n = replicas_for_latency(10.0, 1.0, 1, 1.5, 0.95, 100);
        assert!(wait_quantile(n, 10.0, 1.0, 0.95) <= 0.5);
        assert!(wait_quantile(n - 1, 10.0, 1.0, 0.95) > 0.5);
        // Concurrency divides the replicas needed.
        let m = replicas_for_latency(10.0, 1.0, 4, 1.5, 0.95, 100);
        assert_eq!(m, n.div_ceil(4).max(m));
        assert!(m * 4 >= n);
        assert_eq!(replicas_for_latency(0.0, 1.0, 1, 1.5, 0.95, 100), 0);
        // A target below the service time cannot be met: the cap.
        assert_eq!(replicas_for_latency(1.0, 2.0, 1, 1.5, 0.95, 7), 7);
    }
}
