//! The `thaw` binary end to end: build, images, inspect, export, gc, and errors.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::too_many_lines,
    reason = "end-to-end scenarios: a failed step panics with its message, and a scenario reads top to bottom"
)]

use std::path::Path;
use std::process::{Command, Output, Stdio};
use thaw_tests::{fixtures, is_root, skip, treediff};

fn thaw(store: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_thaw"))
        .arg("--store")
        .arg(store)
        .args(args)
        .output()
        .expect("run thaw")
}

fn ok(store: &Path, args: &[&str]) -> String {
    let out = thaw(store, args);
    assert!(
        out.status.success(),
        "thaw {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

fn field<'a>(out: &'a str, key: &str) -> &'a str {
    out.lines()
        .find_map(|l| l.strip_prefix(key)?.strip_prefix(": "))
        .unwrap_or_else(|| panic!("no {key} in {out}"))
}

fn number(out: &str, key: &str) -> u64 {
    field(out, key)
        .split_whitespace()
        .next()
        .unwrap()
        .parse()
        .unwrap()
}

#[test]
fn build_inspect_export_gc_on_the_edge_case_tree() {
    if !is_root() {
        return skip(
            "build_inspect_export_gc_on_the_edge_case_tree",
            "needs root",
        );
    }
    let tmp = tempfile::tempdir().unwrap();
    let (src, store, out) = (
        tmp.path().join("src"),
        tmp.path().join("store"),
        tmp.path().join("out"),
    );
    std::fs::create_dir(&src).unwrap();
    fixtures::make_edge_tree(&src);
    let built = ok(
        &store,
        &["build", src.to_str().unwrap(), "--tag", "edge:v1"],
    );
    let id = field(&built, "image").to_string();
    assert_eq!(id.len(), 64);
    // The 5 GiB sparse file is read by data segment: its holes are never read.
    assert!(number(&built, "bytes_read") < 64 << 20, "{built}");

    let images = ok(&store, &["images"]);
    assert!(
        images.contains(&id) && images.contains("edge:v1"),
        "{images}"
    );
    let inspect = ok(&store, &["inspect", &id[..10]]);
    assert!(
        inspect.contains("hard-linked files 1") && inspect.contains("devices 2"),
        "{inspect}"
    );

    ok(
        &store,
        &[
            "export",
            "edge:v1",
            out.to_str().unwrap(),
            "--cache",
            tmp.path().join("cache").to_str().unwrap(),
        ],
    );
    treediff::assert_same(&src, &out, &[]);

    // Exporting over a non-empty directory is refused and touches nothing.
    let again = thaw(&store, &["export", "edge:v1", out.to_str().unwrap()]);
    assert!(!again.status.success());
    assert!(String::from_utf8_lossy(&again.stderr).contains("not an empty directory"));

    let gc = ok(&store, &["gc", "--safety-period", "0"]);
    assert!(
        gc.contains("reclaimable: 0 ") && gc.contains("dry run"),
        "{gc}"
    );
    ok(&store, &["rmi", "edge:v1"]);
    // Two phases: the first pass marks, the next deletes.
    let gc = ok(&store, &["gc", "--safety-period", "0", "--apply"]);
    assert!(
        gc.contains("marked pack") && !gc.contains("deleted pack"),
        "{gc}"
    );
    let gc = ok(&store, &["gc", "--min-age", "0", "--apply"]);
    assert!(gc.contains("deleted pack"), "{gc}");
    assert!(
        ok(&store, &["images"]).lines().count() == 1,
        "only the header is left"
    );
}

#[test]
fn build_from_a_tar_stream_on_stdin() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    std::fs::create_dir_all(src.join("a")).unwrap();
    std::fs::write(src.join("a/file"), b"from stdin").unwrap();
    let mut tar = Command::new("tar")
        .arg("-C")
        .arg(&src)
        .args(["--zstd", "-cf", "-", "."])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let store = tmp.path().join("store");
    let out = Command::new(env!("CARGO_BIN_EXE_thaw"))
        .arg("--store")
        .arg(&store)
        .args(["build", "-", "--tag", "stdin"])
        .stdin(tar.stdout.take().unwrap())
        .output()
        .unwrap();
    assert!(tar.wait().unwrap().success(), "tar -c");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let dest = tmp.path().join("out");
    ok(&store, &["export", "stdin", dest.to_str().unwrap()]);
    assert_eq!(std::fs::read(dest.join("a/file")).unwrap(), b"from stdin");
}

#[test]
fn errors_name_what_failed() {
    let tmp = tempfile::tempdir().unwrap();
    let store = tmp.path().join("store");
    let out = thaw(
        &store,
        &[
            "export",
            "no-such-image",
            tmp.path().join("o").to_str().unwrap(),
        ],
    );
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("no-such-image"));
    let out = Command::new(env!("CARGO_BIN_EXE_thaw"))
        .args(["--store", "ftp://x/y", "images"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("ftp://x/y"));
    let out = thaw(
        &store,
        &["build", tmp.path().join("missing.tar").to_str().unwrap()],
    );
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("missing.tar"));
}

