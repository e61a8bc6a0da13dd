//! Deciding a container's configuration from its image's configuration and the flags of
//! `thaw run`, as `docker run` would: arguments after the image replace its `Cmd` and keep
//! its `Entrypoint`; flags override the image's environment, working directory and user;
//! the user and the program are looked up in the image itself, before the runtime runs.

use crate::cdi::GpuEdits;
use crate::defaults::{DEFAULT_PATH, SHM_SIZE};
use crate::error::{io_err, RunError};
use crate::rootfs::{find_command, RootFs};
use crate::spec::{BindMount, ContainerConfig, Limits, Network};
use crate::user::resolve_user;
use std::path::{Path, PathBuf};
use thaw_core::config::set_env;
use thaw_core::ImageConfig;

/// What the user asked for (the flags of `thaw run`), parsed.
#[derive(Debug, Clone, Default)]
pub struct RunRequest {
    /// Arguments after the image: they replace the image's `Cmd`.
    pub command: Vec<String>,
    /// `--env KEY=VALUE`, in order.
    pub env: Vec<String>,
    /// `--workdir`.
    pub workdir: Option<String>,
    /// `--user USER[:GROUP]`.
    pub user: Option<String>,
    /// The host name (the container's name).
    pub hostname: String,
    /// `--network`.
    pub network: Network,
    /// `--mount SRC:DST[:ro]`.
    pub mounts: Vec<BindMount>,
    /// `--shm-size`.
    pub shm_size: Option<u64>,
    /// `--memory`, `--cpus`, `--pids-limit`.
    pub limits: Limits,
    /// `--init`: the init program on the host (catatonit), run as PID 1.
    pub init: Option<PathBuf>,
    /// What `--gpus` adds: devices, mounts, environment, hooks.
    pub gpus: GpuEdits,
    /// Whether a terminal is attached.
    pub terminal: bool,
    /// `--seccomp`.
    pub seccomp: Seccomp,
}

/// Which seccomp profile a container gets.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum Seccomp {
    /// The node's profile ([`crate::seccomp::profile_path`]); refused when missing.
    #[default]
    Default,
    /// A profile file in the same format.
    Profile(PathBuf),
    /// None (`--seccomp unconfined`).
    Unconfined,
}

/// Where the init program appears in the container: on `/dev`'s tmpfs, so nothing is
/// added to the image's tree.
pub const INIT_PATH: &str = "/dev/init";

/// catatonit on the host, for `--init` (statically linked in Debian, so it runs in any
/// image).
pub fn find_init() -> Result<PathBuf, RunError> {
    ["/usr/bin/catatonit", "/usr/libexec/catatonit/catatonit"]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.is_file())
        .ok_or_else(|| RunError::BadOption {
            option: "--init",
            reason: "needs catatonit (Debian: apt-get install catatonit)".into(),
        })
}

/// Parses `--mount SRC:DST[:ro|rw]`: the source must exist (it is resolved now, so a later
/// symlink swap cannot redirect it), the destination must be absolute and not `/`.
pub fn parse_mount(arg: &str) -> Result<BindMount, RunError> {
    let bad = |reason: String| RunError::BadOption {
        option: "--mount",
        reason,
    };
    let parts: Vec<&str> = arg.split(':').collect();
    let (src, dst, readonly) = match parts[..] {
        [s, d] => (s, d, false),
        [s, d, "ro"] => (s, d, true),
        [s, d, "rw"] => (s, d, false),
        _ => return Err(bad(format!("{arg:?} is not SRC:DST[:ro]"))),
    };
    if !dst.starts_with('/')
        || dst.trim_matches('/').is_empty()
        || dst.split('/').any(|c| c == "..")
    {
        return Err(bad(format!(
            "the destination {dst:?} must be an absolute path other than /, without .."
        )));
    }
    let source = std::fs::canonicalize(src)
        .map_err(|e| bad(format!("the source {src:?} cannot be used: {e}")))?;
    Ok(BindMount {
        source,
        destination: dst.to_string(),
        readonly,
    })
}

