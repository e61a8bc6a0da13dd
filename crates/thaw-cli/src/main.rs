//! `thaw`: build, inspect, export, mount and collect container images in a chunk store.
//! This file only parses the command line and dispatches to the command modules.

mod autoscale_cmd;
mod client_cmd;
mod container_cmd;
mod export_cmd;
mod image_cmd;
mod mount_cmd;
mod run_args;
mod run_cmd;
mod run_io;
mod run_tty;
mod serve_cmd;
mod snapshotter_cmd;
mod trace_cmd;
mod weights_cmd;

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use thaw_store::blob::wrap::{
    CountingStore, CrashStore, FaultConfig, FaultyStore, RetryConfig, RetryStore, StoreCounters,
    ThrottleConfig, ThrottledStore,
};
use thaw_store::{open_store, BlobStore, Repository};

#[derive(Parser, Debug)]
#[command(
    name = "thaw",
    version,
    about = "Content-addressed container images that start before they are downloaded"
)]
struct Cli {
    /// The store: a directory, file:///dir, s3://bucket/prefix, gs://..., az://...
    #[arg(long, global = true, env = "THAW_STORE", default_value = "./thaw-data")]
    store: String,
    /// Model a remote store: LATENCY_MS[,MBIT_PER_S] added to every request.
    #[arg(long, global = true, value_name = "MS[,MBIT]")]
    throttle: Option<String>,
    /// Print store request counts when done.
    #[arg(long, global = true)]
    stats: bool,
    /// Testing only (`scripts/soak.sh`): make the store fail, corrupt and delay requests,
    /// `fail=F,corrupt=F,latency-ms=N,seed=N`. Below the retries, as a real store's faults
    /// are; thaw must still never serve a wrong byte.
    #[arg(
        long,
        global = true,
        env = "THAW_INJECT_FAULTS",
        hide = true,
        value_name = "SPEC"
    )]
    inject_faults: Option<String>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Build an image from a directory, a tar file (.tar, .tar.gz, .tar.zst), `-` (tar on stdin),
    /// an OCI image layout (`oci:DIR[:NAME]`) or a registry image (`docker://HOST/NAME:TAG`).
    Build(image_cmd::BuildArgs),
    /// Start-up traces stored with images (they drive prewarming).
    #[command(subcommand)]
    Trace(trace_cmd::TraceCommand),
    /// The autoscaler: its simulator (and, with `thaw serve`, its control loop).
    #[command(subcommand)]
    Autoscale(autoscale_cmd::AutoscaleCommand),
    /// List tags and images.
    Images,
    /// Describe an image: its tree and how it is stored.
    Inspect { image: String },
    /// Write an image out as a directory tree.
    Export(export_cmd::ExportArgs),
    /// Name an image.
    Tag { image: String, name: String },
    /// Remove an image and its tags (its chunks go at the next `gc --apply`).
    Rmi { image: String },
    /// Mount an image read-only (or writable through overlayfs); runs until SIGINT,
    /// SIGTERM or `thaw umount`.
    Mount(mount_cmd::MountArgs),
    /// Run a container from an image, lazily mounted, under runc or crun (in the
    /// foreground: streams, signals and the exit code pass through).
    Run(run_args::RunArgs),
    /// The daemon's containers (`thaw run --detach`).
    Ps(client_cmd::ServerArgs),
    /// Stop a daemon's container: its stop signal, then SIGKILL after --time seconds.
    Stop(container_cmd::StopArgs),
    /// A daemon's container's output and errors.
    Logs(container_cmd::ContainerRef),
    /// Remove an exited daemon's container (its directory and log).
    Rm(container_cmd::ContainerRef),
    /// Write an OCI runtime bundle (the image unpacked, and config.json) without running it.
    Bundle(run_args::BundleArgs),
    /// Unmount a thaw mount, stopping its daemon, or clean up after a dead one.
    Umount { mountpoint: PathBuf },
    /// Model weights: load a safetensors file of an image into GPU or host memory.
    #[command(subcommand)]
    Weights(weights_cmd::WeightsCommand),
    /// Run the node daemon: shared caches, mounts and prewarm jobs behind an HTTP API.
    Serve(serve_cmd::ServeArgs),
    /// containerd's snapshotter without the daemon (`thaw serve --snapshotter-socket`
    /// serves it with lazy layers).
    #[command(subcommand)]
    Snapshotter(snapshotter_cmd::SnapshotterCommand),
    /// Ask the node daemon to warm its cache with an image (waits unless --detach).
    Prewarm(client_cmd::PrewarmArgs),
    /// List the node daemon's prewarm jobs.
    Jobs(client_cmd::ServerArgs),
    /// The node daemon's cache.
    #[command(subcommand)]
    Cache(CacheCommand),
    /// Remove packs that no image references, in two passes: one marks them, a pass
    /// after the safety period deletes those still unreferenced. Dry run unless --apply.
    Gc {
        #[arg(long)]
        apply: bool,
        /// Seconds a pack stays marked before a pass may delete it: builds and mounts
        /// of removed images that still use it get this long to revive it.
        #[arg(long, visible_alias = "min-age", default_value_t = 3600)]
        safety_period: u64,
    },
}

