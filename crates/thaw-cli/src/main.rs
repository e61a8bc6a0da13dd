//! `thaw`: build, inspect, export, mount and collect container images in a chunk store.

mod mount_cmd;
mod serve_cmd;
mod trace_cmd;
mod weights_cmd;

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};
use humansize::{format_size, BINARY};
use std::collections::{HashMap, HashSet};
use std::io::IsTerminal;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};
use thaw_core::{ChunkerConfig, InodeKind};
use thaw_image::{BuildOptions, BuildSource};
use thaw_store::wrap::{
    CountingStore, RetryConfig, RetryStore, StoreCounters, ThrottleConfig, ThrottledStore,
};
use thaw_store::{open_store, BlobStore, ChunkReader, ReaderConfig, Repository, WriterConfig};

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
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Build an image from a directory, a tar file (.tar, .tar.gz, .tar.zst), `-` (tar on stdin),
    /// an OCI image layout (`oci:DIR[:NAME]`) or a registry image (`docker://HOST/NAME:TAG`).
    Build {
        source: String,
        #[arg(long)]
        tag: Option<String>,
        #[arg(long, default_value_t = 3)]
        zstd_level: i32,
        /// Chunk sizes in bytes: MIN,AVG,MAX.
        #[arg(long, value_name = "MIN,AVG,MAX")]
        chunk_sizes: Option<String>,
        /// Pack the start-up working set together in first-access order: a trace file
        /// (from `thaw mount --record-trace`) or an image whose pushed traces to merge.
        #[arg(long, value_name = "TRACE")]
        order_by: Option<String>,
    },
    /// Start-up traces stored with images (they drive prewarming).
    #[command(subcommand)]
    Trace(trace_cmd::TraceCommand),
    /// List tags and images.
    Images,
    /// Describe an image: its tree and how it is stored.
    Inspect { image: String },
    /// Write an image out as a directory tree.
    Export {
        image: String,
        dir: PathBuf,
        /// Disk cache directory for chunks.
        #[arg(long)]
        cache: Option<PathBuf>,
        #[arg(long, default_value_t = 10 << 30)]
        cache_size: u64,
    },
    /// Name an image.
    Tag { image: String, name: String },
    /// Remove an image and its tags (its chunks go at the next `gc --apply`).
    Rmi { image: String },
    /// Mount an image read-only (or writable through overlayfs); runs until SIGINT,
    /// SIGTERM or `thaw umount`.
    Mount(mount_cmd::MountArgs),
    /// Unmount a thaw mount, stopping its daemon, or clean up after a dead one.
    Umount { mountpoint: PathBuf },
    /// Load a safetensors file of an image into GPU memory (or host memory with --host).
    Weights(weights_cmd::WeightsArgs),
    /// Run the node daemon: shared caches, mounts and prewarm jobs behind an HTTP API.
    Serve(serve_cmd::ServeArgs),
    /// Ask the node daemon to warm its cache with an image (waits unless --detach).
    Prewarm(serve_cmd::PrewarmArgs),
    /// List the node daemon's prewarm jobs.
    Jobs(serve_cmd::ServerArgs),
    /// The node daemon's cache.
    #[command(subcommand)]
    Cache(CacheCommand),
    /// Remove packs that no image references. Dry run unless --apply.
    Gc {
        #[arg(long)]
        apply: bool,
        /// Keep packs younger than this many seconds (a build may be using them).
        #[arg(long, default_value_t = 3600)]
        min_age: u64,
    },
}

#[derive(Subcommand, Debug)]
enum CacheCommand {
    /// Usage and hit ratio per tier.
    Stats(serve_cmd::ServerArgs),
}

