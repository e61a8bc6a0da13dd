//! Driving an OCI runtime (runc or crun, which share their command line): `create` with
//! the container's standard streams, `start`, `kill`, `delete --force`. Each runtime keeps
//! its state under a root of thaw's own, never the host's default, and logs to a file in
//! the bundle whose last lines go into the error when an operation fails.

use crate::error::{io_err, RunError};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// An installed OCI runtime.
#[derive(Debug, Clone)]
pub struct Runtime {
    name: String,
    program: PathBuf,
    root: PathBuf,
}

/// The standard streams a container gets.
#[derive(Debug)]
pub struct Streams {
    /// Its standard input.
    pub stdin: Stdio,
    /// Its standard output.
    pub stdout: Stdio,
    /// Its standard error.
    pub stderr: Stdio,
    /// With a terminal (`process.terminal`): the socket the runtime sends the terminal's
    /// master to; the streams above are then the runtime's own.
    pub console_socket: Option<PathBuf>,
}

/// Looks `program` up along `PATH` (or takes it as a path when it has a `/`).
fn find_program(program: &str) -> Option<PathBuf> {
    if program.contains('/') {
        let p = PathBuf::from(program);
        return p.is_file().then_some(p);
    }
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join(program))
        .find(|p| p.is_file())
}

impl Runtime {
    /// The runtime `name` (`runc`, `crun`, or a path), keeping its state under `state_root`.
    pub fn find(name: &str, state_root: &Path) -> Result<Self, RunError> {
        let program = find_program(name).ok_or_else(|| RunError::RuntimeMissing {
            runtime: name.into(),
        })?;
        let short = program
            .file_name()
            .map_or(name.to_string(), |n| n.to_string_lossy().into_owned());
        Ok(Runtime {
            root: state_root.join(&short),
            name: short,
            program,
        })
    }

    /// Its name (`runc`, `crun`).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Its program.
    pub fn program(&self) -> &Path {
        &self.program
    }

    /// Where it keeps its state.
    pub fn root(&self) -> &Path {
        &self.root
    }

    fn command(&self, log: Option<&Path>) -> Command {
        let mut c = Command::new(&self.program);
        c.arg("--root").arg(&self.root);
        if let Some(log) = log {
            let mut flag = std::ffi::OsString::from("--log=");
            flag.push(log);
            c.arg(flag);
        }
        c
    }

    /// Creates container `id` from `bundle` (its init waits for `start`), writing the
    /// init's host pid to `pid_file` and the runtime's log to `log`.
    pub fn create(
        &self,
        id: &str,
        bundle: &Path,
        pid_file: &Path,
        log: &Path,
        streams: Streams,
    ) -> Result<(), RunError> {
        std::fs::create_dir_all(&self.root).map_err(io_err("create", &self.root))?;
        let mut command = self.command(Some(log));
        command
            .args(["create", "--bundle"])
            .arg(bundle)
            .arg("--pid-file")
            .arg(pid_file);
        if let Some(socket) = &streams.console_socket {
            command.arg("--console-socket").arg(socket);
        }
        let status = command
            .arg(id)
            .stdin(streams.stdin)
            .stdout(streams.stdout)
            .stderr(streams.stderr)
            .status()
            .map_err(io_err("run", &self.program))?;
        self.check("create", status, Some(log))
    }

    /// Starts the created container's program.
    pub fn start(&self, id: &str, log: &Path) -> Result<(), RunError> {
        self.quiet("start", &["start", id], Some(log))
    }

    /// Sends `signal` (a number) to the container's init.
    pub fn kill(&self, id: &str, signal: i32) -> Result<(), RunError> {
        self.quiet("kill", &["kill", id, &signal.to_string()], None)
    }

    /// Deletes the container whatever its state (killing it if it runs). A container the
    /// runtime does not know is not an error: there is nothing to delete.
    pub fn delete(&self, id: &str) -> Result<(), RunError> {
        let out = self
            .command(None)
            .args(["delete", "--force", id])
            .stdin(Stdio::null())
            .output()
            .map_err(io_err("run", &self.program))?;
        let text = String::from_utf8_lossy(&out.stderr);
        if out.status.success() || text.contains("does not exist") || text.contains("not found") {
            return Ok(());
        }
        Err(self.failure("delete", out.status, text.trim().to_string()))
    }

    /// The pid of container `id`'s init if the runtime says it runs; `None` if it has
    /// stopped or the runtime does not know it.
    pub fn running_pid(&self, id: &str) -> Result<Option<u32>, RunError> {
        let out = self
            .command(None)
            .args(["state", id])
            .stdin(Stdio::null())
            .output()
            .map_err(io_err("run", &self.program))?;
        if !out.status.success() {
            return Ok(None);
        }
        #[derive(serde::Deserialize)]
        struct State {
            status: String,
            #[serde(default)]
            pid: u32,
        }
        let state: State = serde_json::from_slice(&out.stdout)
            .map_err(|e| RunError::Spec(format!("{} state {id}: {e}", self.name)))?;
        Ok((state.status == "running" && state.pid > 0).then_some(state.pid))
    }

    fn quiet(&self, op: &'static str, args: &[&str], log: Option<&Path>) -> Result<(), RunError> {
        let out = self
            .command(log)
            .args(args)
            .stdin(Stdio::null())
            .output()
            .map_err(io_err("run", &self.program))?;
        if out.status.success() {
            return Ok(());
        }
        let mut text = String::from_utf8_lossy(&out.stderr).trim().to_string();
        if let Some(log) = log {
            text = [text, last_lines(log)].join("\n").trim().to_string();
        }
        Err(self.failure(op, out.status, text))
    }

    fn check(
        &self,
        op: &'static str,
        status: std::process::ExitStatus,
        log: Option<&Path>,
    ) -> Result<(), RunError> {
        if status.success() {
            return Ok(());
        }
        Err(self.failure(op, status, log.map(last_lines).unwrap_or_default()))
    }

    fn failure(&self, op: &'static str, status: std::process::ExitStatus, log: String) -> RunError {
        let hint = hint(&log);
        RunError::Runtime {
            runtime: self.name.clone(),
            op,
            status: status.to_string(),
            log: log + hint,
        }
    }
}

/// What to do about a failure the runtime's words alone do not explain.
fn hint(log: &str) -> &'static str {
    if log.contains("hybrid mode") {
        "\n(hint: on a hybrid cgroup hierarchy crun needs the cgroup v2 part to hold no \
         controller: mount the v1 hierarchy of each controller listed in \
         /sys/fs/cgroup/unified/cgroup.controllers, as scripts/test.sh does, or use --runtime runc)"
    } else {
        ""
    }
}

/// The last few lines of a runtime's log, for an error message.
fn last_lines(log: &Path) -> String {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    lines[lines.len().saturating_sub(5)..].join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_runtime_is_named_with_what_to_do() {
        let e = Runtime::find("no-such-runtime-here", Path::new("/tmp/x")).unwrap_err();
        let text = e.to_string();
        assert!(
            text.contains("\"no-such-runtime-here\" not found") && text.contains("--runtime"),
            "{text}"
        );
        let sh = Runtime::find("sh", Path::new("/tmp/x")).unwrap();
        assert_eq!((sh.name(), sh.root()), ("sh", Path::new("/tmp/x/sh")));
    }
}