/// Parses a size: bytes, or a number with `k`, `m`, `g` (powers of 1024), as Docker.
pub fn parse_size(option: &'static str, arg: &str) -> Result<u64, RunError> {
    let lower = arg.trim().to_ascii_lowercase();
    let lower = lower.strip_suffix('b').unwrap_or(&lower);
    let (digits, shift) = match lower.char_indices().last() {
        Some((i, 'k')) => (&lower[..i], 10),
        Some((i, 'm')) => (&lower[..i], 20),
        Some((i, 'g')) => (&lower[..i], 30),
        _ => (lower, 0),
    };
    digits
        .parse::<u64>()
        .ok()
        .and_then(|n| n.checked_mul(1 << shift))
        .filter(|n| *n > 0)
        .ok_or_else(|| RunError::BadOption {
            option,
            reason: format!("{arg:?} is not a size (bytes, or a number with k, m or g)"),
        })
}

fn has_env(env: &[String], key: &str) -> bool {
    env.iter()
        .any(|e| e.split_once('=').is_some_and(|(k, _)| k == key))
}

/// The container's program: entrypoint, then the command given or the image's `Cmd`.
fn arguments(image: &ImageConfig, req: &RunRequest) -> Result<Vec<String>, RunError> {
    let mut args = image.entrypoint.clone().unwrap_or_default();
    if req.command.is_empty() {
        args.extend(image.cmd.iter().flatten().cloned());
    } else {
        args.extend(req.command.iter().cloned());
    }
    if args.is_empty() {
        return Err(RunError::NoCommand);
    }
    Ok(args)
}

/// The container's environment: its host name, the image's, the GPUs', the flags' (each
/// replacing an earlier value of its key), then `PATH`, `HOME` and `TERM` if unset.
fn environment(image: &ImageConfig, req: &RunRequest, home: &str) -> Vec<String> {
    let mut env = vec![format!("HOSTNAME={}", req.hostname)];
    for kv in image.env.iter().chain(&req.gpus.env).chain(&req.env) {
        set_env(&mut env, kv);
    }
    if !has_env(&env, "PATH") {
        env.insert(0, format!("PATH={DEFAULT_PATH}"));
    }
    if !has_env(&env, "HOME") {
        env.push(format!("HOME={home}"));
    }
    if req.terminal && !has_env(&env, "TERM") {
        env.push("TERM=xterm".into());
    }
    env
}

/// The seccomp profile asked for, translated for this host and the default capabilities.
fn seccomp_profile(choice: &Seccomp) -> Result<Option<oci_spec::runtime::LinuxSeccomp>, RunError> {
    let caps: Vec<String> = crate::defaults::CAPABILITIES
        .iter()
        .map(|c| c.to_string())
        .collect();
    let target = crate::seccomp::Target {
        arch: crate::seccomp::host_arch(),
        caps: &caps,
        kernel: crate::seccomp::running_kernel(),
    };
    let path = match choice {
        Seccomp::Default => crate::seccomp::profile_path(),
        Seccomp::Profile(path) => path.clone(),
        Seccomp::Unconfined => return Ok(None),
    };
    crate::seccomp::load_profile(&path, &target).map(Some)
}

