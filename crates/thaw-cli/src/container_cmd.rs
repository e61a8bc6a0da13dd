//! The containers a `thaw serve` daemon owns: `thaw run --detach` hands one over, and
//! `thaw ps`, `thaw logs`, `thaw stop` and `thaw rm` talk to the daemon about them.

use crate::client_cmd::ServerArgs;
use crate::run_args::{ContainerArgs, RunArgs};
use anyhow::{Context, Result};
use thaw_api::api;

/// Arguments of `thaw stop`.
#[derive(Debug, clap::Args)]
pub struct StopArgs {
    /// The container (name or id).
    pub container: String,
    /// Seconds between the image's stop signal and SIGKILL.
    #[arg(long, short = 't', default_value_t = 10)]
    pub time: u64,
    #[command(flatten)]
    pub server: ServerArgs,
}

/// Arguments of `thaw logs` and `thaw rm`.
#[derive(Debug, clap::Args)]
pub struct ContainerRef {
    /// The container (name or id).
    pub container: String,
    #[command(flatten)]
    pub server: ServerArgs,
}

fn size(option: &'static str, s: Option<&String>) -> Result<Option<u64>> {
    Ok(s.map(|v| thaw_run::parse_size(option, v)).transpose()?)
}

fn request(
    image: &str,
    command: &[String],
    runtime: &str,
    c: &ContainerArgs,
) -> Result<api::ContainerRequest> {
    // Mount sources are paths on the node: made absolute here, checked by the daemon.
    let mounts = c
        .mount
        .iter()
        .map(|m| match m.split_once(':') {
            Some((src, rest)) if !src.starts_with('/') => {
                let abs = std::path::absolute(src).with_context(|| format!("--mount {m}"))?;
                Ok(format!("{}:{rest}", abs.display()))
            }
            _ => Ok(m.clone()),
        })
        .collect::<Result<_>>()?;
    Ok(api::ContainerRequest {
        image: image.to_string(),
        command: command.to_vec(),
        env: c.env.clone(),
        workdir: c.workdir.clone(),
        user: c.user.clone(),
        name: c.name.clone(),
        runtime: Some(runtime.to_string()),
        init: c.init,
        mounts,
        host_network: c.network == "host",
        shm_size: size("--shm-size", c.shm_size.as_ref())?,
        memory: size("--memory", c.memory.as_ref())?,
        cpus: c.cpus,
        pids_limit: c.pids_limit,
        gpus: c.gpus.clone(),
        seccomp: Some(c.seccomp.clone()),
    })
}

/// `thaw run --detach`: the daemon starts the container and owns it; prints its id.
pub async fn detach(args: &RunArgs) -> Result<()> {
    let req = request(&args.image, &args.command, &args.runtime, &args.container)?;
    let c = args
        .server
        .client()?
        .create_container(&req)
        .await
        .context("asking the daemon to run the container")?;
    println!("{}", c.id);
    if args.timings {
        eprintln!(
            "timing start: {:.1} ms (in the daemon)",
            c.start_seconds * 1e3
        );
    }
    Ok(())
}

fn print(c: &api::Container) {
    let status = match (c.state.as_str(), c.exit_code) {
        ("exited", Some(code)) => format!("exited ({code})"),
        (s, _) => s.to_string(),
    };
    println!(
        "{:<16}  {:<20}  {:<12}  {:<6}  {}",
        c.id,
        c.name,
        &c.image[..12.min(c.image.len())],
        c.runtime,
        status
    );
}

/// `thaw ps`.
pub async fn ps(server: &ServerArgs) -> Result<()> {
    println!(
        "{:<16}  {:<20}  {:<12}  {:<6}  STATUS",
        "ID", "NAME", "IMAGE", "RUNTIME"
    );
    for c in server.client()?.containers().await? {
        print(&c);
    }
    Ok(())
}

/// `thaw stop`: prints the exit code.
pub async fn stop(args: &StopArgs) -> Result<()> {
    let req = api::StopRequest {
        timeout_seconds: Some(args.time),
    };
    let c = args
        .server
        .client()?
        .stop_container(&args.container, &req)
        .await?;
    print(&c);
    Ok(())
}

/// `thaw logs`.
pub async fn logs(args: &ContainerRef) -> Result<()> {
    print!(
        "{}",
        args.server
            .client()?
            .container_logs(&args.container)
            .await?
    );
    Ok(())
}

/// `thaw rm`.
pub async fn rm(args: &ContainerRef) -> Result<()> {
    let c = args
        .server
        .client()?
        .remove_container(&args.container)
        .await?;
    println!("removed {} ({})", c.name, c.id);
    Ok(())
}
