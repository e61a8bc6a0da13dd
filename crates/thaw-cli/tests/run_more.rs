//! `thaw run` beyond the basics, under runc and crun: an image from a registry (and its
//! docker-archive), `thaw bundle`, GPUs from CDI specifications, and a terminal.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::too_many_lines,
    reason = "end-to-end scenarios: a failed step panics with its message, and a scenario reads top to bottom"
)]

mod common;
use common::container::{code, debian_store, runtimes, text, Node};
use common::{thaw, THAW};

use std::process::{Command, Stdio};
use thaw_tests::images::{busybox_layout, have};
use thaw_tests::skip;

#[test]
fn an_image_pushed_to_a_registry_runs_its_entrypoint_and_its_docker_archive_is_the_same_image() {
    let test = "an_image_pushed_to_a_registry_runs_its_entrypoint_and_its_docker_archive_is_the_same_image";
    if !["umoci", "skopeo", "docker-registry"]
        .iter()
        .all(|t| have(t))
        || !std::path::Path::new("/bin/busybox").exists()
    {
        return skip(
            test,
            "needs umoci, skopeo, docker-registry and busybox-static",
        );
    }
    if !thaw_tests::can_mount(test) {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let layout = busybox_layout(tmp.path());
    let registry = thaw_tests::images::Registry::start(tmp.path());
    let image = format!("{}/thaw/busy:v1", registry.addr);
    thaw_tests::images::sh(&format!(
        "skopeo copy --quiet --dest-tls-verify=false oci:{}:img docker://{image}",
        layout.display()
    ));
    let store = tmp.path().join("store");
    let built = thaw(
        &store,
        &["build", &format!("docker://{image}"), "--tag", "busy"],
    );
    let archive = tmp.path().join("busy.tar");
    thaw_tests::images::sh(&format!(
        "skopeo copy --quiet --src-tls-verify=false docker://{image} docker-archive:{}:thaw/busy:v1",
        archive.display()
    ));
    let from_archive = thaw(
        &store,
        &["build", &format!("docker-archive:{}", archive.display())],
    );
    let id = |out: &str| {
        out.lines()
            .find_map(|l| l.strip_prefix("image: "))
            .unwrap()
            .to_string()
    };
    assert_eq!(
        id(&from_archive),
        id(&built),
        "the archive is the registry's image"
    );
    for runtime in runtimes(test) {
        let node = Node::new(&store);
        let out = node.run(&["--runtime", runtime, "busy"]);
        assert_eq!(
            (code(&out), text(&out).0.as_str()),
            (0, "from layer two\nwhiteout applied in /etc\n"),
            "{runtime}: {out:?}"
        );
        node.assert_clean(runtime);
    }
}

#[test]
fn a_bundle_written_by_thaw_bundle_runs_under_the_runtime_by_hand() {
    let test = "a_bundle_written_by_thaw_bundle_runs_under_the_runtime_by_hand";
    let Some(store) = debian_store(test) else {
        return;
    };
    for runtime in runtimes(test) {
        let node = Node::new(store);
        let dir = node.tmp.path().join("bundle");
        let out = node
            .command(&[
                "bundle",
                "debian",
                dir.to_str().unwrap(),
                "--",
                "sh",
                "-c",
                "echo $GREETING from the bundle; exit 5",
            ])
            .output()
            .unwrap();
        assert!(out.status.success(), "{out:?}");
        let config: serde_json::Value =
            serde_json::from_slice(&std::fs::read(dir.join("config.json")).unwrap()).unwrap();
        assert_eq!(
            config["process"]["user"]["uid"], 65534,
            "the image's user, nobody"
        );
        assert!(config["linux"]["seccomp"]["syscalls"]
            .as_array()
            .is_some_and(|s| !s.is_empty()));
        let root = node.tmp.path().join("rt");
        let out = Command::new(runtime)
            .arg("--root")
            .arg(&root)
            .args(["run", "--bundle", dir.to_str().unwrap(), "by-hand"])
            .stdin(Stdio::null())
            .output()
            .unwrap();
        assert_eq!(
            (code(&out), text(&out).0.as_str()),
            (5, "hello from the bundle\n"),
            "{runtime}: {out:?}"
        );
    }
}

#[test]
fn gpus_come_from_cdi_specifications() {
    let test = "gpus_come_from_cdi_specifications";
    let Some(store) = debian_store(test) else {
        return;
    };
    for runtime in runtimes(test) {
        let node = Node::new(store);
        let cdi = node.tmp.path().join("cdi");
        std::fs::create_dir_all(&cdi).unwrap();
        // A fixture in nvidia-ctk's format: this host has no GPU, so /dev/null's node
        // stands in for /dev/nvidia0 and a file for the driver's library.
        let lib = node.tmp.path().join("libcuda.so.1");
        std::fs::write(&lib, "driver library\n").unwrap();
        let marker = node.tmp.path().join("hooked");
        let spec = format!(
            "cdiVersion: 0.5.0\nkind: nvidia.com/gpu\ndevices:\n- name: \"0\"\n  containerEdits:\n    \
             deviceNodes:\n    - path: /dev/nvidia0\n      hostPath: /dev/null\ncontainerEdits:\n  env:\n  \
             - NVIDIA_VISIBLE_DEVICES=void\n  mounts:\n  - hostPath: {}\n    containerPath: /usr/lib/x86_64-linux-gnu/libcuda.so.1\n    \
             options: [ro, nosuid, nodev, bind]\n  hooks:\n  - hookName: createRuntime\n    path: /bin/sh\n    \
             args: [sh, -c, \"echo hooked > {}\"]\n",
            lib.display(),
            marker.display()
        );
        std::fs::write(cdi.join("nvidia.yaml"), spec).unwrap();
        let script = "test -c /dev/nvidia0 && echo ok > /dev/nvidia0 && cat /usr/lib/x86_64-linux-gnu/libcuda.so.1 && echo $NVIDIA_VISIBLE_DEVICES";
        let out = node
            .command(&[
                "run",
                "--runtime",
                runtime,
                "--gpus",
                "all",
                "debian",
                "--",
                "sh",
                "-c",
                script,
            ])
            .env("THAW_CDI_DIRS", &cdi)
            .output()
            .unwrap();
        assert_eq!(
            (code(&out), text(&out).0.as_str()),
            (0, "driver library\nvoid\n"),
            "{runtime}: {out:?}"
        );
        assert_eq!(
            std::fs::read_to_string(&marker).unwrap(),
            "hooked\n",
            "{runtime}: the hook ran"
        );
        // Without a spec, and with a device the host lacks: clear errors, nothing left.
        let out = node
            .command(&["run", "--gpus", "1", "debian"])
            .env("THAW_CDI_DIRS", node.tmp.path().join("none"))
            .output()
            .unwrap();
        assert!(
            text(&out)
                .1
                .contains("no CDI specification of kind nvidia.com/gpu"),
            "{out:?}"
        );
        let spec = std::fs::read_to_string(cdi.join("nvidia.yaml")).unwrap();
        std::fs::write(
            cdi.join("nvidia.yaml"),
            spec.replace("/dev/null", "/dev/nvidia-missing"),
        )
        .unwrap();
        let out = node
            .command(&["run", "--gpus", "all", "debian"])
            .env("THAW_CDI_DIRS", &cdi)
            .output()
            .unwrap();
        assert!(
            text(&out).1.contains("/dev/nvidia-missing") && text(&out).1.contains("driver"),
            "{out:?}"
        );
        node.assert_clean(runtime);
    }
}

#[test]
fn a_terminal_reaches_the_container_with_our_window_size() {
    let test = "a_terminal_reaches_the_container_with_our_window_size";
    let Some(store) = debian_store(test) else {
        return;
    };
    if !have("script") {
        return skip(
            test,
            "needs script (util-linux) to give thaw run a terminal",
        );
    }
    for runtime in runtimes(test) {
        let node = Node::new(store);
        let inner = format!(
            "stty cols 123 rows 45; {THAW} --store {} run -t --runtime {runtime} debian -- \
             sh -c 'tty; stty size; read x; echo got $x; exit 4'",
            store.display()
        );
        let mut cmd = Command::new("script");
        cmd.args(["-qec", &inner, "/dev/null"])
            .env("THAW_RUN_DIR", node.tmp.path().join("run"))
            .env("THAW_CONTAINERS_DIR", node.containers())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().unwrap();
        std::io::Write::write_all(child.stdin.as_mut().unwrap(), b"typed\n").unwrap();
        let out = child.wait_with_output().unwrap();
        let stdout = text(&out).0;
        assert_eq!(code(&out), 4, "{runtime}: {out:?}");
        for want in ["/dev/pts/0", "45 123", "got typed"] {
            assert!(stdout.contains(want), "{runtime}: {want:?} in {stdout:?}");
        }
        // Without a terminal: a clear error before anything is made.
        let out = node.run(&["-t", "debian"]);
        assert!(
            text(&out)
                .1
                .contains("--tty needs standard input to be a terminal"),
            "{out:?}"
        );
        node.assert_clean(runtime);
    }
}