#[test]
fn debootstrap_rootfs_round_trips_through_the_cli() {
    let Some(rootfs) = std::env::var_os("THAW_ROOTFS") else {
        return skip(
            "debootstrap_rootfs_round_trips_through_the_cli",
            "THAW_ROOTFS is not set (scripts/test.sh sets it to a cached debootstrap tree)",
        );
    };
    if !is_root() {
        return skip(
            "debootstrap_rootfs_round_trips_through_the_cli",
            "needs root",
        );
    }
    let rootfs = Path::new(&rootfs);
    let tmp = tempfile::tempdir().unwrap();
    let (store, out) = (tmp.path().join("store"), tmp.path().join("out"));
    let built = ok(
        &store,
        &[
            "build",
            rootfs.to_str().unwrap(),
            "--tag",
            "debian:bookworm",
        ],
    );
    assert!(number(&built, "bytes_read") > 100 << 20, "{built}");
    ok(
        &store,
        &["export", "debian:bookworm", out.to_str().unwrap()],
    );
    let n = treediff::assert_same(rootfs, &out, &[]);
    assert!(n > 5000, "compared {n} paths");
    // The same tree again: same image id, nothing stored.
    let again = ok(&store, &["build", rootfs.to_str().unwrap()]);
    assert_eq!(field(&again, "image"), field(&built, "image"));
    assert_eq!(number(&again, "bytes_stored"), 0);
    assert_eq!(number(&again, "chunks_new"), 0);
}

#[test]
fn build_takes_oci_layouts_and_registry_images() {
    use thaw_tests::images::{have, sh, umoci_layout, Registry};
    let test = "build_takes_oci_layouts_and_registry_images";
    if !["umoci", "skopeo", "docker-registry"]
        .iter()
        .all(|t| have(t))
        || !is_root()
    {
        skip(test, "needs umoci, skopeo, docker-registry and root");
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let store = tmp.path().join("store");
    let (layout, rootfs) = umoci_layout(tmp.path());
    let registry = Registry::start(tmp.path());
    let image = format!("{}/thaw/cli:v1", registry.addr);
    sh(&format!(
        "skopeo copy --quiet --dest-tls-verify=false oci:{}:img docker://{image}",
        layout.display()
    ));
    ok(
        &store,
        &[
            "build",
            &format!("oci:{}:img", layout.display()),
            "--tag",
            "from-layout",
        ],
    );
    ok(
        &store,
        &[
            "build",
            &format!("docker://{image}"),
            "--tag",
            "from-registry",
        ],
    );
    for tag in ["from-layout", "from-registry"] {
        let out = tmp.path().join(tag);
        ok(&store, &["export", tag, out.to_str().unwrap()]);
        assert!(treediff::assert_same(&rootfs, &out, &[]) >= 6, "{tag}");
    }
    // The same image twice: the second build stores nothing new.
    assert_eq!(
        field(
            &ok(&store, &["build", &format!("docker://{image}")]),
            "chunks_new"
        ),
        "0"
    );
    let missing = thaw(
        &store,
        &[
            "build",
            &format!("docker://{}/thaw/cli:nope", registry.addr),
        ],
    );
    assert!(!missing.status.success());
    let err = String::from_utf8_lossy(&missing.stderr);
    assert!(
        err.contains("404") && err.contains("thaw/cli:nope"),
        "{err}"
    );
}

#[test]
fn build_flags_set_the_run_configuration_and_inspect_shows_it() {
    let tmp = tempfile::tempdir().unwrap();
    let (src, store) = (tmp.path().join("src"), tmp.path().join("store"));
    std::fs::create_dir_all(src.join("srv")).unwrap();
    let src_arg = src.to_str().unwrap();
    let plain = ok(&store, &["build", src_arg, "--tag", "plain"]);
    assert!(
        ok(&store, &["inspect", "plain"]).contains("config: (none"),
        "{plain}"
    );
    let file = tmp.path().join("config.json");
    std::fs::write(
        &file,
        r#"{"Cmd":["/bin/app"],"Env":["A=1","B=2"],"User":"daemon"}"#,
    )
    .unwrap();
    ok(
        &store,
        &[
            "build",
            src_arg,
            "--tag",
            "configured",
            "--config",
            file.to_str().unwrap(),
            "--env",
            "B=3",
            "--workdir",
            "/srv",
            "--entrypoint",
            r#"["/bin/tini","--"]"#,
            "--cmd",
            "exec app --port 80",
        ],
    );
    let inspected = ok(&store, &["inspect", "configured"]);
    assert_eq!(field(&inspected, "  entrypoint"), r#"["/bin/tini","--"]"#);
    assert_eq!(
        field(&inspected, "  cmd"),
        r#"["/bin/sh","-c","exec app --port 80"]"#
    );
    assert_eq!(field(&inspected, "  env"), r#"["A=1","B=3"]"#);
    assert_eq!(field(&inspected, "  working_dir"), r#""/srv""#);
    assert_eq!(field(&inspected, "  user"), r#""daemon""#);
    // The configuration is part of the image: the same tree configured is another image.
    assert_ne!(field(&inspected, "image"), field(&plain, "image"));
    for (flag, value, why) in [
        ("--env", "NOEQUALS", "KEY=VALUE"),
        ("--workdir", "relative", "not absolute"),
        ("--entrypoint", "[1,2]", "JSON array of strings"),
        ("--config", "/no/such/config.json", "/no/such/config.json"),
    ] {
        let out = thaw(&store, &["build", src_arg, "--tag", "bad", flag, value]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success() && err.contains(why),
            "{flag} {value}: {err}"
        );
    }
    assert!(
        !thaw(&store, &["inspect", "bad"]).status.success(),
        "nothing tagged"
    );
}
