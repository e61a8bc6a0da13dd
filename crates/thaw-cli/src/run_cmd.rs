//! `thaw run`: a container from a lazily mounted image under runc or crun, in the
//! foreground. The image is mounted through a mount session with a writable overlay in
//! the container's own directory; the bundle's configuration comes from the image's
//! configuration and the flags; the container's streams, signals and exit code pass
//! through; and everything made for it is removed at the end, or, after a `kill -9`, by
//! the next `thaw run` or `thaw umount`. `thaw bundle` writes the bundle without running.

use crate::run_io::{become_subreaper, forward_signals, read_pid, wait_exit, Relay, Timings};
use anyhow::{bail, Context, Result};
use std::path::{Path, PathBuf};
use thaw_fuse::registry::MountRegistry;
use thaw_fuse::session::{MountSession, ReaderSource, SessionSpec};
use thaw_fuse::{FsConfig, MountOptions};
use thaw_run::{
    ContainerRecord, ContainerRegistry, Limits, Network, RunRequest, Runtime, Seccomp, Streams,
};
use thaw_store::{ReaderConfig, Repository};

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
    /// GPUs from CDI specifications: `all` or a count.
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
    /// Hand the container to `thaw serve` and return.
    #[arg(long, short = 'd')]
    pub detach: bool,
    /// Print how long each step of the start took (to standard error).
    #[arg(long)]
    pub timings: bool,
    /// Disk cache directory for chunks.
    #[arg(long)]
    pub cache: Option<PathBuf>,
    /// Disk cache size in bytes.
    #[arg(long, default_value_t = 10 << 30)]
    pub cache_size: u64,
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
fn runtime_root() -> PathBuf {
    let run =
        std::env::var_os("THAW_RUN_DIR").map_or_else(|| PathBuf::from("/run/thaw"), PathBuf::from);
    run.join("runtime")
}

fn parse_request(args: &ContainerArgs, command: &[String], hostname: &str) -> Result<RunRequest> {
    let size = |option, s: &Option<String>| {
        s.as_deref()
            .map(|v| thaw_run::parse_size(option, v))
            .transpose()
    };
    for kv in &args.env {
        if kv.split_once('=').is_none_or(|(k, _)| k.is_empty()) {
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
    let init = args.init.then(find_init).transpose()?;
    if args.gpus.is_some() {
        bail!("--gpus: CDI devices are not supported yet");
    }
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
        devices: Vec::new(),
        terminal: false,
        seccomp: match args.seccomp.as_str() {
            "default" => Seccomp::Default,
            "unconfined" => Seccomp::Unconfined,
            file => Seccomp::Profile(file.into()),
        },
    })
}

/// catatonit on the host (statically linked in Debian, so it runs in any image).
fn find_init() -> Result<PathBuf> {
    ["/usr/bin/catatonit", "/usr/libexec/catatonit/catatonit"]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.is_file())
        .context("--init needs catatonit (Debian: apt-get install catatonit)")
}

fn check_name(name: &str, registry: &ContainerRegistry) -> Result<()> {
    let valid = name
        .chars()
        .next()
        .is_some_and(|c| c.is_ascii_alphanumeric())
        && name.len() <= 63
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "_.-".contains(c));
    if !valid {
        bail!("--name {name:?}: letters, digits, '_', '.' and '-', starting with a letter or digit, at most 63");
    }
    if registry
        .list()
        .iter()
        .any(|r| r.name == name && r.owner_alive())
    {
        bail!("a container named {name:?} is running");
    }
    Ok(())
}

/// Removes what containers of dead `thaw run` processes left: the runtime's container,
/// the overlay and FUSE mounts, the container's directory and its record. Returns the
/// directories of the containers cleaned up.
pub fn clean_dead_containers() -> Vec<PathBuf> {
    let registry = ContainerRegistry::node();
    let dead = registry.dead();
    for r in &dead {
        if let Ok(runtime) = Runtime::find(
            &r.runtime.to_string_lossy(),
            r.runtime_root.parent().unwrap_or(Path::new("/")),
        ) {
            if let Err(e) = runtime.delete(&r.id) {
                tracing::warn!(id = %r.id, error = %e, "a dead run's container stays");
            }
        }
        MountRegistry::node().clean_dead();
        if let Err(e) = remove_dir(&r.dir) {
            tracing::warn!(dir = %r.dir.display(), error = %e, "a dead run's directory stays");
        }
        registry.remove(&r.id);
        eprintln!(
            "cleaned up container {} ({}) left by a process that died",
            r.name, r.id
        );
    }
    dead.into_iter().map(|r| r.dir).collect()
}

