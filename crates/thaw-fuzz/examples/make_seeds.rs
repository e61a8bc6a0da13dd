//! Writes the seed inputs of every fuzz target into `fuzz/corpus/TARGET/seed-*`: small,
//! valid examples of each format, made by thaw's own encoders where it has them, so the
//! fuzzers start from inputs that reach deep. Run once; the corpus is committed.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::too_many_lines,
    reason = "a one-off generator: lists of seeds, read top to bottom"
)]

use prost::Message;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use thaw_snapshotter::proto::containerd::services::snapshots::v1 as pb;

fn corpus() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fuzz/corpus")
}

fn seed(target: &str, name: &str, bytes: &[u8]) {
    let dir = corpus().join(target);
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join(format!("seed-{name}")), bytes).unwrap();
}

fn tar_of(entries: &[(&str, &[u8])], extra: impl FnOnce(&mut tar::Builder<Vec<u8>>)) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for (name, data) in entries {
        let mut h = header();
        h.set_mode(0o644);
        h.set_mtime(1_700_000_000);
        h.set_size(data.len() as u64);
        b.append_data(&mut h, name, *data).unwrap();
    }
    extra(&mut b);
    b.into_inner().unwrap()
}

fn header() -> tar::Header {
    let mut h = tar::Header::new_gnu();
    h.set_uid(0);
    h.set_gid(0);
    h.set_mtime(1_700_000_000);
    h
}

fn sha(bytes: &[u8]) -> String {
    use sha2::Digest;
    format!("sha256:{}", hex::encode(sha2::Sha256::digest(bytes)))
}

fn main() {
    let layer = tar_of(&[("etc/msg", b"hello\n"), ("bin/.wh.gone", b"")], |b| {
        let mut h = header();
        h.set_entry_type(tar::EntryType::Symlink);
        h.set_size(0);
        h.set_mode(0o777);
        b.append_link(&mut h, "bin/sh", "busybox").unwrap();
        b.append_pax_extensions([("SCHILY.xattr.user.a", b"v".as_slice())])
            .unwrap();
        let mut h = header();
        h.set_size(2);
        h.set_mode(0o600);
        b.append_data(&mut h, "etc/x", &b"xy"[..]).unwrap();
    });
    seed("tar_build", "layer", &layer);
    store_seeds(&layer);
    archive_seeds(&layer);
    document_seeds(&layer);
    node_seeds();
    snapshot_seeds();
}

/// Manifests, pack indexes, chunks and a trace, from a real build of `layer`.
fn store_seeds(layer: &[u8]) {
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let store: Arc<dyn thaw_store::BlobStore> =
            Arc::new(thaw_store::ObjectStoreBackend::memory());
        let repo = thaw_store::Repository::open(store.clone()).await.unwrap();
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("l.tar"), layer).unwrap();
        let source = thaw_image::BuildSource::TarFile(dir.path().join("l.tar"));
        let r = thaw_image::build(&repo, source, Default::default())
            .await
            .unwrap();
        let mut manifest = repo.get_manifest(&r.image).await.unwrap();
        seed("manifest", "v1", &manifest.encode());
        manifest.config = Some(thaw_core::ImageConfig {
            cmd: Some(vec!["cat".into(), "/etc/msg".into()]),
            env: vec!["A=1".into()],
            ..Default::default()
        });
        seed("manifest", "v2", &manifest.encode());
        for o in store.list("packs").await.unwrap() {
            if o.key.ends_with(".idx") {
                seed("pack_index", "built", &store.get(&o.key).await.unwrap());
            }
        }
        let chunk = b"a chunk of text, a chunk of text, a chunk of text".repeat(4);
        let zstd = zstd::encode_all(&chunk[..], 3).unwrap();
        let mut z = vec![1u8];
        z.extend_from_slice(&(chunk.len() as u32).to_le_bytes());
        z.extend_from_slice(&zstd);
        seed("pack_chunk", "zstd", &z);
        let mut plain = vec![0u8];
        plain.extend_from_slice(&(chunk.len() as u32).to_le_bytes());
        plain.extend_from_slice(&chunk);
        seed("pack_chunk", "plain", &plain);
        let trace = thaw_core::trace::Trace {
            image: r.image,
            records: vec![thaw_core::trace::TraceRecord {
                elapsed_us: 1200,
                chunk: manifest.chunks[0].id,
                offset: 0,
                path: b"etc/msg with %".to_vec(),
            }],
        };
        seed("trace", "one", trace.encode().as_bytes());
    });
}

