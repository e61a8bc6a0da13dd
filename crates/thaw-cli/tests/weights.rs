//! Weights end to end through the `thaw` binary: `thaw weights load --checksums` against
//! hashes computed independently in Python; and the daemon's resident tier (filled by
//! `thaw prewarm --weights`) handed to a real Python process over the weights socket,
//! which maps the memfds and compares every tensor with the source files, with clients
//! that die in the middle in between.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "end-to-end scenarios: a failed step panics with its message"
)]

mod common;
use common::daemon::{wait_done, Daemon};
use common::{succeed, thaw, THAW};

use std::path::{Path, PathBuf};
use std::process::Command;
use thaw_tests::skip;

/// The Python to run (`THAW_PYTHON`, which scripts/test.sh points at its venv), if it has
/// the modules named.
fn python(test: &str, modules: &str) -> Option<String> {
    let py = std::env::var("THAW_PYTHON").unwrap_or_else(|_| "python3".into());
    let ok = Command::new(&py)
        .args(["-c", &format!("import {modules}")])
        .output()
        .is_ok_and(|o| o.status.success());
    if ok {
        Some(py)
    } else {
        skip(
            test,
            &format!("{py} lacks {modules} (scripts/test.sh installs them)"),
        );
        None
    }
}

fn repo_file(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .join(rel)
}