/// Removes a container's directory, unless something is still mounted in it.
fn remove_dir(dir: &Path) -> Result<()> {
    if !dir.exists() {
        return Ok(());
    }
    let mounted = thaw_fuse::mount::mount_points()
        .into_iter()
        .any(|m| m.starts_with(dir));
    if mounted {
        bail!("{} still has a mount in it", dir.display());
    }
    std::fs::remove_dir_all(dir).with_context(|| format!("removing {}", dir.display()))
}

/// What has been made for one container, so that it is removed in reverse order whatever
/// step failed.
struct Made {
    id: String,
    dir: PathBuf,
    registry: ContainerRegistry,
    runtime: Runtime,
    session: Option<MountSession>,
    created: bool,
    keep: bool,
}

impl Made {
    async fn teardown(mut self) {
        if self.created {
            if let Err(e) = self.runtime.delete(&self.id) {
                eprintln!("thaw: {e}");
            }
        }
        if let Some(session) = self.session.take() {
            if let Err(e) = session.end().await {
                eprintln!("thaw: unmounting the container's root: {e}");
            }
        }
        if !self.keep {
            if let Err(e) = remove_dir(&self.dir) {
                eprintln!("thaw: {e:#}");
            }
        } else {
            eprintln!(
                "kept {} (the container's writes are in overlay/upper)",
                self.dir.display()
            );
        }
        self.registry.remove(&self.id);
    }
}

/// Mounts `image` with a writable overlay at `dir/rootfs`, its upper in `dir/overlay`.
async fn mount_root(
    repo: &Repository,
    image: &str,
    id: &str,
    dir: &Path,
    args: &RunArgs,
) -> Result<MountSession> {
    let reader = ReaderSource::Own(ReaderConfig {
        disk: args.cache.clone().map(|c| (c, args.cache_size)),
        ..Default::default()
    });
    let spec = SessionSpec {
        id: id.to_string(),
        mountpoint: dir.join("rootfs"),
        fs: FsConfig::default(),
        options: MountOptions {
            writable: Some(dir.join("overlay")),
            ..Default::default()
        },
        record_trace: None,
        requested_by: format!("thaw run {id}"),
        daemon: None,
    };
    std::fs::create_dir_all(&spec.mountpoint)
        .with_context(|| format!("creating {}", spec.mountpoint.display()))?;
    MountSession::open(repo, image, reader, true, spec, MountRegistry::node())
        .await
        .with_context(|| format!("mounting {image}"))
}

fn new_dir(state_dir: &Path, id: &str) -> Result<PathBuf> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(state_dir)
        .with_context(|| format!("creating {}", state_dir.display()))?;
    let dir = state_dir.join(id);
    std::fs::DirBuilder::new()
        .mode(0o700)
        .create(&dir)
        .with_context(|| format!("creating {}", dir.display()))?;
    Ok(dir)
}

/// `thaw run`: returns the container's exit code.
pub async fn run(repo: &Repository, args: &RunArgs) -> Result<i32> {
    if args.detach {
        bail!("--detach needs the node daemon to own the container, which `thaw serve` cannot do yet; run in the foreground");
    }
    let mut timings = Timings::new();
    let _ = clean_dead_containers();
    let registry = ContainerRegistry::node();
    let id = format!("{:016x}", rand::random::<u64>());
    let name = args
        .container
        .name
        .clone()
        .unwrap_or_else(|| id[..12].to_string());
    check_name(&name, &registry)?;
    let request = parse_request(&args.container, &args.command, &name)?;
    let runtime = Runtime::find(&args.runtime, &runtime_root())?;
    let image = repo.resolve(&args.image).await?;
    let manifest = repo.get_manifest(&image).await?;
    let dir = new_dir(&args.state_dir, &id)?;
    registry.write(&ContainerRecord::new(
        &id,
        &name,
        &image.to_string(),
        &runtime,
        &dir,
    ))?;
    let mut made = Made {
        id,
        dir,
        registry,
        runtime,
        session: None,
        created: false,
        keep: args.keep,
    };
    let result = run_made(
        repo,
        args,
        &request,
        manifest.config.as_ref(),
        &mut made,
        &mut timings,
    )
    .await;
    made.teardown().await;
    result
}

