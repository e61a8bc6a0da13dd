//! `thaw snapshotter`: containerd's snapshotter on its own, without the node daemon, and
//! `import`, which readies an image in the store for it and can make the image known to
//! a containerd.

use anyhow::{Context, Result};
use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::sync::Arc;
use thaw_store::{ChunkReader, ReaderConfig, Repository};

/// The snapshotter's subcommands.
#[derive(Debug, clap::Subcommand)]
pub enum SnapshotterCommand {
    /// Serve containerd's snapshots API with no lazy layers: an overlay snapshotter whose
    /// state survives restarts. Lazy layers need `thaw serve --snapshotter-socket`; this
    /// mode is what containerd's own snapshotter test suite runs against.
    Serve(ServeArgs),
    /// Ready an image in the store for `thaw serve --snapshotter-socket`: an image built
    /// with `--containerd` keeps its layers; any other is described as one layer (its
    /// tree as `thaw export --tar` writes it, read once to learn its digest). With
    /// `--containerd-address`, also make it known to that containerd: no registry and
    /// no layer download, only the manifest and config and the snapshots thaw serves.
    Import(ImportArgs),
}

/// Arguments of `thaw snapshotter serve`.
#[derive(Debug, clap::Args)]
pub struct ServeArgs {
    /// The unix socket (mode 0600).
    #[arg(long)]
    socket: PathBuf,
    /// Snapshot directories and metadata.
    #[arg(long)]
    root: PathBuf,
}

/// Arguments of `thaw snapshotter import`.
#[derive(Debug, clap::Args)]
pub struct ImportArgs {
    /// The image (tag or id).
    image: String,
    /// containerd's socket; without it the image is only readied in the store.
    #[arg(long)]
    containerd_address: Option<PathBuf>,
    /// The image's name in containerd (for Kubernetes, the reference pods name, such as
    /// `docker.io/library/app:1`); the default is IMAGE as given.
    #[arg(long)]
    name: Option<String>,
    /// The containerd namespace (`k8s.io` for Kubernetes).
    #[arg(long, default_value = "default")]
    namespace: String,
    /// thaw's snapshotter as containerd's configuration names it (`proxy_plugins.NAME`).
    #[arg(long, default_value = "thaw")]
    snapshotter: String,
}

/// `thaw snapshotter serve`: runs until SIGINT or SIGTERM.
pub async fn serve(args: &ServeArgs) -> Result<()> {
    let ServeArgs { socket, root } = args;
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

/// `thaw snapshotter import`.
pub async fn import(repo: &Repository, args: &ImportArgs) -> Result<()> {
    let id = repo.resolve(&args.image).await?;
    let reader = ChunkReader::new(repo.packs().clone(), ReaderConfig::default())?;
    let image = thaw_image::containerd_image::prepare(repo, reader, id)
        .await
        .with_context(|| format!("readying image {id} for containerd"))?;
    println!("image: {id}");
    println!("manifest: {}", image.manifest_digest());
    println!(
        "layers: {}{}",
        image.chain_ids.len(),
        if image.flattened {
            " (flattened: the image records no layers)"
        } else {
            ""
        }
    );
    for chain in &image.chain_ids {
        println!("chain: {chain}");
    }
    let Some(address) = &args.containerd_address else {
        return Ok(());
    };
    let name = args.name.clone().unwrap_or_else(|| args.image.clone());
    let record = thaw_snapshotter::ImageRecord {
        name: name.clone(),
        manifest_digest: image.manifest_digest(),
        config_digest: image.config_digest(),
        manifest_media_type: image.manifest_media_type,
        manifest: image.manifest,
        config_media_type: image.config_media_type,
        config: image.config,
        layer_digests: image.layer_digests,
        chain_ids: image.chain_ids,
    };
    let target = thaw_snapshotter::Target {
        address: address.clone(),
        namespace: args.namespace.clone(),
        snapshotter: args.snapshotter.clone(),
    };
    let done = thaw_snapshotter::register(&target, &record)
        .await
        .with_context(|| format!("importing {name} into containerd"))?;
    println!(
        "containerd: {name} in namespace {} ({})",
        args.namespace,
        if done.replaced_image {
            "updated"
        } else {
            "created"
        }
    );
    Ok(())
}
