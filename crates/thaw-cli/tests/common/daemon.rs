//! A real `thaw serve` for tests, and the fixtures and calls the daemon tests share.

use super::{thaw, THAW};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use thaw_api::api::{self, NamedScope, Scope};
use thaw_api::{Client, ClientError};
use thaw_tests::pseudo_random;

pub const TOKEN: &str = "test-token-0123456789";

/// A running `thaw serve`; killed on drop.
pub struct Daemon {
    child: Option<Child>,
    /// The API over TCP (with [`TOKEN`]).
    pub url: String,
    /// The API's unix socket.
    pub socket: PathBuf,
    /// The mount root: mount points go under it.
    pub mount_root: PathBuf,
    log: PathBuf,
}

impl Daemon {
    /// Starts a daemon over `dir/store` with its cache in `dir/cache`.
    pub fn start(dir: &Path, extra: &[&str]) -> Daemon {
        Self::start_on(dir, dir.join("store").to_str().unwrap(), extra)
    }

    /// Starts a daemon over the store `store` (a path or URL), its cache in `dir/cache`.
    pub fn start_on(dir: &Path, store: &str, extra: &[&str]) -> Daemon {
        Self::start_with(dir, store, extra, &[])
    }

    /// Starts a daemon with extra environment variables too.
    pub fn start_with(dir: &Path, store: &str, extra: &[&str], env: &[(&str, &str)]) -> Daemon {
        Self::spawn(dir, store, &["serve"], extra, env)
    }

    /// Starts `thaw autoscale run --config CONFIG`: the daemon with autoscaled deployments.
    pub fn autoscale(dir: &Path, store: &str, config: &Path, env: &[(&str, &str)]) -> Daemon {
        Self::autoscale_with(dir, store, config, &[], env)
    }

    /// `thaw autoscale run --config CONFIG` with more of `thaw serve`'s flags.
    pub fn autoscale_with(
        dir: &Path,
        store: &str,
        config: &Path,
        extra: &[&str],
        env: &[(&str, &str)],
    ) -> Daemon {
        let config = config.to_str().unwrap();
        Self::spawn(
            dir,
            store,
            &["autoscale", "run", "--config", config],
            extra,
            env,
        )
    }

    fn spawn(
        dir: &Path,
        store: &str,
        command: &[&str],
        extra: &[&str],
        env: &[(&str, &str)],
    ) -> Daemon {
        let ready = dir.join("ready");
        let _ = std::fs::remove_file(&ready);
        let log = dir.join(format!(
            "serve-{}.log",
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos()
        ));
        let child = Command::new(THAW)
            .arg("--store")
            .arg(store)
            .args(command)
            .args(["--listen", "127.0.0.1:0", "--cache"])
            .arg(dir.join("cache"))
            .arg("--state-dir")
            .arg(dir.join("state"))
            .arg("--socket")
            .arg(dir.join("thaw.sock"))
            .arg("--mount-root")
            .arg(dir.join("mnt"))
            .arg("--ready-file")
            .arg(&ready)
            .args(extra)
            .envs(env.iter().copied())
            .env("THAW_TOKEN", TOKEN)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        let start = Instant::now();
        let url = loop {
            let text = std::fs::read_to_string(&ready).unwrap_or_default();
            if let Some(url) = text.lines().find(|l| l.starts_with("http://")) {
                break url.to_string();
            }
            assert!(
                start.elapsed() < Duration::from_secs(20),
                "daemon did not start: {}",
                std::fs::read_to_string(&log).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(20));
        };
        Daemon {
            child: Some(child),
            url,
            socket: dir.join("thaw.sock"),
            mount_root: dir.join("mnt"),
            log,
        }
    }

    /// The ready file's lines: `unix:PATH`, `http://ADDR`, `metrics http://ADDR`.
    pub fn ready_lines(&self) -> Vec<String> {
        let ready = self.socket.with_file_name("ready");
        std::fs::read_to_string(ready)
            .unwrap_or_default()
            .lines()
            .map(str::to_string)
            .collect()
    }

