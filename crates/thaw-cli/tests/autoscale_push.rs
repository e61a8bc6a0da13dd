//! The autoscaler's other seams end to end, through the `thaw` binary: a gateway pushing
//! its signals (`thaw autoscale signal` and `POST /v1/deployments/{name}/signals`),
//! replicas as processes (real HTTP servers, each on its slot's port, ready when their
//! readiness probe answers), adoption of those replicas by a daemon restarted after
//! SIGKILL, and the webhook actuator telling an orchestrator (a receiver in this test)
//! the count. Needs only `python3`: no root, no FUSE.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::too_many_lines,
    reason = "end-to-end scenarios: a failed step panics with its message, and a scenario reads top to bottom"
)]

mod common;
use common::daemon::{block_on, only_deployment, Daemon};
use common::{succeed, THAW};

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use thaw_api::api::{DeploymentStatus, Signals};
use thaw_tests::images::have;
use thaw_tests::skip;

/// A base port with `n` free ports after it, below the kernel's ephemeral range
/// (32768 and up here): ports other tests and services get from `bind(0)` or `connect`
/// come from that range, so none can take a slot's port between this check and the
/// replica's start.
fn free_ports(n: u16) -> u16 {
    // Distinct for each call: tests of this file run in parallel in one process.
    static CALLS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let call = CALLS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let seed = u64::from(std::process::id()) * 7919 + call * 1_009;
    for attempt in 0..200u64 {
        let base = 20_000 + ((seed + attempt * 104_729) % 12_000) as u16;
        if (0..n).all(|i| TcpListener::bind(("127.0.0.1", base + i)).is_ok()) {
            return base;
        }
    }
    panic!("no {n} free ports in a row");
}

/// A deployment of HTTP servers (python's `http.server`), one per slot's port.
fn web_config(port_base: u16, extra: &str) -> String {
    format!(
        r#"tick_seconds = 0.5
{extra}
[[deployment]]
name = "web"
command = ["/bin/sh", "-c", "exec python3 -m http.server --bind 127.0.0.1 $THAW_PORT"]
actuator = "process"
policy = "thaw-depth"
max_replicas = 3
cold_start_seconds = 1
stop_grace_seconds = 5
port_base = {port_base}

[deployment.params]
keep_warm = 1
scale_down_delay = 1
predictive = 0

[deployment.source]
push = true

[deployment.readiness]
http = "http://127.0.0.1:{{port}}/"
period_seconds = 0.2
"#
    )
}

fn status(daemon: &Daemon) -> DeploymentStatus {
    only_deployment(daemon)
}

