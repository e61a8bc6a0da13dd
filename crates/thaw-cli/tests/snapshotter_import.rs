//! `thaw snapshotter import`: an image in the store made known to Debian's containerd 1.6
//! with no registry and no layer download, then run through thaw's snapshotter; an
//! unlayered image as one layer whose bytes `thaw export --tar` gives back, a
//! `--containerd` build with its own layers; and a snapshotter that does not serve the
//! layers gives a clear error, leaving nothing behind.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::too_many_lines,
    reason = "end-to-end scenarios: a failed step panics with its message, and a scenario reads top to bottom"
)]

mod common;
use common::containerd::Containerd;
use common::daemon::Daemon;
use common::thaw;

use sha2::{Digest, Sha256};
use std::path::Path;
use thaw_tests::images::{busybox_layout, have};
use thaw_tests::skip;

fn requirements(test: &str) -> bool {
    let tools = ["containerd", "ctr", "umoci"];
    if !tools.iter().all(|t| have(t)) || !Path::new("/bin/busybox").exists() {
        skip(test, "needs containerd, umoci and busybox-static");
        return false;
    }
    thaw_tests::can_mount(test)
}

/// A busybox root as a plain directory (no layers, no image config).
fn busybox_tree(dir: &Path) {
    std::fs::create_dir_all(dir.join("bin")).unwrap();
    std::fs::create_dir_all(dir.join("etc")).unwrap();
    std::fs::copy("/bin/busybox", dir.join("bin/busybox")).unwrap();
    for tool in ["sh", "cat", "echo", "ls"] {
        std::os::unix::fs::symlink("busybox", dir.join("bin").join(tool)).unwrap();
    }
    std::fs::write(dir.join("etc/msg"), "from a plain tree\n").unwrap();
}

/// A store under `tmp` holding [`busybox_tree`] as image `plain`, built with `flags`.
fn plain_image(tmp: &Path, flags: &[&str]) -> std::path::PathBuf {
    let store = tmp.join("store");
    let tree = tmp.join("tree");
    busybox_tree(&tree);
    let mut args = vec!["build", tree.to_str().unwrap(), "--tag", "plain"];
    args.extend_from_slice(flags);
    thaw(&store, &args);
    store
}

/// The value after `key: ` on the line that starts with it.
fn field<'a>(out: &'a str, key: &str) -> &'a str {
    out.lines()
        .find_map(|l| l.strip_prefix(key)?.strip_prefix(": "))
        .unwrap_or_else(|| panic!("no {key} in:\n{out}"))
}

