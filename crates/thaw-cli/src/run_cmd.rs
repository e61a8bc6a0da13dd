//! `thaw run`: a container from a lazily mounted image under runc or crun, in the
//! foreground. The image is mounted through a mount session with a writable overlay in
//! the container's own directory; the bundle's configuration comes from the image's
//! configuration and the flags; the container's streams, signals and exit code pass
//! through; and everything made for it is removed at the end, or, after a `kill -9`, by
//! the next `thaw run` or `thaw umount`. `thaw bundle` writes the bundle without running.

use crate::run_args::{check_name, parse_request, runtime_root, BundleArgs, RunArgs};
use crate::run_io::{
    become_subreaper, exited_already, read_pid, wait_exit, Relay, Signals, Timings,
};
use anyhow::{Context, Result};
use std::path::{Path, PathBuf};
use thaw_fuse::registry::MountRegistry;
use thaw_fuse::session::{MountSession, ReaderSource, SessionSpec};
use thaw_fuse::{FsConfig, MountOptions};
use thaw_run::{ContainerRecord, ContainerRegistry, RunRequest, Runtime};
use thaw_store::{ReaderConfig, Repository};

/// Removes what containers of dead `thaw run` processes (or daemons) left: the runtime's
/// container, the overlay and FUSE mounts, the container's directory and its record.
/// Returns the directories of the containers cleaned up.
pub fn clean_dead_containers() -> Vec<PathBuf> {
    // A daemon's containers whose roots are held for its successor are its to adopt.
    let dead = thaw_server::containers::clean_dead_unheld(
        &ContainerRegistry::node(),
        &MountRegistry::node(),
    );
    for r in &dead {
        eprintln!(
            "cleaned up container {} ({}) left by a process that died",
            r.name, r.id
        );
    }
    dead.into_iter().map(|r| r.dir).collect()
}

/// Removes a container's directory, unless something is still mounted in it.
fn remove_dir(dir: &Path) -> Result<()> {
    Ok(thaw_run::record::remove_container_dir(dir)?)
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
        whole_files: args.whole_file_cache,
        copy_local_store: args.copy_local_store,
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
    let mut timings = Timings::new();
    let signals = Signals::install()?;
    let _ = clean_dead_containers();
    let registry = ContainerRegistry::node();
    let id = format!("{:016x}", rand::random::<u64>());
    let name = args
        .container
        .name
        .clone()
        .unwrap_or_else(|| id[..12].to_string());
    check_name(&name, &registry)?;
    let mut request = parse_request(&args.container, &args.command, &name)?;
    if args.tty && !std::io::IsTerminal::is_terminal(&std::io::stdin()) {
        anyhow::bail!("--tty needs standard input to be a terminal");
    }
    request.terminal = args.tty;
    let runtime = Runtime::find(&args.runtime, &runtime_root())?;
    let image = repo.resolve(&args.image).await?;
    let manifest = repo.get_manifest(&image).await?;
    // The packs may have been listed from the cache's copy, from before this image.
    repo.ensure_packs_for(manifest.chunks.iter().map(|c| c.id))
        .await?;
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
        signals,
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
    signals: Signals,
) -> Result<i32> {
    let session = mount_root(repo, &args.image, &made.id, &made.dir, args).await?;
    let rootfs = session.mountpoint().to_path_buf();
    made.session = Some(session);
    timings.mark("mount");
    let container = thaw_run::prepare(&rootfs, config, request, &made.dir.join("etc"))?;
    thaw_run::write_bundle(&made.dir, &container)?;
    timings.mark("bundle");
    become_subreaper()?;
    let (mut relay, streams) = Relay::streams(request.terminal, &made.dir.join("console.sock"))?;
    let (pid_file, log) = (made.dir.join("init.pid"), made.dir.join("runtime.log"));
    // `create` holds the only other copies of the pipes' write ends; once it returns, only
    // the container's processes hold them, and the relay ends when they exit.
    made.created = true;
    let (runtime, id, dir) = (made.runtime.clone(), made.id.clone(), made.dir.clone());
    tokio::task::spawn_blocking(move || runtime.create(&id, &dir, &pid_file, &log, streams))
        .await
        .context("the create task")??;
    relay.attach()?;
    timings.mark("create");
    let pid = read_pid(&made.dir.join("init.pid"))?;
    if let Err(e) = made.runtime.start(&made.id, &made.dir.join("runtime.log")) {
        // Killed between create and start: report how it ended, as a started one would.
        return exited_already(pid).ok_or_else(|| e.into());
    }
    timings.mark("start");
    let (done_tx, done_rx) = tokio::sync::oneshot::channel::<()>();
    let forwarding = signals.forward(&made.runtime, &made.id, async {
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
