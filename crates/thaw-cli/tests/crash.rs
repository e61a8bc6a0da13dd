//! Crash safety by enumeration: `thaw build` and `thaw gc --apply` are killed (aborted,
//! as `kill -9` would: nothing flushed, nothing cleaned up) before their 1st, 2nd, ...
//! store request, until a run gets through. After every crash the other image still
//! exports exactly, and the next runs finish the job: the build succeeds, two gc passes
//! leave no garbage, no orphan and no stale mark. On a local store, and on S3 (moto)
//! under `scripts/test.sh`.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "tests: a failed step panics with its message"
)]

mod common;

use common::THAW;
use std::path::Path;
use std::process::{Command, Output};
use thaw_tests::{pseudo_random, skip, treediff};

const CRASH_VAR: &str = "THAW_TEST_CRASH_AFTER_REQUESTS";

fn run(store: &str, args: &[&str], crash_after: Option<usize>) -> Output {
    let mut cmd = Command::new(THAW);
    cmd.arg("--store").arg(store).args(args);
    if let Some(k) = crash_after {
        cmd.env(CRASH_VAR, k.to_string());
    }
    cmd.output().unwrap()
}

fn ok(store: &str, args: &[&str]) -> String {
    let out = run(store, args, None);
    assert!(
        out.status.success(),
        "thaw {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

fn tree(dir: &Path, seed: u64, files: u64) {
    std::fs::create_dir_all(dir.join("sub")).unwrap();
    for i in 0..files {
        let name = if i % 2 == 0 {
            format!("f{i}")
        } else {
            format!("sub/f{i}")
        };
        std::fs::write(
            dir.join(name),
            pseudo_random(30_000 + i as usize * 1000, seed * 100 + i),
        )
        .unwrap();
    }
}

/// The trees: `keep` stays in the store throughout, `gone` is built and removed (its
/// packs are garbage), `new` is what the crashing build builds.
struct Trees {
    keep: std::path::PathBuf,
    gone: std::path::PathBuf,
    new: std::path::PathBuf,
}

fn trees(dir: &Path) -> Trees {
    let t = Trees {
        keep: dir.join("keep"),
        gone: dir.join("gone"),
        new: dir.join("new"),
    };
    tree(&t.keep, 1, 6);
    tree(&t.gone, 2, 6);
    tree(&t.new, 3, 6);
    // `new` shares a file with `gone`: the build deduplicates against garbage.
    std::fs::copy(t.gone.join("f0"), t.new.join("from-gone")).unwrap();
    t
}

fn setup(store: &str, t: &Trees) {
    ok(store, &["build", t.keep.to_str().unwrap(), "--tag", "keep"]);
    ok(store, &["build", t.gone.to_str().unwrap(), "--tag", "gone"]);
    ok(store, &["rmi", "gone"]);
}

fn assert_exports(store: &str, image: &str, src: &Path, context: &str) {
    let out = tempfile::tempdir().unwrap();
    let dest = out.path().join("x");
    ok(store, &["export", image, dest.to_str().unwrap()]);
    let diff = treediff::compare(src, &dest, &[]);
    assert!(diff.is_empty(), "{context}: {image} differs: {diff:?}");
}

/// Every image the store lists exports exactly to one of the trees: no manifest points at
/// a missing chunk, whatever the crash left.
fn assert_every_image_whole(store: &str, t: &Trees, context: &str) {
    let listing = ok(store, &["images"]);
    for id in listing
        .lines()
        .skip(1)
        .filter_map(|l| l.split_whitespace().next())
    {
        let out = tempfile::tempdir().unwrap();
        let dest = out.path().join("x");
        ok(store, &["export", id, dest.to_str().unwrap()]);
        let whole = [&t.keep, &t.new]
            .iter()
            .any(|src| treediff::compare(src, &dest, &[]).is_empty());
        assert!(whole, "{context}: image {id} matches no tree");
    }
}

/// Two gc passes with no safety period, then a dry run that finds nothing left to do.
fn assert_gc_cleans_up(store: &str, context: &str) {
    ok(store, &["gc", "--apply", "--safety-period", "0"]);
    ok(store, &["gc", "--apply", "--safety-period", "0"]);
    let dry = ok(store, &["gc", "--safety-period", "0"]);
    for clean in ["reclaimable: 0 ", "orphans: 0", "stale_marks: 0"] {
        assert!(
            dry.contains(clean),
            "{context}: {clean:?} expected in\n{dry}"
        );
    }
}

fn crashed(out: &Output, context: &str) -> bool {
    let stderr = String::from_utf8_lossy(&out.stderr);
    if out.status.success() {
        return false;
    }
    assert!(
        stderr.contains("crash test: aborting"),
        "{context}: failed without crashing: {stderr}"
    );
    true
}

/// Crashes `thaw build` before each of its requests in turn.
fn build_crashes(base: &str) -> usize {
    let dir = tempfile::tempdir().unwrap();
    let t = trees(dir.path());
    for k in 0.. {
        let store = format!("{base}/build-{k}");
        setup(&store, &t);
        let context = format!("build crashed before request {}", k + 1);
        let out = run(
            &store,
            &["build", t.new.to_str().unwrap(), "--tag", "new"],
            Some(k),
        );
        if !crashed(&out, &context) {
            assert_exports(&store, "new", &t.new, "uncrashed build");
            return k;
        }
        assert_every_image_whole(&store, &t, &context);
        assert_exports(&store, "keep", &t.keep, &context);
        ok(&store, &["build", t.new.to_str().unwrap(), "--tag", "new"]);
        assert_exports(&store, "new", &t.new, &context);
        assert_gc_cleans_up(&store, &context);
        assert_exports(&store, "keep", &t.keep, &context);
        assert_exports(&store, "new", &t.new, &context);
    }
    unreachable!()
}

/// Crashes the deleting pass of `thaw gc --apply` before each of its requests in turn.
fn gc_crashes(base: &str) -> usize {
    let dir = tempfile::tempdir().unwrap();
    let t = trees(dir.path());
    for k in 0.. {
        let store = format!("{base}/gc-{k}");
        setup(&store, &t);
        // The first pass marks gone's packs; the crashing one deletes them.
        ok(&store, &["gc", "--apply", "--safety-period", "0"]);
        let context = format!("gc crashed before request {}", k + 1);
        let out = run(&store, &["gc", "--apply", "--safety-period", "0"], Some(k));
        let was_crashed = crashed(&out, &context);
        assert_every_image_whole(&store, &t, &context);
        assert_exports(&store, "keep", &t.keep, &context);
        assert_gc_cleans_up(&store, &context);
        assert_exports(&store, "keep", &t.keep, &context);
        if !was_crashed {
            return k;
        }
    }
    unreachable!()
}

#[test]
fn build_and_gc_killed_at_every_request_of_a_local_store() {
    let dir = tempfile::tempdir().unwrap();
    let base = dir.path().to_str().unwrap();
    let build = build_crashes(base);
    let gc = gc_crashes(base);
    eprintln!("local store: build crashed at each of {build} requests, gc at each of {gc}");
    assert!(
        build >= 8 && gc >= 6,
        "too few requests to be meaningful: {build}, {gc}"
    );
}

#[test]
fn build_and_gc_killed_at_every_request_of_s3() {
    let Ok(url) = std::env::var("THAW_TEST_S3_URL") else {
        return skip(
            "build_and_gc_killed_at_every_request_of_s3",
            "THAW_TEST_S3_URL is not set (scripts/test.sh starts moto and sets it)",
        );
    };
    let base = format!("{url}/crash-{:016x}", rand::random::<u64>());
    let build = build_crashes(&base);
    let gc = gc_crashes(&base);
    eprintln!("S3: build crashed at each of {build} requests, gc at each of {gc}");
    assert!(
        build >= 8 && gc >= 6,
        "too few requests to be meaningful: {build}, {gc}"
    );
}