/// Polls until `done` holds, or fails after `secs` seconds with the last status.
fn wait_for(
    daemon: &Daemon,
    secs: u64,
    what: &str,
    done: impl Fn(&DeploymentStatus) -> bool,
) -> DeploymentStatus {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        let s = status(daemon);
        if done(&s) {
            return s;
        }
        assert!(
            Instant::now() < deadline,
            "waiting for {what}: {s:?}\n{}",
            daemon.log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// `thaw autoscale signal web ARGS...` over the daemon's socket; returns its output.
fn signal(daemon: &Daemon, args: &[&str]) -> String {
    succeed(
        Command::new(THAW)
            .args(["autoscale", "signal", "--server"])
            .arg(format!("unix:{}", daemon.socket.display()))
            .arg("web")
            .args(args),
    )
}

/// Whether an HTTP server answers `GET /` on `port`.
fn answers(port: u16) -> bool {
    let Ok(mut s) = TcpStream::connect(("127.0.0.1", port)) else {
        return false;
    };
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let _ = s.write_all(b"GET / HTTP/1.0\r\n\r\n");
    let mut head = [0u8; 12];
    s.read_exact(&mut head).is_ok() && head.starts_with(b"HTTP/1.0 200")
}

/// Whether a process `pid` is alive (and not a zombie).
fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .is_ok_and(|s| s.rsplit(") ").next().is_some_and(|r| !r.starts_with('Z')))
}

/// The pids in the process actuator's records, by replica name.
fn recorded_pids(state: &Path) -> Vec<(String, u32)> {
    let text = std::fs::read(state.join("autoscale/web.replicas.json")).unwrap();
    let records: Vec<serde_json::Value> = serde_json::from_slice(&text).unwrap();
    let mut pids: Vec<(String, u32)> = records
        .iter()
        .map(|r| {
            (
                r["name"].as_str().unwrap().to_string(),
                u32::try_from(r["pid"].as_u64().unwrap()).unwrap(),
            )
        })
        .collect();
    pids.sort();
    pids
}

fn ready(test: &str) -> bool {
    if !have("python3") {
        skip(test, "needs python3 (scripts/test.sh installs it)");
        return false;
    }
    true
}

fn start(dir: &Path, config: &str) -> Daemon {
    let cfg = dir.join("autoscale.toml");
    std::fs::write(&cfg, config).unwrap();
    std::fs::create_dir_all(dir.join("store")).unwrap();
    Daemon::autoscale(
        dir,
        dir.join("store").to_str().unwrap(),
        &cfg,
        &[("RUST_LOG", "warn,thaw_server::autoscale=info")],
    )
}

#[test]
fn pushed_signals_scale_probed_processes_from_zero_to_three_and_back() {
    let test = "pushed_signals_scale_probed_processes_from_zero_to_three_and_back";
    if !ready(test) {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let base = free_ports(3);
    let daemon = start(tmp.path(), &web_config(base, ""));
    let idle = wait_for(&daemon, 20, "the first decision", |s| s.decisions > 0);
    assert_eq!((idle.desired, idle.ready, idle.starts), (0, 0, 0));
    assert_eq!(
        (idle.source.as_str(), idle.actuator.as_str()),
        ("push", "process")
    );

    let out = signal(&daemon, &["--queued", "3"]);
    assert!(out.starts_with("desired "), "{out}");
    let busy = wait_for(&daemon, 30, "three ready replicas", |s| s.ready == 3);
    assert_eq!((busy.starts, busy.peak_replicas), (3, 3), "{busy:?}");
    let mut ports: Vec<u16> = busy.replicas.iter().map(|r| r.port.unwrap()).collect();
    ports.sort_unstable();
    assert_eq!(ports, vec![base, base + 1, base + 2], "one port per slot");
    for p in &ports {
        assert!(answers(*p), "a ready replica serves on its port {p}");
    }
    assert!(busy.replicas.iter().all(|r| r.state == "ready"), "{busy:?}");
    assert_eq!(busy.start_seconds.len(), 3, "{busy:?}");
    assert!(busy.start_seconds.iter().all(|&s| s > 0.0), "{busy:?}");

    // The gateway still has one replica busy: scale-down drains it last and never stops
    // it while the gateway reports work on it.
    let busy_one = busy.replicas[0].name.clone();
    let mut args = vec![
        "--queued".to_string(),
        "0".into(),
        "--in-flight".into(),
        "1".into(),
    ];
    for r in &busy.replicas {
        let n = u32::from(r.name == busy_one);
        args.push("--replica".into());
        args.push(format!("{}={n}", r.name));
    }
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    signal(&daemon, &args);
    let one = wait_for(&daemon, 30, "down to the busy replica", |s| {
        s.ready + s.starting + s.draining == 1
    });
    assert_eq!(
        one.replicas[0].name, busy_one,
        "the busy replica stays: {one:?}"
    );
    assert!(answers(one.replicas[0].port.unwrap()));

    // Now it is idle too: back to zero, every server stopped.
    let payload = Signals {
        queued: 0,
        in_flight: 0,
        completed: Some(3),
        service_seconds: Some(0.5),
        replicas: [(busy_one.clone(), 0)].into_iter().collect(),
    };
    block_on(daemon.client().push_signals("web", &payload)).unwrap();
    let zero = wait_for(&daemon, 30, "back to zero", |s| {
        s.desired == 0 && s.replicas.is_empty()
    });
    assert_eq!(zero.crashes, 0, "a drained replica is no crash: {zero:?}");
    assert_eq!(zero.completed, 3, "{zero:?}");
    let deadline = Instant::now() + Duration::from_secs(10);
    while ports.iter().any(|p| answers(*p)) {
        assert!(Instant::now() < deadline, "a stopped replica still serves");
        std::thread::sleep(Duration::from_millis(100));
    }
    // A bad push is refused with a reason and changes nothing.
    let bad = Command::new(THAW)
        .args(["autoscale", "signal", "--server"])
        .arg(format!("unix:{}", daemon.socket.display()))
        .args(["nosuch", "--queued", "1"])
        .output()
        .unwrap();
    assert!(!bad.status.success());
    assert!(
        String::from_utf8_lossy(&bad.stderr).contains("nosuch"),
        "{bad:?}"
    );
    daemon.stop();
}

#[test]
fn a_daemon_killed_and_restarted_adopts_its_running_replicas() {
    let test = "a_daemon_killed_and_restarted_adopts_its_running_replicas";
    if !ready(test) {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let base = free_ports(3);
    let config = web_config(base, "");
    let daemon = start(tmp.path(), &config);
    signal(&daemon, &["--queued", "2"]);
    let busy = wait_for(&daemon, 30, "two ready replicas", |s| s.ready == 2);
    assert_eq!(busy.starts, 2);
    let state = tmp.path().join("state");
    let before = recorded_pids(&state);
    assert_eq!(before.len(), 2, "{before:?}");
    daemon.kill9();
    for (name, pid) in &before {
        assert!(alive(*pid), "{name} outlives the killed daemon");
    }

    let daemon = start(tmp.path(), &config);
    // Before the gateway's first push the queue is unknown, not empty: the adopted
    // replicas are held, not drained.
    let held = wait_for(&daemon, 30, "the replicas adopted and ready", |s| {
        s.ready == 2 && s.decisions > 2
    });
    assert_eq!(
        held.reason, "holding the replicas until the first signal",
        "{held:?}"
    );
    signal(&daemon, &["--queued", "2"]);
    let adopted = wait_for(&daemon, 30, "the first signal", |s| {
        s.ready == 2 && s.signal_age_seconds.is_some()
    });
    assert_eq!(adopted.adopted, 2, "{adopted:?}");
    assert_eq!(adopted.starts, 0, "no replica started again: {adopted:?}");
    assert_eq!(recorded_pids(&state), before, "the same processes");
    let mut names: Vec<String> = adopted.replicas.iter().map(|r| r.name.clone()).collect();
    names.sort();
    let want: Vec<String> = before.iter().map(|(n, _)| n.clone()).collect();
    assert_eq!(names, want, "{adopted:?}");
    assert!(
        daemon.log().contains("adopted"),
        "the adoption is logged: {}",
        daemon.log()
    );

    // Adopted replicas are stopped like any other: scale to zero ends them.
    signal(&daemon, &["--queued", "0"]);
    wait_for(&daemon, 30, "back to zero", |s| s.replicas.is_empty());
    let deadline = Instant::now() + Duration::from_secs(10);
    while before.iter().any(|(_, pid)| alive(*pid)) {
        assert!(
            Instant::now() < deadline,
            "an adopted replica was not stopped"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    daemon.stop();
}

#[test]
fn a_reused_pid_is_not_adopted() {
    let test = "a_reused_pid_is_not_adopted";
    if !ready(test) {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let base = free_ports(3);
    let config = web_config(base, "");
    // A record naming a live process (this test) with the wrong start time: a pid reused
    // by another process after the replica died must not be adopted, nor signalled.
    let me = std::process::id();
    let records = format!(
        r#"[{{"name":"web-stale","slot":0,"gpus":null,"port":{base},"pid":{me},"started":1}}]"#
    );
    std::fs::create_dir_all(tmp.path().join("state/autoscale")).unwrap();
    std::fs::write(
        tmp.path().join("state/autoscale/web.replicas.json"),
        records,
    )
    .unwrap();
    let daemon = start(tmp.path(), &config);
    let s = wait_for(&daemon, 20, "the first decision", |s| s.decisions > 0);
    assert_eq!((s.adopted, s.replicas.len()), (0, 0), "{s:?}");
    daemon.stop();
    assert!(alive(me));
}

/// An orchestrator's webhook: records each call's JSON and bearer token, and answers that
/// it has the desired count, `ready_lag` fewer of them ready.
struct Receiver {
    url: String,
    calls: Arc<Mutex<Vec<Call>>>,
}

/// One webhook call: its JSON body and bearer token.
type Call = (serde_json::Value, Option<String>);

impl Receiver {
    fn start(ready_lag: u32) -> Receiver {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}/scale", listener.local_addr().unwrap());
        let calls = Arc::new(Mutex::new(Vec::new()));
        let seen = Arc::clone(&calls);
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(conn) = conn else { return };
                let (body, token) = read_request(&conn);
                let desired = u32::try_from(body["desired"].as_u64().unwrap_or(0)).unwrap();
                seen.lock().unwrap().push((body, token));
                let reply = format!(
                    r#"{{"replicas":{desired},"ready":{}}}"#,
                    desired.saturating_sub(ready_lag)
                );
                let mut conn = conn;
                let _ = write!(
                    conn,
                    "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{reply}",
                    reply.len()
                );
            }
        });
        Receiver { url, calls }
    }

    fn desired(&self) -> Vec<u64> {
        let calls = self.calls.lock().unwrap();
        calls
            .iter()
            .map(|(b, _)| b["desired"].as_u64().unwrap())
            .collect()
    }
}

fn read_request(conn: &TcpStream) -> (serde_json::Value, Option<String>) {
    let mut reader = BufReader::new(conn);
    let mut length = 0usize;
    let mut token = None;
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).unwrap_or(0) == 0 {
            break;
        }
        let line = line.trim_end();
        if line.is_empty() {
            break;
        }
        let lower = line.to_ascii_lowercase();
        if let Some(v) = lower.strip_prefix("content-length:") {
            length = v.trim().parse().unwrap_or(0);
        }
        if lower.starts_with("authorization:") {
            token = line.split_once("Bearer ").map(|(_, t)| t.to_string());
        }
    }
    let mut body = vec![0u8; length.min(1 << 20)];
    reader.read_exact(&mut body).unwrap();
    (serde_json::from_slice(&body).unwrap_or_default(), token)
}

