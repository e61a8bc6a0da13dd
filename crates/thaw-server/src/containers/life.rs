//! A container's life after its request is checked: the runtime's create and start, the
//! wait for its init, and the clean-up when it exits.

use super::{internal, ContainerEntry, State};
use crate::error::ApiError;
use std::path::Path;
use std::sync::Arc;
use thaw_run::{RunRequest, Runtime, Streams};

/// The blocking half of a start: decide the configuration, write the bundle, then the
/// runtime's create (output and errors to the log) and start.
pub(super) fn create_and_start(
    dir: &Path,
    id: &str,
    runtime: &Runtime,
    rootfs: &Path,
    config: Option<&thaw_core::ImageConfig>,
    request: &RunRequest,
) -> Result<rustix::process::Pid, ApiError> {
    let container = thaw_run::prepare(rootfs, config, request, &dir.join("etc"))
        .map_err(internal("preparing"))?;
    thaw_run::write_bundle(dir, &container).map_err(internal("writing the bundle"))?;
    let log = std::fs::File::options()
        .create(true)
        .append(true)
        .open(dir.join("container.log"))
        .map_err(|e| ApiError::internal(e.to_string()))?;
    let err = log
        .try_clone()
        .map_err(|e| ApiError::internal(e.to_string()))?;
    let streams = Streams {
        stdin: std::process::Stdio::null(),
        stdout: log.into(),
        stderr: err.into(),
        console_socket: None,
    };
    let (pid_file, runtime_log) = (dir.join("init.pid"), dir.join("runtime.log"));
    runtime
        .create(id, dir, &pid_file, &runtime_log, streams)
        .map_err(internal("creating"))?;
    let pid = thaw_run::process::read_pid(&pid_file).map_err(internal("reading the pid"))?;
    if let Err(e) = runtime.start(id, &runtime_log) {
        if thaw_run::process::exited_already(pid).is_none() {
            return Err(internal("starting")(e));
        }
    }
    Ok(pid)
}

/// Waits for the init, records its exit code, then removes the runtime's container and
/// the mount (the directory stays for the log until the container is removed).
pub(super) async fn wait_then_clean(c: Arc<ContainerEntry>, pid: rustix::process::Pid) {
    let code = tokio::task::spawn_blocking(move || thaw_run::process::wait_exit(pid)).await;
    let code = match code {
        Ok(Ok(code)) => code,
        Ok(Err(e)) => {
            tracing::warn!(container = %c.id, error = %e, "lost the container's exit status");
            -1
        }
        Err(_) => -1,
    };
    finish(c, code).await;
}

/// After the init's exit: records `code`, removes the runtime's container and ends the
/// mount.
pub(super) async fn finish(c: Arc<ContainerEntry>, code: i32) {
    let mut session = c.session.lock().await;
    c.state.send_replace(State::Exited { code });
    tracing::info!(container = %c.id, code, "exited");
    if let Err(e) = c.runtime.delete(&c.id) {
        tracing::warn!(container = %c.id, error = %e, "the runtime's container stays");
    }
    if let Some(s) = session.take() {
        if let Err(e) = s.end().await {
            tracing::warn!(container = %c.id, error = %e, "unmounting the container's root failed");
        }
    }
}
