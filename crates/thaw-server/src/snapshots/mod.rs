//! The containerd snapshotter (`thaw serve --snapshotter-socket`): the snapshots service
//! of `thaw-snapshotter` on a root-only unix socket, with lazy layers that the daemon
//! mounts from its shared reader and keeps across restarts.

mod layers;

pub use layers::LazyLayers;

use crate::{Node, ServeError};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use tokio_util::sync::CancellationToken;

/// Where the snapshotter listens and keeps its snapshots.
#[derive(Debug, Clone)]
pub struct SnapshotterSettings {
    /// The gRPC socket containerd's `proxy_plugins` entry names (mode 0600: root only).
    pub socket: PathBuf,
    /// Snapshot directories and metadata: on a disk, not a tmpfs, since containerd
    /// unpacks the layers thaw does not serve here.
    pub root: PathBuf,
}

/// Binds the snapshotter's socket as the API's is bound: a stale socket replaced, a live
/// daemon's refused, mode 0600 (root only: containerd).
pub fn bind(path: &Path) -> Result<tokio::net::UnixListener, ServeError> {
    crate::listen::bind_socket(path, None)
}

/// Opens the snapshotter, adopts the lazy layers a predecessor left mounted and serves
/// it until `stop`.
pub(crate) async fn start(
    node: &Arc<Node>,
    settings: &SnapshotterSettings,
    listener: tokio::net::UnixListener,
    stop: &CancellationToken,
) -> Result<tokio::task::JoinHandle<()>, ServeError> {
    let io = |what| {
        move |source| ServeError::Io {
            what,
            path: settings.root.display().to_string(),
            source,
        }
    };
    std::fs::create_dir_all(&settings.root).map_err(io("creating the snapshotter root"))?;
    std::fs::set_permissions(&settings.root, std::fs::Permissions::from_mode(0o700))
        .map_err(io("securing the snapshotter root"))?;
    let layers = Arc::new(LazyLayers::new(node.clone(), &settings.root.join("layers")));
    let adopted = layers.adopt().await;
    if adopted > 0 {
        eprintln!("thaw serve: adopted {adopted} lazy layer mount(s) left by the previous daemon");
    }
    let snapshotter =
        thaw_snapshotter::Snapshotter::open(&settings.root, layers.clone()).map_err(|e| {
            ServeError::Io {
                what: "opening the snapshotter",
                path: settings.root.display().to_string(),
                source: std::io::Error::other(e.to_string()),
            }
        })?;
    eprintln!(
        "thaw serve: containerd snapshotter on unix:{}",
        settings.socket.display()
    );
    let stop = stop.clone();
    Ok(tokio::spawn(async move {
        let served =
            thaw_snapshotter::serve(Arc::new(snapshotter), listener, stop.cancelled_owned()).await;
        if let Err(e) = served {
            tracing::error!("the snapshotter stopped: {e}");
        }
        // The layers stay mounted and held: running containers use them, and the next
        // daemon adopts them.
        layers.detach_all().await;
    }))
}
