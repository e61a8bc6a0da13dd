//! containerd's gRPC requests to the snapshotter, decoded from protobuf and served by the
//! real service on a fresh snapshotter root: a sequence of calls per input, so keys,
//! parents, labels and filters meet earlier state. After every call the snapshotter must
//! still open from the metadata it wrote (nothing a client sends can break a restart).

use prost::Message;
use std::sync::Arc;
use thaw_snapshotter::proto::containerd::services::snapshots::v1 as pb;
use thaw_snapshotter::proto::containerd::services::snapshots::v1::snapshots_server::Snapshots;
use thaw_snapshotter::{NoRemoteLayers, SnapshotsService, Snapshotter};
use tonic::Request;

/// Calls per input, at most.
const MAX_CALLS: usize = 16;

/// Each call is one byte naming the method and one byte of length, then that many bytes
/// of the request's protobuf encoding.
pub fn snapshot_requests(data: &[u8]) {
    let Some(rt) = crate::runtime() else {
        return;
    };
    let Ok(dir) = tempfile::tempdir() else {
        return;
    };
    rt.block_on(async {
        let Ok(snapshotter) = Snapshotter::open(dir.path(), Arc::new(NoRemoteLayers)) else {
            return;
        };
        let service = SnapshotsService::new(Arc::new(snapshotter));
        let mut rest = data;
        for _ in 0..MAX_CALLS {
            let Some((&[method, len], tail)) = rest.split_first_chunk::<2>() else {
                break;
            };
            let (body, tail) = tail.split_at(usize::from(len).min(tail.len()));
            rest = tail;
            call(&service, method, body).await;
        }
        let reopened = Snapshotter::open(dir.path(), Arc::new(NoRemoteLayers));
        assert!(
            reopened.is_ok(),
            "the snapshotter's own metadata did not reopen: {reopened:?}"
        );
    });
}

/// One call of the method `method` picks with the request decoded from `body`.
async fn call(service: &SnapshotsService, method: u8, body: &[u8]) {
    macro_rules! call {
        ($method:ident, $request:ty) => {
            if let Ok(r) = <$request>::decode(body) {
                let _ = service.$method(Request::new(r)).await;
            }
        };
    }
    match method % 10 {
        0 => call!(prepare, pb::PrepareSnapshotRequest),
        1 => call!(view, pb::ViewSnapshotRequest),
        2 => call!(mounts, pb::MountsRequest),
        3 => call!(commit, pb::CommitSnapshotRequest),
        4 => call!(remove, pb::RemoveSnapshotRequest),
        5 => call!(stat, pb::StatSnapshotRequest),
        6 => call!(update, pb::UpdateSnapshotRequest),
        7 => call!(list, pb::ListSnapshotsRequest),
        8 => call!(usage, pb::UsageRequest),
        _ => call!(cleanup, pb::CleanupRequest),
    }
}
