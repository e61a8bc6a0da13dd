//! `thaw serve` mounting for containers: mounts through the API sharing the node's cache
//! while a prewarm runs, writable overlays, cleanup after kill -9, and a recorded trace
//! pushed with its image driving `thaw mount`, `thaw prewarm` and the mount API.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::too_many_lines,
    reason = "end-to-end scenarios: a failed step panics with its message, and a scenario reads top to bottom"
)]

mod common;
use common::daemon::{all, api_code, mount_at, two_images, wait_done, Daemon, TOKEN};
use common::{can_mount, succeed, thaw, THAW};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use thaw_api::api::{self, JobState};
use thaw_tests::treediff;

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
    let mnt = tmp.path().join("mnt/a");
    std::fs::create_dir_all(&mnt).unwrap();
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
    // The daemon's mounts get the larger kernel readahead too (`--kernel-readahead`).
    let ra = std::fs::read_to_string(thaw_fuse::mount::readahead_file(&mnt).unwrap()).unwrap();
    assert_eq!(
        ra.trim().parse::<u64>().unwrap() * 1024,
        thaw_fuse::DEFAULT_KERNEL_READAHEAD
    );
    // Mounting the same place twice is a conflict; a path out of the mount root is
    // refused.
    let again = c.mount(&mount_at("big", &mnt, false)).await.unwrap_err();
    assert_eq!(api_code(again), (409, Some(api::ErrorCode::Conflict)));
    let out = c
        .mount(&api::MountRequest {
            image: "big".into(),
            mountpoint: "a/../../escape".into(),
            writable: false,
            allow_non_empty: false,
            prefetch: api::MountPrefetch::None,
        })
        .await
        .unwrap_err();
    assert_eq!(api_code(out).0, 422);

    // A writable mount: writes land in the upper directory.
    let wmnt = tmp.path().join("mnt/w");
    std::fs::create_dir_all(&wmnt).unwrap();
    let w = c.mount(&mount_at("small", &wmnt, true)).await.unwrap();
    std::fs::write(wmnt.join("etc/new"), b"written").unwrap();
    assert_eq!(std::fs::read(wmnt.join("etc/new")).unwrap(), b"written");
    let upper = PathBuf::from(w.upper.clone().unwrap());
    assert_eq!(std::fs::read(upper.join("etc/new")).unwrap(), b"written");
    assert_eq!(c.mounts().await.unwrap().len(), 2);
    let metrics = d.metrics().await;
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

    // `thaw umount` on a mount the daemon owns asks the daemon, which forgets it.
    let m = c.mount(&mount_at("small", &mnt, false)).await.unwrap();
    let out = Command::new(THAW)
        .env("THAW_TOKEN", TOKEN)
        .arg("umount")
        .arg(&mnt)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        c.mounts().await.unwrap().is_empty(),
        "the daemon unmounted {}",
        m.id
    );
    assert!(std::fs::read_dir(&mnt).unwrap().next().is_none());

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
    let mnt = tmp.path().join("mnt/a");
    std::fs::create_dir_all(&mnt).unwrap();
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
        succeed(
            Command::new(THAW)
                .args(args)
                .args(["--server", &d.url])
                .env("THAW_TOKEN", TOKEN),
        )
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
    let other = tmp.path().join("mnt/b");
    std::fs::create_dir_all(&other).unwrap();
    let n = rt
        .block_on(c.mount(&mount_at("small", &other, false)))
        .unwrap();
    assert_eq!(n.prefetch_job, None);
    rt.block_on(c.unmount(&m.id)).unwrap();
    rt.block_on(c.unmount(&n.id)).unwrap();
    d.stop();
}
