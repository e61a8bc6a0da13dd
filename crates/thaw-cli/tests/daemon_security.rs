//! The daemon is safe by default: what an unprivileged local user (`nobody`) and a client
//! without the right token can and cannot make it do, the metrics-only listener, and mount
//! points confined to the mount root, a symlink swapped in between the check and the
//! mount included (made deterministic by the daemon's test pause point).
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "tests: a failed step panics with its message"
)]

mod common;

use common::daemon::{two_images, Daemon, TOKEN};
use common::{can_mount, mounted, THAW};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::Command;
use thaw_api::{api, Client, ClientError};
use thaw_tests::{is_root, skip};

const NOBODY: u32 = 65534;

/// What `nobody` gets from `GET /v1/images` on the socket: `EACCES` when it cannot even
/// connect, else the HTTP status line.
fn as_nobody(socket: &Path) -> String {
    let script = r#"
import socket, sys
s = socket.socket(socket.AF_UNIX)
try:
    s.connect(sys.argv[1])
except PermissionError:
    print("EACCES"); sys.exit(0)
s.sendall(b"GET /v1/images HTTP/1.0\r\nHost: thaw\r\n\r\n")
print(s.recv(200).split(b"\r\n")[0].decode())
"#;
    let out = Command::new("python3")
        .arg("-c")
        .arg(script)
        .arg(socket)
        .uid(NOBODY)
        .gid(NOBODY)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

/// A fresh directory every user may traverse (the socket's mode is what must stop them).
fn open_dir() -> tempfile::TempDir {
    let tmp = tempfile::tempdir().unwrap();
    std::fs::set_permissions(tmp.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    tmp
}

#[test]
fn a_local_user_outside_the_group_cannot_use_the_socket() {
    if !is_root() {
        return skip(
            "a_local_user_outside_the_group_cannot_use_the_socket",
            "needs root (to act as nobody)",
        );
    }
    let tmp = open_dir();
    two_images(tmp.path(), 1);
    let d = Daemon::start(tmp.path(), &[]);
    let mode = std::fs::metadata(&d.socket).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "the socket is root's alone");
    assert_eq!(as_nobody(&d.socket), "EACCES");
    // Even with the file mode loosened, the kernel's peer credentials keep nobody out.
    std::fs::set_permissions(&d.socket, std::fs::Permissions::from_mode(0o666)).unwrap();
    assert!(
        as_nobody(&d.socket).contains("403"),
        "{}",
        as_nobody(&d.socket)
    );
    // Root uses the socket without a token.
    let out = Command::new(THAW)
        .args(["jobs", "--server"])
        .arg(format!("unix:{}", d.socket.display()))
        .env_remove("THAW_TOKEN")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    d.stop();

    // With --socket-group, the group's members get in (0660, the group's).
    let d = Daemon::start(tmp.path(), &["--socket-group", &NOBODY.to_string()]);
    let mode = std::fs::metadata(&d.socket).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o660);
    assert!(
        as_nobody(&d.socket).contains("200"),
        "{}",
        as_nobody(&d.socket)
    );
    d.stop();
}

