//! The image commands: `build`, `images`, `inspect`, `tag`, `rmi` and `gc`.
//! The figures they print are computed by the libraries; this module only formats them.

use anyhow::{bail, Context, Result};
use humansize::{format_size, BINARY};
use std::collections::HashMap;
use std::io::IsTerminal;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};
use thaw_core::ChunkerConfig;
use thaw_image::{BuildOptions, BuildReport, BuildSource, ConfigEdits};
use thaw_store::{Repository, WriterConfig};

/// Arguments of `thaw build`. The configuration flags edit the source's own configuration
/// (a registry, OCI or docker-archive image) as a Dockerfile's instructions would, or make
/// one for a directory or tar image, which has none.
#[derive(Debug, clap::Args)]
pub struct BuildArgs {
    /// A directory, a tar file (.tar, .tar.gz, .tar.zst), `-`, `oci:DIR[:NAME]`,
    /// `docker-archive:FILE[:NAME:TAG]` or `docker://HOST/NAME:TAG`.
    pub source: String,
    /// Tag the image with this name.
    #[arg(long)]
    pub tag: Option<String>,
    /// zstd level for chunks that compress.
    #[arg(long, default_value_t = 3)]
    pub zstd_level: i32,
    /// For a layered source (registry, OCI layout, docker archive): also store the tree
    /// of every layer prefix, tagged by its containerd chain id, so that
    /// `thaw serve --snapshotter-socket` serves each layer to containerd lazily.
    #[arg(long)]
    pub containerd: bool,
    /// Chunk sizes in bytes: MIN,AVG,MAX.
    #[arg(long, value_name = "MIN,AVG,MAX")]
    pub chunk_sizes: Option<String>,
    /// Pack the start-up working set together in first-access order: a trace file
    /// (from `thaw mount --record-trace`) or an image whose pushed traces to merge.
    #[arg(long, value_name = "TRACE")]
    pub order_by: Option<String>,
    /// Run configuration from a file: an OCI image config (`{"config": {...}}`) or its
    /// `config` object alone (`Entrypoint`, `Cmd`, `Env`, ...). Replaces the source's own.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// The entrypoint, as a Dockerfile's ENTRYPOINT: a JSON array (`["/bin/app","-v"]`)
    /// runs as is, other text through `/bin/sh -c`; `[]` clears it.
    #[arg(long, value_name = "JSON|TEXT")]
    pub entrypoint: Option<String>,
    /// The default command (or arguments, after an entrypoint), as a Dockerfile's CMD.
    #[arg(long, value_name = "JSON|TEXT")]
    pub cmd: Option<String>,
    /// Set an environment variable (repeatable).
    #[arg(long, value_name = "KEY=VALUE")]
    pub env: Vec<String>,
    /// The working directory (absolute).
    #[arg(long, value_name = "DIR")]
    pub workdir: Option<String>,
    /// The user: `NAME`, `UID`, `NAME:GROUP` or `UID:GID`.
    #[arg(long, value_name = "USER[:GROUP]")]
    pub user: Option<String>,
}

