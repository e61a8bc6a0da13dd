//! `thaw serve`: the node daemon (its client commands are in `client_cmd`).

use anyhow::{Context, Result};
use std::net::SocketAddr;
use std::num::NonZeroU32;
use std::path::PathBuf;
use std::time::Duration;
use thaw_server::auth::Tokens;
use thaw_server::{MountSettings, ServerConfig};
use thaw_store::{ReaderConfig, Repository, SchedulerConfig};

/// Arguments of `thaw serve`.
#[derive(Debug, clap::Args)]
pub struct ServeArgs {
    /// The API's unix socket. Root and the daemon's user may use it, and members of
    /// --socket-group; the kernel says who calls (SO_PEERCRED).
    #[arg(long, default_value = crate::client_cmd::DEFAULT_SOCKET)]
    pub socket: PathBuf,
    /// A group (name or gid) whose members may use the socket too.
    #[arg(long)]
    pub socket_group: Option<String>,
    /// Also serve the API on TCP at this address; needs a token (loopback included:
    /// every local user can reach it).
    #[arg(long)]
    pub listen: Option<SocketAddr>,
    /// Serve only /metrics and /healthz, without a token, at this address.
    #[arg(long)]
    pub metrics_listen: Option<SocketAddr>,
    /// Named, scoped tokens for TCP: lines `NAME SCOPE[,SCOPE] SECRET`, scopes read,
    /// prewarm, signals, admin.
    #[arg(long)]
    pub tokens_file: Option<PathBuf>,
    /// Requests per second one caller (a local uid, a remote address) may make; bursts of
    /// twice that. 0: no limit.
    #[arg(long, default_value_t = 200)]
    pub rate_limit: u32,
    /// Mounts and prewarms must name images by full id, never by tag.
    #[arg(long)]
    pub require_image_ids: bool,
    /// The disk cache shared by every mount and prewarm of this node.
    #[arg(long, default_value = "/var/cache/thaw/chunks")]
    pub cache: PathBuf,
    #[arg(long, default_value_t = 50 << 30)]
    pub cache_size: u64,
    #[arg(long, default_value_t = 1 << 30)]
    pub memory_cache: u64,
    /// Bound in bytes of the whole-file cache next to the disk cache, for FUSE
    /// passthrough (see `thaw mount --whole-file-cache`); 0 turns passthrough off.
    #[arg(long, default_value_t = 20 << 30)]
    pub whole_file_cache: u64,
    /// Copy chunks into the disk cache even when the store is a local directory on the
    /// cache's filesystem (by default they are read from the store there: a copy would
    /// write every byte a second time on the same disk).
    #[arg(long)]
    pub copy_local_store: bool,
    /// A file holding an admin token for TCP (else THAW_TOKEN).
    #[arg(long)]
    pub token_file: Option<PathBuf>,
    /// Overlay upper directories of writable mounts. Mounts are recorded in the node's
    /// registry, `$THAW_RUN_DIR/mounts` (default `/run/thaw/mounts`).
    #[arg(long, default_value = "/run/thaw/serve")]
    pub state_dir: PathBuf,
    /// Every mount point lies under this directory (made mode 0700).
    #[arg(long, default_value = "/run/thaw/mnt")]
    pub mount_root: PathBuf,
    /// Prefetch GETs in flight at once (on-demand reads are not limited by this).
    #[arg(long, default_value_t = 8)]
    pub prefetch_concurrency: usize,
    /// Prefetch bandwidth cap in MB/s (0: none), leaving the rest to on-demand reads.
    #[arg(long, default_value_t = 0.0)]
    pub prefetch_mbps: f64,
    /// See `thaw mount --fetch-around`.
    #[arg(long, default_value = "auto")]
    pub fetch_around: thaw_store::FetchAround,
    /// A read that cannot be served within this many seconds fails with EIO.
    #[arg(long, default_value_t = 60)]
    pub timeout: u64,
    /// FUSE worker threads per mount.
    #[arg(long, default_value_t = 8)]
    pub threads: usize,
    /// The kernel's readahead for each mount, in bytes (0 keeps the kernel's 128 KiB).
    #[arg(long, default_value_t = thaw_fuse::DEFAULT_KERNEL_READAHEAD)]
    pub kernel_readahead: u64,
    /// Have fusermount3 unmount every mount if the daemon dies (each mount then costs an
    /// exec of fusermount3). Without it, the next start of the daemon cleans them up.
    #[arg(long)]
    pub auto_unmount: bool,
    /// Write the bound address to this file once listening.
    #[arg(long)]
    pub ready_file: Option<PathBuf>,
    /// Keep up to this many bytes of weights decompressed in shared memory, filled by
    /// `thaw prewarm --weights` (0: none).
    #[arg(long, default_value_t = 0)]
    pub resident_weights: u64,
    /// Hand resident weights to serving processes on this unix socket.
    #[arg(long)]
    pub weights_socket: Option<PathBuf>,
    /// Serve containerd's snapshots API on this unix socket (root only), for a
    /// `[proxy_plugins.thaw]` entry of containerd's configuration.
    #[arg(long)]
    pub snapshotter_socket: Option<PathBuf>,
    /// The snapshotter's snapshot directories and metadata (on a disk: containerd unpacks
    /// the layers thaw does not serve here).
    #[arg(long, default_value = "/var/lib/thaw/snapshotter")]
    pub snapshotter_root: PathBuf,
}