async fn status(req: reqwest::RequestBuilder) -> u16 {
    req.send().await.unwrap().status().as_u16()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcp_needs_a_token_and_each_token_only_its_scopes() {
    let tmp = tempfile::tempdir().unwrap();
    two_images(tmp.path(), 1);
    let tokens = tmp.path().join("tokens");
    std::fs::write(
        &tokens,
        "# name scopes secret\nreader read reader-secret-0123456789\nwarmer prewarm,read warmer-secret-0123456789\n",
    )
    .unwrap();
    let d = Daemon::start(tmp.path(), &["--tokens-file", tokens.to_str().unwrap()]);
    let http = reqwest::Client::new();
    let url = |p: &str| format!("{}{p}", d.url);
    assert_eq!(status(http.get(url("/v1/images"))).await, 401, "no token");
    assert_eq!(
        status(
            http.get(url("/v1/images"))
                .bearer_auth("reader-secret-012345678X")
        )
        .await,
        401
    );
    assert_eq!(
        status(
            http.get(url("/v1/images"))
                .bearer_auth("reader-secret-0123456789")
        )
        .await,
        200
    );
    assert_eq!(
        status(
            http.get(url("/metrics"))
                .bearer_auth("reader-secret-0123456789")
        )
        .await,
        200
    );
    // A read-only token can neither mount nor prewarm nor cancel.
    let mount = serde_json::json!({"image": "small", "mountpoint": "x"});
    let prewarm = serde_json::json!({"image": "small", "scope": "all"});
    let reader = |r: reqwest::RequestBuilder| r.bearer_auth("reader-secret-0123456789");
    assert_eq!(
        status(reader(http.post(url("/v1/mounts")).json(&mount))).await,
        403
    );
    assert_eq!(
        status(reader(http.post(url("/v1/prewarm")).json(&prewarm))).await,
        403
    );
    assert_eq!(status(reader(http.delete(url("/v1/jobs/1")))).await, 403);
    // The prewarm token prewarms, and not more.
    let warmer = |r: reqwest::RequestBuilder| r.bearer_auth("warmer-secret-0123456789");
    assert_eq!(
        status(warmer(http.post(url("/v1/prewarm")).json(&prewarm))).await,
        202
    );
    assert_eq!(
        status(warmer(http.post(url("/v1/mounts")).json(&mount))).await,
        403
    );
    // Mutating calls are logged with the caller; the secrets never are.
    let log = d.log();
    assert!(
        log.contains("token:warmer") && log.contains("/v1/prewarm"),
        "{log}"
    );
    assert!(
        !log.contains("secret-0123456789") && !log.contains(TOKEN),
        "{log}"
    );
    d.stop();
}

#[test]
fn tcp_without_any_token_is_refused_even_on_loopback() {
    let tmp = tempfile::tempdir().unwrap();
    let out = Command::new(THAW)
        .arg("--store")
        .arg(tmp.path().join("store"))
        .args(["serve", "--listen", "127.0.0.1:0", "--socket"])
        .arg(tmp.path().join("s.sock"))
        .arg("--mount-root")
        .arg(tmp.path().join("mnt"))
        .arg("--state-dir")
        .arg(tmp.path().join("state"))
        .arg("--cache")
        .arg(tmp.path().join("cache"))
        .env_remove("THAW_TOKEN")
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("without a token"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_caller_is_rate_limited() {
    let tmp = tempfile::tempdir().unwrap();
    two_images(tmp.path(), 1);
    let d = Daemon::start(tmp.path(), &["--rate-limit", "1"]);
    let http = reqwest::Client::new();
    let mut codes = Vec::new();
    for _ in 0..30 {
        codes.push(status(http.get(format!("{}/v1/jobs", d.url)).bearer_auth(TOKEN)).await);
    }
    assert_eq!(codes[0], 200);
    assert!(codes.contains(&429), "{codes:?}");
    assert!(codes.iter().all(|c| *c == 200 || *c == 429), "{codes:?}");
    d.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_metrics_listener_serves_metrics_and_health_only() {
    let tmp = tempfile::tempdir().unwrap();
    two_images(tmp.path(), 1);
    let d = Daemon::start(tmp.path(), &["--metrics-listen", "127.0.0.1:0"]);
    let metrics = d
        .ready_lines()
        .iter()
        .find_map(|l| l.strip_prefix("metrics ").map(str::to_string))
        .expect("the metrics address in the ready file");
    let http = reqwest::Client::new();
    let body = http.get(format!("{metrics}/metrics")).send().await.unwrap();
    assert_eq!(body.status().as_u16(), 200);
    assert!(body.text().await.unwrap().contains("thaw_"));
    assert_eq!(status(http.get(format!("{metrics}/healthz"))).await, 200);
    for path in ["/v1/images", "/v1/jobs", "/v1/mounts", "/v1/cache"] {
        assert_eq!(
            status(http.get(format!("{metrics}{path}")).bearer_auth(TOKEN)).await,
            404,
            "{path}"
        );
    }
    let mount = serde_json::json!({"image": "small", "mountpoint": "x"});
    assert_eq!(
        status(
            http.post(format!("{metrics}/v1/mounts"))
                .json(&mount)
                .bearer_auth(TOKEN)
        )
        .await,
        404
    );
    assert_eq!(
        status(
            http.delete(format!("{metrics}/v1/mounts/1"))
                .bearer_auth(TOKEN)
        )
        .await,
        404
    );
    d.stop();
}

fn mount_req(mountpoint: &str, allow_non_empty: bool) -> api::MountRequest {
    api::MountRequest {
        image: "small".into(),
        mountpoint: mountpoint.into(),
        writable: false,
        allow_non_empty,
        prefetch: api::MountPrefetch::None,
    }
}

fn status_of(e: ClientError) -> u16 {
    match e {
        ClientError::Api { status, .. } => status,
        other => panic!("not an API error: {other}"),
    }
}

/// No mount of this test's lies outside `inside`.
fn no_mount_outside(outside: &Path) {
    let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    let out = outside.to_str().unwrap();
    assert!(!info.contains(out), "a mount under {out}:\n{info}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mount_points_are_confined_to_the_mount_root() {
    if !can_mount("mount_points_are_confined_to_the_mount_root") {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    two_images(tmp.path(), 1);
    let outside = tmp.path().join("outside");
    std::fs::create_dir_all(outside.join("sub")).unwrap();
    let d = Daemon::start(tmp.path(), &[]);
    let c = Client::new(&format!("unix:{}", d.socket.display()), None);
    let root = d.mount_root.clone();
    std::os::unix::fs::symlink(&outside, root.join("link")).unwrap();
    for bad in [
        outside.to_str().unwrap(),
        "link",
        "link/sub",
        "../outside",
        "/etc",
    ] {
        let e = c.mount(&mount_req(bad, false)).await.unwrap_err();
        assert_eq!(status_of(e), 422, "{bad}");
    }
    no_mount_outside(&outside);
    // A non-empty directory only when asked.
    std::fs::create_dir_all(root.join("full")).unwrap();
    std::fs::write(root.join("full/file"), b"x").unwrap();
    assert_eq!(
        status_of(c.mount(&mount_req("full", false)).await.unwrap_err()),
        409
    );
    let m = c.mount(&mount_req("full", true)).await.unwrap();
    assert!(root.join("full/etc/f0").exists());
    c.unmount(&m.id).await.unwrap();
    // A missing mount point is created under the root; a relative name is under it.
    let m = c.mount(&mount_req("new/dir", false)).await.unwrap();
    assert_eq!(
        Path::new(&m.mountpoint),
        root.canonicalize().unwrap().join("new/dir")
    );
    assert!(mounted(&root.join("new/dir")));
    c.unmount(&m.id).await.unwrap();
    d.stop();
}

/// Starts a mount of `requested`, waits at the daemon's pause point, runs `swap`, resumes;
/// returns the daemon's answer.
async fn mount_with_swap(
    c: &Client,
    pause: &Path,
    requested: &str,
    swap: impl FnOnce(),
) -> Result<api::Mount, ClientError> {
    let request = {
        let (c, req) = (c.clone(), mount_req(requested, false));
        tokio::spawn(async move { c.mount(&req).await })
    };
    thaw_tests::eventually("the daemon pauses before mounting", || {
        pause.join("paused").exists()
    })
    .await;
    std::fs::remove_file(pause.join("paused")).unwrap();
    swap();
    std::fs::write(pause.join("resume"), b"").unwrap();
    request.await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_path_swapped_between_check_and_mount_mounts_nothing_outside_the_root() {
    if !can_mount("a_path_swapped_between_check_and_mount_mounts_nothing_outside_the_root") {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    two_images(tmp.path(), 1);
    let (outside, pause) = (tmp.path().join("outside"), tmp.path().join("pause"));
    std::fs::create_dir_all(outside.join("b")).unwrap();
    std::fs::create_dir_all(&pause).unwrap();
    let store = tmp.path().join("store");
    let env = [(thaw_server::PAUSE_VAR, pause.to_str().unwrap())];
    let d = Daemon::start_with(tmp.path(), store.to_str().unwrap(), &[], &env);
    let c = Client::new(&format!("unix:{}", d.socket.display()), None);
    let root = d.mount_root.canonicalize().unwrap();
    std::fs::create_dir_all(root.join("a/b")).unwrap();

    // The parent is swapped for a symlink to a directory outside: the mount still lands on
    // the directory that was checked (now a.old/b), never outside.
    let m = mount_with_swap(&c, &pause, "a/b", || {
        std::fs::rename(root.join("a"), root.join("a.old")).unwrap();
        std::os::unix::fs::symlink(&outside, root.join("a")).unwrap();
    })
    .await
    .unwrap();
    assert_eq!(Path::new(&m.mountpoint), root.join("a.old/b"));
    assert!(root.join("a.old/b/etc/f0").exists());
    assert!(std::fs::read_dir(outside.join("b"))
        .unwrap()
        .next()
        .is_none());
    no_mount_outside(&outside);
    c.unmount(&m.id).await.unwrap();

    // The checked directory itself is moved out of the root: refused, nothing mounted.
    std::fs::create_dir_all(root.join("c/d")).unwrap();
    let e = mount_with_swap(&c, &pause, "c/d", || {
        std::fs::rename(root.join("c"), outside.join("c")).unwrap();
    })
    .await
    .unwrap_err();
    assert_eq!(status_of(e), 422);
    assert!(std::fs::read_dir(outside.join("c/d"))
        .unwrap()
        .next()
        .is_none());
    no_mount_outside(&outside);
    d.stop();
}
