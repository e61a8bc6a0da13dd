//! Every rule of thaw's two policies, step by step on an injected clock.

use super::{build_policy, Deployment, Params, Policy};
use crate::{ParamError, ReplicaState, ReplicaView, Snapshot};

fn ready(n: usize, idle_since: Option<f64>) -> Vec<ReplicaView> {
    vec![
        ReplicaView {
            state: ReplicaState::Ready,
            active: 0,
            idle_since
        };
        n
    ]
}

fn snap(now: f64, queued: u64, in_flight: u64, replicas: usize) -> Snapshot {
    Snapshot {
        now,
        queued,
        in_flight,
        replicas: ready(replicas, Some(0.0)),
        cold_start: 10.0,
        concurrency: 2,
        ..Snapshot::default()
    }
}

fn policy(name: &str, pairs: &[(&str, f64)], max: u32) -> Box<dyn Policy> {
    let mut params = Params::new();
    for &(k, v) in pairs {
        params.set(k, v);
    }
    build_policy(
        name,
        &params,
        Deployment {
            concurrency: 2,
            max_replicas: max,
        },
    )
    .unwrap()
}

#[test]
fn queue_depth_formula_clamped_between_min_and_max() {
    let mut p = policy("thaw-depth", &[("min_replicas", 1.0)], 5);
    assert_eq!(p.decide(&snap(0.0, 5, 2, 0)).desired, 4, "ceil(7 / 2)");
    assert_eq!(p.decide(&snap(1.0, 100, 0, 4)).desired, 5, "max");
    let mut p = policy(
        "thaw-depth",
        &[
            ("min_replicas", 1.0),
            ("predictive", 0.0),
            ("keep_warm", 0.0),
        ],
        5,
    );
    assert_eq!(p.decide(&snap(0.0, 0, 0, 0)).desired, 1, "min");
    let mut p = policy("thaw-depth", &[("tasks_per_replica", 4.0)], 5);
    assert_eq!(p.decide(&snap(0.0, 9, 0, 0)).desired, 3, "ceil(9 / 4)");
}

#[test]
fn the_first_task_at_zero_wakes_a_replica_at_once() {
    for name in ["thaw", "thaw-depth"] {
        let mut p = policy(name, &[], 5);
        assert!(p.wakes_on_work_at_zero(), "{name}");
        assert_eq!(
            p.decide(&snap(0.0, 0, 0, 0)).desired,
            0,
            "{name}: nothing to do"
        );
        assert_eq!(p.decide(&snap(0.5, 1, 0, 0)).desired, 1, "{name}: one task");
    }
}

#[test]
fn keeps_one_replica_warm_for_keep_warm_then_scales_to_zero() {
    let mut p = policy(
        "thaw-depth",
        &[
            ("predictive", 0.0),
            ("keep_warm", 60.0),
            ("scale_down_delay", 0.0),
        ],
        5,
    );
    assert_eq!(p.decide(&snap(0.0, 0, 1, 1)).desired, 1);
    let d = p.decide(&snap(1.0, 0, 0, 1));
    assert_eq!(
        (d.desired, d.reason, d.wake_at),
        (1, "keep warm", Some(61.0))
    );
    assert_eq!(p.decide(&snap(60.9, 0, 0, 1)).desired, 1);
    let d = p.decide(&snap(61.0, 0, 0, 1));
    assert_eq!((d.desired, d.reason), (0, "idle past keep_warm"));
}

#[test]
fn scale_down_waits_for_the_delay_and_halves_at_most() {
    let mut p = policy("thaw-depth", &[("scale_down_delay", 30.0)], 20);
    assert_eq!(p.decide(&snap(0.0, 16, 0, 0)).desired, 8);
    assert_eq!(
        p.decide(&snap(10.0, 2, 0, 8)).desired,
        8,
        "within the delay"
    );
    assert_eq!(p.decide(&snap(31.0, 2, 0, 8)).desired, 4, "half");
    assert_eq!(p.decide(&snap(32.0, 2, 0, 4)).desired, 2);
    assert_eq!(p.decide(&snap(33.0, 2, 0, 2)).desired, 1);
    // Scale-up is never delayed.
    assert_eq!(p.decide(&snap(34.0, 12, 0, 1)).desired, 6);
}