fn open(cli: &Cli, retry: RetryConfig) -> Result<(Arc<dyn BlobStore>, Arc<StoreCounters>)> {
    let mut store =
        open_store(&cli.store).with_context(|| format!("opening store {}", cli.store))?;
    if let Some(t) = &cli.throttle {
        let config = ThrottleConfig::parse(t).map_err(anyhow::Error::msg)?;
        store = Arc::new(ThrottledStore::new(store, config));
    }
    let counting = CountingStore::new(store);
    let counters = counting.counters();
    Ok((
        Arc::new(RetryStore::new(Arc::new(counting), retry)),
        counters,
    ))
}

fn parse_chunk_sizes(s: &str) -> Result<ChunkerConfig> {
    let v: Vec<u32> = s
        .split(',')
        .map(|x| x.trim().parse())
        .collect::<Result<_, _>>()
        .context("chunk sizes must be three integers")?;
    let [min, avg, max] = v[..] else {
        bail!("--chunk-sizes wants MIN,AVG,MAX")
    };
    let c = ChunkerConfig { min, avg, max };
    c.validate()?;
    Ok(c)
}

fn size(n: u64) -> String {
    format_size(n, BINARY)
}

#[tokio::main]
async fn main() -> Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    match &cli.command {
        Command::Umount { mountpoint } => return mount_cmd::umount(mountpoint).await,
        Command::Prewarm(args) => return serve_cmd::prewarm(args).await,
        Command::Jobs(server) => return serve_cmd::jobs(server).await,
        Command::Cache(CacheCommand::Stats(server)) => return serve_cmd::cache_stats(server).await,
        _ => {}
    }
    let retry = match &cli.command {
        Command::Mount(mount_cmd::MountArgs { timeout, .. })
        | Command::Serve(serve_cmd::ServeArgs { timeout, .. }) => RetryConfig {
            deadline: Duration::from_secs(*timeout),
            attempt_timeout: Duration::from_secs((*timeout).clamp(1, 30)),
            ..Default::default()
        },
        _ => RetryConfig::default(),
    };
    let (store, counters) = open(&cli, retry)?;
    let repo = Repository::open(store)
        .await
        .context("opening the repository")?;
    match &cli.command {
        Command::Build {
            source,
            tag,
            zstd_level,
            chunk_sizes,
            order_by,
        } => {
            let first_access = match order_by {
                Some(t) => trace_cmd::first_access(&repo, t).await?,
                None => Vec::new(),
            };
            let chunker = chunk_sizes
                .as_deref()
                .map(parse_chunk_sizes)
                .transpose()?
                .unwrap_or_default();
            let progress = Arc::new(AtomicU64::new(0));
            let bar = std::io::stderr()
                .is_terminal()
                .then(|| spawn_progress(progress.clone()));
            let options = BuildOptions {
                tag: tag.clone(),
                chunker,
                writer: WriterConfig {
                    zstd_level: *zstd_level,
                    ..Default::default()
                },
                progress: Some(progress),
                first_access,
            };
            let start = Instant::now();
            // A registry image is pulled (every blob checked) into a temporary OCI layout,
            // which is then built like any other layout.
            let mut _pulled = None;
            let build_source = match source.strip_prefix("docker://") {
                Some(image) => {
                    let image = thaw_registry::ImageRef::parse(image)?;
                    let dir = tempfile::tempdir().context("a temporary directory for the pull")?;
                    thaw_registry::pull_to_layout(&image, dir.path()).await?;
                    let layout = BuildSource::OciLayout {
                        dir: dir.path().to_path_buf(),
                        reference: None,
                    };
                    _pulled = Some(dir);
                    layout
                }
                None => BuildSource::from_arg(source),
            };
            let r = thaw_image::build(&repo, build_source, options)
                .await
                .with_context(|| format!("building {source}"));
            if let Some((bar, stop)) = bar {
                stop.store(1, Relaxed);
                let _ = bar.await;
            }
            let r = r?;
            let secs = start.elapsed().as_secs_f64();
            println!("image: {}", r.image);
            if let Some(t) = tag {
                println!("tag: {t}");
            }
            println!(
                "files: {} directories: {} other: {}",
                r.files, r.directories, r.others
            );
            println!("bytes_read: {} ({})", r.bytes_read, size(r.bytes_read));
            println!(
                "bytes_stored: {} ({})",
                r.writer.stored_bytes,
                size(r.writer.stored_bytes)
            );
            println!("chunks_new: {}", r.writer.chunks_new);
            println!(
                "raw_bytes_new: {} ({})",
                r.writer.raw_bytes_new,
                size(r.writer.raw_bytes_new)
            );
            println!("chunks_dedup: {}", r.writer.chunks_dedup);
            println!("packs: {}", r.writer.packs);
            println!(
                "seconds: {secs:.3} ({:.1} MB/s)",
                r.bytes_read as f64 / secs / 1e6
            );
        }
        Command::Images => {
            let tags = repo.list_tags().await?;
            let mut by_image: HashMap<_, Vec<String>> = HashMap::new();
            for (name, id) in tags {
                by_image.entry(id).or_default().push(name);
            }
            println!("{:<64}  {:>10}  TAGS", "IMAGE", "MANIFEST");
            for (id, bytes) in repo.list_images().await? {
                let names = by_image.remove(&id).unwrap_or_default().join(", ");
                println!("{id}  {:>10}  {names}", size(bytes));
            }
            for (id, names) in by_image {
                println!("{id}  {:>10}  {} (missing manifest)", "-", names.join(", "));
            }
        }
        Command::Inspect { image } => inspect(&repo, image).await?,
        Command::Export {
            image,
            dir,
            cache,
            cache_size,
        } => {
            let id = repo.resolve(image).await?;
            let manifest = repo.get_manifest(&id).await?;
            let config = ReaderConfig {
                disk: cache.clone().map(|c| (c, *cache_size)),
                ..Default::default()
            };
            let reader = ChunkReader::new(repo.packs().clone(), config)?;
            let start = Instant::now();
            let r = thaw_image::export(&reader, &manifest, dir)
                .await
                .with_context(|| format!("exporting {id} to {}", dir.display()))?;
            let secs = start.elapsed().as_secs_f64();
            let s = reader.stats();
            println!("image: {id}");
            println!(
                "inodes: {} files: {} bytes: {} ({})",
                r.inodes,
                r.files,
                r.bytes,
                size(r.bytes)
            );
            println!(
                "fetched_chunks: {} fetched_bytes: {} disk_hits: {} memory_hits: {}",
                s.fetched_chunks, s.fetched_bytes, s.disk_hits, s.memory_hits
            );
            println!("seconds: {secs:.3}");
        }
        Command::Tag { image, name } => {
            let id = repo.resolve(image).await?;
            repo.set_tag(name, &id).await?;
            println!("{name} -> {id}");
        }
        Command::Rmi { image } => {
            let id = repo.resolve(image).await?;
            let tags = repo.remove_image(&id).await?;
            println!(
                "removed {id} (tags: {})",
                if tags.is_empty() {
                    "none".to_string()
                } else {
                    tags.join(", ")
                }
            );
        }
        Command::Mount(args) => mount_cmd::mount(&repo, args, cli.stats).await?,
        Command::Trace(t) => trace_cmd::run(&repo, t).await?,
        Command::Weights(w) => weights_cmd::run(&repo, w).await?,
        Command::Serve(args) => serve_cmd::serve(repo.clone(), args).await?,
        Command::Umount { .. } | Command::Prewarm(_) | Command::Jobs(_) | Command::Cache(_) => {
            unreachable!("handled before opening the store")
        }
        Command::Gc { apply, min_age } => {
            let r = repo.gc(*apply, Duration::from_secs(*min_age)).await?;
            println!(
                "images: {} referenced_chunks: {} packs: {}",
                r.images, r.referenced_chunks, r.packs
            );
            let verb = if r.deleted { "deleted" } else { "would delete" };
            for (pack, bytes) in &r.unreferenced_packs {
                println!("{verb} pack {pack} ({})", size(*bytes));
            }
            for (key, bytes) in &r.orphan_objects {
                println!("{verb} orphan {key} ({})", size(*bytes));
            }
            println!(
                "reclaimable: {} ({})",
                r.reclaimable_bytes(),
                size(r.reclaimable_bytes())
            );
            println!("kept_young_packs: {}", r.too_young);
            println!(
                "unreferenced_bytes_in_live_packs: {}",
                r.unreferenced_bytes_in_live_packs
            );
            if !r.deleted {
                println!("(dry run: pass --apply to delete)");
            }
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

fn spawn_progress(read: Arc<AtomicU64>) -> (tokio::task::JoinHandle<()>, Arc<AtomicU64>) {
    let stop = Arc::new(AtomicU64::new(0));
    let s = stop.clone();
    let handle = tokio::spawn(async move {
        let bar = indicatif::ProgressBar::new_spinner();
        bar.set_style(
            indicatif::ProgressStyle::with_template("{spinner} {msg} [{elapsed}]")
                .expect("valid template"),
        );
        while s.load(Relaxed) == 0 {
            let n = read.load(Relaxed);
            bar.set_message(format!("read {}", size(n)));
            bar.tick();
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        bar.finish_and_clear();
    });
    (handle, stop)
}

async fn inspect(repo: &Repository, image: &str) -> Result<()> {
    let id = repo.resolve(image).await?;
    let m = repo.get_manifest(&id).await?;
    let tags: Vec<String> = repo
        .list_tags()
        .await?
        .into_iter()
        .filter(|(_, t)| *t == id)
        .map(|(n, _)| n)
        .collect();
    let (mut files, mut dirs, mut links, mut devs, mut other, mut file_bytes, mut zero_bytes) =
        (0u64, 0u64, 0u64, 0u64, 0u64, 0u64, 0u64);
    let counts = m.link_counts();
    let mut hardlinked = 0u64;
    for (ino, i) in m.inodes.iter().enumerate() {
        match &i.kind {
            InodeKind::File { size, extents } => {
                files += 1;
                file_bytes += size;
                zero_bytes += extents
                    .iter()
                    .map(|e| {
                        if let thaw_core::Extent::Zero(n) = e {
                            *n
                        } else {
                            0
                        }
                    })
                    .sum::<u64>();
                if counts[ino] > 1 {
                    hardlinked += 1;
                }
            }
            InodeKind::Directory { .. } => dirs += 1,
            InodeKind::Symlink { .. } => links += 1,
            InodeKind::CharDevice { .. } | InodeKind::BlockDevice { .. } => devs += 1,
            _ => other += 1,
        }
    }
    let chunk_bytes: u64 = m.chunks.iter().map(|c| u64::from(c.len)).sum();
    let mut packs = HashSet::new();
    let mut stored = 0u64;
    let mut compressed = 0u64;
    for c in &m.chunks {
        if let Some(loc) = repo.packs().location(&c.id) {
            packs.insert(loc.pack);
            stored += u64::from(loc.entry.stored_len);
            if loc.entry.compression == thaw_core::Compression::Zstd {
                compressed += 1;
            }
        }
    }
    println!("image: {id}");
    println!(
        "tags: {}",
        if tags.is_empty() {
            "(none)".into()
        } else {
            tags.join(", ")
        }
    );
    println!("inodes: {} (files {files}, directories {dirs}, symlinks {links}, devices {devs}, other {other}; hard-linked files {hardlinked})", m.inodes.len());
    println!(
        "file_bytes: {file_bytes} ({}), of which zero runs {}",
        size(file_bytes),
        size(zero_bytes)
    );
    println!(
        "chunks: {} unique, {} ({} compressed)",
        m.chunks.len(),
        size(chunk_bytes),
        compressed
    );
    println!(
        "stored: {} in {} packs (ratio {:.3})",
        size(stored),
        packs.len(),
        stored as f64 / chunk_bytes.max(1) as f64
    );
    Ok(())
}
