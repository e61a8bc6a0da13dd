//! OCI image layouts: layers apply in order with whiteouts and opaque directories; every
//! blob is checked against its digest; bad layouts get clear errors and store nothing;
//! a layout written by `umoci` (when installed) builds to the tree it was made from.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "tests: a failed step panics with its message"
)]

use sha2::{Digest, Sha256};
use std::io::Write;
use std::path::Path;
use thaw_core::{ImageConfig, ImageId, Manifest};
use thaw_image::{build, export, BuildError, BuildOptions, BuildSource};
use thaw_store::{ChunkReader, ReaderConfig, Repository};
use thaw_tests::images::{have, sh, umoci_layout, Registry};
use thaw_tests::{local_repo, skip};

enum E {
    File(&'static str, &'static [u8]),
    Dir(&'static str),
}

fn layer_tar(entries: &[E]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for e in entries {
        let mut h = tar::Header::new_ustar();
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(1_700_000_000);
        match e {
            E::File(path, data) => {
                h.set_mode(0o644);
                h.set_entry_type(tar::EntryType::Regular);
                h.set_size(data.len() as u64);
                b.append_data(&mut h, path, *data).unwrap();
            }
            E::Dir(path) => {
                h.set_mode(0o755);
                h.set_entry_type(tar::EntryType::Directory);
                h.set_size(0);
                b.append_data(&mut h, path, &b""[..]).unwrap();
            }
        }
    }
    b.into_inner().unwrap()
}

fn gzip(data: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    e.write_all(data).unwrap();
    e.finish().unwrap()
}

/// Writes a blob; returns its descriptor JSON.
fn blob(
    layout: &Path,
    media_type: &str,
    data: &[u8],
    extra: serde_json::Value,
) -> serde_json::Value {
    let hex = hex::encode(Sha256::digest(data));
    let dir = layout.join("blobs/sha256");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join(&hex), data).unwrap();
    let mut d = serde_json::json!({
        "mediaType": media_type,
        "digest": format!("sha256:{hex}"),
        "size": data.len(),
    });
    if let serde_json::Value::Object(m) = extra {
        d.as_object_mut().unwrap().extend(m);
    }
    d
}

const LAYER: &str = "application/vnd.oci.image.layer.v1.tar";
const LAYER_GZ: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
const LAYER_ZSTD: &str = "application/vnd.oci.image.layer.v1.tar+zstd";
const MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";

/// A layer's `diff_id`: the digest of its uncompressed tar (of its bytes as they are
/// when they do not decompress, as in the corrupt-layer cases).
fn diff_id(media_type: &str, data: &[u8]) -> String {
    use std::io::Read;
    let plain = match media_type {
        LAYER_GZ => {
            let mut out = Vec::new();
            flate2::read::MultiGzDecoder::new(data)
                .read_to_end(&mut out)
                .map(|_| out)
                .ok()
        }
        LAYER_ZSTD => zstd::decode_all(data).ok(),
        _ => None,
    };
    format!(
        "sha256:{}",
        hex::encode(Sha256::digest(plain.as_deref().unwrap_or(data)))
    )
}

/// An image manifest blob over `layers` (media type, bytes), with a config that lists
/// their `diff_ids`; returns its descriptor.
fn image(layout: &Path, layers: &[(&str, Vec<u8>)], extra: serde_json::Value) -> serde_json::Value {
    let diff_ids: Vec<_> = layers.iter().map(|(t, d)| diff_id(t, d)).collect();
    let config_json = serde_json::json!({"rootfs": {"type": "layers", "diff_ids": diff_ids}});
    let config = blob(
        layout,
        "application/vnd.oci.image.config.v1+json",
        config_json.to_string().as_bytes(),
        serde_json::json!({}),
    );
    let layers: Vec<_> = layers
        .iter()
        .map(|(t, data)| blob(layout, t, data, serde_json::json!({})))
        .collect();
    let manifest = serde_json::json!({"schemaVersion": 2, "mediaType": MANIFEST, "config": config, "layers": layers});
    blob(layout, MANIFEST, manifest.to_string().as_bytes(), extra)
}

fn write_index(layout: &Path, manifests: Vec<serde_json::Value>) {
    std::fs::write(
        layout.join("oci-layout"),
        r#"{"imageLayoutVersion":"1.0.0"}"#,
    )
    .unwrap();
    let index = serde_json::json!({"schemaVersion": 2, "manifests": manifests});
    std::fs::write(layout.join("index.json"), index.to_string()).unwrap();
}