#[derive(Subcommand, Debug)]
enum CacheCommand {
    /// Usage and hit ratio per tier.
    Stats(client_cmd::ServerArgs),
}

/// Set to n, the process aborts before its store request n + 1 (for the crash tests).
const CRASH_VAR: &str = "THAW_TEST_CRASH_AFTER_REQUESTS";

fn open(cli: &Cli, retry: RetryConfig) -> Result<(Arc<dyn BlobStore>, Arc<StoreCounters>)> {
    let mut store =
        open_store(&cli.store).with_context(|| format!("opening store {}", cli.store))?;
    if let Some(n) = std::env::var_os(CRASH_VAR) {
        // The crash tests' hook (tests/crash.rs): die before store request n + 1.
        let n: u64 = n.to_string_lossy().parse().context(CRASH_VAR)?;
        store = Arc::new(CrashStore::new(store, n));
    }
    if let Some(spec) = &cli.inject_faults {
        let config = FaultConfig::parse(spec)
            .map_err(|e| anyhow::anyhow!("--inject-faults {spec:?}: {e}"))?;
        store = Arc::new(FaultyStore::new(store, config));
    }
    if let Some(t) = &cli.throttle {
        let config = ThrottleConfig::parse(t).map_err(anyhow::Error::msg)?;
        store = Arc::new(ThrottledStore::new(store, config));
    }
    let counting = CountingStore::new(store);
    let counters = counting.counters();
    let mut store: Arc<dyn BlobStore> = Arc::new(RetryStore::new(Arc::new(counting), retry));
    // Above the counters: a copy read locally is no store request.
    if let Some(dir) = meta_cache_dir(&cli.command) {
        let cached = thaw_store::blob::wrap::MetaCacheStore::new(store, &dir)
            .with_context(|| format!("the pack index copies in {}", dir.display()))?;
        store = Arc::new(cached);
    }
    Ok((store, counters))
}

/// Where the commands that keep a disk cache keep copies of the store's pack indexes,
/// manifests and pack listing (next to the chunks), so the next start reads them locally.
fn meta_cache_dir(command: &Command) -> Option<std::path::PathBuf> {
    let cache = match command {
        Command::Mount(args) => args.cache.clone()?,
        Command::Run(args) => args.cache.clone()?,
        Command::Serve(args) => args.cache.clone(),
        Command::Autoscale(autoscale_cmd::AutoscaleCommand::Run(args)) => args.serve.cache.clone(),
        _ => return None,
    };
    Some(cache.join("meta"))
}

