//! `thaw serve` (the node daemon) and its clients: `thaw prewarm`, `thaw jobs` and
//! `thaw cache stats`.

use anyhow::{bail, Context, Result};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;
use thaw_server::api::{self, JobState, NamedScope, Scope};
use thaw_server::{Client, MountSettings, ServerConfig};
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

fn token(file: Option<&PathBuf>) -> Result<Option<String>> {
    if let Some(f) = file {
        let t = std::fs::read_to_string(f)
            .with_context(|| format!("reading token file {}", f.display()))?;
        return Ok(Some(t.trim().to_string()));
    }
    Ok(std::env::var("THAW_TOKEN").ok().filter(|t| !t.is_empty()))
}

pub async fn serve(repo: Repository, args: &ServeArgs) -> Result<()> {
    let config = ServerConfig {
        listen: args.listen,
        token: token(args.token_file.as_ref())?,
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

/// Where the daemon is, for the client commands.
#[derive(Debug, clap::Args)]
pub struct ServerArgs {
    #[arg(long, env = "THAW_SERVER", default_value = "http://127.0.0.1:7411")]
    pub server: String,
    /// A file holding the bearer token (else THAW_TOKEN).
    #[arg(long)]
    pub token_file: Option<PathBuf>,
}

impl ServerArgs {
    fn client(&self) -> Result<Client> {
        Ok(Client::new(&self.server, token(self.token_file.as_ref())?))
    }
}

/// Arguments of `thaw prewarm`.
#[derive(Debug, clap::Args)]
pub struct PrewarmArgs {
    pub image: String,
    /// `trace` (the image's start-up traces) or `all`.
    #[arg(long, default_value = "trace", conflicts_with = "path")]
    pub scope: String,
    /// Warm these files or directories instead (repeatable).
    #[arg(long)]
    pub path: Vec<String>,
    /// Return once the job is accepted.
    #[arg(long)]
    pub detach: bool,
    #[command(flatten)]
    pub server: ServerArgs,
}

pub async fn prewarm(args: &PrewarmArgs) -> Result<()> {
    let scope = if !args.path.is_empty() {
        Scope::Paths {
            paths: args.path.clone(),
        }
    } else {
        match args.scope.as_str() {
            "trace" => Scope::Named(NamedScope::Trace),
            "all" => Scope::Named(NamedScope::All),
            other => bail!("--scope is trace or all, not {other:?}"),
        }
    };
    let client = args.server.client()?;
    let job = client
        .prewarm(&api::PrewarmRequest {
            image: args.image.clone(),
            scope,
        })
        .await?;
    println!("job: {}", job.id);
    if args.detach {
        return Ok(());
    }
    let bar = indicatif::ProgressBar::new(job.bytes_total);
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "{bar:40} {bytes}/{total_bytes} {binary_bytes_per_sec} {msg}",
        )
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    let done = loop {
        let j = client.job(&job.id).await?;
        bar.set_length(j.bytes_total);
        bar.set_position(j.bytes_done);
        bar.set_message(format!("{}/{} chunks", j.chunks_done, j.chunks_total));
        if j.state.is_finished() {
            break j;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    bar.finish_and_clear();
    print_job(&done);
    match done.state {
        JobState::Done => Ok(()),
        s => bail!(
            "prewarm {} ended {}: {}",
            done.id,
            s.as_str(),
            done.last_error.unwrap_or_default()
        ),
    }
}

fn print_job(j: &api::Job) {
    println!(
        "{}  {:<9}  {}  chunks {}/{} ({} cached)  bytes {}/{}  {:.1} MB/s  errors {}",
        j.id,
        j.state.as_str(),
        &j.image[..12.min(j.image.len())],
        j.chunks_done,
        j.chunks_total,
        j.chunks_cached,
        j.bytes_done,
        j.bytes_total,
        j.rate_bytes_per_second / 1e6,
        j.errors
    );
}

pub async fn jobs(server: &ServerArgs) -> Result<()> {
    for j in server.client()?.jobs().await? {
        print_job(&j);
    }
    Ok(())
}

pub async fn cache_stats(server: &ServerArgs) -> Result<()> {
    let c = server.client()?.cache().await?;
    for (name, t) in [("memory", &c.memory), ("disk", &c.disk)] {
        println!(
            "{name}: {} of {} bytes, {} entries, hits {} misses {} hit_ratio {}",
            t.bytes,
            t.capacity,
            t.entries,
            t.hits,
            t.misses,
            t.hit_ratio.map_or("-".into(), |r| format!("{r:.3}"))
        );
    }
    let s = &c.store;
    println!(
        "store: fetched {} chunks ({} bytes), prefetched {} chunks ({} bytes), integrity failures {}",
        s.fetched_chunks, s.fetched_bytes, s.prefetched_chunks, s.prefetched_bytes, s.integrity_failures
    );
    Ok(())
}