fn named(name: &str) -> serde_json::Value {
    serde_json::json!({"annotations": {"org.opencontainers.image.ref.name": name}})
}

/// `etc/` + `prefix` + a 253-byte name.
fn long_name(prefix: &str) -> &'static str {
    Box::leak(format!("etc/{prefix}{}", "n".repeat(253)).into_boxed_str())
}

/// Three layers: plain, gzip, zstd, with whiteouts and an opaque directory.
fn three_layers(layout: &Path) -> serde_json::Value {
    let base = layer_tar(&[
        E::Dir("etc"),
        E::File("etc/a", b"a from the base"),
        E::File("etc/b", b"b from the base"),
        E::Dir("opt/x"),
        E::File("opt/x/1", b"one"),
        E::File("opt/x/2", b"two"),
        E::File("usr/bin/tool", b"tool v1"),
        E::File("gone/file", b"removed with its directory"),
        // A 253-byte name: its whiteout, `.wh.` + 253 bytes, is longer than a name may be.
        E::File(long_name(""), b"a long name"),
    ]);
    let second = layer_tar(&[
        E::File("etc/.wh.a", b""),
        E::Dir("opt/x"),
        // Put in place before the opaque marker of its own directory: it stays.
        E::File("opt/x/3", b"three"),
        E::File("opt/x/.wh..wh..opq", b""),
        E::File("usr/bin/tool", b"tool v2"),
        E::File(".wh.gone", b""),
        E::File("nothing/.wh.here", b""),
        E::File(long_name(".wh."), b""),
    ]);
    let third = layer_tar(&[E::File("etc/a", b"a again")]);
    image(
        layout,
        &[
            (LAYER, base),
            (LAYER_GZ, gzip(&second)),
            (LAYER_ZSTD, zstd::encode_all(&third[..], 3).unwrap()),
        ],
        named("latest"),
    )
}

/// Builds `arg`, exports it to `out`, and returns the image and its manifest.
async fn build_and_export(
    repo: &Repository,
    arg: &str,
    out: &Path,
) -> Result<(ImageId, Manifest), BuildError> {
    let report = build(repo, BuildSource::from_arg(arg), BuildOptions::default()).await?;
    let manifest = repo.get_manifest(&report.image).await.unwrap();
    let reader = ChunkReader::new(repo.packs().clone(), ReaderConfig::default()).unwrap();
    export(&reader, &manifest, out).await.unwrap();
    Ok((report.image, manifest))
}

/// The configuration `umoci config` was given in [`umoci_layout`].
fn assert_umoci_config(config: Option<&ImageConfig>) {
    let c = config.expect("the image keeps its configuration");
    assert_eq!(c.command(), ["/bin/app", "serve"]);
    assert_eq!(c.env, ["A=1", "PATH=/bin"]);
    assert_eq!(
        (c.working_dir.as_str(), c.user.as_str()),
        ("/srv", "1000:1000")
    );
    assert_eq!(c.exposed_ports, ["8080/tcp"]);
    assert_eq!(c.labels, [("tier".to_string(), "test".to_string())]);
    assert_eq!(c.stop_signal.as_deref(), Some("SIGQUIT"));
}

fn list(root: &Path) -> Vec<String> {
    let mut all = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            all.push(p.strip_prefix(root).unwrap().display().to_string());
            if p.is_dir() && !p.is_symlink() {
                stack.push(p);
            }
        }
    }
    all.sort();
    all
}

#[tokio::test]
async fn layers_apply_in_order_with_whiteouts_and_opaque_directories() {
    let tmp = tempfile::tempdir().unwrap();
    let layout = tmp.path().join("layout");
    let d = three_layers(&layout);
    write_index(&layout, vec![d]);
    let (_, repo) = local_repo(&tmp.path().join("store")).await;
    let out = tmp.path().join("out");
    build_and_export(&repo, &format!("oci:{}:latest", layout.display()), &out)
        .await
        .unwrap();
    assert_eq!(
        list(&out),
        [
            "etc",
            "etc/a",
            "etc/b",
            "opt",
            "opt/x",
            "opt/x/3",
            "usr",
            "usr/bin",
            "usr/bin/tool"
        ]
    );
    assert_eq!(std::fs::read(out.join("etc/a")).unwrap(), b"a again");
    assert_eq!(
        std::fs::read(out.join("etc/b")).unwrap(),
        b"b from the base"
    );
    assert_eq!(std::fs::read(out.join("usr/bin/tool")).unwrap(), b"tool v2");
    // The only image is chosen without a name as well.
    let out2 = tmp.path().join("out2");
    build_and_export(&repo, &format!("oci:{}", layout.display()), &out2)
        .await
        .unwrap();
    assert_eq!(list(&out2), list(&out));
}