#[test]
fn the_webhook_is_told_the_count_and_its_reply_is_what_the_policy_sees() {
    let tmp = tempfile::tempdir().unwrap();
    let receiver = Receiver::start(1);
    let token_file = tmp.path().join("hook.token");
    std::fs::write(&token_file, "hook-secret\n").unwrap();
    let config = web_config(free_ports(3), "")
        .replace(
            "actuator = \"process\"",
            &format!(
                "actuator = \"webhook\"\nwebhook = \"{}\"\nwebhook_token_file = \"{}\"",
                receiver.url,
                token_file.display()
            ),
        )
        .replace(
            "[deployment.readiness]\nhttp = \"http://127.0.0.1:{port}/\"\nperiod_seconds = 0.2\n",
            "",
        );
    let daemon = start(tmp.path(), &config);
    wait_for(&daemon, 20, "the first decision", |s| s.decisions > 0);
    signal(&daemon, &["--queued", "3"]);
    // The orchestrator says it has 3, 2 of them ready: that is what the loop shows.
    let s = wait_for(&daemon, 20, "the orchestrator's reply", |s| {
        s.desired == 3 && s.ready == 2
    });
    assert_eq!((s.actuator.as_str(), s.starting), ("webhook", 1), "{s:?}");
    signal(&daemon, &["--queued", "0"]);
    wait_for(&daemon, 20, "scaled to zero", |s| {
        s.desired == 0 && s.ready + s.starting == 0
    });
    let desired = receiver.desired();
    assert!(desired.contains(&3), "{desired:?}");
    assert_eq!(desired.last(), Some(&0), "{desired:?}");
    // The count is sent when it changes, not every tick.
    let changes = desired.windows(2).filter(|w| w[0] != w[1]).count();
    assert!(
        desired.len() <= changes + 3,
        "sent only on changes (and a resend every 15 s): {desired:?}"
    );
    let calls = receiver.calls.lock().unwrap();
    assert!(
        calls
            .iter()
            .all(|(b, t)| t.as_deref() == Some("hook-secret") && b["deployment"] == "web"),
        "{calls:?}"
    );
    drop(calls);
    daemon.stop();
}
