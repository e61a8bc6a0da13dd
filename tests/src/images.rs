//! Container image fixtures: a layout made by `umoci`, and Debian's `docker-registry` on
//! a loopback port (the real tools; tests skip where they are missing).

use std::path::{Path, PathBuf};

/// Whether `tool` is on the PATH.
pub fn have(tool: &str) -> bool {
    std::process::Command::new("sh")
        .arg("-c")
        .arg(format!("command -v {tool}"))
        .output()
        .is_ok_and(|o| o.status.success())
}

/// Runs a shell command; panics if it fails.
pub fn sh(cmd: &str) {
    let st = std::process::Command::new("sh")
        .arg("-c")
        .arg(cmd)
        .status()
        .unwrap();
    assert!(st.success(), "{cmd}");
}

/// The run configuration [`umoci_layout`] gives its image.
pub const UMOCI_CONFIG: &str = "--config.entrypoint /bin/app --config.cmd serve \
     --config.env A=1 --config.env PATH=/bin --config.workingdir /srv \
     --config.user 1000:1000 --config.exposedports 8080/tcp --config.label tier=test \
     --config.stopsignal SIGQUIT";

/// An image `img` made by `umoci` in `tmp/layout` from two repacks of `tmp/bundle/rootfs`
/// (the second removes, changes and adds a file, and removes one with a 253-byte name),
/// configured with [`UMOCI_CONFIG`]; returns (layout, rootfs).
pub fn umoci_layout(tmp: &Path) -> (std::path::PathBuf, std::path::PathBuf) {
    let layout = tmp.join("layout");
    let bundle = tmp.join("bundle");
    let (l, b) = (layout.display(), bundle.display());
    sh(&format!(
        "umoci init --layout {l} && umoci new --image {l}:img && umoci unpack --image {l}:img {b}"
    ));
    let rootfs = bundle.join("rootfs");
    std::fs::create_dir_all(rootfs.join("etc/conf.d")).unwrap();
    std::fs::write(rootfs.join("etc/keep"), b"kept").unwrap();
    std::fs::write(rootfs.join("etc/conf.d/old"), b"old").unwrap();
    // Its whiteout in the next layer, `.wh.` + 253 bytes, is longer than a name may be.
    std::fs::write(rootfs.join("etc").join("n".repeat(253)), b"long").unwrap();
    std::fs::write(rootfs.join("big"), crate::pseudo_random(3 << 20, 7)).unwrap();
    std::os::unix::fs::symlink("keep", rootfs.join("etc/link")).unwrap();
    // Layers keep whole seconds of mtime, so the tree gets whole seconds.
    let whole_seconds = format!("find {b}/rootfs -exec touch -h -d @1700000000 {{}} +");
    sh(&whole_seconds);
    sh(&format!("umoci repack --image {l}:img {b}"));
    std::fs::remove_file(rootfs.join("etc/conf.d/old")).unwrap();
    std::fs::remove_file(rootfs.join("etc").join("n".repeat(253))).unwrap();
    std::fs::write(rootfs.join("etc/keep"), b"kept, changed").unwrap();
    std::fs::write(rootfs.join("new"), b"new").unwrap();
    sh(&whole_seconds);
    sh(&format!("umoci repack --image {l}:img {b}"));
    sh(&format!("umoci config --image {l}:img {UMOCI_CONFIG}"));
    (layout, rootfs)
}

/// Debian's `docker-registry` on a free loopback port; killed when dropped.
#[derive(Debug)]
pub struct Registry {
    child: std::process::Child,
    /// `127.0.0.1:PORT`.
    pub addr: String,
}

impl Registry {
    /// Starts Debian's `docker-registry` on a free loopback port, storing under `dir`.
    pub fn start(dir: &Path) -> Registry {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let addr = format!("127.0.0.1:{port}");
        let config = dir.join("registry.yml");
        std::fs::write(
            &config,
            format!(
                "version: 0.1\nlog:\n  level: error\nstorage:\n  filesystem:\n    rootdirectory: {}\nhttp:\n  addr: {addr}\n",
                dir.join("data").display()
            ),
        )
        .unwrap();
        let child = std::process::Command::new("docker-registry")
            .arg("serve")
            .arg(&config)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        while std::net::TcpStream::connect(&addr).is_err() {
            assert!(
                std::time::Instant::now() < deadline,
                "registry did not start"
            );
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        Registry { child, addr }
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A two-layer image made by umoci from busybox: the second layer changes a file and
/// deletes another (a whiteout); its configuration runs a script that shows both.
pub fn busybox_layout(tmp: &Path) -> PathBuf {
    let layout = tmp.join("layout");
    let bundle = tmp.join("bundle");
    let (l, b) = (layout.display(), bundle.display());
    sh(&format!(
        "umoci init --layout {l} && umoci new --image {l}:img && umoci unpack --image {l}:img {b}"
    ));
    let rootfs = bundle.join("rootfs");
    std::fs::create_dir_all(rootfs.join("bin")).unwrap();
    std::fs::create_dir_all(rootfs.join("etc")).unwrap();
    std::fs::copy("/bin/busybox", rootfs.join("bin/busybox")).unwrap();
    for tool in ["sh", "cat", "test", "echo"] {
        std::os::unix::fs::symlink("busybox", rootfs.join("bin").join(tool)).unwrap();
    }
    std::fs::write(rootfs.join("etc/msg"), "from layer one\n").unwrap();
    std::fs::write(rootfs.join("etc/gone"), "deleted by layer two\n").unwrap();
    sh(&format!("umoci repack --image {l}:img {b}"));
    // Unpacked again, so that the next repack is a layer of its own over the first (a
    // repack of the same bundle would replace the first layer with the whole tree).
    std::fs::remove_dir_all(&bundle).unwrap();
    sh(&format!("umoci unpack --image {l}:img {b}"));
    std::fs::write(rootfs.join("etc/msg"), "from layer two\n").unwrap();
    std::fs::remove_file(rootfs.join("etc/gone")).unwrap();
    sh(&format!("umoci repack --image {l}:img {b}"));
    sh(&format!(
        "umoci config --image {l}:img --config.entrypoint /bin/sh --config.entrypoint -c \
         --config.cmd 'cat /etc/msg; test -e /etc/gone || echo \"whiteout applied in $PWD\"' \
         --config.workingdir /etc"
    ));
    layout
}