/// A legacy `docker save` archive and one with an OCI layout inside.
fn archive_seeds(layer: &[u8]) {
    let config = format!(
        r#"{{"architecture":"amd64","os":"linux","config":{{"Cmd":["cat","/etc/msg"]}},"rootfs":{{"type":"layers","diff_ids":["{}"]}}}}"#,
        sha(layer)
    );
    let legacy_manifest =
        r#"[{"Config":"config.json","RepoTags":["thaw/seed:1"],"Layers":["layer/layer.tar"]}]"#;
    let legacy = tar_of(
        &[
            ("manifest.json", legacy_manifest.as_bytes()),
            ("config.json", config.as_bytes()),
            ("layer/layer.tar", layer),
        ],
        |_| {},
    );
    seed("docker_archive", "legacy", &legacy);
    let blob = |b: &[u8]| format!("blobs/sha256/{}", &sha(b)[7..]);
    let manifest = format!(
        r#"{{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"{}","size":{}}},"layers":[{{"mediaType":"application/vnd.oci.image.layer.v1.tar","digest":"{}","size":{}}}]}}"#,
        sha(config.as_bytes()),
        config.len(),
        sha(layer),
        layer.len()
    );
    let index = format!(
        r#"{{"schemaVersion":2,"manifests":[{{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"{}","size":{},"annotations":{{"io.containerd.image.name":"thaw/seed:1","org.opencontainers.image.ref.name":"1"}}}}]}}"#,
        sha(manifest.as_bytes()),
        manifest.len()
    );
    let oci = tar_of(
        &[
            ("oci-layout", br#"{"imageLayoutVersion":"1.0.0"}"#),
            ("index.json", index.as_bytes()),
            (&blob(manifest.as_bytes()), manifest.as_bytes()),
            (&blob(config.as_bytes()), config.as_bytes()),
            (&blob(layer), layer),
            ("manifest.json", legacy_manifest.as_bytes()),
        ],
        |_| {},
    );
    seed("docker_archive", "oci", &oci);
    let mut docs = manifest.into_bytes();
    docs.push(0);
    docs.extend_from_slice(config.as_bytes());
    seed("oci_documents", "pair", &docs);
    seed("oci_documents", "index", index.as_bytes());
}

/// Registry references.
fn document_seeds(_layer: &[u8]) {
    for (name, r) in [
        ("tag", "localhost:5000/thaw/busy:v1"),
        ("hub", "docker.io/library/debian:bookworm"),
        ("digest", "registry.example/a/b@sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"),
    ] {
        seed("registry_reference", name, r.as_bytes());
    }
}

/// Safetensors, API bodies, tokens, filters, autoscaler files.
fn node_seeds() {
    let header = br#"{"__metadata__":{"format":"pt"},"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"b":{"dtype":"BF16","shape":[2,2],"data_offsets":[8,16]}}"#;
    let mut st = (header.len() as u64).to_le_bytes().to_vec();
    st.extend_from_slice(header);
    seed("safetensors_header", "two", &st);
    let bodies: [(&str, u8, &str); 6] = [
        (
            "prewarm",
            0,
            r#"{"image":"base","scope":"all","weights":["models/m.safetensors"]}"#,
        ),
        (
            "mount",
            1,
            r#"{"image":"base","mountpoint":"app","writable":true,"prefetch":"none"}"#,
        ),
        (
            "container",
            2,
            r#"{"image":"base","command":["/bin/sh","-c","echo hi"],"env":["A=1"],"cpus":1.5,"memory":1048576,"pids_limit":64,"mounts":["/data:/data:ro"],"gpus":"all"}"#,
        ),
        ("stop", 3, r#"{"timeout_seconds":5}"#),
        (
            "signals",
            4,
            r#"{"queued":3,"in_flight":1,"completed":7,"service_seconds":0.5,"replicas":{"r1":1}}"#,
        ),
        ("reply", 5, r#"{"replicas":2,"ready":1}"#),
    ];
    for (name, which, body) in bodies {
        let mut b = vec![which];
        b.extend_from_slice(body.as_bytes());
        seed("api_bodies", name, &b);
    }
    seed("auth_tokens", "two", b"# operators\nops trace,mount 0123456789abcdef0123456789abcdef\nci admin fedcba9876543210fedcba9876543210\n");
    for (name, f) in [
        (
            "remote",
            r#"labels."containerd.io/snapshot.ref"==sha256:abc,parent=="""#,
        ),
        ("regexp", "name~=/^sha256:[a-f]+$/,kind==committed"),
        ("presence", "labels.a,parent!=x"),
    ] {
        seed("snapshot_filter", name, f.as_bytes());
    }
    seed(
        "autoscale_config",
        "good",
        br#"tick_seconds = 0.5

[[deployment]]
name = "echo"
image = "debian"
command = ["/bin/sh", "-c", "echo $THAW_TASK"]
policy = "thaw-depth"
max_replicas = 4
concurrency = 2
cold_start_seconds = 3
runtime = "runc"

[deployment.params]
keep_warm = 30
min_replicas = 0

[deployment.source]
redis = "redis://127.0.0.1:6379"
queue = "tasks"
"#,
    );
    let azure = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared/traces/azure-llm-2023-code.csv"))
        .map(|t| t.lines().take(20).collect::<Vec<_>>().join("\n"))
        .unwrap_or_else(|_| "TIMESTAMP,ContextTokens,GeneratedTokens\n2023-11-16 23:59:59.5000000,1024,0\n2023-11-17 00:00:01.0,2048,1".into());
    seed("autoscale_trace", "azure", azure.as_bytes());
    seed(
        "autoscale_trace",
        "plain",
        b"# arrival,service\n0,0.5\n0.25,1\n3,0.125\n",
    );
}

/// Snapshot call sequences: the unpack of two layers, a container's root, then the rest
/// of the API.
fn snapshot_seeds() {
    let mut out = Vec::new();
    for (method, body) in snapshot_calls() {
        out.push(method);
        out.push(u8::try_from(body.len()).unwrap());
        out.extend_from_slice(&body);
    }
    seed("snapshot_requests", "lifecycle", &out);
    let _ = std::io::stdout().flush();
}

/// The calls of [`snapshot_seeds`], each as its method number and protobuf encoding:
/// the layers made, then every other call on them.
fn snapshot_calls() -> Vec<(u8, Vec<u8>)> {
    let mut calls = snapshot_layer_calls();
    calls.extend(snapshot_query_calls());
    calls
}

/// Prepare and commit a layer, prepare a container on it and a view of it.
fn snapshot_layer_calls() -> Vec<(u8, Vec<u8>)> {
    let prepare = |key: &str, parent: &str| {
        pb::PrepareSnapshotRequest {
            snapshotter: "thaw".into(),
            key: key.into(),
            parent: parent.into(),
            labels: [(
                "containerd.io/snapshot.ref".to_string(),
                "sha256:abc".to_string(),
            )]
            .into(),
        }
        .encode_to_vec()
    };
    let commit = pb::CommitSnapshotRequest {
        snapshotter: "thaw".into(),
        name: "l1".into(),
        key: "extract-1".into(),
        labels: Default::default(),
    };
    let view = pb::ViewSnapshotRequest {
        snapshotter: "thaw".into(),
        key: "v1".into(),
        parent: "l1".into(),
        labels: Default::default(),
    };
    vec![
        (0, prepare("extract-1", "")),
        (3, commit.encode_to_vec()),
        (0, prepare("c1", "l1")),
        (1, view.encode_to_vec()),
    ]
}

/// Mounts, stat, list, usage, remove and cleanup on the snapshots the layer calls made.
fn snapshot_query_calls() -> Vec<(u8, Vec<u8>)> {
    let snapshotter = || "thaw".to_string();
    let key = |k: &str| k.to_string();
    vec![
        (
            2,
            pb::MountsRequest {
                snapshotter: snapshotter(),
                key: key("c1"),
            }
            .encode_to_vec(),
        ),
        (
            5,
            pb::StatSnapshotRequest {
                snapshotter: snapshotter(),
                key: key("l1"),
            }
            .encode_to_vec(),
        ),
        (
            7,
            pb::ListSnapshotsRequest {
                snapshotter: snapshotter(),
                filters: vec!["parent==l1".into()],
            }
            .encode_to_vec(),
        ),
        (
            8,
            pb::UsageRequest {
                snapshotter: snapshotter(),
                key: key("c1"),
            }
            .encode_to_vec(),
        ),
        (
            4,
            pb::RemoveSnapshotRequest {
                snapshotter: snapshotter(),
                key: key("c1"),
            }
            .encode_to_vec(),
        ),
        (
            9,
            pb::CleanupRequest {
                snapshotter: snapshotter(),
            }
            .encode_to_vec(),
        ),
    ]
}
