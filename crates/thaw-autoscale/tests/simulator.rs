//! The simulator is deterministic, conserves work, and behaves as queueing says it must.

use thaw_autoscale::sim::{compare, simulate, SimConfig};
use thaw_autoscale::trace::{synthetic, Request, Trace};
use thaw_autoscale::{Params, POLICY_NAMES};

#[test]
fn same_trace_same_report_to_the_byte() {
    let trace = synthetic("bursty", 5).unwrap();
    let cfg = SimConfig {
        cold_start: 20.0,
        ..SimConfig::default()
    };
    let a = serde_json::to_string(&compare(&trace, POLICY_NAMES, &Params::new(), &cfg).unwrap())
        .unwrap();
    let b = serde_json::to_string(&compare(&trace, POLICY_NAMES, &Params::new(), &cfg).unwrap())
        .unwrap();
    assert_eq!(a, b);
    let other = synthetic("bursty", 6).unwrap();
    let c = serde_json::to_string(&compare(&other, POLICY_NAMES, &Params::new(), &cfg).unwrap())
        .unwrap();
    assert_ne!(a, c, "a different seed is a different run");
}

#[test]
fn every_request_is_served_once_or_dropped() {
    for name in ["poisson", "spike", "sparse"] {
        let trace = synthetic(name, 2).unwrap();
        for cold_start in [1.0, 60.0] {
            // A short timeout forces drops during cold starts.
            for timeout in [300.0, 5.0] {
                let cfg = SimConfig {
                    cold_start,
                    timeout,
                    ..SimConfig::default()
                };
                for policy in POLICY_NAMES {
                    let r = simulate(&trace, policy, &Params::new().lenient(), &cfg).unwrap();
                    assert_eq!(
                        r.served + r.dropped,
                        trace.len() as u64,
                        "{name} {policy} {cold_start} {timeout}"
                    );
                    assert!(r.slo_attainment <= 1.0 && r.replica_seconds >= 0.0);
                }
            }
        }
    }
}

#[test]
fn with_instant_starts_and_room_enough_latency_is_the_service_time() {
    let requests: Vec<Request> = (0..100)
        .map(|i| Request {
            arrival: f64::from(i) * 10.0,
            service: 0.5,
        })
        .collect();
    let trace = Trace {
        name: "regular".into(),
        tenants: vec![requests],
    };
    let cfg = SimConfig {
        cold_start: 0.0,
        ..SimConfig::default()
    };
    for policy in ["thaw", "thaw-depth", "knative"] {
        let r = simulate(&trace, policy, &Params::new(), &cfg).unwrap();
        assert_eq!(r.served, 100, "{policy}");
        assert!((r.p99_s - 0.5).abs() < 1e-9, "{policy}: p99 {}", r.p99_s);
        assert!((r.slo_attainment - 1.0).abs() < 1e-12, "{policy}");
    }
}

#[test]
fn a_cold_start_delays_the_first_request_by_exactly_its_length() {
    let trace = Trace {
        name: "one".into(),
        tenants: vec![vec![Request {
            arrival: 3.5,
            service: 1.0,
        }]],
    };
    let cfg = SimConfig {
        cold_start: 7.0,
        ..SimConfig::default()
    };
    let r = simulate(&trace, "thaw", &Params::new(), &cfg).unwrap();
    assert_eq!((r.served, r.cold_starts), (1, 1));
    assert!(
        (r.p50_s - 8.0).abs() < 1e-9,
        "woken at once, ready 7 s later, served in 1 s: {}",
        r.p50_s
    );
    // A policy that waits for its next tick adds that wait (beta9 ticks every second:
    // at 4 s here).
    let r = simulate(&trace, "beta9", &Params::new(), &cfg).unwrap();
    assert!((r.p50_s - 8.5).abs() < 1e-9, "{}", r.p50_s);
}
