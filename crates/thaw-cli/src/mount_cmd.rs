//! `thaw mount` and `thaw umount`: a foreground mount session, and unmounting a mount
//! whoever serves it (a `thaw mount` process, a daemon) or cleaning up after one that died.

use anyhow::{bail, Context, Result};
use std::path::{Path, PathBuf};
use std::time::Duration;
use thaw_api::Client;
use thaw_fuse::mount::{absolute, is_mounted};
use thaw_fuse::registry::{clean_up, MountRecord, MountRegistry};
use thaw_fuse::session::{write_status, MountSession, ReaderSource, SessionSpec};
use thaw_fuse::{FsConfig, MountOptions};
use thaw_store::{ReaderConfig, Repository};

/// Arguments of `thaw mount`.
#[derive(Debug, clap::Args)]
pub struct MountArgs {
    pub image: String,
    pub mountpoint: PathBuf,
    /// Disk cache directory for chunks (shared by mounts of the same store).
    #[arg(long)]
    pub cache: Option<PathBuf>,
    /// Disk cache size in bytes.
    #[arg(long, default_value_t = 10 << 30)]
    pub cache_size: u64,
    /// Memory cache size in bytes.
    #[arg(long, default_value_t = 512 << 20)]
    pub memory_cache: u64,
    /// Bound in bytes of the whole-file cache, `CACHE/files/`: a file whose chunks are
    /// all cached, or that was read whole from a local store read in place, is copied
    /// there whole after its last open, and later opens are answered with FUSE
    /// passthrough (the kernel reads the local file; no request reaches thaw).
    /// Needs `--cache`, root and a kernel with FUSE passthrough (Linux 6.9+); 0 turns it
    /// off.
    #[arg(long, default_value_t = 10 << 30)]
    pub whole_file_cache: u64,
    /// Copy chunks into the disk cache even when the store is a local directory on the
    /// cache's filesystem (by default they are read from the store there: a copy would
    /// write every byte a second time on the same disk).
    #[arg(long)]
    pub copy_local_store: bool,
    /// Put an overlayfs on top, with its upper and work directories in this directory.
    #[arg(long, value_name = "UPPER_DIR")]
    pub writable: Option<PathBuf>,
    /// Record the first-access order of (file, chunk) to this file.
    #[arg(long, value_name = "FILE")]
    pub record_trace: Option<PathBuf>,
    /// Rewrite this file with the mount's counters every second.
    #[arg(long, value_name = "FILE")]
    pub status_file: Option<PathBuf>,
    /// A read that cannot be served within this many seconds fails with EIO.
    #[arg(long, default_value_t = 60)]
    pub timeout: u64,
    /// FUSE worker threads.
    #[arg(long, default_value_t = 8)]
    pub threads: usize,
    /// Largest readahead window for sequential readers, in bytes (0 disables readahead).
    #[arg(long, default_value_t = 32 << 20)]
    pub readahead: u64,
    /// The kernel's readahead for the mount, in bytes (0 keeps the kernel's 128 KiB).
    #[arg(long, default_value_t = thaw_fuse::DEFAULT_KERNEL_READAHEAD)]
    pub kernel_readahead: u64,
    /// On a miss, also fetch the chunks stored right after it in the same request: `auto`
    /// (default) chooses how many bytes from the store's measured latency and bandwidth
    /// (little or none from a local store, about a megabyte from one 20 ms away); a size
    /// such as `512K` fixes it, and 0 turns it off. See ARCHITECTURE.md (the fetch
    /// policy) for the model.
    #[arg(long, default_value = "auto")]
    pub fetch_around: thaw_store::FetchAround,
    /// Once the mount has served this fraction of the image's bytes, or once a workload
    /// walks the image (300 files opened and 2% of the bytes read), fetch the rest in the
    /// background in large requests (with a disk cache that holds the image), so a
    /// workload that reads most of the image is not served one miss at a time. Once it
    /// has also opened a tenth of the image's files, the mount reads every file into the
    /// kernel's caches and stops open requests. `off` does neither.
    #[arg(long, default_value = "0.25", value_parser = parse_bulk_after)]
    pub bulk_after: BulkAfter,
    /// Do not ask fusermount3 to unmount if this process dies.
    #[arg(long)]
    pub no_auto_unmount: bool,
    /// Warm the cache in the background with the image's pushed start-up traces
    /// (`thaw trace push`), at prefetch priority: `trace` (default) or `none`.
    #[arg(long, default_value = "trace", value_parser = ["trace", "none"])]
    pub prefetch: String,
}

/// Who this process runs as, for the mount record.
fn requested_by() -> String {
    use std::os::unix::fs::MetadataExt;
    let uid = std::fs::metadata("/proc/self").map_or(u32::MAX, |m| m.uid());
    format!("thaw mount (uid {uid})")
}

