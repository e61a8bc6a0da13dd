//! The foreground side of `thaw run`: the container's output relayed to ours (noting when
//! its first byte came), its exit awaited as its parent (this process is a subreaper, so
//! the init the runtime leaves behind becomes our child), signals forwarded through the
//! runtime, and the start's timings.

use anyhow::{Context, Result};
use std::io::{Read, Write};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};
use thaw_run::{Runtime, Streams};

/// Copies the container's output and error to ours as they come (through pipes, or
/// through its terminal with `--tty`).
#[derive(Debug)]
pub struct Relay {
    first_byte: Arc<OnceLock<Instant>>,
    threads: Vec<std::thread::JoinHandle<()>>,
    console: Option<std::os::unix::net::UnixListener>,
    raw: Option<crate::run_tty::RawMode>,
}

/// The write ends the container gets.
#[derive(Debug)]
pub struct RelayEnds {
    /// Its standard output.
    pub stdout: std::io::PipeWriter,
    /// Its standard error.
    pub stderr: std::io::PipeWriter,
}

impl Relay {
    /// Makes the pipes and starts copying from them.
    pub fn start() -> Result<(Relay, RelayEnds)> {
        let first_byte = Arc::new(OnceLock::new());
        let (out_r, out_w) = std::io::pipe().context("a pipe for the container's output")?;
        let (err_r, err_w) = std::io::pipe().context("a pipe for the container's errors")?;
        let threads = vec![
            copy_thread(out_r, std::io::stdout(), first_byte.clone()),
            copy_thread(err_r, std::io::stderr(), first_byte.clone()),
        ];
        let ends = RelayEnds {
            stdout: out_w,
            stderr: err_w,
        };
        let relay = Relay {
            first_byte,
            threads,
            console: None,
            raw: None,
        };
        Ok((relay, ends))
    }

    /// The streams the runtime's `create` gets: pipes to the relay, or with a terminal
    /// our own (for the runtime's messages) and a console socket at `console`.
    pub fn streams(tty: bool, console: &std::path::Path) -> Result<(Relay, Streams)> {
        use std::process::Stdio;
        if !tty {
            let (relay, ends) = Relay::start()?;
            let streams = Streams {
                stdin: Stdio::inherit(),
                stdout: ends.stdout.into(),
                stderr: ends.stderr.into(),
                console_socket: None,
            };
            return Ok((relay, streams));
        }
        let listener = crate::run_tty::console_socket(console)?;
        let relay = Relay {
            first_byte: Arc::default(),
            threads: Vec::new(),
            console: Some(listener),
            raw: None,
        };
        let streams = Streams {
            stdin: Stdio::null(),
            stdout: Stdio::inherit(),
            stderr: Stdio::inherit(),
            console_socket: Some(console.to_path_buf()),
        };
        Ok((relay, streams))
    }

    /// With a terminal, once `create` has returned: takes the terminal the runtime sent,
    /// puts ours in raw mode and starts copying.
    pub fn attach(&mut self) -> Result<()> {
        let Some(listener) = self.console.take() else {
            return Ok(());
        };
        let master = crate::run_tty::receive_master(&listener)?;
        crate::run_tty::copy_window_size(&master);
        self.raw = Some(crate::run_tty::RawMode::enter()?);
        self.threads
            .push(crate::run_tty::relay(master, self.first_byte.clone())?);
        Ok(())
    }

    /// When the first byte of output or error arrived, if one did.
    pub fn first_byte(&self) -> Option<Instant> {
        self.first_byte.get().copied()
    }

    /// Waits until every writer has closed its end (the container's processes have
    /// exited), so that nothing it wrote is lost.
    pub fn finish(self) {
        for t in self.threads {
            let _ = t.join();
        }
    }
}

fn copy_thread(
    mut from: std::io::PipeReader,
    mut to: impl Write + Send + 'static,
    first: Arc<OnceLock<Instant>>,
) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        let mut buf = vec![0u8; 64 << 10];
        loop {
            match from.read(&mut buf) {
                Ok(0) => return,
                Ok(n) => {
                    let _ = first.set(Instant::now());
                    // A closed terminal is no reason to stop draining: the container
                    // would block on a full pipe.
                    let _ = to.write_all(&buf[..n]).and_then(|()| to.flush());
                }
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(_) => return,
            }
        }
    })
}