pub(crate) fn size(n: u64) -> String {
    format_size(n, BINARY)
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

/// `thaw build`.
pub async fn build(repo: &Repository, args: &BuildArgs) -> Result<()> {
    let first_access = match &args.order_by {
        Some(t) => crate::trace_cmd::first_access(repo, t).await?,
        None => Vec::new(),
    };
    let chunker = args
        .chunk_sizes
        .as_deref()
        .map(parse_chunk_sizes)
        .transpose()?
        .unwrap_or_default();
    let progress = Arc::new(AtomicU64::new(0));
    let bar = std::io::stderr()
        .is_terminal()
        .then(|| spawn_progress(progress.clone()));
    let options = BuildOptions {
        tag: args.tag.clone(),
        chunker,
        writer: WriterConfig {
            zstd_level: args.zstd_level,
            ..Default::default()
        },
        progress: Some(progress),
        first_access,
        config: config_edits(args)?,
        containerd: args.containerd,
    };
    let start = Instant::now();
    // A registry image is pulled (every blob checked) into a temporary OCI layout, which
    // is then built like any other layout.
    let mut _pulled = None;
    let source = match args.source.strip_prefix("docker://") {
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
        None => BuildSource::from_arg(&args.source),
    };
    let r = thaw_image::build(repo, source, options)
        .await
        .with_context(|| format!("building {}", args.source));
    if let Some((bar, stop)) = bar {
        stop.store(1, Relaxed);
        let _ = bar.await;
    }
    print_build(&r?, args.tag.as_deref(), start.elapsed().as_secs_f64());
    Ok(())
}

/// The configuration flags of `thaw build`, as edits to the source's configuration.
fn config_edits(args: &BuildArgs) -> Result<ConfigEdits> {
    let replace = match &args.config {
        Some(file) => {
            let bytes =
                std::fs::read(file).with_context(|| format!("reading {}", file.display()))?;
            let config = thaw_image::image_config::from_file_json(&bytes)
                .map_err(|e| anyhow::anyhow!("{}: {e}", file.display()))?;
            Some(config)
        }
        None => None,
    };
    for kv in &args.env {
        if !thaw_core::config::is_env_entry(kv) {
            bail!("--env {kv:?} is not KEY=VALUE");
        }
    }
    Ok(ConfigEdits {
        replace,
        entrypoint: args
            .entrypoint
            .as_deref()
            .map(exec_or_shell_form)
            .transpose()?,
        cmd: args.cmd.as_deref().map(exec_or_shell_form).transpose()?,
        env: args.env.clone(),
        working_dir: args.workdir.clone(),
        user: args.user.clone(),
    })
}

/// A Dockerfile's two forms: a JSON array is the argv itself; other text is a shell command.
fn exec_or_shell_form(s: &str) -> Result<Vec<String>> {
    if s.trim_start().starts_with('[') {
        return serde_json::from_str(s)
            .with_context(|| format!("{s:?} is not a JSON array of strings"));
    }
    Ok(vec!["/bin/sh".into(), "-c".into(), s.into()])
}

fn print_build(r: &BuildReport, tag: Option<&str>, secs: f64) {
    println!("image: {}", r.image);
    if let Some(t) = tag {
        println!("tag: {t}");
    }
    println!(
        "files: {} directories: {} other: {}",
        r.files, r.directories, r.others
    );
    println!("bytes_read: {} ({})", r.bytes_read, size(r.bytes_read));
    let w = &r.writer;
    println!(
        "bytes_stored: {} ({})",
        w.stored_bytes,
        size(w.stored_bytes)
    );
    println!("chunks_new: {}", w.chunks_new);
    println!(
        "raw_bytes_new: {} ({})",
        w.raw_bytes_new,
        size(w.raw_bytes_new)
    );
    println!("chunks_dedup: {}", w.chunks_dedup);
    println!("packs: {}", w.packs);
    for layer in &r.layers {
        println!("layer: {} chain {}", layer.diff_id, layer.chain_id);
    }
    if r.chain_tags > 0 {
        println!("chain_tags: {}", r.chain_tags);
    }
    println!(
        "seconds: {secs:.3} ({:.1} MB/s)",
        r.bytes_read as f64 / secs / 1e6
    );
}

fn spawn_progress(read: Arc<AtomicU64>) -> (tokio::task::JoinHandle<()>, Arc<AtomicU64>) {
    let stop = Arc::new(AtomicU64::new(0));
    let s = stop.clone();
    let handle = tokio::spawn(async move {
        let bar = indicatif::ProgressBar::new_spinner();
        bar.set_style(
            indicatif::ProgressStyle::with_template("{spinner} {msg} [{elapsed}]")
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_spinner()),
        );
        while s.load(Relaxed) == 0 {
            bar.set_message(format!("read {}", size(read.load(Relaxed))));
            bar.tick();
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        bar.finish_and_clear();
    });
    (handle, stop)
}

/// `thaw images`.
pub async fn images(repo: &Repository) -> Result<()> {
    let mut by_image: HashMap<_, Vec<String>> = HashMap::new();
    for (name, id) in repo.list_tags().await? {
        by_image.entry(id).or_default().push(shown_tag(&name));
    }
    println!("{:<64}  {:>10}  TAGS", "IMAGE", "MANIFEST");
    for (id, bytes) in repo.list_images().await? {
        let names = by_image.remove(&id).unwrap_or_default().join(", ");
        println!("{id}  {:>10}  {names}", size(bytes));
    }
    for (id, names) in by_image {
        println!("{id}  {:>10}  {} (missing manifest)", "-", names.join(", "));
    }
    Ok(())
}

/// A tag as `thaw images` shows it: the containerd snapshotter's references (a chain per
/// layer prefix, and the manifest digest, of a `--containerd` build) in short, as what
/// they are.
fn shown_tag(name: &str) -> String {
    let short = |hex: &str| hex.get(..12).unwrap_or(hex).to_string();
    if let Some(hex) = name.strip_prefix(thaw_core::tag::CHAIN_TAG_PREFIX) {
        return format!("[containerd layer chain sha256:{}]", short(hex));
    }
    if let Some(hex) = name.strip_prefix(thaw_core::tag::MANIFEST_TAG_PREFIX) {
        return format!("[OCI manifest sha256:{}]", short(hex));
    }
    name.to_string()
}

/// `thaw inspect`.
pub async fn inspect(repo: &Repository, image: &str) -> Result<()> {
    let id = repo.resolve(image).await?;
    let m = repo.get_manifest(&id).await?;
    let tags: Vec<String> = repo
        .list_tags()
        .await?
        .into_iter()
        .filter(|(_, t)| *t == id)
        .map(|(n, _)| n)
        .collect();
    let t = m.summary();
    let st = repo.packs().storage(m.chunks.iter().map(|c| c.id));
    println!("image: {id}");
    println!(
        "tags: {}",
        if tags.is_empty() {
            "(none)".into()
        } else {
            tags.join(", ")
        }
    );
    println!(
        "inodes: {} (files {}, directories {}, symlinks {}, devices {}, other {}; hard-linked files {})",
        t.inodes, t.files, t.directories, t.symlinks, t.devices, t.other, t.hard_linked_files
    );
    println!(
        "file_bytes: {} ({}), of which zero runs {}",
        t.file_bytes,
        size(t.file_bytes),
        size(t.zero_bytes)
    );
    println!(
        "chunks: {} unique, {} ({} compressed)",
        t.chunks,
        size(t.chunk_bytes),
        st.compressed_chunks
    );
    println!(
        "stored: {} in {} packs (ratio {:.3})",
        size(st.stored_bytes),
        st.packs,
        st.stored_bytes as f64 / t.chunk_bytes.max(1) as f64
    );
    if st.missing_chunks > 0 {
        println!(
            "missing_chunks: {} (not in any pack of this store)",
            st.missing_chunks
        );
    }
    print_config(m.config.as_ref());
    Ok(())
}

/// The run configuration, one field a line, values as JSON so that spaces and quotes show.
fn print_config(config: Option<&thaw_core::ImageConfig>) {
    let Some(c) = config else {
        println!("config: (none: runs only with a command given)");
        return;
    };
    println!("config:");
    println!("  entrypoint: {}", serde_json::json!(c.entrypoint));
    println!("  cmd: {}", serde_json::json!(c.cmd));
    println!("  env: {}", serde_json::json!(c.env));
    println!("  working_dir: {}", serde_json::json!(c.working_dir));
    println!("  user: {}", serde_json::json!(c.user));
    println!("  exposed_ports: {}", serde_json::json!(c.exposed_ports));
    println!("  labels: {}", serde_json::json!(c.labels));
    println!("  stop_signal: {}", serde_json::json!(c.stop_signal));
}

/// `thaw tag`.
pub async fn tag(repo: &Repository, image: &str, name: &str) -> Result<()> {
    let id = repo.resolve(image).await?;
    repo.set_tag(name, &id).await?;
    println!("{name} -> {id}");
    Ok(())
}

/// `thaw rmi`.
pub async fn rmi(repo: &Repository, image: &str) -> Result<()> {
    let id = repo.resolve(image).await?;
    let tags = repo.remove_image(&id).await?;
    let tags = if tags.is_empty() {
        "none".to_string()
    } else {
        tags.join(", ")
    };
    println!("removed {id} (tags: {tags})");
    Ok(())
}

/// `thaw gc`.
pub async fn gc(repo: &Repository, apply: bool, safety_period: u64) -> Result<()> {
    let r = repo.gc(apply, Duration::from_secs(safety_period)).await?;
    println!(
        "images: {} referenced_chunks: {} packs: {} orphans: {}",
        r.images, r.referenced_chunks, r.packs, r.orphans
    );
    let (delete, mark, unmark) = if r.applied {
        ("deleted", "marked", "revived")
    } else {
        ("would delete", "would mark", "would revive")
    };
    for (pack, bytes) in &r.deletable {
        println!("{delete} pack {pack} ({})", size(*bytes));
    }
    for (pack, bytes) in &r.newly_marked {
        println!("{mark} pack {pack} ({})", size(*bytes));
    }
    for pack in &r.revived {
        println!("{unmark} pack {pack} (an image uses it again)");
    }
    println!("freed: {} ({})", r.freed_bytes(), size(r.freed_bytes()));
    println!(
        "reclaimable: {} ({})",
        r.reclaimable_bytes(),
        size(r.reclaimable_bytes())
    );
    println!(
        "waiting_packs: {} (marked, within the safety period)",
        r.waiting.len()
    );
    println!(
        "young_packs: {} (unreferenced, younger than the safety period)",
        r.young
    );
    println!("stale_marks: {}", r.stale_marks);
    println!(
        "unreferenced_bytes_in_live_packs: {}",
        r.unreferenced_bytes_in_live_packs
    );
    if !r.applied {
        println!("(dry run: pass --apply to mark and delete)");
    }
    Ok(())
}
