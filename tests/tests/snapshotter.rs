//! The snapshotter's conformance suite, through its gRPC service on a unix socket as
//! containerd calls it: containerd's semantics for keys, parents, kinds, labels,
//! usage, walk filters and restarts; the mounts it returns are mounted for real.
#![allow(clippy::unwrap_used, clippy::expect_used, reason = "tests")]

mod snapshotter_support;

use snapshotter_support::{labels, Harness, TestLayers};
use std::sync::Arc;
use thaw_snapshotter::proto::containerd::services::snapshots::v1 as pb;
use tonic::Code;

#[tokio::test]
async fn a_layer_chain_is_prepared_committed_viewed_and_removed() {
    let h = Harness::start(Arc::new(thaw_snapshotter::NoRemoteLayers)).await;
    let mut c = h.client().await;
    let m = h.prepare(&mut c, "a", "", &[]).await.unwrap();
    assert_eq!(
        (m[0].r#type.as_str(), m[0].options.as_slice()),
        ("bind", &["rw".to_string(), "rbind".to_string()][..])
    );
    std::fs::write(std::path::Path::new(&m[0].source).join("base-file"), "base").unwrap();
    h.commit(&mut c, "base", "a", &[("k", "v")]).await.unwrap();
    assert_eq!(
        h.stat(&mut c, "a").await.unwrap_err().code(),
        Code::NotFound
    );
    let base = h.stat(&mut c, "base").await.unwrap();
    assert_eq!(
        (base.kind, base.parent.as_str()),
        (pb::Kind::Committed as i32, "")
    );
    assert_eq!(base.labels.get("k").map(String::as_str), Some("v"));
    let usage = h.usage(&mut c, "base").await.unwrap();
    assert_eq!(usage.inodes, 2, "the directory and one file");

    let m = h.prepare(&mut c, "b", "base", &[]).await.unwrap();
    assert_eq!(m[0].r#type, "overlay");
    let lowers = lowerdir(&m[0].options);
    assert_eq!(lowers.len(), 1);
    let upper = option(&m[0].options, "upperdir=");
    std::fs::write(std::path::Path::new(&upper).join("top-file"), "top").unwrap();
    h.commit(&mut c, "top", "b", &[]).await.unwrap();
    let top = h.stat(&mut c, "top").await.unwrap();
    assert_eq!(top.parent, "base");

    let v = h.view(&mut c, "v", "top").await.unwrap();
    assert_eq!(v[0].r#type, "overlay");
    assert_eq!(lowerdir(&v[0].options).len(), 2, "top, then base");
    assert!(
        !v[0].options.iter().any(|o| o.starts_with("upperdir=")),
        "a view is read-only"
    );
    h.mount_and_check(&v, &[("base-file", "base"), ("top-file", "top")]);
    let one = h.view(&mut c, "v1", "base").await.unwrap();
    assert_eq!(
        (one[0].r#type.as_str(), one[0].options[0].as_str()),
        ("bind", "ro")
    );

    // Removal goes leaf first.
    assert_eq!(
        h.remove(&mut c, "base").await.unwrap_err().code(),
        Code::FailedPrecondition
    );
    for key in ["v", "v1", "top", "base"] {
        h.remove(&mut c, key)
            .await
            .unwrap_or_else(|e| panic!("remove {key}: {e}"));
    }
    assert!(h.list(&mut c, &[]).await.is_empty());
    assert_eq!(
        h.snapshot_dirs(),
        0,
        "every directory went with its snapshot"
    );
}

#[tokio::test]
async fn wrong_requests_get_containerd_s_error_codes() {
    let h = Harness::start(Arc::new(thaw_snapshotter::NoRemoteLayers)).await;
    let mut c = h.client().await;
    h.prepare(&mut c, "a", "", &[]).await.unwrap();
    assert_eq!(
        code(h.prepare(&mut c, "a", "", &[]).await),
        Code::AlreadyExists
    );
    assert_eq!(
        code(h.prepare(&mut c, "b", "missing", &[]).await),
        Code::NotFound
    );
    assert_eq!(
        code(h.prepare(&mut c, "b", "a", &[]).await),
        Code::FailedPrecondition,
        "an active parent"
    );
    assert_eq!(
        code(h.prepare(&mut c, "", "", &[]).await),
        Code::InvalidArgument
    );
    let big = "x".repeat(5000);
    assert_eq!(
        code(h.prepare(&mut c, "c", "", &[("k", &big)]).await),
        Code::InvalidArgument
    );
    h.commit(&mut c, "done", "a", &[]).await.unwrap();
    assert_eq!(
        code(h.mounts(&mut c, "done").await),
        Code::FailedPrecondition,
        "committed"
    );
    h.view(&mut c, "v", "done").await.unwrap();
    assert_eq!(
        code(h.commit(&mut c, "x", "v", &[]).await),
        Code::FailedPrecondition,
        "a view"
    );
    h.prepare(&mut c, "a2", "", &[]).await.unwrap();
    assert_eq!(
        code(h.commit(&mut c, "done", "a2", &[]).await),
        Code::AlreadyExists
    );
    assert_eq!(
        code(h.commit(&mut c, "y", "nothing", &[]).await),
        Code::NotFound
    );
    assert_eq!(code(h.remove(&mut c, "nothing").await), Code::NotFound);
    assert_eq!(code(h.usage(&mut c, "nothing").await), Code::NotFound);
    assert_eq!(
        code(h.list_raw(&mut c, &["name=="]).await),
        Code::InvalidArgument
    );
    // Nothing above changed the snapshots.
    let mut names: Vec<_> = h
        .list(&mut c, &[])
        .await
        .into_iter()
        .map(|i| i.name)
        .collect();
    names.sort();
    assert_eq!(names, ["a2", "done", "v"]);
}

#[tokio::test]
async fn labels_update_by_mask_and_walk_filters_select() {
    let h = Harness::start(Arc::new(thaw_snapshotter::NoRemoteLayers)).await;
    let mut c = h.client().await;
    h.prepare(&mut c, "a", "", &[("keep", "1"), ("drop", "2")])
        .await
        .unwrap();
    let mut info = h.stat(&mut c, "a").await.unwrap();
    info.labels = labels(&[("new", "3"), ("keep", "changed")]);
    // Only the named label paths change; `drop` is absent from the info, so deleted.
    let updated = h
        .update(&mut c, info.clone(), &["labels.new", "labels.drop"])
        .await
        .unwrap();
    assert_eq!(updated.labels, labels(&[("keep", "1"), ("new", "3")]));
    let all = h.update(&mut c, info.clone(), &[]).await.unwrap();
    assert_eq!(all.labels, labels(&[("new", "3"), ("keep", "changed")]));
    assert_eq!(
        h.update(&mut c, info, &["parent"])
            .await
            .unwrap_err()
            .code(),
        Code::InvalidArgument
    );
    h.commit(&mut c, "c", "a", &[("role", "base")])
        .await
        .unwrap();
    h.prepare(&mut c, "child", "c", &[]).await.unwrap();
    let names = |infos: Vec<pb::Info>| {
        let mut n: Vec<_> = infos.into_iter().map(|i| i.name).collect();
        n.sort();
        n
    };
    assert_eq!(names(h.list(&mut c, &["kind==committed"]).await), ["c"]);
    assert_eq!(names(h.list(&mut c, &["parent==c"]).await), ["child"]);
    assert_eq!(
        names(
            h.list(&mut c, &[r#"labels."role"==base,kind==committed"#])
                .await
        ),
        ["c"]
    );
    assert_eq!(
        names(h.list(&mut c, &["name==c", "name==child"]).await),
        ["c", "child"],
        "filters are or'ed"
    );
    assert!(h.list(&mut c, &["labels.role==other"]).await.is_empty());
}

#[tokio::test]
async fn snapshots_survive_a_restart_and_cleanup_removes_orphans() {
    let state = tempfile::tempdir().unwrap();
    {
        let h = Harness::start_at(state.path(), Arc::new(thaw_snapshotter::NoRemoteLayers)).await;
        let mut c = h.client().await;
        h.prepare(&mut c, "a", "", &[("l", "v")]).await.unwrap();
        h.commit(&mut c, "c", "a", &[]).await.unwrap();
        h.prepare(&mut c, "b", "c", &[]).await.unwrap();
    }
    // A directory no record names, as a crash between mkdir and the metadata leaves.
    std::fs::create_dir_all(state.path().join("snapshots/999/fs")).unwrap();
    let h = Harness::start_at(state.path(), Arc::new(thaw_snapshotter::NoRemoteLayers)).await;
    let mut c = h.client().await;
    assert_eq!(h.stat(&mut c, "b").await.unwrap().parent, "c");
    assert_eq!(h.mounts(&mut c, "b").await.unwrap()[0].r#type, "overlay");
    assert_eq!(h.snapshot_dirs(), 3);
    c.cleanup(pb::CleanupRequest::default()).await.unwrap();
    assert_eq!(
        h.snapshot_dirs(),
        2,
        "the orphan is gone, the live ones stay"
    );
    // A new snapshot does not reuse a live directory.
    h.prepare(&mut c, "d", "", &[]).await.unwrap();
    assert_eq!(h.snapshot_dirs(), 3);
}

#[tokio::test]
async fn a_known_chain_id_is_committed_as_a_lazy_layer() {
    let layers = Arc::new(TestLayers::new("sha256:known"));
    let h = Harness::start(layers.clone()).await;
    let mut c = h.client().await;
    let target = [("containerd.io/snapshot.ref", "sha256:known")];
    let err = h
        .prepare(&mut c, "default/1/extract-1", "", &target)
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::AlreadyExists);
    // What containerd's metadata snapshotter does next (a first layer: no parent).
    let found = h
        .list(
            &mut c,
            &[r#"labels."containerd.io/snapshot.ref"==sha256:known,parent=="""#],
        )
        .await;
    assert_eq!(found.len(), 1);
    assert_eq!(
        (found[0].name.as_str(), found[0].kind),
        ("sha256:known", pb::Kind::Committed as i32)
    );
    assert_eq!(h.usage(&mut c, "sha256:known").await.unwrap().size, 4096);
    // An unknown chain is unpacked the normal way.
    let other = [("containerd.io/snapshot.ref", "sha256:unknown")];
    assert_eq!(
        h.prepare(&mut c, "default/2/extract-2", "", &other)
            .await
            .unwrap()[0]
            .r#type,
        "bind"
    );
    // A container on the lazy layer: the layer's mount is its lower directory.
    let m = h.prepare(&mut c, "ctr", "sha256:known", &[]).await.unwrap();
    assert_eq!(
        lowerdir(&m[0].options),
        [layers.mountpoint().display().to_string()]
    );
    h.mount_and_check(&m, &[("from-the-image", "lazy")]);
    assert_eq!(layers.mounts(), 1);
    h.remove(&mut c, "ctr").await.unwrap();
    h.remove(&mut c, "sha256:known").await.unwrap();
    assert_eq!(layers.released(), 1);
}

#[tokio::test]
async fn a_store_that_fails_fails_the_prepare() {
    let layers = Arc::new(TestLayers::failing());
    let h = Harness::start(layers).await;
    let mut c = h.client().await;
    let target = [("containerd.io/snapshot.ref", "sha256:any")];
    let err = h.prepare(&mut c, "k", "", &target).await.unwrap_err();
    assert_eq!(err.code(), Code::Unavailable, "{err}");
    assert!(
        h.list(&mut c, &[]).await.is_empty(),
        "no silent fall-back to an unpacked layer"
    );
}

fn code<T: std::fmt::Debug>(r: Result<T, tonic::Status>) -> Code {
    r.unwrap_err().code()
}

fn option(options: &[String], prefix: &str) -> String {
    options
        .iter()
        .find_map(|o| o.strip_prefix(prefix))
        .unwrap_or_else(|| panic!("no {prefix} in {options:?}"))
        .to_string()
}

fn lowerdir(options: &[String]) -> Vec<String> {
    option(options, "lowerdir=")
        .split(':')
        .map(String::from)
        .collect()
}
