//! `thaw mount` and `thaw umount`: a foreground mount daemon, and cleanup of mounts
//! whether their daemon is alive or dead.

use anyhow::{bail, Context, Result};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use thaw_fuse::mount::{absolute, is_mounted};
use thaw_fuse::{FsConfig, MountOptions, ThawFs};
use thaw_store::{ChunkReader, ReaderConfig, Repository};

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
    /// On a miss, also fetch the chunks stored right after it, up to this many bytes, in
    /// the same request: cheap when each request costs a round trip to a remote store
    /// (0 turns it off). See docs/benchmarks.md for the trade-off.
    #[arg(long, default_value_t = 512 << 10)]
    pub fetch_around: u64,
    /// Do not ask fusermount3 to unmount if this process dies.
    #[arg(long)]
    pub no_auto_unmount: bool,
    /// Warm the cache in the background with the image's pushed start-up traces
    /// (`thaw trace push`), at prefetch priority: `trace` (default) or `none`.
    #[arg(long, default_value = "trace", value_parser = ["trace", "none"])]
    pub prefetch: String,
}

fn run_dir() -> PathBuf {
    std::env::var_os("THAW_RUN_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/run/thaw"))
}

/// The state file of a mount: which process serves it and where its FUSE layer is.
fn state_file(mountpoint: &Path) -> PathBuf {
    let key = blake3::hash(absolute(mountpoint).as_os_str().as_encoded_bytes());
    run_dir().join("mounts").join(&key.to_hex()[..32])
}

struct MountState {
    pid: i32,
    fuse_dir: PathBuf,
}

fn read_state(mountpoint: &Path) -> Option<MountState> {
    let text = std::fs::read_to_string(state_file(mountpoint)).ok()?;
    let mut lines = text.lines();
    let pid = lines.next()?.parse().ok()?;
    let _mountpoint = lines.next()?;
    let fuse_dir = PathBuf::from(lines.next()?);
    Some(MountState { pid, fuse_dir })
}

fn alive(pid: i32) -> bool {
    // SAFETY: signal 0 only checks that the process exists.
    pid > 0 && unsafe { libc::kill(pid, 0) } == 0
}

fn write_status(path: &Path, text: &str) {
    let tmp = path.with_extension("tmp");
    if std::fs::write(&tmp, text)
        .and_then(|()| std::fs::rename(&tmp, path))
        .is_err()
    {
        tracing::warn!(path = %path.display(), "could not write the status file");
    }
}

/// Runs a mount in the foreground until SIGINT, SIGTERM or an external unmount.
pub async fn mount(repo: &Repository, args: &MountArgs, print_stats: bool) -> Result<()> {
    let id = repo.resolve(&args.image).await?;
    let reader = ChunkReader::new(
        repo.packs().clone(),
        ReaderConfig {
            memory_bytes: args.memory_cache,
            disk: args.cache.clone().map(|c| (c, args.cache_size)),
            fetch_around: args.fetch_around,
            ..Default::default()
        },
    )?;
    // The prefetch starts before the manifest is loaded: both are a round trip away.
    let cancel_prefetch = tokio_util::sync::CancellationToken::new();
    let prefetch = (args.prefetch == "trace").then(|| {
        let (repo, reader, cancel) = (repo.clone(), reader.clone(), cancel_prefetch.clone());
        tokio::spawn(async move {
            let list = match repo.prefetch_list(&id).await {
                Ok(l) => l,
                Err(e) => {
                    tracing::warn!(error = %e, "no prefetch: reading the image's traces failed");
                    return;
                }
            };
            if list.is_empty() {
                return;
            }
            let ids: Vec<_> = list.into_iter().map(|r| r.chunk).collect();
            let progress = thaw_store::PrefetchProgress::default();
            let done = reader.prefetch(&ids, &progress, &cancel).await;
            tracing::info!(
                done,
                chunks = progress
                    .done_chunks
                    .load(std::sync::atomic::Ordering::Relaxed),
                "trace prefetch finished"
            );
        })
    });
    let manifest = Arc::new(repo.get_manifest(&id).await?);
    let config = FsConfig {
        read_timeout: Duration::from_secs(args.timeout),
        readahead_max: args.readahead,
        ..Default::default()
    };
    let fs = ThawFs::new(
        manifest,
        id,
        reader,
        config,
        args.record_trace.clone(),
        tokio::runtime::Handle::current(),
    );
    let options = MountOptions {
        threads: args.threads,
        auto_unmount: if args.no_auto_unmount {
            Some(false)
        } else {
            None
        },
        writable: args.writable.clone(),
        kernel_readahead: args.kernel_readahead,
        ..Default::default()
    };
    let mountpoint = args.mountpoint.clone();
    let handle = tokio::task::spawn_blocking(move || thaw_fuse::mount(fs, &mountpoint, &options))
        .await?
        .with_context(|| format!("mounting {id} at {}", args.mountpoint.display()))?;
    let state = state_file(handle.mountpoint());
    std::fs::create_dir_all(state.parent().expect("state files live in a directory"))?;
    std::fs::write(
        &state,
        format!(
            "{}\n{}\n{}\n",
            std::process::id(),
            handle.mountpoint().display(),
            handle.fuse_dir().display()
        ),
    )?;
    eprintln!("mounted {id} at {}", handle.mountpoint().display());

    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    let mut tick = tokio::time::interval(Duration::from_millis(500));
    let reason = loop {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => break "SIGINT",
            _ = term.recv() => break "SIGTERM",
            _ = tick.tick() => {
                if !handle.is_mounted() {
                    break "unmounted from outside";
                }
                if let Some(p) = &args.status_file {
                    write_status(p, &handle.stats().render());
                }
            }
        }
    };
    tracing::info!(reason, "unmounting");
    cancel_prefetch.cancel();
    if let Some(p) = prefetch {
        let _ = p.await;
    }
    if let Some(n) = handle.write_trace().context("writing the start-up trace")? {
        eprintln!(
            "trace: {n} records written to {}",
            args.record_trace
                .as_deref()
                .unwrap_or(Path::new("?"))
                .display()
        );
    }
    let stats = handle.stats();
    if let Some(p) = &args.status_file {
        write_status(p, &stats.render());
    }
    tokio::task::spawn_blocking(move || handle.unmount())
        .await?
        .context("unmounting")?;
    let _ = std::fs::remove_file(&state);
    if print_stats {
        eprint!("{}", stats.render());
    }
    eprintln!("unmounted ({reason})");
    Ok(())
}

/// Unmounts a mount: asks its daemon to stop, or cleans up after a dead one.
pub async fn umount(mountpoint: &Path) -> Result<()> {
    let mp = absolute(mountpoint);
    let state = read_state(&mp);
    if let Some(s) = state.as_ref().filter(|s| alive(s.pid)) {
        // SAFETY: sending SIGTERM to a process we found in our own state file.
        unsafe { libc::kill(s.pid, libc::SIGTERM) };
        for _ in 0..150 {
            if !alive(s.pid) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    let mut did = false;
    for dir in [Some(mp.clone()), state.as_ref().map(|s| s.fuse_dir.clone())]
        .into_iter()
        .flatten()
    {
        if is_mounted(&dir) {
            thaw_fuse::unmount(&dir).with_context(|| format!("unmounting {}", dir.display()))?;
            did = true;
        }
    }
    let _ = std::fs::remove_file(state_file(&mp));
    if state.is_none() && !did {
        bail!(
            "{} is not a thaw mount (nothing mounted there)",
            mp.display()
        );
    }
    eprintln!("unmounted {}", mp.display());
    Ok(())
}
