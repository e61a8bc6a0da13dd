//! A `POST /v1/containers` request checked and turned into what `thaw_run` takes, every
//! host-side name (mount sources, CDI devices, catatonit) resolved on the node.

use crate::error::ApiError;
use thaw_api::api;
use thaw_run::RunRequest;

/// The signal number of an image's `StopSignal` (`SIGQUIT`, `QUIT`, `3`); SIGTERM when
/// unset or unknown.
pub(crate) fn stop_signal(name: Option<&str>) -> i32 {
    let Some(name) = name else {
        return libc::SIGTERM;
    };
    if let Ok(n) = name.parse::<i32>() {
        return n;
    }
    let bare = name.trim_start_matches("SIG");
    [
        ("HUP", libc::SIGHUP),
        ("INT", libc::SIGINT),
        ("QUIT", libc::SIGQUIT),
        ("KILL", libc::SIGKILL),
        ("USR1", libc::SIGUSR1),
        ("USR2", libc::SIGUSR2),
        ("TERM", libc::SIGTERM),
        ("WINCH", libc::SIGWINCH),
    ]
    .iter()
    .find(|(n, _)| *n == bare)
    .map_or(libc::SIGTERM, |(_, s)| *s)
}

/// The request as `thaw_run` takes it, every host-side name resolved now.
pub(crate) fn run_request(
    req: &api::ContainerRequest,
    hostname: &str,
) -> Result<RunRequest, ApiError> {
    let bad = |e: thaw_run::RunError| ApiError::invalid(e.to_string());
    let gpus = match &req.gpus {
        Some(g) => thaw_run::cdi::resolve(
            thaw_run::GpuRequest::parse(g).map_err(bad)?,
            &thaw_run::cdi::spec_dirs(),
        )
        .map_err(bad)?,
        None => thaw_run::GpuEdits::default(),
    };
    Ok(RunRequest {
        command: req.command.clone(),
        env: req.env.clone(),
        workdir: req.workdir.clone(),
        user: req.user.clone(),
        hostname: hostname.to_string(),
        network: if req.host_network {
            thaw_run::Network::Host
        } else {
            thaw_run::Network::None
        },
        mounts: req
            .mounts
            .iter()
            .map(|m| thaw_run::parse_mount(m))
            .collect::<Result<_, _>>()
            .map_err(bad)?,
        shm_size: req.shm_size,
        limits: thaw_run::Limits {
            memory: req.memory.map(|m| i64::try_from(m).unwrap_or(i64::MAX)),
            cpus: req.cpus,
            pids: req.pids_limit,
        },
        init: req
            .init
            .then(thaw_run::find_init)
            .transpose()
            .map_err(bad)?,
        gpus,
        terminal: false,
        seccomp: match req.seccomp.as_deref() {
            None | Some("default") => thaw_run::Seccomp::Default,
            Some("unconfined") => thaw_run::Seccomp::Unconfined,
            Some(file) => thaw_run::Seccomp::Profile(file.into()),
        },
    })
}

pub(crate) fn check_request(req: &api::ContainerRequest) -> Result<(), ApiError> {
    if req.cpus.is_some_and(|c| !(c > 0.0 && c <= 1024.0)) {
        return Err(ApiError::invalid("cpus must be above 0"));
    }
    if req.pids_limit.is_some_and(|p| p < 1) || req.memory == Some(0) || req.shm_size == Some(0) {
        return Err(ApiError::invalid(
            "pids_limit, memory and shm_size must be positive",
        ));
    }
    if let Some(name) = &req.name {
        thaw_run::record::check_name(name).map_err(|e| ApiError::invalid(e.to_string()))?;
    }
    Ok(())
}
