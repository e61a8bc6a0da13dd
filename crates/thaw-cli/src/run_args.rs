//! The flags of `thaw run` and `thaw bundle`, and their parsing into a
//! [`thaw_run::RunRequest`].

use anyhow::{bail, Result};
use std::path::PathBuf;
use thaw_run::{ContainerRegistry, GpuRequest, Limits, Network, RunRequest, Seccomp};

/// The container's configuration flags, shared by `thaw run` and `thaw bundle`.
#[derive(Debug, clap::Args)]
pub struct ContainerArgs {
    /// Set an environment variable (repeatable); overrides the image's.
    #[arg(long, short = 'e', value_name = "KEY=VALUE")]
    pub env: Vec<String>,
    /// The working directory; overrides the image's.
    #[arg(long, short = 'w', value_name = "DIR")]
    pub workdir: Option<String>,
    /// `USER[:GROUP]` (names from the image's /etc/passwd and /etc/group, or numbers).
    #[arg(long, short = 'u', value_name = "USER[:GROUP]")]
    pub user: Option<String>,
    /// The container's name (and host name).
    #[arg(long)]
    pub name: Option<String>,
    /// Run catatonit as PID 1: it reaps zombies and forwards signals to the program.
    #[arg(long)]
    pub init: bool,
    /// Bind a host path: `SRC:DST[:ro]` (repeatable).
    #[arg(long, value_name = "SRC:DST[:ro]")]
    pub mount: Vec<String>,
    /// `none` (a network namespace with only loopback) or `host`.
    #[arg(long, default_value = "none", value_parser = ["none", "host"])]
    pub network: String,
    /// /dev/shm's size (bytes, or with k, m, g); 64m unless given.
    #[arg(long, value_name = "SIZE")]
    pub shm_size: Option<String>,
    /// Memory limit (bytes, or with k, m, g); no swap beyond it.
    #[arg(long, short = 'm', value_name = "SIZE")]
    pub memory: Option<String>,
    /// CPUs' worth of time (for example 1.5).
    #[arg(long)]
    pub cpus: Option<f64>,
    /// Most processes and threads.
    #[arg(long)]
    pub pids_limit: Option<i64>,
    /// GPUs from CDI specifications (`/etc/cdi`, `/var/run/cdi`, or `$THAW_CDI_DIRS`):
    /// `all` or a count.
    #[arg(long, value_name = "all|N")]
    pub gpus: Option<String>,
    /// `default` (the node's profile), `unconfined`, or a profile file.
    #[arg(
        long,
        default_value = "default",
        value_name = "default|unconfined|FILE"
    )]
    pub seccomp: String,
}

/// Arguments of `thaw run`.
#[derive(Debug, clap::Args)]
pub struct RunArgs {
    /// The image (a tag, an id or an unambiguous prefix).
    pub image: String,
    /// The command and its arguments (after `--`): they replace the image's Cmd.
    #[arg(last = true)]
    pub command: Vec<String>,
    /// The OCI runtime: `runc`, `crun`, or a path.
    #[arg(long, default_value = "runc")]
    pub runtime: String,
    /// Remove the container when it exits (the default in the foreground: accepted for
    /// `docker run` habits).
    #[arg(long)]
    pub rm: bool,
    /// Keep the container's directory (its writes in `overlay/upper`, its bundle) after it
    /// exits; the mount and the runtime's container go all the same.
    #[arg(long, conflicts_with = "rm")]
    pub keep: bool,
    /// Hand the container to `thaw serve` (see --server) and print its id; `thaw ps`,
    /// `thaw logs`, `thaw stop` and `thaw rm` then talk to the daemon about it.
    #[arg(long, short = 'd', conflicts_with = "keep")]
    pub detach: bool,
    /// Print how long each step of the start took (to standard error).
    #[arg(long)]
    pub timings: bool,
    /// Give the container a terminal (standard input must be one): raw mode, window
    /// size changes passed on.
    #[arg(long, short = 't', conflicts_with = "detach")]
    pub tty: bool,
    /// Disk cache directory for chunks.
    #[arg(long)]
    pub cache: Option<PathBuf>,
    /// Disk cache size in bytes.
    #[arg(long, default_value_t = 10 << 30)]
    pub cache_size: u64,
    /// Bound in bytes of the whole-file cache next to `--cache`, for FUSE passthrough
    /// (see `thaw mount --whole-file-cache`); 0 turns passthrough off.
    #[arg(long, default_value_t = 10 << 30)]
    pub whole_file_cache: u64,
    /// Copy chunks into the disk cache even when the store is a local directory on the
    /// cache's filesystem (by default they are read from the store there: a copy would
    /// write every byte a second time on the same disk).
    #[arg(long)]
    pub copy_local_store: bool,
    /// Where containers' directories go (bundle, overlay); `$THAW_CONTAINERS_DIR`, or
    /// `/var/lib/thaw/containers`.
    #[arg(
        long,
        env = "THAW_CONTAINERS_DIR",
        default_value = "/var/lib/thaw/containers"
    )]
    pub state_dir: PathBuf,
    #[command(flatten)]
    pub container: ContainerArgs,
    /// The daemon, for --detach.
    #[command(flatten)]
    pub server: crate::client_cmd::ServerArgs,
}