/// The tokens TCP callers may present: an admin token (`--token-file` or `THAW_TOKEN`)
/// and the named ones of `--tokens-file`.
fn tokens(args: &ServeArgs) -> Result<Tokens> {
    let mut tokens = Tokens::default();
    if let Some(t) = crate::client_cmd::token(args.token_file.as_ref())? {
        tokens = Tokens::admin(&t).map_err(anyhow::Error::msg)?;
    }
    if let Some(f) = &args.tokens_file {
        let text =
            std::fs::read_to_string(f).with_context(|| format!("reading {}", f.display()))?;
        tokens.extend(Tokens::parse(&text).map_err(|e| anyhow::anyhow!("{}: {e}", f.display()))?);
    }
    Ok(tokens)
}

pub async fn serve(
    repo: Repository,
    args: &ServeArgs,
    autoscale: thaw_autoscale::config::AutoscaleConfig,
) -> Result<()> {
    let socket_group = match &args.socket_group {
        Some(g) => Some(thaw_server::auth::group_id(g).map_err(anyhow::Error::msg)?),
        None => None,
    };
    let config = ServerConfig {
        socket: args.socket.clone(),
        socket_group,
        listen: args.listen,
        tokens: tokens(args)?,
        metrics_listen: args.metrics_listen,
        rate_limit: NonZeroU32::new(args.rate_limit),
        require_image_ids: args.require_image_ids,
        reader: ReaderConfig {
            memory_bytes: args.memory_cache,
            disk: Some((args.cache.clone(), args.cache_size)),
            fetch_around: args.fetch_around,
            whole_files: args.whole_file_cache,
            copy_local_store: args.copy_local_store,
            scheduler: SchedulerConfig {
                prefetch_in_flight: args.prefetch_concurrency.max(1),
                prefetch_bandwidth: (args.prefetch_mbps > 0.0)
                    .then_some((args.prefetch_mbps * 1e6) as u64),
                ..Default::default()
            },
        },
        mounts: MountSettings {
            state_dir: args.state_dir.clone(),
            registry: thaw_fuse::registry::MountRegistry::node(),
            api_address: None,
            mount_root: args.mount_root.clone(),
            read_timeout: Duration::from_secs(args.timeout),
            threads: args.threads,
            kernel_readahead: args.kernel_readahead,
            auto_unmount: args.auto_unmount,
            holder: Some(thaw_fuse::takeover::HolderCommand {
                program: std::env::current_exe().context("finding thaw's own binary")?,
                args: vec![crate::FUSE_HOLDER_ARG.into()],
            }),
        },
        ready_file: args.ready_file.clone(),
        autoscale,
        weights: thaw_server::weights::WeightsSettings {
            resident_bytes: args.resident_weights,
            socket: args.weights_socket.clone(),
        },
        snapshotter: args.snapshotter_socket.as_ref().map(|socket| {
            thaw_server::snapshots::SnapshotterSettings {
                socket: socket.clone(),
                root: args.snapshotter_root.clone(),
            }
        }),
    };
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("installing the SIGTERM handler")?;
    let shutdown = async move {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
        tracing::info!("shutting down");
    };
    thaw_server::serve(repo, config, shutdown).await?;
    eprintln!("thaw serve: stopped");
    Ok(())
}

/// The body of `thaw __fuse-holder`: keeps the FUSE connection the daemon left at
/// descriptor 3 open until the connection ends (see `thaw_fuse::takeover`).
pub fn hold_fuse_connection() -> Result<()> {
    use std::os::fd::{FromRawFd, OwnedFd};
    use std::os::unix::fs::FileTypeExt;
    let fd = thaw_fuse::takeover::HOLDER_FD;
    // SAFETY: the daemon placed the connection at this descriptor before exec; nothing
    // else in this process owns or closes it.
    let fuse = unsafe { OwnedFd::from_raw_fd(fd) };
    let file = std::fs::File::from(fuse);
    let is_device = file
        .metadata()
        .is_ok_and(|m| m.file_type().is_char_device());
    anyhow::ensure!(
        is_device,
        "descriptor {fd} is not a FUSE connection: started by hand?"
    );
    thaw_fuse::takeover::hold(file.into());
    Ok(())
}
