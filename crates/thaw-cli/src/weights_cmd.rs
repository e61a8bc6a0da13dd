//! `thaw weights load`: loads a safetensors file of an image into GPU memory or host memory
//! through the parallel pinned-slot pipeline, and reports each stage (or, with
//! `--checksums`, the BLAKE3 of every tensor as it ended up in the destination).

use anyhow::{Context, Result};
use std::path::PathBuf;
use thaw_gpu::cuda::CudaSink;
use thaw_gpu::{load, tensor_checksums, Allocations, HostSink, LoadOptions, LoadReport};
use thaw_store::{ChunkReader, ReaderConfig, Repository};

/// `thaw weights`.
#[derive(Debug, clap::Subcommand)]
pub enum WeightsCommand {
    /// Load a safetensors file of an image into GPU memory (`--device cuda:N`) or host memory.
    Load(LoadArgs),
    /// Ask a daemon's weights socket for a model, as a serving process does, and print
    /// what it handed over (or, with `--checksums`, `NAME BLAKE3HEX` per tensor of the
    /// memory received): a check that a replica gets its resident weights.
    Get(GetArgs),
}

/// `thaw weights get`.
#[derive(Debug, clap::Args)]
pub struct GetArgs {
    /// The daemon's weights socket.
    #[arg(long, env = "THAW_WEIGHTS_SOCKET")]
    pub socket: PathBuf,
    /// The image (tag or id).
    pub image: String,
    /// The safetensors file (or a sharded checkpoint's index.json) inside the image.
    pub path: String,
    /// Print `NAME BLAKE3HEX` per tensor, hashed in the memory received, and nothing else.
    #[arg(long)]
    pub checksums: bool,
}

/// Where the weights go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Device {
    /// Host memory.
    Host,
    /// GPU N.
    Cuda(usize),
}

impl std::str::FromStr for Device {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "host" | "cpu" => Ok(Device::Host),
            "cuda" => Ok(Device::Cuda(0)),
            _ => s
                .strip_prefix("cuda:")
                .and_then(|n| n.parse().ok())
                .map(Device::Cuda)
                .ok_or_else(|| format!("{s:?}: expected host or cuda:N")),
        }
    }
}

impl std::fmt::Display for Device {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Device::Host => f.write_str("host"),
            Device::Cuda(n) => write!(f, "cuda:{n}"),
        }
    }
}

/// `thaw weights load`.
#[derive(Debug, clap::Args)]
pub struct LoadArgs {
    /// The image (tag or id).
    pub image: String,
    /// The safetensors file inside the image.
    pub path: String,
    /// Where to load: `host` or `cuda:N`.
    #[arg(long, default_value = "cuda:0")]
    pub device: Device,
    /// Print `NAME BLAKE3HEX` per tensor (hashed where the bytes ended up) and nothing else.
    #[arg(long, conflicts_with = "json")]
    pub checksums: bool,
    /// Print the report as JSON.
    #[arg(long)]
    pub json: bool,
    /// Decode workers (0: all cores but one, at least two).
    #[arg(long, default_value_t = 0)]
    pub workers: usize,
    /// Staging slots per worker.
    #[arg(long, default_value_t = 2)]
    pub slots: usize,
    /// MiB per staging slot (16 to 64; raised to the largest chunk).
    #[arg(long, default_value_t = 16)]
    pub slot_mib: usize,
    /// Put each tensor at a multiple of this many bytes (0: as in the file).
    #[arg(long, default_value_t = 0)]
    pub align: u64,
    /// Disk cache directory for chunks.
    #[arg(long)]
    pub cache: Option<PathBuf>,
    /// The disk cache's bound, bytes.
    #[arg(long, default_value_t = 10 << 30)]
    pub cache_size: u64,
    /// The memory cache's bound, bytes.
    #[arg(long, default_value_t = 256 << 20)]
    pub memory_cache: u64,
}

/// Runs `thaw weights ...`.
pub async fn run(repo: &Repository, command: &WeightsCommand) -> Result<()> {
    match command {
        WeightsCommand::Load(args) => load_cmd(repo, args).await,
        // Answered before any store is opened (see `main`).
        WeightsCommand::Get(args) => get_cmd(args),
    }
}