async fn assert_fails(repo: &Repository, arg: &str, needle: &str) {
    let before = repo.list_images().await.unwrap().len();
    let opts = BuildOptions {
        tag: Some("t".into()),
        ..Default::default()
    };
    let err = build(repo, BuildSource::from_arg(arg), opts)
        .await
        .unwrap_err();
    assert!(err.to_string().contains(needle), "{arg}: {err}");
    assert_eq!(
        repo.list_images().await.unwrap().len(),
        before,
        "no manifest stored"
    );
    assert!(repo.resolve("t").await.is_err(), "no tag stored");
}

#[tokio::test]
async fn a_containerd_build_tags_every_layer_prefix_by_its_chain_id() {
    let tmp = tempfile::tempdir().unwrap();
    let (_, repo) = local_repo(&tmp.path().join("store")).await;
    let layout = tmp.path().join("layout");
    let d = three_layers(&layout);
    write_index(&layout, vec![d]);
    let arg = format!("oci:{}", layout.display());
    let plain = build(&repo, BuildSource::from_arg(&arg), BuildOptions::default())
        .await
        .unwrap();
    assert_eq!(
        (plain.layers.len(), plain.chain_tags),
        (3, 0),
        "diff ids always, tags only when asked"
    );
    let opts = BuildOptions {
        containerd: true,
        ..Default::default()
    };
    let report = build(&repo, BuildSource::from_arg(&arg), opts)
        .await
        .unwrap();
    assert_eq!(report.chain_tags, 3);
    assert_eq!(report.layers[0].chain_id, report.layers[0].diff_id);
    assert_eq!(
        report.layers[1].chain_id,
        thaw_image::chain_id(Some(&report.layers[0].chain_id), &report.layers[1].diff_id)
    );
    let reader = ChunkReader::new(repo.packs().clone(), ReaderConfig::default()).unwrap();
    let mut trees = Vec::new();
    for (i, layer) in report.layers.iter().enumerate() {
        let tag = thaw_core::tag::chain_tag(&layer.chain_id).unwrap();
        let id = repo.resolve(&tag).await.unwrap();
        let out = tmp.path().join(format!("prefix-{i}"));
        export(&reader, &repo.get_manifest(&id).await.unwrap(), &out)
            .await
            .unwrap();
        trees.push(out);
    }
    // Layers 1..=1: the base as it was; 1..=2: the second layer's whiteouts applied.
    assert_eq!(
        std::fs::read(trees[0].join("etc/a")).unwrap(),
        b"a from the base"
    );
    assert!(trees[0].join("gone/file").exists());
    assert!(!trees[1].join("etc/a").exists() && !trees[1].join("gone").exists());
    assert_eq!(
        std::fs::read(trees[1].join("usr/bin/tool")).unwrap(),
        b"tool v2"
    );
    // The whole chain is the image itself.
    let whole = tmp.path().join("whole");
    export(
        &reader,
        &repo.get_manifest(&report.image).await.unwrap(),
        &whole,
    )
    .await
    .unwrap();
    assert_eq!(list(&trees[2]), list(&whole));
    assert_eq!(std::fs::read(trees[2].join("etc/a")).unwrap(), b"a again");
}