/// Decides the configuration of a container over `rootfs`, writing its `/etc/hosts`,
/// `/etc/hostname` and `/etc/resolv.conf` into `etc_dir`.
pub fn prepare(
    rootfs: &Path,
    image: Option<&ImageConfig>,
    req: &RunRequest,
    etc_dir: &Path,
) -> Result<ContainerConfig, RunError> {
    let empty = ImageConfig::default();
    let image = image.unwrap_or(&empty);
    let root = RootFs::open(rootfs)?;
    let user = resolve_user(&root, req.user.as_deref().unwrap_or(&image.user))?;
    let cwd = req
        .workdir
        .clone()
        .filter(|w| !w.is_empty())
        .unwrap_or_else(|| image.working_dir.clone());
    let cwd = if cwd.is_empty() { "/".to_string() } else { cwd };
    if !cwd.starts_with('/') {
        return Err(RunError::BadOption {
            option: "--workdir",
            reason: format!("{cwd:?} is not absolute"),
        });
    }
    let env = environment(image, req, &user.home);
    let mut args = arguments(image, req)?;
    // A program bind-mounted from the host (`--mount` onto its absolute path) is not in
    // the image: the runtime will find it there.
    let bound = req
        .mounts
        .iter()
        .any(|m| Path::new(&args[0]) == Path::new(&m.destination));
    if !bound {
        find_command(&root, &args[0], &env, &cwd)?;
    }
    let mut binds = etc_files(etc_dir, &req.hostname, req.network)?;
    binds.extend(req.mounts.iter().cloned());
    if let Some(init) = &req.init {
        binds.push(BindMount {
            source: init.clone(),
            destination: INIT_PATH.into(),
            readonly: true,
        });
        args.splice(0..0, [INIT_PATH.to_string(), "--".to_string()]);
    }
    let seccomp = seccomp_profile(&req.seccomp)?;
    Ok(ContainerConfig {
        rootfs: rootfs.to_path_buf(),
        args,
        env,
        cwd,
        user,
        hostname: req.hostname.clone(),
        network: req.network,
        binds,
        shm_size: req.shm_size.unwrap_or(SHM_SIZE),
        limits: req.limits,
        devices: req.gpus.devices.clone(),
        mounts: req.gpus.mounts.clone(),
        hooks: req.gpus.hooks.clone(),
        seccomp,
        terminal: req.terminal,
    })
}

