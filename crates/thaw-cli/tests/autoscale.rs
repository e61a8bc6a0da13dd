//! `thaw autoscale simulate` from the command line: the JSON it promises, and clear errors
//! for bad traces and parameters.

use std::process::Command;

#[allow(
    clippy::unwrap_used,
    reason = "tests: a failed step panics with its message"
)]
fn thaw(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_thaw"))
        .args(args)
        .output()
        .unwrap()
}

#[test]
fn compare_prints_every_policy_as_json() {
    let out = thaw(&[
        "autoscale",
        "simulate",
        "--trace",
        "synthetic:spike:3",
        "--compare",
        "--json",
        "--cold-start",
        "5",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["trace"], "synthetic:spike:3");
    let policies = v["policies"].as_array().unwrap();
    let names: Vec<&str> = policies
        .iter()
        .map(|p| p["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        names,
        [
            "thaw",
            "thaw-depth",
            "knative",
            "hpa",
            "keda",
            "ray-serve",
            "beta9"
        ]
    );
    for p in policies {
        for key in [
            "replica_seconds",
            "slo_attainment",
            "p50_s",
            "p95_s",
            "p99_s",
            "cold_starts",
            "scale_events",
            "served",
            "dropped",
        ] {
            assert!(p[key].is_number(), "{key} in {p}");
        }
    }
}

#[test]
fn a_malformed_trace_line_is_named_and_bad_parameters_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let trace = dir.path().join("azure.csv");
    std::fs::write(&trace, "TIMESTAMP,ContextTokens,GeneratedTokens\n2023-11-16 18:00:00.0,10,1\n2023-11-16 18:00:01.0,ten,1\n").unwrap();
    let out = thaw(&["autoscale", "simulate", "--trace", trace.to_str().unwrap()]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains("azure.csv:3:") && err.contains("ContextTokens"),
        "{err}"
    );
    for (args, want) in [
        (vec!["--policy", "fifo"], "unknown policy"),
        (vec!["--param", "keep_warm=-3"], "keep_warm"),
        (vec!["--param", "nonsense=1"], "has no parameter"),
        (vec!["--cold-start=-1"], "--cold-start"),
    ] {
        let mut all = vec!["autoscale", "simulate", "--trace", "synthetic:poisson"];
        all.extend(args);
        let out = thaw(&all);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success() && err.contains(want),
            "{all:?}: {err}"
        );
    }
}
