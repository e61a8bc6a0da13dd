//! Helpers the `thaw` binary's end-to-end tests share.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "tests: a failed step panics with its message"
)]
#![allow(dead_code)] // each test file uses its own subset

pub mod container;
pub mod containerd;
pub mod daemon;
pub mod redis;

use std::path::Path;
use std::process::Command;

pub const THAW: &str = env!("CARGO_BIN_EXE_thaw");

/// Runs `thaw --store STORE ARGS...`, which must succeed; returns its stdout.
pub fn thaw(store: &Path, args: &[&str]) -> String {
    succeed(Command::new(THAW).arg("--store").arg(store).args(args))
}

/// Runs `cmd`, which must succeed (its stderr is shown otherwise); returns its stdout.
pub fn succeed(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "{cmd:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// `thaw umount MOUNTPOINT`.
pub fn umount(mountpoint: &Path) -> Command {
    let mut cmd = Command::new(THAW);
    cmd.arg("umount").arg(mountpoint);
    cmd
}

/// Whether FUSE mounts can run here; says why not otherwise.
pub fn can_mount(test: &str) -> bool {
    thaw_tests::can_mount(test)
}

/// Whether `path` is a mount point now.
pub fn mounted(path: &Path) -> bool {
    let text = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    let p = path.to_str().unwrap();
    text.lines().any(|l| l.split(' ').nth(4) == Some(p))
}

/// The number after `key: ` in `key: value` text (a status file).
pub fn stat_value(text: &str, key: &str) -> u64 {
    text.lines()
        .find_map(|l| l.strip_prefix(key)?.strip_prefix(": ")?.parse().ok())
        .unwrap_or_else(|| panic!("no {key} in {text}"))
}

/// The layer blob digests of the layout's only image.
pub fn layer_digests(layout: &Path) -> Vec<String> {
    let read = |rel: &str| -> serde_json::Value {
        serde_json::from_slice(&std::fs::read(layout.join(rel)).unwrap()).unwrap()
    };
    let blob = |digest: &str| format!("blobs/sha256/{}", digest.trim_start_matches("sha256:"));
    let index = read("index.json");
    let manifest = read(&blob(index["manifests"][0]["digest"].as_str().unwrap()));
    manifest["layers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["digest"].as_str().unwrap().to_string())
        .collect()
}