/// A latency policy fed `rate` arrivals per second for `secs` seconds.
fn latency_policy_at_rate(
    rate: f64,
    secs: u32,
    pairs: &[(&str, f64)],
) -> (Box<dyn Policy>, Snapshot) {
    let mut p = policy("thaw", pairs, 50);
    let mut s = snap(0.0, 0, 1, 1);
    s.service_time = Some(1.0);
    for t in 0..=secs {
        s.now = f64::from(t);
        // Arrivals so far (rounded down: a count).
        #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
        let arrived = (rate * s.now) as u64;
        s.arrivals_total = arrived;
        p.decide(&s);
    }
    (p, s)
}

#[test]
fn latency_policy_runs_the_fewest_replicas_that_meet_the_target() {
    let (mut p, mut s) =
        latency_policy_at_rate(6.0, 120, &[("target_latency", 2.0), ("lookahead", 0.0)]);
    let want = super::replicas_for_latency(6.0, 1.0, 2, 2.0, 0.95, 50);
    s.replicas = ready(want as usize, Some(0.0));
    s.now += 1.0;
    s.arrivals_total += 6;
    let d = p.decide(&s);
    assert_eq!((d.desired, d.reason), (want, "latency target"));
    assert!(
        want >= 4,
        "6/s of 1 s tasks on 2 slots each need more than 3: {want}"
    );
}

#[test]
fn a_backlog_that_drains_before_a_cold_start_starts_nothing() {
    let pairs = [("target_latency", 5.0), ("lookahead", 0.0)];
    // A light load on two replicas, then 30 tasks queue up at once.
    let (mut slow, mut s) = latency_policy_at_rate(0.5, 120, &pairs);
    s.replicas = ready(2, Some(0.0));
    s.queued = 30;
    s.cold_start = 60.0;
    let d = slow.decide(&s);
    assert_eq!(
        (d.desired, d.reason),
        (2, "backlog drains before a cold start")
    );
    // The same backlog when a replica starts in half a second: worth starting more.
    let (mut fast, mut s) = latency_policy_at_rate(0.5, 120, &pairs);
    s.replicas = ready(2, Some(0.0));
    s.queued = 30;
    s.cold_start = 0.5;
    let d = fast.decide(&s);
    assert_eq!(
        (d.desired, d.reason),
        (3, "backlog"),
        "ceil(30 × 1 / (2 × 5))"
    );
}

#[test]
fn a_burst_is_planned_for_while_a_cold_start_is_longer_than_the_target() {
    let pairs = [
        ("target_latency", 5.0),
        ("lookahead", 0.0),
        ("burst_memory", 120.0),
        ("scale_down_delay", 10.0),
    ];
    let mut p = policy("thaw", &pairs, 50);
    let mut s = snap(0.0, 0, 1, 1);
    s.service_time = Some(1.0);
    s.cold_start = 30.0;
    // 50 tasks in the first five seconds, then a trickle.
    for t in 0..=200u32 {
        s.now = f64::from(t);
        s.arrivals_total = u64::from(t.min(5) * 10 + t / 10);
        let d = p.decide(&s);
        s.replicas = ready(d.desired as usize, Some(0.0));
        if t == 100 {
            assert!(
                d.desired >= 3,
                "still sized for the burst at {t}: {}",
                d.desired
            );
        }
    }
    assert!(
        s.current() <= 1,
        "the burst is forgotten after burst_memory: {}",
        s.current()
    );
}