/// `ctr run --rm` of `image` with `args`; its stdout, after checking it exited 0.
fn run(ctd: &Containerd, runc_root: &Path, image: &str, id: &str, args: &[&str]) -> String {
    let mut full = vec![
        "run",
        "--runc-root",
        runc_root.to_str().unwrap(),
        "--rm",
        "--snapshotter",
        "thaw",
        image,
        id,
    ];
    full.extend_from_slice(args);
    let out = ctd.ctr(&full);
    assert!(
        out.status.success(),
        "ctr run {image}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn images_imported_from_the_store_run_in_containerd_with_no_registry_and_no_layer_download() {
    let test =
        "images_imported_from_the_store_run_in_containerd_with_no_registry_and_no_layer_download";
    if !requirements(test) {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let store = plain_image(tmp.path(), &["--cmd", r#"["cat", "/etc/msg"]"#]);
    let layout = busybox_layout(tmp.path());
    let oci = format!("oci:{}:img", layout.display());
    thaw(&store, &["build", "--containerd", &oci, "--tag", "layered"]);

    // Readied in the store alone: the plain tree becomes one layer, the digest of the
    // tar `thaw export --tar` writes.
    let readied = thaw(&store, &["snapshotter", "import", "plain"]);
    assert!(readied.contains("layers: 1 (flattened"), "{readied}");
    let chain = field(&readied, "chain").to_string();
    let tar = tmp.path().join("plain.tar");
    thaw(&store, &["export", "--tar", "plain", tar.to_str().unwrap()]);
    let digest = format!(
        "sha256:{}",
        hex::encode(Sha256::digest(std::fs::read(&tar).unwrap()))
    );
    assert_eq!(
        digest, chain,
        "the layer's diff_id is the digest of its tar"
    );
    let images = thaw(&store, &["images"]);
    assert!(
        images.contains(&format!("[containerd layer chain {}", &chain[..19])),
        "{images}"
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
    let daemon = Daemon::start_with(&node, store.to_str().unwrap(), &args, &[]);
    let mut ctd = Containerd::start(&tmp.path().join("containerd"), &socket, "");
    ctd.also_unmount.push(root.clone());
    let address = ctd.address.to_str().unwrap().to_string();
    let import = |image: &str, name: &str| {
        thaw(
            &store,
            &[
                "snapshotter",
                "import",
                image,
                "--containerd-address",
                &address,
                "--name",
                name,
            ],
        )
    };

    let out = import("plain", "thaw.local/plain:1");
    assert!(out.contains("created"), "{out}");
    let out = import("layered", "thaw.local/layered:1");
    assert!(
        out.contains("layers: 2\n"),
        "a --containerd build keeps its layers: {out}"
    );
    let manifest = field(&out, "manifest").to_string();
    let layered_top = out
        .lines()
        .filter_map(|l| l.strip_prefix("chain: "))
        .next_back()
        .unwrap()
        .to_string();
    let images = ctd.ctr_ok(&["images", "ls"]);
    assert!(images.contains("thaw.local/plain:1"), "{images}");
    assert!(images.contains(&manifest), "{images}");
    // Only documents: two manifests and two configs, no layer blob.
    let content = ctd.ctr_ok(&["content", "ls"]);
    assert_eq!(
        content.lines().count(),
        5,
        "a header and four documents:\n{content}"
    );
    let stored: Vec<&str> = content
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .collect();
    assert!(
        !stored.contains(&chain.as_str()),
        "the layer was sent:\n{content}"
    );

    let runc_root = tmp.path().join("runc");
    assert_eq!(
        run(&ctd, &runc_root, "thaw.local/plain:1", "p1", &[]),
        "from a plain tree\n"
    );
    assert_eq!(
        run(&ctd, &runc_root, "thaw.local/layered:1", "l1", &[]),
        "from layer two\nwhiteout applied in /etc\n"
    );

    // Importing again changes nothing but says so; the image still runs.
    let again = import("plain", "thaw.local/plain:1");
    assert!(again.contains("updated"), "{again}");
    assert_eq!(
        run(
            &ctd,
            &runc_root,
            "thaw.local/plain:1",
            "p2",
            &["ls", "/bin/sh"]
        ),
        "/bin/sh\n"
    );

    // containerd's gc holds each image's snapshots through its documents' labels: a gc
    // after one image is removed takes that image's snapshots only, and after both, all.
    ctd.ctr_ok(&["images", "rm", "--sync", "thaw.local/plain:1"]);
    let left = ctd.ctr_ok(&["snapshots", "--snapshotter", "thaw", "ls"]);
    assert!(
        left.contains(&layered_top),
        "the kept image lost its layers: {left}"
    );
    assert!(
        !left.contains(&chain),
        "the removed image's layer stayed: {left}"
    );
    ctd.ctr_ok(&["images", "rm", "--sync", "thaw.local/layered:1"]);
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
    drop(ctd);
    drop(daemon);
}

#[test]
fn an_import_into_a_snapshotter_that_lacks_the_layers_fails_clearly_and_leaves_nothing() {
    let test =
        "an_import_into_a_snapshotter_that_lacks_the_layers_fails_clearly_and_leaves_nothing";
    if !requirements(test) {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let store = plain_image(tmp.path(), &[]);
    // No thaw daemon: containerd's own overlayfs snapshotter does not have the layer, so
    // it prepares an empty snapshot instead of naming one it has.
    let ctd = Containerd::start(
        &tmp.path().join("containerd"),
        &tmp.path().join("none.sock"),
        "",
    );
    let out = std::process::Command::new(common::THAW)
        .arg("--store")
        .arg(&store)
        .args([
            "snapshotter",
            "import",
            "plain",
            "--containerd-address",
            ctd.address.to_str().unwrap(),
            "--snapshotter",
            "overlayfs",
        ])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(
        stderr.contains("snapshotter \"overlayfs\" does not have layer chain sha256:"),
        "{stderr}"
    );
    let left = ctd.ctr_ok(&["snapshots", "--snapshotter", "overlayfs", "ls"]);
    assert_eq!(left.lines().count(), 1, "a snapshot was left: {left}");
    let images = ctd.ctr_ok(&["images", "ls", "-q"]);
    assert!(images.trim().is_empty(), "an image was left: {images}");
}