#[tokio::test]
async fn a_layer_that_is_not_its_config_s_diff_id_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let (_, repo) = local_repo(&tmp.path().join("store")).await;
    let layout = tmp.path().join("lying");
    let layer = gzip(&layer_tar(&[E::File("f", b"real")]));
    let config_json = serde_json::json!({"rootfs": {"type": "layers", "diff_ids": [
        diff_id(LAYER_GZ, &gzip(&layer_tar(&[E::File("f", b"claimed")])))
    ]}});
    let config = blob(
        &layout,
        "application/vnd.oci.image.config.v1+json",
        config_json.to_string().as_bytes(),
        serde_json::json!({}),
    );
    // The blob's own digest is right: only the uncompressed digest tells.
    let layers = vec![blob(&layout, LAYER_GZ, &layer, serde_json::json!({}))];
    let manifest = serde_json::json!({"schemaVersion": 2, "mediaType": MANIFEST, "config": config, "layers": layers});
    let d = blob(
        &layout,
        MANIFEST,
        manifest.to_string().as_bytes(),
        serde_json::json!({}),
    );
    write_index(&layout, vec![d]);
    assert_fails(
        &repo,
        &format!("oci:{}", layout.display()),
        "does not match its diff_id",
    )
    .await;
}

#[tokio::test]
async fn bad_layouts_get_clear_errors_and_store_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let (_, repo) = local_repo(&tmp.path().join("store")).await;

    // A layer whose bytes do not match its digest.
    let layout = tmp.path().join("corrupt");
    let d = three_layers(&layout);
    write_index(&layout, vec![d]);
    let mut layers: Vec<_> = std::fs::read_dir(layout.join("blobs/sha256"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    layers.sort_by_key(|p| std::fs::metadata(p).unwrap().len());
    let victim = layers.last().unwrap(); // the largest blob: the uncompressed base layer
    let mut bytes = std::fs::read(victim).unwrap();
    // A byte of file content, so the tar stream still parses and only the digest tells.
    let at = bytes
        .windows(15)
        .position(|w| w == b"b from the base")
        .unwrap();
    bytes[at] = b'B';
    std::fs::write(victim, bytes).unwrap();
    assert_fails(
        &repo,
        &format!("oci:{}", layout.display()),
        "does not match its descriptor",
    )
    .await;

    // Two images and no name; a name that is not there.
    let two = tmp.path().join("two");
    let a = image(
        &two,
        &[(LAYER, layer_tar(&[E::File("f", b"a")]))],
        named("a"),
    );
    let b = image(
        &two,
        &[(LAYER, layer_tar(&[E::File("f", b"b")]))],
        named("b"),
    );
    write_index(&two, vec![a, b]);
    assert_fails(&repo, &format!("oci:{}", two.display()), "several images").await;
    assert_fails(
        &repo,
        &format!("oci:{}:c", two.display()),
        "no image named \"c\"",
    )
    .await;
    let out = tmp.path().join("out-b");
    build_and_export(&repo, &format!("oci:{}:b", two.display()), &out)
        .await
        .unwrap();
    assert_eq!(std::fs::read(out.join("f")).unwrap(), b"b");

    // A digest that would be a path outside the layout.
    let evil = tmp.path().join("evil");
    std::fs::create_dir_all(&evil).unwrap();
    write_index(
        &evil,
        vec![
            serde_json::json!({"mediaType": MANIFEST, "digest": "sha256:../../../../etc/passwd", "size": 10}),
        ],
    );
    assert_fails(
        &repo,
        &format!("oci:{}", evil.display()),
        "malformed digest",
    )
    .await;

    // Not a layout at all; an index that is not JSON.
    assert_fails(
        &repo,
        &format!("oci:{}", tmp.path().join("missing").display()),
        "oci-layout",
    )
    .await;
    let garbage = tmp.path().join("garbage");
    std::fs::create_dir_all(&garbage).unwrap();
    std::fs::write(
        garbage.join("oci-layout"),
        r#"{"imageLayoutVersion":"1.0.0"}"#,
    )
    .unwrap();
    std::fs::write(garbage.join("index.json"), b"{not json").unwrap();
    assert_fails(&repo, &format!("oci:{}", garbage.display()), "index.json").await;
}

#[tokio::test]
async fn a_multi_platform_index_resolves_to_this_host() {
    let tmp = tempfile::tempdir().unwrap();
    let layout = tmp.path().join("multi");
    let arch = match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => other,
    };
    let here = image(
        &layout,
        &[(LAYER, layer_tar(&[E::File("arch", b"host")]))],
        serde_json::json!({"platform": {"os": "linux", "architecture": arch}}),
    );
    let other = image(
        &layout,
        &[(LAYER, layer_tar(&[E::File("arch", b"other")]))],
        serde_json::json!({"platform": {"os": "linux", "architecture": "s390x"}}),
    );
    let nested = serde_json::json!({"schemaVersion": 2, "manifests": [other, here]});
    let d = blob(
        &layout,
        "application/vnd.oci.image.index.v1+json",
        nested.to_string().as_bytes(),
        named("multi"),
    );
    write_index(&layout, vec![d]);
    let (_, repo) = local_repo(&tmp.path().join("store")).await;
    let out = tmp.path().join("out");
    build_and_export(&repo, &format!("oci:{}:multi", layout.display()), &out)
        .await
        .unwrap();
    assert_eq!(std::fs::read(out.join("arch")).unwrap(), b"host");
}