/// Arguments of `thaw bundle`.
#[derive(Debug, clap::Args)]
pub struct BundleArgs {
    /// The image.
    pub image: String,
    /// The bundle's directory (missing or empty): `config.json`, `rootfs/`, `etc/`.
    pub dir: PathBuf,
    /// The command and its arguments (after `--`): they replace the image's Cmd.
    #[arg(last = true)]
    pub command: Vec<String>,
    #[command(flatten)]
    pub container: ContainerArgs,
}

/// `$THAW_RUN_DIR/runtime`: the runtimes' state roots, thaw's own.
pub fn runtime_root() -> PathBuf {
    let run =
        std::env::var_os("THAW_RUN_DIR").map_or_else(|| PathBuf::from("/run/thaw"), PathBuf::from);
    run.join("runtime")
}

pub fn parse_request(
    args: &ContainerArgs,
    command: &[String],
    hostname: &str,
) -> Result<RunRequest> {
    let size = |option, s: &Option<String>| {
        s.as_deref()
            .map(|v| thaw_run::parse_size(option, v))
            .transpose()
    };
    for kv in &args.env {
        if !thaw_core::config::is_env_entry(kv) {
            bail!("--env {kv:?} is not KEY=VALUE");
        }
    }
    if args.cpus.is_some_and(|c| !(c > 0.0 && c <= 1024.0)) {
        bail!("--cpus must be above 0");
    }
    if args.pids_limit.is_some_and(|p| p < 1) {
        bail!("--pids-limit must be at least 1");
    }
    let memory = size("--memory", &args.memory)?.map(|m| i64::try_from(m).unwrap_or(i64::MAX));
    let init = args.init.then(thaw_run::find_init).transpose()?;
    let gpus = match &args.gpus {
        Some(g) => thaw_run::cdi::resolve(GpuRequest::parse(g)?, &thaw_run::cdi::spec_dirs())?,
        None => thaw_run::GpuEdits::default(),
    };
    Ok(RunRequest {
        command: command.to_vec(),
        env: args.env.clone(),
        workdir: args.workdir.clone(),
        user: args.user.clone(),
        hostname: hostname.to_string(),
        network: if args.network == "host" {
            Network::Host
        } else {
            Network::None
        },
        mounts: args
            .mount
            .iter()
            .map(|m| thaw_run::parse_mount(m))
            .collect::<Result<_, _>>()?,
        shm_size: size("--shm-size", &args.shm_size)?,
        limits: Limits {
            memory,
            cpus: args.cpus,
            pids: args.pids_limit,
        },
        init,
        gpus,
        terminal: false,
        seccomp: match args.seccomp.as_str() {
            "default" => Seccomp::Default,
            "unconfined" => Seccomp::Unconfined,
            file => Seccomp::Profile(file.into()),
        },
    })
}

pub fn check_name(name: &str, registry: &ContainerRegistry) -> Result<()> {
    thaw_run::record::check_name(name)?;
    if registry
        .list()
        .iter()
        .any(|r| r.name == name && r.owner_alive())
    {
        bail!("a container named {name:?} is running");
    }
    Ok(())
}