    pub fn client(&self) -> Client {
        Client::new(&self.url, Some(TOKEN.into()))
    }

    /// `GET /metrics` with the token.
    pub async fn metrics(&self) -> String {
        reqwest::Client::new()
            .get(format!("{}/metrics", self.url))
            .bearer_auth(TOKEN)
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    }

    pub fn pid(&self) -> i32 {
        self.child.as_ref().unwrap().id() as i32
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// SIGTERM, and the daemon must exit cleanly.
    pub fn stop(mut self) {
        let mut child = self.child.take().unwrap();
        // SAFETY: signalling our own child.
        unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
        let status = child.wait().unwrap();
        assert!(
            status.success(),
            "thaw serve exited {status}: {}",
            self.log()
        );
    }

    pub fn kill9(mut self) {
        let mut child = self.child.take().unwrap();
        child.kill().unwrap();
        child.wait().unwrap();
    }
}

impl Drop for Daemon {
    /// SIGTERM first, so that the daemon stops its containers and unmounts their roots
    /// (a SIGKILL would leave them running, held for a next daemon); SIGKILL after 30 s.
    fn drop(&mut self) {
        let Some(mut c) = self.child.take() else {
            return;
        };
        // SAFETY: signalling our own child.
        unsafe { libc::kill(c.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(30);
        while matches!(c.try_wait(), Ok(None)) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = c.kill();
        let _ = c.wait();
    }
}

/// `src/` with a few small files and one large incompressible file, built into `store/`
/// as tags `small` (the small files) and `big` (everything).
pub fn two_images(dir: &Path, big_mib: usize) {
    let src = dir.join("src");
    std::fs::create_dir_all(src.join("etc")).unwrap();
    for i in 0..20u64 {
        std::fs::write(
            src.join(format!("etc/f{i}")),
            pseudo_random(20_000 + i as usize, i),
        )
        .unwrap();
    }
    let store = dir.join("store");
    thaw(&store, &["build", src.to_str().unwrap(), "--tag", "small"]);
    std::fs::write(src.join("big"), pseudo_random(big_mib << 20, 99)).unwrap();
    thaw(&store, &["build", src.to_str().unwrap(), "--tag", "big"]);
}

pub fn all(image: &str) -> api::PrewarmRequest {
    api::PrewarmRequest {
        image: image.into(),
        weights: Vec::new(),
        scope: Scope::Named(NamedScope::All),
    }
}

pub async fn wait_done(c: &Client, id: &str) -> api::Job {
    let start = Instant::now();
    loop {
        let j = c.job(id).await.unwrap();
        if j.state.is_finished() {
            return j;
        }
        assert!(
            start.elapsed() < Duration::from_secs(120),
            "job stuck: {j:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

pub fn mount_at(image: &str, mountpoint: &Path, writable: bool) -> api::MountRequest {
    api::MountRequest {
        image: image.into(),
        mountpoint: mountpoint.to_str().unwrap().into(),
        writable,
        allow_non_empty: false,
        prefetch: api::MountPrefetch::Trace,
    }
}

pub fn api_code(e: ClientError) -> (u16, Option<api::ErrorCode>) {
    match e {
        ClientError::Api { status, code, .. } => (status, code),
        other => panic!("not an API error: {other}"),
    }
}

/// Runs `f` to completion on a runtime of its own (for the blocking tests).
pub fn block_on<F: std::future::Future>(f: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(f)
}

/// The status of the daemon's only autoscaled deployment.
pub fn only_deployment(daemon: &Daemon) -> thaw_api::api::DeploymentStatus {
    let all = block_on(daemon.client().autoscale()).unwrap();
    assert_eq!(all.len(), 1, "{all:?}");
    all.into_iter().next().unwrap()
}
