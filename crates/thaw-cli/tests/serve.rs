//! `thaw serve` end to end: a real daemon on 127.0.0.1 driven over HTTP. Prewarm,
//! poll, cancel, share identical jobs; authentication; bad requests that leave it
//! serving; restart with the same cache; kill -9 in the middle of a prewarm; mounts
//! through the API; and a bounded load test.

mod common;
use common::{can_mount, thaw, THAW};

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use thaw_server::api::{self, JobState, NamedScope, Scope};
use thaw_server::{Client, ClientError};
use thaw_tests::{pseudo_random, treediff};

const TOKEN: &str = "test-token-0123456789";

/// A running `thaw serve`; killed on drop.
struct Daemon {
    child: Option<Child>,
    url: String,
    log: PathBuf,
}

impl Daemon {
    /// Starts a daemon over `dir/store` with its cache in `dir/cache`.
    fn start(dir: &Path, extra: &[&str]) -> Daemon {
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
            .arg(dir.join("store"))
            .args(["serve", "--listen", "127.0.0.1:0", "--cache"])
            .arg(dir.join("cache"))
            .arg("--state-dir")
            .arg(dir.join("state"))
            .arg("--ready-file")
            .arg(&ready)
            .args(extra)
            .env("THAW_TOKEN", TOKEN)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        let start = Instant::now();
        let addr = loop {
            if let Ok(a) = std::fs::read_to_string(&ready) {
                break a.trim().to_string();
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
            url: format!("http://{addr}"),
            log,
        }
    }

    fn client(&self) -> Client {
        Client::new(&self.url, Some(TOKEN.into()))
    }

    fn pid(&self) -> i32 {
        self.child.as_ref().unwrap().id() as i32
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// SIGTERM, and the daemon must exit cleanly.
    fn stop(mut self) {
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

    fn kill9(mut self) {
        let mut child = self.child.take().unwrap();
        child.kill().unwrap();
        child.wait().unwrap();
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// `src/` with a few small files and one large incompressible file, built into `store/`
/// as tags `small` (the small files) and `big` (everything).
fn two_images(dir: &Path, big_mib: usize) {
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

fn all(image: &str) -> api::PrewarmRequest {
    api::PrewarmRequest {
        image: image.into(),
        scope: Scope::Named(NamedScope::All),
    }
}

async fn wait_done(c: &Client, id: &str) -> api::Job {
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

fn mount_at(image: &str, mountpoint: &Path, writable: bool) -> api::MountRequest {
    api::MountRequest {
        image: image.into(),
        mountpoint: mountpoint.to_str().unwrap().into(),
        writable,
        prefetch: api::MountPrefetch::Trace,
    }
}

fn api_code(e: ClientError) -> (u16, Option<api::ErrorCode>) {
    match e {
        ClientError::Api { status, code, .. } => (status, code),
        other => panic!("not an API error: {other}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prewarm_poll_share_cancel_and_restart_with_the_same_cache() {
    let tmp = tempfile::tempdir().unwrap();
    two_images(tmp.path(), 48);
    // A slow link, so the big prewarm is still running when it is cancelled.
    let d = Daemon::start(tmp.path(), &["--throttle", "5,200"]);
    let c = d.client();

    let j = c.prewarm(&all("small")).await.unwrap();
    assert_eq!(j.state, JobState::Running);
    let done = wait_done(&c, &j.id).await;
    assert_eq!(done.state, JobState::Done, "{done:?}");
    assert_eq!(done.chunks_done, done.chunks_total);
    assert!(done.chunks_total >= 20);
    assert_eq!(done.bytes_done, done.bytes_total);
    let cache = c.cache().await.unwrap();
    assert_eq!(cache.disk.entries as u64, done.chunks_total);
    assert_eq!(cache.store.prefetched_chunks, done.chunks_total);

    // Two identical requests share one job; a different scope gets its own.
    let a = c.prewarm(&all("big")).await.unwrap();
    let b = c.prewarm(&all("big")).await.unwrap();
    assert_eq!(a.id, b.id, "identical prewarms share a job");
    assert!(a.chunks_total > done.chunks_total);
    let paths = c
        .prewarm(&api::PrewarmRequest {
            image: "big".into(),
            scope: Scope::Paths {
                paths: vec!["/etc".into()],
            },
        })
        .await
        .unwrap();
    assert_ne!(paths.id, a.id);
    assert_eq!(
        paths.chunks_total, done.chunks_total,
        "/etc holds the small files"
    );
    let cancelled = c.cancel(&a.id).await.unwrap();
    assert_eq!(cancelled.state, JobState::Cancelled);
    let after = c.job(&a.id).await.unwrap();
    assert_eq!(after.state, JobState::Cancelled);
    assert!(after.chunks_done < after.chunks_total, "{after:?}");
    let listed = c.jobs().await.unwrap();
    assert!(listed.iter().any(|j| j.id == a.id));
    // The prewarm of /etc found everything cached already.
    let p = wait_done(&c, &paths.id).await;
    assert_eq!(p.chunks_cached, p.chunks_total, "{p:?}");

    // Restart on the same cache: the small image is all hits, no fetches.
    d.stop();
    let d = Daemon::start(tmp.path(), &["--throttle", "5,200"]);
    let c = d.client();
    let again = wait_done(&c, &c.prewarm(&all("small")).await.unwrap().id).await;
    assert_eq!(again.state, JobState::Done);
    assert_eq!(again.chunks_cached, again.chunks_total);
    let cache = c.cache().await.unwrap();
    assert_eq!(cache.store.fetched_chunks, 0, "{cache:?}");
    assert!(cache.disk.entries as u64 >= again.chunks_total);
    d.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn authentication_and_bad_requests_get_clear_errors_and_the_daemon_keeps_serving() {
    let tmp = tempfile::tempdir().unwrap();
    two_images(tmp.path(), 1);
    let d = Daemon::start(tmp.path(), &[]);
    let http = reqwest::Client::new();
    let url = |p: &str| format!("{}{p}", d.url);

    // No token, a wrong token: 401 with the error body; /healthz is open.
    for auth in [None, Some("Bearer wrong"), Some(TOKEN)] {
        let mut r = http.get(url("/v1/images"));
        if let Some(a) = auth {
            r = r.header("authorization", a);
        }
        let status = r.send().await.unwrap().status().as_u16();
        assert_eq!(status, 401, "authorization {auth:?}");
    }
    let ok = http
        .get(url("/v1/images"))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(ok.status().as_u16(), 200);
    let images: Vec<api::Image> = ok.json().await.unwrap();
    assert_eq!(images.len(), 2);
    assert_eq!(
        http.get(url("/healthz"))
            .send()
            .await
            .unwrap()
            .status()
            .as_u16(),
        200
    );
    let metrics = http.get(url("/metrics")).send().await.unwrap();
    assert_eq!(metrics.status().as_u16(), 401, "metrics need the token too");

    // Bad bodies: each a 4xx with a stable code.
    let post = |body: Vec<u8>| {
        http.post(url("/v1/prewarm"))
            .bearer_auth(TOKEN)
            .header("content-type", "application/json")
            .body(body)
            .send()
    };
    let cases: Vec<(Vec<u8>, u16, &str)> = vec![
        (b"{\"image\":".to_vec(), 400, "bad_request"),
        (b"not json".to_vec(), 400, "bad_request"),
        (
            b"{\"image\":\"nope\",\"scope\":\"all\"}".to_vec(),
            404,
            "not_found",
        ),
        (
            b"{\"image\":\"small\",\"extra\":1}".to_vec(),
            422,
            "invalid_argument",
        ),
        (
            b"{\"image\":\"small\",\"scope\":\"most\"}".to_vec(),
            422,
            "invalid_argument",
        ),
        (b"{\"image\":\"small\"}".to_vec(), 422, "no_trace"),
        (
            b"{\"image\":\"small\",\"scope\":{\"paths\":[\"/etc/../..\"]}}".to_vec(),
            422,
            "invalid_argument",
        ),
        (
            b"{\"image\":\"small\",\"scope\":{\"paths\":[\"/missing\"]}}".to_vec(),
            404,
            "not_found",
        ),
        (b"{\"image\":\"a b\"}".to_vec(), 422, "invalid_argument"),
        (
            format!("{{\"image\":\"{}\"}}", "x".repeat(100_000)).into_bytes(),
            413,
            "payload_too_large",
        ),
    ];
    for (body, status, code) in cases {
        let shown = String::from_utf8_lossy(&body[..body.len().min(60)]).into_owned();
        let r = post(body).await.unwrap();
        assert_eq!(r.status().as_u16(), status, "{shown}");
        let e: api::ErrorBody = r.json().await.unwrap();
        assert_eq!(
            serde_json::to_value(e.error.code).unwrap(),
            code,
            "{shown}: {}",
            e.error.message
        );
        assert!(!e.error.message.is_empty());
    }
    // An image built while the daemon runs is found, packs and all.
    let late = tmp.path().join("late");
    std::fs::create_dir(&late).unwrap();
    std::fs::write(late.join("new"), pseudo_random(300_000, 7)).unwrap();
    thaw(
        &tmp.path().join("store"),
        &["build", late.to_str().unwrap(), "--tag", "late"],
    );
    let j = d.client().prewarm(&all("late")).await.unwrap();
    let j = wait_done(&d.client(), &j.id).await;
    assert_eq!((j.state, j.errors), (JobState::Done, 0), "{j:?}");
    let (status, code) = api_code(d.client().job("0000").await.unwrap_err());
    assert_eq!((status, code), (404, Some(api::ErrorCode::NotFound)));
    // Still serving.
    let j = d.client().prewarm(&all("small")).await.unwrap();
    assert_eq!(wait_done(&d.client(), &j.id).await.state, JobState::Done);
    d.stop();

    // Without a token, the daemon refuses a non-loopback address.
    let out = Command::new(THAW)
        .arg("--store")
        .arg(tmp.path().join("store"))
        .args(["serve", "--listen", "0.0.0.0:0", "--cache"])
        .arg(tmp.path().join("cache2"))
        .arg("--state-dir")
        .arg(tmp.path().join("state2"))
        .env_remove("THAW_TOKEN")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("without a token"), "{err}");
}

/// Every chunk file of a disk cache.
fn cache_files(cache: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for sub in std::fs::read_dir(cache).unwrap() {
        let sub = sub.unwrap().path();
        if sub.is_dir() {
            for f in std::fs::read_dir(&sub).unwrap() {
                out.push(f.unwrap().path());
            }
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_during_a_prewarm_keeps_verified_entries_and_never_serves_torn_ones() {
    let tmp = tempfile::tempdir().unwrap();
    two_images(tmp.path(), 64);
    let d = Daemon::start(tmp.path(), &["--throttle", "5,400"]);
    let c = d.client();
    let j = c.prewarm(&all("big")).await.unwrap();
    let start = Instant::now();
    while c.job(&j.id).await.unwrap().chunks_done < 10 {
        assert!(start.elapsed() < Duration::from_secs(60));
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    d.kill9();
    let cache = tmp.path().join("cache");
    let mut files = cache_files(&cache);
    files.sort();
    let kept = files.len();
    assert!(kept >= 10, "{kept} entries on disk");
    // Tear one entry, as a crash in the middle of a write without rename would, and
    // leave a stray temporary file.
    let torn = &files[0];
    let len = std::fs::metadata(torn).unwrap().len();
    std::fs::OpenOptions::new()
        .write(true)
        .open(torn)
        .unwrap()
        .set_len(len / 2)
        .unwrap();
    std::fs::write(torn.with_extension("tmp123"), b"partial").unwrap();

    let d = Daemon::start(tmp.path(), &[]);
    let c = d.client();
    let done = wait_done(&c, &c.prewarm(&all("big")).await.unwrap().id).await;
    assert_eq!(done.state, JobState::Done, "{done:?}");
    // Every intact entry was kept (the torn one is looked at only when read).
    assert!(
        done.chunks_cached >= kept as u64 - 1,
        "{} cached of {kept} kept",
        done.chunks_cached
    );
    d.stop();
    // Export through the same cache: bytes equal the source, so the torn entry was
    // re-fetched rather than served.
    let out = tmp.path().join("out");
    let cache_arg = cache.to_str().unwrap().to_string();
    let report = thaw(
        &tmp.path().join("store"),
        &[
            "export",
            "big",
            out.to_str().unwrap(),
            "--cache",
            &cache_arg,
        ],
    );
    assert!(
        report.contains("fetched_chunks: 1 "),
        "only the torn entry is fetched again: {report}"
    );
    assert_eq!(
        std::fs::read(out.join("big")).unwrap(),
        std::fs::read(tmp.path().join("src/big")).unwrap()
    );
    let leftovers: Vec<_> = cache_files(&cache)
        .into_iter()
        .filter(|f| f.file_name().unwrap().to_string_lossy().contains("tmp"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_requests_over_a_hundred_connections_without_errors() {
    let tmp = tempfile::tempdir().unwrap();
    two_images(tmp.path(), 1);
    let d = Daemon::start(tmp.path(), &[]);
    let rss = |pid: i32| -> u64 {
        let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
        s.lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches(" kB").trim().parse().ok())
            .unwrap()
    };
    let url = d.url.clone();
    let run = |n: usize| {
        let url = url.clone();
        async move {
            let tasks: Vec<_> = (0..100)
                .map(|t| {
                    let url = url.clone();
                    tokio::spawn(async move {
                        // One connection per task: a client with a single idle slot.
                        let http = reqwest::Client::builder()
                            .pool_max_idle_per_host(1)
                            .build()
                            .unwrap();
                        let mut errors = 0;
                        for i in 0..n {
                            let path = match (t + i) % 3 {
                                0 => "/v1/cache",
                                1 => "/v1/jobs",
                                _ => "/healthz",
                            };
                            match http
                                .get(format!("{url}{path}"))
                                .bearer_auth(TOKEN)
                                .send()
                                .await
                            {
                                Ok(r) if r.status().is_success() => {
                                    let _ = r.bytes().await;
                                }
                                _ => errors += 1,
                            }
                        }
                        errors
                    })
                })
                .collect();
            let mut errors = 0;
            for t in tasks {
                errors += t.await.unwrap();
            }
            errors
        }
    };
    assert_eq!(run(10).await, 0, "warm-up");
    let before = rss(d.pid());
    assert_eq!(run(100).await, 0, "10,000 requests, no errors");
    let after = rss(d.pid());
    assert!(
        after < before + 64 * 1024,
        "RSS grew from {before} kB to {after} kB"
    );
    // The daemon counted them.
    let metrics = reqwest::Client::new()
        .get(format!("{url}/metrics"))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let ok: u64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("thaw_http_requests_total{code=\"2xx\"} "))
        .unwrap()
        .parse()
        .unwrap();
    assert!(ok >= 11_000, "{ok}");
    d.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mounts_through_the_api_share_the_cache_and_reads_beat_a_running_prewarm() {
    if !can_mount("mounts_through_the_api_share_the_cache_and_reads_beat_a_running_prewarm") {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    two_images(tmp.path(), 64);
    let d = Daemon::start(
        tmp.path(),
        // A prefetch capped at 8 MB/s takes seconds over the 64 MiB file, whatever
        // the machine's speed; the container's reads are not paced.
        &[
            "--throttle",
            "20,200",
            "--prefetch-concurrency",
            "2",
            "--prefetch-mbps",
            "8",
        ],
    );
    let c = d.client();
    let mnt = tmp.path().join("mnt");
    std::fs::create_dir(&mnt).unwrap();
    // A long prewarm of the big file is running...
    let big = c.prewarm(&all("big")).await.unwrap();
    let m = c.mount(&mount_at("big", &mnt, false)).await.unwrap();
    // ...and a container reads its small files: they arrive before the prewarm ends.
    let mnt2 = mnt.clone();
    let read = tokio::task::spawn_blocking(move || {
        (0..20)
            .map(|i| std::fs::read(mnt2.join(format!("etc/f{i}"))).unwrap().len())
            .sum::<usize>()
    })
    .await
    .unwrap();
    assert!(read > 400_000);
    let j = c.job(&big.id).await.unwrap();
    assert_eq!(j.state, JobState::Running, "{j:?}");
    assert!(j.chunks_done < j.chunks_total);
    c.cancel(&big.id).await.unwrap();

    // The whole tree equals its source.
    assert!(treediff::assert_same(&tmp.path().join("src"), &mnt, &[]) > 20);
    // Mounting the same place twice is a conflict; a relative path is refused.
    let again = c.mount(&mount_at("big", &mnt, false)).await.unwrap_err();
    assert_eq!(api_code(again), (409, Some(api::ErrorCode::Conflict)));
    let rel = c
        .mount(&api::MountRequest {
            image: "big".into(),
            mountpoint: "relative/dir".into(),
            writable: false,
            prefetch: api::MountPrefetch::None,
        })
        .await
        .unwrap_err();
    assert_eq!(api_code(rel).0, 422);

    // A writable mount: writes land in the upper directory.
    let wmnt = tmp.path().join("wmnt");
    std::fs::create_dir(&wmnt).unwrap();
    let w = c.mount(&mount_at("small", &wmnt, true)).await.unwrap();
    std::fs::write(wmnt.join("etc/new"), b"written").unwrap();
    assert_eq!(std::fs::read(wmnt.join("etc/new")).unwrap(), b"written");
    let upper = PathBuf::from(w.upper.clone().unwrap());
    assert_eq!(std::fs::read(upper.join("etc/new")).unwrap(), b"written");
    assert_eq!(c.mounts().await.unwrap().len(), 2);
    let metrics = reqwest::Client::new()
        .get(format!("{}/metrics", d.url))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(metrics.contains(&format!(
        "thaw_fuse_operation_seconds_count{{mount=\"{}\",op=\"read\"}}",
        m.id
    )));

    c.unmount(&m.id).await.unwrap();
    c.unmount(&w.id).await.unwrap();
    assert!(c.mounts().await.unwrap().is_empty());
    let (status, _) = api_code(c.unmount(&m.id).await.unwrap_err());
    assert_eq!(status, 404);
    assert!(
        std::fs::read_dir(&mnt).unwrap().next().is_none(),
        "unmounted"
    );

    // A daemon killed with mounts up: the next one cleans them up at start.
    let m = c.mount(&mount_at("small", &mnt, false)).await.unwrap();
    assert!(!m.id.is_empty());
    d.kill9();
    let d = Daemon::start(tmp.path(), &[]);
    let c = d.client();
    let fresh = c.mount(&mount_at("small", &mnt, false)).await.unwrap();
    assert!(mnt.join("etc/f0").exists());
    d.stop();
    assert!(
        !mnt.join("etc/f0").exists(),
        "SIGTERM unmounts {}",
        fresh.id
    );
}

#[test]
fn a_recorded_trace_pushed_with_the_image_drives_thaw_prewarm() {
    if !can_mount("a_recorded_trace_pushed_with_the_image_drives_thaw_prewarm") {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    two_images(tmp.path(), 4);
    let store = tmp.path().join("store");
    let mnt = tmp.path().join("mnt");
    std::fs::create_dir(&mnt).unwrap();
    let trace = tmp.path().join("start.trace");
    // Record a start-up that reads three files.
    let mut child = Command::new(THAW)
        .arg("--store")
        .arg(&store)
        .args(["mount", "big"])
        .arg(&mnt)
        .arg("--record-trace")
        .arg(&trace)
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let start = Instant::now();
    while !mnt.join("etc").exists() {
        assert!(start.elapsed() < Duration::from_secs(20));
        std::thread::sleep(Duration::from_millis(20));
    }
    for f in ["etc/f3", "etc/f1", "etc/f7"] {
        std::fs::read(mnt.join(f)).unwrap();
    }
    // SAFETY: signalling our own child.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    assert!(child.wait().unwrap().success());

    let out = thaw(&store, &["trace", "push", "big", trace.to_str().unwrap()]);
    assert!(out.contains("stored 3 records"), "{out}");
    assert!(thaw(&store, &["trace", "list", "big"]).contains("3 records"));
    let shown = thaw(&store, &["trace", "show", "big"]);
    assert!(shown.starts_with("thaw-trace 1\n"));
    assert!(
        shown.lines().nth(2).unwrap().ends_with(" etc/f3"),
        "{shown}"
    );
    // A trace of one image cannot be pushed to another.
    let wrong = Command::new(THAW)
        .arg("--store")
        .arg(&store)
        .args(["trace", "push", "small", trace.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(!wrong.status.success());
    assert!(String::from_utf8_lossy(&wrong.stderr).contains("was recorded on image"));

    // `thaw mount` warms the cache with the pushed trace by itself.
    let cache = tmp.path().join("mount-cache");
    let status = tmp.path().join("status");
    let mut child = Command::new(THAW)
        .arg("--store")
        .arg(&store)
        .args(["mount", "big"])
        .arg(&mnt)
        .arg("--cache")
        .arg(&cache)
        .arg("--status-file")
        .arg(&status)
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let start = Instant::now();
    let stat = |key: &str| -> u64 {
        std::fs::read_to_string(&status)
            .unwrap_or_default()
            .lines()
            .find_map(|l| l.strip_prefix(key)?.strip_prefix(": ")?.parse().ok())
            .unwrap_or(0)
    };
    while stat("prefetched_chunks") < 3 {
        assert!(start.elapsed() < Duration::from_secs(20), "no prefetch");
        std::thread::sleep(Duration::from_millis(50));
    }
    for f in ["etc/f3", "etc/f1", "etc/f7"] {
        std::fs::read(mnt.join(f)).unwrap();
    }
    // SAFETY: signalling our own child.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    assert!(child.wait().unwrap().success());
    assert_eq!(
        stat("fetched_chunks"),
        3,
        "the reads found the prefetched chunks"
    );
    assert_eq!(stat("prefetched_chunks"), 3);

    let d = Daemon::start(tmp.path(), &[]);
    let client = |args: &[&str]| {
        let out = Command::new(THAW)
            .args(args)
            .args(["--server", &d.url])
            .env("THAW_TOKEN", TOKEN)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "thaw {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    };
    let out = client(&["prewarm", "big"]);
    assert!(out.contains("done") && out.contains("chunks 3/3"), "{out}");
    assert!(client(&["jobs"]).contains("chunks 3/3"));
    let stats = client(&["cache", "stats"]);
    assert!(
        stats.contains("disk: ") && stats.contains("3 entries"),
        "{stats}"
    );

    // A mount through the API starts the trace prewarm itself; an image without traces
    // gets none.
    let rt = tokio::runtime::Runtime::new().unwrap();
    let c = d.client();
    let m = rt.block_on(c.mount(&mount_at("big", &mnt, false))).unwrap();
    let job = m
        .prefetch_job
        .clone()
        .expect("a prewarm started with the mount");
    let j = rt.block_on(wait_done(&c, &job));
    assert_eq!((j.state, j.chunks_total), (JobState::Done, 3), "{j:?}");
    let other = tmp.path().join("mnt2");
    std::fs::create_dir(&other).unwrap();
    let n = rt
        .block_on(c.mount(&mount_at("small", &other, false)))
        .unwrap();
    assert_eq!(n.prefetch_job, None);
    rt.block_on(c.unmount(&m.id)).unwrap();
    rt.block_on(c.unmount(&n.id)).unwrap();
    d.stop();
}
