//! Containers the daemon owns (`thaw run --detach`): their life cycle through the API, and
//! what happens to them when the daemon dies: a restarted daemon adopts the ones whose
//! roots' FUSE connections were kept by holder processes, and cleans up after the rest.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::too_many_lines,
    reason = "end-to-end scenarios: a failed step panics with its message, and a scenario reads top to bottom"
)]

mod common;
use common::container::{debian_store, text, Node};
use common::daemon::Daemon;

use std::path::Path;
use std::time::{Duration, Instant};

/// Runs `thaw ARGS --server unix:SOCKET` on `node`; returns (success, stdout, stderr).
fn client(node: &Node, daemon: &Daemon, args: &[&str]) -> (bool, String, String) {
    let server = format!("unix:{}", daemon.socket.display());
    // Right after the subcommand: `run`'s arguments after `--` are the container's.
    let mut full = vec![args[0], "--server", &server];
    full.extend_from_slice(&args[1..]);
    let out = node.command(&full).output().unwrap();
    let (o, e) = text(&out);
    (out.status.success(), o, e)
}

/// Polls `thaw logs NAME` until it contains `want` (60 s deadline).
fn wait_for_log(node: &Node, daemon: &Daemon, name: &str, want: &str) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (_, out, err) = client(node, daemon, &["logs", name]);
        if out.contains(want) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "no {want:?} in {name}'s log: {out}{err}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A node with a daemon of its own over the Debian store, both using `node`'s run directory.
fn daemon_on(node: &Node, store: &Path) -> Daemon {
    let run_dir = node.tmp.path().join("run");
    let env = [("THAW_RUN_DIR", run_dir.to_str().unwrap())];
    let dir = node.tmp.path().join("daemon");
    std::fs::create_dir_all(&dir).unwrap();
    Daemon::start_with(&dir, store.to_str().unwrap(), &[], &env)
}

#[test]
fn a_detached_container_is_owned_by_the_daemon() {
    let test = "a_detached_container_is_owned_by_the_daemon";
    let Some(store) = debian_store(test) else {
        return;
    };
    let node = Node::new(store);
    let daemon = daemon_on(&node, store);
    let script = "echo hello from the daemon; exec sleep 1000";
    let (ok, id, err) = client(
        &node,
        &daemon,
        &[
            "run", "--detach", "--name", "web", "debian", "--", "sh", "-c", script,
        ],
    );
    assert!(ok && id.trim().len() == 16, "{err}");
    wait_for_log(&node, &daemon, "web", "hello from the daemon");
    let ps = client(&node, &daemon, &["ps"]).1;
    assert!(
        ps.contains(id.trim()) && ps.contains("web") && ps.contains("running"),
        "{ps}"
    );
    let (ok, _, err) = client(&node, &daemon, &["rm", "web"]);
    assert!(!ok && err.contains("stop it first"), "{err}");
    // The shell is PID 1 without a handler: SIGTERM is ignored, SIGKILL follows.
    let (ok, out, err) = client(&node, &daemon, &["stop", "-t", "1", "web"]);
    assert!(ok && out.contains("exited (137)"), "{out}{err}");
    // With catatonit as init, SIGTERM reaches the program.
    client(
        &node,
        &daemon,
        &[
            "run", "--detach", "--init", "--name", "calm", "debian", "--", "sleep", "1000",
        ],
    );
    let (ok, out, err) = client(&node, &daemon, &["stop", "-t", "30", "calm"]);
    assert!(ok && out.contains("exited (143)"), "{out}{err}");
    for name in ["web", "calm"] {
        assert!(client(&node, &daemon, &["rm", name]).0);
    }
    assert!(!client(&node, &daemon, &["ps"]).1.contains("web"));
    // A bad request is the daemon's clear error; nothing is left.
    let (ok, _, err) = client(
        &node,
        &daemon,
        &["run", "--detach", "--user", "ghost", "debian"],
    );
    assert!(!ok && err.contains("\"ghost\" not found"), "{err}");
    drop(daemon);
    node.assert_clean("after the daemon");
}

