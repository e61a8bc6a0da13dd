//! `thaw-bench`: measurement drivers that `scripts/bench.sh` runs side by side with
//! their baselines. Each prints `key: value` lines.

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use futures::{stream, StreamExt};
use std::collections::HashSet;
use std::path::PathBuf;
use std::time::Instant;
use thaw_core::ChunkId;
use thaw_store::blob::wrap::{CountingStore, RetryConfig, RetryStore};
use thaw_store::{open_store, ChunkReader, ReaderConfig, Repository};

#[derive(Parser, Debug)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Read every chunk of an image once, in file order, as an export would.
    Read {
        #[arg(long)]
        store: String,
        image: String,
        /// Disk cache directory (reads are served from it when it is warm; chunks read
        /// from the store are kept there, a local store too).
        #[arg(long)]
        cache: Option<PathBuf>,
        /// Chunk bytes per batch request.
        #[arg(long, default_value_t = 32 << 20)]
        batch_bytes: u64,
        #[arg(long, default_value_t = 4)]
        in_flight: usize,
    },
    /// The baseline for `thaw weights`: read a whole local file into ordinary memory,
    /// then copy it to the GPU (what loading without thaw does).
    GpuBaseline {
        file: PathBuf,
        #[arg(long, default_value_t = 0)]
        device: usize,
    },
}

/// `gpu-baseline`: times read + allocate + copy, after the CUDA context exists.
fn gpu_baseline(file: &std::path::Path, device: usize) -> Result<()> {
    anyhow::ensure!(
        thaw_gpu::cuda::cuda_available(),
        "no CUDA driver on this machine"
    );
    let ctx = cudarc::driver::CudaContext::new(device)?;
    let stream = ctx.default_stream();
    let start = Instant::now();
    let data = std::fs::read(file).with_context(|| format!("reading {}", file.display()))?;
    let read = start.elapsed().as_secs_f64();
    let dst = stream.clone_htod(&data)?;
    stream.synchronize()?;
    let seconds = start.elapsed().as_secs_f64();
    println!("bytes: {}", data.len());
    println!("read_seconds: {read:.4}");
    println!("seconds: {seconds:.4}");
    println!("gb_per_s: {:.3}", data.len() as f64 / seconds / 1e9);
    drop(dst);
    Ok(())
}

#[tokio::main]
async fn main() -> Result<()> {
    match Cli::parse().command {
        Command::GpuBaseline { file, device } => gpu_baseline(&file, device)?,
        Command::Read {
            store,
            image,
            cache,
            batch_bytes,
            in_flight,
        } => {
            let counting = CountingStore::new(open_store(&store)?);
            let counters = counting.counters();
            let repo = Repository::open(std::sync::Arc::new(RetryStore::new(
                std::sync::Arc::new(counting),
                RetryConfig::default(),
            )))
            .await?;
            let id = repo.resolve(&image).await?;
            let m = repo.get_manifest(&id).await?;
            let config = ReaderConfig {
                memory_bytes: 64 << 20,
                disk: cache.map(|c| (c, 100 << 30)),
                fetch_around: thaw_store::FetchAround::Fixed(0),
                // `--cache` measures a disk cache, as a remote store fills it: keep the
                // chunks there even from a local store on the same filesystem.
                copy_local_store: true,
                ..Default::default()
            };
            let reader = ChunkReader::new(repo.packs().clone(), config)?;
            // Unique chunks in the order files reference them.
            let mut seen = HashSet::new();
            let mut batches: Vec<Vec<ChunkId>> = Vec::new();
            let mut batch: Vec<ChunkId> = Vec::new();
            let (mut bytes, mut in_batch) = (0u64, 0u64);
            for ino in 0..m.inodes.len() as u32 {
                for e in m.file_extents(ino) {
                    if let Some(c) = e.chunk.filter(|c| seen.insert(*c)) {
                        if in_batch + e.len > batch_bytes && !batch.is_empty() {
                            batches.push(std::mem::take(&mut batch));
                            in_batch = 0;
                        }
                        batch.push(c);
                        in_batch += e.len;
                        bytes += e.len;
                    }
                }
            }
            batches.push(batch);
            let gets_before = counters.snapshot().gets;
            let start = Instant::now();
            let results: Vec<_> = stream::iter(batches)
                .map(|b| {
                    let r = reader.clone();
                    async move {
                        r.read_many(&b)
                            .await
                            .map(|v| v.iter().map(|x| x.len() as u64).sum::<u64>())
                    }
                })
                .buffer_unordered(in_flight)
                .collect()
                .await;
            let secs = start.elapsed().as_secs_f64();
            let mut read = 0u64;
            for r in results {
                read += r
                    .map_err(|e| anyhow::anyhow!("{e}"))
                    .context("reading chunks")?;
            }
            anyhow::ensure!(read == bytes, "read {read} of {bytes} bytes");
            let s = reader.stats();
            println!("bytes: {bytes}");
            println!("seconds: {secs:.6}");
            println!("gbps: {:.4}", bytes as f64 / secs / 1e9);
            println!("fetched_chunks: {}", s.fetched_chunks);
            println!("disk_hits: {}", s.disk_hits);
            println!("store_gets: {}", counters.snapshot().gets - gets_before);
        }
    }
    Ok(())
}
