//! A pod and a container through containerd's CRI plugin (the API the kubelet uses) with
//! `snapshotter = "thaw"`: the image is pulled lazily and the container's output read
//! from its CRI log. The pause image is built here from `catatonit`, since its usual
//! registry is out of reach, and served by the loopback registry over plain HTTP.
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

use std::path::{Path, PathBuf};
use thaw_tests::cri;
use thaw_tests::images::{busybox_layout, have, sh, Registry};
use thaw_tests::skip;

/// An image whose entrypoint is `catatonit -P`: a pod's pause process.
fn pause_layout(tmp: &Path) -> PathBuf {
    let layout = tmp.join("pause-layout");
    let bundle = tmp.join("pause-bundle");
    let (l, b) = (layout.display(), bundle.display());
    sh(&format!("umoci init --layout {l} && umoci new --image {l}:pause && umoci unpack --image {l}:pause {b}"));
    std::fs::copy("/usr/bin/catatonit", bundle.join("rootfs/pause")).unwrap();
    sh(&format!("umoci repack --image {l}:pause {b}"));
    sh(&format!(
        "umoci config --image {l}:pause --config.entrypoint /pause --config.entrypoint -P"
    ));
    layout
}

async fn cri_clients(
    socket: &Path,
) -> (
    cri::runtime_service_client::RuntimeServiceClient<tonic::transport::Channel>,
    cri::image_service_client::ImageServiceClient<tonic::transport::Channel>,
) {
    let channel = thaw_snapshotter::unix_channel(socket).await.unwrap();
    (
        cri::runtime_service_client::RuntimeServiceClient::new(channel.clone()),
        cri::image_service_client::ImageServiceClient::new(channel),
    )
}