pub use thaw_run::process::{become_subreaper, exited_already, read_pid};

/// Waits for the init to exit: its exit code, or 128 + N when signal N killed it.
pub async fn wait_exit(pid: rustix::process::Pid) -> Result<i32> {
    let code = tokio::task::spawn_blocking(move || thaw_run::process::wait_exit(pid))
        .await
        .context("the wait task")??;
    Ok(code)
}

/// SIGINT, SIGTERM, SIGHUP, SIGQUIT, SIGUSR1 and SIGUSR2, caught from the moment
/// `thaw run` begins (so that one arriving while the container is made does not kill
/// `thaw run` and leave the container behind) and forwarded to the container once it runs.
#[derive(Debug)]
pub struct Signals {
    rx: tokio::sync::mpsc::UnboundedReceiver<i32>,
    listeners: Vec<tokio::task::JoinHandle<()>>,
}

impl Signals {
    /// Starts catching the signals.
    pub fn install() -> Result<Self> {
        use tokio::signal::unix::{signal, SignalKind};
        let kinds = [
            (SignalKind::interrupt(), libc::SIGINT),
            (SignalKind::terminate(), libc::SIGTERM),
            (SignalKind::hangup(), libc::SIGHUP),
            (SignalKind::quit(), libc::SIGQUIT),
            (SignalKind::user_defined1(), libc::SIGUSR1),
            (SignalKind::user_defined2(), libc::SIGUSR2),
        ];
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        let mut listeners = Vec::new();
        for (kind, number) in kinds {
            let mut s = signal(kind).with_context(|| format!("catching signal {number}"))?;
            let tx = tx.clone();
            listeners.push(tokio::spawn(async move {
                while s.recv().await.is_some() {
                    if tx.send(number).is_err() {
                        return;
                    }
                }
            }));
        }
        Ok(Signals { rx, listeners })
    }

    /// Forwards what was caught, and what comes, to container `id` until `done` resolves.
    pub async fn forward(
        mut self,
        runtime: &Runtime,
        id: &str,
        done: impl std::future::Future<Output = ()>,
    ) {
        tokio::pin!(done);
        loop {
            tokio::select! {
                biased;
                Some(number) = self.rx.recv() => {
                    if let Err(e) = runtime.kill(id, number) {
                        tracing::warn!(error = %e, signal = number, "could not forward a signal");
                    }
                }
                () = &mut done => break,
            }
        }
    }
}

impl Drop for Signals {
    fn drop(&mut self) {
        for l in &self.listeners {
            l.abort();
        }
    }
}

/// When each step of a start ended.
#[derive(Debug)]
pub struct Timings {
    /// When `thaw run` began.
    pub begin: Instant,
    /// Steps in order: (name, when it ended).
    pub steps: Vec<(&'static str, Instant)>,
}

impl Timings {
    /// Timings from now.
    pub fn new() -> Self {
        Timings {
            begin: Instant::now(),
            steps: Vec::new(),
        }
    }

    /// Notes that `step` ended now.
    pub fn mark(&mut self, step: &'static str) {
        self.steps.push((step, Instant::now()));
    }

    /// One line per step: its own duration, and the time since `thaw run` began.
    pub fn render(&self, first_byte: Option<Instant>) -> String {
        let ms = |d: Duration| d.as_secs_f64() * 1e3;
        let mut out = String::new();
        let mut last = self.begin;
        for (step, at) in &self.steps {
            out += &format!(
                "timing {step}: {:.1} ms (at {:.1} ms)\n",
                ms(at.saturating_duration_since(last)),
                ms(at.saturating_duration_since(self.begin))
            );
            last = *at;
        }
        match first_byte {
            Some(t) => {
                out += &format!(
                    "timing first_byte: at {:.1} ms\n",
                    ms(t.saturating_duration_since(self.begin))
                )
            }
            None => out += "timing first_byte: none (no output)\n",
        }
        out
    }
}
