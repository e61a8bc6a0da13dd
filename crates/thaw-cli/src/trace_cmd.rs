//! `thaw trace`: store start-up traces with their image, list them, and show the merged
//! prefetch list; and reading a trace for `thaw build --order-by`.

use anyhow::{Context, Result};
use std::path::{Path, PathBuf};
use thaw_core::trace::Trace;
use thaw_core::ChunkId;
use thaw_store::repo::MAX_TRACE_BYTES;
use thaw_store::Repository;

#[derive(Debug, clap::Subcommand)]
pub enum TraceCommand {
    /// Store a trace (from `thaw mount --record-trace`) with the image it was recorded on.
    Push { image: String, file: PathBuf },
    /// List an image's traces.
    List { image: String },
    /// Print the image's traces merged into one prefetch list (the trace format).
    Show { image: String },
}

/// Reads and parses a trace file, refusing files too large to be a trace.
pub fn read_trace(path: &Path) -> Result<Trace> {
    let len = std::fs::metadata(path)
        .with_context(|| format!("reading trace {}", path.display()))?
        .len();
    anyhow::ensure!(
        len <= MAX_TRACE_BYTES as u64,
        "trace {} is {len} bytes; at most {MAX_TRACE_BYTES} are accepted",
        path.display()
    );
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("reading trace {}", path.display()))?;
    Trace::decode(&text).with_context(|| format!("parsing trace {}", path.display()))
}

/// The chunks of `arg` in first-access order: a trace file, or else an image whose
/// stored traces are merged.
pub async fn first_access(repo: &Repository, arg: &str) -> Result<Vec<ChunkId>> {
    let path = Path::new(arg);
    let records = if path.is_file() {
        read_trace(path)?.records
    } else {
        let id = repo
            .resolve(arg)
            .await
            .with_context(|| format!("--order-by {arg}: neither a trace file nor an image"))?;
        repo.prefetch_list(&id).await?
    };
    Ok(records.into_iter().map(|r| r.chunk).collect())
}

pub async fn run(repo: &Repository, cmd: &TraceCommand) -> Result<()> {
    match cmd {
        TraceCommand::Push { image, file } => {
            let id = repo.resolve(image).await?;
            let trace = read_trace(file)?;
            anyhow::ensure!(
                trace.image == id,
                "{} was recorded on image {}, not {id}",
                file.display(),
                trace.image
            );
            let key = repo.put_trace(&trace).await?;
            println!("stored {} records as {key}", trace.records.len());
        }
        TraceCommand::List { image } => {
            let id = repo.resolve(image).await?;
            for (n, t) in repo.traces(&id).await?.iter().enumerate() {
                let last = t.records.last().map_or(0, |r| r.elapsed_us);
                println!(
                    "{n}: {} records over {:.3} s",
                    t.records.len(),
                    last as f64 / 1e6
                );
            }
        }
        TraceCommand::Show { image } => {
            let id = repo.resolve(image).await?;
            let merged = Trace {
                image: id,
                records: repo.prefetch_list(&id).await?,
            };
            print!("{}", merged.encode());
        }
    }
    Ok(())
}