/// Runs `thaw weights get` (no store needed).
pub fn get_cmd(args: &GetArgs) -> Result<()> {
    use thaw_gpu::memfd::SharedMemory;
    let asked = format!(
        "asking {} for {} of {}",
        args.socket.display(),
        args.path,
        args.image
    );
    let (reply, fds) = thaw_gpu::handoff::request(&args.socket, &args.image, &args.path)
        .with_context(|| asked.clone())?;
    if !reply.ok {
        anyhow::bail!("{asked}: {}", reply.error.unwrap_or_default());
    }
    anyhow::ensure!(
        fds.len() == reply.files.len(),
        "{asked}: {} files announced, {} memory descriptors received",
        reply.files.len(),
        fds.len()
    );
    for (file, fd) in reply.files.iter().zip(fds) {
        let len = usize::try_from(file.len)?;
        let memory = SharedMemory::from_received(fd, len)
            .with_context(|| format!("{asked}: mapping {}", file.path))?;
        let bytes = memory.as_slice();
        if !args.checksums {
            println!(
                "{} {} tensors {} bytes",
                file.path,
                file.tensors.len(),
                file.len
            );
        }
        for t in &file.tensors {
            let range = usize::try_from(t.offset)?..usize::try_from(t.offset + t.len)?;
            let data = bytes
                .get(range)
                .with_context(|| format!("{asked}: {} lies outside its memory", t.name))?;
            if args.checksums {
                println!("{} {}", t.name, blake3::hash(data).to_hex());
            }
        }
    }
    Ok(())
}

async fn load_cmd(repo: &Repository, args: &LoadArgs) -> Result<()> {
    let id = repo.resolve(&args.image).await?;
    let manifest = repo.get_manifest(&id).await?;
    let reader = ChunkReader::new(
        repo.packs().clone(),
        ReaderConfig {
            memory_bytes: args.memory_cache,
            disk: args.cache.clone().map(|c| (c, args.cache_size)),
            ..Default::default()
        },
    )?;
    let options = LoadOptions {
        workers: args.workers,
        slots: args.slots,
        slot_bytes: args.slot_mib.max(1) << 20,
        align: args.align,
    };
    let what = format!("loading {} from {}", args.path, args.image);
    let (report, data) = match args.device {
        Device::Host => {
            let sink = HostSink::new(Allocations::default());
            let (sink, r) = load(reader, &manifest, &args.path, sink, options)
                .await
                .context(what)?;
            (r, sink.into_data())
        }
        Device::Cuda(n) => {
            let sink = CudaSink::new(n).with_context(|| format!("opening {}", args.device))?;
            let (sink, r) = load(reader, &manifest, &args.path, sink, options)
                .await
                .context(what)?;
            let data = if args.checksums {
                sink.to_host()?
            } else {
                Vec::new()
            };
            (r, data)
        }
    };
    if args.checksums {
        for c in tensor_checksums(&report, &data) {
            println!("{} {}", c.name, c.blake3);
        }
    } else if args.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&report_json(&report, args.device))?
        );
    } else {
        print_report(&report, args.device);
    }
    Ok(())
}

fn report_json(r: &LoadReport, device: Device) -> serde_json::Value {
    serde_json::json!({
        "device": device.to_string(),
        "tensors": r.header.tensors.len(),
        "bytes": r.bytes,
        "seconds": r.seconds,
        "gb_per_s": gbps(r.bytes, r.seconds),
        "header_seconds": r.header_seconds,
        "allocate_seconds": r.allocate_seconds,
        "in_place_bytes": r.in_place_bytes,
        "workers": r.workers,
        "slot_bytes": r.slot_bytes,
        "memory_bytes": r.memory_bytes,
        "disk_bytes": r.disk_bytes,
        "store_bytes": r.store_bytes,
        "zero_bytes": r.zero_bytes,
        "fetch_seconds": r.fetch_seconds,
        "decode_seconds": r.decode_seconds,
        "retried": r.retried,
    })
}

fn gbps(bytes: u64, seconds: f64) -> f64 {
    if seconds > 0.0 {
        bytes as f64 / seconds / 1e9
    } else {
        0.0
    }
}

fn print_report(r: &LoadReport, device: Device) {
    println!("destination: {device}");
    println!("tensors: {}", r.header.tensors.len());
    println!("bytes: {}", r.bytes);
    println!("seconds: {:.4}", r.seconds);
    println!("gb_per_s: {:.3}", gbps(r.bytes, r.seconds));
    println!("header_seconds: {:.4}", r.header_seconds);
    println!("allocate_seconds: {:.4}", r.allocate_seconds);
    println!(
        "workers: {} (slots of {} MiB)",
        r.workers,
        r.slot_bytes >> 20
    );
    println!(
        "from: memory {} B, disk cache {} B, store {} B stored, zero runs {} B",
        r.memory_bytes, r.disk_bytes, r.store_bytes, r.zero_bytes
    );
    println!(
        "fetch_seconds: {:.4} decode_seconds: {:.4} (summed over workers)",
        r.fetch_seconds, r.decode_seconds
    );
}
