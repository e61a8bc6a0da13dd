//! `thaw run` end to end under runc and crun, on the debootstrap root: exit codes and
//! signals, the image's configuration and the flags that override it, cgroup limits, a
//! writable root that leaves the image unchanged, clear errors that leave nothing behind,
//! and the clean-up of what a `kill -9`ed `thaw run` left.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::too_many_lines,
    reason = "end-to-end scenarios: a failed step panics with its message, and a scenario reads top to bottom"
)]

mod common;
use common::container::{code, debian_store, runtimes, sig, text, wait_ready, Node};
use common::thaw;

use std::path::Path;
use std::time::{Duration, Instant};

#[test]
fn a_container_runs_with_the_image_configuration_and_returns_its_exit_code() {
    let test = "a_container_runs_with_the_image_configuration_and_returns_its_exit_code";
    let Some(store) = debian_store(test) else {
        return;
    };
    for runtime in runtimes(test) {
        let node = Node::new(store);
        let rt = ["--runtime", runtime];
        // The image's own command, environment, working directory and user.
        let out = node.run(&[&rt[..], &["debian"]].concat());
        assert_eq!(
            (code(&out), text(&out).0.as_str()),
            (0, "hello from /srv as nobody\n"),
            "{runtime}: {out:?}"
        );
        // Flags override each of them; arguments after `--` replace the command.
        let script = r#"echo "$GREETING from $(pwd) as $(id -un):$(id -gn)"; exit 3"#;
        let out = node.run(
            &[
                &rt[..],
                &[
                    "--env",
                    "GREETING=bye",
                    "--workdir",
                    "/tmp",
                    "--user",
                    "daemon:mail",
                    "debian",
                    "--",
                    "sh",
                    "-c",
                    script,
                ],
            ]
            .concat(),
        );
        assert_eq!(
            (code(&out), text(&out).0.as_str()),
            (3, "bye from /tmp as daemon:mail\n"),
            "{runtime}: {out:?}"
        );
        // Writes go to the container's own upper: the next container does not see them.
        let write = "echo scribble > /etc/os-release && rm /bin/ls && cat /etc/os-release";
        let out =
            node.run(&[&rt[..], &["--user", "0", "debian", "--", "sh", "-c", write]].concat());
        assert_eq!(
            (code(&out), text(&out).0.as_str()),
            (0, "scribble\n"),
            "{runtime}: {out:?}"
        );
        let out = node.run(
            &[
                &rt[..],
                &[
                    "debian",
                    "--",
                    "sh",
                    "-c",
                    "test -x /bin/ls && ! grep -q scribble /etc/os-release && echo pristine",
                ],
            ]
            .concat(),
        );
        assert_eq!(
            (code(&out), text(&out).0.as_str()),
            (0, "pristine\n"),
            "{runtime}: {out:?}"
        );
        // The host's namespace is not the container's: its own host name and pid 1.
        let out = node.run(
            &[
                &rt[..],
                &[
                    "--name",
                    "box",
                    "debian",
                    "--",
                    "sh",
                    "-c",
                    "hostname; echo $$; cat /etc/hostname",
                ],
            ]
            .concat(),
        );
        assert_eq!(text(&out).0, "box\n1\nbox\n", "{runtime}: {out:?}");
        node.assert_clean(runtime);
    }
}

#[test]
fn signals_and_limits_reach_the_container() {
    let test = "signals_and_limits_reach_the_container";
    let Some(store) = debian_store(test) else {
        return;
    };
    for runtime in runtimes(test) {
        let node = Node::new(store);
        let rt = ["--runtime", runtime];
        // SIGKILL sent from outside the container to its init: 128 + 9.
        let ready = "echo ready; exec sleep 1000";
        let mut child = node.spawn(&[&rt[..], &["debian", "--", "sh", "-c", ready]].concat());
        wait_ready(&mut child);
        sig(node.init_pid(), libc::SIGKILL);
        assert_eq!(code(&child.wait_with_output().unwrap()), 137, "{runtime}");
        // SIGTERM to `thaw run` is forwarded; with --init, catatonit passes it on to the
        // program (a PID 1 without a handler would ignore it): 128 + 15.
        let mut child =
            node.spawn(&[&rt[..], &["--init", "debian", "--", "sh", "-c", ready]].concat());
        wait_ready(&mut child);
        sig(child.id() as i32, libc::SIGTERM);
        assert_eq!(code(&child.wait_with_output().unwrap()), 143, "{runtime}");
        // A program's own handler sees the forwarded signal.
        let trap = r#"trap "exit 7" TERM; echo ready; sleep 1000 & wait"#;
        let mut child = node.spawn(&[&rt[..], &["debian", "--", "sh", "-c", trap]].concat());
        wait_ready(&mut child);
        sig(child.id() as i32, libc::SIGTERM);
        assert_eq!(code(&child.wait_with_output().unwrap()), 7, "{runtime}");
        // --memory: a program that grows past the limit is killed by the OOM killer.
        let out = node.run(
            &[
                &rt[..],
                &["--memory", "32m", "debian", "--", "tail", "/dev/zero"],
            ]
            .concat(),
        );
        assert_eq!(code(&out), 137, "{runtime} --memory: {out:?}");
        // --pids-limit: forks past the limit fail; without it they succeed.
        let forks = "i=0; while [ $i -lt 20 ]; do sleep 30 & i=$((i+1)); done; echo started $i";
        let out = node.run(
            &[
                &rt[..],
                &["--pids-limit", "8", "debian", "--", "sh", "-c", forks],
            ]
            .concat(),
        );
        assert!(
            code(&out) != 0 && text(&out).1.contains("fork"),
            "{runtime} --pids-limit: {out:?}"
        );
        let out = node.run(&[&rt[..], &["debian", "--", "sh", "-c", forks]].concat());
        assert_eq!(text(&out).0, "started 20\n", "{runtime}: {out:?}");
        node.assert_clean(runtime);
    }
}

