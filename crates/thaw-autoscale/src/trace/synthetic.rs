//! Seeded synthetic traces, one hour each, service times exponential with a mean of 1 s:
//! `poisson` (2 tasks/s), `bursty` (on/off: 60 s at 8/s, then about 4 min of nothing),
//! `diurnal` (a day squeezed into the hour: 0.2 to 3.8/s), `spike` (0.5/s with a minute at
//! 20/s half-way) and `sparse` (ten tenants, each a small burst every 2 to 10 minutes,
//! where scaling to zero matters). The same name and seed give the same trace.

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use super::{Request, Trace};
use crate::TraceError;

/// The synthetic traces [`synthetic`] knows.
pub const SYNTHETIC_NAMES: &[&str] = &["poisson", "bursty", "diurnal", "spike", "sparse"];

const HOUR: f64 = 3600.0;

/// The synthetic trace `name` drawn with `seed`.
pub fn synthetic(name: &str, seed: u64) -> Result<Trace, TraceError> {
    let mut rng = StdRng::seed_from_u64(seed);
    let tenants = match name {
        "poisson" => vec![arrivals(&mut rng, |_| 2.0, 2.0)],
        "bursty" => vec![bursty(&mut rng)],
        "diurnal" => vec![arrivals(
            &mut rng,
            |t| 2.0 - 1.8 * (2.0 * std::f64::consts::PI * t / HOUR).cos(),
            3.8,
        )],
        "spike" => vec![arrivals(
            &mut rng,
            |t| {
                if (1800.0..1860.0).contains(&t) {
                    20.0
                } else {
                    0.5
                }
            },
            20.0,
        )],
        "sparse" => (0..10).map(|_| sparse_tenant(&mut rng)).collect(),
        _ => {
            return Err(TraceError::UnknownSynthetic {
                name: name.to_owned(),
                known: SYNTHETIC_NAMES.join(", "),
            });
        }
    };
    Ok(Trace {
        name: format!("synthetic:{name}:{seed}"),
        tenants,
    })
}

/// An exponential draw with mean `mean`.
fn exponential(rng: &mut StdRng, mean: f64) -> f64 {
    let u: f64 = rng.random_range(f64::EPSILON..1.0);
    -u.ln() * mean
}

fn request(rng: &mut StdRng, arrival: f64) -> Request {
    Request {
        arrival,
        service: exponential(rng, 1.0),
    }
}

/// A Poisson process of rate `rate(t)` (at most `peak`) over the hour, by thinning.
fn arrivals(rng: &mut StdRng, rate: impl Fn(f64) -> f64, peak: f64) -> Vec<Request> {
    let mut out = Vec::new();
    let mut t = 0.0;
    loop {
        t += exponential(rng, 1.0 / peak);
        if t >= HOUR {
            return out;
        }
        if rng.random_range(0.0..1.0) < rate(t) / peak {
            out.push(request(rng, t));
        }
    }
}

fn bursty(rng: &mut StdRng) -> Vec<Request> {
    let mut out = Vec::new();
    let mut t = 0.0;
    while t < HOUR {
        let end = (t + 60.0).min(HOUR);
        while t < end {
            t += exponential(rng, 1.0 / 8.0);
            if t < end {
                out.push(request(rng, t));
            }
        }
        t = end + 180.0 + rng.random_range(0.0..120.0);
    }
    out
}

fn sparse_tenant(rng: &mut StdRng) -> Vec<Request> {
    let period = rng.random_range(120.0..600.0);
    let mut out = Vec::new();
    let mut t = rng.random_range(0.0..period);
    while t < HOUR {
        let burst = rng.random_range(1..=5);
        let mut at = t;
        for _ in 0..burst {
            out.push(request(rng, at));
            at += exponential(rng, 2.0);
        }
        t += period * rng.random_range(0.9..1.1);
    }
    out.retain(|r| r.arrival < HOUR);
    out.sort_by(|a, b| a.arrival.total_cmp(&b.arrival));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_seed_same_trace_and_rates_as_documented() {
        for name in SYNTHETIC_NAMES {
            let a = synthetic(name, 3).unwrap();
            assert_eq!(a, synthetic(name, 3).unwrap(), "{name}");
            assert_ne!(a, synthetic(name, 4).unwrap(), "{name}");
            for t in &a.tenants {
                assert!(
                    t.windows(2).all(|w| w[0].arrival <= w[1].arrival),
                    "{name} sorted"
                );
                assert!(t.iter().all(|r| r.arrival < HOUR && r.service > 0.0));
            }
        }
        let poisson = synthetic("poisson", 1).unwrap().len();
        assert!((6600..7800).contains(&poisson), "{poisson} ≈ 7200");
        let spike = synthetic("spike", 1).unwrap();
        let in_spike = spike.tenants[0]
            .iter()
            .filter(|r| (1800.0..1860.0).contains(&r.arrival))
            .count();
        assert!(in_spike > 1000, "{in_spike}");
        assert_eq!(synthetic("sparse", 1).unwrap().tenants.len(), 10);
    }
}