/// The commands that need no store (they talk to the daemon, or clean up); `None` for
/// the others.
async fn without_store(command: &Command) -> Option<Result<()>> {
    Some(match command {
        Command::Umount { mountpoint } => {
            let cleaned = run_cmd::clean_dead_containers();
            let mp = thaw_fuse::mount::absolute(mountpoint);
            if cleaned.iter().any(|dir| mp.starts_with(dir)) {
                return Some(Ok(()));
            }
            mount_cmd::umount(mountpoint).await
        }
        Command::Prewarm(args) => client_cmd::prewarm(args).await,
        Command::Autoscale(a) => return autoscale_cmd::without_store(a).await,
        Command::Run(args) if args.detach => container_cmd::detach(args).await,
        Command::Ps(server) => container_cmd::ps(server).await,
        Command::Stop(args) => container_cmd::stop(args).await,
        Command::Logs(args) => container_cmd::logs(args).await,
        Command::Rm(args) => container_cmd::rm(args).await,
        Command::Jobs(server) => client_cmd::jobs(server).await,
        Command::Cache(CacheCommand::Stats(server)) => client_cmd::cache_stats(server).await,
        Command::Weights(weights_cmd::WeightsCommand::Get(args)) => weights_cmd::get_cmd(args),
        Command::Snapshotter(snapshotter_cmd::SnapshotterCommand::Serve(args)) => {
            snapshotter_cmd::serve(args).await
        }
        _ => return None,
    })
}

/// The first argument that makes this process a FUSE holder (see
/// `thaw_fuse::takeover`): started by the daemon, never by hand.
pub(crate) const FUSE_HOLDER_ARG: &str = "__fuse-holder";

fn main() -> Result<()> {
    // A holder only waits: no runtime, no threads, no logging.
    if std::env::args_os()
        .nth(1)
        .is_some_and(|a| a == FUSE_HOLDER_ARG)
    {
        return serve_cmd::hold_fuse_connection();
    }
    let cli = Cli::parse();
    tune_malloc(mmap_threshold(&cli.command));
    run_main(cli)
}

/// Allocations from this size up get their own mapping, returned to the system when
/// freed (see [`tune_malloc`]).
const MMAP_THRESHOLD: i32 = 256 * 1024;

/// The mmap threshold of `thaw build`, a batch process that exits when done: above its
/// largest buffers (a file read whole, up to 32 MiB; a pack, 32 MiB and a margin), so
/// that they are reused from the heap instead of mapped, faulted in and unmapped each
/// time. With [`MMAP_THRESHOLD`] the build of the Debian rootfs spent 0.25-0.36 s of
/// system time against 0.16-0.20 s with this (0.53-0.60 s against 0.49-0.52 s wall).
const BATCH_MMAP_THRESHOLD: i32 = 64 << 20;

/// The mmap threshold for the process running `command`.
fn mmap_threshold(command: &Command) -> i32 {
    match command {
        Command::Build(_) => BATCH_MMAP_THRESHOLD,
        _ => MMAP_THRESHOLD,
    }
}

