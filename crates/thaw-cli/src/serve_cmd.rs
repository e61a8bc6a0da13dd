//! `thaw serve`: the node daemon (its client commands are in `client_cmd`).

use anyhow::{Context, Result};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;
use thaw_server::{MountSettings, ServerConfig};
use thaw_store::{ReaderConfig, Repository, SchedulerConfig};

/// Arguments of `thaw serve`.
#[derive(Debug, clap::Args)]
pub struct ServeArgs {
    /// Address to listen on. Anything but loopback needs a token.
    #[arg(long, default_value = "127.0.0.1:7411")]
    pub listen: SocketAddr,
    /// The disk cache shared by every mount and prewarm of this node.
    #[arg(long, default_value = "/var/cache/thaw/chunks")]
    pub cache: PathBuf,
    #[arg(long, default_value_t = 50 << 30)]
    pub cache_size: u64,
    #[arg(long, default_value_t = 1 << 30)]
    pub memory_cache: u64,
    /// A file holding the bearer token clients must send (else THAW_TOKEN).
    #[arg(long)]
    pub token_file: Option<PathBuf>,
    /// Overlay upper directories of writable mounts. Mounts are recorded in the node's
    /// registry, `$THAW_RUN_DIR/mounts` (default `/run/thaw/mounts`).
    #[arg(long, default_value = "/run/thaw/serve")]
    pub state_dir: PathBuf,
    /// Only allow mount points under this directory.
    #[arg(long)]
    pub mount_root: Option<PathBuf>,
    /// Prefetch GETs in flight at once (on-demand reads are not limited by this).
    #[arg(long, default_value_t = 8)]
    pub prefetch_concurrency: usize,
    /// Prefetch bandwidth cap in MB/s (0: none), leaving the rest to on-demand reads.
    #[arg(long, default_value_t = 0.0)]
    pub prefetch_mbps: f64,
    /// See `thaw mount --fetch-around`.
    #[arg(long, default_value_t = 512 << 10)]
    pub fetch_around: u64,
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
}

pub async fn serve(repo: Repository, args: &ServeArgs) -> Result<()> {
    let config = ServerConfig {
        listen: args.listen,
        token: crate::client_cmd::token(args.token_file.as_ref())?,
        reader: ReaderConfig {
            memory_bytes: args.memory_cache,
            disk: Some((args.cache.clone(), args.cache_size)),
            fetch_around: args.fetch_around,
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
        },
        ready_file: args.ready_file.clone(),
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