/// Writes `/etc/hosts`, `/etc/hostname` and `/etc/resolv.conf` for the container (the
/// host's resolver; with the host's network, its hosts file too) and returns their binds.
fn etc_files(dir: &Path, hostname: &str, network: Network) -> Result<Vec<BindMount>, RunError> {
    std::fs::create_dir_all(dir).map_err(io_err("create", dir))?;
    let hosts = match network {
        Network::Host => std::fs::read_to_string("/etc/hosts").unwrap_or_default(),
        Network::None => format!(
            "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n127.0.1.1\t{hostname}\n"
        ),
    };
    let resolv = std::fs::read_to_string("/etc/resolv.conf").unwrap_or_default();
    let mut binds = Vec::new();
    for (name, text) in [
        ("hosts", hosts),
        ("hostname", format!("{hostname}\n")),
        ("resolv.conf", resolv),
    ] {
        let path = dir.join(name);
        std::fs::write(&path, text).map_err(io_err("write", &path))?;
        binds.push(BindMount {
            source: path,
            destination: format!("/etc/{name}"),
            readonly: false,
        });
    }
    Ok(binds)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn image_root() -> tempfile::TempDir {
        let d = tempfile::tempdir().unwrap();
        for dir in ["etc", "bin", "srv"] {
            std::fs::create_dir_all(d.path().join(dir)).unwrap();
        }
        std::fs::write(
            d.path().join("etc/passwd"),
            "root:x:0:0::/root:/bin/sh\napp:x:1000:1000::/home/app:/bin/sh\n",
        )
        .unwrap();
        std::fs::write(d.path().join("etc/group"), "root:x:0:\n").unwrap();
        let sh = d.path().join("bin/sh");
        std::fs::write(&sh, "#!").unwrap();
        std::fs::set_permissions(&sh, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
        d
    }

    fn image() -> ImageConfig {
        ImageConfig {
            entrypoint: Some(vec!["/bin/sh".into(), "-c".into()]),
            cmd: Some(vec!["echo hi".into()]),
            env: vec!["PATH=/bin".into(), "A=1".into()],
            working_dir: "/srv".into(),
            user: "app".into(),
            ..Default::default()
        }
    }

    #[test]
    fn flags_override_the_image_as_docker_run_does() {
        let root = image_root();
        let etc = tempfile::tempdir().unwrap();
        let req = RunRequest {
            hostname: "h".into(),
            ..Default::default()
        };
        let c = prepare(root.path(), Some(&image()), &req, etc.path()).unwrap();
        assert_eq!(c.args, ["/bin/sh", "-c", "echo hi"]);
        assert_eq!(c.env, ["HOSTNAME=h", "PATH=/bin", "A=1", "HOME=/home/app"]);
        assert_eq!((c.cwd.as_str(), c.user.uid), ("/srv", 1000));
        let req = RunRequest {
            hostname: "h".into(),
            command: vec!["exit 3".into()],
            env: vec!["A=2".into()],
            workdir: Some("/tmp".into()),
            user: Some("0".into()),
            init: Some("/usr/bin/catatonit".into()),
            ..Default::default()
        };
        let c = prepare(root.path(), Some(&image()), &req, etc.path()).unwrap();
        assert_eq!(c.args, [INIT_PATH, "--", "/bin/sh", "-c", "exit 3"]);
        assert!(c.env.contains(&"A=2".to_string()) && !c.env.contains(&"A=1".to_string()));
        assert_eq!((c.cwd.as_str(), c.user.uid), ("/tmp", 0));
        let hosts = std::fs::read_to_string(etc.path().join("hosts")).unwrap();
        assert!(hosts.contains("127.0.1.1\th"), "{hosts}");
    }

    #[test]
    fn what_cannot_run_is_refused_before_the_runtime_runs() {
        let root = image_root();
        let etc = tempfile::tempdir().unwrap();
        let req = |command: &[&str], user: Option<&str>| RunRequest {
            hostname: "h".into(),
            command: command.iter().map(|s| s.to_string()).collect(),
            user: user.map(String::from),
            ..Default::default()
        };
        let no_entry = ImageConfig::default();
        let err = |r: RunRequest, i: &ImageConfig| {
            prepare(root.path(), Some(i), &r, etc.path())
                .unwrap_err()
                .to_string()
        };
        assert!(err(req(&[], None), &no_entry).contains("no command"));
        assert!(err(req(&["nosuch"], None), &no_entry)
            .contains("\"nosuch\" not found in the image (searched PATH="));
        assert!(err(req(&["/bin/nosuch"], None), &no_entry).contains("not found"));
        assert!(err(req(&["sh"], Some("ghost")), &no_entry)
            .contains("\"ghost\" not found in the image's /etc/passwd"));
        prepare(
            root.path(),
            Some(&no_entry),
            &req(&["sh"], None),
            etc.path(),
        )
        .unwrap();
    }

    #[test]
    fn mounts_and_sizes_parse_or_say_why_not() {
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().to_str().unwrap();
        let m = parse_mount(&format!("{src}:/data:ro")).unwrap();
        assert_eq!((m.destination.as_str(), m.readonly), ("/data", true));
        assert!(!parse_mount(&format!("{src}:/data")).unwrap().readonly);
        for bad in [
            format!("{src}/missing:/d"),
            format!("{src}:rel"),
            format!("{src}:/"),
            format!("{src}:/a/../b"),
            "x".into(),
            format!("{src}:/d:zz"),
        ] {
            let e = parse_mount(&bad).unwrap_err();
            assert!(e.to_string().starts_with("--mount"), "{bad}: {e}");
        }
        assert_eq!(parse_size("--memory", "64m").unwrap(), 64 << 20);
        assert_eq!(parse_size("--memory", "1G").unwrap(), 1 << 30);
        assert_eq!(parse_size("--memory", "4096").unwrap(), 4096);
        for bad in ["", "0", "-1", "1x", "99999999999g"] {
            assert!(parse_size("--memory", bad).is_err(), "{bad}");
        }
    }
}