async fn run_made(
    repo: &Repository,
    args: &RunArgs,
    request: &RunRequest,
    config: Option<&thaw_core::ImageConfig>,
    made: &mut Made,
    timings: &mut Timings,
) -> Result<i32> {
    let session = mount_root(repo, &args.image, &made.id, &made.dir, args).await?;
    let rootfs = session.mountpoint().to_path_buf();
    made.session = Some(session);
    timings.mark("mount");
    let container = thaw_run::prepare(&rootfs, config, request, &made.dir.join("etc"))?;
    thaw_run::write_bundle(&made.dir, &container)?;
    timings.mark("bundle");
    become_subreaper()?;
    let (relay, ends) = Relay::start()?;
    let (pid_file, log) = (made.dir.join("init.pid"), made.dir.join("runtime.log"));
    let streams = Streams {
        stdin: std::process::Stdio::inherit(),
        stdout: ends.stdout.into(),
        stderr: ends.stderr.into(),
    };
    // `create` holds the only other copies of the write ends; once it returns, only the
    // container's processes hold them, and the relay ends when they exit.
    made.created = true;
    let (runtime, id, dir) = (made.runtime.clone(), made.id.clone(), made.dir.clone());
    tokio::task::spawn_blocking(move || runtime.create(&id, &dir, &pid_file, &log, streams))
        .await
        .context("the create task")??;
    timings.mark("create");
    let pid = read_pid(&made.dir.join("init.pid"))?;
    made.runtime
        .start(&made.id, &made.dir.join("runtime.log"))?;
    timings.mark("start");
    let (done_tx, done_rx) = tokio::sync::oneshot::channel::<()>();
    let forwarding = forward_signals(&made.runtime, &made.id, async {
        let _ = done_rx.await;
    });
    let waiting = async {
        let code = wait_exit(pid).await;
        let _ = done_tx.send(());
        code
    };
    let ((), code) = tokio::join!(forwarding, waiting);
    let code = code?;
    timings.mark("exit");
    let first_byte = relay.first_byte();
    tokio::task::spawn_blocking(move || relay.finish())
        .await
        .context("the relay")?;
    if args.timings {
        eprint!("{}", timings.render(first_byte));
    }
    Ok(code)
}

/// `thaw bundle`: the image unpacked into `DIR/rootfs` and the `config.json` that
/// `thaw run` would use, for a runtime to run by hand (`runc run --bundle DIR ID`).
pub async fn bundle(repo: &Repository, args: &BundleArgs) -> Result<()> {
    let id = repo.resolve(&args.image).await?;
    let manifest = repo.get_manifest(&id).await?;
    let name = args
        .container
        .name
        .clone()
        .unwrap_or_else(|| id.to_string()[..12].to_string());
    let request = parse_request(&args.container, &args.command, &name)?;
    let rootfs = args.dir.join("rootfs");
    let reader = thaw_store::ChunkReader::new(repo.packs().clone(), ReaderConfig::default())?;
    thaw_image::export(&reader, &manifest, &rootfs)
        .await
        .with_context(|| format!("unpacking {id} into {}", rootfs.display()))?;
    let container = thaw_run::prepare(
        &rootfs,
        manifest.config.as_ref(),
        &request,
        &args.dir.join("etc"),
    )?;
    thaw_run::write_bundle(&args.dir, &container)?;
    println!("bundle: {}", args.dir.display());
    println!("command: {}", serde_json::json!(container.args));
    Ok(())
}
