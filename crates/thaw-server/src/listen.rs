//! The daemon's listeners: the API on its unix socket (always) and on TCP (opt-in, with
//! tokens), and the metrics-only listener; all stop together at shutdown.

use crate::auth::Peer;
use crate::{http, Node, ServeError, ServerConfig};
use std::future::{Future, IntoFuture};
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::Path;
use std::sync::Arc;
use thaw_store::Repository;
use tokio::net::{TcpListener, UnixListener};
use tokio_util::sync::CancellationToken;

/// Runs the daemon until `shutdown` resolves; then stops accepting requests, cancels
/// prewarm jobs and unmounts every mount it made.
pub async fn serve(
    repo: Repository,
    config: ServerConfig,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServeError> {
    if let Some(addr) = config.listen {
        if config.tokens.is_empty() {
            return Err(ServeError::TokenRequired(addr));
        }
    }
    let unix = bind_socket(&config.socket, config.socket_group)?;
    let handoff = match &config.weights.socket {
        Some(path) => Some(crate::weights::bind(path, config.socket_group)?),
        None => None,
    };
    let tcp = match config.listen {
        Some(addr) => Some(bind_tcp(addr).await?),
        None => None,
    };
    let snapshots = match &config.snapshotter {
        Some(s) => Some(crate::snapshots::bind(&s.socket)?),
        None => None,
    };
    let metrics = match config.metrics_listen {
        Some(addr) => Some(bind_tcp(addr).await?),
        None => None,
    };
    let mut config = config;
    config.mounts.api_address = Some(format!("unix:{}", config.socket.display()));
    let node = Node::new(repo, &config)?;
    let stop = CancellationToken::new();
    // Before the containers' adoption, which removes held mounts nobody claims.
    let snapshotter = match (&config.snapshotter, snapshots) {
        (Some(s), Some(listener)) => {
            Some(crate::snapshots::start(&node, s, listener, &stop).await?)
        }
        _ => None,
    };
    let adopted = node.containers.adopt_orphans(&node).await;
    if adopted > 0 {
        // On stderr with the listening lines: an operator should see it without tracing.
        eprintln!("thaw serve: adopted {adopted} running container(s) left by the previous daemon");
    }
    announce(&config, tcp.as_ref(), metrics.as_ref())?;
    if let Some(listener) = handoff {
        crate::weights::spawn(&node, listener, &stop);
    }
    let mut loops =
        crate::autoscale::start(&node, &config.autoscale, &config.mounts.state_dir, &stop).await?;
    let served = run_all(&node, unix, tcp, metrics, &stop, shutdown).await;
    stop.cancel();
    while loops.join_next().await.is_some() {}
    if let Some(task) = snapshotter {
        let _ = task.await;
    }
    node.jobs.cancel_all();
    node.containers.remove_all().await;
    node.mounts.remove_all().await;
    let _ = std::fs::remove_file(&config.socket);
    if let Some(path) = &config.weights.socket {
        let _ = std::fs::remove_file(path);
    }
    if let Some(s) = &config.snapshotter {
        let _ = std::fs::remove_file(&s.socket);
    }
    served
}

async fn run_all(
    node: &Arc<Node>,
    unix: UnixListener,
    tcp: Option<TcpListener>,
    metrics: Option<TcpListener>,
    stop: &CancellationToken,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServeError> {
    let api = http::router(node.clone());
    let mut tasks = tokio::task::JoinSet::new();
    let app = api.clone().into_make_service_with_connect_info::<Peer>();
    tasks.spawn(
        axum::serve(unix, app)
            .with_graceful_shutdown(stop.clone().cancelled_owned())
            .into_future(),
    );
    if let Some(l) = tcp {
        let app = api.into_make_service_with_connect_info::<Peer>();
        tasks.spawn(
            axum::serve(l, app)
                .with_graceful_shutdown(stop.clone().cancelled_owned())
                .into_future(),
        );
    }
    if let Some(l) = metrics {
        let app = http::metrics_router(node.clone());
        tasks.spawn(
            axum::serve(l, app)
                .with_graceful_shutdown(stop.clone().cancelled_owned())
                .into_future(),
        );
    }
    let stopper = stop.clone();
    tokio::spawn(async move {
        shutdown.await;
        stopper.cancel();
    });
    let mut result = Ok(());
    while let Some(done) = tasks.join_next().await {
        // One listener failing stops the others: a daemon half up is worse than down.
        stop.cancel();
        if let Ok(Err(source)) = done {
            result = Err(ServeError::Bind {
                addr: "a listener".into(),
                source,
            });
        }
    }
    result
}

/// The socket: a stale file of a dead daemon is replaced, a live daemon's is not. Mode
/// 0600, or 0660 and the group's when members of a group may use it; the kernel's peer
/// credentials are checked on every request as well.
pub(crate) fn bind_socket(path: &Path, group: Option<u32>) -> Result<UnixListener, ServeError> {
    let bind_err = |source| ServeError::Bind {
        addr: path.display().to_string(),
        source,
    };
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(bind_err)?;
    }
    if let Ok(meta) = std::fs::symlink_metadata(path) {
        if !meta.file_type().is_socket() {
            return Err(bind_err(std::io::Error::other(
                "exists and is not a socket",
            )));
        }
        if std::os::unix::net::UnixStream::connect(path).is_ok() {
            return Err(ServeError::SocketInUse(path.display().to_string()));
        }
        std::fs::remove_file(path).map_err(bind_err)?;
    }
    // Narrowed right after bind; until then the peer check on every request still holds.
    let listener = UnixListener::bind(path).map_err(bind_err)?;
    let mode = if group.is_some() { 0o660 } else { 0o600 };
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).map_err(bind_err)?;
    if let Some(gid) = group {
        let gid = rustix::fs::Gid::from_raw(gid);
        rustix::fs::chown(path, None, Some(gid)).map_err(|e| bind_err(e.into()))?;
    }
    Ok(listener)
}

async fn bind_tcp(addr: std::net::SocketAddr) -> Result<TcpListener, ServeError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| ServeError::Bind {
            addr: addr.to_string(),
            source,
        })
}

/// Says where the daemon listens, on stderr and in the ready file.
fn announce(
    config: &ServerConfig,
    tcp: Option<&TcpListener>,
    metrics: Option<&TcpListener>,
) -> Result<(), ServeError> {
    let mut lines = vec![format!("unix:{}", config.socket.display())];
    if let Some(addr) = tcp.and_then(|l| l.local_addr().ok()) {
        lines.push(format!("http://{addr}"));
    }
    if let Some(addr) = metrics.and_then(|l| l.local_addr().ok()) {
        lines.push(format!("metrics http://{addr}"));
    }
    for l in &lines {
        tracing::info!(address = %l, "listening");
        eprintln!("thaw serve: listening on {l}");
    }
    if let Some(f) = &config.ready_file {
        let text = lines.join("\n") + "\n";
        thaw_fuse::files::write_atomically(f, text.as_bytes()).map_err(|source| {
            ServeError::Io {
                what: "writing the ready file",
                path: f.display().to_string(),
                source,
            }
        })?;
    }
    Ok(())
}