#[test]
fn bad_input_is_a_clear_error_and_leaves_nothing_behind() {
    let test = "bad_input_is_a_clear_error_and_leaves_nothing_behind";
    let Some(store) = debian_store(test) else {
        return;
    };
    let node = Node::new(store);
    let cases: [(&[&str], &str); 7] = [
        (
            &["--user", "ghost", "debian"],
            "user \"ghost\" not found in the image's /etc/passwd",
        ),
        (
            &["--runtime", "no-such-runtime", "debian"],
            "OCI runtime \"no-such-runtime\" not found",
        ),
        (
            &["debian", "--", "no-such-command"],
            "command \"no-such-command\" not found in the image",
        ),
        (
            &["debian", "--", "/opt/none/x"],
            "command \"/opt/none/x\" not found in the image",
        ),
        (
            &["--mount", "/no/such/source:/data", "debian"],
            "--mount: the source \"/no/such/source\"",
        ),
        (&["--memory", "lots", "debian"], "--memory"),
        (&["no-such-image"], "no-such-image"),
    ];
    for (args, want) in cases {
        let out = node.run(args);
        let (_, err) = text(&out);
        assert!(code(&out) == 1 && err.contains(want), "{args:?}: {err}");
        node.assert_clean(&format!("{args:?}"));
    }
    // A user named by the image's own configuration is looked up the same way.
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    std::fs::create_dir_all(src.join("bin")).unwrap();
    std::fs::copy("/bin/busybox", src.join("bin/sh")).unwrap();
    let own = tmp.path().join("store");
    thaw(
        &own,
        &[
            "build",
            src.to_str().unwrap(),
            "--tag",
            "ghostly",
            "--user",
            "ghost",
            "--cmd",
            "[\"/bin/sh\"]",
        ],
    );
    let node = Node::new(&own);
    let out = node.run(&["ghostly"]);
    assert!(text(&out).1.contains("user \"ghost\" not found"), "{out:?}");
    node.assert_clean("the image's user");
}

#[test]
fn what_a_killed_run_left_is_cleaned_up_by_the_next_run_and_by_umount() {
    let test = "what_a_killed_run_left_is_cleaned_up_by_the_next_run_and_by_umount";
    let Some(store) = debian_store(test) else {
        return;
    };
    let node = Node::new(store);
    for cleaner in ["run", "umount"] {
        let mut child = node.spawn(&["--name", "victim", "debian", "--", "sleep", "1000"]);
        let init = node.init_pid();
        child.kill().unwrap(); // SIGKILL: nothing of thaw run's clean-up runs
        child.wait().unwrap();
        let dir = std::fs::read_dir(node.containers())
            .unwrap()
            .flatten()
            .next()
            .unwrap()
            .path();
        assert!(dir.join("config.json").exists() && Path::new(&format!("/proc/{init}")).exists());
        let out = match cleaner {
            "run" => node.run(&["debian", "--", "true"]),
            _ => node
                .command(&["umount", dir.join("rootfs").to_str().unwrap()])
                .output()
                .unwrap(),
        };
        assert!(out.status.success(), "{cleaner}: {out:?}");
        assert!(
            text(&out).1.contains("cleaned up container victim"),
            "{cleaner}: {out:?}"
        );
        node.assert_clean(cleaner);
        // The runtime's container is gone with its processes (polled: the kernel reaps).
        let deadline = Instant::now() + Duration::from_secs(30);
        while Path::new(&format!("/proc/{init}")).exists() {
            let stat = std::fs::read_to_string(format!("/proc/{init}/stat")).unwrap_or_default();
            if stat.contains(") Z ") {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "{cleaner}: the container's init {init} still runs"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}