/// The holder processes' pids in the node's mount registry.
fn holder_pids(node: &Node) -> Vec<i32> {
    let mounts = node.tmp.path().join("run/mounts");
    let records = std::fs::read_dir(mounts).into_iter().flatten().flatten();
    records
        .filter_map(|e| std::fs::read_to_string(e.path()).ok())
        .filter_map(|text| {
            text.lines()
                .find_map(|l| l.strip_prefix("holder_pid=")?.parse().ok())
        })
        .collect()
}

/// Whether `pid` runs (a zombie does not).
fn alive(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| Some(s.rsplit_once(") ")?.1.starts_with('Z')))
        == Some(false)
}

#[test]
fn a_restarted_daemon_adopts_the_containers_its_predecessor_left_running() {
    let test = "a_restarted_daemon_adopts_the_containers_its_predecessor_left_running";
    let Some(store) = debian_store(test) else {
        return;
    };
    let node = Node::new(store);
    let daemon = daemon_on(&node, store);
    // The container reads a file it has not touched yet only after the daemon is gone,
    // and starts programs again and again under the new daemon while its shell keeps the
    // loader and the C library open from the old one: the new daemon must answer their
    // opens in the same mode (plain or passthrough) as the kernel's live opens, or they
    // fail with EIO once it has verified those files for passthrough.
    let script = "echo started; sleep 3; ok=0; for i in 1 2 3 4 5 6; do \
                  wc -c < /usr/share/dpkg/cputable && ok=$((ok+1)); sleep 0.3; done; \
                  echo DONE $ok; exec sleep 1000";
    let (ok, id, err) = client(
        &node,
        &daemon,
        &[
            "run", "--detach", "--name", "survivor", "debian", "--", "sh", "-c", script,
        ],
    );
    assert!(ok, "{err}");
    wait_for_log(&node, &daemon, "survivor", "started");
    assert_eq!(holder_pids(&node).len(), 1, "one holder for its root");
    daemon.kill9();
    // While no daemon runs, `thaw run` leaves the held container alone.
    let out = node.run(&["debian", "--", "true"]);
    assert!(out.status.success(), "{out:?}");
    assert!(!text(&out).1.contains("cleaned up container"), "{out:?}");
    let daemon = daemon_on(&node, store);
    let log = daemon.log();
    assert!(log.contains("adopted 1 running container"), "{log}");
    wait_for_log(&node, &daemon, "survivor", "DONE ");
    let log = client(&node, &daemon, &["logs", "survivor"]).1;
    assert!(log.contains("DONE 6"), "every program started: {log}");
    let ps = client(&node, &daemon, &["ps"]).1;
    assert!(
        ps.contains(id.trim()) && ps.contains("survivor") && ps.contains("running"),
        "{ps}"
    );
    let (ok, out, err) = client(&node, &daemon, &["stop", "-t", "1", "survivor"]);
    assert!(ok, "{out}{err}");
    assert!(client(&node, &daemon, &["rm", "survivor"]).0);
    // With the holders gone too, nothing can be adopted: the next `thaw run` cleans up.
    client(
        &node,
        &daemon,
        &[
            "run", "--detach", "--name", "orphan", "debian", "--", "sleep", "1000",
        ],
    );
    let holders = holder_pids(&node);
    assert_eq!(holders.len(), 1, "one holder for the orphan's root");
    daemon.kill9();
    for &pid in &holders {
        common::container::sig(pid, libc::SIGKILL);
    }
    let deadline = Instant::now() + Duration::from_secs(20);
    while holders.iter().any(|&p| alive(p)) {
        assert!(Instant::now() < deadline, "holders still alive");
        std::thread::sleep(Duration::from_millis(20));
    }
    let out = node.run(&["debian", "--", "true"]);
    assert!(
        text(&out).1.contains("cleaned up container orphan"),
        "{out:?}"
    );
    let state = node.tmp.path().join("daemon/state/containers");
    let left: Vec<_> = std::fs::read_dir(state)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .collect();
    assert!(left.is_empty(), "{left:?}");
    node.assert_clean("after the daemon");
}
