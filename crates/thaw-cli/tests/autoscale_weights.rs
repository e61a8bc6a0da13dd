//! Scale-ups load the deployment's weights into the node's resident tier, and replicas
//! get them over the weights socket: process replicas started by the autoscaler run
//! `thaw weights get` (as a serving process would ask), with the socket, image and files
//! from their environment, and their checksums of the memory received must equal those
//! of the file loaded straight from the store. Needs no root, FUSE or service.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::too_many_lines,
    reason = "an end-to-end scenario: a failed step panics with its message, and it reads top to bottom"
)]

mod common;
use common::daemon::{block_on, only_deployment, Daemon};
use common::{succeed, thaw, THAW};

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};
use thaw_api::api::{DeploymentStatus, Signals};

fn status(daemon: &Daemon) -> DeploymentStatus {
    only_deployment(daemon)
}

/// Polls `done` until it holds, or fails after `secs` seconds with `what`.
fn wait_until(secs: u64, what: &str, mut done: impl FnMut() -> bool, log: impl Fn() -> String) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while !done() {
        assert!(Instant::now() < deadline, "waiting for {what}\n{}", log());
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A safetensors file of a few tensors, one spanning several chunks.
fn weights_file(path: &Path) {
    let big: Vec<u8> = (0..(3u32 << 20))
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 11) as u8)
        .collect();
    let small: Vec<u8> = (0..64u8).collect();
    let header = format!(
        r#"{{"a.weight":{{"dtype":"BF16","shape":[32],"data_offsets":[0,64]}},"b.weight":{{"dtype":"U8","shape":[{n}],"data_offsets":[64,{end}]}}}}"#,
        n = big.len(),
        end = 64 + big.len()
    );
    let mut f = (header.len() as u64).to_le_bytes().to_vec();
    f.extend_from_slice(header.as_bytes());
    f.extend_from_slice(&small);
    f.extend_from_slice(&big);
    std::fs::write(path, f).unwrap();
}

fn config(out: &Path) -> String {
    format!(
        r#"tick_seconds = 0.5

[[deployment]]
name = "llm"
weights = "w"
weights_files = ["model.safetensors"]
command = ["/bin/sh", "-c", "{THAW} weights get \"$THAW_WEIGHTS_IMAGE\" \"$THAW_WEIGHTS_FILES\" --checksums > {out}/$THAW_REPLICA.tmp && mv {out}/$THAW_REPLICA.tmp {out}/$THAW_REPLICA.sums && exec sleep 600"]
actuator = "process"
policy = "thaw-depth"
max_replicas = 2
cold_start_seconds = 1
stop_grace_seconds = 2

[deployment.params]
keep_warm = 1
scale_down_delay = 1
predictive = 0

[deployment.source]
push = true
"#,
        out = out.display()
    )
}

#[test]
fn replicas_scaled_up_get_the_weights_their_scale_up_made_resident() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    std::fs::create_dir_all(&src).unwrap();
    weights_file(&src.join("model.safetensors"));
    let store = tmp.path().join("store");
    thaw(&store, &["build", src.to_str().unwrap(), "--tag", "w"]);
    let want = succeed(
        Command::new(THAW)
            .arg("--store")
            .arg(&store)
            .args([
                "weights",
                "load",
                "w",
                "model.safetensors",
                "--device",
                "host",
            ])
            .arg("--checksums"),
    );
    assert_eq!(want.lines().count(), 2, "{want}");

    let out = tmp.path().join("out");
    std::fs::create_dir_all(&out).unwrap();
    let cfg = tmp.path().join("autoscale.toml");
    std::fs::write(&cfg, config(&out)).unwrap();
    let socket = tmp.path().join("weights.sock");
    let dir = tmp.path().join("daemon");
    std::fs::create_dir_all(&dir).unwrap();
    let daemon = Daemon::autoscale_with(
        &dir,
        store.to_str().unwrap(),
        &cfg,
        &[
            "--resident-weights",
            "268435456",
            "--weights-socket",
            socket.to_str().unwrap(),
        ],
        &[],
    );
    let metrics = block_on(daemon.metrics());
    assert!(
        metrics.contains("thaw_weights_resident_models 0"),
        "{metrics}"
    );

    let push = |queued: u64| {
        let payload = Signals {
            queued,
            ..Signals::default()
        };
        block_on(daemon.client().push_signals("llm", &payload)).unwrap();
    };
    push(2);
    let sums = |s: &DeploymentStatus| -> Vec<String> {
        s.replicas
            .iter()
            .filter_map(|r| std::fs::read_to_string(out.join(format!("{}.sums", r.name))).ok())
            .collect()
    };
    wait_until(
        60,
        "two replicas with their weights' checksums",
        || {
            push(2);
            sums(&status(&daemon)).len() == 2
        },
        || daemon.log(),
    );
    let up = status(&daemon);
    for got in sums(&up) {
        assert_eq!(got, want, "a replica's weights differ from the file's");
    }
    assert_eq!(up.starts, 2, "{up:?}");
    assert_eq!(
        up.prewarms, up.starts,
        "a prewarm before every start: {up:?}"
    );
    let metrics = block_on(daemon.metrics());
    // Loaded once, by the first scale-up's prewarm (or the first replica's request,
    // which waits for it), and shared by both replicas.
    assert!(
        metrics.contains("thaw_weights_resident_models 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("thaw_weights_resident_loads_total 1"),
        "{metrics}"
    );
    // And it was the prewarm that made them resident: its job says so.
    let jobs = block_on(daemon.client().jobs()).unwrap();
    assert!(
        jobs.iter()
            .any(|j| j.weights_resident == 1 && j.errors == 0),
        "{jobs:?}"
    );

    // The deployment's socket hands over its own weights only, and is reachable on the
    // host only through a directory of the daemon's user.
    let scoped = dir.join("state/autoscale/weights/llm/weights.sock");
    let refused = Command::new(THAW)
        .args(["weights", "get", "w", "other.safetensors", "--socket"])
        .arg(&scoped)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&refused.stderr);
    assert!(!refused.status.success(), "{err}");
    assert!(
        err.contains("hands over only model.safetensors of w"),
        "{err}"
    );
    use std::os::unix::fs::PermissionsExt;
    let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    // Its own directory is what containers bind-mount; the one above guards it.
    assert_eq!(mode(scoped.parent().unwrap()), 0o755);
    assert_eq!(mode(scoped.parent().unwrap().parent().unwrap()), 0o700);
    assert_eq!(mode(&scoped), 0o666);

    push(0);
    wait_until(
        30,
        "back to zero",
        || {
            push(0);
            let s = status(&daemon);
            s.desired == 0 && s.replicas.is_empty()
        },
        || daemon.log(),
    );
    assert_eq!(status(&daemon).crashes, 0);
    daemon.stop();
}

#[test]
fn weights_get_says_why_it_got_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let out = Command::new(THAW)
        .args(["weights", "get", "w", "model.safetensors", "--socket"])
        .arg(tmp.path().join("none.sock"))
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains("none.sock") && err.contains("model.safetensors"),
        "{err}"
    );
    // Nothing was made where a store would have been.
    assert!(std::fs::read_dir(tmp.path()).unwrap().next().is_none());
}
