//! Debian's containerd, started on a temporary root, state directory, socket and
//! configuration (never the host's), with thaw's snapshotter as a proxy plugin.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

/// A running containerd; stopped, and every mount under its directory undone, on drop.
pub struct Containerd {
    child: Option<Child>,
    /// Its directory (root, state, socket, log).
    pub dir: PathBuf,
    /// Its gRPC socket.
    pub address: PathBuf,
    /// More directories whose mounts go when it stops (the snapshotter's root).
    pub also_unmount: Vec<PathBuf>,
}

impl Containerd {
    /// Starts containerd in `dir` with `[proxy_plugins.thaw]` at `snapshotter_socket`.
    /// `extra` is appended to its configuration.
    pub fn start(dir: &Path, snapshotter_socket: &Path, extra: &str) -> Containerd {
        std::fs::create_dir_all(dir).unwrap();
        let address = dir.join("containerd.sock");
        let config = dir.join("config.toml");
        std::fs::write(
            &config,
            format!(
                "version = 2\nroot = \"{root}\"\nstate = \"{state}\"\n\
                 [grpc]\n  address = \"{address}\"\n\
                 [proxy_plugins]\n  [proxy_plugins.thaw]\n    type = \"snapshot\"\n    address = \"{snap}\"\n{extra}",
                root = dir.join("root").display(),
                state = dir.join("state").display(),
                address = address.display(),
                snap = snapshotter_socket.display(),
            ),
        )
        .unwrap();
        let log = std::fs::File::create(dir.join("containerd.log")).unwrap();
        let child = Command::new("containerd")
            .arg("--config")
            .arg(&config)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        let c = Containerd {
            child: Some(child),
            dir: dir.to_path_buf(),
            address,
            also_unmount: Vec::new(),
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        while !c.ctr(&["version"]).status.success() {
            assert!(
                Instant::now() < deadline,
                "containerd did not start: {}",
                c.log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        c
    }

    /// containerd's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("containerd.log")).unwrap_or_default()
    }

    /// `ctr --address SOCK ARGS...`.
    pub fn ctr(&self, args: &[&str]) -> Output {
        self.tool("ctr", args)
    }

    /// `ctr ARGS...`, which must succeed; its stdout.
    pub fn ctr_ok(&self, args: &[&str]) -> String {
        ok(self.ctr(args), "ctr", args)
    }

    /// `ctr-remote ARGS...` (stargz-snapshotter's `ctr`), which must succeed.
    pub fn ctr_remote_ok(&self, args: &[&str]) -> String {
        ok(self.tool("ctr-remote", args), "ctr-remote", args)
    }

    fn tool(&self, tool: &str, args: &[&str]) -> Output {
        Command::new(tool)
            .arg("--address")
            .arg(&self.address)
            .args(args)
            .stdin(Stdio::null())
            .output()
            .unwrap()
    }
}

fn ok(out: Output, tool: &str, args: &[&str]) -> String {
    assert!(
        out.status.success(),
        "{tool} {args:?}: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Unmounts (lazily, deepest first) every mount under `dir`.
pub fn unmount_under(dir: &Path) {
    let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap_or_default();
    let mut under: Vec<&str> = mounts
        .lines()
        .filter_map(|l| l.split(' ').nth(1))
        .filter(|m| Path::new(m).starts_with(dir))
        .collect();
    under.sort_by_key(|m| std::cmp::Reverse(m.len()));
    for m in under {
        let _ = Command::new("umount").args(["-l", m]).status();
    }
}

impl Drop for Containerd {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            // SAFETY: signalling our own child.
            unsafe { libc::kill(c.id() as i32, libc::SIGTERM) };
            let deadline = Instant::now() + Duration::from_secs(10);
            while matches!(c.try_wait(), Ok(None)) && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = c.kill();
            let _ = c.wait();
        }
        // Shims outlive containerd: kill what is left of the containers' processes.
        let _ = Command::new("pkill")
            .arg("-9")
            .arg("-f")
            .arg(format!(
                "containerd-shim-runc-v2 -namespace default -address {}",
                self.address.display()
            ))
            .status();
        unmount_under(&self.dir);
        for d in &self.also_unmount {
            unmount_under(d);
        }
    }
}
