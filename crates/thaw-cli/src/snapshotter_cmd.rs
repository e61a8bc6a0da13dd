//! `thaw snapshotter`: containerd's snapshotter on its own, without the node daemon.

use anyhow::{Context, Result};
use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::sync::Arc;

/// The snapshotter's subcommands.
#[derive(Debug, clap::Subcommand)]
pub enum SnapshotterCommand {
    /// Serve containerd's snapshots API with no lazy layers: an overlay snapshotter whose
    /// state survives restarts. Lazy layers need `thaw serve --snapshotter-socket`; this
    /// mode is what containerd's own snapshotter test suite runs against.
    Serve {
        /// The unix socket (mode 0600).
        #[arg(long)]
        socket: PathBuf,
        /// Snapshot directories and metadata.
        #[arg(long)]
        root: PathBuf,
    },
}

/// Runs a snapshotter command until SIGINT or SIGTERM.
pub async fn run(command: &SnapshotterCommand) -> Result<()> {
    let SnapshotterCommand::Serve { socket, root } = command;
    std::fs::create_dir_all(root).with_context(|| format!("creating {}", root.display()))?;
    std::fs::set_permissions(root, std::fs::Permissions::from_mode(0o700))
        .with_context(|| format!("securing {}", root.display()))?;
    let snapshotter =
        thaw_snapshotter::Snapshotter::open(root, Arc::new(thaw_snapshotter::NoRemoteLayers))?;
    let listener = thaw_server::snapshots::bind(socket)?;
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("installing the SIGTERM handler")?;
    let shutdown = async move {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
    };
    eprintln!("thaw snapshotter: serving on unix:{}", socket.display());
    thaw_snapshotter::serve(Arc::new(snapshotter), listener, shutdown).await?;
    let _ = std::fs::remove_file(socket);
    Ok(())
}
