//! The node daemon's client commands: `thaw prewarm`, `thaw jobs` and `thaw cache stats`.
//! They speak the daemon's API through `thaw-api` alone.

use anyhow::{bail, Context, Result};
use std::path::PathBuf;
use std::time::Duration;
use thaw_api::api::{self, JobState, NamedScope, Scope};
use thaw_api::Client;

/// The daemon's socket, where `thaw serve` listens and the client commands look.
pub const DEFAULT_SOCKET: &str = "/run/thaw/thaw.sock";
const DEFAULT_SOCKET_URL: &str = "unix:/run/thaw/thaw.sock";

/// Where the daemon is, for the client commands.
#[derive(Debug, clap::Args)]
pub struct ServerArgs {
    /// The daemon: its socket (`unix:PATH`) or, with a token, `http://HOST:PORT`.
    #[arg(long, env = "THAW_SERVER", default_value = DEFAULT_SOCKET_URL)]
    pub server: String,
    /// A file holding the bearer token for TCP (else THAW_TOKEN).
    #[arg(long)]
    pub token_file: Option<PathBuf>,
}

impl ServerArgs {
    pub fn client(&self) -> Result<Client> {
        Ok(Client::new(&self.server, token(self.token_file.as_ref())?))
    }
}

/// Arguments of `thaw prewarm`.
#[derive(Debug, clap::Args)]
pub struct PrewarmArgs {
    pub image: String,
    /// `trace` (the image's start-up traces) or `all`.
    #[arg(long, default_value = "trace", conflicts_with = "path")]
    pub scope: String,
    /// Warm these files or directories instead (repeatable).
    #[arg(long)]
    pub path: Vec<String>,
    /// Then load this safetensors file (or checkpoint index) of the image into the
    /// daemon's resident weights (repeatable).
    #[arg(long)]
    pub weights: Vec<String>,
    /// Return once the job is accepted.
    #[arg(long)]
    pub detach: bool,
    #[command(flatten)]
    pub server: ServerArgs,
}

pub async fn prewarm(args: &PrewarmArgs) -> Result<()> {
    let scope = if !args.path.is_empty() {
        Scope::Paths {
            paths: args.path.clone(),
        }
    } else {
        match args.scope.as_str() {
            "trace" => Scope::Named(NamedScope::Trace),
            "all" => Scope::Named(NamedScope::All),
            other => bail!("--scope is trace or all, not {other:?}"),
        }
    };
    let client = args.server.client()?;
    let job = client
        .prewarm(&api::PrewarmRequest {
            image: args.image.clone(),
            scope,
            weights: args.weights.clone(),
        })
        .await?;
    println!("job: {}", job.id);
    if args.detach {
        return Ok(());
    }
    let bar = indicatif::ProgressBar::new(job.bytes_total);
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "{bar:40} {bytes}/{total_bytes} {binary_bytes_per_sec} {msg}",
        )
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    let done = loop {
        let j = client.job(&job.id).await?;
        bar.set_length(j.bytes_total);
        bar.set_position(j.bytes_done);
        bar.set_message(format!("{}/{} chunks", j.chunks_done, j.chunks_total));
        if j.state.is_finished() {
            break j;
        }
        // Often enough that a benchmark timing the whole command is not padded by it.
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    bar.finish_and_clear();
    print_job(&done);
    match done.state {
        JobState::Done => Ok(()),
        s => bail!(
            "prewarm {} ended {}: {}",
            done.id,
            s.as_str(),
            done.last_error.unwrap_or_default()
        ),
    }
}

fn print_job(j: &api::Job) {
    let weights = if j.weights_resident > 0 {
        format!("  weights resident {}", j.weights_resident)
    } else {
        String::new()
    };
    println!(
        "{}  {:<9}  {}  chunks {}/{} ({} cached)  bytes {}/{}  {:.1} MB/s  errors {}{weights}",
        j.id,
        j.state.as_str(),
        &j.image[..12.min(j.image.len())],
        j.chunks_done,
        j.chunks_total,
        j.chunks_cached,
        j.bytes_done,
        j.bytes_total,
        j.rate_bytes_per_second / 1e6,
        j.errors
    );
}

pub async fn jobs(server: &ServerArgs) -> Result<()> {
    for j in server.client()?.jobs().await? {
        print_job(&j);
    }
    Ok(())
}

pub async fn cache_stats(server: &ServerArgs) -> Result<()> {
    let c = server.client()?.cache().await?;
    for (name, t) in [("memory", &c.memory), ("disk", &c.disk)] {
        println!(
            "{name}: {} of {} bytes, {} entries, hits {} misses {} hit_ratio {}",
            t.bytes,
            t.capacity,
            t.entries,
            t.hits,
            t.misses,
            t.hit_ratio.map_or("-".into(), |r| format!("{r:.3}"))
        );
    }
    let s = &c.store;
    println!(
        "store: fetched {} chunks ({} bytes), prefetched {} chunks ({} bytes), integrity failures {}",
        s.fetched_chunks, s.fetched_bytes, s.prefetched_chunks, s.prefetched_bytes, s.integrity_failures
    );
    Ok(())
}

/// The bearer token: from a file, else `THAW_TOKEN` (none if unset or empty).
pub fn token(file: Option<&PathBuf>) -> Result<Option<String>> {
    if let Some(f) = file {
        let t = std::fs::read_to_string(f)
            .with_context(|| format!("reading token file {}", f.display()))?;
        return Ok(Some(t.trim().to_string()));
    }
    Ok(std::env::var("THAW_TOKEN").ok().filter(|t| !t.is_empty()))
}
