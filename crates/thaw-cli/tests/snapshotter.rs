//! thaw as containerd's snapshotter, end to end with Debian's containerd 1.6 and
//! stargz-snapshotter's `ctr-remote`: a lazy pull that downloads no layer, a container
//! run on it, its root against the overlayfs snapshotter's, and a restart of the daemon
//! under a running container.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::too_many_lines,
    reason = "end-to-end scenarios: a failed step panics with its message, and a scenario reads top to bottom"
)]

mod common;
use common::containerd::Containerd;
use common::daemon::Daemon;
use common::{layer_digests, thaw};

use std::path::Path;
use thaw_tests::images::{busybox_layout, have, Registry};
use thaw_tests::skip;

fn requirements(test: &str) -> bool {
    let tools = [
        "containerd",
        "ctr",
        "ctr-remote",
        "umoci",
        "skopeo",
        "docker-registry",
    ];
    if !tools.iter().all(|t| have(t)) || !Path::new("/bin/busybox").exists() {
        skip(test, "needs containerd, ctr-remote (stargz-snapshotter), umoci, skopeo, docker-registry and busybox-static");
        return false;
    }
    thaw_tests::can_mount(test)
}

/// Mounts snapshot `key`'s view of `parent` from `snapshotter` at `target`.
fn view(ctd: &Containerd, snapshotter: &str, key: &str, parent: &str, target: &Path) {
    std::fs::create_dir_all(target).unwrap();
    let t = target.to_str().unwrap();
    let cmd = ctd.ctr_ok(&[
        "snapshots",
        "--snapshotter",
        snapshotter,
        "view",
        "--target",
        t,
        key,
        parent,
    ]);
    thaw_tests::images::sh(cmd.trim());
}

/// Whether a treediff line is about a directory.
fn is_directory(line: &str) -> bool {
    let mode = line
        .split("mode: ")
        .nth(1)
        .and_then(|m| m.split(',').next())
        .and_then(|m| m.parse::<u32>().ok());
    mode.is_some_and(|m| m & 0o170_000 == 0o040_000)
}

/// Whether a treediff line differs in the mtime alone.
fn same_but_mtime(line: &str) -> bool {
    let Some((a, b)) = line
        .split_once(": ")
        .and_then(|(_, rest)| rest.split_once(" != "))
    else {
        return false;
    };
    let strip = |e: &str| {
        let start = e.find("mtime: (").unwrap_or(0);
        let end = e[start..].find(')').map_or(start, |i| start + i + 1);
        format!("{}{}", &e[..start], &e[end..])
    };
    strip(a) == strip(b)
}