#[tokio::test]
async fn a_layout_written_by_umoci_builds_to_its_tree() {
    if !have("umoci") || !thaw_tests::is_root() {
        skip(
            "a_layout_written_by_umoci_builds_to_its_tree",
            "needs umoci and root",
        );
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let (layout, rootfs) = umoci_layout(tmp.path());
    let (_, repo) = local_repo(&tmp.path().join("store")).await;
    let out = tmp.path().join("out");
    let (_, manifest) = build_and_export(&repo, &format!("oci:{}:img", layout.display()), &out)
        .await
        .unwrap();
    let compared = thaw_tests::treediff::assert_same(&rootfs, &out, &[]);
    assert!(compared >= 6, "{compared} paths compared");
    assert!(!out.join("etc/conf.d/old").exists());
    assert_umoci_config(manifest.config.as_ref());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_image_pushed_to_a_local_registry_builds_to_its_tree() {
    let test = "an_image_pushed_to_a_local_registry_builds_to_its_tree";
    if !["umoci", "skopeo", "docker-registry"]
        .iter()
        .all(|t| have(t))
        || !thaw_tests::is_root()
    {
        skip(test, "needs umoci, skopeo, docker-registry and root");
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let (layout, rootfs) = umoci_layout(tmp.path());
    let registry = Registry::start(tmp.path());
    let image = format!("{}/thaw/test:v1", registry.addr);
    sh(&format!(
        "skopeo copy --quiet --dest-tls-verify=false oci:{}:img docker://{image}",
        layout.display()
    ));
    let pulled = tmp.path().join("pulled");
    let r = thaw_registry::ImageRef::parse(&image).unwrap();
    thaw_registry::pull_to_layout(&r, &pulled).await.unwrap();
    let (_, repo) = local_repo(&tmp.path().join("store")).await;
    let out = tmp.path().join("out");
    let (from_registry, manifest) =
        build_and_export(&repo, &format!("oci:{}", pulled.display()), &out)
            .await
            .unwrap();
    let compared = thaw_tests::treediff::assert_same(&rootfs, &out, &[]);
    assert!(compared >= 6, "{compared} paths compared");
    assert_umoci_config(manifest.config.as_ref());
    // `docker save`'s two forms of the same image build to the same image, configuration
    // included: the legacy one (written by skopeo) and an OCI layout inside a tar.
    let legacy = tmp.path().join("legacy.tar");
    sh(&format!(
        "skopeo copy --quiet --src-tls-verify=false docker://{image} docker-archive:{}:thaw/test:v1",
        legacy.display()
    ));
    let oci_tar = tmp.path().join("oci.tar");
    sh(&format!(
        "tar -C {} -cf {} .",
        layout.display(),
        oci_tar.display()
    ));
    for (arg, name) in [
        (format!("docker-archive:{}", legacy.display()), "legacy"),
        (
            format!("docker-archive:{}:thaw/test:v1", legacy.display()),
            "legacy-named",
        ),
        (format!("docker-archive:{}", oci_tar.display()), "oci"),
    ] {
        let out = tmp.path().join(name);
        let (id, _) = build_and_export(&repo, &arg, &out).await.unwrap();
        assert_eq!(id, from_registry, "{arg} builds to the registry's image");
        thaw_tests::treediff::assert_same(&rootfs, &out, &[]);
    }
    assert_fails(
        &repo,
        &format!("docker-archive:{}:thaw/other:v9", legacy.display()),
        "thaw/other:v9",
    )
    .await;
    // An unknown tag and an unknown repository: clear errors naming the image.
    for missing in ["thaw/test:nope", "thaw/other:v1"] {
        let r = thaw_registry::ImageRef::parse(&format!("{}/{missing}", registry.addr)).unwrap();
        let err = thaw_registry::pull_to_layout(&r, &tmp.path().join("missing"))
            .await
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("404") && err.contains(missing.split(':').next().unwrap()),
            "{err}"
        );
    }
}

/// A legacy `docker save` archive of one image over `layers`, with `diff_ids` as given
/// (`None`: the true ones) and the config named by its digest.
fn legacy_archive(path: &Path, layers: &[Vec<u8>], diff_ids: Option<Vec<String>>) {
    let true_ids = layers
        .iter()
        .map(|l| format!("sha256:{}", hex::encode(Sha256::digest(l))))
        .collect();
    let config = serde_json::json!({
        "config": {"Cmd": ["/bin/true"], "Env": ["K=v"]},
        "rootfs": {"type": "layers", "diff_ids": diff_ids.unwrap_or(true_ids)},
    })
    .to_string();
    let config_name = format!("{}.json", hex::encode(Sha256::digest(&config)));
    let names: Vec<String> = (0..layers.len())
        .map(|i| format!("l{i}/layer.tar"))
        .collect();
    let manifest =
        serde_json::json!([{"Config": config_name, "RepoTags": ["x/y:1"], "Layers": names}]);
    let mut b = tar::Builder::new(std::fs::File::create(path).unwrap());
    let mut add = |name: &str, data: &[u8]| {
        let mut h = tar::Header::new_gnu();
        h.set_mode(0o644);
        h.set_size(data.len() as u64);
        b.append_data(&mut h, name, data).unwrap();
    };
    add("manifest.json", manifest.to_string().as_bytes());
    add(&config_name, config.as_bytes());
    for (name, layer) in names.iter().zip(layers) {
        add(name, layer);
    }
    b.finish().unwrap();
}

#[tokio::test]
async fn a_docker_archive_gets_the_checks_of_a_layout() {
    let tmp = tempfile::tempdir().unwrap();
    let (_, repo) = local_repo(&tmp.path().join("store")).await;
    let base = layer_tar(&[
        E::Dir("etc"),
        E::File("etc/a", b"a"),
        E::File("etc/b", b"b"),
    ]);
    let upper = gzip(&layer_tar(&[E::File("etc/.wh.a", b"")]));
    // A gzip layer: its diff_id is the digest of the uncompressed tar.
    let uncompressed_upper = layer_tar(&[E::File("etc/.wh.a", b"")]);
    let good = tmp.path().join("good.tar");
    let ids = [&base, &uncompressed_upper]
        .iter()
        .map(|l| format!("sha256:{}", hex::encode(Sha256::digest(l))))
        .collect();
    legacy_archive(&good, &[base.clone(), upper.clone()], Some(ids));
    let out = tmp.path().join("out");
    let (_, manifest) = build_and_export(
        &repo,
        &format!("docker-archive:{}:x/y:1", good.display()),
        &out,
    )
    .await
    .unwrap();
    assert_eq!(list(&out), ["etc", "etc/b"]);
    let config = manifest.config.unwrap();
    assert_eq!(
        (config.command(), config.env),
        (vec!["/bin/true".to_string()], vec!["K=v".to_string()])
    );

    let wrong = tmp.path().join("wrong.tar");
    legacy_archive(
        &wrong,
        std::slice::from_ref(&base),
        Some(vec![format!("sha256:{}", "0".repeat(64))]),
    );
    assert_fails(
        &repo,
        &format!("docker-archive:{}", wrong.display()),
        "does not match its diff_id",
    )
    .await;
    let short = tmp.path().join("short.tar");
    legacy_archive(&short, std::slice::from_ref(&base), Some(vec![]));
    assert_fails(
        &repo,
        &format!("docker-archive:{}", short.display()),
        "diff_ids",
    )
    .await;
    assert_fails(
        &repo,
        &format!("docker-archive:{}:x/z:1", good.display()),
        "no image tagged",
    )
    .await;
    let compressed = tmp.path().join("good.tar.gz");
    std::fs::write(&compressed, gzip(&std::fs::read(&good).unwrap())).unwrap();
    assert_fails(
        &repo,
        &format!("docker-archive:{}", compressed.display()),
        "compressed",
    )
    .await;
    assert_fails(
        &repo,
        &format!("docker-archive:{}", tmp.path().join("none.tar").display()),
        "none.tar",
    )
    .await;
}