/// Tunes glibc's malloc for a long-running process that moves megabyte chunks around.
///
/// - Arenas: one per CPU (glibc's default is eight per CPU). The daemon runs dozens of
///   threads, and each arena keeps the memory freed into it: under the fault soak a
///   daemon's resident memory climbed past 400 MB with the default.
/// - A fixed mmap threshold (`mmap_threshold`: 256 KiB, more for a build). glibc raises
///   its threshold to the size of each mapped block freed (up to 32 MiB), after which
///   chunk buffers (1 MiB on average), decode runs and FUSE's 16 MiB request buffers
///   come from the arenas' heaps, where
///   blocks of mixed lifetimes fragment memory that is never given back. With the
///   dynamic threshold the soak's daemon grew 18.8% over its second half (190 to 240 MB
///   in six minutes, still rising); with this one it stayed at 105-125 MB (2.0%):
///   docs/reliability.md.
///
/// Either is left alone when the environment sets it (`MALLOC_ARENA_MAX`,
/// `MALLOC_MMAP_THRESHOLD_`, `GLIBC_TUNABLES`). Must run before any thread starts.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn tune_malloc(mmap_threshold: i32) {
    let cpus = std::thread::available_parallelism().map_or(2, std::num::NonZeroUsize::get);
    let arenas = libc::c_int::try_from(cpus.max(2)).unwrap_or(libc::c_int::MAX);
    let tunables = std::env::var("GLIBC_TUNABLES").unwrap_or_default();
    if std::env::var_os("MALLOC_ARENA_MAX").is_none() && !tunables.contains("arena_max") {
        // SAFETY: called on the main thread before any other thread exists; mallopt
        // only changes allocator parameters.
        unsafe { libc::mallopt(libc::M_ARENA_MAX, arenas) };
    }
    if std::env::var_os("MALLOC_MMAP_THRESHOLD_").is_none() && !tunables.contains("mmap_threshold")
    {
        // SAFETY: as above.
        unsafe { libc::mallopt(libc::M_MMAP_THRESHOLD, mmap_threshold) };
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn tune_malloc(_mmap_threshold: i32) {}

#[tokio::main]
async fn run_main(cli: Cli) -> Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                // A reply to a request whose process was killed (a container's, at its
                // end) has no one to go to: fuser logs it as an error, and it is none.
                .unwrap_or_else(|_| "warn,thaw::audit=info,fuser::reply=off".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    if let Some(done) = without_store(&cli.command).await {
        return done;
    }
    let timeout = match &cli.command {
        Command::Mount(mount_cmd::MountArgs { timeout, .. })
        | Command::Serve(serve_cmd::ServeArgs { timeout, .. }) => Some(timeout),
        Command::Autoscale(autoscale_cmd::AutoscaleCommand::Run(args)) => Some(&args.serve.timeout),
        _ => None,
    };
    let retry = match timeout {
        Some(timeout) => RetryConfig {
            deadline: Duration::from_secs(*timeout),
            attempt_timeout: Duration::from_secs((*timeout).clamp(1, 30)),
            ..Default::default()
        },
        None => RetryConfig::default(),
    };
    let (store, counters) = open(&cli, retry)?;
    let repo = Repository::open(store)
        .await
        .context("opening the repository")?;
    match &cli.command {
        Command::Build(args) => image_cmd::build(&repo, args).await?,
        Command::Images => image_cmd::images(&repo).await?,
        Command::Inspect { image } => image_cmd::inspect(&repo, image).await?,
        Command::Export(args) => export_cmd::export(&repo, args).await?,
        Command::Tag { image, name } => image_cmd::tag(&repo, image, name).await?,
        Command::Rmi { image } => image_cmd::rmi(&repo, image).await?,
        Command::Mount(args) => mount_cmd::mount(&repo, args, cli.stats).await?,
        Command::Run(args) => {
            let code = run_cmd::run(&repo, args).await?;
            std::process::exit(code);
        }
        Command::Bundle(args) => run_cmd::bundle(&repo, args).await?,
        Command::Trace(t) => trace_cmd::run(&repo, t).await?,
        Command::Weights(w) => weights_cmd::run(&repo, w).await?,
        Command::Snapshotter(snapshotter_cmd::SnapshotterCommand::Import(args)) => {
            snapshotter_cmd::import(&repo, args).await?;
        }
        Command::Serve(args) => serve_cmd::serve(repo.clone(), args, Default::default()).await?,
        Command::Autoscale(autoscale_cmd::AutoscaleCommand::Run(args)) => {
            autoscale_cmd::run(repo.clone(), args).await?;
        }
        Command::Gc {
            apply,
            safety_period,
        } => image_cmd::gc(&repo, *apply, *safety_period).await?,
        Command::Umount { .. }
        | Command::Prewarm(_)
        | Command::Autoscale(_)
        | Command::Jobs(_)
        | Command::Cache(_)
        | Command::Ps(_)
        | Command::Stop(_)
        | Command::Logs(_)
        | Command::Snapshotter(snapshotter_cmd::SnapshotterCommand::Serve(_))
        | Command::Rm(_) => {
            bail!("internal: this command needs no store")
        }
    }
    if cli.stats {
        let c = counters.snapshot();
        eprintln!(
            "store: gets {} ({} bytes) puts {} ({} bytes) lists {} heads {} deletes {} errors {}",
            c.gets, c.get_bytes, c.puts, c.put_bytes, c.lists, c.heads, c.deletes, c.errors
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_build_keeps_its_large_buffers_in_the_heap() {
        let threshold = |args: &[&str]| mmap_threshold(&Cli::parse_from(args).command);
        let build = threshold(&["thaw", "--store", "/s", "build", "/tree", "--tag", "t"]);
        assert_eq!(build, BATCH_MMAP_THRESHOLD);
        assert_eq!(threshold(&["thaw", "mount", "img", "/mnt"]), MMAP_THRESHOLD);
        assert_eq!(threshold(&["thaw", "serve"]), MMAP_THRESHOLD);
    }
}