#[test]
fn predictive_keep_warm_lets_go_and_pre_warms_a_cold_start_before_the_next_burst() {
    let mut p = policy(
        "thaw-depth",
        &[("scale_down_delay", 30.0), ("min_idle_samples", 3.0)],
        5,
    );
    // Bursts every 200 s: busy for a second, idle for 199 s.
    for k in 0..4u32 {
        let t0 = f64::from(k) * 200.0;
        p.decide(&snap(t0, 0, 1, 1));
        p.decide(&snap(t0 + 1.0, 0, 0, 1));
    }
    let since = 601.0; // the fourth idle period began here
    let d = p.decide(&snap(since + 31.0, 0, 0, 1));
    // The plan: ready by 0.9 × 199 s, so start 10 s (the cold start) before.
    let start = since + 199.0 * 0.9 - 10.0;
    assert_eq!((d.desired, d.reason), (0, "idle: pre-warm planned"));
    assert!((d.wake_at.unwrap() - start).abs() < 1e-9, "{d:?}");
    let d = p.decide(&snap(start + 0.1, 0, 0, 0));
    assert_eq!(
        (d.desired, d.reason),
        (1, "pre-warm before the predicted task")
    );
    assert!(
        (d.wake_at.unwrap() - (since + 200.0 * 1.1)).abs() < 1e-9,
        "{d:?}"
    );
    let d = p.decide(&snap(since + 221.0, 0, 0, 1));
    assert_eq!((d.desired, d.reason), (0, "idle past the predicted gap"));
}

#[test]
fn the_idle_time_histogram_survives_a_restart() {
    let learn = |p: &mut Box<dyn Policy>| {
        for k in 0..4u32 {
            let t0 = f64::from(k) * 200.0;
            p.decide(&snap(t0, 0, 1, 1));
            p.decide(&snap(t0 + 1.0, 0, 0, 1));
        }
    };
    let mut old = policy(
        "thaw",
        &[("scale_down_delay", 30.0), ("min_idle_samples", 3.0)],
        5,
    );
    learn(&mut old);
    let state = old.saved_state().unwrap();
    // A new process: the plan is there at the first idle period, without learning again.
    let mut new = policy(
        "thaw",
        &[("scale_down_delay", 30.0), ("min_idle_samples", 3.0)],
        5,
    );
    assert!(new.restore_state(&state));
    new.decide(&snap(0.0, 0, 1, 1));
    new.decide(&snap(1.0, 0, 0, 1));
    let d = new.decide(&snap(32.0, 0, 0, 1));
    assert_eq!(d.reason, "idle: pre-warm planned");
    // State of another shape (other bins), or not a histogram at all, is not taken.
    let mut other = policy("thaw", &[("idle_bin", 2.0)], 5);
    assert!(!other.restore_state(&state));
    assert!(!other.restore_state(&serde_json::json!({"counts": "no"})));
    assert!(policy("knative", &[], 5).saved_state().is_none());
}

#[test]
fn bad_parameters_are_refused_with_their_key() {
    let d = Deployment {
        concurrency: 1,
        max_replicas: 3,
    };
    let build = |pairs: &[(&str, f64)], name: &str| {
        let mut params = Params::new();
        for &(k, v) in pairs {
            params.set(k, v);
        }
        build_policy(name, &params, d).map(|_| ())
    };
    assert!(
        matches!(build(&[("min_replicas", 4.0)], "thaw"), Err(ParamError::BadValue { key, .. }) if key == "min_replicas")
    );
    assert!(
        matches!(build(&[("percentile", 1.0)], "thaw"), Err(ParamError::BadValue { key, .. }) if key == "percentile")
    );
    assert!(
        matches!(build(&[("keep_warm", -1.0)], "thaw-depth"), Err(ParamError::BadValue { key, .. }) if key == "keep_warm")
    );
    assert!(matches!(
        build(&[("tasks_per_replica", f64::NAN)], "thaw-depth"),
        Err(ParamError::BadValue { .. })
    ));
    assert!(matches!(
        build(&[("target_latency", 1.0)], "thaw-depth"),
        Err(ParamError::UnknownKey { .. })
    ));
    assert!(matches!(
        build(&[], "fifo"),
        Err(ParamError::UnknownPolicy { .. })
    ));
    let mut params = Params::new();
    assert!(matches!(
        params.parse_pair("keep_warm"),
        Err(ParamError::NotKeyValue(_))
    ));
    assert!(matches!(
        params.parse_pair("keep_warm=soon"),
        Err(ParamError::BadValue { .. })
    ));
    // Shared keys pass through a comparison's lenient parameters.
    params.set("target_latency", 2.0);
    assert!(build_policy("hpa", &params.clone().lenient(), d).is_ok());
    assert!(build_policy("hpa", &params, d).is_err());
}