fn sandbox_config(logs: &Path) -> cri::PodSandboxConfig {
    cri::PodSandboxConfig {
        metadata: Some(cri::PodSandboxMetadata {
            name: "lazy".into(),
            uid: "lazy-uid".into(),
            namespace: "default".into(),
            attempt: 0,
        }),
        log_directory: logs.display().to_string(),
        linux: Some(cri::LinuxPodSandboxConfig {
            security_context: Some(cri::LinuxSandboxSecurityContext {
                namespace_options: Some(cri::NamespaceOption {
                    network: cri::NamespaceMode::Node as i32,
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    }
}

#[test]
fn a_pod_through_the_cri_runs_a_lazily_pulled_image() {
    let test = "a_pod_through_the_cri_runs_a_lazily_pulled_image";
    let tools = ["containerd", "ctr", "umoci", "skopeo", "docker-registry"];
    if !tools.iter().all(|t| have(t))
        || !Path::new("/bin/busybox").exists()
        || !Path::new("/usr/bin/catatonit").exists()
    {
        return skip(
            test,
            "needs containerd, umoci, skopeo, docker-registry, busybox-static and catatonit",
        );
    }
    if !thaw_tests::can_mount(test) {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let registry = Registry::start(tmp.path());
    let app = format!("{}/thaw/busy:v1", registry.addr);
    let pause = format!("{}/thaw/pause:1", registry.addr);
    let layout = busybox_layout(tmp.path());
    sh(&format!(
        "skopeo copy --quiet --dest-tls-verify=false oci:{}:img docker://{app}",
        layout.display()
    ));
    let pause_dir = pause_layout(tmp.path());
    sh(&format!(
        "skopeo copy --quiet --dest-tls-verify=false oci:{}:pause docker://{pause}",
        pause_dir.display()
    ));
    // The application is known to thaw; the pause image is not, so containerd unpacks it
    // onto thaw's directories the ordinary way: a node with both kinds.
    let store = tmp.path().join("store");
    thaw(
        &store,
        &["build", "--containerd", &format!("docker://{app}")],
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
    let _daemon = Daemon::start_on(&node, store.to_str().unwrap(), &args);
    // restrict_oom_score_adj: these machines refuse to lower a process's oom_score_adj,
    // and the CRI gives a sandbox -998 by default (runc then fails in nsexec).
    let cri_config = format!(
        "[plugins.\"io.containerd.grpc.v1.cri\"]\n  sandbox_image = \"{pause}\"\n  restrict_oom_score_adj = true\n\
         [plugins.\"io.containerd.grpc.v1.cri\".containerd]\n  snapshotter = \"thaw\"\n  disable_snapshot_annotations = false\n\
         [plugins.\"io.containerd.grpc.v1.cri\".containerd.runtimes.runc]\n  runtime_type = \"io.containerd.runc.v2\"\n\
         [plugins.\"io.containerd.grpc.v1.cri\".containerd.runtimes.runc.options]\n  Root = \"{runc}\"\n\
         [plugins.\"io.containerd.grpc.v1.cri\".registry.mirrors.\"{addr}\"]\n  endpoint = [\"http://{addr}\"]\n",
        addr = registry.addr,
        runc = tmp.path().join("runc").display(),
    );
    let mut ctd = Containerd::start(&tmp.path().join("containerd"), &socket, &cri_config);
    ctd.also_unmount.push(root);
    let logs = tmp.path().join("pod-logs");
    std::fs::create_dir_all(&logs).unwrap();

    let rt = tokio::runtime::Runtime::new().unwrap();
    let (exit_code, log) = rt.block_on(async {
        let (mut runtime, mut images) = cri_clients(&ctd.address).await;
        let pulled = images
            .pull_image(cri::PullImageRequest {
                image: Some(cri::ImageSpec {
                    image: app.clone(),
                    ..Default::default()
                }),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        assert!(pulled.image_ref.starts_with("sha256:"), "{pulled:?}");
        let config = sandbox_config(&logs);
        let pod = runtime
            .run_pod_sandbox(cri::RunPodSandboxRequest {
                config: Some(config.clone()),
                ..Default::default()
            })
            .await
            .unwrap_or_else(|e| {
                let log = ctd.log();
                let errors: Vec<&str> = log
                    .lines()
                    .filter(|l| l.contains("level=error") || l.contains("runc"))
                    .collect();
                panic!("run pod: {e}\n{errors:#?}")
            })
            .into_inner()
            .pod_sandbox_id;
        let container = runtime
            .create_container(cri::CreateContainerRequest {
                pod_sandbox_id: pod.clone(),
                config: Some(cri::ContainerConfig {
                    metadata: Some(cri::ContainerMetadata {
                        name: "app".into(),
                        attempt: 0,
                    }),
                    image: Some(cri::ImageSpec {
                        image: app.clone(),
                        ..Default::default()
                    }),
                    command: vec!["sh".into(), "-c".into(), "cat /etc/msg; exit 3".into()],
                    log_path: "app.log".into(),
                    ..Default::default()
                }),
                sandbox_config: Some(config),
            })
            .await
            .unwrap()
            .into_inner()
            .container_id;
        runtime
            .start_container(cri::StartContainerRequest {
                container_id: container.clone(),
            })
            .await
            .unwrap();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
        let status = loop {
            let s = runtime
                .container_status(cri::ContainerStatusRequest {
                    container_id: container.clone(),
                    verbose: false,
                })
                .await
                .unwrap()
                .into_inner()
                .status
                .unwrap();
            if s.state == cri::ContainerState::ContainerExited as i32 {
                break s;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "the container did not exit: {s:?}"
            );
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        };
        runtime
            .stop_pod_sandbox(cri::StopPodSandboxRequest {
                pod_sandbox_id: pod.clone(),
            })
            .await
            .unwrap();
        runtime
            .remove_pod_sandbox(cri::RemovePodSandboxRequest {
                pod_sandbox_id: pod,
            })
            .await
            .unwrap();
        (
            status.exit_code,
            std::fs::read_to_string(logs.join("app.log")).unwrap_or_default(),
        )
    });
    assert_eq!(exit_code, 3);
    // CRI log lines: TIMESTAMP STREAM TAG MESSAGE.
    let lines: Vec<&str> = log
        .lines()
        .filter_map(|l| l.splitn(4, ' ').nth(3))
        .collect();
    assert_eq!(lines, ["from layer two"], "{log}");
    // The application's layers were not downloaded: the CRI passed the target labels.
    let content = ctd.ctr_ok(&["--namespace", "k8s.io", "content", "ls"]);
    let stored: Vec<&str> = content
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .collect();
    for layer in common::layer_digests(&layout) {
        assert!(
            !stored.contains(&layer.as_str()),
            "layer {layer} was downloaded:\n{content}"
        );
    }
}