/// Catches SIGINT and SIGTERM from now on (a signal that arrives while the mount is made
/// is not lost, and does not kill the process before it can unmount); the future
/// resolves on the first, with the signal's name.
fn signalled() -> Result<impl std::future::Future<Output = &'static str>> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).context("catching SIGTERM")?;
    let mut int = signal(SignalKind::interrupt()).context("catching SIGINT")?;
    Ok(async move {
        tokio::select! {
            _ = int.recv() => "SIGINT",
            _ = term.recv() => "SIGTERM",
        }
    })
}

/// Runs a mount in the foreground until SIGINT, SIGTERM or an external unmount.
pub async fn mount(repo: &Repository, args: &MountArgs, print_stats: bool) -> Result<()> {
    let shutdown = signalled()?;
    let reader = ReaderSource::Own(ReaderConfig {
        memory_bytes: args.memory_cache,
        disk: args.cache.clone().map(|c| (c, args.cache_size)),
        fetch_around: args.fetch_around,
        whole_files: args.whole_file_cache,
        copy_local_store: args.copy_local_store,
        ..Default::default()
    });
    let spec = SessionSpec {
        id: format!("{:016x}", rand::random::<u64>()),
        mountpoint: args.mountpoint.clone(),
        fs: FsConfig {
            read_timeout: Duration::from_secs(args.timeout),
            readahead_max: args.readahead,
            bulk_after: args.bulk_after.0,
            passthrough: args.whole_file_cache > 0,
            ..Default::default()
        },
        options: MountOptions {
            threads: args.threads,
            auto_unmount: (args.no_auto_unmount).then_some(false),
            writable: args.writable.clone(),
            kernel_readahead: args.kernel_readahead,
            ..Default::default()
        },
        record_trace: args.record_trace.clone(),
        requested_by: requested_by(),
        daemon: None,
    };
    let trace = args.prefetch == "trace";
    let session = MountSession::open(
        repo,
        &args.image,
        reader,
        trace,
        spec,
        MountRegistry::node(),
    )
    .await
    .with_context(|| format!("mounting {} at {}", args.image, args.mountpoint.display()))?;
    let id = &session.record().image;
    eprintln!("mounted {id} at {}", session.mountpoint().display());
    let status = args.status_file.as_deref();
    let reason = session
        .watch(shutdown, status, Duration::from_millis(500))
        .await;
    tracing::info!(reason, "unmounting");
    let end = session.end().await.context("unmounting")?;
    if let (Some(n), Some(path)) = (end.trace_records, &args.record_trace) {
        eprintln!("trace: {n} records written to {}", path.display());
    }
    if let Some(p) = status {
        write_status(p, &end.stats.render());
    }
    if print_stats {
        eprint!("{}", end.stats.render());
    }
    eprintln!("unmounted ({reason})");
    Ok(())
}

/// Unmounts a mount made by `thaw mount` or by a daemon: asks the daemon that owns it,
/// stops the `thaw mount` process that serves it, or cleans up after one that died.
pub async fn umount(mountpoint: &Path) -> Result<()> {
    let mp = absolute(mountpoint);
    let registry = MountRegistry::node();
    let record = registry.find(&mp)?;
    match record {
        Some(r) if r.owner.is_alive() => match &r.daemon {
            Some(addr) => {
                let token = std::env::var("THAW_TOKEN").ok().filter(|t| !t.is_empty());
                Client::new(addr, token)
                    .unmount(&r.id)
                    .await
                    .with_context(|| format!("asking the daemon at {addr} to unmount {}", r.id))?;
            }
            None => {
                stop_owner(&r).await?;
                clean_up(&r);
                registry.remove(&mp);
            }
        },
        Some(r) => {
            clean_up(&r);
            registry.remove(&mp);
        }
        None if is_mounted(&mp) => {
            thaw_fuse::unmount(&mp).with_context(|| format!("unmounting {}", mp.display()))?;
        }
        None => bail!(
            "{} is not a thaw mount (nothing mounted there)",
            mp.display()
        ),
    }
    eprintln!("unmounted {}", mp.display());
    Ok(())
}

/// Sends SIGTERM to a mount's serving process and waits (with a deadline) for it to exit.
async fn stop_owner(r: &MountRecord) -> Result<()> {
    let pid = rustix::process::Pid::from_raw(r.owner.pid as i32)
        .with_context(|| format!("bad pid {} in the mount record", r.owner.pid))?;
    rustix::process::kill_process(pid, rustix::process::Signal::TERM)
        .with_context(|| format!("stopping process {}", r.owner.pid))?;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    while r.owner.is_alive() && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    if r.owner.is_alive() {
        tracing::warn!(
            pid = r.owner.pid,
            "the mount's process did not exit; unmounting anyway"
        );
    }
    Ok(())
}

/// `--bulk-after`: a fraction of the image, or never.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BulkAfter(pub Option<f64>);

fn parse_bulk_after(s: &str) -> Result<BulkAfter, String> {
    if s == "off" {
        return Ok(BulkAfter(None));
    }
    match s.parse::<f64>() {
        Ok(f) if f > 0.0 && f <= 1.0 => Ok(BulkAfter(Some(f))),
        _ => Err(format!("{s:?}: expected a fraction in (0, 1] or off")),
    }
}
