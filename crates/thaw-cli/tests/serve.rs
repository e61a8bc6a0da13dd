//! `thaw serve` end to end: a real daemon on 127.0.0.1 driven over HTTP. Prewarm,
//! poll, cancel, share identical jobs; authentication; bad requests that leave it
//! serving; restart with the same cache; kill -9 in the middle of a prewarm; and a
//! bounded load test.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::too_many_lines,
    reason = "end-to-end scenarios: a failed step panics with its message, and a scenario reads top to bottom"
)]

mod common;
use common::daemon::{all, api_code, two_images, wait_done, Daemon, TOKEN};
use common::{thaw, THAW};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};
use thaw_api::api::{self, JobState, Scope};
use thaw_tests::pseudo_random;

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
            weights: Vec::new(),
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
/// The chunk entries of a disk cache: files in its two-hex-digit directories (not the
/// pack index copies in `meta/`).
fn cache_files(cache: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for sub in std::fs::read_dir(cache).unwrap() {
        let sub = sub.unwrap().path();
        let name = sub.file_name().unwrap().to_string_lossy().to_string();
        if sub.is_dir() && name.len() == 2 && name.bytes().all(|b| b.is_ascii_hexdigit()) {
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

    // Unthrottled, the store is local: have the disk cache keep what the prewarm fetches.
    let d = Daemon::start(tmp.path(), &["--copy-local-store"]);
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
    // A load test from one address: the per-caller rate limit is off here (it has a test
    // of its own in daemon_security.rs).
    let d = Daemon::start(tmp.path(), &["--rate-limit", "0"]);
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
    let metrics = d.metrics().await;
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
async fn the_daemon_serves_an_s3_store() {
    let Ok(url) = std::env::var("THAW_TEST_S3_URL") else {
        return thaw_tests::skip(
            "the_daemon_serves_an_s3_store",
            "THAW_TEST_S3_URL is not set (scripts/test.sh starts moto and sets it)",
        );
    };
    let tmp = tempfile::tempdir().unwrap();
    let store = format!(
        "{url}/serve-{}",
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos()
    );
    let src = tmp.path().join("src");
    std::fs::create_dir(&src).unwrap();
    for i in 0..8u64 {
        std::fs::write(src.join(format!("f{i}")), pseudo_random(200_000, i)).unwrap();
    }
    thaw(
        Path::new(&store),
        &["build", src.to_str().unwrap(), "--tag", "s3img"],
    );
    let d = Daemon::start_on(tmp.path(), &store, &[]);
    let c = d.client();
    let images = c.images().await.unwrap();
    assert_eq!(images.len(), 1);
    assert_eq!(images[0].tags, ["s3img"]);
    let j = wait_done(&c, &c.prewarm(&all("s3img")).await.unwrap().id).await;
    assert_eq!((j.state, j.errors), (JobState::Done, 0), "{j:?}");
    assert_eq!(j.chunks_done, 8);
    let cache = c.cache().await.unwrap();
    assert_eq!(cache.store.fetched_chunks, 8);
    assert_eq!(cache.disk.entries, 8);
    d.stop();
}
