//! containerd's `Snapshots` gRPC service on a [`Snapshotter`], served on a unix socket.

use crate::filter::Filter;
use crate::meta::{Info, Kind};
use crate::mounts::Mount;
use crate::proto::containerd::services::snapshots::v1 as pb;
use crate::proto::containerd::types as pbt;
use crate::Snapshotter;
use pb::snapshots_server::{Snapshots, SnapshotsServer};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tonic::{Request, Response, Status};

/// Infos per `List` message.
const LIST_BATCH: usize = 100;

/// The gRPC face of a [`Snapshotter`].
#[derive(Debug, Clone)]
pub struct SnapshotsService {
    snapshotter: Arc<Snapshotter>,
}

impl SnapshotsService {
    /// Serves `snapshotter`.
    pub fn new(snapshotter: Arc<Snapshotter>) -> Self {
        SnapshotsService { snapshotter }
    }
}

/// Serves the snapshots service on `listener` until `shutdown` completes.
pub async fn serve(
    snapshotter: Arc<Snapshotter>,
    listener: tokio::net::UnixListener,
    shutdown: impl std::future::Future<Output = ()> + Send,
) -> Result<(), tonic::transport::Error> {
    let incoming = tokio_stream::wrappers::UnixListenerStream::new(listener);
    tonic::transport::Server::builder()
        .add_service(SnapshotsServer::new(SnapshotsService::new(snapshotter)))
        .serve_with_incoming_shutdown(incoming, shutdown)
        .await
}

fn mounts_pb(mounts: Vec<Mount>) -> Vec<pbt::Mount> {
    mounts
        .into_iter()
        .map(|m| pbt::Mount {
            r#type: m.kind,
            source: m.source,
            target: String::new(),
            options: m.options,
        })
        .collect()
}

fn labels(map: std::collections::HashMap<String, String>) -> BTreeMap<String, String> {
    map.into_iter().collect()
}

fn timestamp(t: SystemTime) -> prost_types::Timestamp {
    let d = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    prost_types::Timestamp {
        seconds: i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
        nanos: i32::try_from(d.subsec_nanos()).unwrap_or(0),
    }
}

fn time(t: Option<prost_types::Timestamp>) -> SystemTime {
    t.and_then(|t| {
        Some(
            UNIX_EPOCH
                + Duration::new(u64::try_from(t.seconds).ok()?, u32::try_from(t.nanos).ok()?),
        )
    })
    .unwrap_or(UNIX_EPOCH)
}

fn info_pb(i: Info) -> pb::Info {
    let kind = match i.kind {
        Kind::View => pb::Kind::View,
        Kind::Active => pb::Kind::Active,
        Kind::Committed => pb::Kind::Committed,
    };
    pb::Info {
        name: i.name,
        parent: i.parent,
        kind: kind as i32,
        created_at: Some(timestamp(i.created)),
        updated_at: Some(timestamp(i.updated)),
        labels: i.labels.into_iter().collect(),
    }
}

fn info_from_pb(i: pb::Info) -> Info {
    Info {
        name: i.name,
        parent: i.parent,
        kind: Kind::Committed,
        created: time(i.created_at),
        updated: time(i.updated_at),
        labels: labels(i.labels),
    }
}

type ListStream = std::pin::Pin<
    Box<dyn futures::Stream<Item = Result<pb::ListSnapshotsResponse, Status>> + Send>,
>;

#[tonic::async_trait]
impl Snapshots for SnapshotsService {
    async fn prepare(
        &self,
        request: Request<pb::PrepareSnapshotRequest>,
    ) -> Result<Response<pb::PrepareSnapshotResponse>, Status> {
        let r = request.into_inner();
        let mounts = self
            .snapshotter
            .prepare(&r.key, &r.parent, labels(r.labels))
            .await?;
        Ok(Response::new(pb::PrepareSnapshotResponse {
            mounts: mounts_pb(mounts),
        }))
    }

    async fn view(
        &self,
        request: Request<pb::ViewSnapshotRequest>,
    ) -> Result<Response<pb::ViewSnapshotResponse>, Status> {
        let r = request.into_inner();
        let mounts = self
            .snapshotter
            .view(&r.key, &r.parent, labels(r.labels))
            .await?;
        Ok(Response::new(pb::ViewSnapshotResponse {
            mounts: mounts_pb(mounts),
        }))
    }

    async fn mounts(
        &self,
        request: Request<pb::MountsRequest>,
    ) -> Result<Response<pb::MountsResponse>, Status> {
        let mounts = self.snapshotter.mounts(&request.into_inner().key).await?;
        Ok(Response::new(pb::MountsResponse {
            mounts: mounts_pb(mounts),
        }))
    }

    async fn commit(
        &self,
        request: Request<pb::CommitSnapshotRequest>,
    ) -> Result<Response<()>, Status> {
        let r = request.into_inner();
        self.snapshotter
            .commit(&r.name, &r.key, labels(r.labels))
            .await?;
        Ok(Response::new(()))
    }

    async fn remove(
        &self,
        request: Request<pb::RemoveSnapshotRequest>,
    ) -> Result<Response<()>, Status> {
        self.snapshotter.remove(&request.into_inner().key).await?;
        Ok(Response::new(()))
    }

    async fn stat(
        &self,
        request: Request<pb::StatSnapshotRequest>,
    ) -> Result<Response<pb::StatSnapshotResponse>, Status> {
        let info = self.snapshotter.stat(&request.into_inner().key).await?;
        Ok(Response::new(pb::StatSnapshotResponse {
            info: Some(info_pb(info)),
        }))
    }

    async fn update(
        &self,
        request: Request<pb::UpdateSnapshotRequest>,
    ) -> Result<Response<pb::UpdateSnapshotResponse>, Status> {
        let r = request.into_inner();
        let info = r
            .info
            .ok_or_else(|| Status::invalid_argument("an update without an info"))?;
        let paths = r.update_mask.map(|m| m.paths).unwrap_or_default();
        let info = self.snapshotter.update(&info_from_pb(info), &paths).await?;
        Ok(Response::new(pb::UpdateSnapshotResponse {
            info: Some(info_pb(info)),
        }))
    }

    type ListStream = ListStream;

    async fn list(
        &self,
        request: Request<pb::ListSnapshotsRequest>,
    ) -> Result<Response<Self::ListStream>, Status> {
        let filters = request
            .into_inner()
            .filters
            .iter()
            .map(|f| Filter::parse(f))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| Status::invalid_argument(e.to_string()))?;
        let infos: Vec<pb::Info> = self
            .snapshotter
            .list(&filters)
            .await
            .into_iter()
            .map(info_pb)
            .collect();
        let batches: Vec<Result<pb::ListSnapshotsResponse, Status>> = infos
            .chunks(LIST_BATCH)
            .map(|c| Ok(pb::ListSnapshotsResponse { info: c.to_vec() }))
            .collect();
        Ok(Response::new(Box::pin(futures::stream::iter(batches))))
    }

    async fn usage(
        &self,
        request: Request<pb::UsageRequest>,
    ) -> Result<Response<pb::UsageResponse>, Status> {
        let u = self.snapshotter.usage(&request.into_inner().key).await?;
        Ok(Response::new(pb::UsageResponse {
            size: u.size,
            inodes: u.inodes,
        }))
    }

    async fn cleanup(&self, _request: Request<pb::CleanupRequest>) -> Result<Response<()>, Status> {
        let removed = self.snapshotter.cleanup().await?;
        if removed > 0 {
            tracing::info!(removed, "removed unreferenced snapshot directories");
        }
        Ok(Response::new(()))
    }
}