/// A safetensors file with tensors of several dtypes, an empty one, and a large one.
fn mixed(path: &Path) {
    let big: Vec<u8> = (0..(5u32 << 20))
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    let tensors: Vec<(&str, &str, Vec<usize>, Vec<u8>)> = vec![
        ("a.bf16", "BF16", vec![3, 5], (0..30).collect()),
        ("b.f32", "F32", vec![7], (0..28).map(|i| i * 3).collect()),
        ("c.empty", "F16", vec![0, 4], Vec::new()),
        ("d.i64", "I64", vec![2, 2], (0..32).collect()),
        ("e.bool", "BOOL", vec![5], vec![0, 1, 1, 0, 1]),
        ("f.big", "U8", vec![big.len()], big),
    ];
    let mut header = String::from(r#"{"__metadata__":{"format":"pt"}"#);
    let mut offset = 0;
    for (name, dtype, shape, data) in &tensors {
        header.push_str(&format!(
            r#","{name}":{{"dtype":"{dtype}","shape":{shape:?},"data_offsets":[{offset},{}]}}"#,
            offset + data.len()
        ));
        offset += data.len();
    }
    header.push('}');
    let mut f = (header.len() as u64).to_le_bytes().to_vec();
    f.extend_from_slice(header.as_bytes());
    for (_, _, _, data) in &tensors {
        f.extend_from_slice(data);
    }
    std::fs::write(path, f).unwrap();
}

/// The real weights (scripts/test.sh fetches them), if there.
fn real_weights() -> Option<PathBuf> {
    std::env::var_os("THAW_WEIGHTS")
        .map(PathBuf::from)
        .filter(|p| p.is_file())
}

#[test]
fn checksums_match_hashes_computed_in_python() {
    let test = "checksums_match_hashes_computed_in_python";
    let Some(py) = python(test, "blake3") else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    std::fs::create_dir_all(&src).unwrap();
    let mut files = vec!["mixed.safetensors".to_string()];
    mixed(&src.join("mixed.safetensors"));
    if let Some(real) = real_weights() {
        std::fs::copy(real, src.join("model.safetensors")).unwrap();
        files.push("model.safetensors".into());
    } else {
        skip(test, "THAW_WEIGHTS is not set: generated weights only");
    }
    let store = tmp.path().join("store");
    thaw(&store, &["build", src.to_str().unwrap(), "--tag", "w"]);
    for f in &files {
        let ours = thaw(
            &store,
            &["weights", "load", "w", f, "--device", "host", "--checksums"],
        );
        let theirs = succeed(
            Command::new(&py)
                .arg(repo_file("python/tests/checksums.py"))
                .arg(src.join(f)),
        );
        let sorted = |s: &str| {
            let mut v: Vec<String> = s.lines().map(str::to_string).collect();
            v.sort();
            v
        };
        assert!(ours.lines().count() >= 6, "{ours}");
        assert_eq!(sorted(&ours), sorted(&theirs), "{f}");
        // Aligned destinations hold the same tensors.
        let aligned = thaw(
            &store,
            &[
                "weights",
                "load",
                "w",
                f,
                "--device",
                "host",
                "--checksums",
                "--align",
                "256",
            ],
        );
        assert_eq!(sorted(&aligned), sorted(&theirs), "{f} aligned");
    }
    // A path that is not a file is a clear error.
    let out = Command::new(THAW)
        .arg("--store")
        .arg(&store)
        .args(["weights", "load", "w", "nosuch", "--device", "host"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("nosuch is not a regular file"));
}

/// Clients that die: one right after asking, one that reads a byte and goes, one that
/// sends garbage (and gets an answer saying so).
fn clients_that_die(py: &str, socket: &Path) {
    for script in [
        "import socket,sys; s=socket.socket(socket.AF_UNIX); s.connect(sys.argv[1]); s.send(b'{\"image\":\"w\",\"path\":\"mixed.safetensors\"}\\n')",
        "import socket,sys; s=socket.socket(socket.AF_UNIX); s.connect(sys.argv[1]); s.send(b'{\"image\":\"w\",\"path\":\"mixed.safetensors\"}\\n'); s.recv(1); import os; os._exit(0)",
        "import socket,sys; s=socket.socket(socket.AF_UNIX); s.connect(sys.argv[1]); s.send(b'garbage\\n'); print(s.recv(4096).decode())",
    ] {
        let out = Command::new(py).args(["-c", script]).arg(socket).output().unwrap();
        assert!(out.status.success(), "{out:?}");
        if script.contains("garbage") {
            assert!(String::from_utf8_lossy(&out.stdout).contains("a bad request"), "{out:?}");
        }
    }
}

#[test]
fn a_python_process_maps_the_daemons_resident_weights() {
    let test = "a_python_process_maps_the_daemons_resident_weights";
    let Some(py) = python(test, "json") else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    std::fs::create_dir_all(&src).unwrap();
    mixed(&src.join("mixed.safetensors"));
    let real = real_weights();
    if let Some(r) = &real {
        std::fs::copy(r, src.join("model.safetensors")).unwrap();
    }
    let store = tmp.path().join("store");
    thaw(&store, &["build", src.to_str().unwrap(), "--tag", "w"]);
    let socket = tmp.path().join("weights.sock");
    let daemon = Daemon::start(
        tmp.path(),
        &[
            "--resident-weights",
            "1073741824",
            "--weights-socket",
            socket.to_str().unwrap(),
        ],
    );
    // Prewarm makes the mixed file resident (the image has no trace: no other chunks).
    let out = succeed(
        Command::new(THAW)
            .args(["prewarm", "w", "--weights", "mixed.safetensors", "--server"])
            .arg(format!("unix:{}", daemon.socket.display())),
    );
    assert!(out.contains("job"), "{out}");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let jobs = rt.block_on(daemon.client().jobs()).unwrap();
    let job = rt.block_on(wait_done(&daemon.client(), &jobs[0].id));
    assert_eq!((job.weights_resident, job.errors), (1, 0), "{job:?}");
    let metrics = rt.block_on(daemon.metrics());
    assert!(
        metrics.contains("thaw_weights_resident_models 1"),
        "{metrics}"
    );

    let check = |path: &str, sources: &[PathBuf]| {
        let out = Command::new(&py)
            .arg(repo_file("python/tests/check_handoff.py"))
            .arg(&socket)
            .args(["w", path])
            .args(sources)
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout).to_string();
        assert!(
            out.status.success() && text.starts_with("OK"),
            "{text}{}",
            String::from_utf8_lossy(&out.stderr)
        );
        text
    };
    let ok = check("mixed.safetensors", &[src.join("mixed.safetensors")]);
    assert!(ok.contains("6 tensors"), "{ok}");
    clients_that_die(&py, &socket);
    // The daemon carries on, and loads what was not prewarmed on the first request.
    if let Some(r) = &real {
        let ok = check("model.safetensors", std::slice::from_ref(r));
        assert!(ok.starts_with("OK 1 files"), "{ok}");
    }
    check("mixed.safetensors", &[src.join("mixed.safetensors")]);
    let metrics = rt.block_on(daemon.metrics());
    assert!(
        metrics.contains("thaw_weights_resident_hits_total"),
        "{metrics}"
    );
    daemon.stop();
    assert!(!socket.exists(), "the socket is removed at shutdown");
}