#[test]
fn containerd_pulls_lazily_through_thaw_runs_the_image_and_survives_a_restart() {
    let test = "containerd_pulls_lazily_through_thaw_runs_the_image_and_survives_a_restart";
    if !requirements(test) {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let layout = busybox_layout(tmp.path());
    let registry = Registry::start(tmp.path());
    let image = format!("{}/thaw/busy:v1", registry.addr);
    thaw_tests::images::sh(&format!(
        "skopeo copy --quiet --dest-tls-verify=false oci:{}:img docker://{image}",
        layout.display()
    ));
    let store = tmp.path().join("store");
    let built = thaw(
        &store,
        &["build", "--containerd", &format!("docker://{image}")],
    );
    assert!(built.contains("chain_tags: 2"), "{built}");
    let top_chain = built
        .lines()
        .filter_map(|l| l.split(" chain ").nth(1))
        .next_back()
        .unwrap()
        .to_string();

    let node = tmp.path().join("node");
    std::fs::create_dir_all(&node).unwrap();
    let socket = node.join("snapshotter.sock");
    let root = node.join("snapshotter");
    let args = [
        "--snapshotter-socket",
        socket.to_str().unwrap(),
        "--snapshotter-root",
        root.to_str().unwrap(),
    ];
    let debug = [("RUST_LOG", "thaw_fuse=debug,thaw_server=debug")];
    let daemon = Daemon::start_with(&node, store.to_str().unwrap(), &args, &debug);
    let mut ctd = Containerd::start(&tmp.path().join("containerd"), &socket, "");
    ctd.also_unmount.push(root.clone());

    // The lazy pull: manifest and config only, no layer blob.
    ctd.ctr_remote_ok(&[
        "images",
        "rpull",
        "--plain-http",
        "--snapshotter",
        "thaw",
        &image,
    ]);
    let content = ctd.ctr_ok(&["content", "ls"]);
    let stored: Vec<&str> = content
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .collect();
    for layer in layer_digests(&layout) {
        assert!(
            !stored.contains(&layer.as_str()),
            "layer {layer} was downloaded:\n{content}"
        );
    }
    assert_eq!(
        content.lines().count(),
        3,
        "a header, the manifest and the config:\n{content}"
    );
    let snapshots = ctd.ctr_ok(&["snapshots", "--snapshotter", "thaw", "ls"]);
    assert!(snapshots.contains(&top_chain), "{snapshots}");

    // A container on it: the image's own entrypoint and command, and an exit code.
    // The runtime's state under the test's directory, never the host's default.
    let runc_root = tmp.path().join("runc");
    let runc_root = runc_root.to_str().unwrap();
    let out = ctd.ctr(&[
        "run",
        "--runc-root",
        runc_root,
        "--rm",
        "--snapshotter",
        "thaw",
        &image,
        "c1",
    ]);
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "from layer two\nwhiteout applied in /etc\n",
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = ctd.ctr(&[
        "run",
        "--runc-root",
        runc_root,
        "--rm",
        "--snapshotter",
        "thaw",
        &image,
        "c2",
        "sh",
        "-c",
        "exit 7",
    ]);
    assert_eq!(out.status.code(), Some(7));

    // The same tree as containerd's own overlayfs snapshotter gives after a full pull.
    ctd.ctr_ok(&[
        "images",
        "pull",
        "--plain-http",
        "--snapshotter",
        "overlayfs",
        &image,
    ]);
    let (a, b) = (
        tmp.path().join("view-thaw"),
        tmp.path().join("view-overlayfs"),
    );
    view(&ctd, "thaw", "v-thaw", &top_chain, &a);
    view(&ctd, "overlayfs", "v-overlayfs", &top_chain, &b);
    // All but directories' mtimes: where a layer's tar has no entry for a directory it
    // writes into (`.` and `etc` in the second layer here), containerd creates it in its
    // layer directory at unpack time, and overlayfs shows the top layer's copy; thaw keeps
    // the directory the image defined. Files must match exactly.
    let diffs: Vec<_> = thaw_tests::treediff::compare(&a, &b, &[])
        .into_iter()
        .filter(|d| !(same_but_mtime(d) && is_directory(d)))
        .collect();
    assert!(diffs.is_empty(), "{diffs:#?}");
    let compared = thaw_tests::treediff::scan(&a, &[]).len();
    assert!(compared >= 8, "only {compared} entries compared");
    for t in [&a, &b] {
        thaw_tests::images::sh(&format!("umount {}", t.display()));
    }

    // Restart the daemon (SIGKILL) under a running container: it keeps reading.
    ctd.ctr_ok(&[
        "run",
        "--runc-root",
        runc_root,
        "-d",
        "--snapshotter",
        "thaw",
        &image,
        "c3",
        "sh",
        "-c",
        "while true; do sleep 1; done",
    ]);
    daemon.kill9();
    let daemon = Daemon::start_with(&node, store.to_str().unwrap(), &args, &debug);
    assert!(
        daemon.log().contains("adopted 1 lazy layer"),
        "{}",
        daemon.log()
    );
    let exec = ctd.ctr(&[
        "task",
        "exec",
        "--exec-id",
        "e1",
        "c3",
        "sh",
        "-c",
        "cat /etc/msg; cd /bin && echo *",
    ]);
    if !exec.status.success() {
        let mut logs = String::new();
        for e in std::fs::read_dir(&node).unwrap() {
            let p = e.unwrap().path();
            if p.extension().is_some_and(|x| x == "log") {
                logs += &std::fs::read_to_string(&p).unwrap_or_default();
            }
        }
        panic!(
            "exec after the restart: {}\n{logs}",
            String::from_utf8_lossy(&exec.stderr)
        );
    }
    let out = String::from_utf8_lossy(&exec.stdout).into_owned();
    assert_eq!(out, "from layer two\nbusybox cat echo sh test\n");
    // containerd reconnects to a restarted snapshotter after a backoff; until then its
    // calls fail (a garbage collection in that window is only retried at the next one).
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while !ctd
        .ctr(&["snapshots", "--snapshotter", "thaw", "usage", &top_chain])
        .status
        .success()
    {
        assert!(
            std::time::Instant::now() < deadline,
            "containerd did not reconnect"
        );
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    ctd.ctr_ok(&["task", "kill", "-s", "SIGKILL", "c3"]);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while !ctd.ctr(&["task", "rm", "c3"]).status.success() {
        assert!(
            std::time::Instant::now() < deadline,
            "the task did not stop"
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    ctd.ctr_ok(&["containers", "rm", "c3"]);

    // Removing the image from containerd removes thaw's snapshots and unmounts the layer.
    // (The views went already: `ctr` made them under a lease that ended with it.)
    ctd.ctr_ok(&["images", "rm", "--sync", &image]);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        let left = ctd.ctr_ok(&["snapshots", "--snapshotter", "thaw", "ls"]);
        if left.lines().count() <= 1 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "snapshots left: {left}"
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap();
    let left: Vec<_> = mounts
        .lines()
        .filter(|l| l.contains(root.to_str().unwrap()))
        .collect();
    let errors: Vec<String> = ctd
        .log()
        .lines()
        .filter(|l| l.contains("garbage"))
        .map(String::from)
        .collect();
    assert!(
        left.is_empty(),
        "a lazy layer is still mounted: {left:#?}\n{}\n{errors:#?}",
        daemon.log()
    );
    drop(daemon);
}

/// A private S3 endpoint (moto), so that the test can stop it.
struct Moto {
    child: std::process::Child,
    endpoint: String,
}

impl Moto {
    fn start(test: &str) -> Option<Moto> {
        let python = std::env::var("THAW_PYTHON").ok();
        let server = python
            .as_ref()
            .map(|p| Path::new(p).with_file_name("moto_server"));
        let Some(server) = server.filter(|s| s.exists()) else {
            skip(
                test,
                "needs THAW_PYTHON, a venv with moto[server] (scripts/test.sh makes one)",
            );
            return None;
        };
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let child = std::process::Command::new(server)
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let endpoint = format!("http://127.0.0.1:{port}");
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(std::time::Instant::now() < deadline, "moto did not start");
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
        thaw_tests::images::sh(&format!("curl -sf -X PUT {endpoint}/down-test >/dev/null"));
        Some(Moto { child, endpoint })
    }

    fn env(&self) -> Vec<(&'static str, String)> {
        vec![
            ("AWS_ACCESS_KEY_ID", "thaw-test".into()),
            ("AWS_SECRET_ACCESS_KEY", "thaw-test".into()),
            ("AWS_REGION", "us-east-1".into()),
            ("AWS_ENDPOINT", self.endpoint.clone()),
            ("AWS_ALLOW_HTTP", "true".into()),
        ]
    }

    fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Moto {
    fn drop(&mut self) {
        self.stop();
    }
}

#[test]
fn a_pull_while_the_store_is_down_fails_clearly_and_downloads_nothing() {
    let test = "a_pull_while_the_store_is_down_fails_clearly_and_downloads_nothing";
    if !requirements(test) {
        return;
    }
    let Some(mut moto) = Moto::start(test) else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let layout = busybox_layout(tmp.path());
    let registry = Registry::start(tmp.path());
    let image = format!("{}/thaw/busy:v1", registry.addr);
    thaw_tests::images::sh(&format!(
        "skopeo copy --quiet --dest-tls-verify=false oci:{}:img docker://{image}",
        layout.display()
    ));
    let env = moto.env();
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let store = "s3://down-test";
    let built = std::process::Command::new(common::THAW)
        .args([
            "--store",
            store,
            "build",
            "--containerd",
            &format!("docker://{image}"),
        ])
        .envs(env.iter().copied())
        .output()
        .unwrap();
    assert!(
        built.status.success(),
        "{}",
        String::from_utf8_lossy(&built.stderr)
    );
    let node = tmp.path().join("node");
    std::fs::create_dir_all(&node).unwrap();
    let socket = node.join("snapshotter.sock");
    let root = node.join("snapshotter");
    let args = [
        "--snapshotter-socket",
        socket.to_str().unwrap(),
        "--snapshotter-root",
        root.to_str().unwrap(),
    ];
    let _daemon = Daemon::start_with(&node, store, &args, &env);
    let mut ctd = Containerd::start(&tmp.path().join("containerd"), &socket, "");
    ctd.also_unmount.push(root);

    moto.stop();
    let out = std::process::Command::new("ctr-remote")
        .arg("--address")
        .arg(&ctd.address)
        .args([
            "images",
            "rpull",
            "--plain-http",
            "--snapshotter",
            "thaw",
            &image,
        ])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success(),
        "the pull succeeded with the store down"
    );
    assert!(
        stderr.contains("lazy layer sha256:"),
        "not a clear error: {stderr}"
    );
    let content = ctd.ctr_ok(&["content", "ls"]);
    let stored: Vec<&str> = content
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .collect();
    for layer in layer_digests(&layout) {
        assert!(
            !stored.contains(&layer.as_str()),
            "layer {layer} was downloaded: a silent fall-back"
        );
    }
    let snapshots = ctd.ctr_ok(&["snapshots", "--snapshotter", "thaw", "ls"]);
    assert_eq!(
        snapshots.lines().count(),
        1,
        "nothing committed: {snapshots}"
    );
}

#[test]
fn two_images_sharing_base_layers_both_run_lazily() {
    let test = "two_images_sharing_base_layers_both_run_lazily";
    if !requirements(test) {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let layout = busybox_layout(tmp.path());
    // A third layer over the same two: a second image sharing both base layers.
    let (l, b) = (layout.display(), tmp.path().join("bundle2"));
    thaw_tests::images::sh(&format!("umoci unpack --image {l}:img {}", b.display()));
    std::fs::write(b.join("rootfs/etc/msg"), "from layer three\n").unwrap();
    thaw_tests::images::sh(&format!("umoci repack --image {l}:img2 {}", b.display()));
    let registry = Registry::start(tmp.path());
    let store = tmp.path().join("store");
    let mut images = Vec::new();
    for (tag, version) in [("img", "v1"), ("img2", "v2")] {
        let image = format!("{}/thaw/busy:{version}", registry.addr);
        thaw_tests::images::sh(&format!(
            "skopeo copy --quiet --dest-tls-verify=false oci:{l}:{tag} docker://{image}"
        ));
        let built = thaw(
            &store,
            &["build", "--containerd", &format!("docker://{image}")],
        );
        assert!(
            built.contains(&format!(
                "chain_tags: {}",
                if version == "v1" { 2 } else { 3 }
            )),
            "{built}"
        );
        images.push(image);
    }
    let node = tmp.path().join("node");
    std::fs::create_dir_all(&node).unwrap();
    let socket = node.join("snapshotter.sock");
    let root = node.join("snapshotter");
    let args = [
        "--snapshotter-socket",
        socket.to_str().unwrap(),
        "--snapshotter-root",
        root.to_str().unwrap(),
    ];
    let _daemon = Daemon::start_on(&node, store.to_str().unwrap(), &args);
    let mut ctd = Containerd::start(&tmp.path().join("containerd"), &socket, "");
    ctd.also_unmount.push(root);
    let runc_root = tmp.path().join("runc");
    for (i, (image, want)) in images
        .iter()
        .zip(["from layer two\n", "from layer three\n"])
        .enumerate()
    {
        ctd.ctr_remote_ok(&[
            "images",
            "rpull",
            "--plain-http",
            "--snapshotter",
            "thaw",
            image,
        ]);
        let id = format!("shared-{i}");
        let out = ctd.ctr_ok(&[
            "run",
            "--runc-root",
            runc_root.to_str().unwrap(),
            "--rm",
            "--snapshotter",
            "thaw",
            image,
            &id,
            "cat",
            "/etc/msg",
        ]);
        assert_eq!(out, want);
    }
    // Three layer chains, the first two shared: three snapshots, not five.
    let snapshots = ctd.ctr_ok(&["snapshots", "--snapshotter", "thaw", "ls"]);
    assert_eq!(snapshots.lines().count(), 4, "{snapshots}");
    let content = ctd.ctr_ok(&["content", "ls"]);
    assert_eq!(
        content.lines().count(),
        5,
        "two manifests and two configs, no layer:\n{content}"
    );
}

#[test]
fn containerd_s_own_snapshotter_test_suite_passes_against_thaw() {
    let test = "containerd_s_own_snapshotter_test_suite_passes_against_thaw";
    let packages = ["golang-go", "golang-github-containerd-containerd-dev"];
    let installed = packages.iter().all(|p| {
        std::process::Command::new("dpkg")
            .args(["-s", p])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    });
    if !installed {
        return skip(
            test,
            "needs Debian's golang-go and golang-github-containerd-containerd-dev",
        );
    }
    if !thaw_tests::is_root() {
        return skip(
            test,
            "containerd's suite mounts what the snapshotter returns: needs root",
        );
    }
    let script =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../scripts/containerd-testsuite.sh");
    let out = std::process::Command::new(script)
        .arg(common::THAW)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Every subtest but Rename, which containerd 1.6 itself skips on every snapshotter.
    let passed = text
        .lines()
        .filter(|l| l.trim_start().starts_with("--- PASS: TestThawSnapshotter/"))
        .count();
    assert_eq!(passed, 20, "{text}");
    assert!(!text.contains("--- FAIL"), "{text}");
}
