//! Good and bad configuration files.

use super::*;

const GOOD: &str = r#"
tick_seconds = 0.5

[[deployment]]
name = "echo"
image = "debian"
command = ["/bin/sh", "-c", "echo $THAW_TASK"]
policy = "thaw-depth"
max_replicas = 4
concurrency = 2
cold_start_seconds = 3

[deployment.params]
keep_warm = 30
min_replicas = 0

[deployment.source]
redis = "redis://127.0.0.1:6379"
queue = "tasks"
"#;

fn err(text: &str) -> String {
    parse(Path::new("scale.toml"), text)
        .unwrap_err()
        .to_string()
}

#[test]
fn a_good_file_parses() {
    let c = parse(Path::new("scale.toml"), GOOD).unwrap();
    assert!((c.tick_seconds - 0.5).abs() < 1e-12);
    let d = &c.deployments[0];
    assert_eq!(d.name.get_ref(), "echo");
    assert_eq!(
        d.deployment(),
        Deployment {
            concurrency: 2,
            max_replicas: 4
        }
    );
    assert_eq!(d.source.queue, "tasks");
    assert_eq!(d.runtime, "runc");
}

#[test]
fn every_error_names_the_file_the_line_and_the_key() {
    for (from, to, line, want) in [
        (
            "max_replicas = 4",
            "max_replicas = 0",
            9,
            "max_replicas: must be at least 1",
        ),
        (
            "concurrency = 2",
            "concurrency = 0",
            10,
            "concurrency: must be at least 1",
        ),
        (
            "policy = \"thaw-depth\"",
            "policy = \"fifo\"",
            8,
            "unknown policy",
        ),
        ("keep_warm = 30", "keep_warm = -30", 14, "keep_warm"),
        (
            "min_replicas = 0",
            "min_replicas = 9",
            15,
            "above max_replicas",
        ),
        (
            "keep_warm = 30",
            "keep_wurm = 30",
            14,
            "has no parameter \"keep_wurm\"",
        ),
        (
            "cold_start_seconds = 3",
            "cold_start_seconds = -3",
            11,
            "cold_start_seconds",
        ),
        ("image = \"debian\"\n", "", 4, "missing field `image`"),
        (
            "max_replicas = 4",
            "max_replicas = \"four\"",
            9,
            "invalid type",
        ),
        ("concurrency = 2", "concurency = 2", 10, "unknown field"),
    ] {
        let text = GOOD.replace(from, to);
        let e = err(&text);
        assert!(e.starts_with(&format!("scale.toml:{line}:")), "{to}: {e}");
        assert!(e.contains(want), "{to}: {e}");
    }
    let twice = format!("{GOOD}\n{}", &GOOD[GOOD.find("[[deployment]]").unwrap()..]);
    assert!(err(&twice).contains("names two deployments"));
    assert!(err("tick_seconds = 0\n").contains("tick_seconds"));
    assert!(err("[[deployment]\n").starts_with("scale.toml:1:"));
}
