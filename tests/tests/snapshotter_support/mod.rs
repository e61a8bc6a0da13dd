//! A snapshotter served on a unix socket in a temporary state directory, a gRPC client
//! for it, and a lazy-layer double whose "mount" is a plain directory (the real thaw
//! mounts are tested end to end with containerd).
#![allow(dead_code, reason = "each test file uses part of the harness")]

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use thaw_snapshotter::proto::containerd::services::snapshots::v1 as pb;
use thaw_snapshotter::proto::containerd::types::Mount;
use thaw_snapshotter::{RemoteLayer, RemoteLayers, SnapshotError, Snapshotter};
use tonic::transport::Channel;

pub type Client = pb::snapshots_client::SnapshotsClient<Channel>;

pub fn labels(pairs: &[(&str, &str)]) -> HashMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// A served snapshotter; dropping it stops the server.
pub struct Harness {
    _temp: Option<tempfile::TempDir>,
    state: PathBuf,
    socket: PathBuf,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
}

impl Drop for Harness {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

impl Harness {
    pub async fn start(remote: Arc<dyn RemoteLayers>) -> Harness {
        let temp = tempfile::tempdir().unwrap();
        let mut h = Harness::start_at(temp.path(), remote).await;
        h._temp = Some(temp);
        h
    }

    pub async fn start_at(state: &Path, remote: Arc<dyn RemoteLayers>) -> Harness {
        let snapshotter = Arc::new(Snapshotter::open(state, remote).unwrap());
        let socket = state.join(format!("snapshots-{}.sock", std::process::id()));
        let _ = std::fs::remove_file(&socket);
        let listener = tokio::net::UnixListener::bind(&socket).unwrap();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        tokio::spawn(thaw_snapshotter::serve(snapshotter, listener, async {
            let _ = stopped.await;
        }));
        Harness {
            _temp: None,
            state: state.to_path_buf(),
            socket,
            stop: Some(stop),
        }
    }

    pub async fn client(&self) -> Client {
        let channel = thaw_snapshotter::unix_channel(&self.socket).await.unwrap();
        pb::snapshots_client::SnapshotsClient::new(channel)
    }

    /// Snapshot directories on disk.
    pub fn snapshot_dirs(&self) -> usize {
        std::fs::read_dir(self.state.join("snapshots"))
            .unwrap()
            .count()
    }

    pub async fn prepare(
        &self,
        c: &mut Client,
        key: &str,
        parent: &str,
        l: &[(&str, &str)],
    ) -> Result<Vec<Mount>, tonic::Status> {
        let r = pb::PrepareSnapshotRequest {
            snapshotter: "thaw".into(),
            key: key.into(),
            parent: parent.into(),
            labels: labels(l),
        };
        Ok(c.prepare(r).await?.into_inner().mounts)
    }

    pub async fn view(
        &self,
        c: &mut Client,
        key: &str,
        parent: &str,
    ) -> Result<Vec<Mount>, tonic::Status> {
        let r = pb::ViewSnapshotRequest {
            snapshotter: "thaw".into(),
            key: key.into(),
            parent: parent.into(),
            labels: HashMap::new(),
        };
        Ok(c.view(r).await?.into_inner().mounts)
    }

    pub async fn mounts(&self, c: &mut Client, key: &str) -> Result<Vec<Mount>, tonic::Status> {
        let r = pb::MountsRequest {
            snapshotter: "thaw".into(),
            key: key.into(),
        };
        Ok(c.mounts(r).await?.into_inner().mounts)
    }

    pub async fn commit(
        &self,
        c: &mut Client,
        name: &str,
        key: &str,
        l: &[(&str, &str)],
    ) -> Result<(), tonic::Status> {
        let r = pb::CommitSnapshotRequest {
            snapshotter: "thaw".into(),
            name: name.into(),
            key: key.into(),
            labels: labels(l),
        };
        c.commit(r).await.map(|_| ())
    }

    pub async fn remove(&self, c: &mut Client, key: &str) -> Result<(), tonic::Status> {
        let r = pb::RemoveSnapshotRequest {
            snapshotter: "thaw".into(),
            key: key.into(),
        };
        c.remove(r).await.map(|_| ())
    }

    pub async fn stat(&self, c: &mut Client, key: &str) -> Result<pb::Info, tonic::Status> {
        let r = pb::StatSnapshotRequest {
            snapshotter: "thaw".into(),
            key: key.into(),
        };
        Ok(c.stat(r).await?.into_inner().info.unwrap())
    }

