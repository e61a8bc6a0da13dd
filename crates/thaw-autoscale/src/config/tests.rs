//! Good and bad configuration files.

use super::*;
use crate::policy::Deployment;

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
runtime = "runc"

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
    assert_eq!(d.source.get_ref().queue.as_deref(), Some("tasks"));
    assert_eq!(d.runtime, "runc");
}

fn expect_error(from: &str, to: &str, line: usize, want: &str) {
    let text = GOOD.replace(from, to);
    let e = err(&text);
    assert!(e.starts_with(&format!("scale.toml:{line}:")), "{to}: {e}");
    assert!(e.contains(want), "{to}: {e}");
}

#[test]
fn source_and_actuator_errors_name_their_line() {
    for (from, to, line, want) in [
        ("queue = \"tasks\"", "", 18, "needs both redis and queue"),
        (
            "queue = \"tasks\"",
            "queue = \"tasks\"\npush = true",
            18,
            "not both",
        ),
        (
            "command = [\"/bin/sh\", \"-c\", \"echo $THAW_TASK\"]",
            "",
            18,
            "needs the command each task runs",
        ),
        (
            "max_replicas = 4",
            "max_replicas = 4\nport_base = 65534",
            10,
            "port_base",
        ),
        (
            "runtime = \"runc\"",
            "actuator = \"webhook\"",
            12,
            "needs webhook = ",
        ),
        (
            "runtime = \"runc\"",
            "actuator = \"webhook\"\nwebhook = \"ftp://x\"",
            13,
            "webhook: must be an http",
        ),
        (
            "runtime = \"runc\"",
            "webhook = \"http://x\"",
            5,
            "only the webhook actuator",
        ),
        (
            "runtime = \"runc\"",
            "actuator = \"kubernetes\"",
            12,
            "unknown variant",
        ),
    ] {
        expect_error(from, to, line, want);
    }
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
        ("keep_warm = 30", "keep_warm = -30", 15, "keep_warm"),
        (
            "min_replicas = 0",
            "min_replicas = 9",
            16,
            "above max_replicas",
        ),
        (
            "keep_warm = 30",
            "keep_wurm = 30",
            15,
            "has no parameter \"keep_wurm\"",
        ),
        (
            "cold_start_seconds = 3",
            "cold_start_seconds = -3",
            11,
            "cold_start_seconds",
        ),
        (
            "image = \"debian\"\n",
            "",
            5,
            "actuator: the containers actuator needs an image",
        ),
        (
            "max_replicas = 4",
            "max_replicas = \"four\"",
            9,
            "invalid type",
        ),
        ("concurrency = 2", "concurency = 2", 10, "unknown field"),
    ] {
        expect_error(from, to, line, want);
    }
    let twice = format!("{GOOD}\n{}", &GOOD[GOOD.find("[[deployment]]").unwrap()..]);
    assert!(err(&twice).contains("names two deployments"));
    assert!(err("tick_seconds = 0\n").contains("tick_seconds"));
    assert!(err("[[deployment]\n").starts_with("scale.toml:1:"));
}

const PUSH: &str = r#"
[[deployment]]
name = "web"
command = ["/usr/bin/python3", "-m", "http.server"]
actuator = "process"
max_replicas = 3
port_base = 18100

[deployment.source]
push = true

[deployment.readiness]
http = "http://127.0.0.1:{port}/"
period_seconds = 0.2
"#;

#[test]
fn push_sources_processes_webhooks_and_probes_parse() {
    let c = parse(Path::new("push.toml"), PUSH).unwrap();
    let d = &c.deployments[0];
    assert_eq!(*d.actuator.get_ref(), ActuatorKind::Process);
    assert!(d.source.get_ref().push && d.source.get_ref().redis().is_none());
    assert_eq!((d.port(0), d.port(2)), (Some(18100), Some(18102)));
    let r = d.readiness.as_ref().unwrap().get_ref();
    assert!((r.period_seconds - 0.2).abs() < 1e-12 && (r.timeout_seconds - 2.0).abs() < 1e-12);
    let hook = PUSH
        .replace(
            "actuator = \"process\"",
            "actuator = \"webhook\"\nwebhook = \"https://k8s.example/scale\"",
        )
        .replace(
            "[deployment.readiness]\nhttp = \"http://127.0.0.1:{port}/\"\nperiod_seconds = 0.2\n",
            "",
        );
    let c = parse(Path::new("hook.toml"), &hook).unwrap();
    assert_eq!(
        c.deployments[0]
            .webhook
            .as_ref()
            .map(|w| w.get_ref().as_str()),
        Some("https://k8s.example/scale")
    );
}

#[test]
fn bad_readiness_and_sources_name_their_line() {
    for (from, to, line, want) in [
        (
            "period_seconds = 0.2",
            "period_seconds = 0",
            12,
            "must be positive",
        ),
        (
            "period_seconds = 0.2",
            "command = [\"true\"]",
            12,
            "exactly one of",
        ),
        ("port_base = 18100", "", 12, "needs port_base"),
        ("push = true", "push = false", 9, "needs a Redis queue"),
        (
            "actuator = \"process\"",
            "actuator = \"process\"\nimage = \"x\"",
            1,
            "",
        ),
    ] {
        let text = PUSH.replace(from, to);
        if want.is_empty() {
            assert!(parse(Path::new("push.toml"), &text).is_ok());
            continue;
        }
        let e = parse(Path::new("push.toml"), &text)
            .unwrap_err()
            .to_string();
        assert!(e.starts_with(&format!("push.toml:{line}:")), "{to}: {e}");
        assert!(e.contains(want), "{to}: {e}");
    }
}

#[test]
fn weights_files_need_the_weights_image_and_paths_inside_it() {
    let with = |extra: &str| {
        GOOD.replace(
            "runtime = \"runc\"",
            &format!("runtime = \"runc\"\n{extra}"),
        )
    };
    let c = parse(
        Path::new("scale.toml"),
        &with("weights = \"llm\"\nweights_files = [\"model.safetensors\", \"shards/model.safetensors.index.json\"]"),
    )
    .unwrap();
    assert_eq!(
        c.deployments[0].weights_files.get_ref(),
        &["model.safetensors", "shards/model.safetensors.index.json"]
    );
    assert!(parse(Path::new("scale.toml"), GOOD).unwrap().deployments[0]
        .weights_files
        .get_ref()
        .is_empty());
    for (extra, want) in [
        (
            "weights_files = [\"model.safetensors\"]",
            "set weights = \"IMAGE\"",
        ),
        (
            "weights = \"llm\"\nweights_files = [\"../etc/shadow\"]",
            "is not a path in the image",
        ),
        (
            "weights = \"llm\"\nweights_files = [\"a,b\"]",
            "is not a path in the image",
        ),
        (
            "weights = \"llm\"\nweights_files = [\"\"]",
            "is not a path in the image",
        ),
    ] {
        let e = err(&with(extra));
        assert!(
            e.contains("weights_files") && e.contains(want),
            "{extra}: {e}"
        );
        assert!(e.starts_with("scale.toml:"), "{e}");
    }
    let many: Vec<String> = (0..=MAX_WEIGHTS_FILES)
        .map(|i| format!("\"f{i}\""))
        .collect();
    let e = err(&with(&format!(
        "weights = \"llm\"\nweights_files = [{}]",
        many.join(",")
    )));
    assert!(e.contains("at most 64 files"), "{e}");
}
