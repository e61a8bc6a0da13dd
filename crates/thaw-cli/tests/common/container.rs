//! Shared by the `thaw run` tests: the debootstrap image built once, a node of one's
//! own (run and containers directories), and small helpers for outputs and signals.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "tests: a failed step panics with its message"
)]

use super::{thaw, THAW};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};
use thaw_tests::images::have;
use thaw_tests::skip;

/// The debootstrap root built once into a shared store, tagged `debian`, with a run
/// configuration: a default command, environment, working directory and user.
pub fn debian_store(test: &str) -> Option<&'static Path> {
    static STORE: OnceLock<PathBuf> = OnceLock::new();
    let Some(rootfs) = std::env::var_os("THAW_ROOTFS") else {
        skip(test, "THAW_ROOTFS is not set (scripts/test.sh sets it)");
        return None;
    };
    if !thaw_tests::can_mount(test) {
        return None;
    }
    let store = STORE.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap().keep();
        let store = dir.join("store");
        thaw(
            &store,
            &[
                "build",
                rootfs.to_str().unwrap(),
                "--tag",
                "debian",
                "--cmd",
                r#"["/bin/sh","-c","echo \"$GREETING from $(pwd) as $(id -un)\""]"#,
                "--env",
                "GREETING=hello",
                "--workdir",
                "/srv",
                "--user",
                "nobody",
            ],
        );
        store
    });
    Some(store)
}

/// A node of its own for one test: its run directory (records, runtime state) and its
/// containers' directory, under a temporary directory.
pub struct Node {
    pub tmp: tempfile::TempDir,
    pub store: PathBuf,
}

impl Node {
    pub fn new(store: &Path) -> Node {
        Node {
            tmp: tempfile::tempdir().unwrap(),
            store: store.to_path_buf(),
        }
    }

    pub fn containers(&self) -> PathBuf {
        self.tmp.path().join("containers")
    }

    pub fn command(&self, args: &[&str]) -> Command {
        let mut c = Command::new(THAW);
        c.arg("--store").arg(&self.store).args(args);
        c.env("THAW_RUN_DIR", self.tmp.path().join("run"));
        c.env("THAW_CONTAINERS_DIR", self.containers());
        c.stdin(Stdio::null());
        c
    }

    pub fn run(&self, args: &[&str]) -> Output {
        let mut full = vec!["run"];
        full.extend_from_slice(args);
        self.command(&full).output().unwrap()
    }

    pub fn spawn(&self, args: &[&str]) -> Child {
        let mut full = vec!["run"];
        full.extend_from_slice(args);
        self.command(&full)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    }

    /// Nothing left: no container directory, record, runtime container or mount.
    pub fn assert_clean(&self, context: &str) {
        let leftover: Vec<_> = std::fs::read_dir(self.containers())
            .map(|d| d.flatten().map(|e| e.path()).collect())
            .unwrap_or_default();
        assert!(leftover.is_empty(), "{context}: left {leftover:?}");
        let records: Vec<_> = std::fs::read_dir(self.tmp.path().join("run/containers"))
            .map(|d| d.flatten().map(|e| e.path()).collect())
            .unwrap_or_default();
        assert!(records.is_empty(), "{context}: records {records:?}");
        let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
        let here = self.tmp.path().to_str().unwrap();
        assert!(
            !mounts.contains(here),
            "{context}: still mounted under {here}"
        );
    }

    /// Waits (with a deadline) for the one running container's init pid.
    pub fn init_pid(&self) -> i32 {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let found = std::fs::read_dir(self.containers()).ok().and_then(|d| {
                d.flatten()
                    .find_map(|e| std::fs::read_to_string(e.path().join("init.pid")).ok())
            });
            if let Some(pid) = found.and_then(|t| t.trim().parse().ok()) {
                return pid;
            }
            assert!(Instant::now() < deadline, "no container started");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

pub fn text(out: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

pub fn code(out: &Output) -> i32 {
    out.status.code().unwrap_or(-1)
}

pub fn runtimes(test: &str) -> Vec<&'static str> {
    let found: Vec<&str> = ["runc", "crun"].into_iter().filter(|r| have(r)).collect();
    if found.len() < 2 {
        skip(test, "needs runc and crun (Debian packages)");
    }
    found
}

/// Reads the container's first line of output, `ready`: its program runs.
pub fn wait_ready(child: &mut Child) {
    use std::io::BufRead;
    let mut line = String::new();
    let out = child.stdout.as_mut().unwrap();
    std::io::BufReader::new(out).read_line(&mut line).unwrap();
    assert_eq!(line, "ready\n");
}

pub fn sig(pid: i32, signal: i32) {
    // SAFETY: kill has no memory preconditions.
    assert_eq!(unsafe { libc::kill(pid, signal) }, 0, "kill {pid} {signal}");
}