    pub async fn usage(
        &self,
        c: &mut Client,
        key: &str,
    ) -> Result<pb::UsageResponse, tonic::Status> {
        let r = pb::UsageRequest {
            snapshotter: "thaw".into(),
            key: key.into(),
        };
        Ok(c.usage(r).await?.into_inner())
    }

    pub async fn update(
        &self,
        c: &mut Client,
        info: pb::Info,
        paths: &[&str],
    ) -> Result<pb::Info, tonic::Status> {
        let r = pb::UpdateSnapshotRequest {
            snapshotter: "thaw".into(),
            info: Some(info),
            update_mask: Some(prost_types::FieldMask {
                paths: paths.iter().map(|p| p.to_string()).collect(),
            }),
        };
        Ok(c.update(r).await?.into_inner().info.unwrap())
    }

    pub async fn list_raw(
        &self,
        c: &mut Client,
        filters: &[&str],
    ) -> Result<Vec<pb::Info>, tonic::Status> {
        let r = pb::ListSnapshotsRequest {
            snapshotter: "thaw".into(),
            filters: filters.iter().map(|f| f.to_string()).collect(),
        };
        let mut stream = c.list(r).await?.into_inner();
        let mut out = Vec::new();
        while let Some(batch) = stream.message().await? {
            out.extend(batch.info);
        }
        Ok(out)
    }

    pub async fn list(&self, c: &mut Client, filters: &[&str]) -> Vec<pb::Info> {
        self.list_raw(c, filters).await.unwrap()
    }

    /// Mounts `mounts` as containerd would (as root; says why not otherwise) and checks
    /// the files the tree must show.
    pub fn mount_and_check(&self, mounts: &[Mount], files: &[(&str, &str)]) {
        if !thaw_tests::is_root() {
            thaw_tests::skip("mount_and_check", "mounting overlays needs root");
            return;
        }
        let target = tempfile::tempdir().unwrap();
        for m in mounts {
            let status = std::process::Command::new("mount")
                .args(["-t", &m.r#type, "-o", &m.options.join(","), &m.source])
                .arg(target.path())
                .status()
                .unwrap();
            assert!(status.success(), "mount {m:?}");
        }
        let read: Vec<_> = files
            .iter()
            .map(|(f, _)| std::fs::read_to_string(target.path().join(f)).unwrap_or_default())
            .collect();
        for _ in mounts {
            let _ = std::process::Command::new("umount")
                .arg(target.path())
                .status();
        }
        let want: Vec<_> = files.iter().map(|(_, v)| v.to_string()).collect();
        assert_eq!(read, want);
    }
}

/// Lazy layers for one chain id, "mounted" as a directory holding one file.
#[derive(Debug)]
pub struct TestLayers {
    known: Option<String>,
    dir: tempfile::TempDir,
    mounts: AtomicUsize,
    released: AtomicUsize,
}

impl TestLayers {
    pub fn new(known: &str) -> TestLayers {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("from-the-image"), "lazy").unwrap();
        TestLayers {
            known: Some(known.into()),
            dir,
            mounts: AtomicUsize::new(0),
            released: AtomicUsize::new(0),
        }
    }

    /// Every resolve fails, as when the store is down.
    pub fn failing() -> TestLayers {
        let mut t = TestLayers::new("");
        t.known = None;
        t
    }

    pub fn mountpoint(&self) -> &Path {
        self.dir.path()
    }

    pub fn mounts(&self) -> usize {
        self.mounts.load(Ordering::SeqCst)
    }

    pub fn released(&self) -> usize {
        self.released.load(Ordering::SeqCst)
    }
}

#[async_trait::async_trait]
impl RemoteLayers for TestLayers {
    async fn resolve(
        &self,
        chain_id: &str,
        _labels: &BTreeMap<String, String>,
    ) -> Result<Option<RemoteLayer>, SnapshotError> {
        let Some(known) = &self.known else {
            return Err(SnapshotError::Remote {
                layer: chain_id.into(),
                reason: "the store is down".into(),
            });
        };
        Ok((chain_id == known).then(|| RemoteLayer {
            chain_id: chain_id.into(),
            image: "image".into(),
            size: 4096,
            inodes: 2,
        }))
    }

    async fn mount(&self, _layer: &RemoteLayer) -> Result<PathBuf, SnapshotError> {
        self.mounts.fetch_add(1, Ordering::SeqCst);
        Ok(self.dir.path().to_path_buf())
    }

    async fn release(&self, _layer: &RemoteLayer) -> Result<(), SnapshotError> {
        self.released.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }
}
