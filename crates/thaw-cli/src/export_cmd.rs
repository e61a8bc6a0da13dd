//! `thaw export`: an image back to a directory tree, or to one tar layer.

use crate::image_cmd::size;
use anyhow::{Context, Result};
use std::io::Write;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;
use thaw_store::{ChunkReader, ReaderConfig, Repository};

/// Arguments of `thaw export`.
#[derive(Debug, clap::Args)]
pub struct ExportArgs {
    /// The image.
    pub image: String,
    /// Where to write it: a missing or empty directory, or with `--tar` a file (`-` for
    /// standard output).
    pub dest: PathBuf,
    /// Write one uncompressed tar layer instead of a tree: the same bytes every time, the
    /// layer `thaw snapshotter import` describes to containerd for an unlayered image.
    #[arg(long)]
    pub tar: bool,
    /// Disk cache directory for chunks.
    #[arg(long)]
    pub cache: Option<PathBuf>,
    /// Disk cache size in bytes.
    #[arg(long, default_value_t = 10 << 30)]
    pub cache_size: u64,
}

/// `thaw export`.
pub async fn export(repo: &Repository, args: &ExportArgs) -> Result<()> {
    let id = repo.resolve(&args.image).await?;
    let manifest = repo.get_manifest(&id).await?;
    let config = ReaderConfig {
        disk: args.cache.clone().map(|c| (c, args.cache_size)),
        ..Default::default()
    };
    let reader = ChunkReader::new(repo.packs().clone(), config)?;
    if args.tar {
        return export_tar(reader, manifest, args).await;
    }
    let start = Instant::now();
    let r = thaw_image::export(&reader, &manifest, &args.dest)
        .await
        .with_context(|| format!("exporting {id} to {}", args.dest.display()))?;
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
    Ok(())
}

/// `thaw export --tar`: the layer to a file or standard output; its digest to stderr.
async fn export_tar(
    reader: Arc<ChunkReader>,
    manifest: thaw_core::Manifest,
    args: &ExportArgs,
) -> Result<()> {
    let manifest = Arc::new(manifest);
    let out: Box<dyn Write + Send> = if args.dest.as_os_str() == "-" {
        Box::new(std::io::BufWriter::new(std::io::stdout()))
    } else {
        let file = std::fs::File::create(&args.dest)
            .with_context(|| format!("creating {}", args.dest.display()))?;
        Box::new(std::io::BufWriter::new(file))
    };
    let (layer, mut out) = thaw_image::write_layer_tar(reader, manifest, out)
        .await
        .context("writing the tar layer")?;
    out.flush().context("writing the tar layer")?;
    eprintln!("layer: {} size: {}", layer.digest, layer.size);
    Ok(())
}
