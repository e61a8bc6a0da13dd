//! `thaw weights`: loads a safetensors file of an image into GPU memory (or host memory
//! with `--host`) through pinned staging buffers, and reports the throughput.

use anyhow::{Context, Result};
use std::path::PathBuf;
use thaw_gpu::cuda::CudaSink;
use thaw_gpu::{load, HostSink, LoadOptions, LoadReport};
use thaw_store::{ChunkReader, ReaderConfig, Repository};

#[derive(Debug, clap::Args)]
pub struct WeightsArgs {
    pub image: String,
    /// The safetensors file inside the image.
    pub path: String,
    /// CUDA device ordinal.
    #[arg(long, default_value_t = 0)]
    pub device: usize,
    /// Load into host memory instead of a GPU.
    #[arg(long)]
    pub host: bool,
    /// Pinned staging buffers, and the size of each in MiB.
    #[arg(long, default_value_t = 4)]
    pub buffers: usize,
    #[arg(long, default_value_t = 64)]
    pub buffer_mib: usize,
    /// Chunks read ahead of the copy.
    #[arg(long, default_value_t = 32)]
    pub in_flight: usize,
    /// Hash the data on the way and compare it with what is in the destination after.
    #[arg(long)]
    pub verify: bool,
    /// Disk cache directory for chunks.
    #[arg(long)]
    pub cache: Option<PathBuf>,
    #[arg(long, default_value_t = 10 << 30)]
    pub cache_size: u64,
    #[arg(long, default_value_t = 256 << 20)]
    pub memory_cache: u64,
}

pub async fn run(repo: &Repository, args: &WeightsArgs) -> Result<()> {
    let id = repo.resolve(&args.image).await?;
    let manifest = repo.get_manifest(&id).await?;
    let reader = ChunkReader::new(
        repo.packs().clone(),
        ReaderConfig {
            memory_bytes: args.memory_cache,
            disk: args.cache.clone().map(|c| (c, args.cache_size)),
            fetch_around: 0,
            ..Default::default()
        },
    )?;
    let options = LoadOptions {
        chunks_in_flight: args.in_flight,
        hash: args.verify,
    };
    let staging = args.buffer_mib.max(1) << 20;
    let what = format!("loading {} from {id}", args.path);
    let (report, check): (LoadReport, Option<String>) = if args.host {
        let (sink, r) = load(
            reader,
            &manifest,
            &args.path,
            HostSink::new(args.buffers, staging),
            options,
        )
        .await
        .context(what)?;
        let check = args
            .verify
            .then(|| blake3::hash(&sink.data).to_hex().to_string());
        (r, check)
    } else {
        let sink = CudaSink::new(args.device, args.buffers, staging)?;
        let (sink, r) = load(reader, &manifest, &args.path, sink, options)
            .await
            .context(what)?;
        let check = if args.verify {
            Some(blake3::hash(&sink.to_host()?).to_hex().to_string())
        } else {
            None
        };
        (r, check)
    };
    println!("image: {id}");
    println!("tensors: {}", report.header.tensors.len());
    println!("bytes: {}", report.bytes);
    println!("seconds: {:.4}", report.seconds);
    println!(
        "gb_per_s: {:.3}",
        report.bytes as f64 / report.seconds / 1e9
    );
    println!(
        "destination: {}",
        if args.host {
            "host".to_string()
        } else {
            format!("cuda:{}", args.device)
        }
    );
    if let (Some(want), Some(got)) = (&report.blake3, &check) {
        anyhow::ensure!(
            want == got,
            "the destination holds different bytes: {got} instead of {want}"
        );
        println!("verified: {got}");
    }
    Ok(())
}
